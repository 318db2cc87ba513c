#!/bin/sh
# Run SeaweedFS `weed mini` (master, volume server, filer, S3 gateway; the admin server too,
# which cannot be turned off, on WEED_ADMIN_PORT) on $WEED_DIR, the same command line the
# local harness proves (local_harness/voicetrack_local/seaweed.py): WebDAV, Iceberg, Lance
# and telemetry off. The S3 gateway enforces the keys in AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY; WEED_BUCKET is created on start when missing.
# Every port is an environment variable (a pod on the host network must avoid taken ones);
# a gRPC port defaults to its HTTP port + 10000 (SeaweedFS's own rule). Logs go to stderr.
set -eu
: "${WEED_DIR:?}" "${AWS_ACCESS_KEY_ID:?AWS_ACCESS_KEY_ID is required}" \
  "${AWS_SECRET_ACCESS_KEY:?AWS_SECRET_ACCESS_KEY is required}"
master=${WEED_MASTER_PORT:-9333}
volume=${WEED_VOLUME_PORT:-9340}
filer=${WEED_FILER_PORT:-8888}
s3=${WEED_S3_PORT:-8333}
admin=${WEED_ADMIN_PORT:-23646}
mkdir -p "$WEED_DIR"
# `weed mini` saves its options in mini.options and reads them back on the next start;
# this command line is the only source here, so a changed value is never shadowed.
rm -f "$WEED_DIR/mini.options"
set -- -dir="$WEED_DIR" -ip="${WEED_IP:-127.0.0.1}" -ip.bind="${WEED_BIND:-0.0.0.0}" \
  -master.port="$master" -master.port.grpc="${WEED_MASTER_GRPC_PORT:-$((master + 10000))}" \
  -volume.port="$volume" -volume.port.grpc="${WEED_VOLUME_GRPC_PORT:-$((volume + 10000))}" \
  -filer.port="$filer" -filer.port.grpc="${WEED_FILER_GRPC_PORT:-$((filer + 10000))}" \
  -filer.localSocket="${TMPDIR:-/tmp}/seaweedfs-filer.sock" \
  -s3.port="$s3" -s3.port.grpc="${WEED_S3_GRPC_PORT:-$((s3 + 10000))}" \
  -s3.localSocket="${TMPDIR:-/tmp}/seaweedfs-s3.sock" -s3.port.iceberg=0 -s3.port.lance=0 \
  -admin.ui=false -admin.port="$admin" \
  -admin.port.grpc="${WEED_ADMIN_GRPC_PORT:-$((admin + 10000))}" \
  -webdav=false -master.telemetry=false
[ -n "${WEED_BUCKET:-}" ] && set -- "$@" -bucket="$WEED_BUCKET"
[ "${WEED_VOLUME_SIZE_LIMIT_MB:-0}" -gt 0 ] && set -- "$@" \
  -master.volumeSizeLimitMB="$WEED_VOLUME_SIZE_LIMIT_MB"
exec weed -logtostderr mini "$@"
