"""Raw requests to a lab's API server, authenticated as the lab's admin: the one way the lab's own
tools (and the tests' set-up, which sends what the official client would not) reach it.

Over HTTPS (the default lab) a request trusts only the lab's CA and presents the
`kubernetes-admin` client certificate, as kubectl does with the lab's admin.conf-shaped
kubeconfig. Over plain HTTP (`lab up --plain-http`) it carries the lab's bearer token.
"""
from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

from nodegate.lab.config import LabConfig
from nodegate.lab.pki import ADMIN_USER, Pki


@lru_cache(maxsize=16)
def _admin_context(lab_dir: Path, ca_mtime: float) -> ssl.SSLContext:
    """One context per lab (and per CA file: a lab brought up again with new PKI gets a new one);
    loading the CA and the key costs more than the request itself."""
    pki = Pki.of(lab_dir)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(pki.client_cert(ADMIN_USER), pki.client_key(ADMIN_USER))
    return context


def ssl_context(config: LabConfig) -> ssl.SSLContext | None:
    """The lab's CA and the admin client certificate (None for a plain-HTTP lab)."""
    if not config.api_tls:
        return None
    ca = Pki.of(config.dir).ca_cert
    return _admin_context(config.dir, ca.stat().st_mtime)


def auth_headers(config: LabConfig) -> dict[str, str]:
    """The bearer token on plain HTTP; nothing over HTTPS (the client certificate authenticates)."""
    return {} if config.api_tls else {"Authorization": f"Bearer {config.token}"}


def urlopen(config: LabConfig, request: urllib.request.Request | str, *, timeout: float = 10):
    """urllib's urlopen for a request to this lab's API (a path or a full URL), authenticated as
    its admin; the caller's own headers (e.g. another user's token) win over the admin's."""
    if isinstance(request, str):
        request = urllib.request.Request(request if "://" in request else config.api_url + request)
    for name, value in auth_headers(config).items():
        if not request.has_header(name.capitalize()):
            request.add_header(name, value)
    return urllib.request.urlopen(request, timeout=timeout, context=ssl_context(config))


def request(config: LabConfig, method: str, path: str, body: object = None, *,
            content_type: str = "application/json", timeout: float = 10) -> tuple[int, dict]:
    """One request as bytes on the wire; (status, decoded JSON body), an HTTP error included."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(config.api_url + path, data=data, method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urlopen(config, req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
