"""Every Kubespray release the lab lays out (`nodegate lab up --kubespray …`), in every way
operators hold a checkout, is recognised by the harness, which says how it found the version.

The checkouts are the lab's own (nodegate.lab.kubespray.write_checkout: the stand-in tree laid out
as the release and committed as a clone at its tag, the inventory written beside it); no lab
needs to run. The ways (field-facts.md, "Kubespray version"):
- a clone at the tag;
- a clone some commits past the tag (`git describe`);
- the release branch: shallow and without tags (the minor only), and past its tag (`git describe`);
- GitHub's release archive: no .git, the folder named kubespray-<version>; and the same files in a
  folder of another name, where only galaxy.yml is left (trusted only where releases do not
  carry another release's version, and where the checkout's Ansible range agrees);
- a worktree and a submodule, where .git is a file;
- the profile's [kubespray] version.
The stand-ins' layouts are checked against nodegate.core.kubespray_release, the harness's table of
the same upstream facts, so the lab and the harness cannot drift apart unnoticed.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nodegate.core import kubespray_release as knowledge
from nodegate.core.kubespray_version import detect
from nodegate.lab.config import LabConfig
from nodegate.lab.kubespray import write_checkout
from nodegate.lab.kubespray_releases import STAND_INS, stand_in
from nodegate.lab.profile_files import write_profile_files

RELEASES = list(STAND_INS)
GIT = ["git", "-c", "user.name=operator", "-c", "user.email=op@example.invalid", "-c", "protocol.file.allow=always",
       "-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def labs(tmp_path_factory) -> dict[str, LabConfig]:
    """One lab directory per release with its checkout and profile files (nothing started)."""
    out = {}
    for tag in RELEASES:
        config = LabConfig.new(tmp_path_factory.mktemp(tag.replace(".", "_")), 4, kubespray_version=tag)
        config.save()
        write_profile_files(config)
        write_checkout(config, with_venv=False)
        out[tag] = config
    return out


def _archive(repo: Path, tag: str, where: Path, folder: str) -> Path:
    """`git archive` of the tag, unpacked as GitHub's release tarball is: WHERE/FOLDER, no .git."""
    where.mkdir(parents=True, exist_ok=True)
    data = subprocess.run([*GIT, "archive", "--format=tar", f"--prefix={folder}/", tag], cwd=repo, check=True,
                          capture_output=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=data, check=True, timeout=60)
    assert not (where / folder / ".git").exists()
    return where / folder


# --------------------------------------------------------------------------- the layouts

@pytest.mark.parametrize("tag", RELEASES)
def test_the_stand_in_has_the_release_layout(labs, tag):
    checkout = labs[tag].dir / "kubespray"
    release, facts = stand_in(tag), knowledge.release_facts(tag)
    assert facts is not None
    # galaxy.yml, absent in v2.21.0 and lagging in v2.23.1, as upstream
    galaxy = checkout / "galaxy.yml"
    assert galaxy.is_file() == knowledge.has_galaxy(tag)
    if galaxy.is_file():
        assert f"version: {knowledge.galaxy_says(tag)}\n" in galaxy.read_text()
    # the facts playbook and the Ansible range where the release keeps them
    assert knowledge.facts_playbook(checkout, tag) == facts.facts_playbook
    assert (checkout / facts.ansible_version_file).is_file()
    assert knowledge.ansible_range(checkout) == facts.ansible_core == release.ansible_core
    # the defaults role, its name and its defaults file(s)
    assert knowledge.defaults_role_dirs(checkout)[0].name == facts.defaults_role == release.defaults_role
    split = (checkout / "roles" / facts.defaults_role / "defaults" / "main").is_dir()
    assert split == facts.defaults_split
    # kube_version as the release's inventory writes it
    k8s = (checkout / "inventory/mycluster/group_vars/k8s_cluster/k8s-cluster.yml").read_text()
    assert f"kube_version: {'v' if facts.kube_version_with_v else ''}1.25.6\n" in k8s
    # a clone at the release tag on its release branch; the inventory untracked, as an operator's
    assert git(checkout, "describe", "--tags", "--exact-match").strip() == tag
    assert git(checkout, "symbolic-ref", "--short", "HEAD").strip() == release.branch
    assert "inventory/" in git(checkout, "status", "--porcelain", "--untracked-files=normal")


@pytest.mark.parametrize("tag", RELEASES)
def test_the_harness_reads_the_lab_profile(labs, tag):
    from nodegate.cluster.kubespray import playbook_argv
    from nodegate.profile.load import load_profile

    profile = load_profile(labs[tag].dir / "cluster.toml")
    assert profile.kubespray.version == tag
    assert profile.kubespray.version_source == f"git: tag {tag} at HEAD"
    expected = "v1.25.6" if knowledge.release_facts(tag).kube_version_with_v else "1.25.6"
    assert profile.kube_version == expected
    assert knowledge.kube_version_problem(profile.kube_version, tag) is None
    argv = playbook_argv(profile, node="node4", ansible_playbook="ansible-playbook")
    assert f"kube_version={expected}" in argv           # passed back in the release's own form
    wrong = "1.25.6" if expected.startswith("v") else "v1.25.6"
    assert "leading 'v'" in knowledge.kube_version_problem(wrong, tag)


# --------------------------------------------------------------------------- the ways a checkout exists

@pytest.mark.parametrize("tag", RELEASES)
def test_clone_at_the_tag_and_past_it(labs, tag, tmp_path):
    origin = labs[tag].dir / "kubespray"
    clone = tmp_path / "kubespray"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert detect(clone).version == tag
    (clone / "local.txt").write_text("an operator's change\n")
    git(clone, "add", "local.txt")
    git(clone, "commit", "-q", "-m", "local change")
    found = detect(clone)
    assert found.version == tag and "git describe" in found.how and "1 commit(s) after tag" in found.how, found


@pytest.mark.parametrize("tag", RELEASES)
def test_release_branch(labs, tag, tmp_path):
    origin, release = labs[tag].dir / "kubespray", stand_in(tag)
    minor = tag.rsplit(".", 1)[0]
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", "--no-tags", "--branch", release.branch, f"file://{origin}",
        str(shallow))
    assert not git(shallow, "tag").strip(), "the shallow clone has no tags"
    found = detect(shallow)
    assert found.version == minor and found.minor_only, found
    assert f"branch {release.branch}" in found.how and "minor only" in found.how
    # the branch with its history and a commit past the tag: the tag and the commits since
    full = tmp_path / "full"
    git(tmp_path, "clone", "-q", "--branch", release.branch, str(origin), str(full))
    git(full, "commit", "-q", "--allow-empty", "-m", "a backport")
    found = detect(full)
    assert found.version == tag and "git describe" in found.how, found


@pytest.mark.parametrize("tag", RELEASES)
def test_release_archive(labs, tag, tmp_path):
    origin = labs[tag].dir / "kubespray"
    unpacked = _archive(origin, tag, tmp_path / "named", f"kubespray-{tag.removeprefix('v')}")
    found = detect(unpacked)
    assert found.version == tag and "folder name" in found.how, found


@pytest.mark.parametrize("tag", RELEASES)
def test_archive_in_a_folder_of_another_name(labs, tag, tmp_path):
    """Only galaxy.yml is left: no answer for v2.21.0 (none), the minor for v2.23.1 (it says
    2.22.1, as v2.23.0 and v2.23.1 do), the version where galaxy.yml and the Ansible range agree."""
    origin = labs[tag].dir / "kubespray"
    # inside the operator's own git repository, whose tags must never be taken for Kubespray's
    infra = tmp_path / "infra"
    infra.mkdir()
    git(infra, "init", "-q")
    git(infra, "commit", "-q", "--allow-empty", "-m", "infra")
    git(infra, "tag", "v9.9.9")
    unpacked = _archive(origin, tag, infra, "kubespray")
    found = detect(unpacked)
    if tag == "v2.21.0":
        assert found.version is None and "no galaxy.yml" in found.how, found
    elif tag == "v2.23.1":
        assert found.version == "v2.23" and found.minor_only and "2.22.1" in found.how, found
    else:
        assert found.version == tag and "galaxy.yml" in found.how, found
    assert "v9.9.9" not in found.how
    # galaxy.yml contradicting the checkout's layout is not trusted
    if (unpacked / "galaxy.yml").is_file() and tag != "v2.23.1":
        (unpacked / "galaxy.yml").write_text("version: 2.31.0\n")
        assert detect(unpacked).version is None


@pytest.mark.parametrize("tag", RELEASES)
def test_worktree_and_submodule(labs, tag, tmp_path):
    origin = labs[tag].dir / "kubespray"
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    worktree = tmp_path / "worktree"
    git(clone, "worktree", "add", "-q", "--detach", str(worktree), tag)
    assert (worktree / ".git").is_file()
    found = detect(worktree)
    assert found.version == tag and ".git file" in found.how, found

    infra = tmp_path / "infra"
    infra.mkdir()
    git(infra, "init", "-q")
    git(infra, "submodule", "add", "-q", str(origin), "kubespray")
    assert (infra / "kubespray" / ".git").is_file()
    found = detect(infra / "kubespray")
    assert found.version == tag and ".git file" in found.how, found


def test_the_profile_override_wins(labs):
    checkout = labs["v2.28.1"].dir / "kubespray"
    found = detect(checkout, override="2.28.0")
    assert found.version == "v2.28.0" and found.how == "the profile's [kubespray] version"
