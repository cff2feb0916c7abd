"""Ceph, read and flagged through its own CLI: the only module that runs `ceph`.

Two ways to reach the cluster, chosen in the profile's [ceph] section:
- ``toolbox`` (default, what Rook clusters have): ``ceph …`` runs by exec (through nodegate.cluster.kube.client)
  in the pod matching ``toolbox_selector`` in ``namespace`` (rook-ceph-tools);
- ``command``: the profile's argument list (e.g. ``["ceph", "--conf", "/etc/ceph/x.conf"]``) runs
  locally, without a shell.

Every answer keeps the command and its raw JSON next to the parsed value (``Reading``), so a
report can show exactly what Ceph said. Parsing is nodegate.core.parsing's. All commands exposed here
are reads or idempotent flag changes, so transient failures (no answer from the mon in time, the
toolbox pod restarting) are retried a few times within a bound.
"""
from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nodegate.core import parsing
from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.core.retry import CEPH_COMMAND, log_retry

if TYPE_CHECKING:
    from nodegate.cluster.kube.client import Kube
    from nodegate.core.batching import CrushTree, PoolDomain
    from nodegate.profile.model import CephSettings

log = logging.getLogger("nodegate.ceph")

T = TypeVar("T")
CONNECT_TIMEOUT_S = 15
EBUSY = 16          # `osd ok-to-stop` says no: rc 16 with the JSON still on stdout
ETIMEDOUT = 110
ENOENT = 2


@dataclass(frozen=True)
class CephCommandResult:
    args: tuple[str, ...]          # the ceph arguments (without the CLI prefix)
    rc: int
    stdout: str
    stderr: str
    duration: float
    via: str                       # "toolbox rook-ceph/rook-ceph-tools-…" or "command ceph --conf …"

    @property
    def command(self) -> str:
        return "ceph " + " ".join(self.args)


@dataclass(frozen=True)
class Reading(Generic[T]):
    """A parsed answer with its evidence. Attributes of ``value`` are reachable directly
    (``ceph.status().healthy_in_full``)."""
    value: T
    raw: str                       # the command's stdout (JSON)
    result: CephCommandResult

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.value, name)


class CephCommandFailed(PermanentError):
    def __init__(self, message: str, *, result: CephCommandResult, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.result = result


class CephUnavailable(TransientError):
    """Ceph did not answer (mon unreachable, timed out)."""


class Ceph:
    """The cluster's Ceph, through the toolbox pod or a local command."""

    def __init__(self, *, settings: "CephSettings", kube: "Kube | None" = None,
                 timeout: float = 30.0, connect_timeout: int = CONNECT_TIMEOUT_S, attempts: int = CEPH_COMMAND.attempts) -> None:
        if settings.mode not in ("toolbox", "command"):
            raise UsageError(f"unknown [ceph] mode {settings.mode!r}",
                             fix='set [ceph] mode = "toolbox" (exec into rook-ceph-tools) or "command"')
        if settings.mode == "toolbox" and kube is None:
            raise UsageError("[ceph] mode \"toolbox\" needs the Kubernetes API (a Kube)")
        if settings.mode == "command" and not settings.command:
            raise UsageError("[ceph] mode \"command\" needs a command, e.g. command = [\"ceph\"]")
        self.settings = settings
        self.kube = kube
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.attempts = attempts
        self._toolbox_pod: str | None = None

    # -- running ------------------------------------------------------------------------
    def run(self, args: Sequence[str], *, expect: Sequence[int] = (0,)) -> CephCommandResult:
        """Run ``ceph ARGS`` (retrying when Ceph did not answer); raise on an rc outside ``expect``."""
        __tracebackhide__ = True
        args = tuple(str(a) for a in args)
        retrying = CEPH_COMMAND.retrying(
            retry=lambda exc: isinstance(exc, TransientError), attempts=self.attempts,
            before_sleep=log_retry(log, f"`ceph {' '.join(args)}`", self.attempts))
        return retrying(self._run_once, args, expect)

    def _run_once(self, args: tuple[str, ...], expect: Sequence[int]) -> CephCommandResult:
        result = self._toolbox(args) if self.settings.mode == "toolbox" else self._command(args)
        if result.rc in expect:
            return result
        text = (result.stderr or result.stdout).strip()
        first = text.splitlines()[-1] if text else ""
        if result.rc == ETIMEDOUT or "timed out" in text or "error connecting to the cluster" in text:
            raise CephUnavailable(f"Ceph did not answer `{result.command}` via {result.via} (rc {result.rc}): {first}",
                                  fix="check that the Ceph monitors are up and reachable from there")
        raise CephCommandFailed(f"`{result.command}` via {result.via} exited {result.rc} "
                                f"(expected {' or '.join(map(str, expect))}): {first}", result=result)

    def _command(self, args: tuple[str, ...]) -> CephCommandResult:
        prefix = list(self.settings.command)
        argv = [*prefix, f"--connect-timeout={self.connect_timeout}", *args]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout + self.connect_timeout,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise UsageError(f"the [ceph] command {prefix[0]!r} was not found",
                             fix="install ceph-common here, or point [ceph] command at the ceph CLI") from None
        except subprocess.TimeoutExpired:
            raise CephUnavailable(f"`ceph {' '.join(args)}` did not finish in {self.timeout + self.connect_timeout:g}s",
                                  fix="check that the Ceph monitors are up and reachable") from None
        return CephCommandResult(args=args, rc=done.returncode, stdout=done.stdout, stderr=done.stderr,
                                 duration=time.monotonic() - started, via="command " + " ".join(prefix))

    def _toolbox(self, args: tuple[str, ...]) -> CephCommandResult:
        from nodegate.cluster.kube.errors import NotFoundError

        assert self.kube is not None
        ns = self.settings.namespace
        pod = self._toolbox_pod or self._find_toolbox()
        command = ["ceph", f"--connect-timeout={self.connect_timeout}", *args]
        try:
            out = self.kube.exec(namespace=ns, pod=pod, command=command, timeout=self.timeout + self.connect_timeout)
        except PermanentError as exc:
            if not (isinstance(exc, NotFoundError) or _toolbox_unavailable(exc)):
                raise
            # The toolbox pod was replaced, or its container is not running (its node is
            # rebooting): find a running one again, once.
            self._toolbox_pod = None
            pod = self._find_toolbox()
            try:
                out = self.kube.exec(namespace=ns, pod=pod, command=command,
                                     timeout=self.timeout + self.connect_timeout)
            except PermanentError as again:
                if not _toolbox_unavailable(again):
                    raise
                self._toolbox_pod = None
                # Transient: the toolbox comes back with its node (or is rescheduled).
                raise TransientError(f"the Ceph toolbox pod {ns}/{pod} cannot run commands now (its container "
                                     "is not running: is its node rebooting?)",
                                     fix="wait for the node to be Ready, or run the toolbox on another node") from again
        return CephCommandResult(args=args, rc=out.rc, stdout=out.stdout, stderr=out.stderr,
                                 duration=out.duration, via=f"toolbox {ns}/{pod}")

    def _find_toolbox(self) -> str:
        assert self.kube is not None
        ns, selector = self.settings.namespace, self.settings.toolbox_selector
        pods = [p for p in self.kube.list_pods(namespace=ns, selector=selector) if not p.deleting]
        running = [p for p in pods if p.phase == "Running"]
        if not running:
            seen = ", ".join(f"{p.name} ({p.phase})" for p in pods) or "none"
            raise PermanentError(f"no running Ceph toolbox pod matches {selector} in namespace {ns} (pods seen: {seen})",
                                 fix="deploy Rook's toolbox (deploy/examples/toolbox.yaml), or set [ceph] mode = "
                                     "\"command\" with a ceph command that reaches the cluster")
        chosen = sorted(running, key=lambda p: (not p.ready, p.name))[0]
        self._toolbox_pod = chosen.name
        return chosen.name

    def _json(self, args: Sequence[str], parse: Any, *, expect: Sequence[int] = (0,)) -> Reading:
        result = self.run([*args, "-f", "json"], expect=expect)
        return Reading(value=parse(result.stdout), raw=result.stdout, result=result)

    # -- reads ----------------------------------------------------------------------------
    def status(self) -> Reading[parsing.CephStatus]:
        """`ceph status`; ``.healthy_in_full`` / ``.reasons()`` answer "healthy in the full sense"."""
        return self._json(["status"], parsing.parse_ceph_status)

    def health_detail(self) -> Reading[parsing.CephHealth]:
        return self._json(["health", "detail"], parsing.parse_ceph_health)

    def osd_ids_for_host(self, host: str) -> tuple[int, ...]:
        """The OSD ids under CRUSH host ``host`` (empty if it has none, or CRUSH has no such host:
        a node without OSDs)."""
        result = self.run(["osd", "ls-tree", host, "-f", "json"], expect=(0, ENOENT))
        if result.rc == ENOENT:
            return ()
        return parsing.parse_ls_tree(result.stdout)

    def osd_ids_by_host(self) -> dict[str, tuple[int, ...]]:
        """The OSD ids under every CRUSH host, from one `ceph osd tree` (a fleet's checks ask this
        for every node: one command instead of one `osd ls-tree` per node). A node that is no
        CRUSH host is simply absent (no OSDs)."""
        return hosts_osds(self.run(["osd", "tree", "-f", "json"]).stdout)

    def osd_metadata_hosts(self) -> dict[int, str]:
        """`ceph osd metadata`: osd id -> the ``hostname`` it reports (in a Rook OSD container,
        the Node name Rook passes as NODE_NAME)."""
        import json

        try:
            items = json.loads(self.run(["osd", "metadata", "-f", "json"]).stdout or "[]")
        except ValueError:
            raise PermanentError("`ceph osd metadata -f json` gave no readable JSON") from None
        return {int(m["id"]): str(m["hostname"]) for m in items if isinstance(m, dict)
                and isinstance(m.get("id"), int) and m.get("hostname")}

    def add_noout(self, osd_ids: Sequence[int]) -> CephCommandResult:
        """Per-OSD noout (`ceph osd add-noout osd.N …`), separate from any group flag."""
        return self.run(["osd", "add-noout", *(f"osd.{i}" for i in osd_ids)])

    def rm_noout(self, osd_ids: Sequence[int]) -> CephCommandResult:
        return self.run(["osd", "rm-noout", *(f"osd.{i}" for i in osd_ids)])

    def ok_to_stop(self, osd_ids: Sequence[int], *, max_osds: int | None = None) -> Reading[parsing.OkToStop]:
        """`ceph osd ok-to-stop IDS [--max N]`: rc 0 = yes; rc 16 (EBUSY) = no, with the reasons still in
        the JSON. With ``max_osds`` Ceph answers a larger set (up to N OSDs, IDS included) that may
        stop together (Pacific and later; ceph/ceph #39455, #39726) in ``.osds``."""
        if not osd_ids:
            result = CephCommandResult(args=(), rc=0, stdout="", stderr="", duration=0.0, via="(nothing to ask)")
            return Reading(value=parsing.OkToStop(ok=True, message="no OSDs to stop"), raw="", result=result)
        extra = ("--max", str(int(max_osds))) if max_osds else ()
        result = self.run(["osd", "ok-to-stop", *map(str, osd_ids), *extra, "-f", "json"], expect=(0, EBUSY))
        return Reading(value=parsing.parse_ok_to_stop(result.stdout, result.rc, result.stderr), raw=result.stdout,
                       result=result)

    def crush_layout(self) -> tuple["CrushTree", list["PoolDomain"]]:
        """The CRUSH tree (each host's OSDs and the buckets above it) and each pool's failure domain
        (`ceph osd tree`, `ceph osd pool ls detail`, `ceph osd crush rule dump`)."""
        from nodegate.core.batching import parse_crush_tree, pool_domains

        tree = parse_crush_tree(self.run(["osd", "tree", "-f", "json"]).stdout)
        pools = pool_domains(self.run(["osd", "pool", "ls", "detail", "-f", "json"]).stdout,
                             self.run(["osd", "crush", "rule", "dump", "-f", "json"]).stdout)
        return tree, pools

    def osd_flags(self) -> Reading[parsing.OsdFlags]:
        """Global, per-CRUSH-node and per-OSD flags from `ceph osd dump`."""
        return self._json(["osd", "dump"], parsing.parse_osd_dump_flags)

    def noout_hosts(self) -> frozenset[str]:
        """CRUSH hosts with their own noout flag (`osd set-group noout <host>`)."""
        flags = self.osd_flags().value
        return frozenset(host for host, own in flags.crush_node_flags.items() if "noout" in own)

    def versions(self) -> Reading[dict]:
        """`ceph versions`: daemon type → {version string: count}."""
        import json

        return self._json(["versions"], json.loads)

    # -- flag changes (idempotent) ----------------------------------------------------------
    def set_group_noout(self, host: str) -> CephCommandResult:
        return self.run(["osd", "set-group", "noout", host])

    def unset_group_noout(self, host: str) -> CephCommandResult:
        return self.run(["osd", "unset-group", "noout", host])


def hosts_osds(text: str) -> dict[str, tuple[int, ...]]:
    """`ceph osd tree -f json` → CRUSH host name → the OSD ids under it (sorted), as `osd ls-tree HOST`
    lists them (OSDs below a host's own sub-buckets included)."""
    from nodegate.core.batching import parse_crush_tree

    return dict(parse_crush_tree(text).host_osds)


def _toolbox_unavailable(exc: BaseException) -> bool:
    """The API server refused the exec because the container is not running (a pod on a node
    that is down or restarting): kube-apiserver answers 'unable to upgrade connection: container not found'."""
    text = str(exc)
    return "unable to upgrade connection" in text or "container not found" in text
