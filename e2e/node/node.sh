#!/usr/bin/env bash
# A real node for the local control plane: Debian's containerd, runc and CNI
# plugins, kubelet, kube-proxy (nftables) and kube-scheduler from the
# control plane's Go module, kube-router as the NetworkPolicy enforcer, and
# CoreDNS as a pod. Everything it keeps lives under the plane's folder, and
# `down` removes what it leaves elsewhere: processes, mounts, network
# namespaces, nft tables and iptables chains, ipsets, cgroups, interfaces.
#
#   e2e/node/node.sh network|up|down|status|images|diagnose PLANE_DIR BIN_DIR
#
# Called by the testplane command (`testplane up --node`); needs root. One
# node per machine: the interfaces and tables it makes have fixed names.
set -euo pipefail
action="${1:?usage: node.sh network|up|down|status|images|diagnose PLANE_DIR BIN_DIR}"
plane="$(mkdir -p "${2:?}" && cd "$2" && pwd)"
bins="$(cd "${3:?}" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

node=iotposture-node
node_ip=10.250.0.1            # on loopback: pods reach the API server here
pod_cidr=10.244.0.0/24
cluster_cidr=10.244.0.0/16
service_cidr=10.96.0.0/16
dns_ip=10.96.0.10
bridge=iotp0
dir="$plane/node"
sock="$dir/containerd/containerd.sock"
images="$root/target/images"
node_bins="$root/target/node/bin"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
kubectl=("$bins/kubectl" --kubeconfig "$plane/kubeconfig")
lock=/run/iotposture-node.lock
# Beside the plane's own logs, so they outlive the node.
logs="$plane/logs/node"

log() { echo "node: $*" >&2; }
die() { log "$*"; exit 1; }

pidfile() { echo "$dir/pids/$1"; }
running() { [[ -f "$(pidfile "$1")" ]] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

start() { # name, then the command line
  local name="$1"
  shift
  mkdir -p "$dir/pids" "$logs"
  setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

stop() { # name: TERM, then KILL after a grace
  local f
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 0
  local pid
  pid="$(cat "$f")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

wait_for() { # what, seconds, command...
  local what="$1" seconds="$2"
  shift 2
  for _ in $(seq 1 $((seconds * 4))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "no $what after ${seconds}s (logs in $logs)"
}

kubeconfig() { # name: a kubeconfig for the plane's certificate of that name
  local server
  server="$(sed -n 's/^    server: //p' "$plane/kubeconfig")"
  cat >"$dir/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority: "$plane/pki/ca.crt"}}]
users: [{name: $1, user: {client-certificate: "$plane/pki/$1.crt", client-key: "$plane/pki/$1.key"}}]
contexts: [{name: local, context: {cluster: local, user: $1}}]
current-context: local
EOF
}

check_prerequisites() {
  [[ $(id -u) -eq 0 ]] || die "a node needs root"
  for tool in containerd ctr runc ipset iptables nft ip setsid findmnt; do
    command -v "$tool" >/dev/null || die "$tool is missing (make test installs Debian's containerd, runc, containernetworking-plugins, ipset, iptables, nftables, iproute2)"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "/usr/lib/cni/bridge is missing: apt-get install containernetworking-plugins"
  for b in kubelet kube-proxy kube-scheduler; do
    [[ -x "$bins/$b" ]] || die "$bins/$b is missing: e2e/controlplane/build.sh builds it"
  done
  [[ -x "$node_bins/kube-router" ]] || die "$node_bins/kube-router is missing: e2e/node/build.sh builds it"
  for image in pause coredns; do
    [[ -f "$images/$image.oci.tar" ]] || die "$images/$image.oci.tar is missing: images/build.sh builds it"
  done
  # The two settings without which nothing starts here are in the
  # containerd and kubelet configurations below (cgroup v1, oom_score_adj).
  if [[ -e "$lock" && "$(cat "$lock")" != "$plane" ]] && [[ -d "$(cat "$lock")/node" ]]; then
    die "a node already runs for $(cat "$lock"); stop that plane first (one node per machine)"
  fi
}

network_up() {
  echo "$plane" >"$lock"
  cat /proc/sys/net/ipv4/ip_forward >"$dir/ip_forward.before"
  nft list tables >"$dir/nft-tables.before" 2>/dev/null || true
  [[ -d /var/log/containers ]] && touch "$dir/var-log-containers.before"
  for d in /run/containerd /run/netns; do
    [[ -d "$d" ]] && echo "$d" >>"$dir/dirs.before"
  done
  true
  echo 1 >/proc/sys/net/ipv4/ip_forward
  # This kernel has no dummy interfaces: the address goes on loopback, where
  # it is local to the host and routed to from the pods' bridge.
  ip addr replace "$node_ip/32" dev lo
  mkdir -p "$dir/cni"
  cat >"$dir/cni/10-iotposture.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "iotposture",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$dir/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

containerd_up() {
  mkdir -p "$dir/containerd"
  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "iotposture.local/pause:$version"
  # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj: every sandbox
  # would fail to start.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
EOF
  start containerd containerd --config "$dir/containerd/config.toml"
  wait_for "containerd" 30 ctr --address "$sock" version
  import_images
}

# The images images/build.sh made; a tag imported again points at the new image.
import_images() {
  for tar in "$images"/*.oci.tar; do
    ctr --address "$sock" -n k8s.io images import --no-unpack "$tar" >/dev/null
  done
}

kubelet_up() {
  mkdir -p "$dir/kubelet" "$dir/pod-logs"
  kubeconfig kubelet
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 here: kubelet refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$sock
address: $node_ip
tlsCertFile: $plane/pki/kubelet.crt
tlsPrivateKeyFile: $plane/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $plane/pki/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$dns_ip]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podCIDR: $pod_cidr
podLogsDir: $dir/pod-logs
# A development machine's disk is no reason to evict the tests' pods: a
# share of a large disk is gigabytes (1% of 252G is 2.5G, which a cold
# build leaves free on some machines), and under it the node refuses every
# pod (DiskPressure). Absolute floors instead; signals not named are off.
evictionHard: {memory.available: "100Mi", nodefs.available: "256Mi", imagefs.available: "256Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  start kubelet "$bins/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --root-dir "$dir/kubelet" --hostname-override "$node" --node-ip "$node_ip" -v=1
  wait_for "a Ready node" 120 bash -c "\"\${@}\" get node $node -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True" _ "${kubectl[@]}"
}

services_up() {
  start kube-scheduler "$bins/kube-scheduler" --kubeconfig "$plane/kubeconfig" --leader-elect=false --secure-port=0
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: $cluster_cidr
hostnameOverride: $node
clientConnection: {kubeconfig: $plane/kubeconfig}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
  start kube-proxy "$bins/kube-proxy" --config "$dir/kube-proxy.yaml"
  # The NetworkPolicy enforcer: only its firewall (iptables and ipsets).
  start kube-router "$node_bins/kube-router" --kubeconfig "$plane/kubeconfig" --hostname-override "$node" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --metrics-port=0 --health-port=0
  "${kubectl[@]}" apply --server-side --force-conflicts -f - >/dev/null <<EOF
$(sed -e "s/VERSION/$version/g" -e "s/DNS_IP/$dns_ip/g" "$here/coredns.yaml")
EOF
  wait_for "CoreDNS ready" 120 bash -c "\"\${@}\" -n kube-system get deployment coredns -o jsonpath='{.status.readyReplicas}' | grep -q 1" _ "${kubectl[@]}"
}

up() {
  if running kubelet; then log "already running"; return 0; fi
  containerd_up
  kubelet_up
  services_up
  log "ready: node $node, pods in $pod_cidr, cluster DNS $dns_ip"
}

down() {
  [[ -d "$dir" ]] || return 0
  # Best effort: every step runs, whatever an earlier one found missing.
  set +e +o pipefail
  stop kube-router
  stop kube-proxy
  stop kube-scheduler
  stop kubelet
  # Pods: kill their processes, through containerd while it runs.
  if running containerd; then
    for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
  fi
  pkill -9 -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true
  stop containerd
  # Mounts under the node's folder (volumes, rootfs, shm), deepest first.
  findmnt -rn -o TARGET | grep -F "$dir/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  # Network namespaces of our pods (containerd names them cni-*).
  for ns in /run/netns/cni-*; do
    [[ -e "$ns" ]] || continue
    umount -l "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
  # What kube-router, kube-proxy, kubelet and the CNI plugins put in the
  # kernel's tables.
  if [[ -x "$node_bins/kube-router" ]]; then
    "$node_bins/kube-router" --cleanup-config >/dev/null 2>&1 || true
  fi
  for family in ip ip6; do
    nft delete table "$family" kube-proxy 2>/dev/null || true
  done
  for table in nat filter mangle; do
    iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[A-Z0-9-]*\|CNI-[A-Za-z0-9-]*\) .*/\1/p' | while read -r chain; do
      iptables -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |$)" | sed 's/^-A/-D/' | while read -r rule; do
        eval "iptables -t $table $rule" 2>/dev/null || true
      done
      iptables -t "$table" -F "$chain" 2>/dev/null || true
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' | while read -r s; do ipset destroy "$s" 2>/dev/null || true; done
  ip link del "$bridge" 2>/dev/null || true
  ip addr del "$node_ip/32" dev lo 2>/dev/null || true
  # The kubelet's cgroups, leaves first.
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -d "$hierarchy/kubepods" ]] || continue
    find "$hierarchy/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  [[ -d /sys/fs/cgroup/kubepods ]] && find /sys/fs/cgroup/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
  # Paths the kubelet uses whatever its root folder.
  rm -rf /var/lib/kubelet/device-plugins /var/lib/kubelet/pod-resources
  rmdir /var/lib/kubelet 2>/dev/null || true
  if [[ -f "$dir/ip_forward.before" ]]; then
    cat "$dir/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
  fi
  # Tables iptables-nft made for the chains above, now empty, unless they were
  # there before the node.
  nft list tables 2>/dev/null | while read -r _ family name; do
    grep -qx "table $family $name" "$dir/nft-tables.before" 2>/dev/null && continue
    nft delete table "$family" "$name" 2>/dev/null || true
  done
  local had_logs=""
  [[ -f "$dir/var-log-containers.before" ]] && had_logs=yes
  # Shim sockets and runc state go to /run/containerd whatever the state
  # folder says; network namespaces to /run/netns. Removed when the node
  # made them (another containerd's are left alone).
  for d in /run/containerd /run/netns; do
    grep -qx "$d" "$dir/dirs.before" 2>/dev/null || rm -rf "$d"
  done
  rm -rf "$dir"
  # The kubelet's links to the pods' logs, gone with them.
  find /var/log/containers -xtype l -delete 2>/dev/null || true
  [[ -z "$had_logs" ]] && rmdir /var/log/containers 2>/dev/null || true
  [[ -f "$lock" && "$(cat "$lock")" == "$plane" ]] && rm -f "$lock"
  log "stopped; nothing left behind"
}

diagnose() {
  local name
  for name in containerd kubelet kube-scheduler kube-proxy kube-router; do
    if running "$name"; then echo "node: $name runs"; else echo "node: $name is NOT running"; fi
  done
  echo "node: disk of the plane"
  df -h "$plane" 2>&1 | tail -1
  echo "node: conditions"
  "${kubectl[@]}" get node "$node" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' 2>&1 || true
  echo "node: pods that are not Running"
  "${kubectl[@]}" get pods -A -o wide --field-selector=status.phase!=Running 2>&1 | head -30 || true
  echo "node: the latest warning Events"
  "${kubectl[@]}" get events -A --field-selector=type=Warning --sort-by=.lastTimestamp 2>&1 | tail -12 | cut -c1-300 || true
  for name in kubelet containerd; do
    echo "node: the last errors in $name.log"
    grep -E 'E[0-9]{4} |level=error|failed' "$logs/$name.log" 2>/dev/null | tail -8 | cut -c1-300 || true
  done
}

case "$action" in
# Before the API server starts: the address it binds.
network)
  check_prerequisites
  mkdir -p "$dir"
  network_up
  ;;
up) up ;;
down) down ;;
status) running kubelet ;;
# After a failed run: what a reader of CI output needs to tell a broken node
# from a broken test (every pod-based test fails alike when the node does).
diagnose) diagnose ;;
# A running node takes images built since it started.
images) import_images ;;
*) die "usage: node.sh network|up|down|status|images|diagnose PLANE_DIR BIN_DIR" ;;
esac
