//! Log shipping (item III-1): the collector DaemonSet follows the systems'
//! `spec.logging`, and what it does is observed. Apart from reconciles, like
//! the probes: every round
//!
//! 1. plans each system's shipping from the caches (its pods, its Secrets,
//!    read again only when their resourceVersions change);
//! 2. writes the collector's ConfigMap, Secret and DaemonSet when what the
//!    pods read changed (the pod template's hash says what they run);
//! 3. reads every collector pod's sent and failed counters;
//! 4. reads the system's records back from the store, and the store's
//!    retention, where `queryUrl` allows; there, a canary record (a nonce
//!    the operator puts in the collector's folder through a ConfigMap) must
//!    come back too, which proves the whole path from the collector to the
//!    store is taken now, not only that some record once arrived;
//!
//! and a system whose findings changed is reconciled again. Findings carry
//! no running counts, so a steady flow of logs writes no status.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Pod, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::reflector::ObjectRef,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    FIELD_MANAGER,
    cache::Caches,
    secrets,
    validate::{Neighbourhood, ValidLogging, ValidatedSystem, validate},
};
use crate::{
    api::IoTSystem,
    build::log_collector::{
        CONFIG_HASH_ANNOTATION, METRICS_PORT, Settings, SystemLogs, build_collector,
        canary_config_map, canary_config_map_name, pod_selector,
    },
    logs::collector::{component_name, exporter_counters},
};

#[derive(Clone, Debug)]
pub struct ShippingOptions {
    pub collector: Settings,
    pub interval: Duration,
}

/// What was found of one system's shipping. Compared between rounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShippingFindings {
    pub endpoint: String,
    /// Why the system's logs cannot be shipped as declared (a Secret
    /// missing, unlabelled or without `ca.crt`); such a system is left out
    /// of the collector's configuration, the others ship on.
    pub plan: Result<(), String>,
    /// Collector pods the DaemonSet wants and has ready and current, or
    /// why the collector does not run.
    pub collectors: Result<(i32, i32), String>,
    /// Collector pods whose counters could not be read, with why.
    pub unscraped: Vec<String>,
    /// Some collector sent a record of this system since it started.
    pub sent_any: bool,
    /// The failed-records counter rose since the previous look.
    pub failing: bool,
    /// With queryUrl: whether records sent lately are in the store.
    pub read_back: Option<Result<bool, String>>,
    /// With queryUrl and retention: how long the store keeps records.
    pub store_retention: Option<Result<Duration, String>>,
    /// With queryUrl: whether the system's canary record came back.
    pub canary: Option<CanaryVerdict>,
}

/// How long a canary may take to reach the store before III-1 fails: the
/// kubelet updates a ConfigMap volume within about a minute, the collector
/// batches for a second.
pub const CANARY_DEADLINE: Duration = Duration::from_secs(300);
/// A canary that came back is replaced after this long, so the verdict
/// stays current: one ConfigMap write per period for all systems at once.
pub const CANARY_REFRESH: Duration = Duration::from_secs(900);

/// What became of a system's canary record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanaryVerdict {
    /// The first one is on its way and not overdue.
    Awaited,
    /// The latest canary that came back was read from the store (a newer
    /// one may be on its way).
    ReadBack,
    /// The canary `nonce` was not in the store `CANARY_DEADLINE` after it
    /// was written.
    Missing { nonce: String },
    /// Writing it or looking for it failed.
    Failed(String),
}

/// One system's current canary.
#[derive(Clone, Debug)]
struct Canary {
    nonce: String,
    written: Instant,
    found: bool,
    verdict: CanaryVerdict,
}

type SystemKey = (String, String);

/// The canaries of the systems that can be read back, and what the
/// ConfigMap holds. Pure but for the clock and nonces it is given.
#[derive(Debug, Default)]
struct Canaries {
    by_system: HashMap<SystemKey, Canary>,
    written: Option<BTreeMap<SystemKey, String>>,
}

impl Canaries {
    /// The nonces the ConfigMap is to hold: a new one for a system without
    /// one, and for one whose canary came back `CANARY_REFRESH` ago or more.
    fn plan(
        &mut self,
        systems: &[SystemKey],
        now: Instant,
        mut fresh: impl FnMut() -> String,
    ) -> BTreeMap<SystemKey, String> {
        self.by_system.retain(|k, _| systems.contains(k));
        for key in systems {
            match self.by_system.get_mut(key) {
                None => {
                    self.by_system.insert(
                        key.clone(),
                        Canary {
                            nonce: fresh(),
                            written: now,
                            found: false,
                            verdict: CanaryVerdict::Awaited,
                        },
                    );
                }
                Some(c) if c.found && now.duration_since(c.written) >= CANARY_REFRESH => {
                    // The verdict stays until the new one is judged.
                    c.nonce = fresh();
                    c.written = now;
                    c.found = false;
                }
                Some(_) => {}
            }
        }
        self.by_system
            .iter()
            .map(|(k, c)| (k.clone(), c.nonce.clone()))
            .collect()
    }

    /// Whether `nonces` differ from what was last written.
    fn unwritten(&self, nonces: &BTreeMap<SystemKey, String>) -> bool {
        self.written.as_ref() != Some(nonces)
    }

    fn wrote(&mut self, nonces: BTreeMap<SystemKey, String>) {
        self.written = Some(nonces);
    }

    /// The ConfigMap could not be written: the canaries not yet back count
    /// from the next attempt, and say why they cannot come.
    fn not_written(&mut self, why: &str, now: Instant) {
        self.written = None;
        for c in self.by_system.values_mut().filter(|c| !c.found) {
            c.written = now;
            c.verdict = CanaryVerdict::Failed(format!("writing the canary record: {why}"));
        }
    }

    /// The canary to look for in the store, with how long ago it was
    /// written; None once it came back.
    fn awaited(&self, key: &SystemKey) -> Option<(String, Instant)> {
        self.by_system
            .get(key)
            .filter(|c| !c.found)
            .map(|c| (c.nonce.clone(), c.written))
    }

    /// What the store said of the awaited canary.
    fn looked(&mut self, key: &SystemKey, found: Result<bool, String>, now: Instant) {
        let Some(c) = self.by_system.get_mut(key) else {
            return;
        };
        match found {
            Ok(true) => {
                c.found = true;
                c.verdict = CanaryVerdict::ReadBack;
            }
            Ok(false) if now.duration_since(c.written) >= CANARY_DEADLINE => {
                c.verdict = CanaryVerdict::Missing {
                    nonce: c.nonce.clone(),
                };
            }
            // Not overdue: the verdict stands (Awaited, or the last one back).
            Ok(false) => {
                if matches!(c.verdict, CanaryVerdict::Failed(_)) {
                    c.verdict = CanaryVerdict::Awaited;
                }
            }
            Err(why) => c.verdict = CanaryVerdict::Failed(why),
        }
    }

    fn verdict(&self, key: &SystemKey) -> Option<CanaryVerdict> {
        self.by_system.get(key).map(|c| c.verdict.clone())
    }
}

/// A new nonce: 16 random bytes, hex (one word of the record's text).
fn nonce() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    match SystemRandom::new().fill(&mut bytes) {
        Ok(()) => crate::build::meta::hex(&bytes),
        // No randomness: still unique per use within this process.
        Err(_) => format!(
            "{:032x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
    }
}

pub type ShippingResults = super::findings::PerSystem<ShippingFindings>;

/// A system's Secrets as last read: their resourceVersions, and what they gave.
#[derive(Clone)]
struct ReadSecrets {
    versions: (Option<String>, Option<String>),
    material: Result<Material, String>,
}

#[derive(Clone)]
struct Material {
    ca_pem: Vec<u8>,
    basic_auth: Option<(String, String)>,
}

fn version(caches: &Caches, namespace: &str, name: &str) -> Option<String> {
    caches
        .secrets
        .get(&ObjectRef::new(name).within(namespace))
        .and_then(|s| s.resource_version())
}

async fn read_material(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    logging: &ValidLogging,
) -> Result<Material, String> {
    let field = format!("logging.caSecret {}", logging.ca_secret);
    let data = secrets::read(client, caches, namespace, &logging.ca_secret, &field).await?;
    let ca_pem = data
        .get("ca.crt")
        .cloned()
        .ok_or_else(|| format!("{field}: the Secret has no ca.crt"))?;
    if CertificateDer::pem_slice_iter(&ca_pem)
        .filter_map(Result::ok)
        .next()
        .is_none()
    {
        return Err(format!("{field}: ca.crt holds no PEM certificate"));
    }
    let basic_auth = match &logging.credentials_secret {
        Some(name) => {
            let field = format!("logging.credentialsSecret {name}");
            let data = secrets::read(client, caches, namespace, name, &field).await?;
            Some(secrets::username_password(&data, &field)?)
        }
        None => None,
    };
    Ok(Material { ca_pem, basic_auth })
}

/// Names of the pods the system's components select.
fn system_pods(caches: &Caches, system: &ValidatedSystem) -> Vec<String> {
    let mut names: Vec<String> = caches
        .pods_of(system)
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// Per collector pod and exporter: the last failed count seen.
type FailedSeen = HashMap<(String, String), f64>;

/// Runs until aborted.
pub async fn shipping_loop(
    client: Client,
    caches: Caches,
    options: ShippingOptions,
    results: Arc<ShippingResults>,
    changed: mpsc::UnboundedSender<ObjectRef<IoTSystem>>,
) {
    let mut read: HashMap<(String, String), ReadSecrets> = HashMap::new();
    let mut failed_seen: FailedSeen = HashMap::new();
    // When each exporter's sent count last rose: the read-back looks from then.
    let mut sent_seen: HashMap<String, (f64, Instant)> = HashMap::new();
    let mut canaries = Canaries::default();
    loop {
        round(
            &client,
            &caches,
            &options,
            &results,
            &changed,
            &mut read,
            &mut failed_seen,
            &mut sent_seen,
            &mut canaries,
        )
        .await;
        tokio::time::sleep(options.interval).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn round(
    client: &Client,
    caches: &Caches,
    options: &ShippingOptions,
    results: &ShippingResults,
    changed: &mpsc::UnboundedSender<ObjectRef<IoTSystem>>,
    read: &mut HashMap<(String, String), ReadSecrets>,
    failed_seen: &mut FailedSeen,
    sent_seen: &mut HashMap<String, (f64, Instant)>,
    canaries: &mut Canaries,
) {
    let alone = Neighbourhood {
        pods: &[],
        systems: &[],
    };
    // 1. Plans.
    let mut planned: Vec<(Arc<IoTSystem>, ValidatedSystem, ValidLogging)> = Vec::new();
    for object in caches.systems.state() {
        let Ok(system) = validate(&object, &alone) else {
            continue;
        };
        if let Some(logging) = system.logging.clone() {
            planned.push((object, system, logging));
        }
    }
    results.retain(|k| {
        planned
            .iter()
            .any(|(_, s, _)| (&s.namespace, &s.name) == (&k.0, &k.1))
    });
    read.retain(|k, _| {
        planned
            .iter()
            .any(|(_, s, _)| (&s.namespace, &s.name) == (&k.0, &k.1))
    });
    let mut systems = Vec::new();
    let mut plan_errors: HashMap<(String, String), String> = HashMap::new();
    for (_, system, logging) in &planned {
        let key = (system.namespace.clone(), system.name.clone());
        let versions = (
            version(caches, &system.namespace, &logging.ca_secret),
            logging
                .credentials_secret
                .as_deref()
                .and_then(|n| version(caches, &system.namespace, n)),
        );
        let fresh = match read.get(&key) {
            Some(r) if r.versions == versions => r.material.clone(),
            _ => {
                let material = read_material(client, caches, &system.namespace, logging).await;
                read.insert(
                    key.clone(),
                    ReadSecrets {
                        versions,
                        material: material.clone(),
                    },
                );
                material
            }
        };
        match fresh {
            Ok(m) => systems.push(SystemLogs {
                namespace: system.namespace.clone(),
                system: system.name.clone(),
                pods: system_pods(caches, system),
                endpoint: logging.endpoint.clone(),
                ca_pem: m.ca_pem,
                basic_auth: m.basic_auth,
                canary: logging.query_url.is_some(),
            }),
            Err(why) => {
                plan_errors.insert(key, why);
            }
        }
    }

    // 2. The canaries (before the collector, whose new pods then find
    // them at once), and the collector.
    let readable: Vec<SystemKey> = systems
        .iter()
        .filter(|s| s.canary)
        .map(|s| (s.namespace.clone(), s.system.clone()))
        .collect();
    let now = Instant::now();
    let nonces = canaries.plan(&readable, now, nonce);
    if !systems.is_empty() && canaries.unwritten(&nonces) {
        let config_map = canary_config_map(&options.collector, &nonces);
        let written = Api::<ConfigMap>::namespaced(client.clone(), &options.collector.namespace)
            .patch(
                &canary_config_map_name(&options.collector),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&config_map),
            )
            .await;
        match written {
            Ok(_) => canaries.wrote(nonces),
            Err(e) => {
                warn!(error = %e, "writing the log collector's canary records");
                canaries.not_written(&e.to_string(), now);
            }
        }
    }
    let collectors = run_collector(client, &options.collector, &systems).await;

    // 3. Its counters, summed over its pods.
    let (counters, unscraped, failing) = if collectors.is_ok() && !systems.is_empty() {
        scrape_all(client, &options.collector, failed_seen).await
    } else {
        Default::default()
    };
    let now = Instant::now();
    for (exporter, (sent, _)) in &counters {
        let entry = sent_seen.entry(exporter.clone()).or_insert((0.0, now));
        if *sent > entry.0 {
            *entry = (*sent, now);
        } else if *sent < entry.0 {
            // A collector restarted: the count begins again.
            entry.0 = *sent;
        }
    }

    // 4. Read back, and the findings.
    for (object, system, logging) in &planned {
        let key = (system.namespace.clone(), system.name.clone());
        let exporter = format!(
            "{}/{}",
            crate::logs::collector::EXPORTER_TYPE,
            component_name(&system.namespace, &system.name)
        );
        let plan = match plan_errors.get(&key) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        };
        let sent_any = counters.get(&exporter).is_some_and(|(s, _)| *s > 0.0);
        let material = read.get(&key).and_then(|r| r.material.clone().ok());
        let (read_back, store_retention) = match (&logging.query_url, &material) {
            (Some(url), Some(m)) if plan.is_ok() => {
                if let Some((nonce, written)) = canaries.awaited(&key) {
                    let since = now.duration_since(written).as_secs();
                    let query = crate::logs::collector::canary_query(
                        &system.namespace,
                        &system.name,
                        &nonce,
                        since,
                    );
                    let found = logs_query(url, m, &query).await;
                    canaries.looked(&key, found, Instant::now());
                }
                let read_back = if sent_any {
                    let since = sent_seen
                        .get(&exporter)
                        .map_or(Duration::ZERO, |(_, at)| now.duration_since(*at));
                    Some(read_back_records(url, m, system, since).await)
                } else {
                    None
                };
                let retention = match logging.retention {
                    Some(_) => Some(store_retention(url, m).await),
                    None => None,
                };
                (read_back, retention)
            }
            _ => (None, None),
        };
        let findings = ShippingFindings {
            endpoint: logging.endpoint.clone(),
            plan,
            collectors: collectors.clone(),
            unscraped: unscraped.clone(),
            sent_any,
            failing: failing.contains(&exporter),
            read_back,
            store_retention,
            canary: canaries.verdict(&key),
        };
        if results.put(key, findings) {
            let _ = changed.send(ObjectRef::from_obj(object.as_ref()));
        }
    }
}

/// Keeps the collector's objects as the systems want them; returns the
/// DaemonSet's pods (wanted, ready and current), or why it does not run.
async fn run_collector(
    client: &Client,
    settings: &Settings,
    systems: &[SystemLogs],
) -> Result<(i32, i32), String> {
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &settings.namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &settings.namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let current = daemon_sets
        .get_opt(&settings.name)
        .await
        .map_err(|e| format!("reading DaemonSet {}: {e}", settings.name))?;
    if systems.is_empty() {
        // Nobody ships: no collector on any node.
        if current.is_some() {
            info!(daemonset = %settings.name, "no system ships logs; removing the log collector");
            let dp = DeleteParams::default();
            for result in [
                daemon_sets.delete(&settings.name, &dp).await.map(|_| ()),
                config_maps.delete(&settings.name, &dp).await.map(|_| ()),
                config_maps
                    .delete(&canary_config_map_name(settings), &dp)
                    .await
                    .map(|_| ()),
                secrets.delete(&settings.name, &dp).await.map(|_| ()),
            ] {
                if let Err(e) = result
                    && !matches!(&e, kube::Error::Api(s) if s.code == 404)
                {
                    warn!(error = %e, "removing the log collector");
                }
            }
        }
        return Err("no system ships logs".into());
    }
    let built = build_collector(settings, systems).map_err(|e| e.to_string())?;
    let running_hash = current.as_ref().and_then(|d| {
        d.spec
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(CONFIG_HASH_ANNOTATION)
            .cloned()
    });
    let current = if running_hash.as_deref() == Some(built.hash.as_str()) {
        current
    } else {
        // The configuration and the Secret first: the pods the new template
        // starts must find them.
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        config_maps
            .patch(&settings.name, &pp, &Patch::Apply(&built.config_map))
            .await
            .map_err(|e| format!("writing ConfigMap {}: {e}", settings.name))?;
        secrets
            .patch(&settings.name, &pp, &Patch::Apply(&built.secret))
            .await
            .map_err(|e| format!("writing Secret {}: {e}", settings.name))?;
        let applied = daemon_sets
            .patch(&settings.name, &pp, &Patch::Apply(&built.daemon_set))
            .await
            .map_err(|e| format!("writing DaemonSet {}: {e}", settings.name))?;
        info!(daemonset = %settings.name, hash = %built.hash, systems = systems.len(), "log collector configured");
        Some(applied)
    };
    let status = current.and_then(|d| d.status).unwrap_or_default();
    // Ready pods of the current template; an old pod ships an old plan.
    let current_ready = status
        .number_ready
        .min(status.updated_number_scheduled.unwrap_or(0));
    Ok((status.desired_number_scheduled, current_ready))
}

/// Every collector pod's counters, summed by exporter; the pods that could
/// not be read; the exporters whose failed count rose since the last look.
async fn scrape_all(
    client: &Client,
    settings: &Settings,
    failed_seen: &mut FailedSeen,
) -> (
    BTreeMap<String, (f64, f64)>,
    Vec<String>,
    std::collections::BTreeSet<String>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &settings.namespace);
    let listed = match pods
        .list(&ListParams::default().labels(&pod_selector(settings)))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            return (
                BTreeMap::new(),
                vec![format!("listing the collector's pods: {e}")],
                Default::default(),
            );
        }
    };
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut unscraped = Vec::new();
    let mut failing = std::collections::BTreeSet::new();
    let mut seen_now: FailedSeen = HashMap::new();
    for pod in &listed {
        let name = pod.name_any();
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if !running || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let uid = pod.uid().unwrap_or_default();
        let base = match ip.parse::<std::net::IpAddr>() {
            Ok(addr) => format!("http://{}", SocketAddr::new(addr, METRICS_PORT)),
            Err(_) => continue,
        };
        match super::alerting::get(&base, "/metrics").await {
            Ok(text) => {
                for (exporter, (sent, failed)) in exporter_counters(&text) {
                    let entry = sums.entry(exporter.clone()).or_default();
                    entry.0 += sent;
                    entry.1 += failed;
                    let key = (uid.clone(), exporter.clone());
                    // A pod seen for the first time with failures counts as failing once.
                    if failed > failed_seen.get(&key).copied().unwrap_or(0.0) {
                        failing.insert(exporter);
                    }
                    seen_now.insert(key, failed);
                }
            }
            Err(why) => unscraped.push(format!("{name}: {why}")),
        }
    }
    *failed_seen = seen_now;
    unscraped.sort();
    (sums, unscraped, failing)
}

/// One request to the store over TLS verified against the system's CA,
/// with its credentials; the status and body.
async fn store_request(
    base: &str,
    material: &Material,
    method: &str,
    path: &str,
    body: String,
) -> Result<(u16, String), String> {
    let uri: hyper::Uri = base
        .parse()
        .map_err(|e| format!("{base} is not a URL: {e}"))?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| format!("{base} has no host"))?;
    let host_name = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let trust: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&material.ca_pem)
        .filter_map(Result::ok)
        .collect();
    let tls = crate::probe::http::verifying_tls(&trust)?;
    let server_name = ServerName::try_from(host_name.clone()).map_err(|e| e.to_string())?;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::USER_AGENT, "iotposture");
    if let Some((user, password)) = &material.basic_auth {
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request = request.header(hyper::header::AUTHORIZATION, format!("Basic {value}"));
    }
    if method == "POST" {
        request = request.header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let addr = tokio::net::lookup_host((host_name.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host_name}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host_name} has no address"))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS with {authority} failed: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("no HTTP answer from {authority}: {e}"))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        }
        .await;
        driver.abort();
        result
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{base}{path}: no answer within 10s"))?
}

/// The LogsQL query for a system's records of the last `since` (plus a
/// margin for batching and the store's own delay).
pub fn read_back_query(namespace: &str, system: &str, since: Duration) -> String {
    let seconds = since.as_secs() + 300;
    format!(
        "_time:{seconds}s \"{}\":=\"{namespace}/{system}\" | limit 1",
        crate::logs::collector::SYSTEM_ATTRIBUTE
    )
}

/// Whether the store holds a record of the system sent since the exporter's
/// sent count last rose.
async fn read_back_records(
    base: &str,
    material: &Material,
    system: &ValidatedSystem,
    since: Duration,
) -> Result<bool, String> {
    let query = read_back_query(&system.namespace, &system.name, since);
    logs_query(base, material, &query).await
}

/// Whether a LogsQL query finds any record.
async fn logs_query(base: &str, material: &Material, query: &str) -> Result<bool, String> {
    let body = format!("query={}", crate::probe::http::form_encode(query));
    let (status, text) =
        store_request(base, material, "POST", "/select/logsql/query", body).await?;
    if status != 200 {
        return Err(format!(
            "{base}/select/logsql/query answered {status}: {}",
            crate::checklist::evidence::truncate(text.trim(), 120, "…")
        ));
    }
    // One JSON object per line, one line per record.
    Ok(text.lines().any(|l| l.trim_start().starts_with('{')))
}

/// The store's retention from its flags (VictoriaLogs' `/flags` lists the
/// flags set; unset, `-retentionPeriod` is its default of 7d).
async fn store_retention(base: &str, material: &Material) -> Result<Duration, String> {
    let (status, text) = store_request(base, material, "GET", "/flags", String::new()).await?;
    if status != 200 {
        return Err(format!("{base}/flags answered {status}"));
    }
    parse_retention_flag(&text)
}

pub fn parse_retention_flag(flags: &str) -> Result<Duration, String> {
    let value = flags
        .lines()
        .find_map(|l| l.trim().strip_prefix("-retentionPeriod="))
        .map(|v| v.trim_matches('"'))
        .unwrap_or("7d");
    crate::logs::retention(value)
        .ok_or_else(|| format!("the store's -retentionPeriod {value:?} is not understood"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_back_asks_for_the_system_since_its_last_shipment() {
        assert_eq!(
            read_back_query("plant", "line-1", Duration::from_secs(60)),
            r#"_time:360s "iotposture.system":="plant/line-1" | limit 1"#
        );
    }

    #[test]
    fn a_canary_is_awaited_then_read_back_or_missing_and_renewed_once_back() {
        let t0 = Instant::now();
        let plant: SystemKey = ("plant".into(), "line-1".into());
        let lab: SystemKey = ("lab".into(), "line-1".into());
        let mut n = 0;
        let mut fresh = || {
            n += 1;
            format!("{n:02}")
        };
        let mut c = Canaries::default();
        let nonces = c.plan(&[plant.clone(), lab.clone()], t0, &mut fresh);
        assert_eq!(nonces.len(), 2);
        assert!(c.unwritten(&nonces));
        c.wrote(nonces.clone());
        assert_eq!(c.verdict(&plant), Some(CanaryVerdict::Awaited));

        // Not back yet, not overdue: still awaited. Back: read back.
        let (plant_nonce, _) = c.awaited(&plant).unwrap();
        c.looked(&plant, Ok(false), t0 + Duration::from_secs(60));
        assert_eq!(c.verdict(&plant), Some(CanaryVerdict::Awaited));
        c.looked(&plant, Ok(true), t0 + Duration::from_secs(90));
        assert_eq!(c.verdict(&plant), Some(CanaryVerdict::ReadBack));
        assert_eq!(c.awaited(&plant), None, "once back, no more queries");
        // The lab's never comes: missing after the deadline, by its nonce.
        let (lab_nonce, _) = c.awaited(&lab).unwrap();
        c.looked(
            &lab,
            Ok(false),
            t0 + CANARY_DEADLINE - Duration::from_secs(1),
        );
        assert_eq!(c.verdict(&lab), Some(CanaryVerdict::Awaited));
        c.looked(&lab, Ok(false), t0 + CANARY_DEADLINE);
        assert_eq!(
            c.verdict(&lab),
            Some(CanaryVerdict::Missing {
                nonce: lab_nonce.clone()
            })
        );

        // Nothing new before the refresh: nothing to write.
        let same = c.plan(
            &[plant.clone(), lab.clone()],
            t0 + Duration::from_secs(600),
            &mut fresh,
        );
        assert_eq!(same, nonces);
        assert!(!c.unwritten(&same));
        // After it, the one that came back gets a new nonce and keeps its
        // verdict until that one is judged; the missing one stays as it is.
        let later = t0 + CANARY_REFRESH;
        let renewed = c.plan(&[plant.clone(), lab.clone()], later, &mut fresh);
        assert_ne!(renewed[&plant], plant_nonce);
        assert_eq!(renewed[&lab], lab_nonce);
        assert!(c.unwritten(&renewed));
        assert_eq!(c.verdict(&plant), Some(CanaryVerdict::ReadBack));
        assert_eq!(
            c.awaited(&plant).map(|(n, _)| n),
            Some(renewed[&plant].clone())
        );
        c.looked(&plant, Ok(false), later + CANARY_DEADLINE);
        assert!(matches!(
            c.verdict(&plant),
            Some(CanaryVerdict::Missing { .. })
        ));

        // A store that cannot be asked, a system gone.
        c.looked(&lab, Err("no answer".into()), later);
        assert_eq!(
            c.verdict(&lab),
            Some(CanaryVerdict::Failed("no answer".into()))
        );
        let left = c.plan(std::slice::from_ref(&plant), later, &mut fresh);
        assert_eq!(left.keys().collect::<Vec<_>>(), [&plant]);
        assert_eq!(c.verdict(&lab), None);
    }

    #[test]
    fn a_canary_that_could_not_be_written_says_so_and_is_written_again() {
        let t0 = Instant::now();
        let plant: SystemKey = ("plant".into(), "line-1".into());
        let mut c = Canaries::default();
        let nonces = c.plan(std::slice::from_ref(&plant), t0, || "01".into());
        c.not_written("forbidden", t0);
        assert!(
            matches!(c.verdict(&plant), Some(CanaryVerdict::Failed(why)) if why.contains("forbidden"))
        );
        let again = c.plan(
            std::slice::from_ref(&plant),
            t0 + Duration::from_secs(10),
            || "02".into(),
        );
        assert_eq!(again, nonces, "the same canary, written again");
        assert!(c.unwritten(&again));
        // The deadline counts from the failed attempt, not the first plan.
        c.looked(&plant, Ok(false), t0 + Duration::from_secs(10));
        assert_eq!(c.verdict(&plant), Some(CanaryVerdict::Awaited));
    }

    #[test]
    fn nonces_are_one_hex_word_and_differ() {
        let (a, b) = (nonce(), nonce());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_store_retention_comes_from_its_flag_or_its_default() {
        let h = |n: u64| Ok(Duration::from_secs(n * 3600));
        assert_eq!(
            parse_retention_flag("-httpListenAddr=\":9428\"\n-retentionPeriod=\"30d\"\n"),
            h(30 * 24)
        );
        assert_eq!(
            parse_retention_flag("-httpListenAddr=\":9428\"\n"),
            h(7 * 24)
        );
        assert!(parse_retention_flag("-retentionPeriod=\"soon\"").is_err());
    }
}
