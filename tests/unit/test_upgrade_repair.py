"""The repair step's two node-side programs (nodegate.upgrade.engine), run by the real python3 against a
scratch /etc/apt (bind-mounted in a private mount namespace, so the host's apt is untouched), and
the pure helpers of the procedure layer."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from nodegate.cluster.nodes.remote import remote_program
from nodegate.plugin.procedures import _junit_failures
from nodegate.upgrade.steps.release import _repo_url

_REPAIR_SOURCES = remote_program("repair_sources")
_MOVE_KEYS = remote_program("move_keys")



def run_on_scratch_apt(tmp_path: Path, script: str, *args: str) -> str:
    """Run a node-side script with tmp_path/apt mounted over /etc/apt."""
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/apt && script="$1" && shift && exec python3 -c "$script" "$@"',
            str(tmp_path / "apt"), script, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "trusted.gpg.d").mkdir()
    return apt


def test_re_enables_disabled_sources_for_the_new_codename_and_leaves_the_rest(tmp_path, apt_dir):
    (apt_dir / "sources.list.d" / "docker.list").write_text(textwrap.dedent("""\
        # deb [arch=amd64] http://repo.example/linux/ubuntu focal stable # disabled on upgrade to jammy
        #deb-src http://repo.example/linux/ubuntu focal-updates stable # disabled on upgrade to jammy
        # a comment that stays
    """))
    (apt_dir / "sources.list.d" / "other.list").write_text("deb http://other.example/x focal main\n")
    (apt_dir / "sources.list.d" / "docker.list.distUpgrade").write_text("deb http://repo.example focal stable\n")
    out = run_on_scratch_apt(tmp_path, _REPAIR_SOURCES, "focal", "jammy")
    assert out.split() == ["/etc/apt/sources.list.d/docker.list"]
    assert (apt_dir / "sources.list.d" / "docker.list").read_text() == textwrap.dedent("""\
        deb [arch=amd64] http://repo.example/linux/ubuntu jammy stable
        deb-src http://repo.example/linux/ubuntu jammy-updates stable
        # a comment that stays
    """)
    # an enabled source is not the release upgrade's to fix; backups are not sources
    assert (apt_dir / "sources.list.d" / "other.list").read_text() == "deb http://other.example/x focal main\n"
    assert (apt_dir / "sources.list.d" / "docker.list.distUpgrade").read_text() == "deb http://repo.example focal stable\n"
    assert run_on_scratch_apt(tmp_path, _REPAIR_SOURCES, "focal", "jammy").strip() == "", "a second run changes nothing"


def test_moves_the_legacy_key_to_keyrings_with_signed_by_only_for_its_sources(tmp_path, apt_dir):
    (apt_dir / "trusted.gpg").write_bytes(b"\x99\x01keyring-bytes")
    (apt_dir / "sources.list").write_text("deb http://archive.example/ubuntu jammy main\n")
    (apt_dir / "sources.list.d" / "docker.list").write_text(
        "deb [arch=amd64] http://repo.example/linux/ubuntu jammy stable\n")
    (apt_dir / "sources.list.d" / "signed.list").write_text(
        "deb [signed-by=/usr/share/keyrings/x.gpg] http://repo.example/linux/ubuntu jammy edge\n")
    out = run_on_scratch_apt(tmp_path, _MOVE_KEYS, "http://repo.example/linux/ubuntu")
    assert "docker.list -> /etc/apt/keyrings/docker.gpg" in out
    assert (apt_dir / "sources.list.d" / "docker.list").read_text() == (
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] http://repo.example/linux/ubuntu jammy stable\n")
    assert (apt_dir / "keyrings" / "docker.gpg").read_bytes() == b"\x99\x01keyring-bytes"
    # a source that names its key already, and one that never used the legacy keyring, stay as they are
    assert "signed-by=/usr/share/keyrings/x.gpg]" in (apt_dir / "sources.list.d" / "signed.list").read_text()
    assert (apt_dir / "sources.list").read_text() == "deb http://archive.example/ubuntu jammy main\n"
    assert not (apt_dir / "trusted.gpg").exists(), "the legacy keyring is retired"
    assert (apt_dir / "trusted.gpg.nodegate-moved").exists()
    assert "no legacy keyring" in run_on_scratch_apt(tmp_path, _MOVE_KEYS, "http://repo.example/linux/ubuntu")


def test_repo_url_is_the_part_before_dists():
    assert _repo_url("http://127.0.2.1/linux/ubuntu/dists/focal/InRelease") == "http://127.0.2.1/linux/ubuntu"
    assert _repo_url("http://x/ubuntu") == "http://x/ubuntu"


def test_junit_failures_name_each_failing_check(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text("""<?xml version="1.0"?><testsuites><testsuite tests="3" failures="1" errors="1" skipped="0">
      <testcase name="test_a[node4]"/>
      <testcase name="test_b[node4]"><failure message="Failed: the lock is held by x&#10;  fix: wait">tb</failure></testcase>
      <testcase name="test_c[node4]"><error message="">boom
second</error></testcase>
    </testsuite></testsuites>""")
    failed, counts = _junit_failures(junit)
    assert failed == ("test_b[node4]: Failed: the lock is held by x", "test_c[node4]: boom")
    assert counts == "1 passed, 1 failed, 1 errors, 0 skipped"
    assert _junit_failures(tmp_path / "missing.xml") == ((), "")
