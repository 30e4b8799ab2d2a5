#!/usr/bin/env bash
# Builds what `make bench` needs beyond the test plane, from the Go module proxy,
# cached in OUT (default target/bench/bin): a second run returns at once.
#   kwok        simulated nodes: the scheduler binds pods to them and kwok marks
#               them Running and Ready, without containers.
#   kwok-stages.yaml  kwok's "fast" node and pod stages, from its module (kwok
#               ships no built-in stages: without them nodes never turn Ready).
#   kyverno     the admission peer (Pod Security "restricted"), run out of cluster.
# kube-scheduler comes with the test plane (e2e/controlplane/build.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/target/bench/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)" # go install wants an absolute GOBIN

KWOK_VERSION=v0.8.0

if [[ ! -x "$out/kwok" ]]; then
  echo "building kwok $KWOK_VERSION (once)" >&2
  GOBIN="$out" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi
if [[ ! -s "$out/kwok-stages.yaml" ]]; then
  dir="$(cd "$out" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$dir" ]] || { echo "error: could not download sigs.k8s.io/kwok@$KWOK_VERSION" >&2; exit 1; }
  stages=(
    node/fast/node-initialize.yaml
    node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
    pod/fast/pod-ready.yaml
    pod/fast/pod-complete.yaml
    pod/fast/pod-delete.yaml
  )
  for s in "${stages[@]}"; do
    echo "---"
    cat "$dir/kustomize/stage/$s"
  done >"$out/kwok-stages.yaml.new"
  mv "$out/kwok-stages.yaml.new" "$out/kwok-stages.yaml"
fi
"$out/kwok" --version >/dev/null

# Kyverno, the admission peer: its own module's go.mod has replace lines, which
# `go install pkg@version` refuses, so it is built inside a copy of the module.
KYVERNO_VERSION=v1.19.1
if [[ ! -x "$out/kyverno" ]]; then
  echo "building kyverno $KYVERNO_VERSION (once; its dependencies are large)" >&2
  dir="$(cd "$out" && go mod download -json "github.com/kyverno/kyverno@$KYVERNO_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$dir" ]] || { echo "error: could not download github.com/kyverno/kyverno@$KYVERNO_VERSION" >&2; exit 1; }
  src="$out/kyverno-src"
  rm -rf "$src"
  cp -r "$dir" "$src"
  chmod -R u+w "$src"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$out/kyverno.new" \
    -ldflags "-s -w -X github.com/kyverno/kyverno/pkg/version.BuildVersion=$KYVERNO_VERSION" \
    ./cmd/kyverno)
  # Its CRDs, for the plane it runs against.
  rm -rf "$out/kyverno-crds"
  mkdir -p "$out/kyverno-crds"
  find "$src/config/crds" -name '*.yaml' -exec cp {} "$out/kyverno-crds/" \;
  rm -rf "$src"
  mv "$out/kyverno.new" "$out/kyverno"
fi
