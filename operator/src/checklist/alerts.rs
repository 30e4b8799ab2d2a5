//! Chapter VIII, security alerts: VIII-1 and VIII-2 pass only when the
//! system's alert rules are loaded and healthy in Prometheus and an alert
//! with the system's labels is routed by Alertmanager to a receiver that
//! notifies someone (`controller::alerting` asks both).

use super::{Scope, evidence::Check};

/// The alerts of `item` reach someone: the pass evidence, or the verdict.
pub fn reach(s: &Scope<'_>, item: &str) -> Result<String, Check> {
    let findings = match &s.snapshot.alerting {
        None => {
            return Err(Check::unknown(
                "whether the alert rules are loaded and reach a receiver is seen only by the running operator (with --prometheus-url and --alertmanager-url)",
            ));
        }
        Some(Err(why)) => return Err(Check::unknown(why.clone())),
        Some(Ok(f)) => f,
    };
    let expected: Vec<&str> = findings
        .expected
        .iter()
        .filter(|(_, i)| i == item)
        .map(|(a, _)| a.as_str())
        .collect();
    if expected.is_empty() {
        return Err(Check::unknown(format!(
            "no alert rule of {item} applies to what the spec declares"
        )));
    }
    let loaded = match &findings.rules {
        Ok(l) => l,
        Err(why) => return Err(Check::unknown(format!("Prometheus: {why}"))),
    };
    let missing: Vec<&str> = loaded
        .missing
        .iter()
        .map(String::as_str)
        .filter(|a| expected.contains(a))
        .collect();
    if !missing.is_empty() {
        return Err(Check::fail(format!(
            "Prometheus has not loaded the rules {} of {}/{} ({}-alert-rules holds them: a PrometheusRule to select, or a ConfigMap to load into rule_files)",
            missing.join(", "),
            s.system.namespace,
            s.system.name,
            s.system.name
        )));
    }
    if let Some((alert, error)) = loaded
        .unhealthy
        .iter()
        .find(|(a, _)| expected.contains(&a.as_str()))
    {
        return Err(Check::fail(format!(
            "Prometheus cannot evaluate the rule {alert}: {error}"
        )));
    }
    let routes = match &findings.routes {
        None => {
            return Err(Check::unknown(format!(
                "the rules {} are loaded; without --alertmanager-url whether they reach anyone is not known",
                expected.join(", ")
            )));
        }
        Some(Err(why)) => return Err(Check::unknown(format!("Alertmanager: {why}"))),
        Some(Ok(routes)) => routes,
    };
    let mut receivers = Vec::new();
    for route in routes
        .iter()
        .filter(|r| expected.contains(&r.alert.as_str()))
    {
        if route.delivering.is_empty() {
            return Err(Check::fail(format!(
                "Alertmanager routes {} of {}/{} to {}, which notifies nobody (no *_configs)",
                route.alert,
                s.system.namespace,
                s.system.name,
                if route.silent.is_empty() {
                    "no receiver".to_string()
                } else {
                    route.silent.join(", ")
                }
            )));
        }
        for r in &route.delivering {
            if !receivers.contains(r) {
                receivers.push(r.clone());
            }
        }
    }
    let firing: Vec<&str> = loaded
        .firing
        .iter()
        .map(String::as_str)
        .filter(|a| expected.contains(a))
        .collect();
    let mut text = format!(
        "the rules {} are loaded in Prometheus and routed to {}",
        expected.join(", "),
        receivers.join(", ")
    );
    if !firing.is_empty() {
        text.push_str(&format!("; firing now: {}", firing.join(", ")));
    }
    Ok(text)
}

/// VIII-1: alerts on silent, crash-looping and restarting sensors reach someone.
pub fn check_sensor_alerts(s: &Scope<'_>) -> Check {
    match reach(s, "VIII-1") {
        Ok(text) => Check::pass(text),
        Err(verdict) => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        alerts::Loaded,
        api::Verdict,
        build::fixtures::{FACTORY, validated},
        checklist::{Snapshot, component_pods},
        controller::alerting::{AlertFindings, Route},
    };

    fn judge(alerting: Option<Result<AlertFindings, String>>) -> Check {
        let system = validated(FACTORY);
        let snapshot = Snapshot {
            alerting,
            ..Snapshot::default()
        };
        let all = component_pods(&system, &snapshot);
        let scope = Scope {
            system: &system,
            snapshot: &snapshot,
            targets: all.iter().collect(),
            all: &all,
        };
        check_sensor_alerts(&scope)
    }

    fn findings() -> AlertFindings {
        AlertFindings {
            expected: vec![
                ("IoTSensorSilent".into(), "VIII-1".into()),
                ("IoTSensorRestarting".into(), "VIII-1".into()),
                ("IoTCertificateExpiringSoon".into(), "VIII-2".into()),
            ],
            rules: Ok(Loaded {
                missing: Vec::new(),
                unhealthy: Vec::new(),
                firing: vec!["IoTSensorRestarting".into()],
            }),
            routes: Some(Ok(["IoTSensorSilent", "IoTSensorRestarting"]
                .iter()
                .map(|a| Route {
                    alert: a.to_string(),
                    delivering: vec!["team (webhook)".into()],
                    silent: Vec::new(),
                })
                .collect())),
        }
    }

    #[test]
    fn loaded_and_routed_rules_pass_naming_the_receiver_and_what_fires() {
        let c = judge(Some(Ok(findings())));
        assert_eq!(c.verdict, Verdict::Pass, "{}", c.evidence);
        assert_eq!(
            c.evidence,
            "the rules IoTSensorSilent, IoTSensorRestarting are loaded in Prometheus and routed to team (webhook); firing now: IoTSensorRestarting"
        );
    }

    #[test]
    fn a_missing_or_broken_rule_fails_and_so_does_a_receiver_that_notifies_nobody() {
        let mut f = findings();
        f.rules = Ok(Loaded {
            missing: vec![
                "IoTSensorSilent".into(),
                "IoTCertificateExpiringSoon".into(),
            ],
            unhealthy: Vec::new(),
            firing: Vec::new(),
        });
        let c = judge(Some(Ok(f)));
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.evidence.starts_with(
                "Prometheus has not loaded the rules IoTSensorSilent of plant/factory"
            ),
            "only this item's rules are named: {}",
            c.evidence
        );

        let mut f = findings();
        f.rules = Ok(Loaded {
            missing: Vec::new(),
            unhealthy: vec![("IoTSensorRestarting".into(), "bad regex".into())],
            firing: Vec::new(),
        });
        let c = judge(Some(Ok(f)));
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.evidence
                .contains("cannot evaluate the rule IoTSensorRestarting: bad regex")
        );

        let mut f = findings();
        if let Some(Ok(routes)) = f.routes.as_mut() {
            routes[1].delivering.clear();
            routes[1].silent = vec!["null".into()];
        }
        let c = judge(Some(Ok(f)));
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.evidence.contains(
                "routes IoTSensorRestarting of plant/factory to null, which notifies nobody"
            ),
            "{}",
            c.evidence
        );
    }

    #[test]
    fn without_prometheus_or_alertmanager_nothing_is_decided() {
        for (alerting, says) in [
            (None, "seen only by the running operator"),
            (
                Some(Err("no --prometheus-url".to_string())),
                "no --prometheus-url",
            ),
        ] {
            let c = judge(alerting);
            assert_eq!(c.verdict, Verdict::Unknown);
            assert!(c.evidence.contains(says), "{}", c.evidence);
        }
        let mut f = findings();
        f.routes = None;
        let c = judge(Some(Ok(f)));
        assert_eq!(c.verdict, Verdict::Unknown);
        assert!(
            c.evidence.contains("without --alertmanager-url"),
            "{}",
            c.evidence
        );
        let mut f = findings();
        f.rules = Err("cannot connect".into());
        assert_eq!(judge(Some(Ok(f))).verdict, Verdict::Unknown);
    }
}
