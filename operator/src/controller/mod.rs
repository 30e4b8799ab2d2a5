//! The IoTSystem controller. Each reconcile is a short pipeline:
//!
//! 1. `plan`: the system and its neighbourhood from the caches, `validate`d
//!    into a `ValidatedSystem`, and the desired objects `build` makes of it
//! 2. `apply`: the cluster made to hold exactly those objects
//! 3. `judge`: the checklist on the namespace as it now is, to metrics
//! 4. `status`: observedGeneration, the Ready condition, the verdicts, the
//!    decision record's new head; Events for what changed
//! 5. the PolicyReport, with the checkpoint the status now holds
//!
//! Only steps 2, 4 and 5 talk to the API server. Starting it all is in `wiring`.

pub mod access;
pub mod alerting;
pub mod apply;
pub mod backoff;
pub mod cache;
pub mod edge_nodes;
pub mod findings;
pub mod index;
pub mod labels;
pub mod leader;
pub mod listening;
pub mod own_writes;
pub mod packed;
pub mod probing;
pub mod record;
pub mod secrets;
pub mod shipping;
pub mod slim_pod;
pub mod status;
pub mod triggers;
pub mod validate;
pub mod wiring;

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        reflector::ObjectRef,
    },
};
use tracing::{instrument, warn};

use crate::{
    api::{EndpointStatus, IoTSystem, ItemStatus, Mode},
    build::{DesiredObjects, build_all},
    checklist,
    checklist::evidence::truncate,
    metrics::{ErrorLabels, Metrics},
};
use access::AccessReview;
use apply::{ApplyFailures, ApplyReport};
use backoff::Backoff;
use cache::Caches;
use status::Outcome;
use validate::{Neighbourhood, ValidatedSystem, ValidationError, validate};
pub use wiring::{Options, RecordOptions, run, run_with_http};

/// The one field manager for every object we write.
pub const FIELD_MANAGER: &str = "iotposture";
/// A safety net behind the watches: look again now and then even if nothing moved.
const RESYNC: Duration = Duration::from_secs(600);
/// A refused selector depends on other systems and pods; look again soon even
/// if the event that settles it was missed.
const RECHECK_CONFLICT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(ApplyFailures),
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
    /// The probes' latest findings, when probing runs.
    pub probes: Option<Arc<probing::ProbeResults>>,
    /// Sensor devices heard over MQTT (`listening`).
    pub heartbeats: Arc<crate::heartbeat::Ledger>,
    /// The decision record (VII-2), when kept.
    pub record: Option<Arc<record::DecisionRecord>>,
    /// What Prometheus and Alertmanager say of each system's alerts, when asked.
    pub alerting: Option<Arc<alerting::AlertResults>>,
    /// What the log collector and the store show, when the operator runs one.
    pub shipping: Option<Arc<shipping::ShippingResults>>,
    /// Set when the admission webhooks are served: their match conditions
    /// must cover a system's pods, and its namespace gets their label.
    pub webhooks: Option<Arc<crate::webhook::Registrar>>,
    /// Whether `spec.access` subjects may be bound.
    pub access_review: AccessReview,
    /// Who the NetworkPolicies let in for the operator's probes and scrapes.
    pub operator_peers: validate::OperatorPeers,
    pub backoff: Backoff,
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Step 1: what the system should have, or why it cannot be enforced.
struct Plan {
    validated: Result<ValidatedSystem, ValidationError>,
    /// What Enforce keeps (also reported, not applied, in Audit).
    planned: DesiredObjects,
}

fn plan(system: &IoTSystem, ctx: &Context, namespace: &str) -> Plan {
    let pods = ctx.caches.pods.in_namespace(namespace);
    let systems = ctx.caches.systems.in_namespace(namespace);
    let validated = validate(
        system,
        &Neighbourhood {
            pods: &pods,
            systems: &systems,
        },
    )
    .and_then(|v| ctx.access_review.permits(&v).map(|()| v))
    .map(|mut v| {
        v.operator_peers = ctx.operator_peers.clone();
        v
    });
    let planned = validated
        .as_ref()
        .map(|v| build_all(v, ctx.caches.rules_as()))
        .unwrap_or_default();
    Plan { validated, planned }
}

/// Step 3's result: the verdicts and what the probe saw at each endpoint.
struct Judgement {
    items: Vec<ItemStatus>,
    endpoints: Option<Vec<EndpointStatus>>,
    sensors: Option<crate::api::SensorStatus>,
}

/// Judges the namespace as the API server now holds it: the caches, with
/// this system's objects as step 2 left them.
async fn judge(
    ctx: &Context,
    system: &IoTSystem,
    valid: &ValidatedSystem,
    applied: &ApplyReport,
    now: &Time,
) -> Judgement {
    let mut snapshot = ctx
        .caches
        .snapshot(valid)
        .with_desired(&valid.name, &applied.current);
    let findings = ctx
        .probes
        .as_ref()
        .and_then(|p| p.get(&valid.namespace, &valid.name));
    snapshot.tls_probes = findings.as_ref().map(|f| f.tls.clone());
    snapshot.http_probes = findings.map(|f| f.http);
    let heartbeats = crate::heartbeat::judge_system(&ctx.heartbeats, valid, now_system(now));
    ctx.metrics
        .record_sensors(&valid.namespace, &valid.name, &heartbeats);
    let sensors = status::sensor_status(&heartbeats);
    let health: Vec<_> = checklist::component_pods(valid, &snapshot)
        .iter()
        .map(|c| {
            (
                c.component.name.clone(),
                checklist::logs_and_status::pod_health(&c.pods),
            )
        })
        .collect();
    ctx.metrics
        .record_pod_health(&valid.namespace, &valid.name, &health);
    snapshot.heartbeats = Some(heartbeats);
    let endpoints = snapshot
        .tls_probes
        .as_ref()
        .map(|ports| ports.iter().take(64).map(|p| p.status()).collect());
    snapshot.alerting = Some(match &ctx.alerting {
        None => Err("the operator runs without --prometheus-url: whether the alert rules are loaded and reach a receiver is not known".into()),
        Some(results) => results
            .get(&valid.namespace, &valid.name)
            .ok_or_else(|| "Prometheus and Alertmanager not asked yet".to_string()),
    });
    snapshot.shipping = Some(match &ctx.shipping {
        None => Err("the operator runs without a log collector (--log-collector-image): nothing ships the logs".into()),
        Some(results) => results
            .get(&valid.namespace, &valid.name)
            .ok_or_else(|| "the log collector has not been looked at yet".to_string()),
    });
    snapshot.edge_nodes = edge_nodes::resolve(valid, &snapshot, ctx.caches.edge.as_ref());
    let current_log = system.status.as_ref().and_then(|s| s.decision_log.as_ref());
    snapshot.decision_record = Some(match (&ctx.record, current_log) {
        (None, _) => Err(
            "the operator keeps no decision record (its key is unusable, or it runs without one)"
                .into(),
        ),
        (Some(_), log) => Ok(log.map_or(0, |l| l.size)),
    });
    let today = now.0.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).date();
    let items = checklist::evaluate(valid, &snapshot, today);
    ctx.metrics
        .record_verdicts(&valid.namespace, &valid.name, &items);
    Judgement {
        items,
        endpoints,
        sensors,
    }
}

/// The reconcile's clock as a SystemTime, for judging silence.
fn now_system(now: &Time) -> std::time::SystemTime {
    std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_millis(now.0.as_millisecond().max(0) as u64)
}

/// The system as cached now: the controller schedules by identity only
/// (`cache::Roster`). None once it is gone.
fn cached(identity: &cache::Roster, ctx: &Context) -> Option<Arc<IoTSystem>> {
    let r = ObjectRef::new(&identity.name_any()).within(&identity.namespace()?);
    ctx.caches.systems.get(&r)
}

#[instrument(skip_all, fields(system = %identity.name_any(), namespace = identity.namespace().unwrap_or_default()))]
async fn reconcile(identity: Arc<cache::Roster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = identity.namespace().ok_or(Error::NoNamespace)?;
    let Some(system) = cached(&identity, &ctx) else {
        // Deleted since it was triggered.
        return Ok(Action::await_change());
    };
    let name = system.name_any();
    if system.metadata.deletion_timestamp.is_some() || ctx.caches.namespace_terminating(&namespace)
    {
        // Owner references let the garbage collector remove our objects;
        // a namespace being deleted takes no new writes.
        return Ok(Action::await_change());
    }

    // 1. plan
    let Plan { validated, planned } = plan(&system, &ctx, &namespace);
    let now = (ctx.clock)();

    // 2. apply, and 3. judge what that left
    let mut report = ApplyReport::default();
    let mut judgement = None;
    if let Ok(valid) = &validated {
        // Audit changes nothing of its own: it removes what Enforce had made.
        let to_apply = match valid.mode {
            Mode::Enforce => planned.clone(),
            Mode::Audit => DesiredObjects::default(),
        };
        let labelled = apply::admit_for_review(&ctx, valid).await;
        report = apply::apply_all(&ctx, valid, &to_apply).await;
        report.failed.extend(labelled.err());
        judgement = Some(judge(&ctx, &system, valid, &report, &now).await);
    }
    // A system deleted while this ran keeps no series.
    if !ctx
        .caches
        .holds_system(&namespace, &name, system.metadata.uid.as_deref())
    {
        ctx.metrics.forget_system(&namespace, &name);
    }
    let failures = ApplyFailures(std::mem::take(&mut report.failed));
    let outcome = match (&validated, failures.0.is_empty()) {
        (Err(invalid), _) => Outcome::Invalid(invalid),
        (Ok(_), false) => Outcome::ApplyFailed(&failures),
        (Ok(valid), true) if valid.mode == Mode::Enforce => Outcome::Enforced { report: &report },
        (Ok(_), true) => Outcome::Audited { planned: &planned },
    };

    // 4. status, and Events for what changed
    let judged_items = judgement.as_ref().map(|j| j.items.clone());
    let (items, endpoints, sensors) = match judgement {
        Some(j) => (Some(j.items), j.endpoints, j.sensors),
        None => (None, None, None),
    };
    let api: Api<IoTSystem> = Api::namespaced(ctx.client.clone(), &namespace);
    // The record's lines are emitted once the status counting them is
    // stored; computed from the status the write is based on, so a lagging
    // cache cannot fork the log.
    let handovers = ctx.caches.handovers_of(&namespace, &name);
    let to_emit = std::sync::Mutex::new(Vec::new());
    let head = std::sync::Mutex::new(None);
    let status_changed = status::write_if_changed(&api, &system, |basis| {
        let mut desired = status::desired_status(
            basis,
            &outcome,
            items.as_deref(),
            endpoints.clone(),
            sensors.clone(),
            &now,
        );
        // Verdict changes against the status this write is based on: after
        // a lagging cache, the server may hold them already.
        let current = basis.status.as_ref().and_then(|s| s.decision_log.as_ref());
        // Refusals the webhooks handed over since the last write come first:
        // they happened before this reconcile's decisions.
        let (handed, through) = record::handed_over(
            &format!("{namespace}/{name}"),
            basis.metadata.uid.as_deref().unwrap_or_default(),
            &handovers,
            current.and_then(|c| c.admissions_through.as_deref()),
        );
        let decided = items.as_deref().map(|items| {
            let mut decided = handed.clone();
            decided.extend(record::decisions(
                &format!("{namespace}/{name}"),
                &now.0.to_string(),
                &report.applied,
                &report.pruned,
                basis
                    .status
                    .as_ref()
                    .map(|s| s.items.as_slice())
                    .unwrap_or_default(),
                items,
            ));
            decided
        });
        let appended = ctx.record.as_ref().zip(decided).and_then(|(r, decided)| {
            r.append(basis, current, decided)
                .map_err(|e| warn!(error = %e, "could not append to the decision record"))
                .ok()
                .flatten()
                .map(|mut a| {
                    a.status.admissions_through = through.clone();
                    a
                })
        });
        let mut emit = to_emit.lock().unwrap_or_else(|e| e.into_inner());
        match appended {
            Some(a) => {
                desired.decision_log = Some(a.status);
                *emit = a.lines;
            }
            None => emit.clear(),
        }
        *head.lock().unwrap_or_else(|e| e.into_inner()) = desired.decision_log.clone();
        desired
    })
    .await
    .map_err(Error::Status)?;
    if status_changed && let Some(r) = &ctx.record {
        r.emit(&to_emit.lock().unwrap_or_else(|e| e.into_inner()));
    }
    if status_changed {
        ctx.metrics.write("IoTSystem", "status");
    }
    publish_events(&ctx, &system, &outcome, &report, status_changed).await;

    // 5. the PolicyReport, after the status: it carries the checkpoint the
    // status now holds, so one reconcile writes both, and a report written
    // from a lagging cache carries no time of its own.
    if let (Ok(valid), Some(items)) = (&validated, &judged_items) {
        let head = head.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let checkpoint = head.as_ref().map(|l| l.checkpoint.as_str());
        let policy = crate::build::policy_report::build_policy_report(valid, items, checkpoint);
        if let Err(e) = apply::apply_report(&ctx, valid, &policy).await {
            return Err(Error::Apply(ApplyFailures(vec![e])));
        }
    }

    let this = ObjectRef::from_obj(system.as_ref());
    if !failures.0.is_empty() {
        return Err(Error::Apply(failures));
    }
    ctx.backoff.succeeded(&this);
    match validated {
        Err(ValidationError::SelectorConflict { .. }) => Ok(Action::requeue(RECHECK_CONFLICT)),
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

fn error_policy(system: Arc<cache::Roster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            reason: error.reason(),
        })
        .inc();
    let delay = ctx.backoff.failed(
        &ObjectRef::new(&system.name_any()).within(&system.namespace().unwrap_or_default()),
    );
    warn!(system = %system.name_any(), reason = error.reason(), error = %error, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}
