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
pub mod cache;
pub mod probing;
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
        core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{DynamicObject, PartialObjectMeta},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::{error, info, instrument, warn};

use crate::{
    api::{IoTSystem, Mode, certmanager::certificate::Certificate},
    build::{DesiredObjects, build_all, meta::managed_selector},
    checklist,
    checklist::evidence::truncate,
    metrics::{ErrorLabels, Metrics},
};
use apply::{ApplyError, ApplyReport};
use cache::Caches;
use status::Outcome;
use validate::{Neighbourhood, ValidationError, validate};

/// The one field manager for every object we apply.
pub const FIELD_MANAGER: &str = "iotposture";
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

pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Injectable for tests that assert exact status.
    pub clock: fn() -> Time,
    /// The TLS probe's latest findings, when probing runs.
    pub probes: Option<Arc<probing::ProbeResults>>,
    /// Set when the admission webhooks are served: namespaces of systems get their label.
    pub admission: Option<crate::webhook::registration::Registration>,
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Runs the controller with the HTTP endpoints until SIGINT/SIGTERM.
/// What to watch, and whether to serve the admission webhooks.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Watch and manage only this namespace.
    pub namespace: Option<String>,
    pub admission: Option<crate::webhook::Options>,
    /// TLS probes of every TLS port; None: not probed (III-9, VI-3 stay Unknown).
    pub probes: Option<probing::ProbeOptions>,
}

pub async fn run_with_http(
    client: Client,
    options: Options,
    http_addr: SocketAddr,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(http_addr).await?;
    info!(%http_addr, "serving /metrics, /healthz and /readyz");
    let http = tokio::spawn(crate::http::serve(listener, metrics.clone(), ready.clone()));
    run(client, options, metrics, ready, shutdown_signal()).await;
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
    options: Options,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let scope = Scope {
        client: client.clone(),
        namespace: options.namespace.clone(),
    };

    // One cache per kind. Any change in a namespace re-runs the systems there:
    // children are restored, and the checklist is judged again.
    let every = watcher::Config::default();
    // The systems' own cache. Its first full list is announced on a channel
    // rather than awaited on the store: a store's readiness wakes one waiter
    // only, and the controller's runner is already waiting on it.
    let (systems, writer) = reflector::store();
    let (systems_listed, systems_ready) = tokio::sync::watch::channel(false);
    let system_events = reflector(writer, watcher(scope.api::<IoTSystem>(), every.clone()))
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                systems_listed.send_replace(true);
            }
        })
        .default_backoff()
        .applied_objects();
    let controller = Controller::for_stream(system_events, systems.clone())
        .with_config(kube::runtime::controller::Config::default().debounce(DEBOUNCE));
    let mut streams = Vec::new();
    macro_rules! cache {
        ($api:expr) => {
            cache!($api, every.clone())
        };
        ($api:expr, $config:expr) => {{
            let (store, writer) = reflector::store();
            let systems = systems.clone();
            let stream = reflector(writer, watcher($api, $config))
                .default_backoff()
                .touched_objects()
                .map(move |event| {
                    event.map(|obj| systems_in_namespace(&systems, obj.namespace().as_deref()))
                })
                .boxed();
            streams.push(stream);
            store
        }};
    }
    let caches = Caches {
        systems: systems.clone(),
        systems_ready,
        pods: cache!(scope.api::<Pod>()),
        services: cache!(scope.api::<Service>()),
        network_policies: cache!(scope.api::<NetworkPolicy>()),
        service_accounts: cache!(scope.api::<ServiceAccount>()),
        roles: cache!(scope.api::<Role>()),
        role_bindings: cache!(scope.api::<RoleBinding>()),
        secrets: cache!(scope.api::<PartialObjectMeta<Secret>>()),
        config_maps: cache!(
            scope.api::<ConfigMap>(),
            every.clone().labels(&managed_selector())
        ),
        // Cluster-wide; a change re-judges every system (bindings may refer to it).
        cluster_roles: cache!(Api::<ClusterRole>::all(client.clone())),
        policy_reports: None,
        namespaces: None,
        certificates: None,
    };
    // PolicyReports only where their CRD is installed; the rest works without.
    let report_resource = crate::build::policy_report::api_resource();
    let policy_reports = if serves(&client, "wgpolicyk8s.io/v1alpha2", "policyreports").await {
        let writer = reflector::store::Writer::new(report_resource.clone());
        let store = writer.as_reader();
        let api = match &scope.namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &report_resource),
            None => Api::<DynamicObject>::all_with(client.clone(), &report_resource),
        };
        let systems = systems.clone();
        streams.push(
            reflector(
                writer,
                watcher(api, every.clone().labels(&managed_selector())),
            )
            .default_backoff()
            .touched_objects()
            .map(move |event| {
                event.map(|obj| systems_in_namespace(&systems, obj.namespace().as_deref()))
            })
            .boxed(),
        );
        Some(store)
    } else {
        warn!(
            "the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is not installed: verdicts go to status and metrics only"
        );
        None
    };
    // Namespace labels select the webhooks; only needed when serving them.
    let namespaces = options.admission.as_ref().map(|_| {
        let (store, writer) = reflector::store();
        let config = match &scope.namespace {
            Some(ns) => every.clone().fields(&format!("metadata.name={ns}")),
            None => every.clone(),
        };
        let stream = reflector(
            writer,
            watcher(Api::<Namespace>::all(client.clone()), config),
        )
        .default_backoff()
        .touched_objects()
        .map(|event| event.map(|_| Vec::new()))
        .boxed();
        streams.push(stream);
        store
    });
    // Certificates only where cert-manager's CRDs are installed.
    let certificates = if serves(&client, "cert-manager.io/v1", "certificates").await {
        Some(cache!(scope.api::<Certificate>()))
    } else {
        warn!(
            "cert-manager is not installed: no Certificates are made; items III-9 and VI-4 report Unknown"
        );
        None
    };
    let caches = Caches {
        policy_reports,
        namespaces,
        certificates,
        ..caches
    };
    let webhooks = options.admission.clone().map(|admission| {
        let state = crate::webhook::WebhookState {
            systems: systems.clone(),
            metrics: metrics.clone(),
            images: admission.images.clone(),
        };
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::webhook::run(client, admission, state).await {
                error!(error = %e, "the admission webhooks stopped");
            }
        })
    });
    // A change to one system can settle a selector conflict of a sibling.
    {
        let systems = systems.clone();
        streams.push(
            watcher(scope.api::<PartialObjectMeta<IoTSystem>>(), every.clone())
                .default_backoff()
                .touched_objects()
                .map(move |event| event.map(|changed| siblings_of(&systems, &changed)))
                .boxed(),
        );
    }

    // TLS probes run beside the reconciles and wake a system when its findings change.
    let probe_results = options.probes.clone().map(|probe| {
        let results = Arc::new(probing::ProbeResults::default());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(probing::probe_loop(
            client.clone(),
            systems.clone(),
            probe,
            results.clone(),
            metrics.clone(),
            tx,
        ));
        streams.push(
            futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|r| (Ok(vec![r]), rx))
            })
            .boxed(),
        );
        results
    });
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
        admission: options.admission.map(|a| a.registration),
        probes: probe_results,
    });
    tokio::spawn(async move {
        caches.wait_until_ready().await;
        ready.store(true, Ordering::Relaxed);
        info!("caches filled; reconciling");
    });

    // Every trigger stream yields the systems to look at again.
    let triggers = futures::stream::select_all(streams).flat_map(|event| {
        futures::stream::iter(match event {
            Ok(refs) => refs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    });
    controller
        .reconcile_on(triggers.filter_map(|r| future::ready(r.ok())))
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
    if let Some(webhooks) = webhooks {
        webhooks.abort();
    }
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

/// Whether the API server serves `resource` in `group_version` (an optional CRD).
async fn serves(client: &Client, group_version: &str, resource: &str) -> bool {
    client
        .list_api_group_resources(group_version)
        .await
        .is_ok_and(|list| list.resources.iter().any(|r| r.name == resource))
}

/// The systems of a namespace (all systems for cluster-scoped objects).
fn systems_in_namespace(systems: &Store<IoTSystem>, ns: Option<&str>) -> Vec<ObjectRef<IoTSystem>> {
    systems
        .state()
        .into_iter()
        .filter(|s| ns.is_none() || s.namespace().as_deref() == ns)
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
    let pods = cache::in_namespace(&ctx.caches.pods, &namespace);
    let systems = cache::in_namespace(&ctx.caches.systems, &namespace);

    // 2. validate
    let validated = validate(
        &system,
        &Neighbourhood {
            pods: &pods,
            systems: &systems,
        },
    );

    // 3. build → 4. apply, then judge the checklist on the state that leaves
    let now = (ctx.clock)();
    let mut report = ApplyReport::default();
    let mut planned = DesiredObjects::default();
    let mut apply_error = None;
    let mut verdicts = None;
    let mut endpoints = None;
    if let Ok(valid) = &validated {
        planned = build_all(valid);
        // Audit changes nothing of its own: it removes what Enforce had made.
        let to_apply = match valid.mode {
            Mode::Enforce => planned.clone(),
            Mode::Audit => DesiredObjects::default(),
        };
        let mut snapshot = ctx.caches.snapshot(&namespace);
        let findings = ctx
            .probes
            .as_ref()
            .and_then(|p| p.get(&namespace, &valid.name));
        snapshot.tls_probes = findings.as_ref().map(|f| f.tls.clone());
        snapshot.http_probes = findings.map(|f| f.http);
        endpoints = snapshot
            .tls_probes
            .as_ref()
            .map(|ports| ports.iter().take(64).map(|p| p.status()).collect());
        // A failed namespace label is reported, but does not hold back enforcement.
        let labelled = apply::label_namespace_for_admission(&ctx, &namespace).await;
        let applied = apply::apply_all(&ctx, valid, &to_apply).await;
        match labelled.and(applied) {
            Ok(r) => {
                report = r;
                snapshot = snapshot.with_desired(&valid.name, &to_apply);
            }
            Err(e) => apply_error = Some(e),
        }
        let today = now.0.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).date();
        let items = checklist::evaluate(valid, &snapshot, today);
        ctx.metrics.record_verdicts(&namespace, &valid.name, &items);
        if apply_error.is_none() {
            let report = crate::build::policy_report::build_policy_report(valid, &items);
            if let Err(e) = apply::apply_report(&ctx, valid, &report).await {
                apply_error = Some(e);
            }
        }
        verdicts = Some(items);
    }
    ctx.metrics.retain_systems(
        &ctx.caches
            .systems
            .state()
            .iter()
            .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
            .collect(),
    );
    let outcome = match (&validated, &apply_error) {
        (Err(invalid), _) => Outcome::Invalid(invalid),
        (Ok(_), Some(e)) => Outcome::ApplyFailed(e),
        (Ok(valid), None) if valid.mode == Mode::Enforce => Outcome::Enforced { report: &report },
        (Ok(_), None) => Outcome::Audited { planned: &planned },
    };

    // 5. status, and Events for what changed
    let new_status =
        status::desired_status(&system, &outcome, verdicts.as_deref(), endpoints, &now);
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
    publish_events(&ctx, &system, &outcome, &report, status_changed).await;

    match (validated, apply_error) {
        (_, Some(e)) => Err(Error::Apply(e)),
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
                note: Some(truncate(&message, 1000, "…")),
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
        "…",
    )
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
