# The two commands of README.md. Both work on a fresh Debian machine with Python 3.11, as root, without a GPU.
#   make demo   the main job: install merg_jax, train the tiny LLM, print a generated reply, save it to runs/tiny
#   make test   install the test dependencies (the CPU build of torch first) and run every test

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A distribution's own Python (Debian's /usr/bin/python3) refuses pip installs without this; others ignore it.
export PIP_BREAK_SYSTEM_PACKAGES := 1

.PHONY: demo test install bench

install:
	$(PIP) install -e .

demo: install
	$(PYTHON) -m merg_jax.cli train --config configs/tiny.py

# torch==2.13.0 alone and first: pip takes the CPU wheel on this machine's disk (its find-links), so no later
# requirement can pull a multi-GB CUDA build. espeak-ng (Debian) speaks test sentences for the speech parts;
# installed only when missing and when running as root.
test:
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y espeak-ng; \
	  else echo "note: espeak-ng is missing; install it as root (apt-get install espeak-ng)"; fi; \
	fi
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	$(PYTHON) -m pytest -q -n 2 --dist loadgroup --durations=30

bench: install
	$(PYTHON) -m merg_jax.cli bench llm
