#!/usr/bin/env bash
# make demo / make demo-down. `up` builds what is missing, starts a local control
# plane and the operator (both left running, logs in target/demo/), applies
# manifests/examples/ and shows what the operator made. Running it again while
# the demo is up reuses the plane and the operator.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh

dir=target/demo
bins=target/testplane/bin
kubectl="$bins/kubectl --kubeconfig $dir/kubeconfig"
operator_pid="$dir/operator.pid"
http_addr="${IOTPOSTURE_DEMO_HTTP_ADDR:-127.0.0.1:18080}"
webhook_addr="${IOTPOSTURE_DEMO_WEBHOOK_ADDR:-127.0.0.1:18443}"
testplane() { cargo run -q -p iotposture-e2e --bin testplane -- --dir "$dir" --bin-dir "$bins" "$@"; }
operator_running() { [[ -f "$operator_pid" ]] && kill -0 "$(cat "$operator_pid")" 2>/dev/null; }

case "${1:-up}" in
down)
  if operator_running; then kill "$(cat "$operator_pid")"; echo "operator stopped"; fi
  rm -f "$operator_pid"
  testplane down
  echo "demo stopped"
  exit 0
  ;;
up) ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

echo "==> building (first run: several minutes for the control plane, then cached)"
bash e2e/controlplane/build.sh "$bins"
bash e2e/thirdparty/fetch-crds.sh
cargo build -q -p iotposture -p iotposture-e2e

echo "==> control plane"
mkdir -p "$dir"
testplane up

echo "==> CRDs and examples"
$kubectl apply --server-side -f crds/ -f target/thirdparty/crds/
$kubectl wait --for=condition=Established crd/iotsystems.iotposture.dev crd/policyreports.wgpolicyk8s.io --timeout=60s >/dev/null
$kubectl apply --server-side -f manifests/examples/

echo "==> operator"
if operator_running; then
  echo "already running (pid $(cat "$operator_pid"))"
else
  KUBECONFIG="$dir/kubeconfig" nohup target/debug/iotposture run --http-addr "$http_addr" \
    --webhook-addr "$webhook_addr" --webhook-url "https://$webhook_addr" \
    >"$dir/operator.log" 2>&1 </dev/null &
  echo $! >"$operator_pid"
  echo "started (pid $!), log: $dir/operator.log"
fi

echo "==> waiting for the example system to be Ready and judged"
if ! $kubectl wait -n smart-factory iotsystem/line-1 --for=condition=Ready --timeout=90s >/dev/null; then
  echo "line-1 did not become Ready; operator log:" >&2
  tail -20 "$dir/operator.log" >&2
  exit 1
fi

# Pods appear once the operator has made their ServiceAccounts; wait until the
# checklist has seen them (I-5 needs pods to be decided).
for _ in $(seq 1 60); do
  verdict="$($kubectl get iotsystem line-1 -n smart-factory -o jsonpath='{.status.items[?(@.id=="I-5")].verdict}')"
  [[ -n "$verdict" && "$verdict" != "Unknown" ]] && break
  sleep 1
done

echo
$kubectl get iotsystems -A -o wide
echo
echo "==> objects the operator keeps for smart-factory/line-1"
$kubectl get serviceaccounts,roles,rolebindings,networkpolicies -n smart-factory -l iotposture.dev/system=line-1
echo
echo "==> status"
$kubectl get iotsystem line-1 -n smart-factory -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo
echo "==> checklist (kubectl get iotsystem line-1 -n smart-factory -o yaml shows the evidence)"
$kubectl get iotsystem line-1 -n smart-factory -o jsonpath='{range .status.items[*]}{.id}{"\t"}{.verdict}{"\t"}{.evidence}{"\n"}{end}' | cut -c1-150
echo
echo "==> PolicyReport"
$kubectl get policyreports -n smart-factory
echo
echo "==> events"
$kubectl get events -n smart-factory --field-selector involvedObject.kind=IoTSystem
cat <<MSG

The control plane and the operator keep running. Look around with:
  export KUBECONFIG=$PWD/$dir/kubeconfig
  $bins/kubectl get iots -A
  $bins/kubectl describe iotsystem line-1 -n smart-factory
  $bins/kubectl get networkpolicy line-1-dashboard-allow -n smart-factory -o yaml
  curl -s http://$http_addr/metrics
Try a pod the checklist forbids (the admission webhook refuses it, naming the item):
  $bins/kubectl run ssh-gw -n smart-factory --image=registry.example.com/factory/mqtt-broker:latest --labels=app=mqtt-gateway --port=22
Or a bare one, which the webhook hardens (see its securityContext and the iotposture.dev/hardened annotation):
  $bins/kubectl run gw-2 -n smart-factory --image=registry.example.com/factory/mqtt-broker:2.0.18 --labels=app=mqtt-gateway --port=8883
  $bins/kubectl get pod gw-2 -n smart-factory -o yaml
Try a bad spec (the API server refuses it):
  $bins/kubectl apply -f - <<<'{"apiVersion":"iotposture.dev/v1alpha1","kind":"IoTSystem","metadata":{"name":"bad","namespace":"smart-factory"},"spec":{"components":[{"name":"x","role":"Toaster","selector":{"matchLabels":{"app":"x"}}}]}}'
Stop everything with: make demo-down
MSG
