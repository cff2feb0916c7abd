"""Why SSH to a node failed, as an error class with its own message and fix: refused, timed out,
connection lost, authentication, unknown or changed host key (of the node, or of the bastion on
the way). Read from ssh's stderr, or from paramiko's exception, by NodeHost (nodegate.cluster.nodes.ssh).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from nodegate.core.errors import NodegateError, PermanentError, TransientError, UsageError

if TYPE_CHECKING:
    from nodegate.cluster.nodes.ssh import NodeHost


# -- errors -----------------------------------------------------------------------------------

class SshConnectError(NodegateError):
    """Reaching the node over SSH failed (before the command ran)."""


class SshRefused(SshConnectError, TransientError):
    """Nothing listens on the node's SSH port: the node is down or sshd is not running."""


class SshTimeout(SshConnectError, TransientError):
    """The node did not answer in time (unreachable, or hanging)."""


class SshConnectionLost(SshConnectError, TransientError):
    """The connection was closed or reset (typically: the node is going down)."""


class SshAuthFailed(SshConnectError, UsageError):
    """The node refused the key for the user."""


class HostKeyUnknown(SshConnectError, UsageError):
    """known_hosts has no key for the node."""


class HostKeyMismatch(SshConnectError, PermanentError):
    """The node's host key differs from the one in known_hosts."""


# -- classification --------------------------------------------------------------------------

def key_hint(host: NodeHost) -> str:
    return str(host.settings.identity_file) if host.settings.identity_file else "the default SSH keys"

def trust_hint(host: NodeHost) -> str:
    known = host.settings.known_hosts or "~/.ssh/known_hosts"
    return (f"check the node's key out of band, then add it: `ssh-keyscan -t ed25519 {host.target} >> {known}`; "
            "or run with --trust-new-host-keys (or set [ssh] trust_new_host_keys = true in the cluster "
            "profile) to accept and record new keys; a changed key is never accepted")

def classify_ssh(host: NodeHost, stderr: str) -> SshConnectError | None:
    text = stderr.strip()
    first = next((line for line in text.splitlines() if line.strip()), "")
    jump = host.route.jump
    if jump is not None and jump.host in text:
        found = classify_jump(host, text, jump)
        if found is not None:
            return found
    if "Connection refused" in text:
        return SshRefused(f"{host._where()} refused the SSH connection: the node is down or its sshd is "
                          f"not running ({first})",
                          fix="wait for the node to boot, or start sshd on it (out-of-band console if needed)")
    if re.search(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed", text):
        return HostKeyMismatch(f"the host key of {host._where()} does not match known_hosts "
                               f"{host.settings.known_hosts or '~/.ssh/known_hosts'}: the node was reinstalled, "
                               "or something else answers at its address",
                               fix=f"if the node was reinstalled, remove the old key (`ssh-keygen -R {host.target} "
                                   f"-f {host.settings.known_hosts or '~/.ssh/known_hosts'}`) and add the new "
                                   "one after checking it out of band")
    if "Host key verification failed" in text or re.search(r"No \S+ host key is known for", text):
        return HostKeyUnknown(f"known_hosts {host.settings.known_hosts or '~/.ssh/known_hosts'} has no host key "
                              f"for {host._where()}, and host keys are verified", fix=trust_hint(host))
    if "Permission denied" in text:
        return SshAuthFailed(f"{host._where()} did not accept the key {key_hint(host)} for user {host.user} "
                             f"({first})",
                             fix=f"add {key_hint(host)}.pub to ~{host.user}/.ssh/authorized_keys on the node, "
                                 "or set [ssh] user / identity_file in the cluster profile")
    if re.search(r"timed out|No route to host|Network is unreachable", text):
        return SshTimeout(f"{host._where()} did not answer SSH within {host.connect_timeout}s ({first})",
                          fix="check that the node is powered on and reachable (out-of-band console if not)")
    if re.search(r"Could not resolve hostname", text):
        return SshTimeout(f"cannot resolve the address of {host._where()} ({first})",
                          fix="set the node's ansible_host address in the Kubespray inventory")
    if re.search(r"closed by|Connection reset|kex_exchange_identification|Broken pipe|"
                 r"mux_client|Control socket connect|lost connection", text):
        return SshConnectionLost(f"the SSH connection to {host._where()} was closed ({first}): the node is "
                                 "probably going down or its sshd restarting",
                                 fix="wait for the node to come back, then run again")
    return None

def classify_jump(host: NodeHost, text: str, jump: Any) -> SshConnectError | None:
    """A failure of the hop through the bastion, named as such (ssh prints the bastion's address)."""
    known = host.settings.known_hosts or "~/.ssh/known_hosts"
    where = f"the jump host {jump.describe()} (the bastion on the way to {host.name})"
    if re.search(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed", text):
        return HostKeyMismatch(f"the host key of {where} does not match known_hosts {known}: the bastion was "
                               "reinstalled, or something else answers at its address",
                               fix=f"check the bastion's key out of band; if it was reinstalled, `ssh-keygen -R "
                                   f"{jump.host} -f {known}` and add the new key")
    if "Host key verification failed" in text or re.search(r"No \S+ host key is known for", text):
        return HostKeyUnknown(f"known_hosts {known} has no host key for {where}, and host keys are verified",
                              fix=f"check the bastion's key out of band, then add it to {known}")
    if "Connection refused" in text:
        return SshRefused(f"{where} refused the SSH connection", fix="check that the bastion is up and its sshd runs")
    if "Permission denied" in text:
        return SshAuthFailed(f"{where} did not accept the key for user {jump.user or host.user}",
                             fix="add the key to the bastion user's authorized_keys, or set the bastion's "
                                 "ansible_user / ansible_ssh_private_key_file in the inventory")
    return None

def classify_paramiko(host: NodeHost, exc: BaseException) -> SshConnectError | None:
    import socket

    import paramiko

    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) or isinstance(exc, ConnectionRefusedError):
        return SshRefused(f"{host._where()} refused the SSH connection: the node is down or its sshd is not "
                          f"running ({exc})",
                          fix="wait for the node to boot, or start sshd on it (out-of-band console if needed)")
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyMismatch(f"the host key of {host._where()} does not match known_hosts "
                               f"{host.settings.known_hosts or '~/.ssh/known_hosts'}",
                               fix=f"if the node was reinstalled, remove the old key (`ssh-keygen -R {host.target}`) "
                                   "and add the new one after checking it out of band")
    if isinstance(exc, paramiko.AuthenticationException):
        return SshAuthFailed(f"{host._where()} did not accept the key {key_hint(host)} for user {host.user} "
                             f"({exc})",
                             fix=f"add {key_hint(host)}.pub to ~{host.user}/.ssh/authorized_keys on the node, "
                                 "or set [ssh] user / identity_file in the cluster profile")
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return HostKeyUnknown(f"known_hosts {host.settings.known_hosts or '~/.ssh/known_hosts'} has no host key "
                              f"for {host._where()}, and host keys are verified", fix=trust_hint(host))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return SshTimeout(f"{host._where()} did not answer SSH within {host.connect_timeout}s",
                          fix="check that the node is powered on and reachable (out-of-band console if not)")
    if isinstance(exc, (EOFError, ConnectionResetError, paramiko.SSHException, OSError)):
        return SshConnectionLost(f"the SSH connection to {host._where()} broke ({type(exc).__name__}: {exc})",
                                 fix="wait for the node to come back, then run again")
    return None
