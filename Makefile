# The two commands of README.md. Both work on a fresh Debian machine with Python 3.11, as root, without a GPU.
#   make demo   the main job (merg-jax demo, ≤ 15 min): make AvaMERG-mini, train Empatheia through every stage,
#               score the test split, answer two dialogues with text, voice and a talking avatar (runs/demo)
#   make test   install the test dependencies (the CPU build of torch first) and run every test

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A distribution's own Python (Debian's /usr/bin/python3) refuses pip installs without this; others ignore it.
export PIP_BREAK_SYSTEM_PACKAGES := 1

.PHONY: demo test install bench

install:
	$(PIP) install -e .

# $(call debs,COMMANDS,LIBRARIES): apt-get installs, as root, the Debian packages of the missing COMMANDS (a
# command is its package's name) and LIBRARIES (package:soname); as another user it names them. espeak-ng speaks;
# g++ builds the CPU decode kernel (merg_jax/kernels/panel_matmul.cc); libtcmalloc-minimal4 is the host allocator
# merg-jax re-executes under (merg_jax/host_allocator.py).
define debs
@missing=""; for d in $(1); do command -v $$d >/dev/null 2>&1 || missing="$$missing $$d"; done; \
for l in $(2); do ldconfig -p | grep -q "$${l#*:}" || missing="$$missing $${l%%:*}"; done; \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y $$missing; \
  else echo "note: missing Debian packages:$$missing; install them as root (apt-get install$$missing)"; fi; \
fi
endef
LIBS := libtcmalloc-minimal4:libtcmalloc_minimal

demo: install
	$(call debs,espeak-ng g++,$(LIBS))
	$(PYTHON) -m merg_jax.cli demo

# torch==2.13.0 alone and first: pip takes the CPU wheel on this machine's disk (its find-links), so no later
# requirement can pull a multi-GB CUDA build. Debian packages, installed only when missing and when running as root:
# espeak-ng speaks test sentences for the speech parts; chromium is the real browser the web page is tested in
# (driven by Playwright's Python API, so no browser is downloaded). The demo extra brings Gradio, Playwright and
# nbclient (the page, its browser test, the notebook test). tests/test_host_allocator.py measures the page faults
# tcmalloc removes.
test:
	$(call debs,espeak-ng chromium g++,$(LIBS))
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test,demo]'
	$(PYTHON) -m pytest -q -n 2 --dist loadgroup --durations=30

bench: install
	$(PYTHON) -m merg_jax.cli bench llm
