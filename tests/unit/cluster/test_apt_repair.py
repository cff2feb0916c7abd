"""The repair step's node-side program (nodegate.cluster.apt_repair), run by the real python3 against a
scratch /etc/apt (bind-mounted in a private mount namespace, so the host's apt is untouched), and
the pure helpers of the procedure layer."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from nodegate.cluster import apt_repair
from nodegate.plugin.procedures import _junit_failures


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


def repair(tmp_path: Path, old: str, new: str) -> dict:
    return apt_repair.parse_output(run_on_scratch_apt(tmp_path, apt_repair.program(), old, new))


def test_re_enables_disabled_one_line_sources_for_the_new_codename(tmp_path, apt_dir):
    (apt_dir / "sources.list.d" / "docker.list").write_text(textwrap.dedent("""\
        # deb [arch=amd64] http://repo.example/linux/ubuntu focal stable # disabled on upgrade to jammy
        # a comment that stays
    """))
    (apt_dir / "sources.list.d" / "other.list").write_text("deb http://other.example/x focal main\n")
    (apt_dir / "sources.list.d" / "docker.list.distUpgrade").write_text("deb http://repo.example focal stable\n")
    (apt_dir / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    done = repair(tmp_path, "focal", "jammy")
    assert sorted(done["files"]) == ["/etc/apt/sources.list.d/docker.list", "/etc/apt/sources.list.d/other.list"]
    assert (apt_dir / "sources.list.d" / "docker.list").read_text() == textwrap.dedent("""\
        deb [arch=amd64] http://repo.example/linux/ubuntu jammy stable
        # a comment that stays
    """)
    # left on the old codename: moved too; backups are not sources; Ubuntu's own stay as they are
    assert (apt_dir / "sources.list.d" / "other.list").read_text() == "deb http://other.example/x jammy main\n"
    assert (apt_dir / "sources.list.d" / "docker.list.distUpgrade").read_text() == "deb http://repo.example focal stable\n"
    assert (apt_dir / "sources.list").read_text() == "deb http://archive.ubuntu.com/ubuntu jammy main\n"
    again = repair(tmp_path, "focal", "jammy")
    assert again["files"] == [] and again["removed"] == [], "a second run changes nothing"


def test_noble_deb822_disabled_source_and_the_legacy_key(tmp_path, apt_dir):
    (apt_dir / "trusted.gpg").write_bytes(b"\x99\x01keyring-bytes")
    (apt_dir / "sources.list").write_text("# Ubuntu sources have moved to /etc/apt/sources.list.d/ubuntu.sources\n")
    ubuntu = ("Types: deb\nURIs: http://127.0.2.1/ubuntu\nSuites: noble noble-updates\nComponents: main\n"
              "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n")
    (apt_dir / "sources.list.d" / "ubuntu.sources").write_text(ubuntu)
    (apt_dir / "sources.list.d" / "docker.sources").write_text(
        "Enabled: no\nTypes: deb\nURIs: http://repo.example/linux/ubuntu\nSuites: jammy\nComponents: stable\n"
        "Architectures: amd64\n")
    done = repair(tmp_path, "jammy", "noble")
    assert done["removed"] == ["/etc/apt/sources.list.d/docker.sources"]
    assert (apt_dir / "sources.list.d" / "docker.list").read_text() == \
        "deb [arch=amd64] http://repo.example/linux/ubuntu noble stable\n"
    assert done["legacy"] == "/etc/apt/trusted.gpg.d/docker.gpg"
    assert (apt_dir / "trusted.gpg.d" / "docker.gpg").read_bytes() == b"\x99\x01keyring-bytes"
    assert not (apt_dir / "trusted.gpg").exists() and (apt_dir / "trusted.gpg.nodegate-moved").exists()
    assert (apt_dir / "sources.list.d" / "ubuntu.sources").read_text() == ubuntu
    again = repair(tmp_path, "jammy", "noble")
    assert (again["files"], again["removed"], again["legacy"]) == ([], [], None)


def test_junit_failures_name_each_failing_check(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text("""<?xml version="1.0"?><testsuites><testsuite tests="3" failures="1" errors="1" skipped="0">
      <testcase name="test_a[node4]"/>
      <testcase name="test_b[node4]"><failure message="Failed: the lock is held by x&#10;  fix: wait">tb</failure></testcase>
      <testcase name="test_c[node4]"><error message="">boom
second</error></testcase>
    </testsuite></testsuites>""")
    failed, counts = _junit_failures(junit)
    assert failed == ("test_b[node4]: Failed: the lock is held by x (fix: wait)", "test_c[node4]: boom")
    assert counts == "1 passed, 1 failed, 1 errors, 0 skipped"
    assert _junit_failures(tmp_path / "missing.xml") == ((), "")
