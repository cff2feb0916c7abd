"""nodegate.core.kubespray_release: the per-release facts read at upstream tags (see its docstring)."""
from __future__ import annotations

import pytest

from nodegate.core.kubespray_release import galaxy_says, kube_version_problem, release_facts, same_kube_version


@pytest.mark.parametrize("version, facts_playbook, role, with_v, ansible", [
    ("v2.20.0", "facts.yml", "kubespray-defaults", True, ("2.11.0", "2.13.0")),
    ("v2.21.0", "facts.yml", "kubespray-defaults", True, ("2.11.0", "2.13.0")),
    ("v2.22.1", "playbooks/facts.yml", "kubespray-defaults", True, ("2.11.0", "2.13.0")),
    ("v2.23.1", "playbooks/facts.yml", "kubespray-defaults", True, ("2.14.0", "2.15.0")),
    ("v2.24.3", "playbooks/facts.yml", "kubespray-defaults", True, ("2.15.5", "2.17.0")),
    ("v2.27.1", "playbooks/facts.yml", "kubespray-defaults", True, ("2.16.4", "2.17.0")),
    ("v2.28.0", "playbooks/facts.yml", "kubespray_defaults", False, ("2.16.4", "2.17.0")),
    ("v2.28", "playbooks/facts.yml", "kubespray_defaults", False, ("2.16.4", "2.17.0")),   # a minor only
    ("v2.30.0", "playbooks/facts.yml", "kubespray_defaults", False, ("2.17.3", "2.18.0")),
    ("v2.31.0", "playbooks/facts.yml", "kubespray_defaults", False, ("2.18.0", "2.19.0")),
])
def test_release_facts(version, facts_playbook, role, with_v, ansible):
    facts = release_facts(version)
    assert (facts.facts_playbook, facts.defaults_role, facts.kube_version_with_v, facts.ansible_core) == \
        (facts_playbook, role, with_v, ansible)


def test_unknown_releases_have_no_facts():
    assert release_facts("v2.19.0") is None and release_facts(None) is None and release_facts("master") is None


@pytest.mark.parametrize("version, says", [("v2.21.0", None), ("v2.22.0", "2.21.0"), ("v2.22.1", "2.21.0"),
                                           ("v2.22.2", "2.22.2"), ("v2.23.1", "2.22.1"), ("v2.23.2", "2.23.2"),
                                           ("v2.28.1", "2.28.1")])
def test_galaxy_lags_as_upstream(version, says):
    assert galaxy_says(version) == says


def test_kube_version_form_per_release():
    assert kube_version_problem("v1.25.6", "v2.21.0") is None
    assert kube_version_problem("1.32.5", "v2.28.1") is None
    assert "has a leading 'v'" in kube_version_problem("v1.32.5", "v2.28.1")
    assert "has no leading 'v'" in kube_version_problem("1.25.6", "v2.27.1")
    assert "not a Kubernetes version" in kube_version_problem("latest", "v2.21.0")
    assert kube_version_problem("1.25.6", None) is None          # unknown release: passed back as written


def test_same_kube_version():
    assert same_kube_version("v1.25.6", "1.25.6") and same_kube_version("v1.25.6", "v1.25.6")
    assert not same_kube_version("v1.25.6", "1.25.7") and not same_kube_version(None, "1.25.6")
