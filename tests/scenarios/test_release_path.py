"""node4 along the whole release path, 20.04 -> 22.04 -> 24.04, as an operator runs it (`pytest
procedures/ … --execute`, once per release), on a docker lab and on a containerd lab; and a
Kubespray checkout without the fix for kubespray #9114 stopped at the gate.

After the last step the test reads the node's own files: `apt-get update` prints no warning, the
Docker source is enabled on noble (a one-line entry, as Kubespray's docker role writes it) with its
key in a keyring file of its own, and nothing is left in the legacy /etc/apt/trusted.gpg. The
upgrader moved the source to deb822 `Enabled: no` on the way to noble (the lab's
do-release-upgrade does what ubuntu-release-upgrader's migrateToDeb822Sources does), and on the
docker lab Kubespray's docker role ran over the repair (apt_key, apt_repository).
"""
from __future__ import annotations

import pytest
from labkit import fixed_kubespray_checkout
from scenariotools import Lab, Operator, lock_free, no_traceback, write_profile

from nodegate.core import aptsources

LIMITS = dict(reboot_timeout_worker_s=90, storage_timeout_s=60, lock_stale_after_s=120, settle_s=0)


def boot_id(lab: Lab) -> str:
    return lab.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()


def apt_end_state(lab: Lab) -> dict:
    """The node's apt files and `apt-get update`, read on the node itself."""
    files = lab.ssh("for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; "
                    "do [ -f \"$f\" ] && printf '=== %s\\n' \"$f\" && cat \"$f\"; done").stdout
    texts: dict[str, str] = {}
    path = None
    for line in files.splitlines(keepends=True):
        if line.startswith("=== "):
            path = line[4:].strip()
            texts[path] = ""
        elif path:
            texts[path] += line
    update = lab.ssh("apt-get update 2>&1").stdout
    legacy = lab.ssh("if [ -s /etc/apt/trusted.gpg ]; then echo present; else echo absent; fi").stdout.strip()
    keyrings = lab.ssh("ls /etc/apt/trusted.gpg.d/").stdout.split()
    entries = [e for p, t in texts.items() for e in aptsources.entries(p, t)]
    return {"files": texts, "update": update, "legacy": legacy, "keyrings": keyrings, "entries": entries}


def assert_docker_source_on_noble(lab: Lab) -> dict:
    state = apt_end_state(lab)
    warnings = [line for line in state["update"].splitlines() if line.startswith(("W:", "E:", "Err:"))]
    assert warnings == [], state["update"]
    docker_url = f"{lab.config.repo_url}/linux/ubuntu"
    docker = [e for e in state["entries"] if e.enabled and aptsources.repo_key(e.uris[0]) == docker_url]
    assert len(docker) == 1, (docker, state["files"])
    (entry,) = docker
    assert entry.suites == ("noble",) and entry.format == "one-line" and entry.path.endswith(".list"), entry
    assert "docker.gpg" in state["keyrings"], state["keyrings"]
    assert state["legacy"] == "absent"
    assert not any(p.endswith("docker.sources") for p in state["files"]), state["files"]
    ubuntu = state["files"].get("/etc/apt/sources.list.d/ubuntu.sources", "")
    assert "Suites: noble noble-updates noble-security" in ubuntu, "Ubuntu's own sources stay as the upgrader wrote them"
    return state


def upgrade_twice(lab: Lab, op: Operator, profile) -> list[float]:
    seconds = []
    # the lab's default Rook (v1.15.9, cephcsi v3.12.3) is one 24.04 needs (rook #14431)
    assert lab.rook_images()[1] == {"quay.io/cephcsi/cephcsi:v3.12.3"}, lab.rook_images()
    for target in ("22.04", "24.04"):
        run = op.run(profile, target=target, timeout=1200)
        no_traceback(run)
        assert run.rc == 0, run.text[-5000:]
        assert lab.standing().release == target
        seconds.append(run.seconds)
    return seconds


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("release-path")


def test_unfixed_checkout_stops_at_the_gate_with_the_line_to_add(scenario_lab: Lab, work):
    lab = scenario_lab
    op = Operator(work / "gate", lab.config)
    op.work.mkdir()
    profile = write_profile(lab.config, work / "unfixed.toml", **LIMITS)      # the lab's checkout, as shipped
    before = boot_id(lab)
    run = op.run(profile)
    no_traceback(run)
    assert run.rc == 1 and run.failed_step() == "gate", run.text[-3000:]
    message = run.message()
    assert "test_kubespray_docker_task_has_the_downgrade_fix" in message and "kubespray #9114" in message, message
    task = lab.config.dir / "kubespray/roles/container-engine/docker/tasks/main.yml"
    assert f"add `    force: true` to {task}" in message, message
    assert 'task "ensure docker packages are installed", after line 44' in message, message
    standing = lab.standing()
    assert boot_id(lab) == before and not standing.cordoned and standing.release == "20.04"
    lock_free(lab)
    print("#9114 at the gate: failed naming the file, the task and `    force: true` after line 44; node4 untouched "
          f"(same boot id, schedulable, 20.04) in {run.seconds:.1f}s")


def test_docker_lab_focal_to_noble(scenario_lab: Lab, work):
    lab = scenario_lab
    op = Operator(work / "docker", lab.config)
    op.work.mkdir()
    checkout = fixed_kubespray_checkout(lab.config, work / "docker")
    profile = write_profile(lab.config, work / "docker.toml", kubespray=checkout, **LIMITS)
    seconds = upgrade_twice(lab, op, profile)
    state = assert_docker_source_on_noble(lab)
    assert set(lab.standing().held) == {"containerd.io", "docker-ce", "docker-ce-cli"}
    assert not lab.standing().cordoned
    print(f"docker lab: 20.04 -> 22.04 in {seconds[0]:.0f}s, 22.04 -> 24.04 in {seconds[1]:.0f}s; "
          f"third-party sources: {[e.describe() for e in state['entries'] if not e.ubuntu_own]}")


def test_containerd_lab_focal_to_noble(make_lab, tmp_path):
    config = make_lab.up("--container-manager", "containerd", nodes=4, bare=False)
    lab = Lab(config)
    try:
        assert lab.standing().held == {}
        op = Operator(tmp_path, config)
        # the checkout as shipped: with containerd the docker role (and kubespray #9114) does not run
        profile = write_profile(config, tmp_path / "containerd.toml", **LIMITS)
        seconds = upgrade_twice(lab, op, profile)
        assert_docker_source_on_noble(lab)
        assert lab.standing().held == {} and not lab.standing().cordoned
        assert lab.ssh("dpkg-query -W -f='${Status}' containerd.io 2>/dev/null || true").stdout.strip() \
            in ("", "unknown ok not-installed")
    finally:
        lab.kube.close()
    print(f"containerd lab: 20.04 -> 22.04 in {seconds[0]:.0f}s, 22.04 -> 24.04 in {seconds[1]:.0f}s")
