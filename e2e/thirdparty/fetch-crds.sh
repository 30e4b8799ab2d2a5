#!/usr/bin/env bash
# Fetches third-party CRDs the tests and the demo install into the local control
# plane, through the Go module proxy like any dependency (nothing is committed):
#   - PolicyReport (wgpolicyk8s.io/v1alpha2), as published in the Kyverno module;
#   - cert-manager's Certificate, CertificateRequest, Issuer and ClusterIssuer;
#   - the Prometheus Operator's ServiceMonitor and PrometheusRule (the chart's
#     optional objects, checked by a server-side dry run).
# Output: target/thirdparty/crds/*.yaml. Cached: a second run returns at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/target/thirdparty/crds}"
mkdir -p "$out"

KYVERNO=github.com/kyverno/kyverno@v1.19.1
CERT_MANAGER=github.com/cert-manager/cert-manager@v1.21.2
# The newest version of the root module the proxy serves (later ones: 403).
PROMETHEUS_OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.85.0

module_dir() {
  local dir
  dir="$(cd "$here" && GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  if [[ -z "$dir" ]]; then
    echo "error: could not download $1 from the Go module proxy" >&2
    exit 1
  fi
  echo "$dir"
}
if [[ ! -s "$out/wgpolicyk8s.io_policyreports.yaml" ]]; then
  cp "$(module_dir "$KYVERNO")/config/crds/policyreport/wgpolicyk8s.io_policyreports.yaml" "$out/"
fi
if [[ ! -s "$out/cert-manager.io_clusterissuers.yaml" ]]; then
  dir="$(module_dir "$CERT_MANAGER")"
  for crd in certificates certificaterequests issuers clusterissuers; do
    cp "$dir/deploy/crds/cert-manager.io_$crd.yaml" "$out/"
  done
fi
if [[ ! -s "$out/monitoring.coreos.com_prometheusrules.yaml" ]]; then
  dir="$(module_dir "$PROMETHEUS_OPERATOR")"
  for crd in servicemonitors prometheusrules; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$out/"
  done
fi
chmod u+w "$out"/*.yaml
