#!/usr/bin/env bash
# Builds the node's third-party programs that are not part of Kubernetes,
# from the Go module proxy, into $1 (default target/node/bin):
#   - kube-router, only its NetworkPolicy firewall is used (iptables and
#     ipsets: this kernel has no nft `queue`, which the other enforcer served,
#     kube-network-policies, needs);
#   - CoreDNS, the cluster DNS.
# Static (CGO off). A stamp of this script marks a finished build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-$root/target/node/bin}" && cd "${1:-$root/target/node/bin}" && pwd)"

KUBE_ROUTER=github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@v2.1.0
COREDNS=github.com/coredns/coredns@v1.14.7

stamp="$(cat "$0" | sha256sum | cut -c1-16)"
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" && -x "$out/kube-router" && -x "$out/coredns" ]]; then
  exit 0
fi
echo "building kube-router and CoreDNS into $out (first run takes several minutes)" >&2
# Outside any module of ours: each builds with its own go.mod and go.sum.
cd "$(mktemp -d)"
export GOBIN="$out" CGO_ENABLED=0 GOFLAGS=-trimpath
go install -ldflags "-s -w" "$KUBE_ROUTER"
go install -ldflags "-s -w" "$COREDNS"
echo "$stamp" > "$out/.stamp"
