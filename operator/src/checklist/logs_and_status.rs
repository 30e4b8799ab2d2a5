//! Logs and sensor status: III-1 (logs shipped off the node), VII-1
//! (sensors heard), VII-2 (logs protected).

use std::time::Duration;

use super::{Scope, evidence::Check, evidence::Offences, pod_name};
use crate::controller::shipping::{CANARY_DEADLINE, CanaryVerdict};
use crate::heartbeat::{Judged, Listening};

/// III-1: the system's logs reach the store `spec.logging` names. Passes only
/// on delivery observed: the collector's own counters show records of the
/// system sent and none failing, and, with `queryUrl`, the store answers
/// with them and keeps them as long as declared.
pub fn check_log_shipping(s: &Scope<'_>) -> Check {
    let Some(logging) = &s.system.logging else {
        return Check::fail(
            "no spec.logging: the container and WAF audit logs stay on the nodes, where the kubelet rotates them away",
        );
    };
    let findings = match &s.snapshot.shipping {
        None => {
            return Check::unknown(format!(
                "logs go to {}; delivery is observed only by the running operator",
                logging.endpoint
            ));
        }
        Some(Err(why)) => return Check::unknown(why.clone()),
        Some(Ok(f)) => f,
    };
    let endpoint = &findings.endpoint;
    if let Err(why) = &findings.plan {
        return Check::fail(format!("the logs are not shipped: {why}"));
    }
    match &findings.collectors {
        Err(why) => return Check::fail(format!("the log collector does not run: {why}")),
        Ok((0, _)) => {
            return Check::fail("the log collector DaemonSet has no pod on any node");
        }
        Ok((wanted, ready)) if ready < wanted => {
            return Check::fail(format!(
                "{ready} of {wanted} log collector pods are ready with the current configuration; the others' nodes ship nothing"
            ));
        }
        Ok(_) => {}
    }
    if findings.failing {
        return Check::fail(format!(
            "the log collector failed to deliver records to {endpoint} (its failed count rose)"
        ));
    }
    if !findings.unscraped.is_empty() {
        return Check::unknown(format!(
            "the counters of some log collector pods could not be read: {}",
            findings.unscraped.join("; ")
        ));
    }
    if !findings.sent_any {
        return Check::unknown(format!(
            "shipping to {endpoint} is configured, but no record of the system has been sent yet"
        ));
    }
    let mut evidence = format!(
        "the log collector delivers the system's records to {endpoint} over TLS verified against logging.caSecret, with none failing"
    );
    if let Some(read_back) = &findings.read_back {
        match read_back {
            Ok(true) => evidence.push_str("; the latest records were read back from the store"),
            Ok(false) => {
                return Check::fail(format!(
                    "the collector reports records sent to {endpoint}, but the store has none of them"
                ));
            }
            Err(why) => {
                return Check::unknown(format!(
                    "records are sent to {endpoint}; reading them back failed: {why}"
                ));
            }
        }
    }
    match &findings.canary {
        None => {}
        Some(CanaryVerdict::ReadBack) => evidence.push_str(
            "; a canary record given to the collector on every node came back from the store",
        ),
        Some(CanaryVerdict::Awaited) => {
            return Check::unknown(format!(
                "records are sent to {endpoint}; the canary record given to the collector has not come back from the store yet"
            ));
        }
        Some(CanaryVerdict::Missing { nonce }) => {
            return Check::fail(format!(
                "the canary record {nonce} given to the collector is not in the store after {} minutes: records do not get through now",
                CANARY_DEADLINE.as_secs() / 60
            ));
        }
        Some(CanaryVerdict::Failed(why)) => {
            return Check::unknown(format!(
                "records are sent to {endpoint}; the canary record could not be followed: {why}"
            ));
        }
    }
    if let (Some(wanted), Some(kept)) = (logging.retention, &findings.store_retention) {
        match kept {
            Ok(kept) if *kept < wanted => {
                return Check::fail(format!(
                    "the store keeps records for {}, less than logging.retention {}",
                    days(*kept),
                    days(wanted)
                ));
            }
            Ok(kept) => evidence.push_str(&format!(
                "; the store keeps them for {} (at least {})",
                days(*kept),
                days(wanted)
            )),
            Err(why) => {
                return Check::unknown(format!(
                    "records are delivered; the store's retention is not known: {why}"
                ));
            }
        }
    }
    Check::pass(evidence)
}

fn days(d: Duration) -> String {
    let hours = d.as_secs() / 3600;
    if hours.is_multiple_of(24) {
        format!("{}d", hours / 24)
    } else {
        format!("{hours}h")
    }
}

/// VII-2: logs are protected from reading and tampering: who may read the
/// pods' logs through the API (`pods/log`: only the system's admins and
/// operators; the built-in `view`, `edit` and `admin` roles grant it too),
/// whether the operator keeps its signed decision record, and whether the
/// logs leave the node over verified TLS (III-1's delivery).
pub fn check_log_protection(s: &Scope<'_>) -> Check {
    use super::user_management::{bound_rules, grants, same_subject};
    let mut offences = Offences::default();
    let allowed: Vec<_> = s
        .system
        .access
        .admins
        .iter()
        .chain(&s.system.access.operators)
        .collect();
    // The built-in roles grant it whether or not their rules are at hand
    // (offline, manifests rarely carry them): view, and thus edit and
    // admin, read pods/log.
    let reads_logs = |role: &k8s_openapi::api::rbac::v1::RoleRef, rules: Option<&[_]>| {
        (role.kind == "ClusterRole"
            && ["cluster-admin", "admin", "edit", "view"].contains(&role.name.as_str()))
            || rules.is_some_and(|r| grants(r, "pods/log", "get"))
    };
    for binding in &s.snapshot.role_bindings {
        if !reads_logs(&binding.role_ref, bound_rules(s, binding)) {
            continue;
        }
        for subject in binding.subjects.iter().flatten() {
            if !allowed.iter().any(|a| same_subject(a, subject)) {
                offences.add(format!(
                    "RoleBinding {} lets {} {} read pods/log through {} {}; only the system's admins and operators may",
                    binding.metadata.name.as_deref().unwrap_or("?"),
                    subject.kind,
                    subject.name,
                    binding.role_ref.kind,
                    binding.role_ref.name
                ));
            }
        }
    }
    // Cluster-wide bindings read every namespace's logs; the cluster's own
    // identities (its controllers, nodes, system:masters) are the
    // cluster's business, not the system's.
    let cluster_wide = match &s.snapshot.cluster_role_bindings {
        Some(bindings) => {
            for binding in bindings {
                let rules = s
                    .snapshot
                    .cluster_roles
                    .iter()
                    .find(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()))
                    .map(|r| r.rules.as_deref().unwrap_or_default());
                if !reads_logs(&binding.role_ref, rules) {
                    continue;
                }
                for subject in binding.subjects.iter().flatten() {
                    if !control_plane(subject) && !allowed.iter().any(|a| same_subject(a, subject))
                    {
                        offences.add(format!(
                            "ClusterRoleBinding {} lets {} {} read pods/log in every namespace through ClusterRole {}; only the system's admins and operators may",
                            binding.metadata.name.as_deref().unwrap_or("?"),
                            subject.kind,
                            subject.name,
                            binding.role_ref.name
                        ));
                    }
                }
            }
            None
        }
        None => Some("ClusterRoleBindings are not visible to the operator (it may not list them)"),
    };
    let record = match &s.snapshot.decision_record {
        None => "the decision record is kept only by the running operator".to_string(),
        Some(Err(why)) => {
            offences.add(format!("no decision record: {why}"));
            String::new()
        }
        // No size: evidence that grew with every decision would rewrite
        // the status once more after each.
        Some(Ok(_)) => "the operator's decisions are in a signed Merkle log".to_string(),
    };
    let shipped = match &s.snapshot.shipping {
        _ if s.system.logging.is_none() => {
            offences.add("no spec.logging: the logs stay on the nodes, unprotected from whoever controls a node".to_string());
            None
        }
        Some(Ok(f)) if f.plan.is_ok() && f.sent_any && !f.failing => Some(Ok(())),
        Some(Ok(_)) => Some(Err(
            "the logs are not yet delivered off the node (see III-1)".to_string(),
        )),
        Some(Err(why)) => Some(Err(why.clone())),
        None => Some(Err(
            "whether the logs are shipped is observed only by the running operator".to_string(),
        )),
    };
    if !offences.is_empty() {
        return offences.verdict(String::new());
    }
    if let Some(why) = cluster_wide {
        return Check::unknown(format!("no RoleBinding lets others read pods/log; {why}"));
    }
    let evidence =
        format!("pods/log is readable only by the system's admins and operators; {record}");
    match shipped {
        Some(Ok(())) => Check::pass(format!(
            "{evidence}; the logs leave the node over TLS verified against logging.caSecret"
        )),
        Some(Err(why)) => Check::unknown(format!("{evidence}; {why}")),
        None => Check::unknown(evidence),
    }
}

/// Kubernetes' own identities, which its bootstrap binds cluster-wide: its
/// controllers (ServiceAccounts and users of kube-system), the nodes, and
/// the superuser group. Groups of every account or user are not among them.
fn control_plane(subject: &k8s_openapi::api::rbac::v1::Subject) -> bool {
    let name = subject.name.as_str();
    match subject.kind.as_str() {
        "ServiceAccount" => subject.namespace.as_deref() == Some("kube-system"),
        "User" => {
            name.starts_with("system:kube-")
                || name.starts_with("system:node:")
                || name == "system:apiserver"
                || name.starts_with("system:serviceaccount:kube-system:")
        }
        "Group" => matches!(
            name,
            "system:masters" | "system:nodes" | "system:serviceaccounts:kube-system"
        ),
        _ => false,
    }
}

/// Restarts and crash loops over a component's pods, for the metrics the
/// VIII-1 alert rules read.
pub fn pod_health(pods: &[&k8s_openapi::api::core::v1::Pod]) -> crate::metrics::PodHealth {
    let statuses = pods
        .iter()
        .flat_map(|p| p.status.iter())
        .flat_map(|s| s.container_statuses.iter().flatten());
    let mut health = crate::metrics::PodHealth::default();
    for s in statuses {
        health.restarts += i64::from(s.restart_count);
        if crash_looping(s) {
            health.crash_looping += 1;
        }
    }
    health
}

fn crash_looping(s: &k8s_openapi::api::core::v1::ContainerStatus) -> bool {
    s.state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref())
        == Some("CrashLoopBackOff")
}

/// Devices named in one piece of evidence; the status lists more.
const NAMED: usize = 5;

/// VII-1: the status of every sensor can be told. Sensor pods: liveness and
/// readiness probes, and none crash-looping. Sensors outside the cluster:
/// every device declared or heard has been heard within `maxSilence`.
pub fn check_sensor_status(s: &Scope<'_>) -> Check {
    let mut offences = Offences::default();
    let mut passed = Vec::new();
    let mut unknown = Vec::new();
    let mut checked = 0;
    for c in &s.targets {
        let heartbeat = c.component.heartbeat.as_ref();
        if let Some(mqtt) = heartbeat.and_then(|h| h.mqtt.as_ref()) {
            let judged = s
                .snapshot
                .heartbeats
                .as_ref()
                .and_then(|h| h.get(&c.component.name));
            match judged {
                None if s.snapshot.heartbeats.is_none() => unknown.push(format!(
                    "{}: heartbeats on {} are heard only by the running operator",
                    c.component.name, mqtt.topic
                )),
                None => unknown.push(format!(
                    "{}: not listening on {} yet",
                    c.component.name, mqtt.topic
                )),
                Some(j) => judge_devices(
                    &c.component.name,
                    j,
                    &mut offences,
                    &mut passed,
                    &mut unknown,
                ),
            }
        }
        if c.pods.is_empty() {
            if heartbeat.is_none_or(|h| h.mqtt.is_none()) {
                unknown.push(format!(
                    "no pods of sensor {} (external sensors? declare heartbeat.mqtt)",
                    c.component.name
                ));
            }
            continue;
        }
        for pod in &c.pods {
            for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                checked += 1;
                for (probe, what) in [
                    (&container.liveness_probe, "liveness"),
                    (&container.readiness_probe, "readiness"),
                ] {
                    if probe.is_none() {
                        offences.add(format!(
                            "pod {} container {} has no {what} probe",
                            pod_name(pod),
                            container.name
                        ));
                    }
                }
            }
            for status in pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
            {
                if crash_looping(status) {
                    offences.add(format!(
                        "pod {} container {} is crash-looping ({} restarts)",
                        pod_name(pod),
                        status.name,
                        status.restart_count
                    ));
                }
            }
        }
    }
    if !offences.is_empty() {
        return offences.verdict(String::new());
    }
    if !unknown.is_empty() {
        return Check::unknown(unknown.join("; "));
    }
    let mut what = Vec::new();
    if checked > 0 {
        what.push(format!(
            "{checked} sensor containers have liveness and readiness probes and none is crash-looping"
        ));
    }
    what.extend(passed);
    Check::pass(what.join("; "))
}

fn judge_devices(
    component: &str,
    j: &Judged,
    offences: &mut Offences,
    passed: &mut Vec<String>,
    unknown: &mut Vec<String>,
) {
    let silent: Vec<_> = j.devices.iter().filter(|d| d.silent).collect();
    let heard = j.devices.len() - silent.len();
    match (&j.listening, j.devices.is_empty()) {
        // Never subscribed and nothing known: nothing can be said yet.
        (Listening::Not(why), true) => {
            unknown.push(format!("{component}: cannot listen on {}: {why}", j.source));
            return;
        }
        (Listening::Since(since), true) => {
            let listened = j.now.duration_since(*since).unwrap_or_default();
            if listened <= j.max_silence {
                unknown.push(format!(
                    "{component}: listening on {} for {}, no device heard yet",
                    j.source,
                    secs(listened)
                ));
            } else {
                offences.add(format!(
                    "{component}: no device heard on {} in {} (maxSilence {})",
                    j.source,
                    secs(listened),
                    secs(j.max_silence)
                ));
            }
            return;
        }
        _ => {}
    }
    if silent.is_empty() {
        passed.push(format!(
            "{component}: all {heard} devices heard within {} on {}",
            secs(j.max_silence),
            j.source
        ));
        return;
    }
    let mut names: Vec<String> = silent
        .iter()
        .take(NAMED)
        .map(|d| match d.last_seen {
            Some(at) => format!(
                "{} (silent for {})",
                d.device,
                secs(j.now.duration_since(at).unwrap_or_default())
            ),
            None => format!("{} (never heard)", d.device),
        })
        .collect();
    if silent.len() > NAMED {
        names.push(format!("and {} more", silent.len() - NAMED));
    }
    let connection = match &j.listening {
        Listening::Not(why) => format!("; not listening: {why}"),
        Listening::Since(_) => String::new(),
    };
    offences.add(format!(
        "{component}: {} of {} devices silent longer than {}: {}{connection}",
        silent.len(),
        j.devices.len(),
        secs(j.max_silence),
        names.join(", ")
    ));
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::Arc,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{
        api::Verdict,
        build::fixtures::{FACTORY, validated},
        checklist::{Snapshot, component_pods},
        controller::shipping::ShippingFindings,
        heartbeat::{DeviceState, judge},
    };

    const T0: Duration = Duration::from_secs(2_000_000_000);

    fn with_mqtt() -> String {
        FACTORY.replace(
            "heartbeat: {maxSilence: 60s}",
            "heartbeat: {maxSilence: 60s, mqtt: {broker: gateway, port: mqtts, topic: plant/+/status}, devices: [press-1]}",
        )
    }

    fn vii1(snapshot: &Snapshot) -> Check {
        let system = validated(&with_mqtt());
        let all = component_pods(&system, snapshot);
        let scope = Scope {
            system: &system,
            snapshot,
            targets: all
                .iter()
                .filter(|c| c.component.name == "line-sensor")
                .collect(),
            all: &all,
        };
        check_sensor_status(&scope)
    }

    fn heard(listening: Listening, seen: &[(&str, u64)]) -> Snapshot {
        let now = SystemTime::UNIX_EPOCH + T0;
        let last_seen: BTreeMap<String, SystemTime> = seen
            .iter()
            .map(|(d, ago)| (d.to_string(), now - Duration::from_secs(*ago)))
            .collect();
        let devices: Vec<DeviceState> = judge(
            &["press-1".into()],
            &last_seen,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            now,
        );
        Snapshot {
            heartbeats: Some(BTreeMap::from([(
                "line-sensor".to_string(),
                Judged {
                    listening,
                    source: "topic plant/+/status on gateway.plant.svc".into(),
                    max_silence: Duration::from_secs(60),
                    now,
                    devices,
                },
            )])),
            ..Snapshot::default()
        }
    }

    fn since(ago: u64) -> Listening {
        Listening::Since(SystemTime::UNIX_EPOCH + T0 - Duration::from_secs(ago))
    }

    #[test]
    fn devices_heard_within_max_silence_pass() {
        let c = vii1(&heard(since(300), &[("press-1", 5), ("press-2", 59)]));
        assert_eq!(c.verdict, Verdict::Pass, "{}", c.evidence);
        assert!(
            c.evidence.contains("all 2 devices heard within 60s"),
            "{}",
            c.evidence
        );
    }

    #[test]
    fn silent_and_never_heard_devices_fail_by_name() {
        let c = vii1(&heard(since(300), &[("press-2", 61)]));
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.evidence.contains(
                "2 of 2 devices silent longer than 60s: press-1 (never heard), press-2 (silent for 61s)"
            ),
            "{}",
            c.evidence
        );
    }

    #[test]
    fn a_lost_broker_connection_is_named_beside_the_silent_devices() {
        let c = vii1(&heard(
            Listening::Not("TLS: invalid peer certificate".into()),
            &[("press-1", 120)],
        ));
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.evidence
                .ends_with("; not listening: TLS: invalid peer certificate"),
            "{}",
            c.evidence
        );
    }

    #[test]
    fn nothing_heard_yet_is_unknown_until_max_silence_has_passed() {
        let mut snapshot = heard(since(30), &[]);
        // No declared device either.
        if let Some(j) = snapshot.heartbeats.as_mut().unwrap().get_mut("line-sensor") {
            j.devices.clear();
        }
        let c = vii1(&snapshot);
        assert_eq!(c.verdict, Verdict::Unknown, "{}", c.evidence);
        assert!(
            c.evidence.contains("listening on topic plant/+/status"),
            "{}",
            c.evidence
        );
        if let Some(j) = snapshot.heartbeats.as_mut().unwrap().get_mut("line-sensor") {
            j.listening = since(61);
        }
        let c = vii1(&snapshot);
        assert_eq!(c.verdict, Verdict::Fail, "{}", c.evidence);
        assert!(
            c.evidence.contains("no device heard on topic"),
            "{}",
            c.evidence
        );
        if let Some(j) = snapshot.heartbeats.as_mut().unwrap().get_mut("line-sensor") {
            j.listening = Listening::Not("no ready pod".into());
        }
        let c = vii1(&snapshot);
        assert_eq!(c.verdict, Verdict::Unknown, "{}", c.evidence);
        assert!(c.evidence.contains("cannot listen on"), "{}", c.evidence);
    }

    #[test]
    fn offline_the_heartbeat_is_left_unknown_with_the_reason() {
        let c = vii1(&Snapshot::default());
        assert_eq!(c.verdict, Verdict::Unknown);
        assert!(
            c.evidence.contains("heard only by the running operator"),
            "{}",
            c.evidence
        );
    }

    #[test]
    fn a_crash_looping_sensor_pod_fails_and_counts_in_pod_health() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-0", "namespace": "plant", "labels": {"app": "line-sensor"}},
            "spec": {"containers": [{"name": "c", "image": "x",
                "livenessProbe": {"exec": {"command": ["true"]}},
                "readinessProbe": {"exec": {"command": ["true"]}}}]},
            "status": {"containerStatuses": [{"name": "c", "image": "x", "imageID": "", "ready": false,
                "restartCount": 7, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }))
        .unwrap();
        let mut snapshot = heard(since(300), &[("press-1", 1)]);
        snapshot.pods = vec![Arc::new(pod)];
        let c = vii1(&snapshot);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.evidence
                .contains("pod s-0 container c is crash-looping (7 restarts)"),
            "{}",
            c.evidence
        );
        let pods: Vec<_> = snapshot.pods.iter().map(|p| p.as_ref()).collect();
        assert_eq!(
            pod_health(&pods),
            crate::metrics::PodHealth {
                restarts: 7,
                crash_looping: 1
            }
        );
    }

    /// The factory, shipping its logs (with read-back and retention when `full`).
    fn logged(full: bool) -> String {
        let extra = if full {
            ", queryUrl: \"https://logs.example:9428\", retention: 30d"
        } else {
            ""
        };
        format!(
            "{FACTORY}  logging: {{endpoint: \"https://logs.example:9428/insert/opentelemetry/v1/logs\", caSecret: logs-ca{extra}}}\n"
        )
    }

    fn judge_item(yaml: &str, snapshot: &Snapshot, check: fn(&Scope<'_>) -> Check) -> Check {
        let system = validated(yaml);
        let all = component_pods(&system, snapshot);
        let scope = Scope {
            system: &system,
            snapshot,
            targets: all.iter().collect(),
            all: &all,
        };
        check(&scope)
    }

    fn vii2(snapshot: &Snapshot) -> Check {
        judge_item(&logged(false), snapshot, check_log_protection)
    }

    fn iii1(full: bool, findings: Option<Result<ShippingFindings, String>>) -> Check {
        let snapshot = Snapshot {
            shipping: findings,
            ..Snapshot::default()
        };
        judge_item(&logged(full), &snapshot, check_log_shipping)
    }

    /// Records delivered, read back, kept 30 days, by one ready collector.
    fn delivered() -> ShippingFindings {
        ShippingFindings {
            endpoint: "https://logs.example:9428/insert/opentelemetry/v1/logs".into(),
            plan: Ok(()),
            collectors: Ok((1, 1)),
            unscraped: vec![],
            sent_any: true,
            failing: false,
            read_back: Some(Ok(true)),
            store_retention: Some(Ok(Duration::from_secs(30 * 86_400))),
            canary: Some(CanaryVerdict::ReadBack),
        }
    }

    #[test]
    fn iii1_passes_only_on_delivery_observed() {
        let c = iii1(true, Some(Ok(delivered())));
        assert_eq!(c.verdict, Verdict::Pass, "{}", c.evidence);
        assert_eq!(
            c.evidence,
            "the log collector delivers the system's records to https://logs.example:9428/insert/opentelemetry/v1/logs over TLS verified against logging.caSecret, with none failing; the latest records were read back from the store; a canary record given to the collector on every node came back from the store; the store keeps them for 30d (at least 30d)"
        );
        // Without queryUrl the counters alone decide.
        let mut counters_only = delivered();
        counters_only.read_back = None;
        counters_only.store_retention = None;
        counters_only.canary = None;
        assert_eq!(iii1(false, Some(Ok(counters_only))).verdict, Verdict::Pass);

        let case = |change: fn(&mut ShippingFindings)| {
            let mut f = delivered();
            change(&mut f);
            iii1(true, Some(Ok(f)))
        };
        for (change, verdict, says) in [
            (
                (|f: &mut ShippingFindings| {
                    f.plan =
                        Err("logging.caSecret logs-ca: no such Secret in namespace plant".into())
                }) as fn(&mut ShippingFindings),
                Verdict::Fail,
                "the logs are not shipped: logging.caSecret logs-ca: no such Secret",
            ),
            (
                |f| f.collectors = Err("writing DaemonSet x: forbidden".into()),
                Verdict::Fail,
                "the log collector does not run: writing DaemonSet x: forbidden",
            ),
            (
                |f| f.collectors = Ok((0, 0)),
                Verdict::Fail,
                "no pod on any node",
            ),
            (
                |f| f.collectors = Ok((3, 2)),
                Verdict::Fail,
                "2 of 3 log collector pods are ready",
            ),
            (
                |f| f.failing = true,
                Verdict::Fail,
                "failed to deliver records",
            ),
            (
                |f| f.unscraped = vec!["c-1: cannot connect".into()],
                Verdict::Unknown,
                "c-1: cannot connect",
            ),
            (
                |f| f.sent_any = false,
                Verdict::Unknown,
                "no record of the system has been sent yet",
            ),
            (
                |f| f.read_back = Some(Ok(false)),
                Verdict::Fail,
                "the store has none of them",
            ),
            (
                |f| f.read_back = Some(Err("answered 401".into())),
                Verdict::Unknown,
                "reading them back failed: answered 401",
            ),
            (
                |f| f.canary = Some(CanaryVerdict::Awaited),
                Verdict::Unknown,
                "has not come back from the store yet",
            ),
            (
                |f| {
                    f.canary = Some(CanaryVerdict::Missing {
                        nonce: "00ff".into(),
                    })
                },
                Verdict::Fail,
                "the canary record 00ff given to the collector is not in the store after 5 minutes",
            ),
            (
                |f| {
                    f.canary = Some(CanaryVerdict::Failed(
                        "writing the canary record: forbidden".into(),
                    ))
                },
                Verdict::Unknown,
                "could not be followed: writing the canary record: forbidden",
            ),
            (
                |f| f.store_retention = Some(Ok(Duration::from_secs(7 * 86_400))),
                Verdict::Fail,
                "the store keeps records for 7d, less than logging.retention 30d",
            ),
            (
                |f| f.store_retention = Some(Err("no answer".into())),
                Verdict::Unknown,
                "retention is not known: no answer",
            ),
        ] {
            let c = case(change);
            assert_eq!(c.verdict, verdict, "{}", c.evidence);
            assert!(
                c.evidence.contains(says),
                "{says:?} not in {:?}",
                c.evidence
            );
        }
        // Offline, and an operator without a collector: not known.
        let offline = iii1(true, None);
        assert_eq!(offline.verdict, Verdict::Unknown);
        assert!(
            offline
                .evidence
                .contains("observed only by the running operator")
        );
        let c = iii1(
            true,
            Some(Err("the operator runs without a log collector".into())),
        );
        assert_eq!(
            (c.verdict, c.evidence.as_str()),
            (
                Verdict::Unknown,
                "the operator runs without a log collector"
            )
        );
        // No spec.logging at all: nothing leaves the node.
        let c = judge_item(FACTORY, &Snapshot::default(), check_log_shipping);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.evidence.starts_with("no spec.logging"), "{}", c.evidence);
    }

    #[test]
    fn vii2_passes_with_the_record_and_the_logs_delivered_over_verified_tls() {
        let mut snapshot = Snapshot {
            decision_record: Some(Ok(3)),
            shipping: Some(Ok(delivered())),
            cluster_role_bindings: Some(vec![]),
            ..Snapshot::default()
        };
        let c = vii2(&snapshot);
        assert_eq!(c.verdict, Verdict::Pass, "{}", c.evidence);
        assert!(
            c.evidence
                .ends_with("the logs leave the node over TLS verified against logging.caSecret")
        );
        let mut failing = delivered();
        failing.failing = true;
        snapshot.shipping = Some(Ok(failing));
        let c = vii2(&snapshot);
        assert_eq!(c.verdict, Verdict::Unknown, "{}", c.evidence);
        assert!(
            c.evidence.contains("not yet delivered off the node"),
            "{}",
            c.evidence
        );
        let c = judge_item(FACTORY, &snapshot, check_log_protection);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.evidence.contains("no spec.logging"), "{}", c.evidence);
    }

    fn binding(
        name: &str,
        role_kind: &str,
        role: &str,
        subject: (&str, &str),
    ) -> Arc<k8s_openapi::api::rbac::v1::RoleBinding> {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "plant"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": [{"kind": subject.0, "name": subject.1, "apiGroup": "rbac.authorization.k8s.io"}],
        }))
        .map(Arc::new)
        .unwrap()
    }

    #[test]
    fn pods_log_for_anyone_but_admins_and_operators_fails_vii2() {
        let mut snapshot = Snapshot {
            decision_record: Some(Ok(3)),
            cluster_role_bindings: Some(vec![]),
            ..Snapshot::default()
        };
        // The system's admins may; the built-in view role read by an auditor may not.
        snapshot.role_bindings = vec![
            binding(
                "admins-view",
                "ClusterRole",
                "view",
                ("Group", "factory-admins"),
            ),
            binding(
                "audit",
                "ClusterRole",
                "view",
                ("User", "auditor@example.com"),
            ),
        ];
        let c = vii2(&snapshot);
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(
            c.evidence,
            "RoleBinding audit lets User auditor@example.com read pods/log through ClusterRole view; only the system's admins and operators may"
        );
        // A Role of the namespace granting it counts too; one that does not, not.
        snapshot.role_bindings = vec![binding("logs", "Role", "log-reader", ("User", "intern"))];
        snapshot.roles = vec![
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "log-reader", "namespace": "plant"},
                "rules": [{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}],
            }))
            .map(Arc::new)
            .unwrap(),
        ];
        assert_eq!(vii2(&snapshot).verdict, Verdict::Fail);
        Arc::make_mut(&mut snapshot.roles[0])
            .rules
            .as_mut()
            .unwrap()[0]
            .resources = Some(vec!["pods".into()]);
        let c = vii2(&snapshot);
        assert_eq!(c.verdict, Verdict::Unknown, "{}", c.evidence);
        assert!(c.evidence.contains("signed Merkle log"), "{}", c.evidence);
        assert!(
            c.evidence.contains("observed only by the running operator"),
            "{}",
            c.evidence
        );
    }

    fn cluster_binding(
        name: &str,
        role: &str,
        subject: serde_json::Value,
    ) -> Arc<k8s_openapi::api::rbac::v1::ClusterRoleBinding> {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [subject],
        }))
        .map(Arc::new)
        .unwrap()
    }

    #[test]
    fn cluster_wide_bindings_that_read_pods_log_fail_vii2_but_the_clusters_own_do_not() {
        let gc_role: k8s_openapi::api::rbac::v1::ClusterRole =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "system:controller:generic-garbage-collector"},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "delete"]}],
            }))
            .unwrap();
        let log_reader: k8s_openapi::api::rbac::v1::ClusterRole =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "log-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]}],
            }))
            .unwrap();
        // What Kubernetes binds itself (as on the test plane), and the
        // system's admins through a cluster-wide view.
        let own = vec![
            cluster_binding(
                "cluster-admin",
                "cluster-admin",
                serde_json::json!({"kind": "Group", "name": "system:masters", "apiGroup": "rbac.authorization.k8s.io"}),
            ),
            cluster_binding(
                "system:controller:generic-garbage-collector",
                "system:controller:generic-garbage-collector",
                serde_json::json!({"kind": "ServiceAccount", "name": "generic-garbage-collector", "namespace": "kube-system"}),
            ),
            cluster_binding(
                "admins-view",
                "view",
                serde_json::json!({"kind": "Group", "name": "factory-admins", "apiGroup": "rbac.authorization.k8s.io"}),
            ),
        ];
        let mut snapshot = Snapshot {
            decision_record: Some(Ok(3)),
            shipping: Some(Ok(delivered())),
            cluster_roles: vec![Arc::new(gc_role), Arc::new(log_reader)],
            cluster_role_bindings: Some(own.clone()),
            ..Snapshot::default()
        };
        let c = vii2(&snapshot);
        assert_eq!(c.verdict, Verdict::Pass, "{}", c.evidence);

        for (binding, says) in [
            (
                cluster_binding(
                    "everyone-views",
                    "view",
                    serde_json::json!({"kind": "Group", "name": "system:authenticated", "apiGroup": "rbac.authorization.k8s.io"}),
                ),
                "ClusterRoleBinding everyone-views lets Group system:authenticated read pods/log in every namespace through ClusterRole view; only the system's admins and operators may",
            ),
            (
                cluster_binding(
                    "monitoring",
                    "log-reader",
                    serde_json::json!({"kind": "ServiceAccount", "name": "scraper", "namespace": "monitoring"}),
                ),
                "ClusterRoleBinding monitoring lets ServiceAccount scraper read pods/log",
            ),
            (
                cluster_binding(
                    "kube-system-user-lookalike",
                    "edit",
                    serde_json::json!({"kind": "User", "name": "system:serviceaccount:tools:ci", "apiGroup": "rbac.authorization.k8s.io"}),
                ),
                "lets User system:serviceaccount:tools:ci read pods/log",
            ),
        ] {
            let mut bindings = own.clone();
            bindings.push(binding);
            snapshot.cluster_role_bindings = Some(bindings);
            let c = vii2(&snapshot);
            assert_eq!(c.verdict, Verdict::Fail, "{}", c.evidence);
            assert!(
                c.evidence.contains(says),
                "{says:?} not in {:?}",
                c.evidence
            );
        }
        // A cluster role that reads pods but not their logs is fine.
        let mut bindings = own.clone();
        bindings.push(cluster_binding(
            "monitoring",
            "log-reader",
            serde_json::json!({"kind": "ServiceAccount", "name": "scraper", "namespace": "monitoring"}),
        ));
        snapshot.cluster_role_bindings = Some(bindings);
        assert_eq!(vii2(&snapshot).verdict, Verdict::Fail);
        Arc::make_mut(&mut snapshot.cluster_roles[1])
            .rules
            .as_mut()
            .unwrap()[0]
            .resources = Some(vec!["pods".into()]);
        assert_eq!(vii2(&snapshot).verdict, Verdict::Pass);

        // Not visible: no pass.
        snapshot.cluster_role_bindings = None;
        let c = vii2(&snapshot);
        assert_eq!(c.verdict, Verdict::Unknown, "{}", c.evidence);
        assert!(c.evidence.contains("may not list them"), "{}", c.evidence);
    }

    #[test]
    fn an_operator_without_its_record_fails_vii2() {
        let snapshot = Snapshot {
            decision_record: Some(Err("its key is unusable".into())),
            ..Snapshot::default()
        };
        let c = vii2(&snapshot);
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(c.evidence, "no decision record: its key is unusable");
    }
}
