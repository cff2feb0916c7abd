"""The lab's Kubespray releases: one stand-in tree (kubespray_tree, v2.21.0's layout) laid out the
way each release's checkout looks, then committed as a git repository on its release branch with
the release tag, as operators clone Kubespray.

What differs per release is only what an operator and nodegate can observe, each read in
kubernetes-sigs/kubespray at the tag (field-facts.md, "Real clusters against the lab"; checked with
`git show <tag>:<path>`):

- galaxy.yml: absent in v2.21.0; v2.23.1's says 2.22.1 (it lags the tag); later ones say the tag;
- the playbooks: at the top in v2.21.0; from v2.22.0 in playbooks/ (`playbooks/facts.yml`,
  `playbooks/upgrade_cluster.yml`) with top-level upgrade-cluster.yml/cluster.yml importing them;
- ansible_version.yml (top level, then playbooks/) and its range: 2.11.0 ≤ core < 2.13.0 (v2.21),
  2.14.0–2.15.0 (v2.23), 2.16.4–2.17.0 (v2.25–v2.28); requirements.txt's ansible pin;
- the defaults role: roles/kubespray-defaults with defaults/main.yaml (v2.21, v2.23), with a
  defaults/main/ folder (v2.24+), renamed roles/kubespray_defaults in v2.28.0 (the old name a shim
  importing the new one);
- kube_version: 'v1.25.6' until v2.27.x; from v2.28.0 '1.25.6' (roles/validate_inventory refuses a
  leading 'v'), its default a template over the kubelet checksums (vars/main/checksums.yml);
- the multus --limit failure (kubespray #9703): fixed in v2.23.0 by PR #10347, back in
  v2.25.0–v2.26.x (#11431, #11794), fixed again in v2.27.0.

Each stand-in's ansible_version.yml asserts its range as the release's does (upgrade-cluster.yml
imports it first; an ansible-core outside it stops the run at that first play), and each gets a
Kubespray venv with an ansible-core inside that range (`lab_core`), the one pip installs from the
release's real requirements.txt on this machine's Python (3.11; every one of them installs and
runs here): v2.21.0 pins ansible-core==2.12.5 itself; v2.23.1's ansible==7.6.0 needs
ansible-core~=2.14.6 (2.14.18 is the newest); v2.25.1's ansible==9.5.1 ~=2.16.6 and v2.27.1's and
v2.28.1's ansible==9.13.0 ~=2.16.14 (2.16.20 the newest). The stand-in's requirements.txt pins that
ansible-core alone: its roles use only ansible-core's builtin modules, so the `ansible` bundle's
collections (and jmespath, netaddr, cryptography, which those collections use) are left out; the
line the release really has is kept as a comment.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StandIn:
    tag: str
    galaxy: str | None                # what galaxy.yml says (None: no galaxy.yml)
    playbooks_dir: bool               # playbooks/ (v2.22.0+) or everything at the top
    ansible_core: tuple[str, str]     # ansible_version.yml: minimal <= core < maximal
    ansible_pin: str                  # requirements.txt (the real release's ansible line)
    lab_core: str                     # the ansible-core of the lab's venv for it (inside ansible_core)
    defaults_role: str                # roles/<this>
    defaults_split: bool              # defaults/main/ folder (v2.24+) or defaults/main.yaml
    kube_version_with_v: bool
    multus_limit_bug: bool

    @property
    def branch(self) -> str:
        major, minor, _ = self.tag.lstrip("v").split(".")
        return f"release-{major}.{minor}"

    def requirements_text(self, tree_requirements: str) -> str:
        """The stand-in's requirements.txt (what the lab's venv for this release is built from)."""
        if self.tag == DEFAULT:
            return tree_requirements    # the tree's own file: v2.21.0's pin, ansible-core==2.12.5
        return (f"# Kubespray {self.tag} pins {self.ansible_pin} (ansible-core {self.ansible_core[0]} <= core < "
                f"{self.ansible_core[1]}); the stand-in's roles need only\n# ansible-core, the version pip resolves "
                f"for that pin.\nansible-core=={self.lab_core}\n")

    def kube_version(self, version: str) -> str:
        """The cluster's version ('v1.25.6') as this release's inventory writes it."""
        return version if self.kube_version_with_v else version.removeprefix("v")


STAND_INS = {s.tag: s for s in (
    StandIn("v2.21.0", None, False, ("2.11.0", "2.13.0"), "ansible-core==2.12.5", "2.12.5", "kubespray-defaults", False, True,
            True),
    StandIn("v2.23.1", "2.22.1", True, ("2.14.0", "2.15.0"), "ansible==7.6.0", "2.14.18", "kubespray-defaults", False, True,
            False),
    StandIn("v2.25.1", "2.25.1", True, ("2.16.4", "2.17.0"), "ansible==9.5.1", "2.16.20", "kubespray-defaults", True, True, True),
    StandIn("v2.27.1", "2.27.1", True, ("2.16.4", "2.17.0"), "ansible==9.13.0", "2.16.20", "kubespray-defaults", True, True,
            False),
    StandIn("v2.28.1", "2.28.1", True, ("2.16.4", "2.17.0"), "ansible==9.13.0", "2.16.20", "kubespray_defaults", True, False,
            False),
)}
DEFAULT = "v2.21.0"


def choices() -> list[str]:
    """What `nodegate lab up --kubespray` accepts: each tag, and its minor as 'v2.28.x'."""
    out = []
    for tag in STAND_INS:
        out += [tag, tag.rsplit(".", 1)[0] + ".x"]
    return out


def stand_in(name: str) -> StandIn:
    """The stand-in for 'v2.28.1' or 'v2.28.x'; KeyError naming the choices otherwise."""
    if name in STAND_INS:
        return STAND_INS[name]
    for tag, found in STAND_INS.items():
        if name == tag.rsplit(".", 1)[0] + ".x":
            return found
    raise KeyError(f"the lab has no Kubespray {name}; it has {', '.join(choices())}")


# --------------------------------------------------------------------------- laying a tree out

def lay_out(tree: Path, release: StandIn) -> None:
    """Turn a copy of kubespray_tree (v2.21.0's layout) into RELEASE's layout, in place."""
    _galaxy(tree, release)
    _requirements(tree, release)
    if release.playbooks_dir:
        _into_playbooks_dir(tree)
    _ansible_version(tree, release)
    _defaults_role(tree, release)
    if not release.multus_limit_bug:
        _multus_fixed(tree)
    for path in tree.rglob("*"):
        if path.is_file() and path.suffix in (".yml", ".yaml", ".md", ".txt", ".cfg"):
            text = path.read_text()
            if "Kubespray v2.21.0" in text and release.tag != DEFAULT and path.name != "requirements.txt":
                path.write_text(text.replace("Kubespray v2.21.0", f"Kubespray {release.tag} (v2.21.0's roles)"))


def _galaxy(tree: Path, release: StandIn) -> None:
    path = tree / "galaxy.yml"
    if release.galaxy is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(f"---\n# nodegate lab: a stand-in for a Kubespray {release.tag} checkout.\n"
                    f"namespace: kubernetes_sigs\nname: kubespray\nversion: {release.galaxy}\n")


def _requirements(tree: Path, release: StandIn) -> None:
    path = tree / "requirements.txt"
    path.write_text(release.requirements_text(path.read_text()))


def _into_playbooks_dir(tree: Path) -> None:
    """v2.22.0+: the playbooks live in playbooks/; the top-level ones only import them."""
    playbooks = tree / "playbooks"
    playbooks.mkdir(exist_ok=True)
    shutil.move(str(tree / "facts.yml"), playbooks / "facts.yml")
    for top, inner, what in (("upgrade-cluster.yml", "upgrade_cluster.yml", "Upgrade cluster"),
                             ("cluster.yml", "cluster.yml", "Install Kubernetes")):
        shutil.move(str(tree / top), playbooks / inner)
        (tree / top).write_text(f"---\n- name: {what}\n  import_playbook: playbooks/{inner}\n")


def _ansible_version(tree: Path, release: StandIn) -> None:
    """The range play, as each release has it: every host, run once, tagged always (so no
    --tags/--skip-tags leaves it out), an assert that runs on the controller."""
    low, high = release.ansible_core
    place = tree / ("playbooks/ansible_version.yml" if release.playbooks_dir else "ansible_version.yml")
    place.write_text(
        "---\n"
        f"# nodegate lab stand-in: the Ansible range Kubespray {release.tag} accepts, checked first.\n"
        "- name: The Ansible range this checkout accepts\n"
        "  hosts: all\n"
        "  gather_facts: false\n"
        "  become: false\n"
        "  run_once: true\n"
        "  tags: always\n"
        "  vars:\n"
        f"    minimal_ansible_version: {low}\n"
        f"    maximal_ansible_version: {high}\n"
        "  tasks:\n"
        "    - name: Stop unless minimal_ansible_version <= ansible-core < maximal_ansible_version\n"
        "      assert:\n"
        "        that:\n"
        "          - ansible_version.string is version(minimal_ansible_version, '>=')\n"
        "          - ansible_version.string is version(maximal_ansible_version, '<')\n"
        "        fail_msg: \"this checkout runs with {{ minimal_ansible_version }} <= ansible-core < "
        "{{ maximal_ansible_version }}, not {{ ansible_version.string }}\"\n"
        "        quiet: true\n")


def _defaults_role(tree: Path, release: StandIn) -> None:
    old = tree / "roles" / "kubespray-defaults"
    defaults = old / "defaults" / "main.yaml"
    text = defaults.read_text()
    if not release.kube_version_with_v:
        text = text.replace("kube_version: v1.25.6\n",
                            "# from v2.28.0 without a leading 'v', by default the newest version in the checksums\n"
                            "kube_version: \"{{ kubelet_checksums.amd64 | list | first }}\"\n", 1)
        text = text.replace('kubelet_release: "{{ kube_version }}"', 'kubelet_release: "v{{ kube_version }}"', 1)
    if release.defaults_split:
        defaults.unlink()
        (old / "defaults" / "main").mkdir()
        (old / "defaults" / "main" / "main.yml").write_text(text)
    else:
        defaults.write_text(text)
    if release.defaults_role == "kubespray-defaults":
        return
    new = tree / "roles" / release.defaults_role
    old.rename(new)
    (new / "vars" / "main").mkdir(parents=True)
    (new / "vars" / "main" / "checksums.yml").write_text(
        "---\n# nodegate lab stand-in: the versions the checkout has checksums for (newest first); no real sums.\n"
        "kubelet_checksums:\n  amd64:\n    1.25.6: sha256:stand-in\n")
    (old / "tasks").mkdir(parents=True)
    (old / "tasks" / "main.yml").write_text(
        "---\n# nodegate lab stand-in: the old role name only brings in the renamed role.\n"
        f"- name: The defaults role is now {release.defaults_role}\n"
        "  import_role:\n"
        f"    name: {release.defaults_role}\n")
    validate = tree / "roles" / "validate_inventory" / "tasks"
    validate.mkdir(parents=True)
    (validate / "main.yml").write_text(
        "---\n# nodegate lab stand-in for v2.28.0+'s roles/validate_inventory: kube_version without a leading 'v'.\n"
        "- name: Stop if kube_version has a leading v\n"
        "  assert:\n"
        "    that: not (kube_version | string).startswith('v')\n"
        "    fail_msg: \"kube_version {{ kube_version }} must be written without a leading 'v' (e.g. 1.25.6)\"\n"
        "    quiet: true\n")
    for playbook in tree.rglob("*.yml"):
        body = playbook.read_text()
        if "{ role: kubespray-defaults }" in body:
            body = body.replace("    - { role: kubespray-defaults }\n",
                                f"    - {{ role: {release.defaults_role} }}\n", 1)
            body = body.replace("    - { role: kubespray-defaults }\n", f"    - {{ role: {release.defaults_role} }}\n")
            body = body.replace(f"    - {{ role: {release.defaults_role} }}\n    - {{ role: container-engine",
                                f"    - {{ role: {release.defaults_role} }}\n    - {{ role: validate_inventory }}\n"
                                "    - { role: container-engine", 1)
            playbook.write_text(body)


def _multus_fixed(tree: Path) -> None:
    """With the fix, a host left out by --limit adds nothing instead of a None entry."""
    path = tree / "roles" / "network_plugin" / "multus" / "tasks" / "main.yml"
    text = path.read_text()
    broken = "(registered.results if registered is not none else [None])"
    assert broken in text, "the multus stand-in changed: update _multus_fixed"
    text = text.replace(broken, "(registered.results if registered is not none else [])")
    text = text.replace("# fails: \"Failed to template", "# failed (before the fix): \"Failed to template", 1)
    path.write_text(text)


# --------------------------------------------------------------------------- git

def commit_as_release(tree: Path, release: StandIn) -> None:
    """TREE becomes a clone at RELEASE: its release branch, one commit, the release tag on it."""
    git = ["git", "-c", "user.name=nodegate lab", "-c", "user.email=lab@nodegate.invalid",
           "-c", f"init.defaultBranch={release.branch}", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", f"Kubespray {release.tag} (nodegate lab stand-in)"],
                 ["tag", release.tag]):
        subprocess.run([*git, *args], cwd=tree, check=True, capture_output=True, timeout=60)
