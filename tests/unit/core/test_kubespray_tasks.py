"""Reading the docker package task of a Kubespray checkout for the kubespray #9114 fix
(nodegate.core.kubespray_tasks), over a task file written here in the shape of Kubespray v2.21.0's
roles/container-engine/docker/tasks/main.yml: the generic `package:` module, `update_cache` under
`module_defaults: apt:`, other tasks before and after."""
from __future__ import annotations

import pytest

from nodegate.core.kubespray_tasks import DOCKER_TASKS, TaskFileError, apply_fix, check_checkout, read_docker_task

V2_21_SHAPE = """\
---
- name: gather os specific variables
  include_vars: "{{ item }}"
  with_first_found:
    - files:
        - "{{ ansible_distribution|lower }}.yml"
      paths:
        - ../vars
      skip: true

- name: Remove dpkg hold
  dpkg_selections:
    name: "{{ item }}"
    selection: install
  with_items:
    - docker-ce

- name: ensure docker packages are installed
  package:
    name: "{{ docker_package_info.pkgs }}"
    state: "{{ docker_package_info.state | default('present') }}"
  module_defaults:
    apt:
      update_cache: true
    yum:
      enablerepo: "{{ docker_package_info.enablerepo | default(omit) }}"
  register: docker_task_result
  until: docker_task_result is succeeded
  retries: 4
  when:
    - docker_package_info.pkgs|length > 0

# This keeps apt upgrade away from the container engine
- name: Tell Debian hosts not to change the docker version with apt upgrade
  dpkg_selections:
    name: "{{ item }}"
    selection: hold
"""


def test_v2_21_shape_without_the_fix_names_the_line_to_add():
    v = read_docker_task(V2_21_SHAPE, "kubespray/" + DOCKER_TASKS)
    assert not v.fixed and v.module == "package" and v.task_line == 18
    assert (v.add_after_line, v.add_after_text) == (21, "    state: \"{{ docker_package_info.state | default('present') }}\"")
    assert v.line_to_add == "    force: true"
    text = v.instruction()
    assert "kubespray/roles/container-engine/docker/tasks/main.yml" in text and "after line 21" in text
    assert text.endswith("\n    force: true")


def test_the_operators_fix_on_the_module_is_seen():
    fixed = apply_fix(V2_21_SHAPE, read_docker_task(V2_21_SHAPE))
    assert "    state: \"{{ docker_package_info.state | default('present') }}\"\n    force: true\n  module_defaults:" in fixed
    v = read_docker_task(fixed)
    assert v.fixed and v.fix_arg == "force"
    allow = V2_21_SHAPE.replace("  module_defaults:\n", "    allow_downgrade: yes\n  module_defaults:\n")
    assert read_docker_task(allow).fix_arg == "allow_downgrade"


def test_force_under_module_defaults_is_not_the_fix():
    wrong = V2_21_SHAPE.replace("      update_cache: true\n", "      update_cache: true\n      force: true\n")
    v = read_docker_task(wrong)
    assert not v.fixed and v.misplaced == "force: true under module_defaults: apt:"
    assert "is not the fix" in v.instruction() and v.line_to_add == "    force: true"


def test_a_templated_value_is_not_a_fix():
    templated = V2_21_SHAPE.replace("  module_defaults:\n", "    allow_downgrade: \"{{ some_flag | default(false) }}\"\n"
                                    "  module_defaults:\n")
    assert not read_docker_task(templated).fixed


def test_capitalised_name_and_apt_module():
    text = ("- name: Ensure docker packages are installed\n  apt:\n    name: docker-ce\n    update_cache: true\n"
            "  register: r\n")
    v = read_docker_task(text)
    assert (v.module, v.add_after_line, v.fixed) == ("apt", 4, False)


def test_missing_task_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(TaskFileError, match="no task named"):
        read_docker_task("- name: something else\n  debug: {msg: hi}\n")
    with pytest.raises(TaskFileError, match="cannot read"):
        check_checkout(tmp_path)
    (tmp_path / DOCKER_TASKS).parent.mkdir(parents=True)
    (tmp_path / DOCKER_TASKS).write_text(V2_21_SHAPE)
    assert check_checkout(tmp_path).task == "ensure docker packages are installed"
