"""Keeps secrets (tokens, passwords, private keys) out of every log line, attachment and report.

Whoever reads a secret (the kubeconfig's token, an inventory password) registers it here;
`install_log_redaction()` makes every log record pass through `redact()` before any handler
(terminal, pytest's captured logs, Allure's log attachments) formats it, and the reporting
layer redacts every attachment. Private keys are also matched by shape, registered or not.
"""
from __future__ import annotations

import logging
import re
import threading

MASK = "***"
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
# Values that look like credentials by their key, e.g. `token: abc`, `password=abc`, a bearer header.
_KEYED = re.compile(r"(?i)((?:token|password|passwd|secret|client-key-data|bearer)[\"']?\s*[:=]?\s*[\"']?)"
                    r"([A-Za-z0-9+/=._\-]{8,})")
_lock = threading.Lock()
_secrets: set[str] = set()
_installed = False


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is masked wherever it would be printed."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    if not text:
        return text
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    text = _PRIVATE_KEY.sub(f"-----PRIVATE KEY {MASK}-----", text)
    return _KEYED.sub(lambda m: m.group(1) + MASK, text)


def install_log_redaction() -> None:
    """Redact every log record at creation, before any handler can format or store it."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error path
            return record
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
