#!/usr/bin/env bash
# `make images`: build the operator, recorder, transcoder, web and (the chart's bundled)
# postgresql and seaweedfs images with podman.
#
# Base image: $VOICETRACK_BASE_IMAGE if set; else the official Python slim image when a
# registry answers; else a Debian bookworm base made here from Debian's packages with
# mmdebstrap (the machine's own apt mirror) and `podman import`ed once.
# podman reads images/containers.conf (runc, cgroupfs, file events, ulimits this machine
# allows). Prints each image's size and the wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/images/containers.conf}"
TAG=${VOICETRACK_IMAGE_TAG:-0.1.0}
LOCAL_BASE=localhost/voicetrack-base:bookworm
# The locally made base: minbase; dpkg keeps no docs, man pages or translations (in every
# image built on it too: the options land in its /etc/dpkg/dpkg.cfg.d); apt installs no
# recommends and keeps no package caches or lists. BASE_RECIPE labels the result; a base
# with another label is made again.
BASE_RECIPE=2
BASE_OPTS=(--quiet --variant=minbase
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --aptopt='APT::Install-Recommends "false"' --aptopt='Dir::Cache::pkgcache ""'
  --aptopt='Dir::Cache::srcpkgcache ""'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')
t0=$(date +%s)

missing=$(for p in podman runc mmdebstrap; do command -v "$p" >/dev/null || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "images: installing Debian packages: $missing" >&2
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq podman runc mmdebstrap >/dev/null
fi

mirror() {  # the first Debian mirror this machine's apt uses for bookworm's main suite
  # Only files apt reads (*.sources, *.list; not `*.disabled-…`), only stanzas and lines
  # naming the `bookworm` suite (not a third-party repository such as nodesource's).
  { for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] && awk -v RS= '/(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|$|\n)/' "$f" \
        | awk '/^URIs:/ {print $2}'
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] && awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                                      if ($(i + 1) == "bookworm") print $i }' "$f"
    done; } | grep -v security | head -n1
}

base=${VOICETRACK_BASE_IMAGE:-}
if [ -z "$base" ]; then
  if timeout 30 podman pull -q docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
    base=docker.io/library/python:3.11-slim-bookworm
  else
    base=$LOCAL_BASE
    if [ "$(podman image inspect --format '{{index .Labels "voicetrack.base"}}' "$base" \
            2>/dev/null)" != "$BASE_RECIPE" ]; then
      echo "images: no registry reachable; making $base with mmdebstrap" >&2
      tmp=$(mktemp -d)
      mmdebstrap "${BASE_OPTS[@]}" bookworm "$tmp/rootfs.tar" "$(mirror)"
      podman import -q --change "LABEL voicetrack.base=$BASE_RECIPE" \
        "$tmp/rootfs.tar" "$base" >/dev/null
      rm -rf "$tmp"
    fi
  fi
fi
echo "images: base $base" >&2

# pip inside the build trusts what this machine trusts (a TLS-inspecting proxy's CA).
secret=()
cert=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ -s "$cert" ] && secret=(--secret "id=pip-cert,src=$cert")

for pair in operator:operator recorder:recorder_image transcoder:transcoder_image web:web_image \
            postgresql:images/postgresql seaweedfs:images/seaweedfs; do
  name=${pair%%:*}; dir=${pair##*:}
  t1=$(date +%s)
  podman build -q --network host --build-arg "BASE_IMAGE=$base" "${secret[@]}" \
    -f "$dir/Dockerfile" -t "localhost/voicetrack/$name:$TAG" . >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "localhost/voicetrack/$name:$TAG")
  echo "images: voicetrack/$name:$TAG $((size / 1000000)) MB ($(( $(date +%s) - t1 )) s)"
done
echo "images: done in $(( $(date +%s) - t0 )) s"
