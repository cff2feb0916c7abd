"""The one place requests to the Kubernetes API are made: kubeconfig loading, the client, retries
on transient errors and the translation of the API's refusals into nodegate errors.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodegate.cluster.kube import errors
from nodegate.cluster.kube.errors import (
    ApiBusy,
    ClientClosed,
    _first_line,
    _retryable,
)
from nodegate.cluster.kube.models import _q
from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.core.interrupts import checkpoint
from nodegate.core.retry import KUBE_CHECK_ATTEMPTS, KUBE_REQUEST, log_retry
from nodegate.core.secrets import kubeconfig_secrets, register_secret, register_secrets

if TYPE_CHECKING:
    from nodegate.cluster.kube.client import Kube
    from nodegate.profile.model import KubeSettings

log = logging.getLogger("nodegate.kube")


# (connect, read) seconds for one ordinary request: the API answers in milliseconds, so a
# request still open after this is a stuck server, not a slow one.
REQUEST_TIMEOUT = (5.0, 30.0)


class KubeTransport:
    """Connection, requests and error translation; ``Kube`` adds the calls on resources."""

    def __init__(self, *, settings: "KubeSettings", attempts: int = KUBE_REQUEST.attempts,
                 retry_limit_s: float = KUBE_REQUEST.limit_s,
                 request_timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        self.settings = settings
        self.attempts = attempts
        self.retry_limit_s = retry_limit_s
        self.request_timeout = request_timeout
        self.path = Path(settings.kubeconfig).expanduser()
        self.origin = f"context {settings.context or '(current)'} in {self.path}"
        self.server = "(not loaded yet)"
        self._api: Any = None
        self._load_lock = threading.Lock()
        self._closed = False

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def connect(cls, *, settings: "KubeSettings", check: bool = True, **kwargs: Any) -> "Kube":
        """A Kube for ``settings``; with ``check``, the kubeconfig is loaded and the server asked
        for its version now, so a bad profile or an unreachable cluster is a UsageError up front."""
        __tracebackhide__ = True
        kube = cls(settings=settings, **kwargs)
        if check:
            kube.check()
        return kube

    def check(self, *, attempts: int = KUBE_CHECK_ATTEMPTS) -> str:
        """Load the kubeconfig and ask the server's version (four quick tries, so an address where
        nothing listens fails within ~2 s; a server that answers 429/5xx then gets the usual
        bounded retries: a flapping API must not end a run before it starts); return it.
        Any failure is a UsageError naming the fix: this runs before anything changes."""
        __tracebackhide__ = True
        self._load()
        try:
            try:
                return self.server_version(attempts=attempts)
            except ApiBusy:
                # It answers, so the address is right: a flapping server, not a wrong one. Give it
                # the bounded retries every other request gets before refusing to start.
                return self.server_version()
        except TransientError as exc:
            raise UsageError(f"the Kubernetes API at {self.server} ({self.origin}) cannot be reached: "
                             f"{_first_line(exc)}",
                             fix=f"start or reach the API server, or point [kubernetes] kubeconfig/context at the "
                                 f"right cluster; `kubectl --kubeconfig {self.path} get nodes` must work") from None
        except PermanentError as exc:
            raise UsageError(f"the Kubernetes API at {self.server} ({self.origin}) refused a first request: "
                             f"{_first_line(exc)}", fix=exc.fix or "check the kubeconfig's user and cluster") from None

    def load(self) -> None:
        """Read the kubeconfig and build the client now, without any request (UsageError if the
        kubeconfig or its context is unusable). Every request does this on first use anyway."""
        __tracebackhide__ = True
        self._load()

    def _load(self) -> Any:
        """Read the kubeconfig and build the client, once (thread-safe)."""
        __tracebackhide__ = True
        if self._api is not None:
            return self._api
        with self._load_lock:
            if self._api is None:
                self._api = self._build_client()
        return self._api

    def _build_client(self) -> Any:
        __tracebackhide__ = True
        import yaml

        path = self.path
        where = "[kubernetes] kubeconfig in the cluster profile (or KUBECONFIG)"
        if not path.is_file():
            raise UsageError(f"kubeconfig {path} does not exist",
                             fix=f"set {where} to the file kubectl uses for this cluster "
                                 "(often ~/.kube/config or Kubespray's inventory/…/artifacts/admin.conf)")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read kubeconfig {path}: {exc.strerror or exc}",
                             fix=f"make it readable by this user (e.g. chmod 600 and chown), or set {where} "
                                 "to a readable copy") from None
        except UnicodeDecodeError:
            raise UsageError(f"kubeconfig {path} is not a text file",
                             fix=f"set {where} to the kubeconfig itself (YAML), not an archive or a binary") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"kubeconfig {path} is not valid YAML: {_first_line(exc)}",
                             fix="repair the file (`kubectl config view --kubeconfig FILE` shows what is wrong) "
                                 "or fetch it again from the control plane") from None
        if not isinstance(data, dict) or not data.get("contexts"):
            raise UsageError(f"kubeconfig {path} has no contexts",
                             fix="fetch a complete kubeconfig (clusters, users, contexts) from the control plane")
        register_secrets(kubeconfig_secrets(data))
        contexts = [str(c.get("name")) for c in data.get("contexts") or [] if isinstance(c, dict)]
        wanted = self.settings.context or data.get("current-context")
        if not wanted:
            raise UsageError(f"kubeconfig {path} has no current-context and the profile names none",
                             fix=f"set [kubernetes] context to one of: {', '.join(contexts)}")
        if wanted not in contexts:
            raise UsageError(f"context {wanted!r} is not in kubeconfig {path} (it has: {', '.join(contexts)})",
                             fix="set [kubernetes] context in the cluster profile to one of those")

        from kubernetes import client, config  # lazily: importing the client takes ~0.3 s
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        try:
            # From the file (not the dict read above), so relative certificate paths resolve
            # against the kubeconfig's own folder as kubectl resolves them.
            config.load_kube_config(config_file=str(path), context=wanted, client_configuration=configuration,
                                    persist_config=False)
        except (ConfigException, ValueError, TypeError, KeyError) as exc:
            raise UsageError(f"cannot use context {wanted!r} of kubeconfig {path}: {_first_line(exc)}",
                             fix="check that context's cluster (server) and user entries") from None
        token = str(configuration.api_key.get("authorization") or "")
        register_secret(token.split(" ", 1)[-1] if token else None)
        # One retry layer only (ours, with logging): urllib3's silent retries would hide and
        # multiply the waits.
        configuration.retries = False
        # Resolve the environment's proxy now, once, in this thread: otherwise the kubeconfig's
        # refresh hook sets `host` again before every request and the client re-reads os.environ
        # then, from whichever thread calls; iterating os.environ while pytest sets or removes
        # PYTEST_CURRENT_TEST in the main thread raised KeyError (seen in CI).
        configuration.proxy = configuration.proxy
        self.server = configuration.host
        self.origin = f"context {wanted} in {path}"
        # No generated API class (CoreV1Api alone is a 63,000-line module, ~0.5 s to import) and
        # no pydantic model is used: every request goes through ``_raw`` as plain JSON on this
        # client (its TLS, auth and proxy settings), the exec through the client's websocket
        # transport. On a small cluster building those costs more than all the requests.
        return client.ApiClient(configuration)

    def _ca_source(self) -> str:
        """Which CA the loaded kubeconfig context trusts, named as the operator wrote it."""
        configuration = getattr(self._api, "configuration", None)
        cafile = getattr(configuration, "ssl_ca_cert", None)
        if cafile is None:
            return "the system's CA bundle (the kubeconfig names no certificate-authority)"
        import yaml

        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
            ctx_name = self.origin.split(" ", 2)[1]
            ctx = next(c["context"] for c in data.get("contexts") or [] if c.get("name") == ctx_name)
            cluster = next(c["cluster"] for c in data.get("clusters") or [] if c.get("name") == ctx.get("cluster"))
        except (StopIteration, KeyError, TypeError, IndexError, OSError, yaml.YAMLError):
            return f"the CA file {cafile}"
        if cluster.get("certificate-authority"):
            return f"the CA file {cluster['certificate-authority']} (cluster {ctx.get('cluster')} in {self.path})"
        return f"the certificate-authority-data of cluster {ctx.get('cluster')} in {self.path}"

    def close(self) -> None:
        # Reads still running ahead in other threads (a run refused before its first check, with
        # the API answering 5xx) stop at their next attempt instead of retrying on after the
        # error was shown, and keeping the process alive until they give up.
        self._closed = True
        if self._api is not None:
            self._api.close()

    # -- the one place requests are made -------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], /, *args: Any, attempts: int | None = None,
              **kwargs: Any) -> Any:
        """Make one API request (``fn``, e.g. a ``_raw`` call) with bounded retries on transient errors."""
        __tracebackhide__ = True
        self._load()
        tries = attempts or self.attempts

        def once() -> Any:
            checkpoint()   # a Ctrl-C a finalizer swallowed stops the run before the request
            if self._closed:
                raise ClientClosed(f"the Kubernetes API client of this run was closed before: {what}")
            try:
                return fn(*args, **kwargs)
            except Exception as exc:   # translated, or re-raised unchanged
                if isinstance(exc.__context__, KeyboardInterrupt):
                    # the client's websocket calls (exec) turn Ctrl-C/SIGTERM into ApiException(status=0):
                    # the operator's interrupt must stop the run, not be retried as a transient error
                    raise exc.__context__ from None
                translated = self._translate(exc, what)
                if translated is None or translated is exc:
                    raise
                raise translated from exc

        retrying = KUBE_REQUEST.retrying(retry=_retryable, attempts=tries, limit_s=self.retry_limit_s,
                                         before_sleep=log_retry(log, what, tries, quiet=lambda: self._closed))
        return retrying(once)

    def _serialize(self, method: str, path: str, query: Sequence[tuple[str, Any]] = (), body: Any = None,
                   content_type: str | None = None) -> tuple:
        """(method, url, headers, body, post_params) for ``path`` (already quoted) with the
        client's authentication, as a generated method would build them."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return self._load().param_serialize(method=method, resource_path=path, query_params=list(query),
                                            header_params=headers, body=body,
                                            collection_formats={"command": "multi"},
                                            auth_settings=["BearerToken"])

    def _raw(self, method: str, path: str, *, query: Sequence[tuple[str, Any]] = (), body: Any = None,
             content_type: str | None = None, text: bool = False, stream: bool = False) -> Any:
        """One request: its JSON answer (``text``: the body as text; ``stream``: the open
        urllib3 response). A status outside 2xx raises the client's ApiException, as a
        generated method would."""
        from kubernetes.client.exceptions import ApiException

        if body is not None and content_type is None:
            content_type = "application/json"
        method, url, headers, body, _ = self._serialize(method, path, query, body, content_type)
        response = self._api.call_api(method, url, header_params=headers, body=body,
                                      _request_timeout=self.request_timeout)
        if stream and 200 <= response.status <= 299:
            return response.response
        data = response.read()
        decoded = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=decoded, data=None)
        if text:
            return decoded
        try:
            return json.loads(decoded) if decoded else {}
        except ValueError:
            raise PermanentError(f"the Kubernetes API at {self.server} answered {method} {path} with no JSON: "
                                 f"{decoded[:200]!r}") from None

    def _request(self, what: str, method: str, path: str, /, *, attempts: int | None = None, **kwargs: Any) -> Any:
        """``_raw`` with the retries and error translation of ``_call``."""
        __tracebackhide__ = True
        return self._call(what, lambda: self._raw(method, path, **kwargs), attempts=attempts)

    def _get(self, what: str, path: str, /, *, query: Sequence[tuple[str, Any]] = (), text: bool = False,
             attempts: int | None = None) -> Any:
        __tracebackhide__ = True
        return self._request(what, "GET", path, query=query, text=text, attempts=attempts)

    def _patch_node(self, what: str, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        """A strategic merge patch of the Node (what the official client sends for an object patch)."""
        return self._request(what, "PATCH", f"/api/v1/nodes/{_q(name)}", body=patch,
                             content_type="application/strategic-merge-patch+json")

    _translate = errors.translate
