"""The Kubernetes API's refusals as nodegate errors: each HTTP status maps to one class that keeps
the server's message (the status -> error-class table is ``translate``, KubeTransport's ``_translate``).
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from nodegate.core.errors import PermanentError, TransientError, UsageError

if TYPE_CHECKING:
    from nodegate.cluster.kube.drain import DrainResult
    from nodegate.cluster.kube.transport import KubeTransport


class NotFoundError(PermanentError):
    """The object does not exist (HTTP 404)."""


class ConflictError(TransientError):
    """The object changed since it was read, or already exists (HTTP 409): re-read and decide again."""


class ApiBusy(TransientError):
    """The API server answered 429 or 5xx: it is there, but overloaded or flapping; retrying helps."""


class ClientClosed(PermanentError):
    """A request on a Kube already closed: the run is ending (a read ahead still retrying stops here)."""


class ExecTimeout(TransientError):
    """A command run by exec did not finish in time. Not retried: it may have had effects."""


class DrainError(PermanentError):
    """The drain was refused before evicting anything, or did not finish in time. ``result`` holds
    the per-pod outcomes so far (evidence); the node stays cordoned. Filed as a node not ready for
    the change: pods it may not evict (unmanaged, local data) or that do not go away."""

    category = "Node not ready for the change"

    def __init__(self, message: str, *, result: "DrainResult", fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.result = result


class DrainBlocked(DrainError):
    """The drain timed out while evictions were still refused by a PodDisruptionBudget (the API's
    429 answer to an eviction)."""

    category = "Blocked by a PodDisruptionBudget"


def _tls_failure(exc: BaseException) -> str | None:
    """The reason of a failed TLS verification inside a client exception, or None."""
    import ssl

    import urllib3.exceptions as u3

    seen = exc
    for _ in range(6):
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        if isinstance(seen, (ssl.SSLError, u3.SSLError)) and "CERTIFICATE_VERIFY_FAILED" in str(seen):
            text = str(seen)
            return text[text.find("certificate verify failed"):].split(" (_ssl")[0] or text
        nxt = getattr(seen, "reason", None) if isinstance(seen, u3.MaxRetryError) else None
        seen = nxt if isinstance(nxt, BaseException) else (seen.__cause__ or seen.__context__)
        if seen is None:
            return None
    return None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError) and not isinstance(exc, (ConflictError, ExecTimeout))


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")


def _status_body(body: str | bytes | None) -> tuple[str, str, list[dict]]:
    """(message, reason, causes) from a Kubernetes Status body, ('', '', []) if it is not one."""
    if not body:
        return "", "", []
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return str(body)[:200], "", []
    if not isinstance(data, dict):
        return "", "", []
    causes = [c for c in ((data.get("details") or {}).get("causes") or []) if isinstance(c, dict)]
    return str(data.get("message") or ""), str(data.get("reason") or ""), causes


def translate(transport: KubeTransport, exc: BaseException, what: str) -> Exception | None:
    """Map a client/urllib3 exception to nodegate's hierarchy, keeping the cause in the message (None:
    not ours, re-raise): the API's status -> error class table. ``transport`` names the server."""
    import urllib3.exceptions as u3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, (PermanentError, TransientError, UsageError)):
        return exc
    where = f"the Kubernetes API at {transport.server} ({transport.origin})"
    check = "check that the API server runs and `kubectl get nodes` works with the same kubeconfig"
    if isinstance(exc, u3.NameResolutionError):
        return TransientError(f"the name of the Kubernetes API server {transport.server} ({transport.origin}) does not "
                              f"resolve (while trying to {what})",
                              fix="check the server address in the kubeconfig and this machine's DNS")
    if isinstance(exc, (u3.NewConnectionError, ConnectionRefusedError)):
        return TransientError(f"{where} refused the connection while trying to {what}", fix=check)
    if isinstance(exc, u3.ConnectTimeoutError):
        return TransientError(f"{where} did not accept a connection in time while trying to {what}", fix=check)
    if isinstance(exc, (u3.ReadTimeoutError, TimeoutError)):
        return TransientError(f"{where} did not answer in time while trying to {what}", fix=check)
    tls = _tls_failure(exc)
    if tls is not None:
        return UsageError(f"TLS verification of {where} failed: {tls}; the kubeconfig trusts "
                          f"{transport._ca_source()}",
                          fix="put the cluster's CA in the kubeconfig (certificate-authority-data from the "
                              "control plane's /etc/kubernetes/ssl/ca.crt, or Kubespray's artifacts/admin.conf); "
                              "verification stays on")
    if isinstance(exc, (u3.ProtocolError, u3.MaxRetryError, ConnectionError, u3.HTTPError)):
        return TransientError(f"the connection to {where} broke while trying to {what}: {_first_line(exc)}",
                              fix=check)
    if not isinstance(exc, ApiException):
        return None
    status = exc.status or 0
    message, reason, _ = _status_body(exc.body)
    said = f"{status} {reason or exc.reason or ''}".strip() + (f": {message}" if message else "")
    if status == 0:  # the websocket layer reports connection and handshake failures this way
        text = str(exc.reason or "")
        found = re.search(r"Handshake status (\d{3})", text)
        code = found.group(1) if found else ""
        if code == "404":
            return NotFoundError(f"cannot {what}: not found (404 from {transport.server})")
        if code in ("401", "403"):
            return PermanentError(f"{where} refused to {what} ({code})",
                                  fix="give the kubeconfig's user permission for pods/exec")
        if (not code or code.startswith("5") or code == "429" or "refused" in text.lower()
                or "reset" in text.lower() or "timed out" in text.lower()):
            return TransientError(f"{where} failed to {what}: {_first_line(text) or type(exc).__name__}",
                                  fix=check)
        return PermanentError(f"{where} failed to {what}: {_first_line(text)}")
    if status == 404:
        return NotFoundError(f"cannot {what}: {message or 'not found'} (404 from {transport.server})")
    if status == 409:
        return ConflictError(f"cannot {what}: {said}",
                             fix="someone changed the object since it was read: read it again and decide again")
    if status == 500 and "more than one PodDisruptionBudget" in message:
        return PermanentError(f"{where} refused to {what}: {message}",
                              fix="the eviction API allows one PodDisruptionBudget per pod: delete or narrow the "
                                  "overlapping PDBs (`kubectl get pdb -A`)")
    if status == 429 or status >= 500:
        return ApiBusy(f"{where} answered {said} while trying to {what}", fix=check)
    if status == 401:
        return PermanentError(f"{where} rejected the credentials while trying to {what} (401 Unauthorized)",
                              fix="renew the user's token or certificate in the kubeconfig")
    if status == 403:
        return PermanentError(f"{where} forbids this: {what} ({said})",
                              fix="give the kubeconfig's user the RBAC permission for this request")
    if status == 422:
        return PermanentError(f"{where} rejected the object as invalid while trying to {what}: {said}",
                              fix="this is a nodegate bug or an API version mismatch: report it with this message")
    return PermanentError(f"{where} refused to {what}: {said}")
