//! Periodic probes of every system's TLS ports and web ports, apart from
//! reconciles (network calls are slow and may hang; reconciles must not). The
//! findings land in a shared map; a system whose findings changed is
//! reconciled again so its verdicts and status follow.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    runtime::reflector::{ObjectRef, Store},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::sync::mpsc;

use crate::{
    api::{EndpointStatus, IoTSystem},
    build::certificate::certificate_name,
    controller::validate::{Neighbourhood, ValidatedSystem, validate},
    metrics::Metrics,
    probe::{
        http,
        tls::{self, Finding, Target},
    },
};

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub interval: Duration,
    /// `name:port` → address, for names the operator's resolver does not know
    /// (a local control plane has no cluster DNS); like curl's --resolve.
    pub resolve: HashMap<String, SocketAddr>,
    pub settings: tls::Settings,
    pub http: http::Settings,
}

/// One TLS port of a component and what the probe saw there.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbedPort {
    pub component: String,
    pub port: String,
    pub finding: Finding,
}

impl ProbedPort {
    pub fn status(&self) -> EndpointStatus {
        EndpointStatus {
            component: self.component.clone(),
            port: self.port.clone(),
            endpoint: self.finding.endpoint.clone(),
            protocol: self.finding.protocol.clone(),
            cipher_suite: self.finding.cipher_suite.clone(),
            key: self.finding.key.clone(),
            not_after: self.finding.not_after.clone(),
            problems: self.finding.problems(),
        }
    }
}

/// One web port of a component and what the HTTP probe saw there.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbedHttpPort {
    pub component: String,
    pub port: String,
    pub finding: http::Finding,
}

/// What the probes saw at one system's ports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Findings {
    pub tls: Vec<ProbedPort>,
    pub http: Vec<ProbedHttpPort>,
}

/// Findings per system (namespace, name).
#[derive(Default)]
pub struct ProbeResults(RwLock<HashMap<(String, String), Findings>>);

impl ProbeResults {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Findings> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Stores the findings; true when they differ from the previous round.
    fn put(&self, namespace: &str, name: &str, ports: Findings) -> bool {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), name.to_string());
        if map.get(&key) == Some(&ports) {
            return false;
        }
        map.insert(key, ports);
        true
    }
}

/// Probes every system's TLS ports every `interval`, forever.
pub async fn probe_loop(
    client: Client,
    systems: Store<IoTSystem>,
    options: ProbeOptions,
    results: Arc<ProbeResults>,
    metrics: Arc<Metrics>,
    changed: mpsc::UnboundedSender<ObjectRef<IoTSystem>>,
) {
    // A short tick, so a new system is probed soon after it appears; each
    // system is probed again once `interval` has passed since its last round.
    let tick = options.interval.min(Duration::from_secs(5));
    let mut last: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut logins = LoginChecks::default();
    loop {
        let now = tokio::time::Instant::now();
        let current = systems.state();
        last.retain(|uid, _| {
            current
                .iter()
                .any(|s| s.metadata.uid.as_deref() == Some(uid.as_str()))
        });
        logins.0.retain(|(uid, _, _), _| last.contains_key(uid));
        for system in current {
            let uid = system.metadata.uid.clone().unwrap_or_default();
            if last
                .get(&uid)
                .is_some_and(|t| now.duration_since(*t) < options.interval)
            {
                continue;
            }
            last.insert(uid.clone(), now);
            let alone = Neighbourhood {
                pods: &[],
                systems: &[],
            };
            let Ok(valid) = validate(&system, &alone) else {
                continue;
            };
            let ports = probe_system(&client, &valid, &options).await;
            let web = probe_web(&client, &valid, &uid, &options, &mut logins).await;
            for p in &ports {
                metrics.record_tls_probe(
                    &valid.namespace,
                    &valid.name,
                    &p.component,
                    &p.port,
                    p.finding.error.is_none(),
                    p.finding.not_after.as_deref(),
                );
            }
            let findings = Findings {
                tls: ports,
                http: web,
            };
            if results.put(&valid.namespace, &valid.name, findings) {
                let _ = changed.send(ObjectRef::from_obj(system.as_ref()));
            }
        }
        tokio::time::sleep(tick).await;
    }
}

/// `name:port` → address: the --probe-resolve map first, then DNS, bounded.
async fn resolve(options: &ProbeOptions, key: &str) -> Option<SocketAddr> {
    match options.resolve.get(key) {
        Some(a) => Some(*a),
        None => tokio::time::timeout(
            options.settings.connect_timeout,
            tokio::net::lookup_host(key),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|mut a| a.next()),
    }
}

/// The login checks (lockout and session fixation) of each web port, kept
/// between rounds: they run again only once the probe account's lockout
/// has run out, so the probe never sits locked out on its own account.
#[derive(Default)]
struct LoginChecks(HashMap<(String, String, String), (tokio::time::Instant, http::Finding)>);

async fn probe_web(
    client: &Client,
    system: &ValidatedSystem,
    uid: &str,
    options: &ProbeOptions,
    logins: &mut LoginChecks,
) -> Vec<ProbedHttpPort> {
    let mut out = Vec::new();
    for component in &system.components {
        let lockout = component.http.lockout.as_ref();
        for port in component.http_ports() {
            let name = format!("{}.{}.svc", component.service, system.namespace);
            let key = format!("{name}:{}", port.port);
            let Some(addr) = resolve(options, &key).await else {
                out.push(ProbedHttpPort {
                    component: component.name.clone(),
                    port: port.name.clone(),
                    finding: http::Finding::unreachable(
                        key,
                        "the Service name does not resolve here (see --probe-resolve)".into(),
                    ),
                });
                continue;
            };
            let target = http::Target {
                name,
                addr,
                tls: port.tls,
            };
            let memo = (uid.to_string(), component.name.clone(), port.name.clone());
            let again_after = lockout
                .map(|l| l.duration)
                .unwrap_or_default()
                .max(options.interval);
            let previous = logins
                .0
                .get(&memo)
                .filter(|(at, _)| at.elapsed() < again_after)
                .map(|(_, f)| f.clone());
            // A rerun inside the lockout would only meet its own lockout.
            let login_checks = previous.is_none() && component.http.login_path.is_some();
            let credentials = match &component.http.probe_credentials_secret {
                Some(secret) if login_checks => test_credentials(client, &system.namespace, secret)
                    .await
                    .map(Some)
                    .ok_or_else(|| {
                        format!(
                            "probeCredentialsSecret {secret}: no such Secret, or it lacks username and password"
                        )
                    }),
                _ => Ok(None),
            };
            let plan = http::Plan {
                login_path: component.http.login_path.clone(),
                login_checks,
                max_failures: lockout.map(|l| l.max_failures.max(1)).unwrap_or(5),
                credentials,
            };
            let mut finding = http::probe(&target, &options.http, &plan).await;
            match previous {
                Some(p) => {
                    finding.lockout = p.lockout;
                    finding.fixation = p.fixation;
                }
                // Kept only once the lockout check got its answers: an
                // endpoint not up yet is asked again next round.
                None if login_checks
                    && !matches!(finding.lockout, http::Observation::Unknown(_)) =>
                {
                    logins
                        .0
                        .insert(memo, (tokio::time::Instant::now(), finding.clone()));
                }
                None => {}
            }
            out.push(ProbedHttpPort {
                component: component.name.clone(),
                port: port.name.clone(),
                finding,
            });
        }
    }
    out
}

/// `username` and `password` of the test account Secret; read with one GET
/// when needed, never cached.
async fn test_credentials(
    client: &Client,
    namespace: &str,
    secret: &str,
) -> Option<(String, String)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let data = api.get_opt(secret).await.ok()??.data?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Some((text("username")?, text("password")?))
}

async fn probe_system(
    client: &Client,
    system: &ValidatedSystem,
    options: &ProbeOptions,
) -> Vec<ProbedPort> {
    let mut targets = Vec::new();
    let mut unresolved = Vec::new();
    let mut labels = Vec::new();
    for component in &system.components {
        for port in component.ports.iter().filter(|p| p.tls) {
            let name = format!("{}.{}.svc", component.service, system.namespace);
            let key = format!("{name}:{}", port.port);
            let addr = resolve(options, &key).await;
            let trust = issuer_ca(
                client,
                system,
                &certificate_name(system, component, &port.name),
            )
            .await;
            match addr {
                Some(addr) => {
                    targets.push((Target { name, addr }, trust));
                    labels.push((component.name.clone(), port.name.clone()));
                }
                None => unresolved.push(ProbedPort {
                    component: component.name.clone(),
                    port: port.name.clone(),
                    finding: Finding {
                        endpoint: key.clone(),
                        error: Some(
                            "the Service name does not resolve here (see --probe-resolve)".into(),
                        ),
                        ..Finding::default()
                    },
                }),
            }
        }
    }
    let mut out = unresolved;
    // Each target has its own trust anchors, so settings differ per target;
    // at most `concurrency` handshakes are under way at once.
    let jobs: Vec<(Target, tls::Settings)> = targets
        .into_iter()
        .map(|(t, trust)| {
            let settings = tls::Settings {
                trust,
                ..options.settings.clone()
            };
            (t, settings)
        })
        .collect();
    let findings: Vec<Finding> = futures::stream::iter(jobs)
        .map(|(t, settings)| async move { tls::probe(&t, &settings).await })
        .buffered(options.settings.concurrency.max(1))
        .collect()
        .await;
    for ((component, port), finding) in labels.into_iter().zip(findings) {
        out.push(ProbedPort {
            component,
            port,
            finding,
        });
    }
    out.sort_by(|a, b| (&a.component, &a.port).cmp(&(&b.component, &b.port)));
    out
}

/// The CA cert-manager stored with the certificate (`ca.crt`), the anchor the
/// presented chain must lead to. Read with one GET: Secrets are not cached.
async fn issuer_ca(
    client: &Client,
    system: &ValidatedSystem,
    secret: &str,
) -> Vec<CertificateDer<'static>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &system.namespace);
    let Ok(Some(secret)) = api.get_opt(secret).await else {
        return Vec::new();
    };
    let Some(ca) = secret.data.as_ref().and_then(|d| d.get("ca.crt")) else {
        return Vec::new();
    };
    CertificateDer::pem_slice_iter(&ca.0)
        .filter_map(Result::ok)
        .collect()
}
