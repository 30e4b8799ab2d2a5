#!/usr/bin/env bash
# Builds the node's third-party programs that are not part of Kubernetes,
# from the Go module proxy, into $1 (default target/node/bin):
#   - kube-router, only its NetworkPolicy firewall is used (iptables and
#     ipsets: this kernel has no nft `queue`, which the other enforcer served,
#     kube-network-policies, needs);
#   - CoreDNS, the cluster DNS;
#   - cert-manager's controllers (Certificates, CertificateRequests, CA and
#     self-signed issuers), from e2e/certmanager, a small main of our own
#     over the cert-manager module (its own command module is not served).
# Static (CGO off). A stamp of this script and e2e/certmanager marks a
# finished build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-$root/target/node/bin}" && cd "${1:-$root/target/node/bin}" && pwd)"

KUBE_ROUTER=github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@v2.1.0
COREDNS=github.com/coredns/coredns@v1.14.7

stamp="$(cat "$0" "$here/../certmanager/go.mod" "$here/../certmanager/go.sum" "$here/../certmanager/main.go" | sha256sum | cut -c1-16)"
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" && -x "$out/kube-router" && -x "$out/coredns" && -x "$out/cert-manager-controller" ]]; then
  exit 0
fi
echo "building kube-router, CoreDNS and cert-manager's controller into $out (first run takes several minutes)" >&2
(cd "$here/../certmanager" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/cert-manager-controller" .)
# Outside any module of ours: each builds with its own go.mod and go.sum.
cd "$(mktemp -d)"
export GOBIN="$out" CGO_ENABLED=0 GOFLAGS=-trimpath
go install -ldflags "-s -w" "$KUBE_ROUTER"
go install -ldflags "-s -w" "$COREDNS"
echo "$stamp" > "$out/.stamp"
