"""`nodegate lab …`: bring the rehearsal lab up and down, show it, reset a node, inject faults."""
from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.lab import faults as lab_faults
from nodegate.lab import kubespray_releases, shared_files
from nodegate.lab.config import (CONTAINER_MANAGERS, DEFAULT_API_TLS, DEFAULT_ROOK, DEFAULT_SSH_USER, LOGIN_USER,
                                  MAX_NODES, ROOK_CEPHCSI, ROOK_MAINTENANCE_TIMEOUT_S, SSH_USERS, LabConfig,
                                  valid_domain)
from nodegate.lab.node import NodeRuntime, NodeState
from nodegate.lab.profile_files import write_profile_files
from nodegate.lab.supervisor import (SERVICES, StatusBook, api_server_command, lab_ceph, lab_etcd, lab_mounts, request,
                                     read_services, stop_lab, supervisor_pid, write_services)

DEFAULT_DIR = ".lab"
UP_TIMEOUT_S = 300.0


def add_parser(subparsers) -> None:
    lab = subparsers.add_parser("lab", help="the rehearsal lab: nodes, apt repo, API server, Ceph, etcd")
    sub = lab.add_subparsers(dest="lab_command", required=True)

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", default=DEFAULT_DIR, type=Path, help="lab directory (default .lab)")
        return p

    up = with_dir(sub.add_parser("up", help="bring the lab up (nothing changes if it runs already)"))
    up.add_argument("--nodes", type=int, default=4, help=f"number of nodes, 1 to {MAX_NODES} (default 4)")
    up.add_argument("--rook", default=DEFAULT_ROOK, choices=sorted(ROOK_CEPHCSI), help="Rook version the lab claims")
    up.add_argument("--kubespray", default=kubespray_releases.DEFAULT, choices=kubespray_releases.choices(),
                    metavar="VERSION", help="the Kubespray release the lab's checkout is laid out as: "
                                            + ", ".join(kubespray_releases.choices()) + " (default %(default)s)")
    up.add_argument("--boot-delay", type=float, default=3.0, metavar="S", help="seconds a rebooting node stays down")
    up.add_argument("--ready-delay", type=float, default=2.0, metavar="S",
                    help="seconds from node up to Kubernetes Ready")
    up.add_argument("--net", type=int, default=int(os.environ.get("NODEGATE_LAB_NET", "0")),
                    help="second address octet (127.NET.x.y), so labs can run side by side")
    up.add_argument("--container-manager", default="docker", choices=CONTAINER_MANAGERS,
                    help="Kubespray's container_manager in the lab inventory (default docker; containerd "
                         "nodes have no docker packages)")
    up.add_argument("--domain", default="", metavar="DOMAIN",
                    help="name Kubernetes Nodes <node>.DOMAIN (hostname label too; Rook's CRUSH hosts then read "
                         "<node>-DOMAIN with dashes) while the inventory keeps short names")
    up.add_argument("--racks", type=int, default=0, metavar="N",
                    help="put the nodes' CRUSH hosts in N racks (in turn: node1 in rack1, node2 in rack2, ...) and "
                         "give the pools a rule that places replicas in different racks (default: no racks, "
                         "replicas on different hosts)")
    up.add_argument("--osd-maintenance-timeout", type=float, default=ROOK_MAINTENANCE_TIMEOUT_S, metavar="S",
                    help="seconds the lab's Rook disruption controller keeps noout on a drained node "
                         "(Rook's osdMaintenanceTimeout; default 1800 = Rook's 30 min)")
    up.add_argument("--osd-down-out-interval", type=float, default=600.0, metavar="S",
                    help="seconds before Ceph marks a down OSD out (mon_osd_down_out_interval; default 600)")
    up.add_argument("--manage-pod-budgets", action="store_true",
                    help="CephCluster managePodBudgets true (as Rook's example cluster.yaml): the lab's Rook "
                         "disruption controller sets and takes back noout on drained nodes")
    up.add_argument("--bare", action="store_true",
                    help="nodes and apt repository only: no API server, Ceph or etcd (fast, light)")
    up.add_argument("--timeout", type=float, default=UP_TIMEOUT_S, help="seconds to wait for the lab to be ready")
    api = up.add_mutually_exclusive_group()
    api.add_argument("--https", dest="api_tls", action="store_true", default=DEFAULT_API_TLS,
                     help="API over HTTPS with the lab's CA; kubeconfig with a client certificate, plus token, "
                          "exec-plugin and restricted-user kubeconfigs" + (" (the default)" if DEFAULT_API_TLS else ""))
    api.add_argument("--plain-http", dest="api_tls", action="store_false",
                     help="API over plain HTTP with a bearer token (faster)" + ("" if DEFAULT_API_TLS else " (the default)"))
    up.add_argument("--ssh-user", choices=SSH_USERS, default=DEFAULT_SSH_USER,
                    help=f"the user the lab's profile and inventory log in as (default {DEFAULT_SSH_USER}); "
                         f"every node has {LOGIN_USER!r} with sudo")
    up.add_argument("--ssh-port", type=_port, default=22, help="port of every node's sshd (default 22)")
    up.add_argument("--sudo-password", action="store_true",
                    help=f"{LOGIN_USER}'s sudo asks for a password (the inventory's ansible_become_password); "
                         "implies --ssh-user ubuntu")
    up.add_argument("--bastion", action="store_true",
                    help="add a bastion node; the other nodes accept SSH only through it")
    up.set_defaults(func=_said(cmd_up))

    down = with_dir(sub.add_parser("down", help="stop everything the lab started and unmount"))
    down.set_defaults(func=_said(cmd_down))

    status = with_dir(sub.add_parser("status", help="show nodes and services"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_said(cmd_status))

    reset = with_dir(sub.add_parser("reset", help="put one node back to its starting state"))
    reset.add_argument("node")
    reset.set_defaults(func=_said(cmd_reset))

    for name, what in (("power-on", "boot a node that is down (like a BMC)"),
                       ("power-off", "stop a node; it stays down until power-on")):
        p = with_dir(sub.add_parser(name, help=what))
        p.add_argument("node")
        p.set_defaults(func=_said(cmd_power), power=name)

    fault = with_dir(sub.add_parser("fault", help="inject or clear a fault"))
    fault.add_argument("name", nargs="?", help="fault name (see --list)")
    fault.add_argument("--node", help="the node the fault applies to")
    fault.add_argument("--clear", action="store_true", help="clear the fault (everywhere without --node)")
    fault.add_argument("--list", action="store_true", help="list known faults and which are on")
    fault.add_argument("--ratio", type=float, help="api-flaky: share of requests that fail (default 0.5)")
    fault.add_argument("--for", dest="for_s", type=float, metavar="SECONDS", help="api-flaky: for how long")
    fault.add_argument("--mode", choices=("503", "drop", "mixed", "outage"),
                       help="api-flaky: answer 503, drop the connection, mixed (429/500/503/drops; the "
                            "default) or outage (every request dropped, whatever --ratio)")
    fault.set_defaults(func=_said(cmd_fault))


def _said(command):
    """A lab command whose failures end in a message, not a traceback: a program it ran that failed,
    or a lab file that cannot be read, becomes a PermanentError naming it (`nodegate` prints those)."""
    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except subprocess.CalledProcessError as exc:
            output = (exc.stderr or exc.output or "")
            output = output.decode(errors="replace") if isinstance(output, bytes) else output
            argv = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
            raise PermanentError(f"`{argv}` failed with exit {exc.returncode}"
                                 + (f":\n{output.strip()[-1500:]}" if output.strip() else ""),
                                 fix=f"see {Path(args.dir).resolve() / 'logs'}") from None
        except shared_files.SharedFileError as exc:
            raise PermanentError(str(exc), fix="`nodegate lab down`, then `nodegate lab up` again") from None
        except OSError as exc:
            raise PermanentError(f"lab {args.lab_command}: {exc}",
                                 fix=f"see {Path(args.dir).resolve() / 'logs'}") from None
    return run


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return value


# -- up ------------------------------------------------------------------------------------------
def cmd_up(args) -> int:
    lab_dir = Path(args.dir).resolve()
    running = supervisor_pid(lab_dir)
    if running is not None:
        config = LabConfig.load(lab_dir)
        print(f"the lab in {lab_dir} is already running (supervisor pid {running}, "
              f"{len(config.nodes)} nodes, net {config.net}); nothing changed")
        if (args.nodes, args.net) != (len(config.nodes), config.net):
            print(f"  (asked for {args.nodes} nodes on net {args.net}: take the lab down first to change it)")
        if kubespray_releases.stand_in(args.kubespray).tag != config.kubespray_version:
            print(f"  (asked for Kubespray {args.kubespray}; it runs {config.kubespray_version}: take the lab down "
                  "first to change it)")
        _say_profile(lab_dir)
        return 0
    if not 1 <= args.nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be 1 to {MAX_NODES}, not {args.nodes}")
    if not 0 <= args.net <= 255:
        raise UsageError(f"--net must be 0 to 255, not {args.net}")
    if args.domain and not valid_domain(args.domain):
        raise UsageError(f"--domain {args.domain!r} is not a DNS domain", fix="e.g. --domain example.internal")
    if args.racks and not 2 <= args.racks <= args.nodes:
        raise UsageError(f"--racks must be 2 to the number of nodes ({args.nodes}), not {args.racks}",
                         fix="use --racks N with 2 <= N <= --nodes, or leave it out for hosts without racks")
    if args.osd_maintenance_timeout <= 0:
        raise UsageError(f"--osd-maintenance-timeout must be positive seconds, not {args.osd_maintenance_timeout:g}")
    started = time.monotonic()
    if lab_mounts(lab_dir) or any((lab_dir / "pids").glob("*.pid")):
        print(f"cleaning up what a previous run left in {lab_dir}")
        stop_lab(lab_dir)
    ssh_user = LOGIN_USER if args.sudo_password else args.ssh_user
    _refuse_busy_addresses(args.net, args.nodes, args.ssh_port, bastion=args.bastion)
    services = ("apt",) if args.bare else SERVICES
    config = create_lab(lab_dir, nodes=args.nodes, net=args.net, services=services, rook_version=args.rook,
                        kubespray_version=kubespray_releases.stand_in(args.kubespray).tag,
                        container_manager=args.container_manager,
                        boot_delay_s=args.boot_delay, ready_delay_s=args.ready_delay, api_tls=args.api_tls,
                        ssh_user=ssh_user, ssh_port=args.ssh_port, sudo_password=args.sudo_password,
                        bastion=args.bastion, domain=args.domain,
                        osd_maintenance_timeout_s=args.osd_maintenance_timeout,
                        manage_pod_budgets=args.manage_pod_budgets,
                        osd_down_out_interval_s=args.osd_down_out_interval, racks=args.racks)
    prepare_node_layers(say=print)
    print(f"starting a {len(config.nodes)}-node lab in {lab_dir} (net {config.net})")
    proc = start_supervisor(config)
    try:
        wait_ready(config, timeout_s=args.timeout, started=started, proc=proc)
    except (PermanentError, TransientError):
        print(f"the lab is left running for inspection; stop it with: nodegate lab down --dir {args.dir}",
              file=sys.stderr)
        raise
    print(f"lab ready in {time.monotonic() - started:.1f} s; profile: {lab_dir / 'cluster.toml'}")
    _say_profile(lab_dir)
    return 0


def _say_profile(lab_dir: Path) -> None:
    """How other shells find this lab's profile (pytest run in the folder holding ./.lab finds it
    by itself while the lab runs: nodegate.core.running_lab)."""
    print(f"for other shells: export NODEGATE_CLUSTER={shlex.quote(str(lab_dir / 'cluster.toml'))}")


def create_lab(lab_dir: Path, *, nodes: int, net: int, services: tuple[str, ...] = SERVICES,
               **settings) -> LabConfig:
    """Fresh lab state in lab_dir (nodes start from their seed), keeping its SSH keys and token."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    token = None
    if (lab_dir / "lab.json").exists():
        try:
            token = LabConfig.load(lab_dir).token
        except (KeyError, TypeError, ValueError):
            token = None
    config = LabConfig.new(lab_dir, nodes, net=net, token=token, **settings)
    for sub in ("nodes", "pids"):
        if (lab_dir / sub).exists():
            shutil.rmtree(lab_dir / sub)
    for name in ("faults.json", "supervisor-status.json", "seed-layer"):   # seed-layer: seed.SEED_PIN
        (lab_dir / name).unlink(missing_ok=True)
    (lab_dir / "logs").mkdir(exist_ok=True)
    (lab_dir / "pids").mkdir(exist_ok=True)
    config.save()
    write_services(lab_dir, services)
    write_profile_files(config)
    from nodegate.lab.kubespray import write_checkout

    write_checkout(config)  # DIR/kubespray (the Kubespray stand-in) and DIR/kubespray-venv
    _destroy_old_state(config)
    return config


def prepare_node_layers(*, say=lambda text: None) -> None:
    """Build the apt repository and the seeded node layer now when they are not cached yet
    (once per machine, seconds), so a missing tool or base image fails here, clearly, and not
    as nodes that never boot."""
    import importlib.util

    if importlib.util.find_spec("nodegate.lab.seed") is None:
        return
    from nodegate.lab import seed

    if not seed.is_cached():
        say("building the seeded node layer (once per machine)")
    seed.ensure_seed()


def _destroy_old_state(config: LabConfig) -> None:
    """Ceph and etcd start fresh with the nodes (the supervisor creates them again)."""
    import importlib.util

    if importlib.util.find_spec("nodegate.lab.ceph") is not None:
        from nodegate.lab.ceph import LabCeph

        LabCeph(config).destroy()
    if importlib.util.find_spec("nodegate.lab.etcd") is not None:
        from nodegate.lab.etcd import LabEtcd

        LabEtcd(config).destroy()


def start_supervisor(config: LabConfig) -> subprocess.Popen:
    log_path = config.dir / "logs" / "supervisor.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "nodegate.lab.supervisor", "--dir", str(config.dir)],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
                                cwd=config.dir)
    return proc


def wait_ready(config: LabConfig, *, timeout_s: float, started: float, proc: subprocess.Popen | None = None,
               out=print) -> None:
    """Wait, bounded, until every node answers SSH and every present service is ready."""
    deadline = time.monotonic() + timeout_s
    waiting = {n.name for n in config.ssh_hosts}
    has_api = api_server_command(config) is not None
    has_ceph = lab_ceph(config) is not None
    has_etcd = lab_etcd(config) is not None
    api_ok = not has_api
    ceph_ok = not has_ceph
    etcd_ok = not has_etcd
    said: set[str] = set()
    while True:
        elapsed = time.monotonic() - started
        if proc is not None and proc.poll() is not None:
            raise PermanentError("the lab supervisor stopped while starting:\n" + _tail(config.dir / "logs/supervisor.log"))
        for name in sorted(waiting):
            runtime = NodeRuntime(config, config.node(name))
            state = runtime.read_state()
            if state is not None and state.state == "up" and runtime.ssh_listening():
                waiting.discard(name)
                out(f"  {name} up at {config.node(name).address} ({elapsed:.1f} s)")
        status = StatusBook.read(config.dir)
        for service, entry in status.items():
            if entry.get("state") == "failed" and service not in said:
                said.add(service)
                if service.startswith("node "):
                    raise PermanentError(f"the lab did not come up: {entry.get('detail')}",
                                         fix=f"read that log; then `nodegate lab down --dir {config.dir}` "
                                             "and `nodegate lab up` again")
                raise PermanentError(f"lab service {service} failed: {entry.get('detail')}",
                                     fix=f"see {config.dir / 'logs'}")
        if not api_ok and _api_answers(config):
            api_ok = True
            out(f"  API server answering at {config.api_url} ({elapsed:.1f} s)")
        if not ceph_ok and status.get("ceph", {}).get("state") == "created":
            ceph_ok = True
            out(f"  Ceph healthy ({elapsed:.1f} s)")
        if not etcd_ok and status.get("etcd", {}).get("state") == "created":
            etcd_ok = True
            out(f"  etcd members healthy ({elapsed:.1f} s)")
        if not waiting and api_ok and ceph_ok and etcd_ok:
            return
        if time.monotonic() > deadline:
            missing = (sorted(waiting) + ([] if api_ok else ["API server"]) + ([] if ceph_ok else ["Ceph"])
                       + ([] if etcd_ok else ["etcd"]))
            logs = [str(config.dir / "logs" / f"{name}.log") for name in sorted(waiting)[:3]]
            logs.append(str(config.dir / "logs" / "supervisor.log"))
            raise TransientError(f"the lab was not ready within {timeout_s:.0f} s; still waiting for "
                                 f"{', '.join(missing)}", fix=f"see {', '.join(logs)}")
        time.sleep(0.05)


def api_tls_context(config: LabConfig):
    """An ssl context that trusts the lab's CA (None for a plain-HTTP lab)."""
    if not config.api_tls:
        return None
    import ssl

    from nodegate.lab.pki import Pki

    return ssl.create_default_context(cafile=str(Pki.of(config.dir).ca_cert))


def _api_answers(config: LabConfig) -> bool:
    req = urllib.request.Request(config.api_url + "/version", headers={"Authorization": f"Bearer {config.token}"})
    try:
        with urllib.request.urlopen(req, timeout=1.0, context=api_tls_context(config)) as resp:
            return resp.status == 200
    except OSError:
        return False


def _refuse_busy_addresses(net: int, nodes: int, port: int = 22, *, bastion: bool = False) -> None:
    addresses = [f"127.{net}.1.{i}" for i in range(1, nodes + 1)] + ([f"127.{net}.4.1"] if bastion else [])
    for address in addresses:
        with socket.socket() as sock:
            sock.settimeout(0.3)
            if sock.connect_ex((address, port)) == 0:
                raise UsageError(f"{address}:{port} is already in use (another lab on net {net}?)",
                                 fix="stop that lab or choose another --net")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no {path})"


# -- down, status, reset, power ------------------------------------------------------------
def cmd_down(args) -> int:
    lab_dir = Path(args.dir).resolve()
    if not (lab_dir / "lab.json").exists():
        print(f"no lab in {lab_dir}; nothing to do")
        return 0
    started = time.monotonic()
    forced = stop_lab(lab_dir, say=lambda text: print(f"  {text}"))
    left = lab_mounts(lab_dir)
    if left:
        raise PermanentError(f"still mounted: {', '.join(left)}")
    note = f" (cleaned up by PID: {', '.join(forced)})" if forced else ""
    print(f"lab in {lab_dir} is down ({time.monotonic() - started:.1f} s){note}")
    return 0


def _load(args) -> LabConfig:
    lab_dir = Path(args.dir).resolve()
    if not (lab_dir / "lab.json").exists():
        raise UsageError(f"no lab in {lab_dir}", fix="start one with `nodegate lab up`, or pass --dir")
    return LabConfig.load(lab_dir)


def lab_status(config: LabConfig) -> dict:
    sup = supervisor_pid(config.dir)
    book = lab_faults.FaultBook(config.dir)
    nodes = []
    for node in config.ssh_hosts:
        runtime = NodeRuntime(config, node)
        state = runtime.read_state() or NodeState(node.name, "down", None, "", 0, 0.0)
        up = sup is not None and state.state == "up"
        release = runtime.os_release() if runtime.is_mounted() else {}
        nodes.append({
            "name": node.name, "state": "up" if up else "down", "address": node.address,
            "roles": list(node.roles), "boot_count": state.boot_count, "boot_id": state.boot_id,
            "release": release.get("PRETTY_NAME", "?"),
            "faults": [name for name in book.data if book.node_has(name, node.name)],
        })
    services = StatusBook.read(config.dir) if sup is not None else {}
    api = "absent"
    if api_server_command(config) is not None:
        api = "answering" if sup is not None and _api_answers(config) else "not answering"
    ceph = "absent"
    ceph_obj = lab_ceph(config)
    if ceph_obj is not None and sup is not None:
        try:
            ceph = ceph_obj.state().describe()
        except Exception as exc:  # the status line must show Ceph being down, not crash
            ceph = f"not answering ({str(exc).splitlines()[0][:120]})"
    return {"dir": str(config.dir), "running": sup is not None, "supervisor_pid": sup, "net": config.net,
            "nodes": nodes, "api": {"url": config.api_url, "state": api},
            "apt": {"url": config.repo_url, "state": services.get("apt", {}).get("state", "down")},
            "ceph": ceph, "faults": book.data}


def cmd_status(args) -> int:
    config = _load(args)
    status = lab_status(config)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    head = f"supervisor pid {status['supervisor_pid']}" if status["running"] else "not running"
    print(f"lab {status['dir']} (net {status['net']}): {head}")
    print(f"{'NODE':<8} {'STATE':<5} {'ADDRESS':<15} {'BOOTS':>5}  {'ROLES':<27} RELEASE")
    for n in status["nodes"]:
        faults = f"  faults: {', '.join(n['faults'])}" if n["faults"] else ""
        print(f"{n['name']:<8} {n['state']:<5} {n['address']:<15} {n['boot_count']:>5}  "
              f"{','.join(n['roles']):<27} {n['release']}{faults}")
    print(f"API server: {status['api']['state']} ({status['api']['url']})")
    print(f"apt repository: {status['apt']['state']} ({status['apt']['url']})")
    print(f"Ceph: {status['ceph']}")
    for name, entry in status["faults"].items():
        nodes = ", ".join(entry.get("nodes", [])) or "cluster-wide"
        print(f"fault {name}: {nodes}")
    return 0


def _running(config: LabConfig) -> None:
    if supervisor_pid(config.dir) is None:
        raise UsageError(f"the lab in {config.dir} is not running", fix="start it with `nodegate lab up`")


def cmd_reset(args) -> int:
    config = _load(args)
    node = config.node(args.node) if args.node in {n.name for n in config.nodes} else None
    if node is None:
        raise UsageError(f"no lab node {args.node!r}", fix=f"use one of: {', '.join(n.name for n in config.nodes)}")
    _running(config)
    cleared = lab_faults.clear_node_faults(config, node.name)
    answer = request(config.dir, {"op": "reset", "node": node.name})
    if not answer.get("ok"):
        raise PermanentError(f"reset {node.name}: {answer.get('error')}")
    extra = f"; faults cleared: {', '.join(cleared)}" if cleared else ""
    print(f"{node.name} reset and up again in {answer['seconds']:.1f} s{extra}")
    if "api" in read_services(config.dir):
        # The API server reports the node Ready ready_delay_s after it is up: a procedure or a
        # preflight started on the word "reset" would otherwise meet a NotReady node.
        started, limit = time.monotonic(), config.ready_delay_s + 30
        while not _node_ready(config, node.name):
            if time.monotonic() - started > limit:
                raise TransientError(f"{node.name} is up but not Ready {limit:.0f} s after its reset",
                                     fix=f"see {config.dir / 'logs'}; then `nodegate lab status`")
            time.sleep(0.1)
        print(f"{node.name} Ready {time.monotonic() - started:.1f} s later")
    return 0


def _node_ready(config: LabConfig, name: str) -> bool:
    req = urllib.request.Request(f"{config.api_url}/api/v1/nodes/{name}",
                                 headers={"Authorization": f"Bearer {config.token}"})
    try:
        with urllib.request.urlopen(req, timeout=1.0, context=api_tls_context(config)) as resp:
            conditions = json.load(resp).get("status", {}).get("conditions", [])
    except (OSError, ValueError):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def cmd_power(args) -> int:
    config = _load(args)
    if args.node not in {n.name for n in config.nodes}:
        raise UsageError(f"no lab node {args.node!r}", fix=f"use one of: {', '.join(n.name for n in config.nodes)}")
    _running(config)
    answer = request(config.dir, {"op": args.power, "node": args.node})
    if not answer.get("ok"):
        raise PermanentError(f"{args.power} {args.node}: {answer.get('error')}")
    print(f"{args.node}: {args.power} done ({answer['seconds']:.1f} s)")
    return 0


# -- faults ----------------------------------------------------------------------------------
def cmd_fault(args) -> int:
    config = _load(args)
    if args.list or not args.name:
        book = lab_faults.FaultBook(config.dir)
        for spec in lab_faults.FAULTS.values():
            on = ""
            if book.active(spec.name):
                on = "  [on: " + (", ".join(book.nodes(spec.name)) or "cluster-wide") + "]"
            scope = "--node NODE" if spec.per_node else "cluster-wide"
            print(f"{spec.name:<20} {scope:<12} {spec.summary} (acted on by {spec.acted_on_by}){on}")
        return 0
    lab_faults.check_names(config, args.name, args.node, clearing=args.clear)
    if args.clear:
        changes = lab_faults.clear_fault(config, args.name, node=args.node)
    else:
        _running(config)
        params = {k: v for k, v in (("ratio", args.ratio), ("for_s", args.for_s),
                                                    ("mode", args.mode)) if v is not None}
        changes = [lab_faults.set_fault(config, args.name, node=args.node, params=params)]
    if supervisor_pid(config.dir) is not None:
        try:
            request(config.dir, {"op": "faults-changed"}, timeout_s=5)
        except OSError:
            pass  # the supervisor re-reads faults.json every half second anyway
    for change in changes:
        where = f" on {change.node}" if change.node else ""
        detail = f": {change.detail}" if change.detail else ""
        print(f"{change.fault}{where} {change.action}{detail}")
    return 0
