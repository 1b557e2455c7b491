# The README's two commands: `make demo` and `make test`. Both set up what they
# need on a fresh Debian 12 machine (as root): QEMU and etcd-server from Debian, a virtualenv
# with colod and its test extras.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DEB_PACKAGES := qemu-system-x86 qemu-utils python3-venv etcd-server

.PHONY: setup system-packages demo test lint typecheck trial clean

setup: system-packages $(VENV)/.installed

system-packages:
	@if ! dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
		echo "installing $(DEB_PACKAGES) with apt-get"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_PACKAGES); \
	fi

# compat mode puts the work tree on sys.path, where Twisted's plugin system
# looks for twisted/plugins/colod_plugin.py.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

demo: setup
	$(PY) -m colod.testing.demo

lint: setup
	$(VENV)/bin/ruff check .

# The contracts (typing.Protocols, zope Interfaces) checked: setup.cfg's [mypy].
typecheck: setup
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(PY) -m pytest

trial: setup
	$(PY) -m twisted.trial tests

clean:
	rm -rf $(VENV) build dist *.egg-info _trial_temp .pytest_cache .hypothesis

# The Xen lab (tools/xenlab, colod/testing/xenlab.py): Xen 4.17 with a Debian dom0 in
# QEMU.  `make xenlab` builds it into /var/cache/colod-xenlab ($XENLAB_CACHE)
# unless that is current; `make xenlab-smoke` also boots it, runs the HVM test
# guest and checks colod in dom0 (minutes; one summary line).
.PHONY: xenlab xenlab-smoke xen-test

xenlab: setup
	$(PY) -m colod.testing.xenlab build

xenlab-smoke: setup
	$(PY) -m colod.testing.xenlab smoke

# Two colod daemons in the lab's dom0 protect a real HVM guest through the loss
# of its host (tests/xenlab/xen_test.py; minutes; one summary line).
xen-test: setup
	$(PY) -m tests.xenlab.xen_test
