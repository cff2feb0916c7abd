"""Commands run in a pod over the exec websocket (the Ceph toolbox), with kubectl's exit-code rules.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nodegate.cluster.kube.errors import ExecTimeout, _first_line
from nodegate.cluster.kube.models import ExecResult, _q
from nodegate.core.errors import PermanentError, TransientError

if TYPE_CHECKING:
    pass


def _exec_rc(status_text: str, what: str) -> int:
    """The exit code from the exec error channel (a Status object; '' means success)."""
    if not status_text:
        return 0
    try:
        status = json.loads(status_text)
    except ValueError:
        raise PermanentError(f"{what}: unreadable exec status {status_text[:200]!r}") from None
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message"))
    raise PermanentError(f"{what} failed: {status.get('message') or status_text[:200]}")


class ExecCalls:
    """Kube's exec call (part of ``Kube``)."""

    # -- exec --------------------------------------------------------------------------------
    def exec(self, *, namespace: str, pod: str, command: Sequence[str], container: str | None = None,
             timeout: float = 60.0) -> ExecResult:
        """Run ``command`` (an argument list, no shell) in a pod over the exec websocket, as
        ``kubectl exec`` does; the exit code comes from the error channel. Opening the stream is
        retried on transient errors (nothing ran yet); a command that does not finish within
        ``timeout`` raises ExecTimeout and is not retried (it may have had effects)."""
        __tracebackhide__ = True
        api = self._load()
        import websocket
        from kubernetes.stream.ws_client import ERROR_CHANNEL, websocket_call

        command = tuple(command)
        what = f"exec `{' '.join(command)}` in pod {namespace}/{pod}"
        # The websocket library has no per-call connect timeout; without a default a stuck
        # handshake would block forever.
        if websocket.getdefaulttimeout() is None:
            websocket.setdefaulttimeout(self.request_timeout[1])

        query: list[tuple[str, Any]] = [("command", list(command))]
        if container:
            query.append(("container", container))
        query += [("stderr", True), ("stdin", False), ("stdout", True), ("tty", False)]

        def open_stream() -> Any:
            # the client's own websocket transport (kubernetes.stream), called with the request a
            # generated connect_get_namespaced_pod_exec would make, on this client's configuration;
            # unlike kubernetes.stream.stream it does not swap the shared client's call_api meanwhile
            _, url, headers, _, _ = self._serialize("GET", f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(pod)}/exec",
                                                    query)
            headers = {**headers, "Accept": "*/*"}
            return websocket_call(api.configuration, "GET", url, headers=headers, _preload_content=False,
                                  _request_timeout=self.request_timeout)

        started = time.monotonic()
        ws = self._call(what, open_stream)
        out: list[str] = []
        err: list[str] = []
        try:
            while ws.is_open():
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    raise ExecTimeout(f"{what} did not finish within {timeout:g}s (stopped waiting)",
                                      fix="look at the pod; the command may still be running there")
                ws.update(timeout=min(1.0, left))
                if ws.peek_stdout():
                    out.append(ws.read_stdout())
                if ws.peek_stderr():
                    err.append(ws.read_stderr())
            out.append(ws.read_stdout())
            err.append(ws.read_stderr())
            status_text = ws.read_channel(ERROR_CHANNEL)
        except (OSError, websocket.WebSocketException) as exc:
            raise TransientError(f"{what}: the stream broke: {_first_line(exc)}",
                                 fix="check the API server and the pod; the command may have run") from exc
        finally:
            ws.close()
        rc = _exec_rc(status_text, what)
        return ExecResult(command=command, rc=rc, stdout="".join(out), stderr="".join(err),
                          duration=time.monotonic() - started)
