#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager,
# etcd, kubectl) and its node (kubelet, kube-scheduler, kube-proxy) from the
# Go module proxy into $1 (default target/testplane/bin); with more arguments,
# only the programs they name (the benchmarks run no kubelet).
# A stamp per program of go.mod, go.sum and this script marks a finished
# build, so a second run with nothing changed returns at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/target/testplane/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)" # the build runs from this folder, so no relative paths

kube_version="$(cd "$here" && go list -m -f "{{.Version}}" k8s.io/kubernetes)"
stamp="$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-16)"
wanted=("${@:2}")
if [[ ${#wanted[@]} -eq 0 ]]; then
  wanted=(etcd kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy)
fi
todo=()
for cmd in "${wanted[@]}"; do
  [[ -d "$here/cmd/$cmd" ]] || { echo "error: no program $cmd in $here/cmd" >&2; exit 1; }
  if [[ ! -x "$out/$cmd" || "$(cat "$out/.stamp-$cmd" 2>/dev/null)" != "$stamp" ]]; then
    todo+=("$cmd")
  fi
done
if [[ ${#todo[@]} -eq 0 ]]; then
  exit 0
fi

major="${kube_version#v}"; major="${major%%.*}"
minor="${kube_version#v*.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done

echo "building ${todo[*]} $kube_version into $out (first run takes several minutes)" >&2
cd "$here"
export CGO_ENABLED=0
for cmd in "${todo[@]}"; do
  go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "./cmd/$cmd"
  echo "$stamp" > "$out/.stamp-$cmd"
done
rm -f "$out/.stamp" # the single stamp of earlier versions of this script
