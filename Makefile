# The two commands of the README: `make demo` (the main job on the embedded default) and
# `make test` (the whole suite). Both do all set-up on a fresh machine first.
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: setup demo test lint unit bench

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/voicetrack demo $(DEMO_ARGS)

test: setup
	$(VENV)/pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/pytest -m unit $(PYTEST_ARGS)

lint:
	$(VENV)/ruff check .
	$(VENV)/lint-imports
	$(VENV)/mypy voicetrack operator/voicetrack_operator recorder_image/voicetrack_recorder transcoder_image/voicetrack_transcoder

bench: setup
	for b in benchmarks/*.py; do $(VENV)/python $$b || exit 1; done
