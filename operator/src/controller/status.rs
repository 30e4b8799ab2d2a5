//! Step 5 of the pipeline: the status a reconcile leads to, computed by a pure
//! function with an injected clock, and written only when it differs from what
//! the object already says.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{apply::ApplyReport, validate::ValidationError};
use crate::{
    api::{
        DeviceStatus, EndpointStatus, IoTSystem, IoTSystemStatus, ItemStatus, ManagedObject,
        SensorStatus,
    },
    build::DesiredObjects,
    controller::apply::{ApplyFailures, ObjectKey},
    heartbeat::{Judged, Listening},
};

pub const READY: &str = "Ready";

/// Reasons of the Ready condition besides the validation and apply reasons.
pub const REASON_RECONCILED: &str = "Reconciled";
pub const REASON_AUDIT_ONLY: &str = "AuditOnly";

/// How a reconcile ended, as far as status is concerned.
pub enum Outcome<'a> {
    /// Enforce mode: these objects are in place.
    Enforced {
        report: &'a ApplyReport,
    },
    /// Audit mode: nothing applied; these would be.
    Audited {
        planned: &'a DesiredObjects,
    },
    Invalid(&'a ValidationError),
    ApplyFailed(&'a ApplyFailures),
}

/// `checklist` is the fresh evaluation; without one (the spec could not be
/// validated) the previous verdicts stay.
pub fn desired_status(
    system: &IoTSystem,
    outcome: &Outcome<'_>,
    checklist: Option<&[ItemStatus]>,
    endpoints: Option<Vec<EndpointStatus>>,
    sensors: Option<SensorStatus>,
    now: &Time,
) -> IoTSystemStatus {
    let old = system.status.clone().unwrap_or_default();
    let (status, reason, message, managed) = match outcome {
        Outcome::Enforced { report } => {
            let mut objects: Vec<ManagedObject> = report
                .applied
                .iter()
                .chain(&report.kept)
                .map(|k| managed(k, true))
                .collect();
            objects.sort();
            let message = format!("{} objects in place", objects.len());
            ("True", REASON_RECONCILED, message, objects)
        }
        Outcome::Audited { planned } => {
            let mut objects: Vec<ManagedObject> = planned_keys(planned)
                .iter()
                .map(|k| managed(k, false))
                .collect();
            objects.sort();
            let message = format!(
                "Audit mode: {} objects planned, none applied; set spec.mode to Enforce to apply them",
                objects.len()
            );
            ("True", REASON_AUDIT_ONLY, message, objects)
        }
        // On failure the last good objects stay in place, and status keeps listing them.
        Outcome::Invalid(e) => (
            "False",
            e.reason(),
            e.to_string(),
            old.managed_objects.clone(),
        ),
        Outcome::ApplyFailed(e) => (
            "False",
            e.reason(),
            e.to_string(),
            old.managed_objects.clone(),
        ),
    };
    let ready = condition(
        old.conditions.iter().find(|c| c.type_ == READY),
        status,
        reason,
        message,
        system.metadata.generation,
        now,
    );
    let (compliant, summary, items, sensors) = match checklist {
        Some(items) => {
            let (summary, compliant) = crate::checklist::summarize(items);
            (Some(compliant), Some(summary), items.to_vec(), sensors)
        }
        None => (old.compliant, old.summary, old.items, old.sensors),
    };
    IoTSystemStatus {
        observed_generation: system.metadata.generation,
        conditions: vec![ready],
        component_count: system.spec.components.len() as i32,
        managed_objects: managed,
        compliant,
        summary,
        items,
        endpoints: endpoints.unwrap_or(old.endpoints),
        sensors,
        // The reconcile appends to it when it decided something.
        decision_log: old.decision_log,
    }
}

/// Devices listed in status: the silent first, at most this many.
const LISTED_DEVICES: usize = 50;

/// The heard devices for status. Only silent devices carry their last-seen
/// time: a heartbeat then changes nothing, so status is written when a
/// device falls silent or is heard again, not on every message.
pub fn sensor_status(heartbeats: &BTreeMap<String, Judged>) -> Option<SensorStatus> {
    if heartbeats.is_empty() {
        return None;
    }
    let mut devices: Vec<DeviceStatus> = heartbeats
        .iter()
        .flat_map(|(component, j)| {
            j.devices.iter().map(move |d| DeviceStatus {
                component: component.clone(),
                device: d.device.clone(),
                silent: d.silent,
                last_seen: d.last_seen.filter(|_| d.silent).map(rfc3339),
            })
        })
        .collect();
    devices.sort_by(|a, b| {
        b.silent
            .cmp(&a.silent)
            .then_with(|| (&a.component, &a.device).cmp(&(&b.component, &b.device)))
    });
    let silent = devices.iter().filter(|d| d.silent).count();
    let total = devices.len();
    devices.truncate(LISTED_DEVICES);
    let not_listening: Vec<&str> = heartbeats
        .iter()
        .filter(|(_, j)| !matches!(j.listening, Listening::Since(_)))
        .map(|(c, _)| c.as_str())
        .collect();
    let mut summary = format!("{silent} of {total} devices silent");
    if !not_listening.is_empty() {
        summary.push_str(&format!("; not listening for {}", not_listening.join(", ")));
    }
    Some(SensorStatus { summary, devices })
}

fn rfc3339(at: std::time::SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn managed(key: &ObjectKey, applied: bool) -> ManagedObject {
    ManagedObject {
        kind: key.kind.to_string(),
        name: key.name.clone(),
        applied,
    }
}

fn planned_keys(planned: &DesiredObjects) -> Vec<ObjectKey> {
    let DesiredObjects {
        service_accounts,
        roles,
        role_bindings,
        network_policies,
        certificates,
        config_maps,
        prometheus_rules,
    } = planned;
    let keys = |kind: &'static str, names: Vec<String>| {
        names.into_iter().map(move |name| ObjectKey { kind, name })
    };
    keys(
        "ServiceAccount",
        service_accounts.iter().map(|o| o.name_any()).collect(),
    )
    .chain(keys("Role", roles.iter().map(|o| o.name_any()).collect()))
    .chain(keys(
        "RoleBinding",
        role_bindings.iter().map(|o| o.name_any()).collect(),
    ))
    .chain(keys(
        "NetworkPolicy",
        network_policies.iter().map(|o| o.name_any()).collect(),
    ))
    .chain(keys(
        "Certificate",
        certificates.iter().map(|o| o.name_any()).collect(),
    ))
    .chain(keys(
        "ConfigMap",
        config_maps.iter().map(|o| o.name_any()).collect(),
    ))
    .chain(keys(
        "PrometheusRule",
        prometheus_rules.iter().map(|o| o.name_any()).collect(),
    ))
    .collect()
}

/// The transition time moves only when the condition's status changes.
fn condition(
    old: Option<&Condition>,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = match old {
        Some(o) if o.status == status => o.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: READY.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The systems cache keeps each item's evidence and remediation as a
/// fingerprint: they were most of a cached system (12 of 28 KB at 1,000
/// systems), and a reconcile only compares them. A fingerprint starts with
/// a NUL, which no evidence holds, so a status that carries one (the old
/// items an invalid spec keeps) is recomputed from the server's copy
/// before it is written.
const FINGERPRINT: char = '\0';

/// Replaces the evidence and remediation of each item by their fingerprint
/// (16 bytes); an item already fingerprinted stays as it is.
pub fn fingerprint_items(status: &mut IoTSystemStatus) {
    use std::hash::{Hash, Hasher};
    for item in &mut status.items {
        if item.evidence.starts_with(FINGERPRINT) {
            continue;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        item.evidence.hash(&mut h);
        item.remediation.hash(&mut h);
        item.evidence = format!("{FINGERPRINT}{:015x}", h.finish() >> 4);
        item.remediation = None;
    }
}

/// The status as the systems cache keeps it.
fn as_cached(status: &IoTSystemStatus) -> IoTSystemStatus {
    let mut cached = status.clone();
    fingerprint_items(&mut cached);
    cached
}

fn carries_fingerprints(status: &IoTSystemStatus) -> bool {
    status
        .items
        .iter()
        .any(|i| i.evidence.starts_with(FINGERPRINT))
}

/// Writes the status `desired` computes from what the object already says,
/// unless it says that already. Returns whether it wrote. The cached copy
/// may lag behind (a watch reconnecting after the API server restarted):
/// the write holds only if the object is still the version the cache gave
/// (its resourceVersion as a precondition). Otherwise, or when the status
/// keeps items whose evidence the cache holds only as fingerprints, the
/// server's copy is read once and the status computed again from it, so
/// nothing already written (a transition time included) is written again.
pub async fn write_if_changed(
    api: &Api<IoTSystem>,
    system: &IoTSystem,
    desired: impl Fn(&IoTSystem) -> IoTSystemStatus,
) -> Result<bool, kube::Error> {
    let status = desired(system);
    if system.status.as_ref().map(as_cached) == Some(as_cached(&status)) {
        return Ok(false);
    }
    if !carries_fingerprints(&status)
        && let Some(version) = system.metadata.resource_version.as_deref()
    {
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "status": merge_body(&status),
        });
        match api
            .patch_status(
                &system.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let fresh = api.get_status(&system.name_any()).await?;
    if fresh.metadata.uid != system.metadata.uid {
        // Deleted and created again since it was cached: the new object
        // has a reconcile of its own coming.
        return Ok(false);
    }
    // The spec reconciled stays this one: only the status is the server's.
    let mut basis = system.clone();
    basis.status = fresh.status.clone();
    let status = desired(&basis);
    if fresh.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    api.patch_status(
        &system.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": merge_body(&status) })),
    )
    .await?;
    Ok(true)
}

/// The status as a merge patch: a field left out when empty is sent as
/// null, or the server would keep its old value and every later reconcile
/// would find a difference to write.
fn merge_body(status: &IoTSystemStatus) -> serde_json::Value {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = body.as_object_mut() {
        for optional in [
            "sensors",
            "endpoints",
            "compliant",
            "summary",
            "observedGeneration",
        ] {
            fields.entry(optional).or_insert(serde_json::Value::Null);
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::FACTORY;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn system() -> IoTSystem {
        let mut s: IoTSystem = serde_saphyr::from_str(FACTORY).unwrap();
        s.metadata.generation = Some(4);
        s
    }

    #[test]
    fn reconciled_system_is_ready_and_lists_its_objects() {
        let report = ApplyReport {
            applied: vec![ObjectKey {
                kind: "Role",
                name: "factory-admin".into(),
            }],
            kept: vec![ObjectKey {
                kind: "ServiceAccount",
                name: "factory-gateway".into(),
            }],
            pruned: vec![],
            ..ApplyReport::default()
        };
        let status = desired_status(
            &system(),
            &Outcome::Enforced { report: &report },
            None,
            None,
            None,
            &at(100),
        );
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.component_count, 3);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Reconciled")
        );
        assert_eq!(ready.last_transition_time, at(100));
        assert_eq!(status.managed_objects[0].kind, "Role");
        assert!(status.managed_objects.iter().all(|m| m.applied));
    }

    fn judged(evidence: &str, remediation: Option<&str>) -> IoTSystemStatus {
        IoTSystemStatus {
            items: vec![ItemStatus {
                id: "I-2".into(),
                verdict: crate::api::Verdict::Fail,
                evidence: evidence.into(),
                remediation: remediation.map(Into::into),
            }],
            ..IoTSystemStatus::default()
        }
    }

    #[test]
    fn the_cache_keeps_evidence_as_a_fingerprint_that_tells_changes_apart() {
        let full = judged("a legacy token Secret for gateway", Some("delete it"));
        let cached = as_cached(&full);
        let print = &cached.items[0];
        assert_eq!(
            (print.id.as_str(), print.verdict),
            ("I-2", crate::api::Verdict::Fail)
        );
        assert_eq!(print.evidence.len(), 16, "one 16-byte allocation");
        assert!(print.remediation.is_none());
        assert!(carries_fingerprints(&cached) && !carries_fingerprints(&full));
        assert_eq!(
            as_cached(&cached),
            cached,
            "fingerprinting twice changes nothing"
        );
        assert_eq!(
            as_cached(&full.clone()),
            cached,
            "the same evidence, the same print"
        );
        for other in [
            judged("a legacy token Secret for gateway2", Some("delete it")),
            judged("a legacy token Secret for gateway", None),
            judged("a legacy token Secret for gateway", Some("delete them")),
        ] {
            assert_ne!(as_cached(&other), cached, "{other:?}");
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let report = ApplyReport::default();
        let mut s = system();
        s.status = Some(desired_status(
            &s,
            &Outcome::Enforced { report: &report },
            None,
            None,
            None,
            &at(100),
        ));
        let again = desired_status(
            &s,
            &Outcome::Enforced { report: &report },
            None,
            None,
            None,
            &at(200),
        );
        assert_eq!(
            Some(&again),
            s.status.as_ref(),
            "nothing changed, nothing to write"
        );

        let invalid = ValidationError::EmptySelector("gateway".into());
        let failed = desired_status(&s, &Outcome::Invalid(&invalid), None, None, None, &at(300));
        assert_eq!(failed.conditions[0].status, "False");
        assert_eq!(failed.conditions[0].reason, "InvalidSpec");
        assert!(failed.conditions[0].message.contains("gateway"));
        assert_eq!(failed.conditions[0].last_transition_time, at(300));
    }
}
