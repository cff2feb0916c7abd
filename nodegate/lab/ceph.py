"""A real, small Ceph cluster for the lab: one mon, one mgr and one bluestore OSD per lab node.

Everything lives under the lab directory: `DIR/ceph.conf` (enough for the `ceph` CLI on its
own), `DIR/ceph/<entity>/` (daemon data and one keyring per entity), `DIR/ceph/block/osd.N`
(the OSDs' sparse block files, outside their data dirs), PIDs in `DIR/pids/ceph-<entity>.pid`
and logs in `DIR/logs/ceph-<entity>.log`. Daemons bind only to `config.ceph_address`
(127.<net>.0.1), so labs with different `net` run side by side on the standard ports.

State is kept in files, never in this object: the API server starts and stops OSDs from its
own process with a fresh `LabCeph(config)`.

The `ceph-warn` fault (`inject_warning`) sets the cluster-wide `noscrub` flag: a real
OSDMAP_FLAGS health warning ("noscrub flag(s) set") that an operator can leave behind, reversible
at once, and independent of every OSD's run state (which the API server owns).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nodegate.lab import shared_files
from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.lab.config import LabConfig

MON = "mon.a"
MGR = "mgr.a"
ADMIN = "client.admin"
POOL = "rbd"
IMAGE = "lab-disk"
PG_NUM = 16
# With racks the rbd pool takes more PGs, as a real pool has many: with 16 PGs over 8 OSDs two OSDs
# of different racks often share no PG, and `ok-to-stop` then lets them stop together, which a real
# rack-aware cluster's hundreds of PGs never allow. 64 make such a pair ~1 in 10^4.
PG_NUM_RACKS = 64
BLOCK_SIZE = 4 << 30           # sparse: only what bluestore writes takes disk space
OSD_MEMORY_TARGET = 896 << 20  # the smallest target ceph-osd accepts
BLUESTORE_CACHE = 32 << 20
STOP_GRACE_S = 10.0            # SIGTERM → SIGKILL
CLI_TIMEOUT_S = 30.0
WARNING_FLAG = "noscrub"
# Pacific's devicehealth mgr module creates this pool (1 PG) by itself once OSDs are up, a few
# seconds after the cluster first reads healthy (seen in the lab's mgr log: pgmap 64 active+clean,
# then 65 with 1 creating+activating); until it is created and clean, the cluster is still settling.
MGR_POOL = "device_health_metrics"
RACK_RULE = "replicated_rack"  # with racks: replicas in different racks (`chooseleaf firstn 0 type rack`)

log = logging.getLogger(__name__)

# Capabilities as `ceph auth` grants them to each kind of entity.
CAPS = {
    "mon": {"mon": "allow *"},
    "mgr": {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"},
    "osd": {"mon": "allow profile osd", "mgr": "allow profile osd", "osd": "allow *"},
    "client": {"mon": "allow *", "osd": "allow *", "mds": "allow *", "mgr": "allow *"},
}


# -- processes recorded by PID ------------------------------------------------------
def pid_alive(pid: int, marker: str) -> bool:
    """True while `pid` runs a command line containing `marker` (guards against a PID
    reused by an unrelated process); a zombie counts as gone."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == "Z":
        _reap(pid)
        return False
    return marker in cmdline


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its parent (or init) reaps it


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def start_daemon(cmd: list[str], *, pidfile: Path, log: Path, marker: str,
                 env: dict[str, str] | None = None) -> int:
    """Start `cmd` in its own session, output appended to `log`, PID written to `pidfile`.
    Does nothing if the recorded PID still runs it."""
    pid = read_pid(pidfile)
    if pid and pid_alive(pid, marker):
        return pid
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)
    shared_files.write_atomic(pidfile, f"{proc.pid}\n")   # `lab down` may read it at any moment
    # Until exec, /proc shows the forking Python's command line: wait for the daemon's so
    # that a check right after start sees it running.
    deadline = time.monotonic() + 5.0
    while not pid_alive(proc.pid, marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        raise PermanentError(f"`{' '.join(cmd)}` exited at once (rc {proc.returncode})",
                             fix=f"see {log}")
    return proc.pid


def signal_daemon(pidfile: Path, marker: str, sig: int = signal.SIGTERM) -> int | None:
    """Send `sig` to the recorded process if it still runs; its PID, or None."""
    pid = read_pid(pidfile)
    if pid is None or not pid_alive(pid, marker):
        pidfile.unlink(missing_ok=True)
        return None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return None
    return pid


def wait_gone(pids: dict[int, str], *, timeout: float) -> list[int]:
    """Wait (bounded) until none of the PIDs runs its marker; the PIDs still running."""
    deadline = time.monotonic() + timeout
    left = dict(pids)
    while left and time.monotonic() < deadline:
        left = {pid: m for pid, m in left.items() if pid_alive(pid, m)}
        if left:
            time.sleep(0.05)
    return list(left)


def stop_daemons(daemons: list[tuple[Path, str]], *, grace: float) -> None:
    """SIGTERM every recorded process at once, SIGKILL those alive after `grace`, remove
    the PID files. Raises TransientError if one survives SIGKILL."""
    pids: dict[int, str] = {}
    for pidfile, marker in daemons:
        pid = signal_daemon(pidfile, marker)
        if pid:
            pids[pid] = marker
    left = wait_gone(pids, timeout=grace)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    survivors = wait_gone({p: pids[p] for p in left}, timeout=5.0)
    if survivors:
        raise TransientError(f"processes {survivors} did not end after SIGKILL")
    for pidfile, _ in daemons:
        pidfile.unlink(missing_ok=True)


# -- what the cluster looks like ------------------------------------------------------
@dataclass(frozen=True)
class CephState:
    """One `ceph status` reading, reduced to what "truly healthy" needs."""

    health: str
    checks: tuple[str, ...]
    mgr_available: bool
    osds: int
    osds_up: int
    osds_in: int
    pgs: int
    pgs_active_clean: int

    @classmethod
    def from_status(cls, status: dict) -> "CephState":
        osdmap = status.get("osdmap", {})
        osdmap = osdmap.get("osdmap", osdmap)  # older releases nest it once more
        pgmap = status.get("pgmap", {})
        clean = sum(s["count"] for s in pgmap.get("pgs_by_state", [])
                    if s["state_name"] == "active+clean")
        return cls(health=status["health"]["status"],
                   checks=tuple(sorted(status["health"].get("checks", {}))),
                   mgr_available=bool(status.get("mgrmap", {}).get("available")),
                   osds=osdmap.get("num_osds", 0), osds_up=osdmap.get("num_up_osds", 0),
                   osds_in=osdmap.get("num_in_osds", 0),
                   pgs=pgmap.get("num_pgs", 0), pgs_active_clean=clean)

    @property
    def truly_healthy(self) -> bool:
        # A fresh mon says HEALTH_OK with no mgr and no OSD: that is not a healthy cluster.
        return (self.health == "HEALTH_OK" and self.mgr_available and self.osds > 0
                and self.osds_up == self.osds_in == self.osds
                and self.pgs > 0 and self.pgs_active_clean == self.pgs)

    def describe(self) -> str:
        return (f"{self.health} (checks: {', '.join(self.checks) or 'none'}), "
                f"mgr available: {self.mgr_available}, "
                f"OSDs {self.osds_up} up / {self.osds_in} in / {self.osds}, "
                f"PGs active+clean {self.pgs_active_clean} / {self.pgs}")


class LabCeph:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.dir = config.dir / "ceph"
        self.conf = config.dir / "ceph.conf"
        self.pids = config.dir / "pids"
        self.logs = config.dir / "logs"

    # -- the CLI -------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment for any process that runs the ceph CLI against this lab."""
        return {**os.environ, "CEPH_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = False, timeout: float = CLI_TIMEOUT_S,
            input: str | None = None) -> subprocess.CompletedProcess:
        """The `ceph` CLI against this lab. CEPH_CONF is always set: without it the CLI
        looks for monitors in DNS SRV records."""
        return self._tool("ceph", f"--connect-timeout={int(timeout)}", *args,
                          check=check, timeout=timeout, input=input)

    def _tool(self, *cmd: str, check: bool = True, timeout: float = CLI_TIMEOUT_S,
              input: str | None = None) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                                    timeout=timeout + 5, input=input)
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"`{' '.join(cmd)}` did not finish in {timeout + 5:.0f} s",
                                 fix=f"is the mon running? see {self.logs}/ceph-{MON}.log") from exc
        if check and result.returncode != 0:
            raise PermanentError(f"`{' '.join(cmd)}` failed (rc {result.returncode}): "
                                 f"{result.stderr.strip()[-800:]}")
        return result

    def _json(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> dict:
        return json.loads(self.run(*args, "-f", "json", check=True, timeout=timeout).stdout)

    # -- layout --------------------------------------------------------------------
    def osd_id(self, node: str) -> int:
        """OSD ids follow the lab's node order: node1 holds osd.0."""
        self.config.node(node)  # KeyError naming the lab's nodes
        return [n.name for n in self.config.nodes].index(node)

    def _osd_entity(self, node: str) -> str:
        return f"osd.{self.osd_id(node)}"

    def _pidfile(self, entity: str) -> Path:
        return self.pids / f"ceph-{entity}.pid"

    def _marker(self, entity: str) -> str:
        # Every daemon gets `-c DIR/ceph.conf --id X` on its command line: this string
        # identifies it among other labs' daemons and reused PIDs.
        return f"-c {self.conf} --id {entity.split('.', 1)[1]} "

    @property
    def _run_dir(self) -> Path:
        # Admin sockets are unix sockets, whose paths must stay under 108 bytes; a deep lab
        # directory (pytest's tmp_path) would overflow, so it falls back to a short path.
        run = self.dir / "run"
        if len(str(run / "osd.15.asok")) < 100:
            return run
        return Path("/run/nodegate-lab") / f"ceph-{zlib.crc32(str(self.dir).encode()):08x}"

    def _entities(self) -> list[str]:
        return [MON, MGR, *(self._osd_entity(n.name) for n in self.config.nodes)]

    def pool_size(self) -> tuple[int, int]:
        """Replicas and min_size: three copies in separate failure domains (hosts, or racks with
        --racks), fewer where there are fewer domains; min_size is Ceph's own default for the size
        (size 3: 2). So, as on a real rack-aware cluster, `ok-to-stop` lets one whole rack stop
        (each PG keeps two copies) and refuses two racks (some PG would keep one, below min_size)."""
        domains = self.config.racks or len(self.config.nodes)
        size = min(3, domains)
        return size, size - size // 2

    def _conf_text(self, fsid: str) -> str:
        c = self.config
        size, min_size = self.pool_size()
        daemon = [
            f"run dir = {self._run_dir}",
            "admin socket = $run_dir/$name.asok",
            f"log file = {self.logs}/ceph-$name.log",
            "log to stderr = false",
            "err to stderr = true",
        ]
        lines = [
            "[global]",
            f"fsid = {fsid}",
            f"mon host = [v2:{c.ceph_address}:3300,v1:{c.ceph_address}:6789]",
            f"public addr = {c.ceph_address}",
            f"cluster addr = {c.ceph_address}",
            "auth cluster required = cephx",
            "auth service required = cephx",
            "auth client required = cephx",
            f"keyring = {self.dir}/$name/keyring",
            # Each of the next settings keeps a small healthy lab at HEALTH_OK (lab-notes.md).
            "auth allow insecure global id reclaim = false",
            "mon data avail warn = 2",
            f"osd pool default size = {size}",
            f"osd pool default min size = {min_size}",
            f"mon warn on pool no redundancy = {'false' if size < 3 else 'true'}",
            # No autoscaler: it would re-peer PGs a minute after start.
            "osd pool default pg autoscale mode = off",
            f"osd pool default pg num = {PG_NUM}",
            f"osd pool default pgp num = {PG_NUM}",
            "mon allow pool delete = true",
            # OSDs report PG states to the mgr every period: a short one shows
            # active+clean (and degraded) sooner.
            "mgr stats period = 1",
            # The mon batches changes for up to this long before it commits them; each pool
            # or flag command waits for one commit (1 s by default).
            "paxos propose interval = 0.2",
            # How long a down OSD stays in before the mon marks it out (Ceph's default 600 s;
            # a lab may shorten it to show what an unprotected reboot does).
            f"mon osd down out interval = {int(c.osd_down_out_interval_s)}",
            "",
            "[mon]",
            f"mon data = {self.dir}/$name",
            # The always-on modules plus iostat: restful and others bind ports on every address.
            "mgr initial modules = iostat",
            *daemon,
            "",
            "[mgr]",
            f"mgr data = {self.dir}/$name",
            *daemon,
            "",
            "[osd]",
            f"osd data = {self.dir}/$name",
            "osd objectstore = bluestore",
            f"bluestore block path = {self.dir}/block/$name",
            "bluestore block create = true",
            f"bluestore block size = {BLOCK_SIZE}",
            "bluestore fsck on mkfs = false",
            # An OSD opens and closes its block file ~10 times while it starts (each op shard
            # asks whether it is rotational); each close waits out one aio poll, 250 ms by
            # default: a short poll takes seconds off every OSD start.
            "bdev aio poll ms = 20",
            # Each block device reserves its queue depth (1024) of the host's fs.aio-max-nr
            # (65536 on a stock kernel) at open: a few labs of 16 OSDs exhaust it and mkfs
            # fails with EAGAIN. A lab OSD never has more than a few IOs in flight.
            "bdev aio max queue depth = 64",
            # rocksdb writes thousands of lines per OSD start at its default level.
            "debug rocksdb = 0/5",
            "debug bluefs = 0/5",
            # Lean daemons: up to 16 OSDs share one small machine.
            f"osd memory target = {OSD_MEMORY_TARGET}",
            "bluestore cache autotune = false",
            f"bluestore cache size = {BLUESTORE_CACHE}",
            *daemon,
        ]
        for node in c.nodes:
            # The CRUSH host is what Rook names it: the node's hostname label with '.' -> '-'
            # (rook NormalizeCrushName), so host-level flags (set-group noout) and OSD_HOST_DOWN
            # name the node as on a real cluster, FQDN nodes included.
            # With racks the OSD's start (`osd crush update on start`) puts its host under its rack.
            lines += ["", f"[{self._osd_entity(node.name)}]",
                      f"crush location = {self.config.crush_location(node)}"]
        return "\n".join(lines) + "\n"

    def _write_keyrings(self) -> Path:
        """One keyring per entity in its data dir; returns the mon's initial keyring, which
        holds every entity so `ceph-mon --mkfs` registers them all at once."""
        sections = []
        for entity in [MON, ADMIN, MGR] + [self._osd_entity(n.name) for n in self.config.nodes]:
            key = self._tool("ceph-authtool", "--gen-print-key").stdout.strip()
            kind = "mon" if entity == MON else entity.split(".")[0]
            caps = "".join(f'\tcaps {svc} = "{cap}"\n' for svc, cap in CAPS[kind].items())
            section = f"[{'mon.' if entity == MON else entity}]\n\tkey = {key}\n{caps}"
            sections.append(section)
            if entity == MON:
                continue  # `ceph-mon --mkfs` writes it, and refuses a non-empty data dir
            keyring = self.dir / entity / "keyring"
            keyring.parent.mkdir(parents=True, exist_ok=True)
            keyring.write_text(section)
            keyring.chmod(0o600)
        initial = self.dir / "initial.keyring"
        initial.write_text("".join(sections))
        initial.chmod(0o600)
        return initial

    # -- life cycle ----------------------------------------------------------------
    def create(self, *, timeout: float = 180.0) -> CephState:
        """Create and start the cluster, put an rbd image with data in the `rbd` pool and
        wait until it is truly healthy. Refuses to overwrite an existing cluster."""
        if self.conf.exists() or self.dir.exists():
            raise UsageError(f"a lab Ceph cluster already exists in {self.dir}",
                             fix="destroy it first (nodegate lab down)")
        began = time.monotonic()
        for path in (self.dir / "block", self._run_dir, self.pids, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(self._conf_text(fsid))
        initial = self._write_keyrings()
        monmap = self.dir / "monmap"
        addr = self.config.ceph_address
        self._tool("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                   f"[v2:{addr}:3300,v1:{addr}:6789]", str(monmap))
        self._tool("ceph-mon", "-c", str(self.conf), "--mkfs", "--id", "a",
                   "--monmap", str(monmap), "--keyring", str(initial))
        initial.unlink()
        if not (self.dir / MON / "store.db" / "CURRENT").exists():  # mkfs can fail with rc 0
            raise PermanentError(f"ceph-mon --mkfs made no store in {self.dir / MON}",
                                 fix=f"see {self.logs}/ceph-{MON}.log")
        self.start_mon_mgr()
        osd_uuids = {n.name: str(uuid.uuid4()) for n in self.config.nodes}
        # bluestore mkfs needs no monitor; a few at a time keep two cores responsive.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda n: self._mkfs_osd(n, osd_uuids[n]), osd_uuids))
        # One CLI process (interactive mode reads commands from stdin) per batch: each `ceph`
        # start costs ~0.3 s of CPU.
        self._batch([f"osd new {osd_uuids[n]} {self.osd_id(n)}" for n in osd_uuids])
        log.info("ceph: mon, mgr, %d OSDs made in %.1f s", len(osd_uuids), time.monotonic() - began)
        for node in self.config.nodes:
            self.start_osd(node.name)
        # Size and min_size come from the pool defaults in ceph.conf. With racks every pool takes
        # the rack rule, the mgr's own (created when it likes) too: as the operator of a rack-aware
        # cluster sets it, through the default rule for new pools and the rule of existing ones.
        rule = ""
        if self.config.racks:
            self._batch([f"osd crush rule create-replicated {RACK_RULE} default rack"])
            rule_id = self._json("osd", "crush", "rule", "dump", RACK_RULE)["rule_id"]
            self._batch([f"config set global osd_pool_default_crush_rule {rule_id}"])
            rule = RACK_RULE
        pgs = PG_NUM_RACKS if rule else PG_NUM
        self._batch([f"osd pool create {POOL} {pgs} {pgs} replicated {rule}".strip(),
                     f"osd pool application enable {POOL} rbd"])
        others = [pool for pool in self.pools() if pool != POOL] if rule else []
        if others:
            self._batch([f"osd pool set {pool} crush_rule {RACK_RULE}" for pool in others])
        self._write_data()
        log.info("ceph: data written at %.1f s", time.monotonic() - began)
        state = self.wait_healthy(max(1.0, timeout - (time.monotonic() - began)))
        log.info("ceph: truly healthy at %.1f s", time.monotonic() - began)
        return state

    def _batch(self, commands: list[str]) -> None:
        out = self.run(input="\n".join(commands) + "\n", check=True)
        if "Error" in out.stderr:  # interactive mode goes on after a failed command
            raise PermanentError(f"setting up the cluster failed: {out.stderr.strip()[-800:]}")

    def _mkfs_osd(self, node: str, osd_uuid: str) -> None:
        osd = self.osd_id(node)
        self._tool("ceph-osd", "-c", str(self.conf), "--id", str(osd), "--mkfs",
                   "--osd-uuid", osd_uuid, "--no-mon-config", timeout=120)

    def _write_data(self) -> None:
        """An rbd image with data spread over its objects, so a stopped OSD shows real
        PG_DEGRADED. The write waits for the pool's PGs to become active."""
        self._tool("rbd", "create", "--size", "64M", f"{POOL}/{IMAGE}", timeout=120)
        self._tool("rbd", "bench", "--io-type", "write", "--io-pattern", "rand",
                   "--io-size", "64K", "--io-total", "4M", f"{POOL}/{IMAGE}", timeout=120)

    def _start(self, entity: str, binary: str, env: dict[str, str] | None = None) -> int:
        cmd = [binary, "-f", "-c", str(self.conf), "--id", entity.split(".", 1)[1]]
        return start_daemon(cmd, pidfile=self._pidfile(entity),
                            log=self.logs / f"ceph-{entity}.out.log",
                            marker=self._marker(entity), env=env or self.env)

    def start_mon_mgr(self) -> None:
        self._start(MON, "ceph-mon")
        self._start(MGR, "ceph-mgr")

    def start_osd(self, node: str) -> int:
        """Start the node's OSD (no-op if it runs); its PID. Rook gives each OSD container
        NODE_NAME (the Node's name, rook pkg/operator/ceph/cluster/osd/envs.go nodeNameEnvVar)
        and Ceph reports it as the `hostname` of `ceph osd metadata` inside a container, so the
        lab's OSD carries its Node's name there too."""
        name = self.config.node(node).kube_name
        return self._start(self._osd_entity(node), "ceph-osd", env={**self.env, "NODE_NAME": name})

    def stop_osd(self, node: str, *, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the node's OSD (it marks itself down at once), SIGKILL after `grace`."""
        entity = self._osd_entity(node)
        stop_daemons([(self._pidfile(entity), self._marker(entity))], grace=grace)

    def osd_running(self, node: str) -> bool:
        entity = self._osd_entity(node)
        pid = read_pid(self._pidfile(entity))
        return bool(pid) and pid_alive(pid, self._marker(entity))

    def stop_all(self, *, grace: float = STOP_GRACE_S) -> None:
        """Stop every daemon this lab started, by PID: OSDs first, then mgr, then mon."""
        osds = [e for e in self._entities() if e.startswith("osd.")]
        for group in (osds, [MGR], [MON]):
            stop_daemons([(self._pidfile(e), self._marker(e)) for e in group], grace=grace)

    def destroy(self) -> None:
        """Stop every daemon and remove the cluster's data, block files and config."""
        self.stop_all()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._run_dir != self.dir / "run":
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self.conf.unlink(missing_ok=True)

    def pools(self) -> list[str]:
        return self.run("osd", "pool", "ls", check=True).stdout.split()

    # -- health --------------------------------------------------------------------
    def state(self) -> CephState:
        return CephState.from_status(self._json("status", timeout=10))

    def health(self) -> dict:
        """`ceph health detail -f json`."""
        return self._json("health", "detail")

    def pgs_in_osdmap(self) -> tuple[int, set[str]]:
        """The PGs of every pool in the current osdmap, and the pools' names. A pool just created
        (or grown) is in the osdmap before the mgr's PG statistics count its PGs: until they do,
        `ceph status` reads every PG it knows active+clean while the new ones are still being
        created and peered (and `ceph osd ok-to-stop` answers EBUSY for them)."""
        pools = self._json("osd", "pool", "ls", "detail", timeout=10)
        return sum(int(pool["pg_num"]) for pool in pools), {pool["pool_name"] for pool in pools}

    def wait_healthy(self, timeout: float) -> CephState:
        """Wait until HEALTH_OK with the mgr available, every OSD up and in, and every PG of every
        pool in the osdmap counted in the PG statistics and active+clean; on timeout raise with what
        was last seen."""
        deadline = time.monotonic() + timeout
        last: CephState | None = None
        error = ""
        while True:
            try:
                last = self.state()
                error = ""
                if last.truly_healthy:
                    expected, pools = self.pgs_in_osdmap()
                    if MGR_POOL not in pools:
                        error = f"the mgr has not created its pool {MGR_POOL} yet"
                    elif last.pgs != expected:
                        error = f"the PG statistics count {last.pgs} PGs of the osdmap's {expected}"
                    else:
                        return last
            except (TransientError, PermanentError, json.JSONDecodeError) as exc:
                error = str(exc)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        seen = last.describe() if last else "no answer from the cluster"
        if error:
            seen += f"; last error: {error}"
        down = [n.name for n in self.config.nodes if not self.osd_running(n.name)]
        fix = f"OSDs not running on {', '.join(down)}" if down else f"see {self.logs}"
        raise TransientError(f"Ceph not healthy after {timeout:.0f} s: {seen}", fix=fix)

    # -- the ceph-warn fault -------------------------------------------------------
    def inject_warning(self) -> None:
        """Raise a real warning elsewhere in the cluster: the `noscrub` flag (OSDMAP_FLAGS)."""
        self.run("osd", "set", WARNING_FLAG, check=True)

    def clear_warning(self) -> None:
        self.run("osd", "unset", WARNING_FLAG, check=True)

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each running daemon (for measurements)."""
        rss = {}
        for entity in self._entities():
            pid = read_pid(self._pidfile(entity))
            if pid and pid_alive(pid, self._marker(entity)):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss[entity] = int(line.split()[1]) * 1024
        return rss
