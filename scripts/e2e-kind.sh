#!/usr/bin/env bash
# make e2e-kind: the chart and its tests on a kind cluster, for hosts with
# Docker and kind (this project's build machines have no Docker engine, so
# this path is not run there). Builds the images from their Dockerfiles,
# loads them into kind, installs the chart as a user would and runs the
# chart tests against that cluster. KEEP=1 leaves the cluster running.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker kind kubectl cargo go; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed for make e2e-kind" >&2; exit 1; }
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
cluster=iotposture
dir=target/kind
mkdir -p "$dir"

kind get clusters | grep -qx "$cluster" || kind create cluster --config kind-config.yaml --wait 120s
[[ "${KEEP:-}" == 1 ]] || trap 'kind delete cluster --name "$cluster"' EXIT
kind get kubeconfig --name "$cluster" > "$dir/kubeconfig"
export KUBECONFIG="$PWD/$dir/kubeconfig"

# helm as the tests use it (built from the Go module proxy).
bash e2e/tools/build.sh target/testplane/bin
helm=target/testplane/bin/helm

# The same names as the images built without Docker (images/build.sh).
for image in operator gateway toolbox; do
  docker build -t "iotposture.local/$image:$version" -f "images/$image/Dockerfile" .
  kind load docker-image --name "$cluster" "iotposture.local/$image:$version"
done

"$helm" upgrade --install iotposture charts/iotposture --namespace iotposture-system --create-namespace \
  --set image.repository=iotposture.local/operator --set image.tag="$version" \
  --set image.pullPolicy=Never --set gatewayImage="iotposture.local/gateway:$version" \
  --wait --timeout 300s
kubectl -n iotposture-system rollout status deployment/iotposture

# The chart tests read this cluster's kubeconfig from the plane folder.
mkdir -p "$dir/plane"
cp "$dir/kubeconfig" "$dir/plane/kubeconfig"
# Linux hosts only: the failover test kills the leader's process by its PID.
IOTPOSTURE_TESTPLANE="$PWD/$dir/plane" cargo test -p iotposture-e2e --test chart -- --test-threads=1 \
  install_upgrade two_replicas
