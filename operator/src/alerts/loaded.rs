//! Whether Prometheus has a system's alert rules loaded and healthy, read
//! from the JSON body of `GET /api/v1/rules`.
//!
//! A rule counts only by what Prometheus reports: an alerting rule of the
//! expected name whose labels name the system (`iotsystem`,
//! `iotsystem_namespace`) and whose last evaluation did not fail. The
//! group and file names are not used, since the Prometheus Operator renames
//! rule files and the same rule may be loaded from more than one.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::alerts::Error;
use crate::alerts::rules::{LABEL_NAMESPACE, LABEL_SYSTEM};

/// What Prometheus reports about a system's expected alert rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Expected alerts with no alerting rule of that name and the system's
    /// labels.
    pub missing: Vec<String>,
    /// Expected alerts whose every copy fails to evaluate, with the last
    /// error Prometheus gave.
    pub unhealthy: Vec<(String, String)>,
    /// Expected alerts that are firing now.
    pub firing: Vec<String>,
}

impl Loaded {
    /// Every expected rule is loaded and evaluates.
    pub fn all_healthy(&self) -> bool {
        self.missing.is_empty() && self.unhealthy.is_empty()
    }
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    rules: Vec<ApiRule>,
}

#[derive(Deserialize)]
struct ApiRule {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    health: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default, rename = "lastError")]
    last_error: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Which of `expected` (alert names) are loaded for the system
/// `namespace`/`system`, according to `body`, the answer of
/// `GET /api/v1/rules` (with or without `?type=alert`).
pub fn loaded(
    body: &str,
    expected: &[&str],
    namespace: &str,
    system: &str,
) -> Result<Loaded, Error> {
    let envelope: Envelope = serde_json::from_str(body).map_err(Error::RulesShape)?;
    let data = match (envelope.status.as_str(), envelope.data) {
        ("success", Some(data)) => data,
        (status, _) => {
            return Err(Error::PrometheusApi {
                status: status.to_string(),
                error_type: envelope.error_type.unwrap_or_default(),
                error: envelope
                    .error
                    .unwrap_or_else(|| "the answer has no data".to_string()),
            });
        }
    };
    let ours: Vec<&ApiRule> = data
        .groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.kind == "alerting")
        .filter(|r| {
            let labels = r.labels.as_ref();
            let label = |name: &str| labels.and_then(|l| l.get(name)).map(String::as_str);
            label(LABEL_SYSTEM) == Some(system) && label(LABEL_NAMESPACE) == Some(namespace)
        })
        .collect();
    let mut out = Loaded::default();
    for name in expected {
        let copies: Vec<&&ApiRule> = ours.iter().filter(|r| r.name == *name).collect();
        if copies.is_empty() {
            out.missing.push(name.to_string());
            continue;
        }
        // "unknown" is a rule not evaluated yet: loaded, and not failing.
        if copies.iter().all(|r| r.health == "err") {
            let error = copies
                .iter()
                .find_map(|r| r.last_error.clone().filter(|e| !e.is_empty()))
                .unwrap_or_else(|| "evaluation failed".to_string());
            out.unhealthy.push((name.to_string(), error));
        }
        if copies.iter().any(|r| r.state.as_deref() == Some("firing")) {
            out.firing.push(name.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer of a real Prometheus (2.42) that loaded the rules of
    /// plant/line-1 and, as another file, a broken copy of one of them and
    /// rules of another system; see testdata/README.md.
    const REAL: &str = include_str!("testdata/prometheus-rules.json");

    const EXPECTED: &[&str] = &[
        "IoTSensorSilent",
        "IoTSensorCrashLooping",
        "IoTSensorRestarting",
        "IoTFailedLoginBurst",
        "IoTClientLockedOut",
        "IoTCertificateExpiringSoon",
    ];

    #[test]
    fn real_answer_of_prometheus() {
        let got = loaded(REAL, EXPECTED, "plant", "line-1").unwrap();
        assert_eq!(got.missing, Vec::<String>::new());
        assert_eq!(got.unhealthy, Vec::<(String, String)>::new());
        assert!(got.all_healthy());
        // The broken system's rules are not plant/line-1's.
        let broken = loaded(REAL, EXPECTED, "plant", "broken").unwrap();
        assert_eq!(broken.missing.len(), EXPECTED.len() - 2, "{broken:?}");
        assert_eq!(broken.unhealthy.len(), 1, "{broken:?}");
        assert_eq!(broken.unhealthy[0].0, "IoTSensorSilent");
        assert!(
            broken.unhealthy[0].1.contains("label_replace"),
            "{:?}",
            broken.unhealthy
        );
        assert_eq!(broken.firing, ["IoTCertificateExpiringSoon"]);
        assert!(!broken.all_healthy());
        let nobody = loaded(REAL, EXPECTED, "plant", "line-9").unwrap();
        assert_eq!(nobody.missing.len(), EXPECTED.len());
    }

    #[test]
    fn documented_shape() {
        let body = r#"{
          "status": "success",
          "data": {
            "groups": [{
              "name": "iotposture-plant-line-1",
              "file": "/etc/prometheus/rules/iotposture.yaml",
              "rules": [
                {"state": "firing", "name": "IoTSensorSilent", "query": "x > 0", "duration": 60,
                 "labels": {"iotsystem": "line-1", "iotsystem_namespace": "plant", "severity": "warning"},
                 "annotations": {}, "alerts": [], "health": "ok",
                 "evaluationTime": 0.001, "lastEvaluation": "2024-01-01T00:00:00Z", "type": "alerting"},
                {"state": "inactive", "name": "IoTSensorRestarting", "query": "y > 3", "duration": 0,
                 "labels": {"iotsystem": "line-1", "iotsystem_namespace": "plant"},
                 "health": "err", "lastError": "many-to-many matching not allowed", "type": "alerting"},
                {"name": "IoTSensorCrashLooping", "query": "z", "health": "ok", "type": "recording",
                 "labels": {"iotsystem": "line-1", "iotsystem_namespace": "plant"}},
                {"state": "inactive", "name": "IoTClientLockedOut", "query": "w", "duration": 0,
                 "labels": {"iotsystem": "line-2", "iotsystem_namespace": "plant"},
                 "health": "ok", "type": "alerting"},
                {"state": "inactive", "name": "IoTFailedLoginBurst", "query": "v", "duration": 0,
                 "health": "unknown", "type": "alerting",
                 "labels": {"iotsystem": "line-1", "iotsystem_namespace": "plant"}}
              ],
              "interval": 60, "limit": 0, "evaluationTime": 0.002,
              "lastEvaluation": "2024-01-01T00:00:00Z"
            }]
          }
        }"#;
        let got = loaded(
            body,
            &[
                "IoTSensorSilent",
                "IoTSensorRestarting",
                "IoTSensorCrashLooping",
                "IoTClientLockedOut",
                "IoTFailedLoginBurst",
            ],
            "plant",
            "line-1",
        )
        .unwrap();
        assert_eq!(
            got,
            Loaded {
                // A recording rule of the name, and another system's rule,
                // do not count.
                missing: vec![
                    "IoTSensorCrashLooping".to_string(),
                    "IoTClientLockedOut".to_string()
                ],
                unhealthy: vec![(
                    "IoTSensorRestarting".to_string(),
                    "many-to-many matching not allowed".to_string()
                )],
                firing: vec!["IoTSensorSilent".to_string()],
            }
        );
    }

    #[test]
    fn one_healthy_copy_is_enough() {
        let body = r#"{"status":"success","data":{"groups":[
          {"name":"a","file":"a.yaml","rules":[{"name":"IoTSensorSilent","type":"alerting","health":"err","lastError":"boom","state":"inactive","query":"q",
            "labels":{"iotsystem":"s","iotsystem_namespace":"n"}}]},
          {"name":"b","file":"b.yaml","rules":[{"name":"IoTSensorSilent","type":"alerting","health":"ok","state":"inactive","query":"q",
            "labels":{"iotsystem":"s","iotsystem_namespace":"n"}}]}]}}"#;
        let got = loaded(body, &["IoTSensorSilent"], "n", "s").unwrap();
        assert!(got.all_healthy(), "{got:?}");
    }

    #[test]
    fn errors_are_clear() {
        let err = loaded("<html>", &[], "n", "s").unwrap_err();
        assert!(matches!(err, Error::RulesShape(_)), "{err}");
        let err = loaded(r#"{"status":"success","data":{}}"#, &[], "n", "s").unwrap_err();
        assert!(err.to_string().contains("groups"), "{err}");
        let err = loaded(
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter"}"#,
            &[],
            "n",
            "s",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Prometheus answered status \"error\": bad_data: invalid parameter"
        );
        // The Alertmanager's status is not a rules answer.
        let err = loaded(r#"{"config":{"original":""}}"#, &[], "n", "s").unwrap_err();
        assert!(matches!(err, Error::RulesShape(_)), "{err}");
    }
}
