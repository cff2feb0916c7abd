# nodegate: `make test` and `make demo` do everything on a fresh Debian 12 / Ubuntu machine as root.
SHELL := /bin/bash
PY    := .venv/bin/python
LAB   ?= .lab
# Host packages: debootstrap builds the nodes' base image; dpkg-dev/apt-utils/gnupg build and sign
# the lab's apt repository; ceph-* and etcd-* are the lab's real storage and etcd daemons;
# openssh-client is how the harness reaches nodes; kubectl comes from kubernetes-client when absent;
# gcc/libc6-dev build the lab bastion's bind library; openssl hashes a lab user's sudo password.
APT_PACKAGES := debootstrap dpkg-dev apt-utils gnupg zstd openssh-client openssh-server \
	ceph-mon ceph-mgr ceph-osd ceph-common etcd-server etcd-client psmisc iproute2 \
	python3-venv chromium gcc libc6-dev openssl

.PHONY: setup apt venv image allure test soak demo bench lab-up lab-down clean

setup: apt venv image allure

# The Allure CLI (npm, pinned by reports/package-lock.json) builds the single-file HTML report.
allure: reports/node_modules/.installed
reports/node_modules/.installed: reports/package.json reports/package-lock.json | apt
	cd reports && npm ci --no-audit --no-fund --silent
	@touch $@

apt: .make/apt
.make/apt: Makefile
	@mkdir -p .make
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v kubectl >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; }
	@command -v npm >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@touch $@

venv: .venv/.installed
.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

image: venv
	$(PY) -m nodegate.lab.image
	$(PY) -m nodegate.lab.kubespray

# The suite runs as six streams side by side, each with its own lab and address octet (labs a
# stream brings up beside its own take octets offset from it: tests/labkit.py NET_OFFSETS; the
# stream octets are chosen so that no two streams' labs share one, counting the offsets modulo 250).
# Each stream keeps its pytest temporary folders (labs, run logs, journals) under /tmp/ngt-<octet>,
# so a failed stream's evidence is not cleaned away by the other streams' pytest sessions. The upgrade runs (procedures,
# scenarios) spend most of their time waiting on reboots and daemons, so overlapping them keeps
# `make test` inside its 30 minutes. Streams B-F print after stream A.
TEST_A := tests/unit tests/plugin tests/lab tests/access tests/checks tests/reports tests/bench
TEST_B := tests/procedures tests/scenarios/test_course.py tests/scenarios/test_interrupts.py \
	tests/scenarios/test_stuck_and_refused.py
TEST_C := tests/scenarios/test_access.py tests/scenarios/test_storage_field.py \
	tests/scenarios/test_first_commands.py tests/scenarios/test_rollout_racks.py
TEST_D := tests/scenarios/test_release_path.py tests/scenarios/test_kubespray_v2_28.py \
	tests/scenarios/test_toolchain_gate.py tests/scenarios/test_journal_trust.py tests/scenarios/test_batches_preview.py
TEST_E := tests/scenarios/test_control_plane.py
TEST_F := tests/scenarios/test_rollout.py
PYTEST_FLAGS := -p no:randomly -x -q -rfE --durations=15
TEST_NET_A ?= 0
TEST_NET_B ?= 40
TEST_NET_C ?= 120
TEST_NET_D ?= 160
TEST_NET_E ?= 73
TEST_NET_F ?= 29
TEST_ALL := $(TEST_A) $(TEST_B) $(TEST_C) $(TEST_D) $(TEST_E) $(TEST_F)
test: setup
	@for d in tests/*/; do [ "$$d" = tests/__pycache__/ ] || [ "$$d" = tests/scenarios/ ] || \
	  case " $(TEST_ALL) " in *" $${d%/} "*) ;; *) echo "$$d is in no test stream (Makefile TEST_A..F)"; exit 1;; esac; done
	@for f in tests/scenarios/test_*.py; do case " $(TEST_ALL) " in *" $$f "*) ;; \
	  *) echo "$$f is in no test stream (Makefile TEST_B..F)"; exit 1;; esac; done
	$(PY) -m ruff check .
	@mkdir -p .make; \
	PYTEST_DEBUG_TEMPROOT=$$(mkdir -p /tmp/ngt-$(TEST_NET_B) && echo /tmp/ngt-$(TEST_NET_B)) NODEGATE_TEST_NET=$(TEST_NET_B) $(PY) -m pytest $(TEST_B) $(PYTEST_FLAGS) > .make/test-b.log 2>&1 & b=$$!; \
	PYTEST_DEBUG_TEMPROOT=$$(mkdir -p /tmp/ngt-$(TEST_NET_C) && echo /tmp/ngt-$(TEST_NET_C)) NODEGATE_TEST_NET=$(TEST_NET_C) $(PY) -m pytest $(TEST_C) $(PYTEST_FLAGS) > .make/test-c.log 2>&1 & c=$$!; \
	PYTEST_DEBUG_TEMPROOT=$$(mkdir -p /tmp/ngt-$(TEST_NET_D) && echo /tmp/ngt-$(TEST_NET_D)) NODEGATE_TEST_NET=$(TEST_NET_D) $(PY) -m pytest $(TEST_D) $(PYTEST_FLAGS) > .make/test-d.log 2>&1 & d=$$!; \
	PYTEST_DEBUG_TEMPROOT=$$(mkdir -p /tmp/ngt-$(TEST_NET_E) && echo /tmp/ngt-$(TEST_NET_E)) NODEGATE_TEST_NET=$(TEST_NET_E) $(PY) -m pytest $(TEST_E) $(PYTEST_FLAGS) > .make/test-e.log 2>&1 & e=$$!; \
	PYTEST_DEBUG_TEMPROOT=$$(mkdir -p /tmp/ngt-$(TEST_NET_F) && echo /tmp/ngt-$(TEST_NET_F)) NODEGATE_TEST_NET=$(TEST_NET_F) $(PY) -m pytest $(TEST_F) $(PYTEST_FLAGS) > .make/test-f.log 2>&1 & f=$$!; \
	echo "== stream A: $(TEST_A)"; \
	NODEGATE_TEST_NET=$(TEST_NET_A) $(PY) -m pytest $(TEST_A) $(PYTEST_FLAGS); a=$$?; \
	wait $$b; rb=$$?; wait $$c; rc=$$?; wait $$d; rd=$$?; wait $$e; re=$$?; wait $$f; rf=$$?; \
	echo "== stream B: $(TEST_B)"; cat .make/test-b.log; \
	echo "== stream C: $(TEST_C)"; cat .make/test-c.log; \
	echo "== stream D: $(TEST_D)"; cat .make/test-d.log; \
	echo "== stream E: $(TEST_E)"; cat .make/test-e.log; \
	echo "== stream F: $(TEST_F)"; cat .make/test-f.log; \
	echo "== stream A exit $$a, B exit $$rb, C exit $$rc, D exit $$rd, E exit $$re, F exit $$rf"; \
	exit $$(( a != 0 || rb != 0 || rc != 0 || rd != 0 || re != 0 || rf != 0 ))

# Not part of `make test`: the long streams (procedures, scenarios) run SOAK_COUNT times on one lab
# (address octet SOAK_NET), then the failure rate per test and the log of every failure.
# e.g. make soak SOAK_COUNT=20 SOAK_TESTS=tests/scenarios/test_interrupts.py SOAK_NET=29
SOAK_COUNT ?= 5
SOAK_TESTS ?= $(TEST_B) $(TEST_C) $(TEST_D) $(TEST_E) $(TEST_F)
SOAK_NET ?= $(TEST_NET_A)
SOAK_ARGS ?=
soak: setup
	$(PY) tests/soak.py --count $(SOAK_COUNT) --net $(SOAK_NET) --pytest-args "$(SOAK_ARGS)" $(SOAK_TESTS)

# The whole story on the lab: node4 goes from Ubuntu 20.04 to 22.04 with checks before and after,
# and ends with the single-file HTML report and the ticket summary. A lab left from an earlier demo
# is taken down first, so node4 starts at 20.04 again; the journal of that earlier demo's upgrade
# stays where it is: the procedure sees that it describes another incarnation of node4 (another
# machine-id, Node uid and cluster uid), keeps it aside renamed, and starts from the gate.
DEMO_OUT ?= reports/demo/node4-upgrade.html
DEMO_REPORTS ?= reports
LAB_NET ?= 0
DEMO_TICKET ?= CHG-DEMO-1
DEMO_PYTEST := NODEGATE_REPORTS=$(DEMO_REPORTS) $(PY) -m pytest -p no:randomly --cluster=$(LAB)/cluster.toml \
	--node node4 --target-release 22.04 --ticket $(DEMO_TICKET)
DOCKER_TASK = $(LAB)/kubespray/roles/container-engine/docker/tasks/main.yml
# pytest finds the profile of a lab running in ./.lab by itself; a lab elsewhere (LAB=…) is named
DEMO_FIND_LAB = $(if $(filter .lab,$(LAB)),,echo "  export NODEGATE_CLUSTER=$(abspath $(LAB))/cluster.toml";)
DEMO_LAB_DIR = $(if $(filter .lab,$(LAB)),, --dir $(LAB))

demo: setup
	@if [ -f $(LAB)/lab.json ]; then .venv/bin/nodegate lab down --dir $(LAB); fi
	.venv/bin/nodegate lab up --dir $(LAB) --net $(LAB_NET)
	.venv/bin/nodegate lab status --dir $(LAB)
	@echo "== preflight of node4 (read-only)"
	$(DEMO_PYTEST) checks/ -m preflight || echo "== preflight found the problems above; the procedure fixes the ones it knows"
	@echo "== the lab's Kubespray v2.21.0 has the known issue kubespray #9114 (preflight named it): apply its"
	@echo "   documented fix to the checkout, as an operator does before the upgrade: force: true as an argument"
	@echo "   of the package: module of the docker task (after its state: line, not under module_defaults)"
	grep -q '^    force: true$$' $(DOCKER_TASK) || \
	  sed -i '/^    state: "{{ docker_package_info.state/a\    force: true' $(DOCKER_TASK)
	@echo "== upgrade of node4: 20.04 -> 22.04"
	@status=0; $(DEMO_PYTEST) procedures/ --execute || status=$$?; \
	NODEGATE_REPORTS=$(DEMO_REPORTS) .venv/bin/nodegate report --out $(DEMO_OUT) || status=$$?; \
	echo; echo "HTML report (attach to the change ticket): $(abspath $(DEMO_OUT))"; \
	echo "ticket summary (Markdown, for the ticket body): $(abspath $(basename $(DEMO_OUT)).md)"; \
	echo "the lab keeps running: make lab-down stops it"; \
	echo; echo "== next: try these on the running lab, from this folder (the demo's report is the HTML file above)"; \
	echo "  . .venv/bin/activate"; \
	$(DEMO_FIND_LAB) \
	echo "the preflight of another node (read-only):"; \
	echo "  pytest --node node3 -m preflight"; \
	echo "the plan of its upgrade (every step and command; nothing changes without --execute):"; \
	echo "  pytest procedures/ --node node3 --target-release 22.04"; \
	echo "a fault to rehearse (a PodDisruptionBudget then blocks node3's drain: its preflight names it; clear it with --clear):"; \
	echo "  nodegate lab fault pdb-block --node node3$(DEMO_LAB_DIR)"; \
	exit $$status

# BENCH_NET: the address octet of the bench's 16-node lab (pick one no other lab on the machine uses).
BENCH_NET ?= 40
bench: setup
	$(PY) -m bench.run --net $(BENCH_NET)

lab-down:
	.venv/bin/nodegate lab down --dir $(LAB)

clean: lab-down
	rm -rf .make .venv
