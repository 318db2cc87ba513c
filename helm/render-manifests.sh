#!/bin/sh
# Render the chart with its default values (and S3 keys from the Secret voicetrack-s3, made
# by the admin: docs/deploy.md) into manifests/voicetrack.yaml (or the path
# given as $1). CI (tests/e2e/test_helm.py) fails when the checked-in file differs from a
# fresh render, so run this after every chart change. helm comes from `voicetrack local
# build` (~/.cache/voicetrack/helm-v<version>/helm), built here first when missing.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/manifests/voicetrack.yaml"}
helm=${HELM:-$("$root/.venv/bin/python" -c 'from voicetrack_local.build import ensure_helm; print(ensure_helm())')}
trap 'rm -f "$out.tmp.$$"' EXIT
{
  echo "# Rendered from helm/voicetrack with default values and s3.existingSecret=voicetrack-s3"
  echo "# (S3 keys from a Secret you create) by helm/render-manifests.sh; do not edit."
  echo "# kubectl create namespace voicetrack && kubectl apply -f manifests/ (see docs/deploy.md)."
  echo "# Without the chart's hooks: helm test and the uninstall clean-up are Helm's to run."
  "$helm" template voicetrack "$root/helm/voicetrack" --namespace voicetrack \
    --include-crds --skip-tests --no-hooks --kube-version 1.36.3 \
    --set s3.existingSecret=voicetrack-s3
} > "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
