//! Prometheus metrics. Label values come from fixed sets (error reasons, kind
//! names, verbs) or name the cluster's IoTSystems and their components, whose
//! series are capped by MAX_SYSTEMS, so series stay bounded.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::api::ItemStatus;

mod checklist;
mod pod_health;
use checklist::ChecklistSeries;
use pod_health::PodHealthSeries;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub namespace: String,
    pub system: String,
    pub component: String,
    pub port: String,
}

/// Per component: components are bounded by the spec (and MAX_SYSTEMS).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub namespace: String,
    pub system: String,
    pub component: String,
}

/// Device counts per state: devices themselves are never a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorLabels {
    pub namespace: String,
    pub system: String,
    pub component: String,
    pub state: &'static str,
}

/// What a component's pods show of their health (alert rules for VIII-1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodHealth {
    pub restarts: i64,
    pub crash_looping: i64,
}

/// Systems beyond this many get no per-system series (counted instead).
pub const MAX_SYSTEMS: usize = 2000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub webhook: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: &'static str,
}

/// Upper bounds of the admission duration buckets: answers take well under
/// a millisecond when nothing holds them up.
const ADMISSION_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// What became of a refusal handed to the decision record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandoverLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: &'static str,
    pub verb: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub reconciliations: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Requests that change cluster state, by kind and verb: a reconcile with
    /// nothing to change adds none.
    pub api_writes: Family<WriteLabels, Counter>,
    writes_total: AtomicU64,
    /// The verdict of each item of each system, and each system's compliance
    /// ratio. Systems are the operator's own objects, so their number is
    /// bounded by the cluster's IoTSystems, and capped by MAX_SYSTEMS besides.
    checklist: Arc<ChecklistSeries>,
    pub systems_without_series: Gauge,
    /// notAfter of the certificate each TLS port presented (Unix seconds).
    pub certificate_expiry: Family<EndpointLabels, Gauge>,
    /// 1 when the last probe of a TLS port completed a handshake, else 0.
    pub tls_handshake_ok: Family<EndpointLabels, Gauge>,
    /// Admission requests by webhook and outcome.
    pub admission: Family<AdmissionLabels, Counter>,
    /// Time from an admission request read to its answer, by webhook: the
    /// operator's own part of the API server's webhook call.
    pub admission_duration: Family<WebhookLabels, Histogram>,
    /// Admission refusals and warnings handed to the decision record:
    /// queued, repeated (within 10 minutes, not again), dropped (queue
    /// full), failed (the Event was not created).
    pub admission_handovers: Family<HandoverLabels, Counter>,
    /// Failed watch attempts, by kind.
    pub watch_errors: Family<KindLabels, Counter>,
    /// Systems queued for a reconcile by a change of each kind; the
    /// operator's own writes seen again on the watch are not counted.
    pub reconcile_triggers: Family<KindLabels, Counter>,
    /// Devices of each listened sensor component, by state (silent, heard).
    pub sensor_devices: Family<SensorLabels, Gauge>,
    /// Container restarts and crash-looping containers of each component.
    pod_health: Arc<PodHealthSeries>,
    /// Sensor components with device series, to remove them with their system.
    component_series: Mutex<HashSet<ComponentLabels>>,
    /// Endpoint series exported, to remove them with their system.
    endpoint_series: Mutex<HashSet<EndpointLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iotposture");
        let reconciliations = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let api_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "reconciliations",
            "IoTSystem reconciliations started",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            reconcile_duration.clone(),
        );
        registry.register(
            "api_writes",
            "Write requests sent to the API server, by kind and verb",
            api_writes.clone(),
        );
        let checklist = Arc::new(ChecklistSeries::default());
        registry.register_collector(Box::new(checklist.clone()));
        let systems_without_series = Gauge::default();
        registry.register(
            "checklist_systems_without_series",
            "IoTSystems beyond the per-system series limit",
            systems_without_series.clone(),
        );
        let certificate_expiry = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the certificate a TLS port presented to the probe",
            certificate_expiry.clone(),
        );
        let tls_handshake_ok = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "tls_handshake_ok",
            "1 when the last TLS probe of a port completed a handshake, 0 when it failed",
            tls_handshake_ok.clone(),
        );
        let admission = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests by webhook (mutate, validate) and outcome",
            admission.clone(),
        );
        let admission_duration = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(ADMISSION_BUCKETS)
        });
        registry.register(
            "admission_duration_seconds",
            "Time from an admission request read to its answer, by webhook",
            admission_duration.clone(),
        );
        let admission_handovers = Family::<HandoverLabels, Counter>::default();
        registry.register(
            "admission_handovers",
            "Admission refusals and warnings handed to the decision record, by outcome",
            admission_handovers.clone(),
        );
        let watch_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "watch_errors",
            "Failed watch attempts by kind; each is retried with backoff",
            watch_errors.clone(),
        );
        let reconcile_triggers = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_triggers",
            "Systems queued for a reconcile by a change of each kind (the operator's own writes coming back on a watch excluded)",
            reconcile_triggers.clone(),
        );
        let sensor_devices = Family::<SensorLabels, Gauge>::default();
        registry.register(
            "sensor_devices",
            "Devices of a sensor component heard over MQTT, by state: silent (longer than maxSilence) or heard",
            sensor_devices.clone(),
        );
        let pod_health = Arc::new(PodHealthSeries::default());
        registry.register_collector(Box::new(pod_health.clone()));
        Self {
            registry,
            sensor_devices,
            pod_health,
            component_series: Mutex::new(HashSet::new()),
            watch_errors,
            reconcile_triggers,
            certificate_expiry,
            tls_handshake_ok,
            admission,
            admission_duration,
            admission_handovers,
            checklist,
            systems_without_series,
            endpoint_series: Mutex::new(HashSet::new()),
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            api_writes,
            writes_total: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a reconciliation and records its duration when the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciliations.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// A watch failed (it is retried with backoff).
    pub fn watch_failed(&self, kind: &'static str) {
        self.watch_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// A change of `kind` queued `systems` systems for a reconcile.
    pub fn triggered(&self, kind: &'static str, systems: usize) {
        if systems > 0 {
            self.reconcile_triggers
                .get_or_create(&KindLabels { kind })
                .inc_by(systems as u64);
        }
    }

    pub fn write(&self, kind: &'static str, verb: &'static str) {
        self.api_writes
            .get_or_create(&WriteLabels { kind, verb })
            .inc();
        self.writes_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn handover(&self, outcome: &'static str) {
        self.admission_handovers
            .get_or_create(&HandoverLabels { outcome })
            .inc();
    }

    /// Write requests so far, all kinds together.
    pub fn writes_total(&self) -> u64 {
        self.writes_total.load(Ordering::Relaxed)
    }

    /// Exports the verdicts of one system, replacing what it had.
    pub fn record_verdicts(&self, namespace: &str, system: &str, items: &[ItemStatus]) {
        if !self.checklist.record(namespace, system, items, MAX_SYSTEMS) {
            self.systems_without_series.inc();
        }
    }

    /// Sets a TLS port's handshake and expiry series (expiry cleared without a certificate).
    pub fn record_tls_probe(
        &self,
        namespace: &str,
        system: &str,
        component: &str,
        port: &str,
        handshake_ok: bool,
        not_after: Option<&str>,
    ) {
        let labels = EndpointLabels {
            namespace: namespace.into(),
            system: system.into(),
            component: component.into(),
            port: port.into(),
        };
        self.tls_handshake_ok
            .get_or_create(&labels)
            .set(i64::from(handshake_ok));
        self.endpoint_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(labels.clone());
        let when = not_after.and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        match when {
            Some(t) => {
                self.certificate_expiry
                    .get_or_create(&labels)
                    .set(t.unix_timestamp());
            }
            None => {
                self.certificate_expiry.remove(&labels);
            }
        }
    }

    /// Drops the series of one system, which is gone.
    /// Device counts of a system's listened components.
    pub fn record_sensors(
        &self,
        namespace: &str,
        system: &str,
        heartbeats: &std::collections::BTreeMap<String, crate::heartbeat::Judged>,
    ) {
        // A component no longer listened to keeps no device counts.
        for old in self.components_of(namespace, system) {
            if !heartbeats.contains_key(&old.component) {
                self.remove_sensor_series(&old);
                self.component_series
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&old);
            }
        }
        for (component, judged) in heartbeats {
            let silent = judged.devices.iter().filter(|d| d.silent).count() as i64;
            let heard = judged.devices.len() as i64 - silent;
            for (state, count) in [("silent", silent), ("heard", heard)] {
                self.sensor_devices
                    .get_or_create(&SensorLabels {
                        namespace: namespace.into(),
                        system: system.into(),
                        component: component.clone(),
                        state,
                    })
                    .set(count);
            }
            self.component_series
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ComponentLabels {
                    namespace: namespace.into(),
                    system: system.into(),
                    component: component.clone(),
                });
        }
    }

    /// The sensor components of one system that have device series.
    fn components_of(&self, namespace: &str, system: &str) -> Vec<ComponentLabels> {
        self.component_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.namespace == namespace && l.system == system)
            .cloned()
            .collect()
    }

    fn remove_sensor_series(&self, l: &ComponentLabels) {
        for state in ["silent", "heard"] {
            self.sensor_devices.remove(&SensorLabels {
                namespace: l.namespace.clone(),
                system: l.system.clone(),
                component: l.component.clone(),
                state,
            });
        }
    }

    /// Restarts and crash loops of each component's pods.
    /// A component gone from the spec keeps no series.
    pub fn record_pod_health(&self, namespace: &str, system: &str, health: &[(String, PodHealth)]) {
        self.pod_health.record(namespace, system, health);
    }

    pub fn forget_system(&self, namespace: &str, system: &str) {
        let gone = (namespace.to_string(), system.to_string());
        self.retain_where(|key| *key != gone);
    }

    /// Drops the series of systems that no longer exist.
    pub fn retain_systems(&self, live: &HashSet<(String, String)>) {
        self.retain_where(|key| live.contains(key));
    }

    fn retain_where(&self, live: impl Fn(&(String, String)) -> bool) {
        self.component_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| {
                let keep = live(&(l.namespace.clone(), l.system.clone()));
                if !keep {
                    self.remove_sensor_series(l);
                }
                keep
            });
        self.endpoint_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| {
                let keep = live(&(l.namespace.clone(), l.system.clone()));
                if !keep {
                    self.tls_handshake_ok.remove(l);
                    self.certificate_expiry.remove(l);
                }
                keep
            });
        self.pod_health.retain(&live);
        self.checklist.retain(live);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Records how long answering a request to `webhook` took when the guard drops.
    pub fn admission_started(&self, webhook: &'static str) -> AdmissionTimer<'_> {
        AdmissionTimer {
            metrics: self,
            webhook,
            start: Instant::now(),
        }
    }
}

pub struct AdmissionTimer<'a> {
    metrics: &'a Metrics,
    webhook: &'static str,
    start: Instant,
}

impl Drop for AdmissionTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .admission_duration
            .get_or_create(&WebhookLabels {
                webhook: self.webhook,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::heartbeat::{DeviceState, Judged, Listening};

    fn judged(silent: bool) -> Judged {
        Judged {
            listening: Listening::Since(SystemTime::UNIX_EPOCH),
            source: "topic".into(),
            max_silence: Duration::from_secs(60),
            now: SystemTime::UNIX_EPOCH,
            devices: vec![DeviceState {
                device: "d".into(),
                silent,
                last_seen: None,
            }],
        }
    }

    #[test]
    fn component_series_follow_the_spec_and_go_with_their_system() {
        let m = Metrics::default();
        let health = |names: &[&str]| -> Vec<(String, PodHealth)> {
            names
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        PodHealth {
                            restarts: 4,
                            crash_looping: 1,
                        },
                    )
                })
                .collect()
        };
        m.record_pod_health("ns", "sys", &health(&["a", "b"]));
        m.record_sensors(
            "ns",
            "sys",
            &BTreeMap::from([("a".to_string(), judged(true))]),
        );
        let text = m.encode();
        assert!(text.contains(
            r#"iotposture_sensor_devices{namespace="ns",system="sys",component="a",state="silent"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"iotposture_component_container_restarts{namespace="ns",system="sys",component="b"} 4"#
        ), "{text}");

        // b leaves the spec, a stops being listened to.
        m.record_pod_health("ns", "sys", &health(&["a"]));
        m.record_sensors("ns", "sys", &BTreeMap::new());
        let text = m.encode();
        assert!(!text.contains(r#"component="b""#), "{text}");
        assert!(!text.contains("iotposture_sensor_devices{"), "{text}");
        assert!(text.contains(r#"component="a""#), "{text}");

        m.forget_system("ns", "sys");
        assert!(!m.encode().contains(r#"system="sys""#));
    }
}
