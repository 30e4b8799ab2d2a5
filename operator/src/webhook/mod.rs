//! Admission webhooks for component pods: `harden` (mutating) gives them their
//! own ServiceAccount and a restricted security context; `review` (validating)
//! refuses in Enforce, or warns about in Audit, what the checklist forbids.
//! The server speaks TLS with a certificate the operator issues and renews
//! itself (`certs`), and keeps the webhook configurations (`registration`).

pub mod certs;
pub mod gateway;
pub mod harden;
pub mod registration;
pub mod review;

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
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    core::v1::Pod,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
    runtime::reflector::Store,
};
use tracing::{info, warn};

use crate::{
    api::IoTSystem,
    controller::{FIELD_MANAGER, cache::in_namespace},
    metrics::{AdmissionLabels, Metrics},
};
use certs::ServingCert;
use registration::{MUTATE_PATH, Registration, VALIDATE_PATH};
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
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("registering the webhook configurations failed: {0}")]
    Register(#[source] kube::Error),
    #[error("the webhook server could not listen: {0}")]
    Listen(#[source] std::io::Error),
}

#[derive(Clone)]
pub struct WebhookState {
    pub systems: Store<IoTSystem>,
    pub metrics: Arc<Metrics>,
    pub images: gateway::Images,
}

/// TLS settings that renewal swaps under running connections.
pub type TlsSlot = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Issues the certificate, registers the webhooks and serves them until the
/// task is dropped; renews the certificate before it expires.
pub async fn run(client: Client, options: Options, state: WebhookState) -> Result<(), Error> {
    let mut cert = ServingCert::issue(&options.hosts, SystemTime::now())?;
    register(&client, &options.registration, &cert.ca_pem).await?;
    let tls: TlsSlot = Arc::new(RwLock::new(Arc::new(cert.server_config()?)));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(Error::Listen)?;
    info!(addr = %options.listen, "serving admission webhooks");
    let server = AbortOnDrop(tokio::spawn(serve(listener, tls.clone(), state)));
    loop {
        tokio::time::sleep(RENEWAL_CHECK).await;
        if !cert.needs_renewal(SystemTime::now()) {
            continue;
        }
        let next = ServingCert::issue(&options.hosts, SystemTime::now())?;
        // Trust both CAs while connections made with the old one finish.
        let bundle = format!("{}{}", next.ca_pem, cert.ca_pem);
        if let Err(e) = register(&client, &options.registration, &bundle).await {
            warn!(error = %e, "could not publish the renewed webhook CA; keeping the current certificate");
            continue;
        }
        *tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next.server_config()?);
        cert = next;
        info!("renewed the webhook serving certificate");
        if server.0.is_finished() {
            break;
        }
    }
    Ok(())
}

/// Stops the server with the task that started it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Server-side applies both webhook configurations with `ca_pem` as caBundle.
pub async fn register(
    client: &Client,
    registration: &Registration,
    ca_pem: &str,
) -> Result<(), Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = registration.instance.clone();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(&name, &params, &Patch::Apply(registration.mutating(ca_pem)))
        .await
        .map_err(Error::Register)?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            &name,
            &params,
            &Patch::Apply(registration.validating(ca_pem)),
        )
        .await
        .map_err(Error::Register)?;
    Ok(())
}

/// Accepts TLS connections and serves the webhook routes, each connection on
/// its own task so a slow client never holds up the others.
pub async fn serve(listener: tokio::net::TcpListener, tls: TlsSlot, state: WebhookState) {
    let app = router(state);
    loop {
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
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = TowerToHyperService::new(app);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .route(VALIDATE_PATH, post(validate))
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

async fn mutate(State(state): State<WebhookState>, body: Bytes) -> Response {
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
    let systems = in_namespace(&state.systems, namespace);
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
    let systems = in_namespace(&state.systems, namespace);
    let Some((system, index)) = review::component_for(&systems, &pod.labels) else {
        count(&state, "validate", "ignored");
        return respond(response);
    };
    match review::decide(&system, &system.components[index], &pod) {
        Decision::Allow => {
            count(&state, "validate", "allowed");
            respond(response)
        }
        Decision::AllowWithWarnings(warnings) => {
            count(&state, "validate", "warned");
            let mut response = response;
            response.warnings = Some(warnings);
            respond(response)
        }
        Decision::Deny(message) => {
            count(&state, "validate", "denied");
            respond(response.deny(message))
        }
    }
}
