"""Watching a Node until a condition holds (Ready, with a new boot id after a reboot).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nodegate.cluster.kube.errors import _first_line
from nodegate.cluster.kube.models import NodeStatus
from nodegate.core.errors import PermanentError, TransientError
from nodegate.core.waits import ProgressReporter, WaitProgress, WaitTimeout

if TYPE_CHECKING:
    pass




class NodeWatch:
    """Kube's node watch (part of ``Kube``)."""

    def watch_node(self, name: str, *, until: Callable[[NodeStatus], bool], timeout: float,
                   what: str | None = None, progress_every: float = 5.0,
                   on_progress: Callable[[WaitProgress], None] | None = None) -> NodeStatus:
        """Block until ``until(status)`` holds for node ``name``; return that status.

        Reads the node, then watches it from that resourceVersion, so a change is seen as soon
        as the API sends the event (no poll interval). The watch is re-opened every
        ``progress_every`` seconds (or when the server ends it) after a fresh read, which also
        covers missed events and an expired resourceVersion (410); connection failures are
        retried until the deadline. WaitTimeout names what was last seen.
        """
        __tracebackhide__ = True
        self._load()
        from kubernetes import watch

        what = what or f"node {name} to reach the awaited state"
        reporter = ProgressReporter(what=what, limit=timeout, every=progress_every, on_progress=on_progress)
        deadline = time.monotonic() + timeout
        selector = f"metadata.name={name}"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(what=what, limit=timeout, elapsed=reporter.elapsed(),
                                  last_seen=reporter.last_reason,
                                  fix=f"look at the node (kubectl describe node {name}) and its kubelet; if it "
                                      "does not come back, reach it out of band (BMC/IPMI console)")
            stream = watch.Watch()
            try:
                listing = self._get(f"read node {name}", "/api/v1/nodes", query=[("fieldSelector", selector)],
                                    attempts=1)
                if listing.get("items"):
                    status = self._node_status(listing["items"][0])
                    if until(status):
                        return status
                    reporter.seen(status.describe())
                else:
                    reporter.seen(f"node {name} does not exist")
                window = max(1, int(min(progress_every, remaining) + 0.999))
                events = stream.stream(self._watch_nodes, deserialize=False, field_selector=selector,
                                       resource_version=(listing.get("metadata") or {}).get("resourceVersion"),
                                       timeout_seconds=window,
                                       _request_timeout=(self.request_timeout[0], window + 5.0))
                for event in events:
                    if event["type"] == "DELETED":
                        reporter.seen(f"node {name} was deleted")
                        continue
                    if event["type"] not in ("ADDED", "MODIFIED"):
                        continue
                    status = self._node_status(event["object"])
                    if until(status):
                        return status
                    reporter.seen(status.describe())
                    if time.monotonic() >= deadline:
                        break
            except TransientError as exc:
                reporter.seen(_first_line(exc))
                time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
            except PermanentError:
                raise
            except Exception as exc:   # errors raised from inside the watch stream: translated below
                translated = self._translate(exc, f"watch node {name}")
                if translated is None:
                    raise
                if not isinstance(translated, TransientError) and getattr(exc, "status", None) != 410:
                    raise translated from exc
                reporter.seen(_first_line(translated))  # 410: the resourceVersion expired; read again
                time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
            finally:
                stream.stop()

    def _watch_nodes(self, *, field_selector: str, resource_version: str | None, timeout_seconds: int,
                     _request_timeout: tuple[float, float], watch: bool = True, _preload_content: bool = False) -> Any:
        """The streaming GET a kubernetes.watch.Watch reads events from (it passes watch and
        _preload_content itself); the events stay the API's JSON (``deserialize=False``)."""
        query: list[tuple[str, Any]] = [("fieldSelector", field_selector), ("watch", "true"),
                                        ("timeoutSeconds", timeout_seconds)]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        method, url, headers, _, _ = self._serialize("GET", "/api/v1/nodes", query)
        response = self._api.call_api(method, url, header_params=headers, _request_timeout=_request_timeout)
        if not 200 <= response.status <= 299:
            from kubernetes.client.exceptions import ApiException

            data = response.read()
            raise ApiException.from_response(http_resp=response, body=data.decode("utf-8", "replace"), data=None)
        return response.response

    def wait_node_ready(self, name: str, *, timeout: float, new_boot_id_than: str | None = None,
                        progress_every: float = 5.0,
                        on_progress: Callable[[WaitProgress], None] | None = None) -> NodeStatus:
        """Watch until the node is Ready (and, given ``new_boot_id_than``, reports another bootID:
        it has rebooted since). Returns within one watch event of the change."""
        __tracebackhide__ = True

        def ready(status: NodeStatus) -> bool:
            if new_boot_id_than is not None and status.boot_id == new_boot_id_than:
                return False
            return status.is_ready

        what = f"node {name} Ready" + (" with a new boot id" if new_boot_id_than else "")
        return self.watch_node(name, until=ready, timeout=timeout, what=what, progress_every=progress_every,
                               on_progress=on_progress)
