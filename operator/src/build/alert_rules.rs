//! Each system's Prometheus alert rules (items VIII-1 and VIII-2), named
//! `<system>-alert-rules`, in one of two forms:
//! - a PrometheusRule, where the Prometheus Operator's CRD is served (its
//!   Prometheus selects rules by label, like any other PrometheusRule);
//! - otherwise a ConfigMap holding one rules file, for a Prometheus that loads
//!   it through a mounted volume or a rules sidecar (`rule_files`), found by
//!   the label `iotposture.dev/alert-rules=true`.
use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::util::intstr::IntOrString};

use super::meta::{child_meta, child_name};
use crate::{
    alerts::{RuleGroup, Wants, rule_groups, rules_file_yaml},
    api::{
        Port, Role,
        monitoring::prometheusrule::{
            PrometheusRule, PrometheusRuleGroups, PrometheusRuleGroupsRules, PrometheusRuleSpec,
        },
    },
    controller::validate::ValidatedSystem,
};

/// The label Prometheus' rules loader selects the ConfigMaps by.
pub const ALERT_RULES_LABEL: &str = "iotposture.dev/alert-rules";

/// `<system>-alert-rules`.
pub fn alert_rules_name(system: &ValidatedSystem) -> String {
    child_name(&system.name, &["alert-rules"])
}

/// The file name in the ConfigMap: unique per system, so that one rules
/// directory can hold every system's file.
pub fn rules_file_name(system: &ValidatedSystem) -> String {
    format!("{}_{}.rules.yaml", system.namespace, system.name)
}

/// Which rules the system needs, from what its spec declares.
pub fn wants(system: &ValidatedSystem) -> Wants {
    let ports = || system.components.iter().flat_map(|c| c.ports.iter());
    Wants {
        sensors: system.components.iter().any(|c| c.role == Role::Sensor),
        heartbeats: system
            .components
            .iter()
            .any(|c| c.heartbeat.as_ref().is_some_and(|h| h.mqtt.is_some())),
        web_logins: system
            .components
            .iter()
            .any(|c| c.http_ports().next().is_some() && c.http.login_path.is_some()),
        tls: ports().any(|p: &Port| p.tls),
        ..Wants::default()
    }
}

/// Where the rules go: decided by what the cluster serves, not by the system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RulesAs {
    /// A rules file in a ConfigMap (the only form offline).
    #[default]
    ConfigMap,
    PrometheusRule,
}

/// The labelled metadata both forms share.
fn rules_meta(
    system: &ValidatedSystem,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut metadata = child_meta(system, alert_rules_name(system), None);
    metadata
        .labels
        .get_or_insert_default()
        .insert(ALERT_RULES_LABEL.into(), "true".into());
    metadata
}

pub fn build_alert_rules(
    system: &ValidatedSystem,
    form: RulesAs,
) -> (Vec<ConfigMap>, Vec<PrometheusRule>) {
    let groups = rule_groups(&system.namespace, &system.name, &wants(system));
    if groups.is_empty() {
        return (Vec::new(), Vec::new());
    }
    match form {
        RulesAs::PrometheusRule => (Vec::new(), vec![prometheus_rule(system, &groups)]),
        RulesAs::ConfigMap => {
            // The generator's output is covered by promtool in its tests; a
            // failure here would be a bug, and leaves the system without the
            // ConfigMap (VIII-1/VIII-2 then fail naming the missing rules).
            let Ok(yaml) = rules_file_yaml(&groups) else {
                return (Vec::new(), Vec::new());
            };
            let map = ConfigMap {
                metadata: rules_meta(system),
                data: Some(BTreeMap::from([(rules_file_name(system), yaml)])),
                ..ConfigMap::default()
            };
            (vec![map], Vec::new())
        }
    }
}

/// The same groups as the rules file, in the Prometheus Operator's types.
fn prometheus_rule(system: &ValidatedSystem, groups: &[RuleGroup]) -> PrometheusRule {
    let non_empty = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
    let groups = groups
        .iter()
        .map(|g| PrometheusRuleGroups {
            name: g.name.clone(),
            rules: Some(
                g.rules
                    .iter()
                    .map(|r| PrometheusRuleGroupsRules {
                        alert: Some(r.alert.clone()),
                        expr: IntOrString::String(r.expr.clone()),
                        r#for: r.for_.clone(),
                        labels: non_empty(&r.labels),
                        annotations: non_empty(&r.annotations),
                        ..PrometheusRuleGroupsRules::default()
                    })
                    .collect(),
            ),
            ..PrometheusRuleGroups::default()
        })
        .collect();
    PrometheusRule {
        metadata: rules_meta(system),
        spec: PrometheusRuleSpec {
            groups: Some(groups),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{FACTORY, validated};

    #[test]
    fn the_factory_gets_its_rules_file_labelled_for_prometheus() {
        let system = validated(&FACTORY.replace(
            "heartbeat: {maxSilence: 60s}",
            "heartbeat: {maxSilence: 60s, mqtt: {broker: gateway, port: mqtts, topic: a/+}}",
        ));
        let w = wants(&system);
        assert!(w.sensors && w.heartbeats && w.tls && !w.web_logins, "{w:?}");
        let (maps, rules) = build_alert_rules(&system, RulesAs::ConfigMap);
        assert!(rules.is_empty());
        assert_eq!(maps.len(), 1);
        let map = &maps[0];
        assert_eq!(map.metadata.name.as_deref(), Some("factory-alert-rules"));
        assert_eq!(
            map.metadata
                .labels
                .as_ref()
                .unwrap()
                .get(ALERT_RULES_LABEL)
                .map(String::as_str),
            Some("true")
        );
        let file = &map.data.as_ref().unwrap()["plant_factory.rules.yaml"];
        for alert in [
            "IoTSensorSilent",
            "IoTSensorCrashLooping",
            "IoTCertificateExpiringSoon",
        ] {
            assert!(file.contains(alert), "{alert} missing: {file}");
        }
        assert!(
            !file.contains("IoTFailedLoginBurst"),
            "no login page declared"
        );
    }

    #[test]
    fn where_prometheus_rules_are_served_the_same_groups_become_a_prometheus_rule() {
        let system = validated(&FACTORY.replace(
            "heartbeat: {maxSilence: 60s}",
            "heartbeat: {maxSilence: 60s, mqtt: {broker: gateway, port: mqtts, topic: a/+}}",
        ));
        let (maps, rules) = build_alert_rules(&system, RulesAs::PrometheusRule);
        assert!(maps.is_empty(), "one form only");
        let [rule] = rules.as_slice() else {
            panic!("{rules:?}")
        };
        assert_eq!(rule.metadata.name.as_deref(), Some("factory-alert-rules"));
        assert_eq!(
            rule.metadata.labels.as_ref().unwrap()[ALERT_RULES_LABEL],
            "true"
        );
        assert!(rule.metadata.owner_references.is_some());
        // The spec is the rules file: what promtool checks for the ConfigMap
        // holds for the PrometheusRule too.
        let (maps, _) = build_alert_rules(&system, RulesAs::ConfigMap);
        let file: serde_json::Value =
            serde_saphyr::from_str(&maps[0].data.as_ref().unwrap()["plant_factory.rules.yaml"])
                .unwrap();
        assert_eq!(serde_json::to_value(&rule.spec).unwrap(), file);
    }

    #[test]
    fn a_system_without_sensors_tls_or_logins_gets_neither_form() {
        let system = validated(
            "apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {name: hub, namespace: plant, uid: uid-hub}
spec:
  components:
    - {name: hub, role: Aggregator, selector: {matchLabels: {app: hub}}}
",
        );
        for form in [RulesAs::ConfigMap, RulesAs::PrometheusRule] {
            assert_eq!(build_alert_rules(&system, form), (vec![], vec![]));
        }
    }
}
