# nodegate: `make test` and `make demo` do everything on a fresh Debian 12 / Ubuntu machine as root.
SHELL := /bin/bash
PY    := .venv/bin/python
LAB   ?= .lab
# Host packages: debootstrap builds the nodes' base image; dpkg-dev/apt-utils/gnupg build and sign
# the lab's apt repository; ceph-* and etcd-* are the lab's real storage and etcd daemons;
# openssh-client is how the harness reaches nodes; kubectl comes from kubernetes-client when absent.
APT_PACKAGES := debootstrap dpkg-dev apt-utils gnupg zstd openssh-client openssh-server \
	ceph-mon ceph-mgr ceph-osd ceph-common etcd-server etcd-client psmisc iproute2 \
	python3-venv chromium

.PHONY: setup apt venv image allure test demo bench lab-up lab-down clean

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

# The suite runs as two streams side by side, each with its own lab (address octets 0 and 40,
# extra labs from +100): the long upgrade runs (procedures, scenarios) spend most
# of their time waiting on reboots and daemons, so overlapping them with the rest keeps
# `make test` well inside its 30 minutes. Stream B's output is printed after stream A's.
TEST_A := tests/unit tests/plugin tests/lab tests/access tests/checks tests/reports tests/bench
TEST_B := tests/procedures tests/scenarios
PYTEST_FLAGS := -p no:randomly -x -q -rfE --durations=15
TEST_NET_A ?= 0
TEST_NET_B ?= 40
test: setup
	@for d in tests/*/; do case " $(TEST_A) $(TEST_B) " in *" $${d%/} "*) ;; \
	  *) [ "$$d" = tests/__pycache__/ ] || { echo "$$d is in neither test stream (Makefile TEST_A/TEST_B)"; exit 1; };; esac; done
	$(PY) -m ruff check .
	@mkdir -p .make; \
	NODEGATE_TEST_NET=$(TEST_NET_B) $(PY) -m pytest $(TEST_B) $(PYTEST_FLAGS) > .make/test-b.log 2>&1 & b=$$!; \
	echo "== stream A: $(TEST_A)"; \
	NODEGATE_TEST_NET=$(TEST_NET_A) $(PY) -m pytest $(TEST_A) $(PYTEST_FLAGS); a=$$?; \
	wait $$b; rb=$$?; \
	echo "== stream B: $(TEST_B)"; cat .make/test-b.log; \
	echo "== stream A exit $$a, stream B exit $$rb"; \
	exit $$(( a != 0 || rb != 0 ))

# The whole story on the lab: node4 goes from Ubuntu 20.04 to 22.04 with checks before and after,
# and ends with the single-file HTML report and the ticket summary. A lab left from an earlier demo
# is taken down first, so node4 starts at 20.04 again.
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
	@# a fresh lab: the journal of an earlier demo's upgrade no longer describes its nodes
	rm -rf $(DEMO_REPORTS)/runs/journal/nodegate-lab
	.venv/bin/nodegate lab up --dir $(LAB) --net $(LAB_NET)
	.venv/bin/nodegate lab status --dir $(LAB)
	@echo "== preflight of node4 (read-only)"
	$(DEMO_PYTEST) checks/ -m preflight || echo "== preflight found the problems above; the procedure fixes the ones it knows"
	@echo "== the lab's Kubespray v2.21.0 has the known issue kubespray #9114 (preflight named it): apply its"
	@echo "   documented fix to the checkout, as an operator does before the upgrade: force: true on the docker task"
	grep -q '^    force: true$$' $(DOCKER_TASK) || sed -i 's/^    update_cache: true$$/&\n    force: true/' $(DOCKER_TASK)
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

bench: setup
	$(PY) -m bench.run

lab-down:
	.venv/bin/nodegate lab down --dir $(LAB)

clean: lab-down
	rm -rf .make .venv
