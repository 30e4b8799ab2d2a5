//! Scale benchmark (not a test; `make bench`): the operator, as its own
//! process, against a real control plane whose nodes kwok simulates, so
//! Deployments give Running pods without containers. Per scenario (N systems
//! of 5 components, 2 pods each, one namespace per system; and 100 systems in
//! one namespace) it measures, in one run on one plane:
//! - `converge_s`: from applying the IoTSystems to every one Ready and judged;
//! - `baseline_s`: a bare client making the same writes at the operator's
//!   concurrency, with no operator running: the API server's own limit here
//!   (and `baseline_children_s`: the children's applies alone; baseline.rs);
//! - the operator's RSS (peak and steady), API requests per reconcile by verb
//!   (from the audit log), what queued the reconciles (by kind), writes per
//!   no-op reconcile, convergence after a restart;
//! - admission p50/p99 of pod creates through the API server at 100
//!   concurrent requests, with the operator's webhooks, with none, and with
//!   Kyverno enforcing Pod Security "restricted" (the peer).
//!
//! Writes `bench/results/scale.json` and `docs/scale.svg`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use iotposture::api::IoTSystem;
mod baseline;

use iotposture_e2e::controlplane::{Plane, SIMULATED_NODE};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Node, Pod},
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde::Serialize;
use serde_json::{Value, json};

/// The operator's reconcile concurrency (controller/wiring.rs), used by the
/// baseline too.
const CONCURRENCY: usize = 16;
const PODS_PER_COMPONENT: i32 = 2;
const COMPONENTS: usize = 5;
const SIMULATED_NODES: usize = 4;
const ADMISSION_CONCURRENCY: usize = 100;
const ADMISSION_PODS: usize = 1000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One scenario: `systems` systems in `namespaces` namespaces.
struct Scenario {
    name: String,
    systems: usize,
    namespaces: usize,
}

impl Scenario {
    fn namespace_of(&self, i: usize) -> String {
        format!("{}-{}", self.name, i % self.namespaces)
    }
}

fn system_yaml(namespace: &str, name: &str) -> String {
    format!(
        r#"apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  mode: Enforce
  components:
    - {{name: sensor, role: Sensor, selector: {{matchLabels: {{app: {name}-sensor}}}}}}
    - name: broker
      role: Aggregator
      selector: {{matchLabels: {{app: {name}-broker}}}}
      ports: [{{name: mqtts, port: 8883, tls: true}}]
    - name: store
      role: Aggregator
      selector: {{matchLabels: {{app: {name}-store}}}}
      ports: [{{name: db, port: 5432}}]
    - {{name: rules, role: DecisionTrigger, selector: {{matchLabels: {{app: {name}-rules}}}}}}
    - {{name: dashboard, role: EUtility, selector: {{matchLabels: {{app: {name}-dashboard}}}}}}
  flows:
    - {{from: {{component: sensor}}, to: broker, port: mqtts}}
    - {{from: {{component: rules}}, to: broker, port: mqtts}}
    - {{from: {{component: rules}}, to: store, port: db}}
    - {{from: {{component: dashboard}}, to: store, port: db}}
"#
    )
}

const COMPONENT_NAMES: [&str; COMPONENTS] = ["sensor", "broker", "store", "rules", "dashboard"];

/// A pod (template) that kwok's nodes take: tolerates their taint, selects them.
fn pod_spec() -> Value {
    json!({
        "containers": [{"name": "app", "image": "registry.example.com/iot/app:1.0"}],
        "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": SIMULATED_NODE.0, "operator": "Exists", "effect": "NoSchedule"}],
    })
}

/// `pod_spec` meeting the Pod Security "restricted" level, so the same pods
/// pass every admission timed (ours, Kyverno's, none).
fn restricted_pod_spec() -> Value {
    let mut spec = pod_spec();
    spec["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}});
    spec["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    spec
}

fn deployment(namespace: &str, app: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "namespace": namespace},
        "spec": {
            "replicas": PODS_PER_COMPONENT,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": pod_spec()},
        }
    })
}

async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// Runs `f` over `items` at `concurrency`, failing on the first error.
async fn each<T, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> Result<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    stream::iter(items.into_iter().map(f))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn create_namespaces(client: &Client, names: Vec<String>) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    each(names, 32, |name| {
        let api = api.clone();
        async move {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            api.create(&PostParams::default(), &ns).await?;
            Ok(())
        }
    })
    .await
}

async fn create_nodes(client: &Client) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for i in 0..SIMULATED_NODES {
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": format!("kwok-{i}"),
                "annotations": {SIMULATED_NODE.0: SIMULATED_NODE.1, "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": format!("kwok-{i}")},
            },
            "spec": {"taints": [{"key": SIMULATED_NODE.0, "value": SIMULATED_NODE.1, "effect": "NoSchedule"}]},
        }))?;
        api.create(&PostParams::default(), &node).await?;
    }
    Ok(())
}

/// Asks `behind` every `every` what is still missing until it says nothing
/// (None); after `timeout`, fails with its last answer.
async fn poll_until<F, Fut>(timeout: Duration, every: Duration, mut behind: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match behind().await? {
            None => return Ok(()),
            Some(what) if Instant::now() > deadline => bail!("{what} after {timeout:?}"),
            Some(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Waits until `count` pods run (kwok marks them Running and Ready).
async fn wait_pods_running(client: &Client, count: usize, timeout: Duration) -> Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    poll_until(timeout, Duration::from_secs(2), || async {
        let running = pods
            .list_metadata(&ListParams::default().fields("status.phase=Running"))
            .await?
            .items
            .len();
        Ok((running < count).then(|| format!("only {running} of {count} pods Running")))
    })
    .await
}

/// Waits until every Deployment counts its pods available: the ReplicaSet and
/// Deployment controllers write those statuses after the pods run, thousands
/// of writes that would otherwise land in the operator's convergence.
async fn wait_deployments_available(client: &Client, timeout: Duration) -> Result<()> {
    let deployments: Api<Deployment> = Api::all(client.clone());
    poll_until(timeout, Duration::from_secs(2), || async {
        let behind = deployments
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|d| {
                let wanted = d.spec.replicas.unwrap_or(1);
                let status = d.status.as_ref();
                status.and_then(|s| s.available_replicas).unwrap_or(0) < wanted
                    || status.and_then(|s| s.updated_replicas).unwrap_or(0) < wanted
            })
            .count();
        Ok((behind > 0).then(|| format!("{behind} Deployments still short of available pods")))
    })
    .await
}

/// Waits until every pod is Running: the admission runs leave thousands of
/// pods for the scheduler and kwok to place, and the phases timed after them
/// (restart, baseline) must not share the machine with that work.
async fn wait_pods_settled(client: &Client, timeout: Duration) -> Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    poll_until(timeout, Duration::from_secs(1), || async {
        let pending = pods
            .list_metadata(&ListParams::default().fields("status.phase!=Running"))
            .await?
            .items
            .len();
        Ok((pending > 0).then(|| format!("{pending} pods still not Running")))
    })
    .await
}

/// `wait_pods_settled`, saying how long it took, or that what follows is
/// timed on a busy plane.
async fn settle_pods(client: &Client, whose: &str) {
    let settling = Instant::now();
    match wait_pods_settled(client, Duration::from_secs(600)).await {
        Ok(()) => eprintln!(
            "    {whose} all Running after {:.1?} more",
            settling.elapsed()
        ),
        Err(e) => eprintln!("    timing the rest on a busy plane: {e:#}"),
    }
}

/// The operator as the user runs it: its own process, with its webhooks.
struct Operator {
    child: Child,
    metrics: String,
}

impl Operator {
    fn start(plane: &Plane, dir: &Path, webhook_port: u16, http_port: u16) -> Result<Self> {
        let bin = root().join("target/release/iotposture");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("operator.log"))?;
        let child = Command::new(&bin)
            .arg("run")
            .args([
                format!("--http-addr=127.0.0.1:{http_port}"),
                "--probe-interval-seconds=0".into(),
                format!("--webhook-addr=127.0.0.1:{webhook_port}"),
                format!("--webhook-url=https://127.0.0.1:{webhook_port}"),
                "--webhook-instance=iotposture-bench".into(),
            ])
            .env("KUBECONFIG", plane.bench_kubeconfig())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            // Decision record lines and logs: kept for a look afterwards.
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            metrics: format!("http://127.0.0.1:{http_port}/metrics"),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmHWM, VmRSS) in MiB.
    fn memory(&self) -> (f64, f64) {
        iotposture_e2e::bench::memory_of(self.pid())
    }

    /// The operator's /metrics text (empty when it does not answer).
    fn scrape(&self) -> String {
        Command::new("curl")
            .args(["-s", "--max-time", "10", &self.metrics])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    /// The sum of each counter family named, from /metrics.
    fn counters(&self) -> BTreeMap<String, f64> {
        let out = self.scrape();
        let mut sums = BTreeMap::new();
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let family = series.split('{').next().unwrap_or(series);
            if let Ok(v) = value.parse::<f64>() {
                *sums.entry(family.to_string()).or_insert(0.0) += v;
            }
        }
        sums
    }

    /// Writes so far by kind and verb.
    fn writes_by_kind(&self) -> BTreeMap<String, f64> {
        self.by_labels("iotposture_api_writes_total")
    }

    /// Systems queued for a reconcile so far, by the kind that changed.
    fn triggers_by_kind(&self) -> BTreeMap<String, f64> {
        self.by_labels("iotposture_reconcile_triggers_total")
    }

    /// Each series of a counter family, by its labels.
    fn by_labels(&self, family: &str) -> BTreeMap<String, f64> {
        let out = self.scrape();
        let prefix = format!("{family}{{");
        out.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|l| {
                let (labels, value) = l.rsplit_once("} ")?;
                Some((labels.replace('"', ""), value.parse().ok()?))
            })
            .collect()
    }

    fn reconciliations(&self) -> f64 {
        self.counters()
            .get("iotposture_reconciliations_total")
            .copied()
            .unwrap_or(0.0)
    }

    fn writes(&self) -> f64 {
        self.counters()
            .get("iotposture_api_writes_total")
            .copied()
            .unwrap_or(0.0)
    }

    fn ready(&self) -> bool {
        Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "2",
                &self.metrics.replace("/metrics", "/readyz"),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Samples the operator's RSS until told to stop; returns the highest.
fn sample_rss(pid: u32, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let mut peak = 0.0f64;
        while !stop.load(Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            {
                peak = peak.max(kb / 1024.0);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        peak
    })
}

fn judged(system: &IoTSystem) -> bool {
    let Some(status) = &system.status else {
        return false;
    };
    status.observed_generation == system.metadata.generation
        && status.items.len() == 39
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Waits (watching, not polling) until `count` systems are Ready and judged.
async fn wait_converged(client: &Client, count: usize, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let api: Api<IoTSystem> = Api::all(client.clone());
    let mut done: BTreeMap<String, bool> = BTreeMap::new();
    let events = watcher(api, watcher::Config::default()).applied_objects();
    let mut events = std::pin::pin!(events);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let Ok(Some(event)) = next else {
            bail!(
                "{} of {count} systems Ready and judged after {timeout:?}",
                done.values().filter(|d| **d).count()
            );
        };
        let system = event?;
        let key = format!(
            "{}/{}",
            system.namespace().unwrap_or_default(),
            system.name_any()
        );
        done.insert(key, judged(&system));
        if done.values().filter(|d| **d).count() >= count {
            return Ok(start.elapsed());
        }
    }
}

/// Audit entries of the operator's user since `mark`, by verb.
fn requests_by_verb(plane: &Plane, mark: u64) -> BTreeMap<String, u64> {
    let text = std::fs::read(plane.audit_log()).unwrap_or_default();
    let from = (mark as usize).min(text.len());
    let mut verbs = BTreeMap::new();
    for line in String::from_utf8_lossy(&text[from..]).lines() {
        if !line.contains(r#""username":"iotposture-bench""#) {
            continue;
        }
        if let Ok(entry) = serde_json::from_str::<Value>(line)
            && let Some(verb) = entry["verb"].as_str()
        {
            *verbs.entry(verb.to_string()).or_insert(0) += 1;
        }
    }
    verbs
}

fn audit_mark(plane: &Plane) -> u64 {
    std::fs::metadata(plane.audit_log())
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Waits until `f` stops changing for `quiet`; returns its last value.
async fn settle(quiet: Duration, timeout: Duration, f: impl Fn() -> f64) -> f64 {
    let deadline = Instant::now() + timeout;
    let mut last = f();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = f();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

#[derive(Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    /// Creates admitted (timed).
    requests: usize,
    /// Creates refused or failed, and the first such error: kept, not fatal,
    /// so a run under overload still reports what it measured.
    failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

/// Pod creates at ADMISSION_CONCURRENCY in `namespace`, each timed.
async fn admission(client: &Client, namespace: &str, app: &str, tag: &str) -> Result<Latency> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(ADMISSION_PODS)));
    let failures = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let names: Vec<String> = (0..ADMISSION_PODS).map(|i| format!("{tag}-{i}")).collect();
    each(names, ADMISSION_CONCURRENCY, |name| {
        let pods = pods.clone();
        let latencies = latencies.clone();
        let failures = failures.clone();
        let first_error = first_error.clone();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app": app}},
                "spec": restricted_pod_spec(),
            }))?;
            let start = Instant::now();
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => latencies.lock().unwrap().push(start.elapsed()),
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(e.to_string());
                }
            }
            Ok(())
        }
    })
    .await?;
    let failed = failures.load(Ordering::Relaxed);
    let first_error = first_error.lock().unwrap().take();
    if let Some(e) = &first_error {
        eprintln!("    {failed} pod creates failed in {namespace}, the first: {e}");
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |d| (d.as_secs_f64() * 1e5).round() / 100.0)
    };
    Ok(Latency {
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        requests: l.len(),
        failed,
        first_error,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// CPU milliseconds each process spent per admitted create.
fn cpu_per_create(used: &BTreeMap<String, f64>, creates: usize) -> Value {
    used.iter()
        .map(|(name, s)| (name.clone(), json!(round2(s * 1e3 / creates.max(1) as f64))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The API server's time waiting on the operator's pod webhooks so far:
/// (seconds, calls), from its own histogram.
fn webhook_calls(plane: &Plane) -> (f64, f64) {
    let out = Command::new(plane.bin_dir.join("kubectl"))
        .arg(format!("--kubeconfig={}", plane.kubeconfig().display()))
        .args(["get", "--raw", "/metrics"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let family = "apiserver_admission_webhook_admission_duration_seconds";
    let mut total = (0.0, 0.0);
    for line in out.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !series.contains(r#"name="pods."#) || !series.contains(".iotposture.dev\"") {
            continue;
        }
        let value: f64 = value.parse().unwrap_or(0.0);
        if series.starts_with(&format!("{family}_sum{{")) {
            total.0 += value;
        } else if series.starts_with(&format!("{family}_count{{")) {
            total.1 += value;
        }
    }
    total
}

/// p50 and p99 of one webhook's answers between two scrapes of the
/// operator's `admission_duration_seconds` buckets.
fn handler_latency(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    webhook: &str,
) -> Value {
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(labels, count)| {
            let mut le = None;
            let mut hook = None;
            for pair in labels.split(',') {
                match pair.split_once('=') {
                    Some(("le", v)) => le = v.parse::<f64>().ok(),
                    Some(("webhook", v)) => hook = Some(v),
                    _ => {}
                }
            }
            let delta = count - before.get(labels).copied().unwrap_or(0.0);
            (hook == Some(webhook)).then_some((le?, delta))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ms = |q| histogram_quantile(q, &buckets).map(|s| round2(s * 1e3));
    json!({"p50_ms": ms(0.5), "p99_ms": ms(0.99)})
}

/// The `q` quantile of cumulative histogram buckets (upper bound, count),
/// interpolated within its bucket as Prometheus' histogram_quantile does;
/// the highest finite bound when it falls in the +Inf bucket.
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return Some(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// Pod creates through Kyverno in a namespace of their own; its RSS after.
async fn kyverno_admission(
    plane: &Plane,
    client: &Client,
    dir: &Path,
    scenario: &str,
) -> Result<(Latency, f64, Value)> {
    let namespace = format!("{scenario}-kyverno");
    create_namespaces(client, vec![namespace.clone()]).await?;
    let kyverno = iotposture_e2e::kyverno::Kyverno::start(
        plane,
        client,
        &root().join("target/bench/bin"),
        dir,
        &namespace,
    )
    .await?;
    let cpu_before = cpu_now(plane, Some(("kyverno", kyverno.pid())));
    let latency = profiled(
        plane,
        dir,
        &format!("{scenario}-admission-kyverno"),
        admission(client, &namespace, "peer", "adm"),
    )
    .await;
    let cpu = cpu_used(
        &cpu_before,
        &cpu_now(plane, Some(("kyverno", kyverno.pid()))),
    );
    let rss = kyverno.memory().1;
    kyverno.stop(plane)?;
    let latency = latency?;
    let cpu = cpu_per_create(&cpu, latency.requests);
    Ok((latency, rss, cpu))
}

/// CPU seconds used so far by each process of the plane, and by the
/// one more process when given (the operator, or Kyverno), under its name;
/// and the machine's steal time so far, under `steal`.
fn cpu_now(plane: &Plane, other: Option<(&str, u32)>) -> BTreeMap<String, f64> {
    let mut cpu: BTreeMap<String, f64> = plane
        .process_ids()
        .into_iter()
        .map(|(name, pid)| (name.to_string(), pid))
        .chain(other.map(|(name, pid)| (name.to_string(), pid)))
        .map(|(name, pid)| (name, iotposture_e2e::bench::cpu_seconds_of(pid)))
        .collect();
    cpu.insert("steal".into(), iotposture_e2e::bench::steal_seconds());
    cpu
}

/// CPU seconds each process used between two `cpu_now` readings.
fn cpu_used(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, t)| {
            let used = t - before.get(name).copied().unwrap_or(0.0);
            (name.clone(), (used * 10.0).round() / 10.0)
        })
        .collect()
}

/// With IOTPOSTURE_BENCH_PROFILE=<seconds>, a CPU profile of the API
/// server over the next that many seconds (at most `cap`), into
/// `dir/apiserver-<scenario>-<phase>.pprof` (read with
/// `go tool pprof -top target/testplane/bin/kube-apiserver <file>`): where
/// the API server's time goes while the operator converges, against the
/// baseline doing the same writes, and what each admission run costs it.
fn profile_api_server(plane: &Plane, dir: &Path, phase: &str, cap: u32) -> Option<Child> {
    let seconds: u32 = std::env::var("IOTPOSTURE_BENCH_PROFILE")
        .ok()?
        .parse::<u32>()
        .ok()?
        .min(cap);
    let file = std::fs::File::create(dir.join(format!("apiserver-{phase}.pprof"))).ok()?;
    Command::new(plane.bin_dir.join("kubectl"))
        .arg(format!("--kubeconfig={}", plane.kubeconfig().display()))
        .args([
            "get",
            "--raw",
            &format!("/debug/pprof/profile?seconds={seconds}"),
            &format!("--request-timeout={}s", seconds + 30),
        ])
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// An admission run's first seconds, its busiest, are profiled (see
/// `profile_api_server`) as `<scenario>-admission-<peer>`.
const ADMISSION_PROFILE_S: u32 = 8;

async fn profiled<T>(
    plane: &Plane,
    dir: &Path,
    phase: &str,
    run: impl std::future::Future<Output = T>,
) -> T {
    let profiling = profile_api_server(plane, dir, phase, ADMISSION_PROFILE_S);
    let out = run.await;
    if let Some(mut p) = profiling {
        let _ = p.wait();
    }
    out
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn run_scenario(plane: &Plane, scenario: &Scenario) -> Result<Value> {
    eprintln!(
        "==> scenario {}: {} systems in {} namespaces",
        scenario.name, scenario.systems, scenario.namespaces
    );
    plane.down()?;
    plane.up()?;
    let crds: Vec<String> = std::fs::read_dir(root().join("target/thirdparty/crds"))?
        .filter_map(|e| e.ok().map(|e| e.path().display().to_string()))
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    let mut args = vec!["apply", "--server-side", "-f", "crds/"];
    for c in &crds {
        args.extend(["-f", c.as_str()]);
    }
    let here = std::env::current_dir()?;
    std::env::set_current_dir(root())?;
    plane.kubectl_ok(&args)?;
    std::env::set_current_dir(here)?;
    let client = client_for(&plane.kubeconfig()).await?;
    create_nodes(&client).await?;

    // Workloads first, all Running, so the operator meets a full cluster.
    let namespaces: Vec<String> = (0..scenario.namespaces)
        .map(|i| format!("{}-{i}", scenario.name))
        .collect();
    // The two baselines' namespaces (baseline.rs).
    let baseline_namespaces: Vec<String> = ["base", "same"]
        .iter()
        .flat_map(|prefix| namespaces.iter().map(move |ns| format!("{prefix}-{ns}")))
        .collect();
    create_namespaces(
        &client,
        namespaces
            .iter()
            .chain(&baseline_namespaces)
            .cloned()
            .collect(),
    )
    .await?;
    let systems: Vec<IoTSystem> = (0..scenario.systems)
        .map(|i| {
            serde_saphyr::from_str(&system_yaml(&scenario.namespace_of(i), &format!("sys-{i}")))
        })
        .collect::<Result<_, _>>()?;
    let pods = scenario.systems * COMPONENTS * PODS_PER_COMPONENT as usize;
    let start = Instant::now();
    let deployments: Vec<Value> = systems
        .iter()
        .flat_map(|s| {
            let ns = s.namespace().unwrap_or_default();
            COMPONENT_NAMES
                .iter()
                .map(move |c| deployment(&ns, &format!("{}-{c}", s.name_any())))
        })
        .collect();
    let resolver = baseline::Resolver::default();
    each(deployments, 32, |d| {
        let (client, resolver) = (client.clone(), resolver.clone());
        async move { resolver.apply(&client, &d, "bench").await }
    })
    .await?;
    wait_pods_running(&client, pods, Duration::from_secs(1800)).await?;
    eprintln!("    {pods} pods Running in {:.1?}", start.elapsed());
    match wait_deployments_available(&client, Duration::from_secs(600)).await {
        Ok(()) => eprintln!(
            "    every Deployment available after {:.1?}",
            start.elapsed()
        ),
        Err(e) => eprintln!("    timing the operator on a busy plane: {e:#}"),
    }

    let dir = plane.dir.join("bench");
    std::fs::create_dir_all(&dir)?;
    let (webhook_port, http_port) = (free_port()?, free_port()?);
    let operator = Operator::start(plane, &dir, webhook_port, http_port)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !operator.ready() {
        if Instant::now() > deadline {
            bail!(
                "the operator is not ready after 120 s; see {}",
                dir.join("operator.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_rss(operator.pid(), stop.clone());
    let mark = audit_mark(plane);
    let reconciles_before = operator.reconciliations();
    let cpu_before = cpu_now(plane, Some(("iotposture", operator.pid())));
    let profiling = profile_api_server(
        plane,
        &dir,
        &format!("{}-converge", scenario.name),
        u32::MAX,
    );

    let start = Instant::now();
    let systems_api = |ns: &str| Api::<IoTSystem>::namespaced(client.clone(), ns);
    each(systems.clone(), CONCURRENCY, |s| {
        let api = systems_api(&s.namespace().unwrap_or_default());
        async move {
            api.create(&PostParams::default(), &s).await?;
            Ok(())
        }
    })
    .await?;
    let waited = wait_converged(&client, scenario.systems, Duration::from_secs(1800)).await?;
    let converge_s = start.elapsed().as_secs_f64();
    // Where the machine's two cores went while converging.
    let converge_cpu_s = cpu_used(
        &cpu_before,
        &cpu_now(plane, Some(("iotposture", operator.pid()))),
    );
    eprintln!(
        "    converged in {converge_s:.1} s (watch saw it at {waited:.1?}); CPU s {converge_cpu_s:?}"
    );
    // Let the tail of the work (PolicyReports, the record) finish.
    let writes_after = settle(Duration::from_secs(5), Duration::from_secs(120), || {
        operator.writes()
    })
    .await;
    let reconciles = operator.reconciliations() - reconciles_before;
    // Before the operator's start nothing had triggered: all are this phase's.
    let triggers_by_kind = operator.triggers_by_kind();
    let verbs = requests_by_verb(plane, mark);
    let per_reconcile: BTreeMap<String, f64> = verbs
        .iter()
        .map(|(v, n)| {
            (
                v.clone(),
                (*n as f64 / reconciles.max(1.0) * 100.0).round() / 100.0,
            )
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    let rss_peak = sampler.join().unwrap_or(0.0).max(operator.memory().0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss_steady = operator.memory().1;
    eprintln!(
        "    RSS peak {rss_peak:.0} MiB, steady {rss_steady:.0} MiB; {reconciles} reconciles; requests {verbs:?}"
    );

    // A no-op resync: every system touched (an annotation: no generation
    // change), so every one reconciles once with nothing to change.
    let before = operator.reconciliations();
    let writes_before = operator.writes();
    each(systems.clone(), CONCURRENCY, |s| {
        let api = systems_api(&s.namespace().unwrap_or_default());
        async move {
            api.patch(
                &s.name_any(),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"bench.iotposture.dev/touched": "1"}}}),
                ),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while operator.reconciliations() - before < scenario.systems as f64 && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    settle(Duration::from_secs(5), Duration::from_secs(120), || {
        operator.reconciliations()
    })
    .await;
    let noop_reconciles = operator.reconciliations() - before;
    let noop_writes = operator.writes() - writes_before;
    let writes_per_noop = noop_writes / noop_reconciles.max(1.0);
    eprintln!("    no-op: {noop_writes} writes in {noop_reconciles} reconciles");

    // The API server takes one CPU profile at a time: the converge phase's
    // ends before the admission runs' begin.
    if let Some(mut p) = profiling {
        let _ = p.wait();
    }

    // Admission while the cluster is full: with the webhooks, and without.
    // Beside the end-to-end times: how long the operator took to answer
    // (its own histogram), how long the API server waited on each call,
    // and the API server's CPU per create, which bounds the throughput of
    // 100 clients on 2 cores and so their latency.
    let handlers_before = operator.by_labels("iotposture_admission_duration_seconds_bucket");
    let calls_before = webhook_calls(plane);
    let cpu_before = cpu_now(plane, Some(("iotposture", operator.pid())));
    let with_webhooks = profiled(
        plane,
        &dir,
        &format!("{}-admission-iotposture", scenario.name),
        admission(&client, &scenario.namespace_of(0), "sys-0-sensor", "adm"),
    )
    .await?;
    let cpu_with = cpu_used(
        &cpu_before,
        &cpu_now(plane, Some(("iotposture", operator.pid()))),
    );
    let calls = webhook_calls(plane);
    let handlers = operator.by_labels("iotposture_admission_duration_seconds_bucket");
    let mut ours = serde_json::to_value(&with_webhooks)?;
    ours["handler_ms"] = json!({
        "mutate": handler_latency(&handlers_before, &handlers, "mutate"),
        "validate": handler_latency(&handlers_before, &handlers, "validate"),
    });
    ours["api_server_wait_per_call_ms"] = json!(round2(
        (calls.0 - calls_before.0) / (calls.1 - calls_before.1).max(1.0) * 1e3
    ));
    ours["cpu_ms_per_create"] = cpu_per_create(&cpu_with, with_webhooks.requests);
    // Each admission run starts once the last one's pods are placed: the
    // scheduler and kwok working through 1,000 pods would slow the next.
    settle_pods(&client, "our run's pods").await;
    create_namespaces(&client, vec![format!("{}-plain", scenario.name)]).await?;
    let cpu_before = cpu_now(plane, None);
    let without = profiled(
        plane,
        &dir,
        &format!("{}-admission-none", scenario.name),
        admission(&client, &format!("{}-plain", scenario.name), "plain", "adm"),
    )
    .await?;
    let cpu_without = cpu_used(&cpu_before, &cpu_now(plane, None));
    let mut none = serde_json::to_value(&without)?;
    none["cpu_ms_per_create"] = cpu_per_create(&cpu_without, without.requests);
    eprintln!(
        "    admission p50/p99: iotposture {}/{} ms (answers {}; the API server waited {} ms a call), none {}/{} ms; CPU ms per create: {} against {}",
        with_webhooks.p50_ms,
        with_webhooks.p99_ms,
        ours["handler_ms"],
        ours["api_server_wait_per_call_ms"],
        without.p50_ms,
        without.p99_ms,
        ours["cpu_ms_per_create"],
        none["cpu_ms_per_create"],
    );

    // The peer: Kyverno enforcing "restricted" on the same pods, same client,
    // with the operator still running as it was for the two above, so the
    // three share the API server's load.
    settle_pods(&client, "the plain run's pods").await;
    let kyverno = kyverno_admission(plane, &client, &dir, &scenario.name).await;
    let admission = match kyverno {
        Ok((latency, rss, cpu)) => {
            eprintln!(
                "    admission p50/p99: kyverno {}/{} ms (RSS {rss:.0} MiB); CPU ms per create: {cpu}",
                latency.p50_ms, latency.p99_ms
            );
            json!({"iotposture": ours, "none": none,
                   "kyverno": {"p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms,
                               "requests": latency.requests, "failed": latency.failed,
                               "rss_mib": rss.round(), "cpu_ms_per_create": cpu,
                               "version": iotposture_e2e::kyverno::VERSION}})
        }
        Err(e) => {
            eprintln!("    kyverno did not run: {e:#}");
            json!({"iotposture": ours, "none": none,
                   "kyverno": {"error": format!("{e:#}")}})
        }
    };

    settle_pods(&client, "Kyverno's run's pods").await;

    // Restart: a new process lists everything and reconciles every system.
    // The systems before and after are kept beside the operator's log, to
    // see what a restart rewrote.
    let _ = writes_after;
    let dump = |file: &str| {
        let out = Command::new(plane.bin_dir.join("kubectl"))
            .arg(format!("--kubeconfig={}", plane.kubeconfig().display()))
            .args(["get", "iotsystems", "-A", "-o", "json"])
            .output();
        if let Ok(out) = out {
            let _ = std::fs::write(dir.join(file), out.stdout);
        }
    };
    dump("systems-before-restart.json");
    operator.kill();
    let start = Instant::now();
    let operator = Operator::start(plane, &dir, webhook_port, http_port)?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while (!operator.ready() || operator.reconciliations() < scenario.systems as f64)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let restart_converge_s = start.elapsed().as_secs_f64();
    let restart_writes = settle(Duration::from_secs(5), Duration::from_secs(120), || {
        operator.writes()
    })
    .await;
    dump("systems-after-restart.json");
    let restart_writes_by_kind = operator.writes_by_kind();
    eprintln!(
        "    restart: every system reconciled in {restart_converge_s:.1} s, {restart_writes} writes {restart_writes_by_kind:?}"
    );
    operator.kill();

    // Baselines, once the operator is gone: its cluster-wide caches then
    // hold the scenario's objects, not a second copy of every child made by
    // the measurement. With no webhook left to answer: the same-writes
    // baseline creates IoTSystems, which the operator's webhook reviews.
    plane.kubectl_ok(&[
        "delete",
        "mutatingwebhookconfigurations,validatingwebhookconfigurations",
        "--all",
    ])?;
    let cpu_before = cpu_now(plane, None);
    let (children_took, children_count) =
        baseline::children(&client, &baseline::moved(&systems, "base")).await?;
    let baseline_children_s = children_took.as_secs_f64();
    let baseline_children_cpu_s = cpu_used(&cpu_before, &cpu_now(plane, None));
    eprintln!(
        "    baseline, children only: {children_count} applies in {children_took:.1?}; CPU s {baseline_children_cpu_s:?}"
    );
    let (written, admission_label) = baseline::what_the_operator_wrote(&client).await?;
    let cpu_before = cpu_now(plane, None);
    let profiling = profile_api_server(
        plane,
        &dir,
        &format!("{}-baseline", scenario.name),
        u32::MAX,
    );
    let (took, writes) = baseline::same_writes(
        &client,
        &baseline::moved(&systems, "same"),
        |ns| ns.trim_start_matches("same-").to_string(),
        &written,
        admission_label,
    )
    .await?;
    let baseline_s = took.as_secs_f64();
    // Read before the profile ends, which may be long after the writes.
    let baseline_cpu_s = cpu_used(&cpu_before, &cpu_now(plane, None));
    if let Some(mut p) = profiling {
        let _ = p.wait();
    }
    eprintln!(
        "    baseline, the same writes: {writes} in {took:.1?} ({:.1} per system); CPU s {baseline_cpu_s:?}",
        writes as f64 / scenario.systems as f64
    );

    Ok(json!({
        "scenario": scenario.name,
        "systems": scenario.systems,
        "namespaces": scenario.namespaces,
        "pods": pods,
        "converge_s": (converge_s * 10.0).round() / 10.0,
        "baseline_s": (baseline_s * 10.0).round() / 10.0,
        "ratio": ((converge_s / baseline_s) * 100.0).round() / 100.0,
        "baseline_writes_per_system": round2(writes as f64 / scenario.systems as f64),
        "baseline_children_s": (baseline_children_s * 10.0).round() / 10.0,
        "ratio_children": ((converge_s / baseline_children_s) * 100.0).round() / 100.0,
        "baseline_children_cpu_s": baseline_children_cpu_s,
        "converge_cpu_s": converge_cpu_s,
        "baseline_cpu_s": baseline_cpu_s,
        "rss_peak_mib": rss_peak.round(),
        "rss_steady_mib": rss_steady.round(),
        "reconciles": reconciles,
        "triggers_by_kind": triggers_by_kind,
        "requests_per_reconcile": per_reconcile,
        "writes_per_noop": (writes_per_noop * 100.0).round() / 100.0,
        "restart_converge_s": (restart_converge_s * 10.0).round() / 10.0,
        "restart_writes": restart_writes,
        "restart_writes_by_kind": restart_writes_by_kind,
        "admission": admission,
    }))
}

/// Convergence and baseline time, and memory, against N (log scale).
fn plot(results: &[Value]) -> String {
    let spread: Vec<&Value> = results
        .iter()
        .filter(|r| {
            r["scenario"]
                .as_str()
                .is_some_and(|s| s.starts_with("spread"))
                && r.get("converge_s").is_some()
        })
        .collect();
    let (w, h, pad) = (360.0, 240.0, 48.0);
    let xs: Vec<f64> = spread
        .iter()
        .map(|r| r["systems"].as_f64().unwrap_or(1.0).log10())
        .collect();
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::MAX, f64::min).min(1.0),
        xs.iter().cloned().fold(f64::MIN, f64::max).max(2.0),
    );
    let x = |v: f64| pad + (v - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * pad);
    let panel = |title: &str, offset: f64, series: &[(&str, &str, &str)]| {
        let max = spread
            .iter()
            .flat_map(|r| {
                series
                    .iter()
                    .map(move |(k, _, _)| r[*k].as_f64().unwrap_or(0.0))
            })
            .fold(1.0, f64::max)
            * 1.1;
        let y = |v: f64| h - pad + 10.0 - v / max * (h - 2.0 * pad);
        let mut svg = format!(
            r#"<g transform="translate({offset},0)"><text x="{}" y="20" text-anchor="middle" font-size="13">{title}</text>"#,
            w / 2.0
        );
        svg += &format!(
            r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{pad}" y1="{}" x2="{pad}" y2="{}" stroke="black"/>"#,
            h - pad + 10.0,
            w - pad,
            h - pad + 10.0,
            pad,
            h - pad + 10.0
        );
        svg += &format!(
            r#"<text x="{pad}" y="{}" font-size="10" text-anchor="end">{:.0}</text>"#,
            pad, max
        );
        for (r, xv) in spread.iter().zip(&xs) {
            svg += &format!(
                r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
                x(*xv),
                h - pad + 24.0,
                r["systems"]
            );
        }
        svg += &format!(
            r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">systems (5 components, 10 pods each)</text>"#,
            w / 2.0,
            h - 6.0
        );
        for (i, (key, colour, label)) in series.iter().enumerate() {
            let points: Vec<String> = spread
                .iter()
                .zip(&xs)
                .map(|(r, xv)| format!("{:.1},{:.1}", x(*xv), y(r[*key].as_f64().unwrap_or(0.0))))
                .collect();
            svg += &format!(
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            for p in &points {
                let (px, py) = p.split_once(',').unwrap();
                svg += &format!(r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#);
            }
            svg += &format!(
                r#"<text x="{}" y="{}" font-size="11" fill="{colour}">{label}</text>"#,
                pad + 8.0,
                pad + 4.0 + 14.0 * i as f64
            );
        }
        svg + "</g>"
    };
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" font-family="sans-serif">{}{}</svg>
"#,
        2.0 * w,
        panel(
            "Time to converge (s)",
            0.0,
            &[
                ("converge_s", "#c0392b", "iotposture"),
                ("baseline_s", "#2c3e50", "bare client, same writes")
            ]
        ),
        panel(
            "Operator memory (MiB)",
            w,
            &[
                ("rss_peak_mib", "#8e44ad", "RSS peak"),
                ("rss_steady_mib", "#16a085", "RSS steady")
            ]
        ),
    )
}

/// The scenarios of the results file at `out` that this run did not
/// measure, after this run's, ordered spread by size and then dense.
fn keep_other_scenarios(out: &str, mut results: Vec<Value>) -> Vec<Value> {
    let measured: Vec<Value> = results.iter().map(|r| r["scenario"].clone()).collect();
    let earlier: Value = std::fs::read_to_string(out)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    results.extend(
        earlier["scenarios"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| !measured.contains(&r["scenario"]))
            .cloned(),
    );
    results.sort_by_key(|r| {
        (
            r["namespaces"].as_u64() == Some(1) && r["systems"].as_u64() != Some(1),
            r["systems"].as_u64().unwrap_or(0),
        )
    });
    results
}

/// The commit measured, with "-dirty" when the code differs from it.
fn commit() -> String {
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let clean = Command::new("git")
        .args([
            "diff",
            "--quiet",
            "HEAD",
            "--",
            "operator",
            "e2e",
            "Cargo.lock",
        ])
        .current_dir(root())
        .status()
        .is_ok_and(|s| s.success());
    if clean { head } else { format!("{head}-dirty") }
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn versions() -> Value {
    let first_line = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let bin = root().join("target/testplane/bin");
    json!({
        "iotposture": env!("CARGO_PKG_VERSION"),
        "kube-apiserver": first_line(&bin.join("kube-apiserver").display().to_string(), &["--version"]),
        "etcd": first_line(&bin.join("etcd").display().to_string(), &["--version"]),
        "kyverno": iotposture_e2e::kyverno::VERSION,
        "kwok": first_line(&root().join("target/bench/bin/kwok").display().to_string(), &["--version"]),
    })
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "memory": mem, "cpu": model})
}

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench/results/scale.json".into());
    let plot_out = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "docs/scale.svg".into());
    // IOTPOSTURE_BENCH_SIZES=10,100 for a shorter run; empty for the dense
    // scenario alone.
    let sizes: Vec<usize> = std::env::var("IOTPOSTURE_BENCH_SIZES")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("IOTPOSTURE_BENCH_SIZES: numbers separated by commas")?;
    let plane = Plane::new(
        root().join("target/bench/plane"),
        root().join("target/testplane/bin"),
    )
    .with_simulated_nodes(root().join("target/bench/bin"));
    let mut scenarios: Vec<Scenario> = sizes
        .iter()
        .map(|&n| Scenario {
            name: format!("spread{n}"),
            systems: n,
            namespaces: n,
        })
        .collect();
    if std::env::var("IOTPOSTURE_BENCH_DENSE").map_or(true, |v| v != "0") {
        scenarios.push(Scenario {
            name: "dense".into(),
            systems: 100,
            namespaces: 1,
        });
    }
    let mut results = Vec::new();
    let run = json!({"commit": commit(), "date": today()});
    for scenario in &scenarios {
        // A scenario that fails is reported as such; the others still run.
        let mut result = match run_scenario(&plane, scenario).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("    scenario {} failed: {e:#}", scenario.name);
                json!({"scenario": scenario.name, "systems": scenario.systems,
                       "namespaces": scenario.namespaces, "error": format!("{e:#}")})
            }
        };
        result["run"] = run.clone();
        results.push(result);
    }
    // A shorter run (IOTPOSTURE_BENCH_SIZES) replaces only its own scenarios:
    // the others stay as their own runs measured them (each names its run).
    results = keep_other_scenarios(&out, results);
    // IOTPOSTURE_BENCH_KEEP=1 leaves the last plane running, to look around.
    if std::env::var("IOTPOSTURE_BENCH_KEEP").map_or(true, |v| v != "1") {
        plane.down()?;
    }
    let report = json!({
        "machine": machine(),
        "versions": versions(),
        "targets": {"at": "1000 systems / 10000 pods", "ratio_max": 1.5, "rss_steady_mib_max": 150,
                    "writes_per_noop": 0, "admission_p99_ms_max": 5},
        "scenarios": results,
    });
    iotposture_e2e::bench::write_report(&out, &report)?;
    if let Some(dir) = Path::new(&plot_out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &plot_out,
        plot(
            report["scenarios"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        ),
    )?;
    println!("wrote {plot_out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        let buckets = [
            (0.001, 50.0),
            (0.005, 90.0),
            (0.01, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // Rank 50 is the top of the first bucket; rank 70 halfway into the second.
        assert_eq!(histogram_quantile(0.5, &buckets), Some(0.001));
        assert!((histogram_quantile(0.7, &buckets).unwrap() - 0.003).abs() < 1e-12);
        assert!((histogram_quantile(0.99, &buckets).unwrap() - 0.0095).abs() < 1e-12);
        // Past the last finite bound, that bound; nothing observed, nothing.
        let overflow = [(0.001, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.99, &overflow), Some(0.001));
        assert_eq!(
            histogram_quantile(0.5, &[(0.001, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
    }

    #[test]
    fn a_webhooks_latency_counts_only_its_own_answers_in_the_phase() {
        let series = |mutate: [f64; 3], validate: [f64; 3]| {
            let mut m = BTreeMap::new();
            for (hook, counts) in [("mutate", mutate), ("validate", validate)] {
                for (le, c) in ["0.001", "0.01", "+Inf"].iter().zip(counts) {
                    m.insert(format!("le={le},webhook={hook}"), c);
                }
            }
            m
        };
        // Before the phase, 100 slow answers; in it, 100 fast ones.
        let before = series([0.0, 0.0, 100.0], [0.0, 0.0, 0.0]);
        let after = series([100.0, 100.0, 200.0], [0.0, 10.0, 10.0]);
        let mutate = handler_latency(&before, &after, "mutate");
        assert_eq!(mutate["p50_ms"], json!(0.5));
        let validate = handler_latency(&before, &after, "validate");
        assert_eq!(validate["p50_ms"], json!(5.5));
    }
}
