//! The IoTSystem controller. Each reconcile is a short pipeline:
//!
//! 1. fetch: the system, and pods and sibling systems from the watch caches
//! 2. `validate`: a `ValidatedSystem`, or a reason the spec cannot be enforced
//! 3. `build`: the desired objects, from pure functions
//! 4. `apply`: server-side apply what differs, prune what is no longer wanted
//! 5. `status`: observedGeneration, the Ready condition and the managed objects
//!
//! Only steps 4 and 5 (and Events) talk to the API server.

pub mod apply;
pub mod status;
pub mod validate;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future};
use k8s_openapi::{
    api::{
        core::v1::{Pod, ServiceAccount},
        networking::v1::NetworkPolicy,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{PartialObjectMeta, Selector, SelectorExt},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::{info, instrument, warn};

use crate::{
    api::{IoTSystem, Mode},
    build::{DesiredObjects, build_all, meta::managed_selector},
    metrics::{ErrorLabels, Metrics},
};
use apply::{ApplyError, ApplyReport};
use status::Outcome;
use validate::{Neighbourhood, ValidationError, validate};

/// The one field manager for every object we apply.
pub const FIELD_MANAGER: &str = "iotposture";
/// Kinds the controller creates, keeps and prunes.
pub const MANAGED_KINDS: [&str; 4] = ["ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"];
/// A safety net behind the watches: look again now and then even if nothing moved.
const RESYNC: Duration = Duration::from_secs(600);
const RETRY: Duration = Duration::from_secs(15);
/// A refused selector depends on other systems and pods; look again soon even
/// if the event that settles it was missed.
const RECHECK_CONFLICT: Duration = Duration::from_secs(30);
/// Coalesces bursts of events, and lets every cache catch up with an event that
/// several watches see.
const DEBOUNCE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("writing status failed: {0}")]
    Status(#[source] kube::Error),
    #[error("the IoTSystem has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Apply(e) => e.reason(),
            Error::Status(_) => "StatusFailed",
            Error::NoNamespace => "InvalidSpec",
        }
    }
}

/// Watch caches the pipeline reads instead of the API server.
#[derive(Clone)]
pub struct Caches {
    pub systems: Store<IoTSystem>,
    pub pods: Store<PartialObjectMeta<Pod>>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub network_policies: Store<NetworkPolicy>,
}

pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Injectable for tests that assert exact status.
    pub clock: fn() -> Time,
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Runs the controller with the HTTP endpoints until SIGINT/SIGTERM.
pub async fn run_with_http(
    client: Client,
    namespace: Option<String>,
    http_addr: SocketAddr,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(http_addr).await?;
    info!(%http_addr, "serving /metrics, /healthz and /readyz");
    let http = tokio::spawn(crate::http::serve(listener, metrics.clone(), ready.clone()));
    run(client, namespace, metrics, ready, shutdown_signal()).await;
    http.abort();
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Runs the controller until `shutdown` completes. With `namespace` it watches
/// and manages that namespace only. `ready` turns true once the caches are filled.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let scope = Scope {
        client: client.clone(),
        namespace,
    };

    // Only our own objects: the label filter keeps caches small at cluster scale.
    let owned = watcher::Config::default().labels(&managed_selector());
    macro_rules! owned_cache {
        ($kind:ty) => {{
            let (store, writer) = reflector::store::<$kind>();
            let stream = reflector(writer, watcher(scope.api::<$kind>(), owned.clone()))
                .default_backoff()
                .touched_objects();
            (store, stream)
        }};
    }
    let (service_accounts, sa_stream) = owned_cache!(ServiceAccount);
    let (roles, role_stream) = owned_cache!(Role);
    let (role_bindings, binding_stream) = owned_cache!(RoleBinding);
    let (network_policies, netpol_stream) = owned_cache!(NetworkPolicy);

    // Pod labels decide which component a pod belongs to; metadata is enough.
    let (pods, pod_writer) = reflector::store();
    let pod_stream = reflector(
        pod_writer,
        watcher(
            scope.api::<PartialObjectMeta<Pod>>(),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    // A change to one system can settle a selector conflict of a sibling.
    let sibling_stream = watcher(
        scope.api::<PartialObjectMeta<IoTSystem>>(),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();

    let controller = Controller::new(scope.api::<IoTSystem>(), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().debounce(DEBOUNCE));
    let systems = controller.store();
    let caches = Caches {
        systems: systems.clone(),
        pods: pods.clone(),
        service_accounts: service_accounts.clone(),
        roles: roles.clone(),
        role_bindings: role_bindings.clone(),
        network_policies: network_policies.clone(),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(Context {
        client,
        caches: caches.clone(),
        metrics,
        recorder,
        clock: now,
    });

    let readiness = {
        let caches = caches.clone();
        async move {
            let _ = future::join(
                future::join4(
                    caches.systems.wait_until_ready(),
                    caches.pods.wait_until_ready(),
                    caches.service_accounts.wait_until_ready(),
                    caches.roles.wait_until_ready(),
                ),
                future::join(
                    caches.role_bindings.wait_until_ready(),
                    caches.network_policies.wait_until_ready(),
                ),
            )
            .await;
            ready.store(true, Ordering::Relaxed);
            info!("caches filled; reconciling");
        }
    };
    tokio::spawn(readiness);

    let systems_for_pods = systems.clone();
    let systems_for_siblings = systems.clone();
    controller
        .owns_stream(sa_stream)
        .owns_stream(role_stream)
        .owns_stream(binding_stream)
        .owns_stream(netpol_stream)
        .watches_stream(pod_stream, move |pod| {
            systems_selecting(&systems_for_pods, &pod)
        })
        .watches_stream(sibling_stream, move |sys| {
            siblings_of(&systems_for_siblings, &sys)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                // Already counted and logged by error_policy when it came from reconcile.
                tracing::debug!(error = %e, "reconcile did not complete");
            }
            future::ready(())
        })
        .await;
}

/// All namespaces, or the one the operator was told to manage.
struct Scope {
    client: Client,
    namespace: Option<String>,
}

impl Scope {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// The systems in the pod's namespace with a component selecting the pod.
fn systems_selecting(
    systems: &Store<IoTSystem>,
    pod: &PartialObjectMeta<Pod>,
) -> Vec<ObjectRef<IoTSystem>> {
    let ns = pod.namespace();
    let labels = pod.labels();
    systems
        .state()
        .into_iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| {
            s.spec.components.iter().any(|c| {
                Selector::try_from(c.selector.clone()).is_ok_and(|sel| sel.matches(labels))
            })
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

fn siblings_of(
    systems: &Store<IoTSystem>,
    changed: &PartialObjectMeta<IoTSystem>,
) -> Vec<ObjectRef<IoTSystem>> {
    let ns = changed.namespace();
    systems
        .state()
        .into_iter()
        .filter(|s| s.namespace() == ns && s.metadata.uid != changed.metadata.uid)
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

#[instrument(skip_all, fields(system = %system.name_any(), namespace = system.namespace().unwrap_or_default()))]
async fn reconcile(system: Arc<IoTSystem>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = system.namespace().ok_or(Error::NoNamespace)?;
    if system.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove our objects.
        return Ok(Action::await_change());
    }

    // 1. fetch (from caches)
    let pods: Vec<_> = ctx
        .caches
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .collect();
    let systems: Vec<_> = ctx
        .caches
        .systems
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
        .collect();

    // 2. validate → 3. build → 4. apply
    let validated = validate(
        &system,
        &Neighbourhood {
            pods: &pods,
            systems: &systems,
        },
    );
    let applied = match &validated {
        Err(_) => None,
        Ok(valid) => {
            let desired = build_all(valid);
            // Audit changes nothing of its own: it removes what Enforce had made.
            let to_apply = match valid.mode {
                Mode::Enforce => &desired,
                Mode::Audit => &DesiredObjects::default(),
            };
            let result = apply::apply_all(&ctx, valid, to_apply).await;
            Some((valid.mode, desired, result))
        }
    };
    let empty = ApplyReport::default();
    let (outcome, report) = match (&validated, &applied) {
        (Err(invalid), _) => (Outcome::Invalid(invalid), &empty),
        (Ok(_), Some((_, _, Err(e)))) => (Outcome::ApplyFailed(e), &empty),
        (Ok(_), Some((Mode::Enforce, _, Ok(report)))) => (Outcome::Enforced { report }, report),
        (Ok(_), Some((Mode::Audit, planned, Ok(report)))) => (Outcome::Audited { planned }, report),
        (Ok(_), None) => unreachable!("a valid system is always applied"),
    };

    // 5. status, and Events for what changed
    let new_status = status::desired_status(&system, &outcome, &(ctx.clock)());
    let api: Api<IoTSystem> = Api::namespaced(ctx.client.clone(), &namespace);
    let status_changed = {
        let would_write = system.status.as_ref() != Some(&new_status);
        if would_write {
            ctx.metrics.write("IoTSystem", "status");
        }
        status::write_if_changed(&api, &system, new_status)
            .await
            .map_err(Error::Status)?
    };
    publish_events(&ctx, &system, &outcome, report, status_changed).await;

    match (validated, applied) {
        (_, Some((_, _, Err(e)))) => Err(Error::Apply(e)),
        (Err(ValidationError::SelectorConflict { .. }), _) => Ok(Action::requeue(RECHECK_CONFLICT)),
        _ => Ok(Action::requeue(RESYNC)),
    }
}

/// Events only accompany a change, so a no-op reconcile publishes none.
async fn publish_events(
    ctx: &Context,
    system: &IoTSystem,
    outcome: &Outcome<'_>,
    report: &ApplyReport,
    status_changed: bool,
) {
    let mut events = Vec::new();
    if !report.applied.is_empty() {
        events.push(Event {
            type_: EventType::Normal,
            reason: "Applied".into(),
            note: Some(summary("applied", &report.applied)),
            action: "Apply".into(),
            secondary: None,
        });
    }
    if !report.pruned.is_empty() {
        events.push(Event {
            type_: EventType::Normal,
            reason: "Pruned".into(),
            note: Some(summary("removed (no longer wanted)", &report.pruned)),
            action: "Prune".into(),
            secondary: None,
        });
    }
    if status_changed {
        let failure = match outcome {
            Outcome::Invalid(e) => Some((e.reason(), e.to_string())),
            Outcome::ApplyFailed(e) => Some((e.reason(), e.to_string())),
            _ => None,
        };
        if let Some((reason, message)) = failure {
            events.push(Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(truncate(&message, 1000)),
                action: "Reconcile".into(),
                secondary: None,
            });
        }
    }
    let reference = system.object_ref(&());
    for event in events {
        ctx.metrics.write("Event", "event");
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason = %event.reason, "could not publish Event");
        }
    }
}

fn summary(verb: &str, keys: &[apply::ObjectKey]) -> String {
    const SHOWN: usize = 8;
    let mut names: Vec<String> = keys.iter().take(SHOWN).map(|k| k.to_string()).collect();
    if keys.len() > SHOWN {
        names.push(format!("and {} more", keys.len() - SHOWN));
    }
    truncate(
        &format!("{} {verb}: {}", keys.len(), names.join(", ")),
        1000,
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn error_policy(system: Arc<IoTSystem>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            reason: error.reason(),
        })
        .inc();
    warn!(system = %system.name_any(), reason = error.reason(), error = %error, "reconcile failed; retrying");
    Action::requeue(RETRY)
}
