"""The lab daemon: boots nodes, reboots them when they end, runs the lab's services.

Started by `nodegate lab up` as `python -m nodegate.lab.supervisor --dir DIR` in its own
session. It owns: the node processes and DIR/nodes/*/state.json, the apt repository's HTTP
server, the API server process, the etcd members (started and stopped with their node) and
Ceph's creation. Every process it starts is recorded in DIR/pids/<name>.pid, so `lab down`
can stop everything by PID even after this daemon was killed.

Control: a Unix socket (control_socket_path) takes one JSON request per connection,
e.g. {"op": "reset", "node": "node2"}, and answers one JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from nodegate.lab import shared_files
from nodegate.lab.config import LabConfig, LabNode
from nodegate.lab.faults import FaultBook
from nodegate.lab.node import NodeRuntime, child_pid, new_boot_id, pid_alive, stop_pid

log = logging.getLogger("nodegate.lab.supervisor")

SHUTDOWN_POLL_S = 0.2       # how often the shutdown word of a running node is read
SSH_UP_TIMEOUT_S = 20.0     # a booting node must answer SSH within this
FAULT_POLL_S = 0.5          # faults.json is re-read this often (the CLI also pokes the socket)
API_RESTARTS_MAX = 5        # API server restarts in a row before the supervisor gives up on it


def control_socket_path(lab_dir: Path) -> Path:
    path = Path(lab_dir) / "supervisor.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(lab_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"nodegate-lab-{digest}.sock"


def write_pid_file(path: Path, pid: int) -> None:
    shared_files.write_atomic(path, f"{pid}\n")


# -- the other lab parts (each optional until its module exists) ------------------------------
def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def start_repo_server(config: LabConfig):
    """Serve DIR/apt on config.repo_address:repo_port; returns an object with shutdown()."""
    if "apt" not in read_services(config.dir) or not _has_module("nodegate.lab.aptrepo"):
        return None
    from nodegate.lab import aptrepo

    return aptrepo.serve(config)


def lab_etcd(config: LabConfig):
    if "etcd" not in read_services(config.dir) or not _has_module("nodegate.lab.etcd"):
        return None
    from nodegate.lab.etcd import LabEtcd

    return LabEtcd(config)


def lab_ceph(config: LabConfig):
    if "ceph" not in read_services(config.dir) or not _has_module("nodegate.lab.ceph"):
        return None
    from nodegate.lab.ceph import LabCeph

    return LabCeph(config)


def api_server_command(config: LabConfig) -> list[str] | None:
    if "api" not in read_services(config.dir) or not _has_module("nodegate.lab.apiserver.__main__"):
        return None
    return [sys.executable, "-m", "nodegate.lab.apiserver", "--dir", str(config.dir)]


SERVICES = ("apt", "api", "ceph", "etcd")


def read_services(lab_dir: Path) -> tuple[str, ...]:
    """Which lab services this lab runs besides its nodes (DIR/services.json, written by `lab up`)."""
    data = shared_files.read_json(Path(lab_dir) / "services.json")
    return SERVICES if data is None else tuple(data["services"])


def write_services(lab_dir: Path, services: tuple[str, ...]) -> None:
    shared_files.write_json(Path(lab_dir) / "services.json", {"services": list(services)}, indent=None)


def node_status_key(node: str) -> str:
    """A node's entry in the status book (present only once a boot of it failed)."""
    return f"node {node}"


class StatusBook:
    """DIR/supervisor-status.json: how each lab service is doing, for `lab up` and `lab status`."""

    def __init__(self, lab_dir: Path) -> None:
        self.path = lab_dir / "supervisor-status.json"
        self.data: dict[str, dict] = {}

    def set(self, service: str, state: str, detail: str = "") -> None:
        self.data[service] = {"state": state, "detail": detail, "at": time.time()}
        shared_files.write_json(self.path, self.data, indent=1)

    @staticmethod
    def read(lab_dir: Path) -> dict[str, dict]:
        return shared_files.read_json(Path(lab_dir) / "supervisor-status.json", {})


class NodeSlot:
    """One node's life under the supervisor: boot, watch, reboot after a delay, or hold down."""

    def __init__(self, sup: "Supervisor", node: LabNode) -> None:
        self.sup = sup
        self.node = node
        self.runtime = NodeRuntime(sup.config, node)
        self.proc: asyncio.subprocess.Process | None = None
        self.pid1: int | None = None
        self.boot_id = ""
        self.boot_count = 0
        self.pending: str | None = None      # "reset" | "poweroff" | "stop": asked by the host
        self.held_reason: str | None = None  # why a down node is not booted again
        self.wake = asyncio.Event()
        self.up_event = asyncio.Event()
        self.boot_failed = asyncio.Event()   # the last boot failed (cleared when a boot starts)
        self.task: asyncio.Task | None = None
        previous = self.runtime.read_state()
        if previous is not None:
            self.boot_count = previous.boot_count

    @property
    def name(self) -> str:
        return self.node.name

    def pid_file(self, suffix: str = "") -> Path:
        return self.sup.config.dir / "pids" / f"{self.name}{suffix}.pid"

    async def life(self) -> None:
        while not self.sup.stopping:
            if self.pending == "reset":
                # Only this loop touches the disk, so a reset can never race a boot.
                self.pending = None
                self.held_reason = None
                await asyncio.to_thread(self.reset_disk)
            if self.held_reason:
                log.info("%s stays down (%s)", self.name, self.held_reason)
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                await self.boot()
            except Exception as exc:  # a node that cannot boot must not take the lab down
                log.error("%s failed to boot: %s", self.name, exc)
                self.held_reason = f"boot failed: {exc}"
                self.end_node()
                self.write_down()
                # `lab up` (wait_ready) reads this and stops at once, naming the node and its log.
                detail = f"{self.name} failed to boot: {exc}"
                if str(self.runtime.log_file) not in detail:
                    detail += f" (its log: {self.runtime.log_file})"
                self.sup.status.set(node_status_key(self.name), "failed",
                                    f"{detail}; the supervisor's log: {self.sup.dir / 'logs' / 'supervisor.log'}")
                self.boot_failed.set()
                continue
            if self.sup.status.data.get(node_status_key(self.name), {}).get("state") == "failed":
                self.sup.status.set(node_status_key(self.name), "up", "booted after a failed boot")
            word = await self.watch()
            await self.after_end(word)
            if self.sup.stopping or self.pending == "reset":
                continue
            if self.pending == "poweroff" or word == "poweroff":
                self.pending = None
                self.held_reason = "powered off"
                continue
            self.pending = None
            if self.sup.faults.node_has("hang-on-reboot", self.name):
                self.held_reason = "fault hang-on-reboot"
                continue
            await self.sleep_or_wake(self.sup.config.boot_delay_s)

    async def sleep_or_wake(self, seconds: float) -> None:
        self.wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=seconds)

    async def boot(self) -> None:
        runtime = self.runtime
        self.boot_failed.clear()
        await asyncio.to_thread(runtime.mount)
        self.boot_id = new_boot_id()
        self.boot_count += 1
        runtime.log_file.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(runtime.log_file, "ab") as logf:
            self.proc = await asyncio.create_subprocess_exec(
                *runtime.boot_command(self.boot_id), stdin=asyncio.subprocess.DEVNULL,
                stdout=logf, stderr=logf, start_new_session=True)
        write_pid_file(self.pid_file("-unshare"), self.proc.pid)
        self.pid1 = await asyncio.to_thread(child_pid, self.proc.pid)
        if self.pid1 is None:
            raise RuntimeError(f"unshare {self.proc.pid} ended before starting the node")
        write_pid_file(self.pid_file(), self.pid1)
        deadline = time.monotonic() + SSH_UP_TIMEOUT_S
        while not await asyncio.to_thread(runtime.ssh_listening):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start; see {runtime.log_file}")
            await asyncio.sleep(0.02)
        runtime.write_state(state="up", pid=self.pid1, boot_id=self.boot_id, boot_count=self.boot_count)
        log.info("%s up: boot %d, pid %d, %.2f s", self.name, self.boot_count, self.pid1,
                 time.monotonic() - started)
        self.up_event.set()
        if "etcd" in self.node.roles:
            await self.sup.etcd_member(self.node, start=True)

    async def watch(self) -> str | None:
        """Wait for the node's PID 1 to end; return the word it left (reboot/poweroff) if any."""
        assert self.proc is not None and self.pid1 is not None
        word = None
        waiter = asyncio.ensure_future(self.proc.wait())
        while not waiter.done():
            seen = self.runtime.shutdown_word(self.pid1)
            if seen:
                word = seen
            await asyncio.wait([waiter], timeout=SHUTDOWN_POLL_S)
        return word

    async def after_end(self, word: str | None) -> None:
        self.up_event.clear()
        log.info("%s down (%s, exit %s)", self.name, word or self.pending or "ended", self.proc.returncode)
        self.write_down()
        for suffix in ("", "-unshare"):
            with contextlib.suppress(FileNotFoundError):
                self.pid_file(suffix).unlink()
        self.pid1 = None
        if "etcd" in self.node.roles and not self.sup.stopping:
            await self.sup.etcd_member(self.node, start=False)

    def write_down(self) -> None:
        self.runtime.write_state(state="down", pid=None, boot_id=self.boot_id, boot_count=self.boot_count)

    def reset_disk(self) -> None:
        self.runtime.unmount()
        self.runtime.wipe()
        self.runtime.mount()

    # -- host requests -------------------------------------------------------------------
    def end_node(self, sig: int = signal.SIGKILL) -> None:
        if self.pid1 and pid_alive(self.pid1):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, sig)

    async def reset(self) -> None:
        """Stop the node, empty its upper dir and boot it at once (done by life())."""
        self.pending = "reset"
        self.up_event.clear()
        if self.pid1 and pid_alive(self.pid1):
            self.end_node()
        self.boot_failed.clear()
        self.wake.set()
        await self.until_up()

    async def power_on(self) -> None:
        if self.held_reason:
            self.held_reason = None
            self.boot_failed.clear()
            self.wake.set()
        elif not self.up_event.is_set():
            self.wake.set()  # skip what is left of the boot delay
        await self.until_up()

    async def until_up(self) -> None:
        """Wait (bounded) for the node to be up; a boot that fails ends the wait at once, saying why."""
        up = asyncio.ensure_future(self.up_event.wait())
        failed = asyncio.ensure_future(self.boot_failed.wait())
        try:
            await asyncio.wait([up, failed], timeout=SSH_UP_TIMEOUT_S + 10, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            failed.cancel()
        if self.up_event.is_set():
            return
        entry = self.sup.status.data.get(node_status_key(self.name), {})
        if self.boot_failed.is_set():
            raise RuntimeError(entry.get("detail") or f"{self.name} failed to boot; see {self.runtime.log_file}")
        raise TimeoutError(f"{self.name} was not up within {SSH_UP_TIMEOUT_S + 10:.0f} s; see {self.runtime.log_file}")

    async def power_off(self) -> None:
        if self.pid1 and pid_alive(self.pid1):
            self.pending = "poweroff"
            self.end_node(signal.SIGTERM)
        else:
            self.held_reason = "powered off"

    async def stop(self) -> None:
        """Supervisor shutdown: end the node (SIGTERM to its sshd, then SIGKILL)."""
        self.wake.set()
        if self.pid1:
            await asyncio.to_thread(stop_pid, self.pid1, timeout_s=3.0)
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout=5)
        if self.task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self.task, timeout=5)


class Supervisor:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.dir = config.dir
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.slots = {n.name: NodeSlot(self, n) for n in config.ssh_hosts}   # the bastion too
        self.faults = FaultBook(config.dir)
        self.status = StatusBook(config.dir)
        self.api_proc: asyncio.subprocess.Process | None = None
        self.repo_server = None
        self.etcd = None
        self._etcd_locks: dict[str, asyncio.Lock] = {}
        self.ceph = None
        self.server: asyncio.AbstractServer | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        (self.dir / "pids").mkdir(exist_ok=True)
        write_pid_file(self.dir / "supervisor.pid", os.getpid())
        sock = control_socket_path(self.dir)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self.server = await asyncio.start_unix_server(self.handle, path=str(sock))
        os.chmod(sock, 0o600)
        tasks = []
        try:
            await self.start_repo()
            for slot in self.slots.values():
                slot.task = asyncio.create_task(slot.life(), name=f"node-{slot.name}")
            tasks.append(asyncio.create_task(self.watch_faults()))
            tasks.append(asyncio.create_task(self.run_api_server()))
            tasks.append(asyncio.create_task(self.create_ceph()))
            tasks.append(asyncio.create_task(self.create_etcd()))
            self.status.set("supervisor", "up", f"pid {os.getpid()}")
            await self.stop_event.wait()
        finally:
            log.info("stopping the lab")
            self.stopping = True
            self.status.set("supervisor", "stopping")
            for task in tasks:
                task.cancel()
            await self.shutdown()
            self.server.close()
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "supervisor.pid").unlink()
            self.status.set("supervisor", "stopped")
            log.info("lab stopped")

    async def shutdown(self) -> None:
        await asyncio.gather(*(slot.stop() for slot in self.slots.values()), return_exceptions=True)
        if self.api_proc is not None and self.api_proc.returncode is None:
            await asyncio.to_thread(stop_pid, self.api_proc.pid, timeout_s=5.0)
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "pids/apiserver.pid").unlink()
        for name, component in (("etcd", self.etcd or lab_etcd(self.config)), ("ceph", self.ceph or lab_ceph(self.config))):
            if component is not None:
                try:
                    await asyncio.to_thread(component.stop_all)
                except Exception as exc:
                    log.error("stopping %s: %s", name, exc)
        if self.repo_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.repo_server.shutdown)
        for slot in self.slots.values():
            try:
                await asyncio.to_thread(slot.runtime.unmount)
            except Exception as exc:
                log.error("unmounting %s: %s", slot.name, exc)

    # -- services ---------------------------------------------------------------------------
    async def start_repo(self) -> None:
        try:
            self.repo_server = await asyncio.to_thread(start_repo_server, self.config)
        except Exception as exc:
            log.error("apt repository server: %s", exc)
            self.status.set("apt", "failed", str(exc))
            return
        self.status.set("apt", "up" if self.repo_server else "absent", self.config.repo_url)

    async def create_etcd(self) -> None:
        """Create the etcd cluster (all members start), then stop the members of nodes that are down;
        from then on a member starts and stops with its node."""
        try:
            etcd = lab_etcd(self.config)
            if etcd is None:
                self.status.set("etcd", "absent")
                return
            self.status.set("etcd", "creating")
            await asyncio.to_thread(etcd.create)
            self.etcd = etcd
            for node in self.config.etcd_nodes:
                if not self.slots[node.name].up_event.is_set():
                    await self.etcd_member(node, start=False)
                    # The node may have come up while its member was stopping (its own start was
                    # then a no-op on a still-running member): follow the node.
                    if self.slots[node.name].up_event.is_set():
                        await self.etcd_member(node, start=True)
            self.status.set("etcd", "created", ", ".join(etcd.endpoints()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("etcd: %s\n%s", exc, traceback.format_exc())
            self.status.set("etcd", "failed", str(exc))

    async def etcd_member(self, node: LabNode, *, start: bool) -> None:
        if self.etcd is None:
            return
        # One start or stop of a member at a time: a node booting while create_etcd stops its
        # member must not see a half-stopped member as running.
        lock = self._etcd_locks.setdefault(node.name, asyncio.Lock())
        async with lock:
            try:
                if start:
                    await asyncio.to_thread(self.etcd.start_member, node.name)
                else:
                    await asyncio.to_thread(self.etcd.stop_member, node.name)
            except Exception as exc:
                log.error("etcd member on %s (%s): %s", node.name, "start" if start else "stop", exc)

    async def create_ceph(self) -> None:
        try:
            self.ceph = lab_ceph(self.config)
            if self.ceph is None:
                self.status.set("ceph", "absent")
                return
            self.status.set("ceph", "creating")
            await asyncio.to_thread(self.ceph.create)
            self.status.set("ceph", "created")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("ceph: %s\n%s", exc, traceback.format_exc())
            self.status.set("ceph", "failed", str(exc))

    async def run_api_server(self) -> None:
        argv = api_server_command(self.config)
        if argv is None:
            self.status.set("api", "absent")
            return
        failures = 0
        log_path = self.dir / "logs" / "apiserver.log"
        while not self.stopping:
            started = time.monotonic()
            with open(log_path, "ab") as logf:
                self.api_proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
            write_pid_file(self.dir / "pids/apiserver.pid", self.api_proc.pid)
            self.status.set("api", "started", f"pid {self.api_proc.pid}")
            code = await self.api_proc.wait()
            if self.stopping:
                return
            failures = failures + 1 if time.monotonic() - started < 30 else 1
            log.error("API server ended with %s (%d in a row)", code, failures)
            if failures >= API_RESTARTS_MAX:
                self.status.set("api", "failed", f"ended {failures} times; see {log_path}")
                return
            await asyncio.sleep(1.0)

    async def watch_faults(self) -> None:
        while not self.stopping:
            self.on_faults_changed()
            await asyncio.sleep(FAULT_POLL_S)

    def on_faults_changed(self) -> None:
        self.faults.reload()
        for slot in self.slots.values():
            if slot.held_reason == "fault hang-on-reboot" and not self.faults.node_has("hang-on-reboot", slot.name):
                log.info("%s: hang-on-reboot cleared, booting", slot.name)
                slot.held_reason = None
                slot.wake.set()

    # -- control socket -------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            request = json.loads(line or b"{}")
            answer = await self.dispatch(request)
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps(answer).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def dispatch(self, request: dict) -> dict:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "faults-changed":
            self.on_faults_changed()
            return {"ok": True}
        if op in ("reset", "power-on", "power-off"):
            slot = self.slots.get(request.get("node", ""))
            if slot is None:
                return {"ok": False, "error": f"no node {request.get('node')!r}; the lab has {', '.join(self.slots)}"}
            started = time.monotonic()
            if op == "reset":
                await slot.reset()
            elif op == "power-on":
                await slot.power_on()
            else:
                await slot.power_off()
            return {"ok": True, "seconds": round(time.monotonic() - started, 2)}
        return {"ok": False, "error": f"unknown op {op!r}"}


def request(lab_dir: Path, payload: dict, *, timeout_s: float = 60.0) -> dict:
    """Send one request to a running supervisor (blocking, bounded)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(control_socket_path(lab_dir)))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data or b'{"ok": false, "error": "no answer"}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodegate.lab.supervisor")
    parser.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s", datefmt="%H:%M:%S")
    config = LabConfig.load(args.dir)
    asyncio.run(Supervisor(config).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- stopping a lab from outside (also after the supervisor was killed) -------------------------
def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _started_at(pid: int) -> float | None:
    """When the process started, in epoch seconds (from /proc: boot time + start ticks)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
    except (FileNotFoundError, ProcessLookupError, StopIteration, ValueError, IndexError):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def recorded_pid(path: Path) -> int | None:
    """The live process a pid file names, or None if it is gone or the PID was reused since
    the file was written (a process younger than its pid file is not the one recorded)."""
    pid = read_pid(path)
    if pid is None or not pid_alive(pid):
        return None
    started = _started_at(pid)
    if started is None:
        return None
    if started > path.stat().st_mtime + 2.0:  # btime has 1 s granularity
        return None
    return pid


def supervisor_pid(lab_dir: Path) -> int | None:
    path = Path(lab_dir) / "supervisor.pid"
    return recorded_pid(path) if path.exists() else None


def lab_mounts(lab_dir: Path) -> list[str]:
    from nodegate.lab.node import mounted_paths

    prefix = str(Path(lab_dir).resolve()) + "/"
    return [p for p in mounted_paths() if p.startswith(prefix)]


def stop_lab(lab_dir: Path, *, timeout_s: float = 60.0, say=lambda text: None) -> list[str]:
    """Stop everything the lab in lab_dir started, by PID, and unmount everything under it.
    Returns what had to be cleaned up by force (empty when the supervisor did it all)."""
    lab_dir = Path(lab_dir).resolve()
    forced: list[str] = []
    sup = supervisor_pid(lab_dir)
    if sup is not None:
        say(f"stopping the lab supervisor (pid {sup})")
        stop_pid(sup, timeout_s=timeout_s)
    pids_dir = lab_dir / "pids"
    files = sorted(pids_dir.glob("*.pid")) if pids_dir.is_dir() else []
    # Nodes first (their sshd is PID 1: ending it ends everything in the node), then the rest.
    files.sort(key=lambda p: (not p.stem.startswith("node"), p.stem.endswith("-unshare"), p.name))
    for path in files:
        pid = recorded_pid(path)
        if pid is not None:
            forced.append(f"{path.stem} (pid {pid})")
            say(f"stopping {path.stem} (pid {pid})")
            stop_pid(pid, timeout_s=10.0)
        path.unlink(missing_ok=True)
    for point in sorted(lab_mounts(lab_dir), key=len, reverse=True):
        forced.append(f"mount {point}")
        say(f"unmounting {point}")
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], check=False)
    for name in ("supervisor.pid",):
        (lab_dir / name).unlink(missing_ok=True)
    control_socket_path(lab_dir).unlink(missing_ok=True)
    for state_file in (lab_dir / "nodes").glob("*/state.json"):
        from nodegate.lab.node import NodeState

        state = NodeState.read(state_file)
        if state is not None and state.state != "down":
            NodeState(name=state.name, state="down", pid=None, boot_id=state.boot_id,
                      boot_count=state.boot_count, changed_at=time.time()).write(state_file)
    return forced
