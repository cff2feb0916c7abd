"""The toolchain and the API endpoint, before any change: the ansible-playbook step 11 will run
(nodegate.cluster.toolchain) and the kubeconfig's server (nodegate.cluster.api_endpoint).
Both are read-only: Ansible only parses, the server's name is only resolved."""
from __future__ import annotations

import pytest

from nodegate.plugin.fixtures import fail_check


@pytest.fixture(scope="module")
def toolchain(profile):
    from nodegate.cluster.toolchain import ansible_playbook
    from nodegate.core.errors import UsageError

    try:
        return ansible_playbook(profile)
    except UsageError as exc:
        return exc      # each check that needs it fails with it (a fixture error would hide the cause)


@pytest.fixture(scope="session")
def fleet_runs(profile, selected_nodes):
    """One --syntax-check and one --list-tags run for all the selected nodes (FleetRuns says why
    that parses what each node's own command parses); a node's own command when it fails."""
    from nodegate.cluster.toolchain import FleetRuns

    return FleetRuns(profile, [n.name for n in selected_nodes])


def _tool(found):
    if isinstance(found, Exception):
        fail_check(found.message, fix=found.fix or "")
    return found


def _judge(finding, evidence) -> None:
    if finding.evidence:
        evidence.text(f"toolchain: {finding.name}", finding.evidence)
    if not finding.ok:
        fail_check(finding.message, fix=finding.fix, details=finding.details)


@pytest.mark.preflight
def test_ansible_in_checkout_range(profile, toolchain, evidence):
    """ansible-core inside the checkout's ansible_version.yml range (v2.21.0: 2.11.0 <= core < 2.13.0)."""
    from nodegate.cluster.toolchain import ansible_range

    _judge(ansible_range(profile, _tool(toolchain)), evidence)


@pytest.mark.preflight
def test_ansible_requirements_installed(profile, toolchain, evidence):
    """Every pin of the checkout's requirements.txt installed in the Python that runs ansible-playbook."""
    from nodegate.cluster.toolchain import requirements

    _judge(requirements(profile, _tool(toolchain)), evidence)


@pytest.mark.preflight
def test_upgrade_playbook_parses(node, profile, toolchain, fleet_runs, evidence):
    """The exact upgrade command of step 11 with --syntax-check, the inventory and variables included."""
    from nodegate.cluster.toolchain import syntax

    _judge(syntax(profile, node.name, _tool(toolchain), fleet_runs), evidence)


@pytest.mark.preflight
def test_skipped_tags_exist(node, profile, toolchain, fleet_runs, evidence):
    """Each tag of the command's --skip-tags (multus, kubespray #9703) is one --list-tags lists."""
    from nodegate.cluster.toolchain import skipped_tags

    _judge(skipped_tags(profile, node.name, _tool(toolchain), fleet_runs), evidence)


@pytest.mark.preflight
def test_api_endpoint_not_on_node(node, profile, evidence):
    """The kubeconfig's server must not be the node being upgraded: Kubespray's admin.conf points at
    the first control-plane node unless a load balancer is configured, and that node's reboots
    would take the API away in the middle of the run."""
    from nodegate.cluster.api_endpoint import endpoint_verdict, fix_for
    from nodegate.core.errors import UsageError

    try:
        verdict = endpoint_verdict(profile, node)
    except UsageError as exc:
        fail_check(exc.message, fix=exc.fix or "")
    evidence.json("API endpoint", {"server": verdict.server, "resolved": list(verdict.server_addresses),
                                   f"{node.name} addresses": {k: list(v) for k, v in verdict.node_addresses.items()}})
    if verdict.on_node:
        fail_check(f"the kubeconfig's server {verdict.server} ({profile.kube.kubeconfig}) is {node.name} itself "
                   f"({verdict.via}): its reboots would take the API away in the middle of the upgrade",
                   fix=fix_for(profile, node))
