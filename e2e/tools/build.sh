#!/usr/bin/env bash
# The chart's tools, built or installed once and cached:
#   helm from the Go module proxy into $1 (default target/testplane/bin),
#   checkov from PyPI into a virtualenv at target/tools/checkov.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/target/testplane/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

helm_version=v3.22.0
# Helm's default Kubernetes version follows the client-go it is built with (v0.37 → 1.37).
kube_minor=37
stamp="helm $helm_version k8s 1.$kube_minor"
if [[ ! -x "$out/helm" || "$(cat "$out/.helm-stamp" 2>/dev/null)" != "$stamp" ]]; then
  echo "building helm $helm_version into $out (about two minutes, once)" >&2
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kube_minor"
  done
  GOBIN="$out" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$helm_version"
  echo "$stamp" > "$out/.helm-stamp"
fi

checkov_version=3.3.30
venv="$root/target/tools/checkov"
if [[ "$("$venv/bin/checkov" --version 2>/dev/null)" != "$checkov_version" ]]; then
  echo "installing checkov $checkov_version into $venv (about a minute, once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$checkov_version"
fi
