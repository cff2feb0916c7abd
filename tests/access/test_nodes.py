"""nodegate.cluster.nodes.ssh against real lab nodes (real sshd, real dpkg/apt), both SSH backends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time

import pytest
from labkit import wait_until

from nodegate.cluster.nodes.ssh import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    HostKeyUnknown,
    Nodes,
    SshAuthFailed,
    SshRefused,
    wait_for_ssh,
)
from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.profile.model import NodeSpec

pytestmark = pytest.mark.lab

BACKENDS = ["ssh-config", "paramiko"]


@pytest.fixture(params=BACKENDS)
def nodes(request, bare_lab, specs_for, settings_for):
    registry = Nodes(settings=settings_for(bare_lab, with_config=request.param == "ssh-config"),
                     nodes=specs_for(bare_lab))
    yield registry
    registry.close()


def test_run_returns_frozen_result_and_checks_exit_codes(nodes):
    host = nodes.host("node1")
    result = host.run(["sh", "-c", "echo out; echo err >&2; exit 3"], expect=(3,))
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.args == ("sh", "-c", "echo out; echo err >&2; exit 3")
    with pytest.raises(AttributeError):
        result.rc = 0  # frozen
    assert host.run_expect([0, 1], ["test", "-e", "/nonexistent"]).rc == 1
    with pytest.raises(CommandFailed) as info:
        host.run(["ls", "/nonexistent-dir"])
    err = info.value
    assert isinstance(err, PermanentError)
    assert err.result.rc == 2
    text = str(err)
    assert "unexpected exit code 2 (expected 0)" in text and "`ls /nonexistent-dir` on node1" in text
    assert "No such file or directory" in text


def test_the_same_connection_is_reused(nodes):
    """Every command after the first travels over the first one's connection: the node's sshd sees
    one TCP connection (SSH_CONNECTION names the client's address and source port) and one sshd
    session process (the commands' parent). The time this saves is measured by bench/ssh.py."""
    host = nodes.host("node1")
    assert nodes.host("node1") is host
    probe = ["sh", "-c", 'echo "$SSH_CONNECTION" "$(cut -d" " -f1 /proc/$PPID/stat)"']
    seen = {host.run(probe).stdout.strip() for _ in range(6)}
    assert len(seen) == 1 and all(seen), f"six commands came over {len(seen)} connections: {sorted(seen)}"


HOSTILE = ["two words", "it's", 'say "hi"', "a;touch /tmp/ng-pwned", "$(touch /tmp/ng-pwned)",
           "`touch /tmp/ng-pwned`", "*", "back\\slash", "new\nline", "-n", "", "$HOME", "a|b&c>d"]


def test_hostile_arguments_arrive_verbatim(nodes):
    host = nodes.host("node2")
    host.run(["rm", "-f", "/tmp/ng-pwned"])
    # printf repeats its format for every argument: one NUL-terminated record per argument.
    result = host.run(["printf", "%s\\0", *HOSTILE])
    assert result.stdout.split("\0")[:-1] == HOSTILE
    assert not host.exists("/tmp/ng-pwned")
    # Also through env and timeout wrappers.
    result = host.run(["sh", "-c", 'printf "%s" "$X"'], env={"X": "$(id); rm -rf /nope"}, timeout=10)
    assert result.stdout == "$(id); rm -rf /nope"


def test_a_shell_string_is_refused(nodes):
    with pytest.raises(TypeError, match="argument list"):
        nodes.host("node1").run("echo hi")  # type: ignore[arg-type]


def test_command_timeout_stops_the_command(nodes):
    host = nodes.host("node1")
    with pytest.raises(CommandTimeout) as info:
        host.run(["sh", "-c", "echo $$ > /tmp/ng-timeout.pid; exec sleep 30"], timeout=0.5)
    assert isinstance(info.value, TransientError)
    assert "did not finish within 0.5s" in str(info.value)
    # stopped: the sleep is no longer running on the node (it would for 30 s had the wait just given up)
    pid = host.run(["cat", "/tmp/ng-timeout.pid"]).stdout.strip()
    wait_until(lambda: host.run(["sh", "-c", f"! kill -0 {pid} 2>/dev/null"], expect=(0, 1)).rc == 0, timeout=20,
               what=f"the timed-out command (pid {pid}) ended on node1")


def test_held_packages_and_versions_are_read_from_dpkg(nodes):
    host = nodes.host("node1")
    installed = host.packages.versions(["less", "openssh-server"])
    assert set(installed) == {"less", "openssh-server"}
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "--admindir",
                              f"{nodes.settings.identity_file.parent.parent}/nodes/node1/root/var/lib/dpkg", "less"],
                             capture_output=True, text=True, check=True).stdout
    assert installed["less"] == version
    seeded = host.packages.held()   # the seed holds the container runtime packages
    assert "less" not in seeded
    host.packages.hold(["less"])
    try:
        assert host.packages.held() == {**seeded, "less": version}
        assert "less" in host.run(["apt-mark", "showhold"]).stdout
    finally:
        host.packages.unhold(["less"])
    assert host.packages.held() == seeded
    assert host.packages.audit() == ""


def test_release_boot_and_disk(nodes):
    host = nodes.host("node2")
    release = host.release.os_release()
    assert release.version_codename  # whatever the seed made it, it has a codename
    boot_id = host.boot.boot_id()
    state = json.loads((nodes.settings.identity_file.parent.parent / "nodes/node2/state.json").read_text())
    assert boot_id == state["boot_id"]
    assert host.boot.running_kernel() == os.uname().release
    disk = host.boot.disk_free("/")
    assert disk.mount == "/" and disk.size_bytes > disk.avail_bytes > 0
    assert host.boot.reboot_required().required is False
    host.run(["sh", "-c", "printf 'libc6\\nlinux-base\\n' > /var/run/reboot-required.pkgs; "
                          "touch /var/run/reboot-required"], sudo=True)
    try:
        assert host.boot.reboot_required().packages == ("libc6", "linux-base")
    finally:
        host.run(["rm", "-f", "/var/run/reboot-required", "/var/run/reboot-required.pkgs"], sudo=True)


def test_apt_sources_are_read_and_parsed(nodes):
    host = nodes.host("node1")
    host.run(["sh", "-c", "echo 'deb [arch=amd64 signed-by=/etc/apt/keyrings/x.gpg] http://127.0.0.9/x focal stable'"
                          " > /etc/apt/sources.list.d/ng-test.list"], sudo=True)
    try:
        files = {f.path: f for f in host.apt.source_files()}
        mine = files["/etc/apt/sources.list.d/ng-test.list"].sources
        assert [(s.uri, s.suite, s.signed_by) for s in mine] == [("http://127.0.0.9/x", "focal",
                                                                   "/etc/apt/keyrings/x.gpg")]
    finally:
        host.run(["rm", "-f", "/etc/apt/sources.list.d/ng-test.list"], sudo=True)


def test_refused_is_transient_and_says_node_down(bare_lab, nodes):
    absent = NodeSpec(name="node9", address=f"127.{bare_lab.net}.1.9", user=bare_lab.ssh_user,
                      roles=frozenset({"worker"}))
    registry = Nodes(settings=nodes.settings, nodes=[absent])
    with pytest.raises(SshRefused) as info:
        registry.host("node9").run(["true"])
    assert isinstance(info.value, TransientError)
    assert "node9" in str(info.value) and "refused the SSH connection" in str(info.value)
    assert "down or its sshd is not running" in str(info.value)


def test_wrong_key_is_an_auth_failure_naming_key_and_user(bare_lab, nodes, tmp_path, specs_for, settings_for):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    settings = settings_for(bare_lab, with_config=nodes.settings.config is not None, identity_file=key)
    # Without the lab's ssh_config pointing at its own key, only the given key is offered.
    if settings.config is not None:
        config = tmp_path / "config"
        config.write_text((bare_lab.dir / "ssh/config").read_text()
                          .replace(str(bare_lab.dir / "ssh/id_ed25519"), str(key))
                          .replace(str(bare_lab.dir / "ssh/cm"), tempfile.mkdtemp(prefix="ng-cm-")))
        settings = settings_for(bare_lab, config=config, identity_file=key)
    registry = Nodes(settings=settings, nodes=specs_for(bare_lab))
    with pytest.raises(SshAuthFailed) as info:
        registry.host("node1").run(["true"])
    assert isinstance(info.value, UsageError)
    text = str(info.value)
    assert str(key) in text and f"user {bare_lab.ssh_user}" in text and "authorized_keys" in text


def test_unknown_host_key_is_refused_with_how_to_trust(bare_lab, nodes, tmp_path, specs_for, settings_for):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    settings = settings_for(bare_lab, with_config=nodes.settings.config is not None, known_hosts=empty)
    with pytest.raises(HostKeyUnknown) as info:
        Nodes(settings=settings, nodes=specs_for(bare_lab)).host("node1").run(["true"])
    text = str(info.value)
    assert "has no host key" in text and "ssh-keyscan" in text and "trust_new_host_keys" in text
    # Trusting new keys: accepted, and recorded for next time.
    trusting = settings_for(bare_lab, with_config=nodes.settings.config is not None, known_hosts=empty,
                            trust_new_host_keys=True)
    registry = Nodes(settings=trusting, nodes=specs_for(bare_lab))
    try:
        assert registry.host("node1").run(["echo", "ok"]).stdout == "ok\n"
    finally:
        registry.close()
    assert "ssh-ed25519" in empty.read_text()


def test_changed_host_key_is_a_permanent_mismatch(bare_lab, nodes, tmp_path, specs_for, settings_for):
    lines = (bare_lab.dir / "ssh/known_hosts").read_text().splitlines()
    keys = {line.split()[0].split(",")[0]: line.split(None, 1)[1] for line in lines}
    # node1's names with node2's key: what a reinstalled node (or an impostor) looks like.
    forged = tmp_path / "known_hosts"
    forged.write_text(f"node1,{bare_lab.node('node1').address} {keys['node2']}\n")
    settings = settings_for(bare_lab, with_config=nodes.settings.config is not None, known_hosts=forged)
    with pytest.raises(HostKeyMismatch) as info:
        Nodes(settings=settings, nodes=specs_for(bare_lab)).host("node1").run(["true"])
    assert isinstance(info.value, PermanentError)
    assert "does not match known_hosts" in str(info.value) and "ssh-keygen -R" in str(info.value)


def test_reconnect_after_a_reboot_sees_the_new_boot(bare_lab, nodes):
    host = nodes.host("node2")
    before = host.boot.boot_id()
    # Power-cycle the node from the host side (its PID 1 ends; the lab boots it again ~1 s later).
    state = json.loads((bare_lab.dir / "nodes/node2/state.json").read_text())
    os.kill(state["pid"], signal.SIGTERM)
    started = time.monotonic()
    fresh = wait_for_ssh(nodes, "node2", timeout=60, new_boot_id_than=before, interval=0.2)
    print(f"node2 answered SSH after its reboot in {time.monotonic() - started:.1f} s")
    assert fresh is not host and nodes.host("node2") is fresh
    after = fresh.boot.boot_id()
    assert after != before
    assert fresh.run(["echo", "back"]).stdout == "back\n"
