#!/usr/bin/env bash
# Everything a fresh Debian machine needs for the demo and the tests: Debian packages,
# the Python environment, and the local control plane built from upstream Go modules.
# Idempotent: a second run only checks. Caches live in the user's cache directory.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: ffmpeg (transcoder, files source), espeak-ng (demo voices), libopus0
# (Opus through discord.py), postgresql (tests, demo --postgres), sox, chromium (web page
# tests through Playwright, which drives the system browser).
make --no-print-directory -s system-packages

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/pip"
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'

# The web page's browser libraries (wavesurfer.js) from package-lock.json, copied into
# web_image/voicetrack_web/static/vendor (no CDN at run time). Skipped when up to date.
if [ ! -f web_image/voicetrack_web/static/vendor/wavesurfer.min.js ] \
   || [ web_image/package-lock.json -nt web_image/voicetrack_web/static/vendor/wavesurfer.min.js ]; then
  (cd web_image && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
fi

# The upstream control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), built once per version into the user's cache directory.
.venv/bin/voicetrack local build
