"""SSH to the cluster's nodes, through pytest-testinfra.

One reused connection per node: the ``ssh://`` backend with the profile's ssh_config (its
ControlMaster makes every command after the first ~11 ms), or ``paramiko://`` when the profile
names no ssh_config. Host keys are verified against known_hosts unless the profile says
``trust_new_host_keys`` (then a new key is accepted and recorded, a *changed* key never is).
After a reboot the old connection is dead and testinfra's ``get_host`` cache would hand it
back, so ``Nodes.reconnect`` builds a fresh backend and host.

Commands are argument lists, joined with ``shlex.join``: a value is never put into a shell
line unquoted. ``NodeHost.run`` returns a frozen ``CommandResult`` and raises on an exit code
outside ``expect``; connection failures are classified (refused / timed out / authentication /
unknown or changed host key), each with its own message and fix.

Small classes read one resource each: ``Packages``, ``Apt``, ``Release``, ``Boot``, ``Modules``;
parsing is nodegate.parsing's.
"""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodegate import parsing
from nodegate.errors import NodegateError, PermanentError, TransientError, UsageError
from nodegate.interrupts import checkpoint

if TYPE_CHECKING:
    from nodegate.profile import NodeSpec, SSHSettings

CONNECT_TIMEOUT_S = 5


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


class SudoPasswordRequired(UsageError):
    """The node's sudo asks for a password and nodegate was given none."""


class SudoPasswordRejected(UsageError):
    """The node's sudo did not accept the password nodegate was given."""


class CommandFailed(PermanentError):
    """A command ended with an exit code outside the expected ones; ``result`` has its output."""

    def __init__(self, message: str, *, result: "CommandResult", fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.result = result


class CommandTimeout(TransientError):
    """A command given a ``timeout`` was stopped when it ran out."""

    def __init__(self, message: str, *, result: "CommandResult") -> None:
        super().__init__(message)
        self.result = result


# -- results ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CommandResult:
    node: str
    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    duration: float

    @property
    def command(self) -> str:
        """The command line as the node's shell received it."""
        return shlex.join(self.args)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def output(self) -> str:
        """stdout then stderr: tools like apt write warnings to stderr."""
        return self.stdout + ("\n" if self.stdout and self.stderr and not self.stdout.endswith("\n") else "") \
            + self.stderr

    def describe(self, tail: int = 15) -> str:
        lines = self.output.rstrip().splitlines()
        shown = "\n".join("    " + line for line in lines[-tail:])
        more = f"    … {len(lines) - tail} earlier lines\n" if len(lines) > tail else ""
        return f"`{self.command}` on {self.node}: rc {self.rc} after {self.duration:.1f}s\n{more}{shown}"


@dataclass(frozen=True)
class RebootRequired:
    required: bool
    packages: tuple[str, ...] = ()        # from /var/run/reboot-required.pkgs


@dataclass(frozen=True)
class DiskFree:
    path: str
    mount: str
    size_bytes: int
    used_bytes: int
    avail_bytes: int

    @property
    def avail_mb(self) -> int:
        return self.avail_bytes // (1024 * 1024)


@dataclass(frozen=True)
class SourcesFile:
    path: str
    text: str
    sources: tuple[parsing.AptSource, ...]


@dataclass(frozen=True)
class AptUpdate:
    report: parsing.AptUpdateReport
    result: CommandResult                 # kept as evidence


# -- one node ---------------------------------------------------------------------------------

class NodeHost:
    """One node reached over one reused SSH connection (a testinfra host)."""

    def __init__(self, *, spec: "NodeSpec", settings: "SSHSettings",
                 connect_timeout: int = CONNECT_TIMEOUT_S) -> None:
        self.spec = spec
        self.settings = settings
        self.name = spec.name
        self.user = spec.user or settings.user
        self.port = spec.port
        self.identity_file = spec.identity_file or settings.identity_file
        self.route = spec.route
        self.become_user = spec.become_user
        self.connect_timeout = connect_timeout
        self.target = _ssh_target(spec, settings)
        self.testinfra = self._build_host()

    # -- connection --------------------------------------------------------------------
    @property
    def uses_ssh_config(self) -> bool:
        return self.settings.config is not None

    def _build_host(self) -> Any:
        import testinfra.host

        backend: Any
        if self.uses_ssh_config:
            import testinfra.backend.ssh

            extra = ["-o BatchMode=yes", f"-o ConnectTimeout={self.connect_timeout}",
                     "-o ServerAliveInterval=5", "-o ServerAliveCountMax=3",
                     f"-o StrictHostKeyChecking={'accept-new' if self.settings.trust_new_host_keys else 'yes'}"]
            if self.settings.known_hosts:
                extra.append(f"-o UserKnownHostsFile={shlex.quote(str(self.settings.known_hosts))}")
            proxy = self.proxy_argv()
            if proxy is not None:
                # ssh runs a ProxyCommand through the user's shell: every word is quoted for it.
                extra.append("-o " + shlex.quote("ProxyCommand=" + shlex.join(proxy)))
            # The ssh_config decides multiplexing (ControlMaster/ControlPath/ControlPersist):
            # naming ControlMaster here stops testinfra from adding its own.
            extra.append("-o ControlMaster=auto")
            backend = testinfra.backend.ssh.SshBackend(
                self._hostspec(),
                ssh_config=str(self.settings.config),
                ssh_identity_file=str(self.identity_file) if self.identity_file else None,
                timeout=self.connect_timeout, ssh_extra_args=" ".join(extra))
        else:
            backend = _VerifyingParamikoBackend(
                f"{self.user}@{self.target}" if self.user else self.target,
                port=self.spec.port,
                ssh_identity_file=str(self.identity_file) if self.identity_file else None,
                timeout=self.connect_timeout,
                known_hosts=self.settings.known_hosts,
                trust_new=self.settings.trust_new_host_keys,
                route=self._paramiko_route())
        host = testinfra.host.Host(backend)
        backend.set_host(host)
        return host

    def _hostspec(self) -> str:
        spec = f"{self.user}@{self.target}" if self.user else self.target
        # Only a port other than 22 is passed: the ssh_config's own Port line stays in charge otherwise.
        return f"{spec}:{self.port}" if self.port and self.port != 22 else spec

    def proxy_argv(self) -> list[str] | None:
        """The ProxyCommand words for ssh (its %h/%p left for ssh to fill in), or None (direct).
        A jump host becomes `ssh -W %h:%p` with nodegate's own host key settings, never weaker."""
        route = self.route
        if route.proxy_command is not None:
            return list(route.proxy_command.argv)
        jump = route.jump
        if jump is None:
            return None
        argv = ["ssh"]
        if self.settings.config is not None:
            argv += ["-F", str(self.settings.config)]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                 "-o", f"StrictHostKeyChecking={'accept-new' if self.settings.trust_new_host_keys else 'yes'}"]
        if self.settings.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.settings.known_hosts}"]
        identity = jump.identity_file or (str(self.identity_file) if self.identity_file else None)
        if identity:
            argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
        if jump.port:
            argv += ["-p", str(jump.port)]
        argv += ["-l", jump.user or self.user, "-W", "%h:%p", jump.host]
        return argv

    def _paramiko_route(self) -> Any:
        """What the paramiko backend opens before the node: (kind, value) or None."""
        if self.route.proxy_command is not None:
            return ("command", self.route.proxy_command.expand(self.target, self.port or 22, self.user))
        if self.route.jump is not None:
            return ("jump", self.route.jump)
        return None

    def close(self) -> None:
        """End the connection (the ssh ControlMaster or the paramiko transport)."""
        backend = self.testinfra.backend
        if self.uses_ssh_config:
            args = ["ssh", "-F", str(self.settings.config), "-o", "BatchMode=yes", "-O", "exit"]
            if self.port and self.port != 22:
                args += ["-p", str(self.port)]
            args.append(f"{self.user}@{self.target}" if self.user else self.target)
            subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
        elif "client" in backend.__dict__:  # connected at least once
            backend.client.close()
            jump = getattr(backend, "jump_client", None)
            if jump is not None:
                jump.close()

    # -- commands ----------------------------------------------------------------------
    def run(self, args: Sequence[str], *, expect: Sequence[int] = (0,), sudo: bool = False,
            timeout: float | None = None, env: Mapping[str, str] | None = None) -> CommandResult:
        """Run ``args`` (an argument list) on the node; raise ``CommandFailed`` if its exit code
        is not in ``expect``. ``timeout`` stops the command on the node (``timeout(1)``) and
        raises ``CommandTimeout``; ``env`` sets variables for it; ``sudo`` runs it through
        ``sudo -n`` unless the connection user is root already."""
        __tracebackhide__ = True
        if isinstance(args, str):
            raise TypeError("NodeHost.run takes an argument list, not a shell string")
        argv = [str(a) for a in args]
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        if timeout is not None:
            argv = ["timeout", "-k", "5", f"{timeout:g}", *argv]
        password = None
        if sudo and self.needs_sudo:
            password = self.settings.become_password
            target = [] if self.become_user == "root" else ["-u", self.become_user]
            # -S: the password on stdin (never in the command line); -p '': no prompt in stderr.
            # -k: always ask, so the password line is always read by sudo and never left for the command.
            argv = (["sudo", "-k", "-S", "-p", "", *target, "--", *argv] if password
                    else ["sudo", "-n", *target, "--", *argv])
        checkpoint()   # a Ctrl-C a finalizer swallowed stops the run before the command
        started = time.monotonic()
        out = self._execute(shlex.join(argv), stdin=password + "\n" if password else None)
        result = CommandResult(node=self.name, args=tuple(str(a) for a in args), rc=out.rc,
                               stdout=out.stdout, stderr=out.stderr, duration=time.monotonic() - started)
        if sudo and self.needs_sudo and result.rc == 1:
            self._check_sudo(result.stderr)
        if timeout is not None and result.rc in (124, 137) and result.rc not in expect:
            raise CommandTimeout(f"`{result.command}` on {self.name} did not finish within {timeout:g}s "
                                 "and was stopped", result=result)
        if result.rc not in expect:
            wanted = " or ".join(str(c) for c in expect)
            raise CommandFailed(f"unexpected exit code {result.rc} (expected {wanted}) from "
                                f"{result.describe()}", result=result)
        return result

    @property
    def needs_sudo(self) -> bool:
        return self.user != self.become_user

    def _check_sudo(self, stderr: str) -> None:
        __tracebackhide__ = True
        if "a password is required" in stderr:
            raise SudoPasswordRequired(
                f"sudo on {self._where()} asks for a password, and nodegate was given none (`sudo -n true` fails: "
                f"{stderr.strip().splitlines()[-1][:200]})",
                fix=f"give {self.user} passwordless sudo on {self.name} (e.g. `{self.user} ALL=(ALL) NOPASSWD:ALL` in "
                    "/etc/sudoers.d/), or run with --become-password-env NAME with the password in the environment "
                    "variable NAME")
        if re.search(r"incorrect password|Sorry, try again", stderr):
            raise SudoPasswordRejected(
                f"sudo on {self._where()} rejected the password given with --become-password-env",
                fix=f"put {self.user}'s sudo password on {self.name} in that environment variable")

    def run_expect(self, expect: Sequence[int], args: Sequence[str], **kwargs: Any) -> CommandResult:
        """testinfra's spelling: ``run_expect([0, 1], [...])``."""
        __tracebackhide__ = True
        return self.run(args, expect=expect, **kwargs)

    def _execute(self, command: str, stdin: str | None = None) -> Any:
        __tracebackhide__ = True
        try:
            if stdin is not None:
                return self._run_with_stdin(command, stdin)
            return self.testinfra.run(command)
        except RuntimeError as exc:
            # testinfra's ssh backend raises RuntimeError(result) when ssh exits 255.
            result = exc.args[0] if exc.args else None
            stderr = getattr(result, "stderr", "") or ""
            classified = self._classify_ssh(stderr)
            if classified is None:
                # ssh says why it failed on stderr, except when the connection ends under a running
                # command with `LogLevel ERROR` (a fleet's usual ssh_config): exit 255, no word of its
                # own. No command nodegate runs exits 255 by itself, so this is a lost connection,
                # not a failed command (which would be judged as permanent).
                tail = " / ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
                raise SshConnectionLost(
                    f"the SSH connection to {self._where()} ended while running `{command[:200]}` (ssh exit 255"
                    + (f"; last output: {tail[:300]}" if tail else ", no message") + "): the node went down, "
                    "its sshd was restarted or the network dropped; the command may have gone on or been cut off",
                    fix="run the same command again once the node answers: it checks what was done") from None
            raise classified from None
        except Exception as exc:  # noqa: BLE001 - paramiko's exceptions, classified below
            classified = self._classify_paramiko(exc)
            if classified is None:
                raise
            raise classified from exc

    def _run_with_stdin(self, command: str, stdin: str) -> Any:
        """testinfra's run has no stdin: the same command on the same connection, with stdin."""
        backend = self.testinfra.backend
        if self.uses_ssh_config:
            cmd, cmd_args = backend._build_ssh_command(command)
            # testinfra's own ssh line, each value quoted; split here as a shell would split it,
            # and run without one
            argv = shlex.split(backend.get_command(" ".join(cmd), *cmd_args))
            done = subprocess.run(argv, input=stdin.encode(), capture_output=True)
            out = backend.result(done.returncode, backend.encode(command), done.stdout, done.stderr)
            if out.rc == 255:
                raise RuntimeError(out)
            return out
        transport = backend.client.get_transport()
        chan = transport.open_session()
        chan.exec_command(command)
        chan.sendall(stdin.encode())
        chan.shutdown_write()
        stdout = b"".join(chan.makefile("rb"))
        stderr = b"".join(chan.makefile_stderr("rb"))
        return backend.result(chan.recv_exit_status(), backend.encode(command), stdout, stderr)

    def privilege(self) -> str:
        """How this node's root commands will run, checked now (`sudo -n true`, or `sudo -S true`
        with the given password); raises SudoPasswordRequired / SudoPasswordRejected."""
        if not self.needs_sudo:
            return f"logged in as {self.user}: no sudo needed"
        self.run(["true"], sudo=True)
        how = "with the password from --become-password-env" if self.settings.become_password else "without a password"
        return f"{self.user} becomes {self.become_user} with sudo {how}"

    def read_file(self, path: str) -> str:
        return self.run(["cat", "--", path]).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], expect=(0, 1)).rc == 0

    # -- error classification ----------------------------------------------------------
    def _where(self) -> str:
        return f"{self.name} ({self.target}, user {self.user})"

    def _key_hint(self) -> str:
        return str(self.settings.identity_file) if self.settings.identity_file else "the default SSH keys"

    def _trust_hint(self) -> str:
        known = self.settings.known_hosts or "~/.ssh/known_hosts"
        return (f"check the node's key out of band, then add it: `ssh-keyscan -t ed25519 {self.target} >> {known}`; "
                "or run with --trust-new-host-keys (or set [ssh] trust_new_host_keys = true in the cluster "
                "profile) to accept and record new keys; a changed key is never accepted")

    def _classify_ssh(self, stderr: str) -> SshConnectError | None:
        text = stderr.strip()
        first = next((line for line in text.splitlines() if line.strip()), "")
        jump = self.route.jump
        if jump is not None and jump.host in text:
            found = self._classify_jump(text, jump)
            if found is not None:
                return found
        if "Connection refused" in text:
            return SshRefused(f"{self._where()} refused the SSH connection: the node is down or its sshd is "
                              f"not running ({first})",
                              fix="wait for the node to boot, or start sshd on it (out-of-band console if needed)")
        if re.search(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed", text):
            return HostKeyMismatch(f"the host key of {self._where()} does not match known_hosts "
                                   f"{self.settings.known_hosts or '~/.ssh/known_hosts'}: the node was reinstalled, "
                                   "or something else answers at its address",
                                   fix=f"if the node was reinstalled, remove the old key (`ssh-keygen -R {self.target} "
                                       f"-f {self.settings.known_hosts or '~/.ssh/known_hosts'}`) and add the new "
                                       "one after checking it out of band")
        if "Host key verification failed" in text or re.search(r"No \S+ host key is known for", text):
            return HostKeyUnknown(f"known_hosts {self.settings.known_hosts or '~/.ssh/known_hosts'} has no host key "
                                  f"for {self._where()}, and host keys are verified", fix=self._trust_hint())
        if "Permission denied" in text:
            return SshAuthFailed(f"{self._where()} did not accept the key {self._key_hint()} for user {self.user} "
                                 f"({first})",
                                 fix=f"add {self._key_hint()}.pub to ~{self.user}/.ssh/authorized_keys on the node, "
                                     "or set [ssh] user / identity_file in the cluster profile")
        if re.search(r"timed out|No route to host|Network is unreachable", text):
            return SshTimeout(f"{self._where()} did not answer SSH within {self.connect_timeout}s ({first})",
                              fix="check that the node is powered on and reachable (out-of-band console if not)")
        if re.search(r"Could not resolve hostname", text):
            return SshTimeout(f"cannot resolve the address of {self._where()} ({first})",
                              fix="set the node's ansible_host address in the Kubespray inventory")
        if re.search(r"closed by|Connection reset|kex_exchange_identification|Broken pipe|"
                     r"mux_client|Control socket connect|lost connection", text):
            return SshConnectionLost(f"the SSH connection to {self._where()} was closed ({first}): the node is "
                                     "probably going down or its sshd restarting",
                                     fix="wait for the node to come back, then run again")
        return None

    def _classify_jump(self, text: str, jump: Any) -> SshConnectError | None:
        """A failure of the hop through the bastion, named as such (ssh prints the bastion's address)."""
        known = self.settings.known_hosts or "~/.ssh/known_hosts"
        where = f"the jump host {jump.describe()} (the bastion on the way to {self.name})"
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
            return SshAuthFailed(f"{where} did not accept the key for user {jump.user or self.user}",
                                 fix="add the key to the bastion user's authorized_keys, or set the bastion's "
                                     "ansible_user / ansible_ssh_private_key_file in the inventory")
        return None

    def _classify_paramiko(self, exc: BaseException) -> SshConnectError | None:
        import socket

        import paramiko

        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) or isinstance(exc, ConnectionRefusedError):
            return SshRefused(f"{self._where()} refused the SSH connection: the node is down or its sshd is not "
                              f"running ({exc})",
                              fix="wait for the node to boot, or start sshd on it (out-of-band console if needed)")
        if isinstance(exc, paramiko.BadHostKeyException):
            return HostKeyMismatch(f"the host key of {self._where()} does not match known_hosts "
                                   f"{self.settings.known_hosts or '~/.ssh/known_hosts'}",
                                   fix=f"if the node was reinstalled, remove the old key (`ssh-keygen -R {self.target}`) "
                                       "and add the new one after checking it out of band")
        if isinstance(exc, paramiko.AuthenticationException):
            return SshAuthFailed(f"{self._where()} did not accept the key {self._key_hint()} for user {self.user} "
                                 f"({exc})",
                                 fix=f"add {self._key_hint()}.pub to ~{self.user}/.ssh/authorized_keys on the node, "
                                     "or set [ssh] user / identity_file in the cluster profile")
        if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
            return HostKeyUnknown(f"known_hosts {self.settings.known_hosts or '~/.ssh/known_hosts'} has no host key "
                                  f"for {self._where()}, and host keys are verified", fix=self._trust_hint())
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return SshTimeout(f"{self._where()} did not answer SSH within {self.connect_timeout}s",
                              fix="check that the node is powered on and reachable (out-of-band console if not)")
        if isinstance(exc, (EOFError, ConnectionResetError, paramiko.SSHException, OSError)):
            return SshConnectionLost(f"the SSH connection to {self._where()} broke ({type(exc).__name__}: {exc})",
                                     fix="wait for the node to come back, then run again")
        return None

    # -- resources -----------------------------------------------------------------------
    @functools.cached_property
    def packages(self) -> "Packages":
        return Packages(self)

    @functools.cached_property
    def apt(self) -> "Apt":
        return Apt(self)

    @functools.cached_property
    def release(self) -> "Release":
        return Release(self)

    @functools.cached_property
    def boot(self) -> "Boot":
        return Boot(self)

    @functools.cached_property
    def modules(self) -> "Modules":
        return Modules(self)

    @functools.cached_property
    def etcd(self) -> "Etcd":
        return Etcd(self)


def _ssh_target(spec: "NodeSpec", settings: "SSHSettings") -> str:
    """The name to hand to ssh: the node's name when the ssh_config resolves it (so its Host
    block applies), else its address from the inventory."""
    if settings.config is not None and Path(settings.config).is_file():
        patterns = _host_patterns(Path(settings.config))
        if spec.name in patterns:
            return spec.name
        import fnmatch

        if any(fnmatch.fnmatchcase(spec.name, p) for p in patterns if p != "*" and not p.startswith("!")):
            # a wildcard block may set HostName: ask ssh itself how it resolves the name
            shown = subprocess.run(["ssh", "-G", "-F", str(settings.config), spec.name], capture_output=True,
                                   text=True, timeout=10, stdin=subprocess.DEVNULL).stdout
            resolved = next((line.split(None, 1)[1] for line in shown.splitlines()
                             if line.lower().startswith("hostname ")), spec.name)
            if resolved.strip() != spec.name:
                return spec.name
    return spec.address or spec.name


def _host_patterns(config: Path) -> set[str]:
    """The patterns of the ssh_config's `Host` lines (read directly: importing paramiko only to
    parse them cost ~0.3 s of every run's start)."""
    patterns: set[str] = set()
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return patterns
    for line in text.splitlines():
        words = line.strip().replace("=", " ", 1).split()
        if len(words) > 1 and words[0].lower() == "host":
            patterns.update(w.strip('"') for w in words[1:])
    return patterns


def _paramiko_backend_class() -> type:
    from testinfra.backend.paramiko import ParamikoBackend

    class VerifyingParamikoBackend(ParamikoBackend):
        """testinfra's paramiko backend accepts unknown host keys with a warning; this one checks
        them against known_hosts (RejectPolicy), or records new ones when told to trust them."""

        def __init__(self, hostspec: str, *, port: int = 22, known_hosts: Path | None = None,
                     trust_new: bool = False, route: Any = None, **kwargs: Any) -> None:
            super().__init__(hostspec, **kwargs)
            self.port = port
            self.known_hosts = known_hosts
            self.trust_new = trust_new
            self.route = route
            self.jump_client: Any = None

        def _new_client(self) -> Any:
            import paramiko

            client = paramiko.SSHClient()
            if self.known_hosts is not None:
                path = Path(self.known_hosts).expanduser()
                if not path.exists() and self.trust_new:
                    path.touch(mode=0o644)
                if path.exists():
                    # load_host_keys (not system keys) so AutoAddPolicy writes new keys back here.
                    client.load_host_keys(str(path))
            else:
                client.load_system_host_keys()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if self.trust_new else paramiko.RejectPolicy())
            return client

        def _sock(self, port: int) -> Any:
            """The way to the node: a channel through the jump host (its host key checked as the
            node's is), a ProxyCommand run without a shell, or None (a direct connection)."""
            if self.route is None:
                return None
            import paramiko

            kind, value = self.route
            if kind == "command":
                return paramiko.ProxyCommand(shlex.join(value))
            jump = value
            self.jump_client = self._new_client()
            try:
                self.jump_client.connect(hostname=jump.host, port=int(jump.port or 22), username=jump.user or self.host.user,
                                         key_filename=jump.identity_file or self.ssh_identity_file,
                                         look_for_keys=(jump.identity_file or self.ssh_identity_file) is None,
                                         allow_agent=True, timeout=self.timeout, banner_timeout=self.timeout,
                                         auth_timeout=self.timeout)
            except paramiko.BadHostKeyException as exc:
                raise HostKeyMismatch(f"the host key of the jump host {jump.describe()} (the bastion on the way to "
                                      f"{self.host.name}) does not match known_hosts {self.known_hosts or '~/.ssh/known_hosts'}",
                                      fix="check the bastion's key out of band; if it was reinstalled, remove the old "
                                          f"key (`ssh-keygen -R {jump.host}`) and add the new one") from exc
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    raise HostKeyUnknown(f"known_hosts {self.known_hosts or '~/.ssh/known_hosts'} has no host key for "
                                         f"the jump host {jump.describe()}, and host keys are verified",
                                         fix="check the bastion's key out of band, then add it") from exc
                raise
            transport = self.jump_client.get_transport()
            return transport.open_channel("direct-tcpip", (self.host.name, port), ("127.0.0.1", 0),
                                          timeout=self.timeout)

        @functools.cached_property
        def client(self) -> Any:
            client = self._new_client()
            port = int(self.host.port or self.port)
            client.connect(hostname=self.host.name, port=port,
                           username=self.host.user, key_filename=self.ssh_identity_file,
                           look_for_keys=self.ssh_identity_file is None, allow_agent=True,
                           timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
                           sock=self._sock(port))
            return client

    return VerifyingParamikoBackend


def _VerifyingParamikoBackend(hostspec: str, **kwargs: Any) -> Any:  # noqa: N802 - a class factory
    return _paramiko_backend_class()(hostspec, **kwargs)


# -- the registry: one host per node ----------------------------------------------------------

class Nodes:
    """The profile's nodes, each reached through one reused ``NodeHost``."""

    def __init__(self, *, settings: "SSHSettings", nodes: Sequence["NodeSpec"],
                 connect_timeout: int = CONNECT_TIMEOUT_S) -> None:
        self.settings = settings
        self.specs = {n.name: n for n in nodes}
        self.connect_timeout = connect_timeout
        self._hosts: dict[str, NodeHost] = {}

    def spec(self, name: str) -> "NodeSpec":
        try:
            return self.specs[name]
        except KeyError:
            raise UsageError(f"unknown node {name!r}; known nodes: {', '.join(self.specs) or '(none)'}") from None

    def host(self, name: str) -> NodeHost:
        """The node's host, connecting on first use and reusing it afterwards."""
        if name not in self._hosts:
            self._hosts[name] = NodeHost(spec=self.spec(name), settings=self.settings,
                                         connect_timeout=self.connect_timeout)
        return self._hosts[name]

    __getitem__ = host

    def reconnect(self, name: str) -> NodeHost:
        """Drop the node's connection and build a fresh one (after a reboot the old one is dead)."""
        old = self._hosts.pop(name, None)
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: BLE001 - the old connection is usually dead already
                pass
        return self.host(name)

    def close(self) -> None:
        for host in self._hosts.values():
            try:
                host.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._hosts.clear()


# -- one class per resource --------------------------------------------------------------------

DPKG_FORMAT = "${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}


class Packages:
    """dpkg's view: installed packages, holds, versions, audit; apt-mark holds."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def entries(self) -> tuple[parsing.DpkgEntry, ...]:
        # dpkg-query with a format gives `dpkg -l`'s status columns without its width-truncated names.
        return parsing.parse_dpkg_l(self.host.run(["dpkg-query", "-W", "-f", DPKG_FORMAT], expect=(0, 1)).stdout)

    def held(self) -> dict[str, str]:
        """Held package → installed version."""
        return {e.name: e.version for e in self.entries() if e.held}

    def versions(self, names: Sequence[str] | None = None) -> dict[str, str]:
        """Installed package → version (only ``names`` when given; missing ones left out)."""
        wanted = set(names) if names is not None else None
        return {e.name: e.version for e in self.entries()
                if e.installed and (wanted is None or e.name in wanted)}

    def upgradable(self) -> parsing.AptUpgradable:
        """What `apt-get dist-upgrade` would do (simulated): upgrades, and held packages kept back."""
        out = self.host.run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "dist-upgrade"], env=APT_ENV)
        return parsing.parse_apt_upgradable(out.stdout)

    def audit(self) -> str:
        """`dpkg --audit` output: empty when the package database is consistent."""
        return self.host.run(["dpkg", "--audit"], expect=(0, 1)).stdout.strip()

    def hold(self, names: Sequence[str]) -> CommandResult:
        return self.host.run(["apt-mark", "hold", "--", *names], sudo=True)

    def unhold(self, names: Sequence[str]) -> CommandResult:
        return self.host.run(["apt-mark", "unhold", "--", *names], sudo=True)


class Apt:
    """apt's view: `apt-get update` (read from its text, since the exit code proves little), sources."""

    SOURCE_PATHS = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def update(self, *, timeout: float = 300) -> AptUpdate:
        # rc 100 is apt's "errors happened": reported through the parsed text, not raised.
        result = self.host.run(["apt-get", "update"], expect=(0, 100), sudo=True, env=APT_ENV, timeout=timeout)
        return AptUpdate(report=parsing.parse_apt_update(result.output), result=result)

    def source_files(self) -> tuple[SourcesFile, ...]:
        """Every file under sources.list(.d), parsed when it is a .list/.sources file (other files,
        such as `*.distUpgrade` backups, are returned with no sources)."""
        listing = self.host.run(["find", *self.SOURCE_PATHS, "-maxdepth", "1", "-type", "f"], expect=(0, 1)).stdout
        files = []
        for path in sorted(p for p in listing.splitlines() if p.strip()):
            text = self.host.read_file(path)
            parsed = parsing.parse_sources_list(text) if path.endswith((".list", ".sources")) else ()
            files.append(SourcesFile(path=path, text=text, sources=parsed))
        return tuple(files)

    def sources(self) -> tuple[parsing.AptSource, ...]:
        return tuple(s for f in self.source_files() for s in f.sources)


class Release:
    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def os_release(self) -> parsing.OsRelease:
        return parsing.parse_os_release(self.host.read_file("/etc/os-release"))


class Boot:
    """Boot identity, pending reboot, kernel, free disk space; and asking for a reboot."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def boot_id(self) -> str:
        return self.host.read_file("/proc/sys/kernel/random/boot_id").strip()

    def reboot_required(self) -> RebootRequired:
        out = self.host.run(["sh", "-c", "test -e /var/run/reboot-required || exit 1; "
                                         "cat /var/run/reboot-required.pkgs 2>/dev/null; exit 0"], expect=(0, 1))
        if out.rc == 1:
            return RebootRequired(required=False)
        return RebootRequired(required=True, packages=tuple(p for p in out.stdout.split() if p))

    def running_kernel(self) -> str:
        return self.host.run(["uname", "-r"]).stdout.strip()

    def disk_free(self, path: str = "/") -> DiskFree:
        out = self.host.run(["df", "-P", "-B1", "--", path]).stdout.splitlines()
        # POSIX format: a header, then "Filesystem 1-blocks Used Available Capacity Mounted-on".
        fields = out[-1].split()
        if len(fields) < 6:
            raise PermanentError(f"unreadable `df -P -B1 {path}` output on {self.host.name}: {out!r}")
        return DiskFree(path=path, mount=fields[5], size_bytes=int(fields[1]), used_bytes=int(fields[2]),
                        avail_bytes=int(fields[3]))

    def request_reboot(self) -> str:
        """Ask the node to reboot about a second from now, returning the boot id before it; the
        delay lets this command's SSH session end cleanly first."""
        before = self.boot_id()
        self.host.run(["sh", "-c", "(sleep 1; shutdown -r now || reboot) </dev/null >/dev/null 2>&1 &"], sudo=True)
        return before


class Modules:
    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def loaded(self) -> frozenset[str]:
        lines = self.host.run(["lsmod"]).stdout.splitlines()
        return frozenset(line.split()[0] for line in lines[1:] if line.strip())

    def is_loaded(self, name: str) -> bool:
        return name in self.loaded()

    def load(self, name: str) -> CommandResult:
        return self.host.run(["modprobe", "--", name], sudo=True)


ETCD_ENV = "/etc/etcd.env"
_NO_ETCD_ENV, _NO_ETCDCTL = 90, 91
# Kubespray's /etc/etcd.env holds KEY=value lines (endpoints, and the client certificates with
# TLS); `set -a` exports them for etcdctl, as Kubespray's own etcdctl.sh does.
_ETCDCTL_SCRIPT = f"""\
[ -r {ETCD_ENV} ] || exit {_NO_ETCD_ENV}
command -v etcdctl >/dev/null 2>&1 || PATH="/usr/local/bin:$PATH"
command -v etcdctl >/dev/null 2>&1 || exit {_NO_ETCDCTL}
set -a; . {ETCD_ENV}; set +a
export ETCDCTL_API="${{ETCDCTL_API:-3}}"
exec etcdctl --dial-timeout=2s --command-timeout=5s "$@"
"""


class Etcd:
    """The etcd cluster as this etcd node's etcdctl sees it, with Kubespray's /etc/etcd.env."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def etcdctl(self, *args: str, timeout: float = 30) -> CommandResult:
        """etcdctl with the env file sourced (root: Kubespray's file and certificates are root's).
        Exit codes 0 and 1 come back (1 = some endpoint unhealthy); no env file or no etcdctl
        raises a PermanentError naming the fix."""
        result = self.host.run(["sh", "-c", _ETCDCTL_SCRIPT, "etcdctl", *args], sudo=True, timeout=timeout,
                               expect=(0, 1, _NO_ETCD_ENV, _NO_ETCDCTL))
        if result.rc == _NO_ETCD_ENV:
            raise PermanentError(f"{self.host.name} has no readable {ETCD_ENV}, so its etcdctl cannot reach etcd",
                                 fix=f"is {self.host.name} in the inventory's etcd group? Kubespray's etcd role "
                                     f"writes {ETCD_ENV}; run cluster.yml --tags etcd --limit=etcd")
        if result.rc == _NO_ETCDCTL:
            raise PermanentError(f"{self.host.name} has no etcdctl (looked in PATH and /usr/local/bin)",
                                 fix="Kubespray's etcd role installs it in bin_dir (/usr/local/bin); run "
                                     "cluster.yml --tags etcd --limit=etcd")
        return result

    def endpoint_health(self) -> parsing.EtcdHealth:
        """Every endpoint listed in the env file (Kubespray lists all members), healthy or not."""
        result = self.etcdctl("endpoint", "health", "-w", "json")
        return parsing.parse_etcd_endpoint_health(result.stdout, result.rc, result.stderr)


# -- several reads in one round trip ------------------------------------------------------------

def run_batch(host: NodeHost, commands: Sequence[Sequence[str]]) -> tuple[CommandResult, ...]:
    """Run several argument-list commands in one SSH round trip, each keeping its own exit code,
    stdout and stderr. A preflight reads a dozen small things from a node; one connection use
    instead of a dozen keeps it near the cost of a hand-written shell script. Nothing is raised
    for a command's exit code: the caller judges each result."""
    __tracebackhide__ = True
    import secrets

    if any(isinstance(c, str) for c in commands):
        raise TypeError("run_batch takes argument lists, not shell strings")
    argvs = [[str(a) for a in argv] for argv in commands]
    mark = f"@@nodegate-{secrets.token_hex(8)}"
    lines = ['d=$(mktemp -d 2>/dev/null) || { echo "mktemp failed" >&2; exit 97; }', "trap 'rm -rf \"$d\"' EXIT"]
    for i, argv in enumerate(argvs):
        lines.append(f'({shlex.join(argv)}) </dev/null >"$d/o{i}" 2>"$d/e{i}"; echo $? >"$d/r{i}"')
    lines.append(f'for i in {" ".join(str(i) for i in range(len(argvs)))}; do '
                 f'printf "{mark} %s %s %s %s\\n" "$i" "$(cat "$d/r$i")" "$(wc -c <"$d/o$i")" "$(wc -c <"$d/e$i")"; '
                 'cat "$d/o$i" "$d/e$i"; done')
    started = time.monotonic()
    out = host._execute(shlex.join(["sh", "-c", "\n".join(lines)]))
    duration = time.monotonic() - started
    data: bytes = out.stdout_bytes
    results: list[CommandResult] = []
    pos = 0
    header = mark.encode() + b" "
    for argv in argvs:
        start = data.find(header, pos)
        end = data.find(b"\n", start) if start >= 0 else -1
        fields = data[start + len(header):end].split() if end > 0 else []
        if len(fields) != 4:
            raise PermanentError(f"unreadable batched output from {host.name} (rc {out.rc}): "
                                 f"{(out.stderr or '').strip()[:300]}")
        rc, olen, elen = (int(f) for f in fields[1:])
        body = end + 1
        stdout = data[body:body + olen].decode("utf-8", "replace")
        stderr = data[body + olen:body + olen + elen].decode("utf-8", "replace")
        pos = body + olen + elen
        results.append(CommandResult(node=host.name, args=tuple(argv), rc=rc, stdout=stdout, stderr=stderr,
                                     duration=duration))
    return tuple(results)



@dataclass(frozen=True)
class NodeSnapshot:
    """What a preflight reads from a node, taken in one round trip (see ``Snapshot.take``)."""
    os_release: parsing.OsRelease
    packages: tuple[parsing.DpkgEntry, ...]
    audit: str                                  # `dpkg --audit` output, empty when consistent
    reboot: RebootRequired
    kernel: str                                 # `uname -r`
    installed_kernels: tuple[str, ...]          # versions of installed linux-image-* packages' kernels
    boot_id: str
    disks: Mapping[str, DiskFree]               # "/" and "/boot"
    modules: frozenset[str] | None              # loaded (None: lsmod failed)
    modules_persisted: frozenset[str]           # named in /etc/modules and /etc/modules-load.d/*.conf
    source_files: tuple[SourcesFile, ...]
    results: tuple[CommandResult, ...]          # every command with its output, as evidence

    @property
    def held(self) -> dict[str, str]:
        return {e.name: e.version for e in self.packages if e.held}

    def version_of(self, package: str) -> str | None:
        return next((e.version for e in self.packages if e.name == package and e.installed), None)


class Snapshot:
    """The node's release, packages, audit, pending reboot, kernels, free space, modules and apt
    sources in one SSH round trip; each part parsed as the single-resource readers above do."""

    SOURCES_MARK = "@@nodegate-sources-file "

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def take(self) -> NodeSnapshot:
        __tracebackhide__ = True
        sources = ("for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do [ -f \"$f\" ] || continue; "
                   f"printf '\\n{self.SOURCES_MARK}%s\\n' \"$f\"; cat \"$f\"; done")
        persisted = "cat /etc/modules /etc/modules-load.d/*.conf 2>/dev/null; exit 0"
        commands = [
            ["cat", "/etc/os-release"],
            ["dpkg-query", "-W", "-f", DPKG_FORMAT],
            ["dpkg", "--audit"],
            ["sh", "-c", "test -e /var/run/reboot-required || exit 1; cat /var/run/reboot-required.pkgs 2>/dev/null; "
                         "exit 0"],
            ["uname", "-r"],
            ["cat", "/proc/sys/kernel/random/boot_id"],
            ["df", "-P", "-B1", "--", "/", "/boot"],
            ["lsmod"],
            ["sh", "-c", persisted],
            ["sh", "-c", sources],
        ]
        (osr, dpkg, audit, reboot, kernel, boot_id, df, lsmod, persist, src) = run_batch(self.host, commands)
        entries = parsing.parse_dpkg_l(dpkg.stdout)
        disks: dict[str, DiskFree] = {}
        rows = [line.split() for line in df.stdout.splitlines()[1:] if len(line.split()) >= 6]
        for path, fields in zip(("/", "/boot"), rows):
            disks[path] = DiskFree(path=path, mount=fields[5], size_bytes=int(fields[1]), used_bytes=int(fields[2]),
                                   avail_bytes=int(fields[3]))
        modules = (frozenset(line.split()[0] for line in lsmod.stdout.splitlines()[1:] if line.strip())
                   if lsmod.rc == 0 else None)
        named = frozenset(line.split("#", 1)[0].strip() for line in persist.stdout.splitlines()
                          if line.split("#", 1)[0].strip())
        kernels = tuple(sorted({m.group(1) for e in entries if e.installed
                                for m in [re.match(r"^linux-image-(\d\S*)$", e.name)] if m}))
        return NodeSnapshot(
            os_release=parsing.parse_os_release(osr.stdout),
            packages=entries,
            audit=audit.stdout.strip(),
            reboot=(RebootRequired(required=True, packages=tuple(reboot.stdout.split())) if reboot.rc == 0
                    else RebootRequired(required=False)),
            kernel=kernel.stdout.strip(),
            installed_kernels=kernels,
            boot_id=boot_id.stdout.strip(),
            disks=disks,
            modules=modules,
            modules_persisted=named,
            source_files=self._sources(src.stdout),
            results=(osr, dpkg, audit, reboot, kernel, boot_id, df, lsmod, persist, src),
        )

    def _sources(self, text: str) -> tuple[SourcesFile, ...]:
        files = []
        for chunk in text.split("\n" + self.SOURCES_MARK)[1:]:
            path, _, body = chunk.partition("\n")
            parsed = parsing.parse_sources_list(body) if path.endswith((".list", ".sources")) else ()
            files.append(SourcesFile(path=path, text=body, sources=parsed))
        return tuple(files)


__all__ = [
    "NodeHost", "Nodes", "CommandResult", "CommandFailed", "CommandTimeout", "SshConnectError", "SshRefused",
    "SshTimeout", "SshConnectionLost", "SshAuthFailed", "HostKeyUnknown", "HostKeyMismatch", "Packages", "Apt",
    "Release", "Boot", "Modules", "RebootRequired", "DiskFree", "SourcesFile", "AptUpdate", "run_batch",
    "Snapshot", "NodeSnapshot",
]
