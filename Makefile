# The two commands of the README: `make demo` (the main job on the embedded default) and
# `make test` (the whole suite). Both do all set-up on a fresh machine first.
VENV := .venv/bin
PYTEST_ARGS ?=

APT_PACKAGES := ffmpeg espeak-ng libopus0 postgresql sox podman runc mmdebstrap chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup system-packages demo test lint unit bench images

setup:
	bash scripts/setup.sh

# Installs only what is missing, so a second run costs a dpkg query.
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "setup: installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(VENV)/voicetrack demo $(DEMO_ARGS)

test: setup
	$(VENV)/pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/pytest -m unit $(PYTEST_ARGS)

lint:
	$(VENV)/ruff check .
	$(VENV)/lint-imports
	$(VENV)/mypy voicetrack operator/voicetrack_operator recorder_image/voicetrack_recorder transcoder_image/voicetrack_transcoder web_image/voicetrack_web local_harness/voicetrack_local

bench: setup
	for b in benchmarks/*.py; do $(VENV)/python $$b || exit 1; done

# The operator, recorder and transcoder images with podman (scripts/images.sh).
images:
	bash scripts/images.sh
