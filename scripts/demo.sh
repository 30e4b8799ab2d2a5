#!/usr/bin/env bash
# make demo / make demo-down. `up` builds what is missing, starts a local
# control plane with its node and cert-manager's controller (left running,
# logs in target/demo/), installs the operator with its Helm chart as a
# cluster would run it (two replicas in iotposture-system), runs
# manifests/examples/ for real and shows what the operator made and what it
# found. Running it again while the demo is up reuses what runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh

dir=target/demo
bins=target/testplane/bin
kubectl="$bins/kubectl --kubeconfig $dir/kubeconfig"
helm="$bins/helm --kubeconfig $dir/kubeconfig"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
testplane() { cargo run -q -p iotposture-e2e --bin testplane -- --dir "$dir" --bin-dir "$bins" "$@"; }
running() { [[ -f "$dir/$1.pid" ]] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }
stop() { if running "$1"; then kill "$(cat "$dir/$1.pid")"; echo "$1 stopped"; fi; rm -f "$dir/$1.pid"; }
start() { # name, command...
  local name="$1"
  shift
  if running "$name"; then echo "$name already running (pid $(cat "$dir/$name.pid"))"; return; fi
  KUBECONFIG="$dir/kubeconfig" nohup "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
  echo "$name started (pid $!), log: $dir/$name.log"
}

case "${1:-up}" in
down)
  stop prometheus
  stop victoria-logs
  stop alertmanager
  stop alert-receiver
  stop cert-manager
  testplane down
  echo "demo stopped"
  exit 0
  ;;
up) ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

echo "==> Debian packages (scripts/packages.sh)"
source scripts/packages.sh
echo "==> building (the first run takes 15 to 20 minutes; later runs reuse it all)"
bash e2e/controlplane/build.sh "$bins"
bash e2e/node/build.sh target/node/bin
bash e2e/tools/build.sh "$bins"
bash e2e/logs/build.sh target/logs/bin
bash e2e/thirdparty/fetch-crds.sh
cargo build -q -p iotposture -p iotposture-e2e
bash images/build.sh target/images

echo "==> control plane and node"
mkdir -p "$dir"
testplane up

echo "==> CRDs, and cert-manager's controller with a CA to issue from"
$kubectl apply --server-side -f crds/ -f target/thirdparty/crds/ >/dev/null
$kubectl wait --for=condition=Established crd/iotsystems.iotposture.dev crd/policyreports.wgpolicyk8s.io \
  crd/certificates.cert-manager.io --timeout=60s >/dev/null
start cert-manager target/node/bin/cert-manager-controller --kubeconfig "$dir/kubeconfig"
if [[ ! -f "$dir/factory-ca.crt" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj "/CN=factory-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/factory-ca.key" -out "$dir/factory-ca.crt" 2>/dev/null
fi
$kubectl create namespace cert-manager --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
$kubectl -n cert-manager create secret tls factory-ca --cert="$dir/factory-ca.crt" \
  --key="$dir/factory-ca.key" --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
$kubectl apply -f - >/dev/null <<'EOF'
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: factory-ca}
spec: {ca: {secretName: factory-ca}}
EOF

echo "==> Alertmanager (Debian's) with a webhook receiver that writes what it gets to $dir/alerts.log"
# On the node's address, so the operator's pods reach them; its NetworkPolicy
# lets it out to these ports (alerting.* below).
node_ip=10.250.0.1
start alert-receiver python3 scripts/alert-receiver.py "$dir/alerts.log" "$node_ip" 19095
cat >"$dir/alertmanager.yml" <<YAML
route: {receiver: plant-team, group_by: [alertname, iotsystem], group_wait: 10s, group_interval: 1m, repeat_interval: 4h}
receivers:
  - name: plant-team
    webhook_configs: [{url: "http://$node_ip:19095/alerts"}]
YAML
start alertmanager prometheus-alertmanager --config.file="$dir/alertmanager.yml" \
  --storage.path="$dir/alertmanager" --web.listen-address="$node_ip:19093" --cluster.listen-address=

echo "==> VictoriaLogs, the plant's log store: TLS 1.3 with a CA of its own, basic auth, 30 days"
mkdir -p "$dir/logs"
if [[ ! -f "$dir/logs/server.crt" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj "/CN=plant-logs-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/logs/ca.key" -out "$dir/logs/ca.crt" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=$node_ip" -keyout "$dir/logs/server.key" -out "$dir/logs/server.csr" 2>/dev/null
  openssl x509 -req -in "$dir/logs/server.csr" -CA "$dir/logs/ca.crt" -CAkey "$dir/logs/ca.key" \
    -CAcreateserial -days 365 -out "$dir/logs/server.crt" \
    -extfile <(printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$node_ip") 2>/dev/null
  openssl rand -hex 16 >"$dir/logs/password"
  chmod 600 "$dir/logs/password" "$dir/logs/ca.key" "$dir/logs/server.key"
fi
start victoria-logs target/logs/bin/victoria-logs -httpListenAddr="$node_ip:19428" \
  -storageDataPath="$dir/logs/data" -retentionPeriod=30d -tls -tlsMinVersion=TLS13 \
  -tlsCertFile="$dir/logs/server.crt" -tlsKeyFile="$dir/logs/server.key" \
  -httpAuth.username=plant-logs -httpAuth.password="file://$PWD/$dir/logs/password"
logsql() { # query [start] → the store's answer, one JSON record per line
  curl -s --cacert "$dir/logs/ca.crt" -u "plant-logs:$(cat "$dir/logs/password")" \
    "https://$node_ip:19428/select/logsql/query" --data-urlencode "query=$1" \
    ${2:+--data-urlencode "start=$2"}
}

echo "==> the operator, installed with its Helm chart (charts/iotposture), images built here"
# Pods reach the API server at the node's address, on the plane's port.
api_port="$($kubectl get endpointslice kubernetes -n default -o jsonpath='{.ports[0].port}')"
# The local tag names every build: the image's digest rolls the pods when it changes.
image_sum="$(sha256sum target/images/operator.oci.tar | cut -c1-64)"
$helm upgrade --install iotposture charts/iotposture --namespace iotposture-system --create-namespace \
  --set image.repository=iotposture.local/operator --set image.tag="$version" --set image.pullPolicy=Never \
  --set gatewayImage="iotposture.local/gateway:$version" --set probes.intervalSeconds=10 \
  --set "networkPolicy.apiServerCIDRs={10.250.0.1/32}" --set "networkPolicy.apiServerPorts={$api_port}" \
  --set alerting.prometheusUrl="http://$node_ip:19090" --set alerting.alertmanagerUrl="http://$node_ip:19093" \
  --set alerting.intervalSeconds=10 \
  --set logShipping.enabled=true --set logShipping.image="iotposture.local/log-collector:$version" \
  --set logShipping.podLogDir="$PWD/$dir/node/pod-logs" --set logShipping.intervalSeconds=10 \
  --set "logShipping.storePorts={19428}" \
  --set nodeAgent.enabled=true --set nodeAgent.intervalSeconds=10 \
  --set-string "podAnnotations.iotposture\.dev/image-tar-sha256=$image_sum" \
  --wait --timeout 180s >/dev/null
$kubectl -n iotposture-system rollout status deployment/iotposture --timeout=120s >/dev/null
# The Lease's holder is `<pod>_<process>`: only the leader judges and exports verdicts.
leader_pod="$($kubectl -n iotposture-system get lease iotposture-leader -o jsonpath='{.spec.holderIdentity}')"
leader_pod="${leader_pod%%_*}"
echo "leader: $leader_pod"
$kubectl -n iotposture-system get pods

echo "==> the example: manifests/examples/smart-factory.yaml"
$kubectl create namespace smart-factory --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
$kubectl -n smart-factory create configmap factory-ca --from-file=ca.crt="$dir/factory-ca.crt" \
  --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
for account in dashboard analytics; do
  if ! $kubectl -n smart-factory get secret "$account-account" >/dev/null 2>&1; then
    $kubectl -n smart-factory create secret generic "$account-account" --from-literal=username=operator \
      --from-literal=password="$(openssl rand -hex 16)" >/dev/null
  fi
done
# The log store's CA and the collector's account (III-1).
$kubectl -n smart-factory create secret generic logs-ca --from-file=ca.crt="$dir/logs/ca.crt" \
  --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
$kubectl -n smart-factory create secret generic logs-credentials --from-literal=username=plant-logs \
  --from-literal=password="$(cat "$dir/logs/password")" --dry-run=client -o yaml | $kubectl apply -f - >/dev/null
# The probe may log in with these test accounts (III-4); the operator may
# read the log store's Secrets.
for account in dashboard-account analytics-account logs-ca logs-credentials; do
  $kubectl -n smart-factory label secret "$account" iotposture.dev/probe-credentials=true --overwrite >/dev/null
done
# The system first, so that its namespace is selected for admission before
# the workloads' pods are created; then everything.
$kubectl apply -f <(awk 'BEGIN{RS="\n---\n"} /kind: IoTSystem/ {print}' manifests/examples/smart-factory.yaml) >/dev/null
$kubectl wait -n smart-factory iotsystem/line-1 --for=condition=Ready --timeout=120s >/dev/null
$kubectl apply -f manifests/examples/ >/dev/null
echo "waiting for the pods (cert-manager issues the certificates they mount)…"
if ! $kubectl -n smart-factory wait deployment --all --for=condition=Available --timeout=240s >/dev/null; then
  $kubectl -n smart-factory get pods
  echo "the example did not come up; logs in $dir/" >&2
  exit 1
fi

echo "==> Prometheus (Debian's) with the system's alert rules (PrometheusRule line-1-alert-rules) and the operator's metrics"
# The demo's plane serves the PrometheusRule CRD but runs no Prometheus
# Operator: the rule's spec is a rules file, handed to Prometheus as one.
mkdir -p "$dir/rules"
for _ in $(seq 1 60); do
  $kubectl -n smart-factory get prometheusrule line-1-alert-rules >/dev/null 2>&1 && break
  sleep 1
done
$kubectl -n smart-factory get prometheusrule line-1-alert-rules -o jsonpath='{.spec}' \
  >"$dir/rules/smart-factory_line-1.rules.yaml"
# Debian's Prometheus has no Kubernetes discovery: the operator's pods by address.
targets="$($kubectl -n iotposture-system get pods -l app.kubernetes.io/name=iotposture \
  -o jsonpath='{range .items[*]}"{.status.podIP}:8080", {end}')"
cat >"$dir/prometheus.yml" <<YAML
global: {scrape_interval: 10s, evaluation_interval: 10s}
rule_files: ["$PWD/$dir/rules/*.yaml"]
alerting: {alertmanagers: [{static_configs: [{targets: ["$node_ip:19093"]}]}]}
scrape_configs:
  - job_name: iotposture
    static_configs: [{targets: [${targets%, }]}]
YAML
if running prometheus; then
  curl -s -X POST "http://$node_ip:19090/-/reload" >/dev/null || true
else
  start prometheus prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus" \
    --web.listen-address="$node_ip:19090" --web.enable-lifecycle
fi

echo "waiting for the probes, the sensors' heartbeats and Prometheus to decide their items…"
probed='I-1 II-1 III-1 III-2 III-3 III-4 III-8 III-9 IV-3 IV-4 VI-2 VI-3 VII-1 VII-2 VIII-1 VIII-2'
for _ in $(seq 1 90); do
  undecided=""
  for id in $probed; do
    v="$($kubectl get iotsystem line-1 -n smart-factory -o jsonpath="{.status.items[?(@.id==\"$id\")].verdict}")"
    e="$($kubectl get iotsystem line-1 -n smart-factory -o jsonpath="{.status.items[?(@.id==\"$id\")].evidence}")"
    # A round that ran while the pods were starting found no endpoints: the
    # next one, against the running pods, decides from live traffic.
    [[ -z "$v" || "$v" == Unknown || "$e" == *"no ready pod"* ]] && undecided+=" $id"
  done
  [[ -z "$undecided" ]] && break
  sleep 2
done

echo
$kubectl get iotsystems -A -o wide
echo
$kubectl -n smart-factory get pods -o wide
echo
echo "==> checklist (kubectl get iotsystem line-1 -n smart-factory -o yaml shows the evidence)"
$kubectl get iotsystem line-1 -n smart-factory -o jsonpath='{range .status.items[*]}{.id}{"\t"}{.verdict}{"\t"}{.evidence}{"\n"}{end}' | cut -c1-150
[[ -n "$undecided" ]] && echo "(still undecided by the probes:$undecided)"

echo
echo "==> the gateway in front of the dashboard, tried from a toolbox pod"
$kubectl -n smart-factory apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: toolbox, labels: {app: toolbox}}
spec:
  terminationGracePeriodSeconds: 0
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: toolbox
      image: iotposture.local/toolbox:$version
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      resources: {requests: {cpu: 5m, memory: 16Mi}, limits: {cpu: 100m, memory: 64Mi}}
EOF
$kubectl -n smart-factory wait pod/toolbox --for=condition=Ready --timeout=60s >/dev/null
url=https://dashboard.smart-factory.svc:8443
code() { $kubectl -n smart-factory exec toolbox -- curl -sk -o /dev/null -w '%{http_code}' "$@"; }
echo "GET /login                                  → $(code "$url/login")"
echo "SQL injection in a query                    → $(code "$url/?id=1%27%20OR%20%271%27%3D%271") (403: ModSecurity + CRS)"
echo "a session id in the URL                     → $(code "$url/?sessionid=stolen") (400)"
echo "Set-Cookie as the browser sees it           → $($kubectl -n smart-factory exec toolbox -- curl -sk -D - -o /dev/null "$url/login" | grep -i '^set-cookie' | tr -d '\r')"
printf 'six wrong passwords                         →'
for _ in 1 2 3 4 5 6; do
  printf ' %s' "$(code -X POST -d 'username=operator&password=wrong' "$url/login")"
done
echo " (401 until the lockout: 429)"

echo
echo "==> the example's logs in VictoriaLogs (III-1), shipped by the log collector"
system='"iotposture.system":="smart-factory/line-1"'
echo "records per container in the last hour:"
for _ in $(seq 1 30); do
  counts="$(logsql "_time:1h $system | stats by (k8s.container.name) count() records")"
  grep -q iotposture-gateway-exporter <<<"$counts" && break
  sleep 2
done
python3 -c 'import json,sys
for l in sys.stdin:
    r = json.loads(l)
    # Records without a container: the canaries the operator gives the collector.
    print("  %-30s %s" % (r.get("k8s.container.name") or "(canary)", r["records"]))' <<<"$counts"
echo "the WAF's blocks (ModSecurity audit records, via the gateway exporter's output):"
for _ in $(seq 1 15); do
  blocks="$(logsql "_time:1h $system \"Inbound Anomaly Score Exceeded\" | fields _time, k8s.pod.name")"
  [[ -n "$blocks" ]] && break
  sleep 2
done
sed 's/^/  /' <<<"$blocks" | head -3
[[ -n "$blocks" ]] || echo "  (none found: the WAF's audit records did not reach the store)"

echo
echo "==> the edge node (IV-1…IV-4, VI-1): what its node agent published (NodePosture, facts only)"
$kubectl -n iotposture-system get nodepostures
$kubectl -n iotposture-system get nodepostures -o json | python3 -c 'import json,sys
for p in json.load(sys.stdin)["items"]:
    f = p["spec"]["facts"]
    print(p["metadata"]["name"] + ":")
    print("  wifi networks:", len(f.get("wifi", [])), " serial logins:", [c["device"] for c in f.get("consoles", [])])
    print("  listening:", " ".join(sorted({str(s["port"]) for s in f.get("listening") or []}, key=int)))
    print("  usb:", f.get("usb"))
    print("  data mounts:", ", ".join(m["mountPoint"] + " on " + m["device"] + (" (dm-crypt)" if m["encrypted"] else " (plaintext)") for m in f.get("mounts", [])))'
echo "an edge device image, judged offline (a fixture host):"
target/debug/iotposture node-agent --once --host-root operator/tests/fixtures/hosts/bare-psk-client | sed -n '/^ITEM/,$p' || true

echo
echo "==> the decision record (VII-2): the entries shipped to the store against the signed checkpoint in status"
$kubectl get iotsystem line-1 -n smart-factory -o json >"$dir/line-1.json"
# The store keeps earlier demo runs' records too: only this system's, since it was created.
created="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["creationTimestamp"])' "$dir/line-1.json")"
logsql "$system \"k8s.container.name\":=operator" "$created" | python3 -c 'import json,sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
rs.sort(key=lambda r: json.loads(r["_msg"])["index"])
print("\n".join(json.dumps(r) for r in rs))' >"$dir/record.jsonl"
verified=0
target/debug/iotposture verify --entries "$dir/record.jsonl" --status "$dir/line-1.json" || verified=$?

cat <<MSG

Everything keeps running. Look around with:
  export KUBECONFIG=$PWD/$dir/kubeconfig
  $bins/kubectl get iots -A
  $bins/kubectl describe iotsystem line-1 -n smart-factory
  $bins/kubectl get policyreport -n smart-factory -o yaml
  $bins/kubectl get networkpolicy -n smart-factory
  $bins/kubectl -n smart-factory exec toolbox -- curl -sk https://dashboard.smart-factory.svc:8443/login
  $bins/kubectl get --raw /api/v1/namespaces/iotposture-system/pods/$leader_pod:8080/proxy/metrics | grep iotposture_checklist
  $bins/kubectl -n iotposture-system logs $leader_pod
  curl -s http://$node_ip:19090/api/v1/rules | head -c 600    # the system's alert rules in Prometheus
  cat $dir/alerts.log                                          # what Alertmanager delivered
  curl -s --cacert $dir/logs/ca.crt -u plant-logs:\$(cat $dir/logs/password) https://$node_ip:19428/select/logsql/query \\
    --data-urlencode 'query=_time:10m "iotposture.system":="smart-factory/line-1" | limit 5'   # the example's logs
  curl -s --cacert $dir/logs/ca.crt -u plant-logs:\$(cat $dir/logs/password) https://$node_ip:19428/select/logsql/query \\
    --data-urlencode 'query=_time:1h "iotposture.system":="smart-factory/line-1" "Inbound Anomaly Score Exceeded" | limit 5'   # the WAF's blocks
Audit an edge device's root filesystem before it ships (exit 1 when an item fails):
  target/debug/iotposture node-agent --once --host-root /path/to/image-root
Silence the sensors and watch VII-1 fail and the alert arrive (within a minute or two):
  $bins/kubectl -n smart-factory scale deployment temp-sensor --replicas=0
Try a pod the checklist forbids (the admission webhook refuses it, naming the item):
  $bins/kubectl run ssh-gw -n smart-factory --image=iotposture.local/mosquitto:$version --labels=app=mqtt-gateway --port=22
Stop everything with: make demo-down
MSG

# The logs, liveness and alert items must be decided, and the record must
# verify from what the store returned: otherwise the demo did not show them.
observed=""
for id in III-1 VII-1 VII-2 VIII-1 VIII-2; do
  [[ " $undecided " == *" $id "* ]] && observed+=" $id"
done
if [[ -n "$observed" || "$verified" != 0 || -z "$blocks" ]]; then
  [[ -z "$blocks" ]] && echo "error: no WAF block of the example is in the log store" >&2
  [[ -n "$observed" ]] && echo "error: still undecided:$observed (see their evidence above)" >&2
  [[ "$verified" != 0 ]] && echo "error: iotposture verify failed (exit $verified) on the entries read back from the store" >&2
  exit 1
fi
