"""The Kubernetes API's refusals as nodegate errors: each HTTP status maps to one class that keeps
the server's message (the status -> error-class table is ``KubeTransport._translate``).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from nodegate.core.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from nodegate.cluster.kube.drain import DrainResult
    pass


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
