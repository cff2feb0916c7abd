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
unknown or changed host key), each with its own message and fix (nodegate.cluster.nodes.sshfailures).

Small classes read one resource each: ``Packages``, ``Apt``, ``Release``, ``Boot``, ``Modules``;
parsing is nodegate.core.parsing's.
"""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodegate.cluster.nodes import sshfailures
from nodegate.cluster.nodes.backends import _ssh_target, _VerifyingParamikoBackend
from nodegate.cluster.nodes.resources import Apt, Boot, Etcd, Modules, Packages, Release

# the connection errors, importable from here as before (`as`: a re-export)
from nodegate.cluster.nodes.sshfailures import HostKeyMismatch as HostKeyMismatch
from nodegate.cluster.nodes.sshfailures import HostKeyUnknown as HostKeyUnknown
from nodegate.cluster.nodes.sshfailures import SshAuthFailed as SshAuthFailed
from nodegate.cluster.nodes.sshfailures import SshConnectError as SshConnectError
from nodegate.cluster.nodes.sshfailures import SshConnectionLost as SshConnectionLost
from nodegate.cluster.nodes.sshfailures import SshRefused as SshRefused
from nodegate.cluster.nodes.sshfailures import SshTimeout as SshTimeout
from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.core.interrupts import checkpoint
from nodegate.core.waits import Done, NotYet, wait_for

if TYPE_CHECKING:
    from nodegate.profile.model import NodeSpec, SSHSettings

CONNECT_TIMEOUT_S = 5


class SudoPasswordRequired(UsageError):
    """The node's sudo asks for a password and nodegate was given none."""


class SudoPasswordRejected(UsageError):
    """The node's sudo did not accept the password nodegate was given."""


class BecomeRefused(UsageError):
    """The inventory's ansible_become / ansible_become_user do not let nodegate become root on the node."""


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
        if sudo:
            self._refuse_unusable_become()
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

    def _refuse_unusable_become(self) -> None:
        __tracebackhide__ = True
        problem = self.spec.privilege_problem()
        if problem is not None:
            raise BecomeRefused(problem[0], fix=problem[1])

    def _check_sudo(self, stderr: str) -> None:
        __tracebackhide__ = True
        if "a password is required" in stderr:
            raise SudoPasswordRequired(
                f"sudo on {self._where()} asks for a password, and nodegate was given none (`sudo -n true` fails: "
                f"{stderr.strip().splitlines()[-1][:200]})",
                fix=f"give {self.user} passwordless sudo on {self.name} (e.g. `{self.user} ALL=(ALL) NOPASSWD:ALL` in "
                    "/etc/sudoers.d/), or run with --ask-become-pass (asked once on the terminal) or with "
                    "--become-password-env NAME with the password in the environment variable NAME")
        if re.search(r"incorrect password|Sorry, try again", stderr):
            raise SudoPasswordRejected(
                f"sudo on {self._where()} rejected the password given (--ask-become-pass / --become-password-env)",
                fix=f"give {self.user}'s sudo password on {self.name} (typed at the prompt, or in that variable)")

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
        except Exception as exc:   # paramiko's exceptions, classified below
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
        with the given password); raises BecomeRefused (the inventory's ansible_become /
        ansible_become_user say root cannot be reached), SudoPasswordRequired / SudoPasswordRejected."""
        self._refuse_unusable_become()
        if not self.needs_sudo:
            return f"logged in as {self.user}: no sudo needed"
        self.run(["true"], sudo=True)
        how = "with the password given (--ask-become-pass / --become-password-env)" if self.settings.become_password \
            else "without a password"
        return f"{self.user} becomes {self.become_user} with sudo {how}"

    def read_file(self, path: str) -> str:
        return self.run(["cat", "--", path]).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], expect=(0, 1)).rc == 0

    # -- error classification ----------------------------------------------------------
    def _where(self) -> str:
        return f"{self.name} ({self.target}, user {self.user})"

    _classify_ssh = sshfailures.classify_ssh
    _classify_paramiko = sshfailures.classify_paramiko

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


# -- waiting for a node to answer again ------------------------------------------------------------

def wait_for_boot(nodes: Nodes, name: str, *, timeout: float, new_boot_id_than: str | None = None,
                  interval: float = 0.5, progress_every: float = 5.0) -> tuple[NodeHost, str]:
    """Wait until ``name`` answers over SSH (and, if given, with a boot id other than
    ``new_boot_id_than``); returns the fresh ``NodeHost`` and its boot id. Each attempt builds a
    fresh connection, because the old one died with the reboot. ssh itself ending with 255 and
    no message is the connection closing under us while the node goes down or comes up: the
    same "not yet" as a refused connection."""
    __tracebackhide__ = True

    def probe() -> Done | NotYet:
        try:
            host = nodes.reconnect(name)
            boot_id = host.boot.boot_id()
        except CommandFailed as exc:
            if exc.result.rc == 255:
                return NotYet("ssh exited 255 without a message (connection closed: the node is going down or "
                              "coming up)")
            raise
        if new_boot_id_than is not None and boot_id == new_boot_id_than:
            return NotYet(f"SSH answers but boot id is still {boot_id} (not rebooted yet)")
        return Done((host, boot_id))

    what = f"SSH on {name}" + (" after a reboot (new boot id)" if new_boot_id_than else "")
    return wait_for(probe, what=what, timeout=timeout, interval=interval, progress_every=progress_every,
                    fix=f"if {name} does not come back, reach it out of band (BMC/IPMI console) "
                        "and check why it did not boot")


def wait_for_ssh(nodes: Nodes, name: str, *, timeout: float, new_boot_id_than: str | None = None,
                 interval: float = 0.5, progress_every: float = 5.0) -> NodeHost:
    """wait_for_boot, for when only the fresh connection matters."""
    __tracebackhide__ = True
    return wait_for_boot(nodes, name, timeout=timeout, new_boot_id_than=new_boot_id_than, interval=interval,
                         progress_every=progress_every)[0]
