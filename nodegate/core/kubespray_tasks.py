"""Does a Kubespray checkout carry the fix for the docker package downgrade (kubespray #9114)?

Read from the task file itself, before anything on a node changes. Facts (Kubespray's
`roles/container-engine/docker/tasks/main.yml`, v2.20.0 to v2.29.1): the task "ensure docker
packages are installed" (capitalised "Ensure …" from v2.23) installs the pinned builds with the
generic `package:` module, with `update_cache` given under `module_defaults: apt:`; no release
sets `force` or `allow_downgrade`, so on a node whose packages were upgraded apt refuses with
"Packages were downgraded and -y was used without --allow-downgrades". The operator's fix is an
argument on the module itself (`force: true`, or `allow_downgrade: true`); `package:` hands its
arguments to apt, while an entry under `module_defaults` is not where the fix belongs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

DOCKER_TASKS = "roles/container-engine/docker/tasks/main.yml"
TASK_NAME = re.compile(r"^ensure docker packages are installed$", re.IGNORECASE)
MODULES = ("package", "apt", "ansible.builtin.package", "ansible.builtin.apt")
FIX_ARGS = ("force", "allow_downgrade")
_TRUE = {"true", "yes", "on", "1"}


class TaskFileError(ValueError):
    """The file is not a task list with the docker package task in a shape this reader knows."""


@dataclass(frozen=True)
class DockerTaskVerdict:
    path: str                  # the file, as given
    task: str                  # the task's name as written
    module: str                # "package", "apt", …
    task_line: int             # 1-based line of "- name: …"
    fixed: bool
    fix_arg: str | None        # the argument that carries the fix, when fixed
    misplaced: str | None      # e.g. "force: true under module_defaults: apt:" (not a fix)
    add_after_line: int        # 1-based line after which the fix goes
    add_after_text: str
    line_to_add: str           # the exact line, with its indentation

    def instruction(self) -> str:
        where = f"{self.path}, task \"{self.task}\" (line {self.task_line})"
        text = (f"add this line to {where}, after line {self.add_after_line} "
                f"(`{self.add_after_text.strip()}`), as an argument of `{self.module}:`:\n{self.line_to_add}")
        if self.misplaced:
            text += f"\n({self.misplaced} is not the fix: it must be an argument of `{self.module}:`)"
        return text


def _truthy(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in _TRUE)


def read_docker_task(text: str, path: str = DOCKER_TASKS) -> DockerTaskVerdict:
    try:
        tasks = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaskFileError(f"{path} is not YAML: {exc}") from None
    if not isinstance(tasks, list):
        raise TaskFileError(f"{path} is not an Ansible task list")
    task = next((t for t in tasks if isinstance(t, dict) and TASK_NAME.match(str(t.get("name", "")).strip())), None)
    if task is None:
        raise TaskFileError(f"{path} has no task named \"ensure docker packages are installed\"")
    module = next((m for m in MODULES if m in task), None)
    if module is None or not isinstance(task[module], dict):
        raise TaskFileError(f"{path}: the task \"{task['name']}\" uses none of {', '.join(MODULES)} with arguments")
    args = task[module]
    fix_arg = next((a for a in FIX_ARGS if _truthy(args.get(a))), None)
    misplaced = None
    defaults = task.get("module_defaults") or {}
    if isinstance(defaults, dict):
        for name, values in defaults.items():
            if isinstance(values, dict):
                for a in FIX_ARGS:
                    if _truthy(values.get(a)):
                        misplaced = f"{a}: true under module_defaults: {name}:"
    lines = text.splitlines()
    task_line, after, indent = _locate(lines, str(task["name"]), module)
    return DockerTaskVerdict(path=path, task=str(task["name"]), module=module, task_line=task_line + 1,
                             fixed=fix_arg is not None, fix_arg=fix_arg, misplaced=misplaced,
                             add_after_line=after + 1, add_after_text=lines[after],
                             line_to_add=" " * indent + "force: true")


def _locate(lines: list[str], name: str, module: str) -> tuple[int, int, int]:
    """(line of the task's `- name:`, last line of the module's arguments, their indentation)."""
    name_re = re.compile(r"^(\s*)-\s+name:\s*['\"]?" + re.escape(name) + r"['\"]?\s*$")
    start = next(i for i, line in enumerate(lines) if name_re.match(line))
    task_indent = len(name_re.match(lines[start]).group(1)) + 2
    mod_re = re.compile(r"^" + " " * task_indent + re.escape(module) + r":\s*$")
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].strip() and not lines[i].lstrip().startswith("#")
                and len(lines[i]) - len(lines[i].lstrip()) < task_indent), len(lines))
    mod = next(i for i in range(start, end) if mod_re.match(lines[i]))
    arg_indent = None
    last = mod
    for i in range(mod + 1, end):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= task_indent:
            break
        if arg_indent is None:
            arg_indent = depth
        last = i
    return start, last, arg_indent if arg_indent is not None else task_indent + 2


def check_checkout(checkout: Path) -> DockerTaskVerdict:
    path = Path(checkout) / DOCKER_TASKS
    try:
        text = path.read_text()
    except OSError as exc:
        raise TaskFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return read_docker_task(text, str(path))


def apply_fix(text: str, verdict: DockerTaskVerdict) -> str:
    """The file with the fix line added where `verdict` says (what an operator does by hand)."""
    if verdict.fixed:
        return text
    lines = text.split("\n")
    lines.insert(verdict.add_after_line, verdict.line_to_add)
    return "\n".join(lines)
