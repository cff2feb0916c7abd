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

test: setup
	$(PY) -m pytest tests -p no:randomly -x -q -rfE

demo: setup
	.venv/bin/nodegate lab up --dir $(LAB)
	.venv/bin/nodegate lab status --dir $(LAB)

bench: setup
	$(PY) -m bench.run

lab-down:
	.venv/bin/nodegate lab down --dir $(LAB)

clean: lab-down
	rm -rf .make .venv
