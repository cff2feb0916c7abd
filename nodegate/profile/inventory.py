"""The Kubespray inventory, YAML (hosts.yaml) or INI, read as Ansible reads it: groups, hosts and
the connection variables nodegate needs.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nodegate.core.errors import UsageError

# The only inventory variables nodegate reads. Everything else (ansible_password,
# ansible_become_password, vault blobs, …) is dropped while parsing, so no secret is ever held.
INVENTORY_VARS = frozenset({
    "ansible_host", "ansible_ssh_host", "ansible_user", "ansible_ssh_user", "ansible_port", "ansible_ssh_port",
    "ansible_ssh_private_key_file", "ansible_ssh_common_args", "ansible_become", "ansible_become_user",
    "kube_version", "kube_override_hostname", "container_manager", "containerd_package", "containerd_version",
    "docker_version", "docker_cli_version", "docker_containerd_version",
    "ip", "access_ip",   # where the node's services listen and are reached (the API endpoint check)
})
CONTROL_PLANE_GROUPS = ("kube_control_plane", "kube-master", "kube_master")
WORKER_GROUPS = ("kube_node", "kube-node")
ETCD_GROUPS = ("etcd",)
CLUSTER_GROUPS = ("k8s_cluster", "k8s-cluster")


@dataclass(frozen=True)
class Inventory:
    """What nodegate reads from an Ansible inventory: hosts (in file order), groups, safe vars."""
    path: Path
    host_vars: Mapping[str, Mapping[str, str]]        # host -> its own safe vars
    group_hosts: Mapping[str, tuple[str, ...]]        # group -> hosts listed directly
    group_children: Mapping[str, tuple[str, ...]]     # group -> child groups
    group_vars: Mapping[str, Mapping[str, str]]       # group -> its safe vars

    def members(self, group: str) -> tuple[str, ...]:
        """Hosts of a group and of its children, recursively, in inventory order."""
        seen_groups: set[str] = set()
        found: dict[str, None] = {}

        def walk(name: str) -> None:
            if name in seen_groups:
                return
            seen_groups.add(name)
            for host in self.group_hosts.get(name, ()):
                found[host] = None
            for child in self.group_children.get(name, ()):
                walk(child)

        if group == "all":
            return tuple(self.host_vars)
        walk(group)
        order = list(self.host_vars)
        return tuple(sorted(found, key=lambda h: order.index(h) if h in order else len(order)))

    def groups_of(self, host: str) -> tuple[str, ...]:
        """Groups containing the host (directly or through children), parents before children."""
        groups = [g for g in set(self.group_hosts) | set(self.group_children) if host in self.members(g)]
        return tuple(sorted(groups, key=lambda g: (self._depth(g), g)))

    def _depth(self, group: str, _seen: frozenset[str] = frozenset()) -> int:
        parents = [p for p, kids in self.group_children.items() if group in kids and p not in _seen]
        return 0 if not parents else 1 + max(self._depth(p, _seen | {group}) for p in parents)

    def vars_for(self, host: str) -> dict[str, str]:
        merged = dict(self.group_vars.get("all", {}))
        for group in self.groups_of(host):
            if group != "all":
                merged.update(self.group_vars.get(group, {}))
        merged.update(self.host_vars.get(host, {}))
        return merged


def read_inventory(path: Path) -> Inventory:
    """An Ansible inventory in YAML (hosts.yaml) or INI form. Raises UsageError naming the problem.

    Hand-written on purpose: Ansible's own loader costs most of a second to import, prints
    warnings instead of raising, and reads vault and secrets nodegate must never hold."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UsageError(f"the Kubespray inventory {path} cannot be read: {reason}",
                         fix="make the inventory file readable by this user") from None
    builder = _InventoryBuilder(path)
    if path.suffix in (".yaml", ".yml") or (path.suffix not in (".ini", ".cfg") and _looks_like_yaml(text)):
        builder.from_yaml(text)
    else:
        builder.from_ini(text)
    return builder.build()


def _looks_like_yaml(text: str) -> bool:
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";", "---")):
            continue
        return not stripped.startswith("[")
    return False


class _InventoryBuilder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.hosts: dict[str, dict[str, str]] = {}
        self.group_hosts: dict[str, dict[str, None]] = {}
        self.group_children: dict[str, dict[str, None]] = {}
        self.group_vars: dict[str, dict[str, str]] = {}

    def fail(self, what: str, fix: str) -> UsageError:
        return UsageError(f"the Kubespray inventory {self.path}: {what}", fix=fix)

    def group(self, name: str) -> None:
        self.group_hosts.setdefault(name, {})
        self.group_children.setdefault(name, {})

    def add_host(self, group: str, host: str, host_vars: Mapping[str, object]) -> None:
        self.group(group)
        self.group_hosts[group][host] = None
        own = self.hosts.setdefault(host, {})
        own.update(_safe_vars(host_vars))

    def add_vars(self, group: str, group_vars: Mapping[str, object]) -> None:
        self.group(group)
        self.group_vars.setdefault(group, {}).update(_safe_vars(group_vars))

    def build(self) -> Inventory:
        for children in self.group_children.values():
            for child in children:
                self.group(child)
        return Inventory(path=self.path, host_vars={h: dict(v) for h, v in self.hosts.items()},
                         group_hosts={g: tuple(h) for g, h in self.group_hosts.items()},
                         group_children={g: tuple(c) for g, c in self.group_children.items()},
                         group_vars={g: dict(v) for g, v in self.group_vars.items()})

    # -- YAML ---------------------------------------------------------------
    def from_yaml(self, text: str) -> None:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            # line and problem only: yaml's own message quotes the line, which may hold a password
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise self.fail(f"not valid YAML{where}: {exc.problem or exc.context}",
                            fix="correct the YAML at that line") from None
        except yaml.YAMLError as exc:
            raise self.fail(f"not valid YAML ({type(exc).__name__})", fix="correct the YAML syntax") from None
        except RecursionError:   # PyYAML recurses per nesting level
            raise self.fail("nests too deeply to be an inventory", fix="correct the YAML syntax") from None
        if data is None:
            raise self.fail("the file is empty", fix="list your nodes under all: hosts: and the Kubespray groups")
        if not isinstance(data, dict):
            raise self.fail("the top level must be a mapping (all: hosts: … children: …)",
                            fix="use the layout of Kubespray's inventory/sample/hosts.yaml")
        self.group("all")
        for name, body in data.items():
            if str(name) != "all":   # a top-level group other than all is an implicit child of all
                self.group_children["all"][str(name)] = None
            self._yaml_group(str(name), body, trail=str(name))

    def _yaml_group(self, name: str, body: object, trail: str, _parents: tuple[str, ...] = ()) -> None:
        self.group(name)
        if body is None:
            return
        if name in _parents:
            # YAML anchors can make a group its own descendant (`a: &x {children: {b: {children: {a: *x}}}}`);
            # Ansible refuses such a loop, and walking it would never end
            raise self.fail(f"group {name} is its own descendant ({' -> '.join(_parents + (name,))})",
                            fix="remove the loop from the children: entries (check YAML anchors and aliases)")
        if not isinstance(body, dict):
            raise self.fail(f"group {trail} must be a mapping with hosts/children/vars",
                            fix=f"write {name}: followed by hosts:, children: or vars:")
        unknown = sorted(str(k) for k in set(body) - {"hosts", "children", "vars"})
        if unknown:
            raise self.fail(f"group {trail} has unknown key(s) {', '.join(unknown)} (only hosts, children, vars)",
                            fix="put hosts under hosts:, groups under children:, variables under vars:")
        hosts = self._mapping(body, "hosts", f"{trail}.hosts must be a mapping of host names",
                              fix="write each host as `name:` (with its vars indented below, or nothing)")
        for host, host_vars in hosts.items():
            if host_vars is not None and not isinstance(host_vars, dict):
                raise self.fail(f"host {host} in {trail}.hosts: its variables must be a mapping",
                                fix=f"write `{host}:` then `ansible_host: …` indented below")
            self.add_host(name, str(host), host_vars or {})
        if body.get("vars") is not None:
            self.add_vars(name, self._mapping(body, "vars", f"{trail}.vars must be a mapping",
                                              fix="write variables as key: value"))
        children = self._mapping(body, "children", f"{trail}.children must be a mapping of group names",
                                 fix="write each child group as `group_name:`")
        for child, child_body in children.items():
            child = str(child)
            if name != "all" and child == name:
                raise self.fail(f"group {name} lists itself as a child", fix="remove the loop")
            self.group_children[name][child] = None
            self._yaml_group(child, child_body, trail=f"{trail}.children.{child}", _parents=_parents + (name,))

    def _mapping(self, body: dict, key: str, problem: str, *, fix: str) -> dict:
        """``body[key]`` when it is a mapping, {} when absent (or empty); else the problem, named."""
        value = body.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(problem, fix=fix)
        return value

    # -- INI ----------------------------------------------------------------
    def from_ini(self, text: str) -> None:
        section, kind = "ungrouped", "hosts"
        self.group("all")
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                match = re.match(r"^\[([^\]:\s]+)(?::(vars|children|hosts))?\]\s*(?:[#;].*)?$", line)
                if not match:
                    raise self.fail(f"line {number}: a section header must look like [group], [group:vars] "
                                    "or [group:children]", fix="correct the section header")
                section, kind = match.group(1), match.group(2) or "hosts"
                self.group(section)
                if section != "all":
                    self.group_children["all"].setdefault(section, None)
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                raise self.fail(f"line {number}: unbalanced quotes", fix="close the quote on that line") from None
            if not words:
                continue
            if kind == "children":
                self.group_children.setdefault(section, {})[words[0]] = None
                self.group(words[0])
            elif kind == "vars":
                key, sep, value = line.partition("=")
                if not sep:
                    raise self.fail(f"line {number} in [{section}:vars] is not key=value", fix="write key=value")
                self.add_vars(section, {key.strip(): _ini_value(value)})
            else:
                host_vars = {}
                for word in words[1:]:
                    key, sep, value = word.partition("=")
                    if not sep:
                        raise self.fail(f"line {number}: host {words[0]} has a word that is not key=value",
                                        fix="write host variables as key=value")
                    host_vars[key] = value
                for host in _expand_host_pattern(words[0], number, self):
                    name, port = _split_port(host)
                    if port:
                        host_vars.setdefault("ansible_port", port)
                    self.add_host(section, name, host_vars)


def _ini_value(value: str) -> str:
    value = value.strip()
    try:
        words = shlex.split(value, comments=True)
    except ValueError:
        return value
    return " ".join(words)


def _split_port(host: str) -> tuple[str, str | None]:
    match = re.match(r"^([^:\[\]]+):(\d+)$", host)
    return (match.group(1), match.group(2)) if match else (host, None)


def _expand_host_pattern(pattern: str, number: int, builder: _InventoryBuilder) -> list[str]:
    """Ansible's `node[1:3]` / `node[01:10]` ranges (numeric only)."""
    match = re.match(r"^(.*)\[(\d+):(\d+)\](.*)$", pattern)
    if not match:
        return [pattern]
    head, start, end, tail = match.groups()
    if int(end) < int(start) or int(end) - int(start) > 1000:
        raise builder.fail(f"line {number}: host range [{start}:{end}] is not a valid range",
                           fix="write the range as [low:high]")
    width = len(start) if start.startswith("0") else 0
    return [f"{head}{str(i).zfill(width)}{tail}" for i in range(int(start), int(end) + 1)]


def _safe_vars(values: Mapping[object, object]) -> dict[str, str]:
    return {str(k): _plain_str(v) for k, v in values.items() if str(k) in INVENTORY_VARS and v is not None}


def _plain_str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _plain(value: str | None) -> str | None:
    """A value nodegate can use as is: not empty and not an unrendered Jinja template."""
    if value is None:
        return None
    value = str(value).strip()
    return value if value and "{{" not in value and "{%" not in value else None
