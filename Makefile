# The README's two commands: `make run` (the robot answering calls) and `make test` (the whole suite).
# Each one sets up what it needs first: Debian packages (as root), the Python 3.10 virtualenv with the
# pinned dependencies, the demo database, the trained Rasa models and the pre-rendered prompts.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

VENV := .venv
PY := $(VENV)/bin/python
IVR := $(VENV)/bin/ivr
DEBIAN_PACKAGES := espeak-ng libespeak-ng1 ffmpeg sox debootstrap postgresql redis-server sip-tester chromium haproxy kamailio kamailio-utils-modules
STAMP := $(VENV)/.installed
export RASA_TELEMETRY_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: run test setup system-packages models lint clean

# Ctrl-C or SIGTERM (to make or to this shell) stops what `run` started: the robot first (it finishes
# its calls' clean-up), then the local Asterisk, unless that was already running before `run`.
run: setup models
	@asterisk_started=""; robot=""
	stop() {
	  trap - EXIT INT TERM
	  if [ -n "$$robot" ]; then
	    echo "== stopping the robot (PID $$robot)"; kill -TERM "$$robot" 2>/dev/null || true; wait "$$robot" || true
	  fi
	  if [ -n "$$asterisk_started" ]; then echo "== stopping the local Asterisk"; $(IVR) asterisk down || true; fi
	}
	trap stop EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	if $(IVR) asterisk status >/dev/null 2>&1; then
	  echo "== the local Asterisk was already running: it stays up when the robot stops"
	else
	  echo "== bringing up the local Asterisk (optional: the robot also runs without it)"
	  if $(IVR) asterisk up; then asterisk_started=1
	  else echo "!! local Asterisk not started (see above); FastAGI still listens for yours"; fi
	fi
	echo "== the robot answers on FastAGI $${IVR_AGI_HOST:-127.0.0.1}:$${IVR_AGI_PORT:-4573} (Ctrl-C stops it)"
	$(IVR) serve &
	robot=$$!
	wait "$$robot"

test: setup models
	@echo "== lint and types"
	$(VENV)/bin/ruff check ivr tests
	$(VENV)/bin/mypy
	@echo "== test suite"
	# One pytest run. Two side by side (the real-time tests beside the rest, niced) was tried: 35 minutes
	# instead of ~60, but the 20-SIPp-caller test lost its bit-exact greeting twice, so it is not used.
	$(VENV)/bin/pytest -ra --durations=15

setup: system-packages $(STAMP)

system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done
	if [ -z "$$missing" ]; then echo "== Debian packages present: $(DEBIAN_PACKAGES)"; exit 0; fi
	if [ "$$(id -u)" != 0 ]; then echo "!! missing Debian packages:$$missing (install them as root)"; exit 1; fi
	echo "== installing Debian packages:$$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing
	# kamailio (the SIP balancer in front of several pods) must not run as a system service on 5060, the
	# port of the local Asterisk: its SysV script starts nothing (/etc/default/kamailio: RUN_KAMAILIO=no), a
	# container's policy-rc.d forbids it anyway, but under systemd the package's unit would start it
	if [[ " $$missing " == *" kamailio "* ]] && [ -d /run/systemd/system ]; then systemctl disable --now kamailio || true; fi

$(STAMP): pyproject.toml constraints.txt
	@py=""
	if python3.10 -c '' 2>/dev/null; then py=python3.10
	else py=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python3.10 2>/dev/null | tail -n1 || true); fi
	if [ -z "$$py" ]; then echo "!! Python 3.10 is needed (Rasa 3.6 needs < 3.11): install it, e.g. with pyenv"; exit 1; fi
	echo "== creating the virtualenv with $$py"
	[ -x $(PY) ] || $$py -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	echo "== installing pinned dependencies (constraints.txt); the first time takes a few minutes"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

models: $(STAMP)
	@echo "== demo account database, Rasa models (trained only when dialogs/ changed), prompts, first releases"
	# Demo customers go only into the default database, never into the one IVR_DATABASE_URL or ivr.toml
	# names (it may hold real customers; --demo refuses a database with any others anyway).
	IVR_DATABASE_URL="sqlite:///$(CURDIR)/var/accounts.db" $(IVR) db init --demo
	$(IVR) db upgrade   # the configured database: schema migrated to the newest revision, data kept
	$(IVR) train
	$(IVR) prompts build
	$(IVR) publish --if-none --message "first release (make)"   # release 1 of each locale that has none

lint: $(STAMP)
	$(VENV)/bin/ruff check ivr tests
	$(VENV)/bin/mypy

clean:
	-[ -x $(IVR) ] && $(IVR) asterisk down   # the sound and spool folders are bind-mounted while it runs
	rm -rf var models/rasa
