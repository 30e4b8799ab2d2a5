//! Periodic TLS probes of every TLS port of every system, apart from
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
    probe::tls::{self, Finding, Target},
};

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub interval: Duration,
    /// `name:port` → address, for names the operator's resolver does not know
    /// (a local control plane has no cluster DNS); like curl's --resolve.
    pub resolve: HashMap<String, SocketAddr>,
    pub settings: tls::Settings,
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

/// Findings per system (namespace, name).
#[derive(Default)]
pub struct ProbeResults(RwLock<HashMap<(String, String), Vec<ProbedPort>>>);

impl ProbeResults {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Vec<ProbedPort>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Stores the findings; true when they differ from the previous round.
    fn put(&self, namespace: &str, name: &str, ports: Vec<ProbedPort>) -> bool {
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
    loop {
        let now = tokio::time::Instant::now();
        let current = systems.state();
        last.retain(|uid, _| {
            current
                .iter()
                .any(|s| s.metadata.uid.as_deref() == Some(uid.as_str()))
        });
        for system in current {
            let uid = system.metadata.uid.clone().unwrap_or_default();
            if last
                .get(&uid)
                .is_some_and(|t| now.duration_since(*t) < options.interval)
            {
                continue;
            }
            last.insert(uid, now);
            let alone = Neighbourhood {
                pods: &[],
                systems: &[],
            };
            let Ok(valid) = validate(&system, &alone) else {
                continue;
            };
            let ports = probe_system(&client, &valid, &options).await;
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
            if results.put(&valid.namespace, &valid.name, ports) {
                let _ = changed.send(ObjectRef::from_obj(system.as_ref()));
            }
        }
        tokio::time::sleep(tick).await;
    }
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
            let addr = match options.resolve.get(&key) {
                Some(a) => Some(*a),
                // Resolution is bounded too: a slow resolver must not stall the round.
                None => tokio::time::timeout(
                    options.settings.connect_timeout,
                    tokio::net::lookup_host(&key),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|mut a| a.next()),
            };
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
