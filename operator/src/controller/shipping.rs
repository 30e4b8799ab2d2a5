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
//!    retention, where `queryUrl` allows;
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
    core::{Selector, SelectorExt},
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
        CONFIG_HASH_ANNOTATION, METRICS_PORT, Settings, SystemLogs, build_collector, pod_selector,
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
    let pods = caches.pods.in_namespace(&system.namespace);
    let selectors: Vec<Selector> = system
        .components
        .iter()
        .filter_map(|c| Selector::try_from(c.selector.clone()).ok())
        .collect();
    let empty = BTreeMap::new();
    let mut names: Vec<String> = pods
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
            selectors.iter().any(|s| s.matches(labels))
        })
        .filter_map(|p| p.metadata.name.clone())
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
            }),
            Err(why) => {
                plan_errors.insert(key, why);
            }
        }
    }

    // 2. The collector.
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
    let body = format!("query={}", crate::probe::http::form_encode(&query));
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
