"""Keeps secrets (tokens, passwords, private keys) out of every log line, attachment and report.

Whoever reads a secret (the kubeconfig's token, an inventory password) registers it here;
`install_log_redaction()` makes every log record pass through `redact()` before any handler
(terminal, pytest's captured logs, Allure's log attachments) formats it, and the reporting
layer redacts every attachment. Private keys are also matched by shape, registered or not.
The finders below (kubeconfig, inventory) are the one place that decides what is a secret.
"""
from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MASK = "***"
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
# Values that look like credentials by their key, e.g. `token: abc`, `password=abc`, a bearer header.
# The key must be followed by a separator, so a name that merely contains the word
# (SudoPasswordRequired, secretsFile) is left as it is.
_KEYED = re.compile(r"(?i)((?:token|password|passwd|secret|client-key-data|bearer)[\"']?(?:\s*[:=]\s*|\s+)[\"']?)"
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
        except Exception:  # noqa: BLE001 - a bad format string: leave it to logging's own error path
            return record
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


# --------------------------------------------------------------------------- the one secret finder
# Whoever reads a kubeconfig or an inventory asks these, so that every credential nodegate could
# ever print is registered the same way.

_KUBECONFIG_KEYS = ("token", "password", "client-key-data")
# A variable is a secret by its name (ansible_become_password, registry token, a !vault value) …
_SECRET_NAME = re.compile(r"(?i)(pass|secret|token|private_key|key_data|vault)")
# … unless the name says it holds where the secret is, not the secret (ansible_ssh_private_key_file)
_NOT_SECRET_SUFFIXES = ("_file", "_path", "_dir", "_url")
# values of such names that are settings, not secrets (kube_token_auth: "false" …): masking them
# would blank every "true" in every report
_NOT_SECRETS = frozenset({"", "true", "false", "yes", "no", "none", "null", "~", "on", "off"})
_INI_PAIR = re.compile(r"(\w+)\s*=\s*(\"[^\"]*\"|'[^']*'|\S+)")
_MAX_VARS_FILE = 2_000_000


def kubeconfig_secrets(data: Any) -> list[str]:
    """The credentials in a parsed kubeconfig: each user's token, password and client key (as
    written, base64, and decoded), and the content of a tokenFile."""
    found: list[str] = []
    for user in (data.get("users") or []) if isinstance(data, dict) else []:
        entry = (user or {}).get("user") or {} if isinstance(user, dict) else {}
        for key in _KUBECONFIG_KEYS:
            value = entry.get(key)
            if isinstance(value, str):
                found.append(value)
                if key == "client-key-data":
                    try:
                        found.append(base64.b64decode(value).decode("utf-8", "replace").strip())
                    except ValueError:
                        pass
        token_file = entry.get("tokenFile")
        if isinstance(token_file, str):
            try:
                found.append(Path(token_file).read_text(encoding="utf-8").strip())
            except OSError:
                pass
    return found


def kubeconfig_file_secrets(path: Path) -> list[str]:
    """kubeconfig_secrets of the file at ``path`` ([] when it cannot be read as YAML)."""
    import yaml

    try:
        return kubeconfig_secrets(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []


def inventory_secrets(inventory_dir: Path) -> list[str]:
    """Values of password/secret/token-like variables anywhere in a Kubespray inventory folder
    (the hosts file, group_vars, host_vars; YAML or INI; Ansible's !vault values kept as text)."""
    import yaml

    class TolerantLoader(yaml.SafeLoader):
        """Reads `!vault`, `!unsafe` and other tags as plain data: only looked at, never interpreted."""

    def any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_mapping(node)

    TolerantLoader.add_multi_constructor("!", any_tag)
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(inner, secret or _secret_name(str(key)))
        elif isinstance(value, list):
            for inner in value:
                walk(inner, secret)
        elif secret and isinstance(value, (str, int)) and not isinstance(value, bool):
            text = str(value).strip()
            if text.lower() not in _NOT_SECRETS and "{{" not in text:
                found.append(text)

    if not inventory_dir.is_dir():
        return found
    for path in sorted(inventory_dir.rglob("*")):
        try:
            if not path.is_file() or path.stat().st_size > _MAX_VARS_FILE:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if path.suffix in (".yml", ".yaml", ".json", ""):
            try:
                docs = list(yaml.load_all(text, Loader=TolerantLoader))
            except yaml.YAMLError:
                docs = None
            if docs is not None and any(isinstance(d, (Mapping, list)) for d in docs):
                for doc in docs:
                    walk(doc, False)
                continue
        # INI inventory: key=value pairs on host lines and [group:vars] lines
        for key, value in _INI_PAIR.findall(text):
            walk({key: value.strip("'\"")}, False)
    return found


def register_secrets(values: Iterable[str]) -> int:
    """register_secret each value; returns how many were given."""
    count = 0
    for value in values:
        register_secret(value)
        count += 1
    return count


def _secret_name(key: str) -> bool:
    return bool(_SECRET_NAME.search(key)) and not key.endswith(_NOT_SECRET_SUFFIXES)
