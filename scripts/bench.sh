#!/usr/bin/env bash
# make bench / make bench-scale: the benchmarks, from a fresh machine.
#   scripts/bench.sh        admission, gateway and scale benchmarks
#   scripts/bench.sh scale  the scale benchmark only
# What it builds is cached (Go binaries in target/*/bin, cargo's target), so
# a second run starts measuring at once. On a fresh machine the Go side
# (control plane, kwok, Kyverno: mostly module downloads at first) is built
# in the background while cargo builds the release binaries, and every
# measurement starts only once all building is over: nothing else competes
# with what is timed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
what="${1:-all}"

if [[ $what == all ]]; then
  echo "==> Debian packages (nginx with ModSecurity and the CRS for the gateway benchmark)"
  source scripts/packages.sh
fi

mkdir -p target/bench
go_log=target/bench/go-builds.log
echo "==> control plane, kwok and Kyverno from the Go module proxy (in the background; log: $go_log)"
(
  # No kubelet or kube-proxy: kwok's nodes stand in for them.
  bash e2e/controlplane/build.sh target/testplane/bin \
    etcd kube-apiserver kube-controller-manager kube-scheduler kubectl
  bash bench/scale/build.sh target/bench/bin
  bash e2e/thirdparty/fetch-crds.sh
) >"$go_log" 2>&1 &
go_builds=$!
trap 'kill "$go_builds" 2>/dev/null || true' EXIT

echo "==> release binaries (cargo)"
cargo build --release -q -p iotposture --bin iotposture -p iotposture-e2e --bins

echo "==> waiting for the Go builds"
if ! wait "$go_builds"; then
  cat "$go_log" >&2
  echo "error: the Go builds failed (above)" >&2
  exit 1
fi
trap - EXIT

if [[ $what == all ]]; then
  echo "==> admission handler"
  target/release/bench-admission bench/results/admission.json
  echo "==> WAF gateway"
  target/release/bench-gateway bench/results/gateway.json
fi
echo "==> operator at scale"
target/release/bench-scale bench/results/scale.json docs/scale.svg
