//! Periodic probes of every system's TLS ports and web ports, apart from
//! reconciles (network calls are slow and may hang; reconciles must not). The
//! findings land in a shared map; a system whose findings changed is
//! reconciled again so its verdicts and status follow.
//!
//! Where the probe goes is decided from the API, never from DNS: the
//! ClusterIP of the component's Service (or a ready pod's IP behind a
//! headless one), so a probe can be pointed only at the cluster's own
//! Service and pod addresses; ExternalName Services are not followed. A
//! test account's password is sent only over TLS verified against the
//! port's CA, and only from a Secret labelled for it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, Client, core::Selector, runtime::reflector::ObjectRef};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::sync::{Semaphore, mpsc};

use super::{cache::Caches, secrets};
use crate::{
    api::{EndpointStatus, IoTSystem, Port},
    build::certificate::certificate_name,
    controller::validate::{Neighbourhood, ValidComponent, ValidatedSystem, validate},
    metrics::Metrics,
    probe::{
        http,
        tls::{self, Finding, Target},
    },
};

/// The label a Secret must carry before the probe may log in with it.
pub use super::secrets::READABLE_LABEL as PROBE_CREDENTIALS_LABEL;

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub interval: Duration,
    /// `name:port` → address, for Service names the operator cannot reach by
    /// their ClusterIP (a local control plane without a node); like curl's
    /// --resolve. Set by whoever runs the operator, so trusted.
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
        let mut problems = self.finding.problems();
        problems.extend(
            self.finding
                .unreachable
                .iter()
                .map(|why| format!("{}: not reached: {why}", self.finding.endpoint)),
        );
        EndpointStatus {
            component: self.component.clone(),
            port: self.port.clone(),
            endpoint: self.finding.endpoint.clone(),
            protocol: self.finding.protocol.clone(),
            cipher_suite: self.finding.cipher_suite.clone(),
            key: self.finding.key.clone(),
            not_after: self.finding.not_after.clone(),
            problems,
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

    /// Forgets a system that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), name.to_string()));
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

/// Everything one round needs, shared by the systems probed at once.
struct Round<'a> {
    client: &'a Client,
    caches: &'a Caches,
    options: &'a ProbeOptions,
    /// Endpoints probed at once, across all systems.
    permits: &'a Semaphore,
    logins: &'a LoginChecks,
}

/// Probes every system's TLS and web ports every `interval`, forever.
pub async fn probe_loop(
    client: Client,
    caches: Caches,
    options: ProbeOptions,
    results: Arc<ProbeResults>,
    metrics: Arc<Metrics>,
    changed: mpsc::UnboundedSender<ObjectRef<IoTSystem>>,
) {
    // A short tick, so a new system is probed soon after it appears; each
    // system is probed again once `interval` has passed since its last round.
    let tick = options.interval.min(Duration::from_secs(5));
    let mut last: HashMap<String, tokio::time::Instant> = HashMap::new();
    let logins = LoginChecks::default();
    let permits = Semaphore::new(options.settings.concurrency.max(1));
    loop {
        let now = tokio::time::Instant::now();
        let current = caches.systems.state();
        last.retain(|uid, _| {
            current
                .iter()
                .any(|s| s.metadata.uid.as_deref() == Some(uid.as_str()))
        });
        logins.retain(|uid| last.contains_key(uid));
        let mut due = Vec::new();
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
            if let Ok(valid) = validate(&system, &alone) {
                due.push((system, uid, valid));
            }
        }
        let round = Round {
            client: &client,
            caches: &caches,
            options: &options,
            permits: &permits,
            logins: &logins,
        };
        futures::stream::iter(due)
            .for_each_concurrent(None, |(system, uid, valid)| {
                let round = &round;
                let results = &results;
                let metrics = &metrics;
                let changed = &changed;
                async move {
                    // One after the other: a port sees one probe connection at a time.
                    let ports = probe_tls(round, &valid).await;
                    let web = probe_web(round, &valid, &uid).await;
                    // Only for a system still there: a deleted one's state is gone.
                    if !round
                        .caches
                        .holds_system(&valid.namespace, &valid.name, Some(&uid))
                    {
                        return;
                    }
                    for p in &ports {
                        metrics.record_tls_probe(
                            &valid.namespace,
                            &valid.name,
                            &p.component,
                            &p.port,
                            p.finding.error.is_none() && p.finding.unreachable.is_none(),
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
            })
            .await;
        tokio::time::sleep(tick).await;
    }
}

/// Where a port of a component may be dialled, as the API shows it.
#[derive(Debug, PartialEq)]
pub enum Dial {
    To(SocketAddr),
    /// The API already shows the fault (no Service, no ready pod).
    Fault(String),
    /// Not dialled (an ExternalName Service); nothing is known.
    Refused(String),
}

/// The component's Service name, and the key --probe-resolve uses.
pub fn service_name(
    system: &ValidatedSystem,
    component: &ValidComponent,
    port: &Port,
) -> (String, String) {
    let name = format!("{}.{}.svc", component.service, system.namespace);
    let key = format!("{name}:{}", port.port);
    (name, key)
}

/// The address to probe `port` of `component` at: an address given with
/// --probe-resolve, else the Service's ClusterIP, else (headless) a ready pod's IP.
pub fn dial(
    caches: &Caches,
    resolve: &HashMap<String, SocketAddr>,
    system: &ValidatedSystem,
    component: &ValidComponent,
    port: &Port,
) -> Dial {
    let (_, key) = service_name(system, component, port);
    if let Some(addr) = resolve.get(&key) {
        return Dial::To(*addr);
    }
    let service = caches
        .services
        .get(&ObjectRef::new(&component.service).within(&system.namespace));
    let Some(spec) = service.as_ref().and_then(|s| s.spec.as_ref()) else {
        return Dial::Fault(format!(
            "no Service {} in namespace {} in front of component {}",
            component.service, system.namespace, component.name
        ));
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Dial::Refused(format!(
            "Service {} is of type ExternalName; the probe dials only the cluster's own Service and pod addresses",
            component.service
        ));
    }
    let pods = ready_pod_ips(caches, system, component);
    let Some(pod_ip) = pods.first() else {
        return Dial::Fault(format!(
            "no ready pod of component {} behind Service {} (no endpoints)",
            component.name, component.service
        ));
    };
    let port = port.port as u16;
    match spec.cluster_ip.as_deref().map(str::parse::<IpAddr>) {
        Some(Ok(ip)) => Dial::To(SocketAddr::new(ip, port)),
        // Headless ("None"): the pods themselves.
        _ => Dial::To(SocketAddr::new(*pod_ip, port)),
    }
}

fn ready_pod_ips(
    caches: &Caches,
    system: &ValidatedSystem,
    component: &ValidComponent,
) -> Vec<IpAddr> {
    let Ok(selector) = Selector::try_from(component.selector.clone()) else {
        return Vec::new();
    };
    caches
        .pods
        .in_namespace(&system.namespace)
        .iter()
        .filter(|p| p.labels().matched_by(&selector))
        .map(|p| p.pod())
        .filter(is_ready)
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
        .collect()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The login checks (lockout and session fixation) of each web port, kept
/// between rounds: they run again only once the probe account's lockout
/// has run out, so the probe never sits locked out on its own account.
#[derive(Default)]
struct LoginChecks(Mutex<HashMap<LoginKey, (tokio::time::Instant, http::Finding)>>);

/// (system uid, component, port)
type LoginKey = (String, String, String);

impl LoginChecks {
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(uid, _, _), _| keep(uid));
    }

    fn recent(&self, key: &LoginKey, within: Duration) -> Option<http::Finding> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|(at, _)| at.elapsed() < within)
            .map(|(_, f)| f.clone())
    }

    fn remember(&self, key: LoginKey, finding: http::Finding) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (tokio::time::Instant::now(), finding));
    }
}

async fn probe_web(round: &Round<'_>, system: &ValidatedSystem, uid: &str) -> Vec<ProbedHttpPort> {
    let mut jobs = Vec::new();
    for component in &system.components {
        for port in component.http_ports() {
            jobs.push(probe_web_port(round, system, uid, component, port));
        }
    }
    futures::future::join_all(jobs).await
}

async fn probe_web_port(
    round: &Round<'_>,
    system: &ValidatedSystem,
    uid: &str,
    component: &ValidComponent,
    port: &Port,
) -> ProbedHttpPort {
    let done = |finding| ProbedHttpPort {
        component: component.name.clone(),
        port: port.name.clone(),
        finding,
    };
    let (name, key) = service_name(system, component, port);
    let addr = match dial(
        round.caches,
        &round.options.resolve,
        system,
        component,
        port,
    ) {
        Dial::To(addr) => addr,
        Dial::Fault(why) => return done(http::Finding::fault(key, why)),
        Dial::Refused(why) => return done(http::Finding::unreachable(key, why)),
    };
    let target = http::Target {
        name,
        addr,
        tls: port.tls,
    };
    let lockout = component.http.lockout.as_ref();
    let memo = (uid.to_string(), component.name.clone(), port.name.clone());
    let again_after = lockout
        .map(|l| l.duration)
        .unwrap_or_default()
        .max(round.options.interval);
    let previous = round.logins.recent(&memo, again_after);
    // A rerun inside the lockout would only meet its own lockout.
    let login_checks = previous.is_none() && component.http.login_path.is_some();
    let credentials = match &component.http.probe_credentials_secret {
        Some(secret) if login_checks => test_credentials(round, system, component, port, secret)
            .await
            .map(Some),
        _ => Ok(None),
    };
    let plan = http::Plan {
        login_path: component.http.login_path.clone(),
        login_checks,
        max_failures: lockout.map(|l| l.max_failures.max(1)).unwrap_or(5),
        credentials,
    };
    let mut finding = {
        let _permit = round.permits.acquire().await;
        http::probe(&target, &round.options.http, &plan).await
    };
    match previous {
        Some(p) => {
            finding.lockout = p.lockout;
            finding.fixation = p.fixation;
            // Locked out by its own check, the probe gets 429 at the login
            // page too: what it saw of the cookies before still stands.
            if matches!(finding.cookies, http::Observation::Unknown(_)) {
                finding.cookies = p.cookies;
            }
        }
        // Kept only while the probe account is locked out, which is why the
        // checks must wait: anything else (no answer yet, no lockout, a
        // gateway still reloading its settings) is asked again next round.
        None if login_checks && matches!(finding.lockout, http::Observation::Pass(_)) => {
            round.logins.remember(memo, finding.clone());
        }
        None => {}
    }
    done(finding)
}

/// `username` and `password` of the test account, with the TLS client they
/// may travel with; or why they may not be used.
async fn test_credentials(
    round: &Round<'_>,
    system: &ValidatedSystem,
    component: &ValidComponent,
    port: &Port,
    secret: &str,
) -> Result<http::Credentials, String> {
    let field = format!("probeCredentialsSecret {secret}");
    // The metadata cache first: an unlabelled Secret is never read.
    secrets::readable(round.caches, &system.namespace, secret, &field)?;
    if !port.tls {
        return Err(format!(
            "{field}: port {} is not TLS, and the test account's password is sent only over verified TLS",
            port.name
        ));
    }
    let trust = issuer_ca(
        round.client,
        system,
        &certificate_name(system, component, &port.name),
    )
    .await;
    let verified_tls = http::verifying_tls(&trust).map_err(|why| {
        format!("{field}: the password is sent only over TLS verified against the port's CA: {why}")
    })?;
    let data = secrets::read(
        round.client,
        round.caches,
        &system.namespace,
        secret,
        &field,
    )
    .await?;
    let (username, password) = secrets::username_password(&data, &field)?;
    Ok(http::Credentials {
        username,
        password,
        verified_tls,
    })
}

async fn probe_tls(round: &Round<'_>, system: &ValidatedSystem) -> Vec<ProbedPort> {
    let mut jobs = Vec::new();
    for component in &system.components {
        for port in component.ports.iter().filter(|p| p.tls) {
            jobs.push(async move {
                let (name, key) = service_name(system, component, port);
                let finding = match dial(
                    round.caches,
                    &round.options.resolve,
                    system,
                    component,
                    port,
                ) {
                    Dial::To(addr) => {
                        let trust = issuer_ca(
                            round.client,
                            system,
                            &certificate_name(system, component, &port.name),
                        )
                        .await;
                        let settings = tls::Settings {
                            trust,
                            ..round.options.settings.clone()
                        };
                        let _permit = round.permits.acquire().await;
                        tls::probe(&Target { name, addr }, &settings).await
                    }
                    Dial::Fault(why) => Finding {
                        endpoint: key,
                        error: Some(why),
                        ..Finding::default()
                    },
                    Dial::Refused(why) => Finding::unreachable(key, why),
                };
                ProbedPort {
                    component: component.name.clone(),
                    port: port.name.clone(),
                    finding,
                }
            });
        }
    }
    let mut out: Vec<ProbedPort> = futures::stream::iter(jobs)
        .buffer_unordered(usize::MAX)
        .collect()
        .await;
    out.sort_by(|a, b| (&a.component, &a.port).cmp(&(&b.component, &b.port)));
    out
}

/// The CA cert-manager stored with the certificate (`ca.crt`), the anchor the
/// presented chain must lead to. Read with one GET: Secrets are cached as
/// metadata only.
pub async fn issuer_ca(
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
