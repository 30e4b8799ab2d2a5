//! Refusals (Enforce) and warnings (Audit) into the decision record (item
//! VII-2). Any replica may answer a webhook, but only the leader appends to a
//! system's record, so the answering replica hands each one over as an
//! `events.k8s.io` Event regarding the IoTSystem, labelled so that the
//! leader's watch sees these and no others (`kubectl describe iotsystem`
//! shows them too). Posting happens off the request path: admission never
//! waits for it, and a full queue drops and counts.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::mpsc;
use tracing::warn;

use crate::{build::meta::SYSTEM_LABEL, metrics::Metrics};

/// The label that marks a handed-over decision, with its kind as value.
pub const DECISION_LABEL: &str = "iotposture.dev/decision";
pub const REFUSED: &str = "admission-refused";
pub const WARNED: &str = "admission-warned";
/// The Events' reportingController.
const CONTROLLER: &str = "iotposture.dev/admission";
/// Events API limit on `note`.
const NOTE_MAX: usize = 1024;
/// The same refusal again within this time is not handed over again: a
/// controller retrying a refused pod would otherwise flood the record.
const REPEAT_WINDOW: Duration = Duration::from_secs(600);
/// Remembered refusals per replica, for the window above.
const REMEMBERED: usize = 4096;
/// Handed-over decisions waiting to be posted.
const QUEUE: usize = 256;

/// One refusal or warning, as the webhook knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    pub namespace: String,
    pub system: String,
    pub system_uid: String,
    /// What was refused, e.g. `Pod/gateway-ssh` or `Deployment/gw`.
    pub subject: String,
    pub message: String,
    /// Admitted with warnings (Audit) rather than refused.
    pub warned: bool,
}

/// The Event that carries `h` to the leader; `instance` is this replica,
/// `seq` its count of Events so far. Named like kubelet's Events (the
/// object, a dot, hex of the time), with `seq` so that two in the same
/// nanosecond differ; Events do not take a generateName ending in a dot.
pub fn event(h: &Handover, instance: &str, now: Timestamp, seq: u32) -> Event {
    let kind = if h.warned { WARNED } else { REFUSED };
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}{:04x}",
                h.system,
                now.as_nanosecond(),
                seq & 0xffff
            )),
            namespace: Some(h.namespace.clone()),
            labels: Some(
                [
                    (DECISION_LABEL.to_string(), kind.to_string()),
                    (SYSTEM_LABEL.to_string(), h.system.clone()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Admit".into()),
        reason: Some(
            if h.warned {
                "AdmissionWarned"
            } else {
                "AdmissionRefused"
            }
            .into(),
        ),
        type_: Some(if h.warned { "Warning" } else { "Normal" }.into()),
        note: Some(crate::checklist::evidence::truncate(
            &format!("{}: {}", h.subject, h.message),
            NOTE_MAX,
            "…",
        )),
        regarding: Some(ObjectReference {
            api_version: Some("iotposture.dev/v1alpha1".into()),
            kind: Some("IoTSystem".into()),
            namespace: Some(h.namespace.clone()),
            name: Some(h.system.clone()),
            uid: Some(h.system_uid.clone()),
            ..ObjectReference::default()
        }),
        // What was refused, for the record's entry.
        related: Some(ObjectReference {
            kind: h.subject.split_once('/').map(|(k, _)| k.to_string()),
            name: Some(
                h.subject
                    .split_once('/')
                    .map_or(h.subject.as_str(), |(_, n)| n)
                    .to_string(),
            ),
            namespace: Some(h.namespace.clone()),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(CONTROLLER.into()),
        reporting_instance: Some(instance.into()),
        ..Event::default()
    }
}

/// Which refusals were handed over lately.
#[derive(Default)]
struct Recent(HashMap<(String, String, String), Instant>);

impl Recent {
    /// Whether `h` is new (and remember it) or a repeat within the window.
    fn first(&mut self, h: &Handover, now: Instant) -> bool {
        let key = (h.namespace.clone(), h.system.clone(), h.message.clone());
        if self
            .0
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REPEAT_WINDOW)
        {
            return false;
        }
        if self.0.len() >= REMEMBERED {
            self.0
                .retain(|_, at| now.duration_since(*at) < REPEAT_WINDOW);
            if self.0.len() >= REMEMBERED {
                self.0.clear();
            }
        }
        self.0.insert(key, now);
        true
    }
}

/// The webhook's side: `hand_over` never blocks.
pub struct Handovers {
    queue: mpsc::Sender<Handover>,
    recent: Mutex<Recent>,
    metrics: Arc<Metrics>,
}

impl Handovers {
    /// Starts the task that posts the Events as `instance`.
    pub fn start(client: Client, instance: String, metrics: Arc<Metrics>) -> Self {
        let (queue, mut rx) = mpsc::channel::<Handover>(QUEUE);
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            let mut seq = 0u32;
            while let Some(h) = rx.recv().await {
                let api: Api<Event> = Api::namespaced(client.clone(), &h.namespace);
                task_metrics.write("Event", "create");
                seq = seq.wrapping_add(1);
                let posted = api
                    .create(
                        &PostParams::default(),
                        &event(&h, &instance, Timestamp::now(), seq),
                    )
                    .await;
                if let Err(e) = posted {
                    warn!(error = %e, system = %h.system, "could not hand an admission decision to the record");
                    task_metrics.handover("failed");
                }
            }
        });
        Self {
            queue,
            recent: Mutex::new(Recent::default()),
            metrics,
        }
    }

    pub fn hand_over(&self, h: Handover) {
        let first = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first(&h, Instant::now());
        if !first {
            self.metrics.handover("repeated");
            return;
        }
        match self.queue.try_send(h) {
            Ok(()) => self.metrics.handover("queued"),
            Err(_) => self.metrics.handover("dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(message: &str) -> Handover {
        Handover {
            namespace: "plant".into(),
            system: "factory".into(),
            system_uid: "uid-factory".into(),
            subject: "Pod/gateway-ssh".into(),
            message: message.into(),
            warned: false,
        }
    }

    #[test]
    fn the_event_regards_the_system_and_carries_the_decision_label() {
        let now: Timestamp = "2026-11-30T10:00:00.123456Z".parse().unwrap();
        let e = event(&refusal("IV-2 port 22"), "iotposture-0", now, 7);
        let name = e.metadata.name.clone().unwrap();
        assert!(
            name.starts_with("factory.") && name.ends_with("0007"),
            "{name}"
        );
        assert_ne!(event(&refusal("x"), "i", now, 8).metadata.name, Some(name));
        let labels = e.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[DECISION_LABEL], REFUSED);
        assert_eq!(labels[SYSTEM_LABEL], "factory");
        assert_eq!(e.metadata.namespace.as_deref(), Some("plant"));
        let regarding = e.regarding.as_ref().unwrap();
        assert_eq!(
            (regarding.kind.as_deref(), regarding.uid.as_deref()),
            (Some("IoTSystem"), Some("uid-factory"))
        );
        assert_eq!(e.reason.as_deref(), Some("AdmissionRefused"));
        assert_eq!(e.note.as_deref(), Some("Pod/gateway-ssh: IV-2 port 22"));
        assert_eq!(e.event_time, Some(MicroTime(now)));
        assert_eq!(e.reporting_instance.as_deref(), Some("iotposture-0"));

        let mut warned = refusal("x");
        warned.warned = true;
        let e = event(&warned, "i", now, 1);
        assert_eq!(e.metadata.labels.unwrap()[DECISION_LABEL], WARNED);
        assert_eq!(e.reason.as_deref(), Some("AdmissionWarned"));
    }

    #[test]
    fn a_long_message_fits_the_events_api() {
        let e = event(&refusal(&"x".repeat(5000)), "i", Timestamp::now(), 1);
        assert!(e.note.unwrap().len() <= NOTE_MAX);
    }

    #[test]
    fn a_repeated_refusal_is_handed_over_once_per_window() {
        let mut recent = Recent::default();
        let t0 = Instant::now();
        assert!(recent.first(&refusal("a"), t0));
        assert!(!recent.first(&refusal("a"), t0 + Duration::from_secs(5)));
        assert!(recent.first(&refusal("b"), t0 + Duration::from_secs(5)));
        assert!(recent.first(&refusal("a"), t0 + REPEAT_WINDOW));
        // Bounded: old keys go first, and it never grows past the cap.
        for i in 0..REMEMBERED + 10 {
            recent.first(&refusal(&i.to_string()), t0 + REPEAT_WINDOW * 3);
        }
        assert!(recent.0.len() <= REMEMBERED);
    }
}
