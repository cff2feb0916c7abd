"""How a node is reached over SSH, read from a Kubespray inventory as Ansible and ssh read it.

Pure parsing, no I/O. Ansible splits `ansible_ssh_common_args` with shlex and hands the words to
ssh; ssh then reads `-o Key=Value` (or `-o "Key Value"`) and `-J`. nodegate takes from them the
route to the node: `ProxyJump` (`-J`) or `ProxyCommand`. A ProxyCommand of the form Kubespray's
roles/bastion-ssh-config writes (`ssh … -W %h:%p [-p PORT] [-i KEY] [USER@]BASTION`) is read as a
jump host, so nodegate opens that hop itself with its own strict host key checking against the
profile's known_hosts (Kubespray's template turns checking off; nodegate never does). Any other
ProxyCommand is kept as its argument list, with ssh's `%h`/`%p`/`%r` put in per node, and run
without a shell. Options that would weaken host key checking are not applied.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass


class RouteError(ValueError):
    """An SSH route nodegate cannot follow as written; the message names the value and the fix."""


@dataclass(frozen=True)
class JumpHost:
    """One hop before the node (a bastion)."""

    host: str
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None

    def describe(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"


@dataclass(frozen=True)
class ProxyCommand:
    """A ProxyCommand that is not an ssh hop (nc, connect-proxy, …): its words, with %-tokens."""

    argv: tuple[str, ...]

    def expand(self, host: str, port: int, user: str) -> tuple[str, ...]:
        """ssh's tokens for ProxyCommand: %h host, %p port, %r remote user, %% a percent sign."""
        out = []
        for word in self.argv:
            text, i = [], 0
            while i < len(word):
                if word[i] == "%" and i + 1 < len(word):
                    token = word[i + 1]
                    text.append({"h": host, "p": str(port), "r": user, "%": "%"}.get(token, "%" + token))
                    i += 2
                else:
                    text.append(word[i])
                    i += 1
            out.append("".join(text))
        return tuple(out)


@dataclass(frozen=True)
class SshRoute:
    jump: JumpHost | None = None
    proxy_command: ProxyCommand | None = None

    @property
    def direct(self) -> bool:
        return self.jump is None and self.proxy_command is None


def _options(words: list[str], what: str) -> tuple[dict[str, str], list[str]]:
    """ssh's -o options (lower-case keys, first value wins as in ssh) and the -J value(s)."""
    options: dict[str, str] = {}
    jumps: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        value = None
        if word in ("-o", "-J"):
            if i + 1 >= len(words):
                raise RouteError(f"{what}: `{word}` has no value")
            value = words[i + 1]
            i += 2
        elif word.startswith("-o") or word.startswith("-J"):
            value = word[2:]
            i += 1
        else:
            i += 1
            continue
        if word.startswith("-J"):
            jumps.append(value)
            continue
        key, sep, rest = value.partition("=")
        if not sep:
            key, _, rest = value.partition(" ")
        key = key.strip().lower()
        if key and key not in options:
            options[key] = rest.strip()
    return options, jumps


def parse_proxy_jump(value: str, what: str) -> JumpHost | None:
    """`[user@]host[:port]`; `none` means no jump. More than one hop is refused."""
    value = value.strip()
    if not value or value.lower() == "none":
        return None
    if "," in value:
        raise RouteError(f"{what}: ProxyJump {value!r} has more than one hop; nodegate opens one jump host",
                         "use a single bastion, or give the node's route as an ssh_config Host block "
                         "([ssh] config) that ssh itself follows")
    if value.startswith("ssh://"):
        value = value[len("ssh://"):]
    user, _, rest = value.rpartition("@")
    host, port = rest, None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else None
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise RouteError(f"{what}: ProxyJump {value!r} has an invalid port", "write [user@]host[:port]")
    if not host:
        raise RouteError(f"{what}: ProxyJump {value!r} names no host", "write [user@]host[:port]")
    return JumpHost(host=host, port=int(port) if port else None, user=user or None)


def parse_proxy_command(value: str, what: str) -> JumpHost | ProxyCommand | None:
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise RouteError(f"{what}: ProxyCommand cannot be split as a shell would ({exc})",
                         "balance the quotes in ansible_ssh_common_args") from None
    if not argv or argv[0].lower() == "none":
        return None
    if os.path.basename(argv[0]) == "ssh" and "-W" in argv:
        return _ssh_hop(argv[1:], value, what)
    return ProxyCommand(tuple(argv))


# ssh options that take a value (man ssh): needed to find the destination among the words.
_SSH_VALUE_FLAGS = set("BbcDEeFIiJLlmOoPpQRSWw")


def _ssh_hop(words: list[str], value: str, what: str) -> JumpHost:
    port = user = identity = None
    positional: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-") and len(word) >= 2 and word != "--":
            flag = word[1]
            if flag in _SSH_VALUE_FLAGS:
                arg = word[2:] if len(word) > 2 else (words[i + 1] if i + 1 < len(words) else "")
                i += 1 if len(word) > 2 else 2
                if flag == "p":
                    port = arg
                elif flag == "l":
                    user = arg
                elif flag == "i":
                    identity = arg
                elif flag == "o":
                    key, sep, rest = arg.partition("=")
                    if not sep:
                        key, _, rest = arg.partition(" ")
                    options.setdefault(key.strip().lower(), rest.strip())
                continue
            i += 1
            continue
        positional.append(word)
        i += 1
    if not positional:
        raise RouteError(f"{what}: ProxyCommand {value!r} names no host to jump through",
                         "end the ssh command with [user@]bastion")
    destination = positional[0]
    if "@" in destination:
        user, destination = destination.rsplit("@", 1)
    port = port or options.get("port")
    user = user or options.get("user")
    identity = identity or options.get("identityfile")
    if port is not None and not (str(port).isdigit() and 0 < int(port) < 65536):
        raise RouteError(f"{what}: ProxyCommand {value!r} has an invalid port {port!r}", "give -p PORT")
    return JumpHost(host=destination, port=int(port) if port else None, user=user or None,
                    identity_file=identity or None)


def parse_common_args(text: str | None, what: str) -> SshRoute:
    """The route in `ansible_ssh_common_args` (what: where it was read, for messages)."""
    if not text or not text.strip():
        return SshRoute()
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise RouteError(f"{what}: ansible_ssh_common_args cannot be split as Ansible splits it ({exc})",
                         "balance the quotes in ansible_ssh_common_args") from None
    options, jumps = _options(words, what)
    # ssh: whichever of ProxyJump and ProxyCommand comes first wins; -J counts as ProxyJump.
    if jumps:
        return SshRoute(jump=parse_proxy_jump(jumps[0], what))
    order = [w for w in ("proxyjump", "proxycommand") if w in options]
    if not order:
        return SshRoute()
    first = min(order, key=lambda key: _position(words, key))
    if first == "proxyjump":
        return SshRoute(jump=parse_proxy_jump(options["proxyjump"], what))
    parsed = parse_proxy_command(options["proxycommand"], what)
    if isinstance(parsed, JumpHost):
        return SshRoute(jump=parsed)
    return SshRoute(proxy_command=parsed)


def _position(words: list[str], key: str) -> int:
    for i, word in enumerate(words):
        if key in word.lower().replace(" ", ""):
            return i
    return len(words)
