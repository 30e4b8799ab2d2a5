//! One ConfigMap per system with its Prometheus alert rules (items VIII-1
//! and VIII-2), as a rules file: Prometheus loads it through a mounted
//! volume or a rules sidecar (`rule_files`), found by the label
//! `iotposture.dev/alert-rules=true`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::meta::{child_meta, child_name};
use crate::{
    alerts::{Wants, rule_groups, rules_file_yaml},
    api::{Port, Role},
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

pub fn build_alert_rules(system: &ValidatedSystem) -> Vec<ConfigMap> {
    let groups = rule_groups(&system.namespace, &system.name, &wants(system));
    if groups.is_empty() {
        return Vec::new();
    }
    // The generator's output is covered by promtool in its tests; a failure
    // here would be a bug, and leaves the system without the ConfigMap
    // (VIII-1/VIII-2 then fail naming the missing rules).
    let Ok(yaml) = rules_file_yaml(&groups) else {
        return Vec::new();
    };
    let mut metadata = child_meta(system, alert_rules_name(system), None);
    metadata
        .labels
        .get_or_insert_default()
        .insert(ALERT_RULES_LABEL.into(), "true".into());
    vec![ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(rules_file_name(system), yaml)])),
        ..ConfigMap::default()
    }]
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
        let maps = build_alert_rules(&system);
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
}
