# The two set-up commands of README: `make demo` (the main job) and `make test`.
# Each creates the pinned environment in .venv from requirements.lock the first
# time (and installs the one system library open3d needs when it is missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test env

demo: $(STAMP)
	$(BIN)/xrecon demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml setup.py
	@ldconfig -p | grep -q libusb-1.0 || { \
	  echo "installing libusb-1.0-0 (open3d needs it)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libusb-1.0-0; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libusb-1.0-0; fi; }
	@echo "creating $(VENV) from requirements.lock (about 1-2 min)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps -r requirements.lock -e .
	@touch $(STAMP)
