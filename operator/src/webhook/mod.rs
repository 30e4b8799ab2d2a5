//! Admission webhooks for component pods: `harden` (mutating) gives them their
//! own ServiceAccount and a restricted security context; `review` (validating)
//! refuses in Enforce, or warns about in Audit, what the checklist forbids.
//! For IoTSystems, `access` refuses a spec.access that grants more than the
//! requester could grant. The server speaks TLS with a certificate the
//! operator issues and renews itself (`certs`), and keeps the webhook
//! configurations (`registration`). Until every cache has listed, each
//! webhook answers 503, so the API server applies its failure policy:
//! nothing is admitted on the word of an empty cache.

pub mod access;
pub mod certs;
pub mod gateway;
pub mod harden;
pub mod refusals;
pub mod registration;
pub mod review;
pub mod shared;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
};
use tracing::{info, warn};

use crate::{
    api::IoTSystem,
    controller::FIELD_MANAGER,
    health::{Health, WebhookState as Serving},
    metrics::{AdmissionLabels, Metrics},
};
use certs::ServingCert;
use registration::{
    ComponentFilter, MUTATE_PATH, Registration, VALIDATE_PATH, VALIDATE_SYSTEM_PATH,
};
use review::Decision;

/// How often the certificate is looked at; it is renewed 30 days before expiry.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);
/// A client that does not finish its TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub registration: Registration,
    /// Names and addresses in the serving certificate.
    pub hosts: Vec<String>,
    /// Images of the containers injected in front of web components.
    pub images: gateway::Images,
    /// Serve the certificate this Secret holds (shared by every replica, kept
    /// by the leader); None: issue one in this process.
    pub shared_certificate: Option<shared::SharedSecret>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("registering the webhook configurations failed: {0}")]
    Register(#[source] kube::Error),
    #[error("the webhook server could not listen: {0}")]
    Listen(#[source] std::io::Error),
    #[error("the webhook server stopped")]
    Stopped,
    #[error("reading or writing the webhook certificate Secret failed: {0}")]
    Secret(#[source] kube::Error),
    #[error("no webhook serving certificate yet")]
    NoCertificateYet,
}

#[derive(Clone)]
pub struct WebhookState {
    pub systems: crate::controller::index::Indexed<IoTSystem>,
    pub metrics: Arc<Metrics>,
    pub images: gateway::Images,
    /// True once every cache has listed; until then every webhook answers 503.
    pub ready: tokio::sync::watch::Receiver<bool>,
    /// For the SubjectAccessReviews of the IoTSystem webhook.
    pub client: Client,
    /// Where refusals go for the decision record; None when none is kept.
    pub handovers: Option<Arc<refusals::Handovers>>,
}

impl WebhookState {
    /// Hands a refusal or warning to the decision record (never on dry runs,
    /// which must have no side effects).
    fn hand_over(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        h: impl FnOnce() -> refusals::Handover,
    ) {
        if request.dry_run {
            return;
        }
        if let Some(handovers) = &self.handovers {
            handovers.hand_over(h());
        }
    }
}

/// TLS settings that renewal swaps under running connections.
pub type TlsSlot = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Calls a client may abandon on one connection before it is closed: well
/// above the hundreds the API server multiplexes on one under load, still a
/// bound against a flood of resets.
const MAX_RESET_STREAMS: usize = 1024;

/// How long a connection opened while the process stops is served before
/// it too is closed.
const LATE_CONNECTION_GRACE: Duration = Duration::from_secs(1);
/// How long to wait before registering again after a failure.
const REGISTER_RETRY: Duration = Duration::from_secs(5);
/// How long systems may keep changing before the match conditions follow.
const FILTER_SETTLE: Duration = Duration::from_millis(200);

/// The webhook configurations as last published, and the one way to change
/// them: the webhook task (start, certificate renewal, systems removed) and
/// every reconcile (before a system reports Ready, its pods must be covered
/// by the match conditions) go through here.
pub struct Registrar {
    client: Client,
    pub registration: Registration,
    published: tokio::sync::Mutex<Published>,
    /// The newest systems version covered, plus one (0: none).
    covered: std::sync::atomic::AtomicU64,
    /// Held while covering, so publications do not queue one per change.
    covering: tokio::sync::Mutex<()>,
}

struct Published {
    ca_bundle: String,
    /// None until the first publication.
    filter: Option<ComponentFilter>,
}

impl Registrar {
    pub fn new(client: Client, registration: Registration, ca_pem: &str) -> Self {
        Self {
            client,
            registration,
            published: tokio::sync::Mutex::new(Published {
                ca_bundle: ca_pem.to_string(),
                filter: None,
            }),
            covered: Default::default(),
            covering: Default::default(),
        }
    }

    /// Server-side applies both configurations, unless they already say
    /// this. `ca_bundle` None keeps the current one.
    async fn publish(
        &self,
        ca_bundle: Option<String>,
        filter: ComponentFilter,
    ) -> Result<(), Error> {
        let mut published = self.published.lock().await;
        let ca_bundle = ca_bundle.unwrap_or_else(|| published.ca_bundle.clone());
        // Never publish configurations nobody's certificate could satisfy.
        if ca_bundle.is_empty() {
            return Err(Error::NoCertificateYet);
        }
        if published.filter.as_ref() == Some(&filter) && published.ca_bundle == ca_bundle {
            return Ok(());
        }
        register(&self.client, &self.registration, &ca_bundle, &filter).await?;
        *published = Published {
            ca_bundle,
            filter: Some(filter),
        };
        Ok(())
    }

    /// Makes the match conditions cover the pods of every system in
    /// `systems`, as of their `changes` count now (read before the systems,
    /// so they are at least that new). A version already covered
    /// costs nothing: every reconcile asks, and rebuilding the filter from
    /// 1,000 systems each time added up.
    pub async fn cover(
        &self,
        systems: &crate::controller::index::Indexed<IoTSystem>,
        changes: &tokio::sync::watch::Receiver<u64>,
    ) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        let version = *changes.borrow();
        // Stored plus one: 0 is "none yet".
        let covered = |v: u64| self.covered.load(Ordering::Acquire) > v;
        if covered(version) {
            return Ok(());
        }
        // One publication at a time, of the newest systems: those that
        // waited mostly find themselves covered by it. Each publication
        // makes the API server compile every match condition again; a
        // burst of 1,000 new systems made one per change.
        let _turn = self.covering.lock().await;
        if covered(version) {
            return Ok(());
        }
        let latest = *changes.borrow();
        self.publish(None, ComponentFilter::of(&systems.state()))
            .await?;
        self.covered
            .fetch_max(latest.saturating_add(1), Ordering::AcqRel);
        Ok(())
    }
}

/// Listens, and serves the webhooks until the task is dropped. The leader
/// (the only process when there is no election) also registers them once
/// every cache has listed, retrying until the API server takes them; keeps
/// the certificate renewed (in the shared Secret, when there is one); and
/// narrows the match conditions when systems go. `health` follows the server.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    registrar: Arc<Registrar>,
    cert: Option<ServingCert>,
    options: Options,
    state: WebhookState,
    systems_changed: tokio::sync::watch::Receiver<u64>,
    mut leader: tokio::sync::watch::Receiver<bool>,
    health: Arc<Health>,
) -> Result<(), Error> {
    let first = match &cert {
        Some(cert) => cert.server_config()?,
        None => certs::no_certificate_yet()?,
    };
    let tls: TlsSlot = Arc::new(RwLock::new(Arc::new(first)));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(Error::Listen)?;
    info!(addr = %options.listen, "serving admission webhooks");
    let mut ready = state.ready.clone();
    let systems = state.systems.clone();
    let client = state.client.clone();
    let mut systems_changed = systems_changed;
    let mut server = AbortOnDrop(
        on_own_thread(serve(listener, tls.clone(), state, health.terminating()))
            .map_err(Error::Listen)?,
    );

    // With a shared certificate every replica serves what the Secret holds,
    // and is ready once it holds one and the caches are filled.
    let (secret_changed_tx, mut secret_changed) = tokio::sync::watch::channel(0u64);
    let shared = options.shared_certificate.clone().map(|secret| {
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), &secret.namespace);
        (api, secret)
    });
    let _follower = shared.clone().map(|(api, secret)| {
        let (loaded_tx, mut loaded) = tokio::sync::watch::channel(false);
        let follow = tokio::spawn(shared::follow(
            api,
            secret,
            tls.clone(),
            loaded_tx,
            secret_changed_tx,
        ));
        let mut ready = ready.clone();
        let health = health.clone();
        let serving = tokio::spawn(async move {
            if loaded.wait_for(|l| *l).await.is_ok() && ready.wait_for(|l| *l).await.is_ok() {
                health.set_webhooks(Serving::Serving);
            }
        });
        (AbortOnDrop(follow), AbortOnDrop(serving))
    });

    // Registered only once the systems are known (the match conditions come
    // from their selectors) and by the leader only. An earlier registration
    // stays meanwhile; with a certificate of its own this process fails
    // those calls, so the failure policy decides.
    tokio::select! {
        _ = async {
            let _ = ready.wait_for(|listed| *listed).await;
            let _ = leader.wait_for(|leading| *leading).await;
        } => {},
        _ = &mut server.0 => return Err(Error::Stopped),
    }
    let keep = || async {
        let filter = ComponentFilter::of(&systems.state());
        match &shared {
            Some((api, secret)) => {
                shared::ensure(api, secret, &options.hosts, &registrar, filter).await
            }
            None => registrar.publish(None, filter).await,
        }
    };
    while let Err(e) = keep().await {
        warn!(error = %e, "registering the webhook configurations failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(REGISTER_RETRY) => {},
            _ = &mut server.0 => return Err(Error::Stopped),
        }
    }
    if shared.is_none() {
        health.set_webhooks(Serving::Serving);
    }
    let mut cert = cert;
    let mut renewal = tokio::time::interval(RENEWAL_CHECK);
    loop {
        tokio::select! {
            _ = renewal.tick() => {
                if shared.is_some() {
                    if let Err(e) = keep().await {
                        warn!(error = %e, "keeping the shared webhook certificate failed; retrying within the hour");
                    }
                    continue;
                }
                let Some(current) = cert.as_ref() else { continue };
                if !current.needs_renewal(SystemTime::now()) {
                    continue;
                }
                let next = ServingCert::issue(&options.hosts, SystemTime::now())?;
                // Trust both CAs while connections made with the old one finish.
                let bundle = format!("{}{}", next.ca_pem, current.ca_pem);
                let filter = ComponentFilter::of(&systems.state());
                if let Err(e) = registrar.publish(Some(bundle), filter).await {
                    warn!(error = %e, "could not publish the renewed webhook CA; keeping the current certificate");
                    continue;
                }
                *tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next.server_config()?);
                cert = Some(next);
                info!("renewed the webhook serving certificate");
            }
            // Someone changed or deleted the shared Secret: put it right.
            changed = secret_changed.changed(), if shared.is_some() => {
                if changed.is_err() {
                    return Err(Error::Stopped);
                }
                if let Err(e) = keep().await {
                    warn!(error = %e, "keeping the shared webhook certificate failed; retrying on the next change");
                    tokio::time::sleep(shared::RETRY).await;
                }
            }
            changed = systems_changed.changed() => {
                if changed.is_err() {
                    return Err(Error::Stopped);
                }
                // Let a burst of changes settle into one update.
                tokio::time::sleep(FILTER_SETTLE).await;
                systems_changed.mark_unchanged();
                if let Err(e) = registrar.cover(&systems, &systems_changed).await {
                    warn!(error = %e, "updating the webhooks' match conditions failed; retrying on the next change");
                }
            }
            _ = &mut server.0 => return Err(Error::Stopped),
        }
    }
}

/// Stops the server with the task that started it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `serve` on a runtime of its own thread and returns a handle on the
/// main runtime: it finishes when `serve` does, and aborting it stops
/// `serve`. Reconciles judge thousands of pods on the main runtime's
/// workers; an admission call queued behind them waited seconds.
fn on_own_thread(
    serve: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = serve => {},
                    _ = stopped => {},
                }
            });
            drop(done);
        })?;
    Ok(tokio::spawn(async move {
        // Dropped with this task, `stop` ends the thread's runtime.
        let _stop = stop;
        let _ = finished.await;
    }))
}

/// Server-side applies both webhook configurations with `ca_pem` as
/// caBundle, each unless the API server already holds what it would say (a
/// new leader or a restarted process finds them in place and writes nothing).
async fn register(
    client: &Client,
    registration: &Registration,
    ca_pem: &str,
    filter: &ComponentFilter,
) -> Result<(), Error> {
    let name = &registration.instance;
    apply_if_changed(client, name, registration.mutating(ca_pem, filter)).await?;
    apply_if_changed(client, name, registration.validating(ca_pem, filter)).await
}

/// Server-side applies one configuration unless the server's copy already says the same.
async fn apply_if_changed<K>(client: &Client, name: &str, desired: K) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let api = Api::<K>::all(client.clone());
    let current = api.get_opt(name).await.map_err(Error::Register)?;
    if !current.is_some_and(|c| same_webhooks(&c, &desired)) {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(desired))
            .await
            .map_err(Error::Register)?;
    }
    Ok(())
}

/// Whether a configuration on the server says what `desired` says: its
/// owners and, per webhook, where it calls, with which CA, for what and with
/// which failure policy. Fields the API server defaults are left out.
fn same_webhooks<K: serde::Serialize + kube::Resource>(current: &K, desired: &K) -> bool {
    fn essence(config: &serde_json::Value) -> serde_json::Value {
        let webhooks = config["webhooks"].as_array().cloned().unwrap_or_default();
        let webhooks: Vec<serde_json::Value> = webhooks
            .iter()
            .map(|w| {
                let mut rules = w["rules"].clone();
                for rule in rules.as_array_mut().into_iter().flatten() {
                    if let Some(rule) = rule.as_object_mut() {
                        rule.remove("scope");
                    }
                }
                serde_json::json!({
                    "name": w["name"],
                    "clientConfig": w["clientConfig"],
                    "failurePolicy": w["failurePolicy"],
                    "matchConditions": w["matchConditions"],
                    "namespaceSelector": w["namespaceSelector"],
                    "rules": rules,
                })
            })
            .collect();
        serde_json::Value::Array(webhooks)
    }
    let owners = |k: &K| k.meta().owner_references.clone().unwrap_or_default();
    let (Ok(c), Ok(d)) = (serde_json::to_value(current), serde_json::to_value(desired)) else {
        return false;
    };
    owners(current) == owners(desired) && essence(&c) == essence(&d)
}

/// Accepts TLS connections and serves the webhook routes, each connection on
/// its own task so a slow client never holds up the others.
/// Connections live in a set owned by this future: when the server stops,
/// kept-alive connections stop with it, rather than answer for a server that
/// is gone. Once `draining` turns true (the process was asked to stop), the
/// clients are told to go elsewhere: the API server keeps its connections to
/// a replica, and one cut when the replica exits failed the calls on it.
/// HTTP/2 connections finish their calls and close (GOAWAY), and every
/// answer then says `Connection: close`, which ends an HTTP/1.1 connection
/// (what the API server uses for Service webhooks) after its next call.
/// An idle HTTP/1.1 connection is not closed: the client may be writing a
/// call into it at that moment, and fails it ("broken pipe").
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: TlsSlot,
    state: WebhookState,
    draining: tokio::sync::watch::Receiver<bool>,
) {
    let closing = draining.clone();
    let app = router(state).layer(axum::middleware::map_response(
        move |mut response: Response| {
            let close = *closing.borrow();
            async move {
                if close {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                response
            }
        },
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections as they go.
        while connections.try_join_next().is_some() {}
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accepting a webhook connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let config = tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        let app = app.clone();
        let mut draining = draining.clone();
        connections.spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = TowerToHyperService::new(app);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // The API server resets each call it stops waiting for (its
            // timeout). h2 closes a connection after 20 such resets by
            // default, failing every other call on it: under load that
            // refused hundreds of pods that were being answered.
            builder
                .http2()
                .max_pending_accept_reset_streams(Some(MAX_RESET_STREAMS));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            if !http2 {
                // `Connection: close` on its next answer ends it.
                let _ = connection.await;
                return;
            }
            let late = *draining.borrow();
            let stop = async {
                if draining.wait_for(|d| *d).await.is_err() {
                    // No sender: nothing will ask this process to stop.
                    std::future::pending::<()>().await;
                }
                if late {
                    // Opened after the stop began: its first calls are
                    // already on their way.
                    tokio::time::sleep(LATE_CONNECTION_GRACE).await;
                }
            };
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .route(VALIDATE_PATH, post(validate))
        .route(VALIDATE_SYSTEM_PATH, post(validate_system))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// A body that is not an AdmissionReview gets 400 and says why.
fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, Box<Response>> {
    let invalid = |message: String| {
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(AdmissionResponse::invalid(message).into_review()),
            )
                .into_response(),
        )
    };
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not an AdmissionReview: {e}")))?;
    review
        .try_into()
        .map_err(|e| invalid(format!("the AdmissionReview has no usable request: {e}")))
}

fn respond(response: AdmissionResponse) -> Response {
    Json(response.into_review()).into_response()
}

fn count(state: &WebhookState, webhook: &'static str, outcome: &'static str) {
    state
        .metrics
        .admission
        .get_or_create(&AdmissionLabels { webhook, outcome })
        .inc();
}

/// 503 until every cache has listed: an empty cache would admit anything.
fn not_ready(state: &WebhookState, webhook: &'static str) -> Option<Response> {
    if *state.ready.borrow() {
        return None;
    }
    count(state, webhook, "unready");
    Some(
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "iotposture is starting: its caches are not filled yet",
        )
            .into_response(),
    )
}

async fn mutate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let _timer = state.metrics.admission_started("mutate");
    if let Some(r) = not_ready(&state, "mutate") {
        return r;
    }
    let request = match parse(&body) {
        Ok(r) => r,
        Err(e) => {
            count(&state, "mutate", "invalid");
            return *e;
        }
    };
    let response = AdmissionResponse::from(&request);
    let (Some(object), Some(namespace), Operation::Create) = (
        request.object.as_ref(),
        request.namespace.as_deref(),
        &request.operation,
    ) else {
        count(&state, "mutate", "ignored");
        return respond(response);
    };
    let original = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return respond(response.deny(format!("cannot read the pod: {e}"))),
    };
    let pod: Pod = match serde_json::from_value(original.clone()) {
        Ok(p) => p,
        Err(e) => {
            count(&state, "mutate", "invalid");
            return respond(response.deny(format!("the pod does not parse: {e}")));
        }
    };
    let systems = state.systems.in_namespace(namespace);
    let Some((system, index)) = review::component_for(&systems, pod.labels()) else {
        count(&state, "mutate", "ignored");
        return respond(response);
    };
    if system.mode == crate::api::Mode::Audit {
        // Audit changes nothing; the validating webhook still warns.
        count(&state, "mutate", "ignored");
        return respond(response);
    }
    let component = &system.components[index];
    // The gateway first, so that its containers are hardened too.
    let pod_before = pod.clone();
    let mut pod = pod;
    if gateway::inject_gateway(&mut pod, &system, component, &state.images) {
        harden::record_changes(&mut pod, &["gateway".to_string()]);
    }
    let hardened = harden::harden_pod(&pod, &system, component);
    if hardened.pod == pod_before {
        count(&state, "mutate", "allowed");
        return respond(response);
    }
    let patched = match serde_json::to_value(&hardened.pod) {
        Ok(v) => v,
        Err(e) => return respond(response.deny(format!("cannot write the hardened pod: {e}"))),
    };
    match response
        .clone()
        .with_patch(json_patch::diff(&original, &patched))
    {
        Ok(r) => {
            count(&state, "mutate", "patched");
            respond(r)
        }
        Err(e) => respond(response.deny(format!("cannot encode the patch: {e}"))),
    }
}

async fn validate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let _timer = state.metrics.admission_started("validate");
    if let Some(r) = not_ready(&state, "validate") {
        return r;
    }
    let request = match parse(&body) {
        Ok(r) => r,
        Err(e) => {
            count(&state, "validate", "invalid");
            return *e;
        }
    };
    let response = AdmissionResponse::from(&request);
    let (Some(object), Some(namespace)) = (request.object.as_ref(), request.namespace.as_deref())
    else {
        count(&state, "validate", "ignored");
        return respond(response);
    };
    let value = serde_json::to_value(object).unwrap_or_default();
    let pod = match review::pod_shape(&request.kind.kind, &value) {
        None => {
            count(&state, "validate", "ignored");
            return respond(response);
        }
        Some(Err(e)) => {
            count(&state, "validate", "invalid");
            return respond(response.deny(format!(
                "iotposture cannot read this {}: {e}",
                request.kind.kind
            )));
        }
        Some(Ok(p)) => p,
    };
    let systems = state.systems.in_namespace(namespace);
    let Some((system, index)) = review::component_for(&systems, &pod.labels) else {
        count(&state, "validate", "ignored");
        return respond(response);
    };
    let handover = |message: String, warned: bool| refusals::Handover {
        namespace: namespace.to_string(),
        system: system.name.clone(),
        system_uid: system.owner.uid.clone(),
        subject: format!(
            "{}/{}",
            request.kind.kind,
            pod.name.rsplit('/').next().unwrap_or_default()
        ),
        message,
        warned,
    };
    match review::decide(&system, &system.components[index], &pod) {
        Decision::Allow => {
            count(&state, "validate", "allowed");
            respond(response)
        }
        Decision::AllowWithWarnings(warnings) => {
            count(&state, "validate", "warned");
            state.hand_over(&request, || handover(warnings.join(" | "), true));
            let mut response = response;
            response.warnings = Some(warnings);
            respond(response)
        }
        Decision::Deny(message) => {
            count(&state, "validate", "denied");
            state.hand_over(&request, || handover(message.clone(), false));
            respond(response.deny(message))
        }
    }
}

/// IoTSystems: whoever adds a subject to spec.access must be able to grant
/// that access themselves.
async fn validate_system(State(state): State<WebhookState>, body: Bytes) -> Response {
    const WEBHOOK: &str = "iotsystem";
    let _timer = state.metrics.admission_started(WEBHOOK);
    // Needs no cache: it judges the request alone, so it serves from the start.
    let request = match parse(&body) {
        Ok(r) => r,
        Err(e) => {
            count(&state, WEBHOOK, "invalid");
            return *e;
        }
    };
    let response = AdmissionResponse::from(&request);
    let Some(object) = request.object.as_ref() else {
        count(&state, WEBHOOK, "ignored");
        return respond(response);
    };
    let parsed = |o: &DynamicObject| {
        serde_json::to_value(o)
            .and_then(serde_json::from_value::<IoTSystem>)
            .map_err(|e| e.to_string())
    };
    let system = match parsed(object) {
        Ok(s) => s,
        Err(e) => {
            count(&state, WEBHOOK, "invalid");
            return respond(response.deny(format!("the IoTSystem does not parse: {e}")));
        }
    };
    let old = request.old_object.as_ref().and_then(|o| parsed(o).ok());
    let namespace = request.namespace.clone().unwrap_or_default();
    // What the controller would refuse anyway is refused at the door, with
    // the same message (CEL cannot check every field, e.g. flows' `from`).
    let mut candidate = system.clone();
    candidate.metadata.namespace = Some(namespace.clone());
    candidate
        .metadata
        .uid
        .get_or_insert_with(|| request.uid.clone());
    if candidate.metadata.name.is_none() {
        candidate.metadata.name = Some(request.name.clone()).filter(|n| !n.is_empty());
    }
    candidate
        .metadata
        .name
        .get_or_insert_with(|| "new-iotsystem".into());
    let alone = crate::controller::validate::Neighbourhood {
        pods: &[],
        systems: &[],
    };
    // A refused update goes into the existing system's record; a refused
    // create has no system, and so no record, yet.
    let handover = |message: &str| {
        let old = old.as_ref()?;
        Some(refusals::Handover {
            namespace: namespace.clone(),
            system: old.metadata.name.clone()?,
            system_uid: old.metadata.uid.clone()?,
            subject: format!("IoTSystem/{}", old.metadata.name.as_deref()?),
            message: message.to_string(),
            warned: false,
        })
    };
    let refuse = |message: String| {
        if let Some(h) = handover(&message) {
            state.hand_over(&request, || h);
        }
        respond(response.clone().deny(message))
    };
    if let Err(invalid) = crate::controller::validate::validate(&candidate, &alone) {
        count(&state, WEBHOOK, "denied");
        return refuse(format!("IoTSystem spec is invalid: {invalid}"));
    }
    let requester = access::Requester::of(&request);
    let name = system
        .metadata
        .name
        .clone()
        .or_else(|| (!request.name.is_empty()).then(|| request.name.clone()));
    match access::review(
        &access::ApiServer(state.client.clone()),
        &requester,
        &namespace,
        name.as_deref(),
        &system,
        old.as_ref(),
    )
    .await
    {
        Ok(()) => {
            count(&state, WEBHOOK, "allowed");
            respond(response)
        }
        Err(refusal) => {
            count(&state, WEBHOOK, "denied");
            refuse(refusal.message(&requester, &namespace))
        }
    }
}

#[cfg(test)]
mod registering {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use registration::Endpoint;

    #[test]
    fn configurations_as_the_server_keeps_them_are_not_written_again() {
        let r = Registration {
            instance: "iotposture".into(),
            endpoint: Endpoint::Url("https://127.0.0.1:8443".into()),
            failure_policy: "Fail".into(),
            own_namespace: None,
            managed_namespace: None,
            timeout_seconds: 5,
            owner: None,
        };
        let filter = ComponentFilter::default();
        let desired = r.validating("CA", &filter);
        // The API server fills in defaults and metadata of its own.
        let mut stored = serde_json::to_value(&desired).unwrap();
        stored["metadata"]["resourceVersion"] = "7".into();
        for hook in stored["webhooks"].as_array_mut().unwrap() {
            hook["matchPolicy"] = "Equivalent".into();
            hook["objectSelector"] = serde_json::json!({});
            for rule in hook["rules"].as_array_mut().unwrap() {
                rule["scope"] = "*".into();
            }
        }
        let stored: ValidatingWebhookConfiguration = serde_json::from_value(stored).unwrap();
        assert!(same_webhooks(&stored, &desired));
        assert!(!same_webhooks(&stored, &r.validating("OTHER CA", &filter)));
        let mut failing_open = r.clone();
        failing_open.failure_policy = "Ignore".into();
        assert!(!same_webhooks(
            &stored,
            &failing_open.validating("CA", &filter)
        ));
        let mut owned = r.clone();
        owned.owner = Some(Default::default());
        assert!(!same_webhooks(&stored, &owned.validating("CA", &filter)));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use axum::body::to_bytes;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A component pod (or workload), with one field replaced by anything.
    fn object() -> impl Strategy<Value = (String, Value)> {
        let fields = prop::sample::select(vec![
            "/metadata/labels",
            "/metadata/labels/app",
            "/metadata/name",
            "/spec",
            "/spec/containers",
            "/spec/containers/0",
            "/spec/containers/0/ports",
            "/spec/containers/0/securityContext",
            "/spec/securityContext",
            "/spec/volumes",
            "/spec/template",
        ]);
        (
            prop::sample::select(vec!["Pod", "Deployment", "CronJob", "IoTSystem"]),
            fields,
            any_json(),
            any::<bool>(),
        )
            .prop_map(|(kind, field, value, replace)| {
                let pod = json!({"metadata": {"name": "p", "labels": {"app": "dashboard"}},
                    "spec": {"containers": [{"name": "ui", "image": "registry.example.com/ui:1.0",
                        "ports": [{"containerPort": 8443}]}]}});
                let mut object = match kind {
                    "Pod" => pod,
                    "CronJob" => json!({"metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {"template": pod}}}}),
                    "IoTSystem" => serde_json::to_value(
                        serde_saphyr::from_str::<IoTSystem>(crate::build::fixtures::FACTORY).unwrap(),
                    )
                    .unwrap(),
                    _ => json!({"metadata": {"name": "d"}, "spec": {"template": pod}}),
                };
                if replace && let Some(slot) = object.pointer_mut(field) {
                    *slot = value;
                }
                (kind.to_string(), object)
            })
    }

    fn review(kind: &str, object: &Value, operation: &str) -> Vec<u8> {
        let (group, resource) = match kind {
            "Pod" => ("", "pods"),
            "CronJob" => ("batch", "cronjobs"),
            "IoTSystem" => ("iotposture.dev", "iotsystems"),
            _ => ("apps", "deployments"),
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": group, "version": "v1", "kind": kind},
                "resource": {"group": group, "version": "v1", "resource": resource},
                "namespace": "plant", "operation": operation, "userInfo": {"username": "u"},
                "object": object}
        }))
        .unwrap()
    }

    fn state() -> WebhookState {
        let mut system: IoTSystem =
            serde_saphyr::from_str(crate::build::fixtures::FACTORY).unwrap();
        system.metadata.uid = Some("uid-factory".into());
        let systems = crate::controller::index::Indexed::of([system]);
        WebhookState {
            systems,
            metrics: Arc::new(Metrics::default()),
            images: gateway::Images {
                gateway: "gw:1".into(),
                exporter: "exp:1".into(),
            },
            ready: tokio::sync::watch::channel(true).1,
            // Nothing listens there: SubjectAccessReviews fail, and say so.
            client: Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap()))
                .unwrap(),
            handovers: None,
        }
    }

    /// A TLS connection to `serve` at `addr` offering `alpn`.
    async fn connect(
        addr: SocketAddr,
        cert: &certs::ServingCert,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.chain[1].clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap()
    }

    type Empty = http_body_util::Empty<Bytes>;

    fn healthz() -> hyper::Request<Empty> {
        hyper::Request::get("https://127.0.0.1/healthz")
            .body(Empty::new())
            .unwrap()
    }

    /// A kept-alive HTTP/1.1 connection, and a handle that finishes when
    /// the server closes it.
    async fn http1(
        addr: SocketAddr,
        cert: &certs::ServingCert,
    ) -> (
        hyper::client::conn::http1::SendRequest<Empty>,
        tokio::task::JoinHandle<()>,
    ) {
        let stream = connect(addr, cert, b"http/1.1").await;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        (send, tokio::spawn(async move { drop(connection.await) }))
    }

    /// The same over HTTP/2.
    async fn http2(
        addr: SocketAddr,
        cert: &certs::ServingCert,
    ) -> (
        hyper::client::conn::http2::SendRequest<Empty>,
        tokio::task::JoinHandle<()>,
    ) {
        let stream = connect(addr, cert, b"h2").await;
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        (send, tokio::spawn(async move { drop(connection.await) }))
    }

    async fn closes_within(closed: &mut tokio::task::JoinHandle<()>, within: Duration) -> bool {
        tokio::time::timeout(within, closed).await.is_ok()
    }

    #[tokio::test]
    async fn asked_to_stop_it_sends_its_clients_elsewhere_without_cutting_a_call() {
        let cert = certs::ServingCert::issue(&["127.0.0.1".into()], SystemTime::now()).unwrap();
        let tls: TlsSlot = Arc::new(RwLock::new(Arc::new(cert.server_config().unwrap())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, draining) = tokio::sync::watch::channel(false);
        let _server = AbortOnDrop(tokio::spawn(serve(listener, tls, state(), draining)));
        let short = Duration::from_millis(300);

        let (mut one, mut one_closed) = http1(addr, &cert).await;
        let answer = one.send_request(healthz()).await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers().get("connection"), None);
        let (mut two, mut two_closed) = http2(addr, &cert).await;
        assert_eq!(two.send_request(healthz()).await.unwrap().status(), 200);
        // Both kept alive while the process runs.
        assert!(!closes_within(&mut one_closed, short).await);
        assert!(!closes_within(&mut two_closed, short).await);

        stop.send_replace(true);
        // HTTP/2: GOAWAY, the connection closes.
        assert!(closes_within(&mut two_closed, Duration::from_secs(5)).await);
        // HTTP/1.1: idle, it stays (closing it could cut a call being
        // written); its next answer says close, and then it closes.
        assert!(!closes_within(&mut one_closed, short).await);
        let answer = one.send_request(healthz()).await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers().get("connection").unwrap(), "close");
        assert!(closes_within(&mut one_closed, Duration::from_secs(5)).await);

        // A connection opened while stopping is answered, then closed in turn.
        let (mut late, mut late_closed) = http2(addr, &cert).await;
        assert_eq!(late.send_request(healthz()).await.unwrap().status(), 200);
        assert!(closes_within(&mut late_closed, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn the_server_thread_ends_with_its_handle_either_way() {
        // Finishing: the handle completes, from another runtime's thread.
        let (tx, rx) = tokio::sync::oneshot::channel::<std::thread::ThreadId>();
        let handle = on_own_thread(async move {
            let _ = tx.send(std::thread::current().id());
        })
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the handle completes when the future does")
            .unwrap();
        assert_ne!(rx.await.unwrap(), std::thread::current().id());

        // Aborted: the future is dropped on its thread.
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        let handle = on_own_thread(async move {
            let _guard = dropped_tx;
            std::future::pending::<()>().await
        })
        .unwrap();
        drop(AbortOnDrop(handle));
        tokio::time::timeout(Duration::from_secs(5), dropped)
            .await
            .expect("aborting the handle drops the served future")
            .unwrap_err();
    }

    #[tokio::test]
    async fn each_answer_is_timed_under_its_own_webhook() {
        let state = state();
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "dashboard"}},
            "spec": {"containers": [{"name": "ui", "image": "registry.example.com/ui:1.0"}]}});
        let body = Bytes::from(review("Pod", &pod, "CREATE"));
        mutate(State(state.clone()), body.clone()).await;
        mutate(State(state.clone()), body.clone()).await;
        validate(State(state.clone()), body.clone()).await;
        // Even a body that is not a review is an answer, and timed.
        validate_system(State(state.clone()), Bytes::from_static(b"{")).await;
        let text = state.metrics.encode();
        for (webhook, answers) in [("mutate", 2), ("validate", 1), ("iotsystem", 1)] {
            let line = format!(
                "iotposture_admission_duration_seconds_count{{webhook=\"{webhook}\"}} {answers}"
            );
            assert!(text.contains(&line), "no `{line}` in\n{text}");
        }
    }

    /// Every answer is 200 with an AdmissionReview for the same request, or
    /// 400 saying why the body is not one.
    fn answered(response: Response) -> Result<(), TestCaseError> {
        let status = response.status();
        let body = futures::executor::block_on(to_bytes(response.into_body(), 1 << 20)).unwrap();
        let review: Value = serde_json::from_slice(&body)
            .map_err(|e| TestCaseError::fail(format!("{status}: not JSON: {e}")))?;
        match status.as_u16() {
            200 => prop_assert_eq!(&review["response"]["uid"], "u-1"),
            400 => prop_assert_eq!(review["response"]["allowed"].as_bool(), Some(false)),
            other => prop_assert!(false, "status {}", other),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_review_gets_an_answer((kind, object) in object(), op in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE"])) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _guard = rt.enter();
            let state = state();
            let body = Bytes::from(review(&kind, &object, op));
            let (m, v, s) = rt.block_on(async {
                (
                    mutate(State(state.clone()), body.clone()).await,
                    validate(State(state.clone()), body.clone()).await,
                    validate_system(State(state), body).await,
                )
            });
            answered(m)?;
            answered(v)?;
            answered(s)?;
        }

        #[test]
        fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _guard = rt.enter();
            let body = Bytes::from(bytes);
            for response in rt.block_on(async {
                let state = state();
                [
                    mutate(State(state.clone()), body.clone()).await,
                    validate(State(state.clone()), body.clone()).await,
                    validate_system(State(state), body).await,
                ]
            }) {
                answered(response)?;
            }
        }
    }
}
