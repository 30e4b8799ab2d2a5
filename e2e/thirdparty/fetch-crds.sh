#!/usr/bin/env bash
# Fetches third-party CRDs the tests and the demo install into the local control
# plane, through the Go module proxy like any dependency (nothing is committed):
#   - PolicyReport (wgpolicyk8s.io/v1alpha2), as published in the Kyverno module.
# Output: target/thirdparty/crds/*.yaml. Cached: a second run returns at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/target/thirdparty/crds}"
mkdir -p "$out"

KYVERNO=github.com/kyverno/kyverno@v1.19.1
if [[ ! -s "$out/wgpolicyk8s.io_policyreports.yaml" ]]; then
  dir="$(cd "$here" && GOFLAGS=-mod=mod go mod download -json "$KYVERNO" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  if [[ -z "$dir" ]]; then
    echo "error: could not download $KYVERNO from the Go module proxy" >&2
    exit 1
  fi
  cp "$dir/config/crds/policyreport/wgpolicyk8s.io_policyreports.yaml" "$out/"
  chmod u+w "$out"/*.yaml
fi
