//! The validating webhook's pure part: the checklist's own per-pod rules
//! (II-3, IV-1, IV-2, V-1) applied to a pod or a workload's pod template, so
//! mistakes show at `kubectl apply`. Enforce refuses, Audit admits with warnings.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::PodSpec;
use kube::core::{Selector, SelectorExt};
use serde_json::Value;

use crate::{
    api::{IoTSystem, Mode},
    checklist::{
        catalog,
        evidence::Offences,
        network_ports::undeclared_port_offences,
        physical_access::{physical_access_offences, remote_port_offences},
        software::image_policy_offences,
    },
    controller::validate::{Neighbourhood, ValidComponent, ValidatedSystem, validate},
};

/// A pod as admission sees it: its labels, spec and a name for messages.
pub struct PodShape {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: PodSpec,
}

/// The pod (template) inside an object of a kind the webhooks handle.
pub fn pod_shape(kind: &str, object: &Value) -> Option<Result<PodShape, String>> {
    let template = match kind {
        "Pod" => object,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            object.pointer("/spec/template")?
        }
        "CronJob" => object.pointer("/spec/jobTemplate/spec/template")?,
        _ => return None,
    };
    let meta = &object["metadata"];
    let name = meta["name"]
        .as_str()
        .or_else(|| meta["generateName"].as_str())
        .unwrap_or("(unnamed)");
    let labels = match template.pointer("/metadata/labels") {
        Some(l) => match serde_json::from_value(l.clone()) {
            Ok(l) => l,
            Err(e) => return Some(Err(format!("metadata.labels: {e}"))),
        },
        None => BTreeMap::new(),
    };
    let spec = match serde_json::from_value(template.get("spec").cloned().unwrap_or(Value::Null)) {
        Ok(s) => s,
        Err(e) => return Some(Err(format!("the pod spec does not parse: {e}"))),
    };
    Some(Ok(PodShape {
        name: if kind == "Pod" {
            name.to_string()
        } else {
            format!("{}/{name}", kind.to_lowercase())
        },
        labels,
        spec,
    }))
}

/// The system and component whose selector takes a pod with these labels.
pub fn component_for(
    systems: &[Arc<IoTSystem>],
    labels: &BTreeMap<String, String>,
) -> Option<(ValidatedSystem, usize)> {
    let alone = Neighbourhood {
        pods: &[],
        systems: &[],
    };
    // Validation costs far more than a selector match: only systems whose
    // spec has a component taking these labels are validated (one, usually,
    // of the hundred a namespace may hold).
    let takes = |s: &IoTSystem| {
        s.spec
            .components
            .iter()
            .any(|c| Selector::try_from(c.selector.clone()).is_ok_and(|sel| sel.matches(labels)))
    };
    systems.iter().filter(|s| takes(s)).find_map(|s| {
        let valid = validate(s, &alone).ok()?;
        let index = valid.components.iter().position(|c| {
            Selector::try_from(c.selector.clone()).is_ok_and(|sel| sel.matches(labels))
        })?;
        Some((valid, index))
    })
}

/// Each broken rule as "[ID name] what; fix: remediation".
pub fn review(system: &ValidatedSystem, component: &ValidComponent, pod: &PodShape) -> Vec<String> {
    type Rule<'r> = Box<dyn Fn(&mut Offences) + 'r>;
    let rules: [(&str, Rule); 4] = [
        (
            "II-3",
            Box::new(|o| image_policy_offences(&system.images, &pod.name, &pod.spec, o)),
        ),
        (
            "IV-1",
            Box::new(|o| physical_access_offences(component, &pod.name, &pod.spec, o)),
        ),
        (
            "IV-2",
            Box::new(|o| remote_port_offences(&pod.name, &pod.spec, o)),
        ),
        (
            "V-1",
            Box::new(|o| undeclared_port_offences(component, &pod.name, &pod.spec, o)),
        ),
    ];
    let mut out = Vec::new();
    for (id, rule) in rules {
        let mut offences = Offences::default();
        rule(&mut offences);
        let Some(item) = catalog::item(id) else {
            continue;
        };
        for offence in offences.into_vec() {
            out.push(format!(
                "[{id} {}] {offence}; fix: {}",
                item.name_en, item.remediation
            ));
        }
    }
    out
}

/// What the validating webhook answers.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Allow,
    AllowWithWarnings(Vec<String>),
    Deny(String),
}

pub fn decide(system: &ValidatedSystem, component: &ValidComponent, pod: &PodShape) -> Decision {
    let findings = review(system, component, pod);
    if findings.is_empty() {
        return Decision::Allow;
    }
    match system.mode {
        Mode::Audit => Decision::AllowWithWarnings(
            findings
                .into_iter()
                .map(|f| format!("iotposture (IoTSystem {} in Audit mode): {f}", system.name))
                .collect(),
        ),
        Mode::Enforce => Decision::Deny(format!(
            "IoTSystem {} (component {}) refuses {}: {}",
            system.name,
            component.name,
            pod.name,
            findings.join(" | ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::FACTORY;

    fn systems(yaml: &str) -> Vec<Arc<IoTSystem>> {
        vec![Arc::new(serde_saphyr::from_str(yaml).unwrap())]
    }

    fn deployment(ports: &str, image: &str) -> Value {
        serde_saphyr::from_str(&format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: gateway}}
spec:
  template:
    metadata: {{labels: {{app: mqtt-gateway}}}}
    spec:
      containers: [{{name: broker, image: "{image}", ports: [{ports}]}}]
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_clean_template_is_allowed() {
        let object = deployment(
            "{containerPort: 8883}",
            "registry.example.com/broker:2.0.18",
        );
        let pod = pod_shape("Deployment", &object).unwrap().unwrap();
        let (system, index) = component_for(&systems(FACTORY), &pod.labels).unwrap();
        assert_eq!(system.components[index].name, "gateway");
        assert_eq!(
            decide(&system, &system.components[index], &pod),
            Decision::Allow
        );
    }

    #[test]
    fn enforce_denies_naming_item_field_and_fix() {
        let object = deployment("{containerPort: 22}", "registry.example.com/broker:latest");
        let pod = pod_shape("Deployment", &object).unwrap().unwrap();
        let (system, index) = component_for(&systems(FACTORY), &pod.labels).unwrap();
        let Decision::Deny(message) = decide(&system, &system.components[index], &pod) else {
            panic!("not denied")
        };
        assert!(
            message
                .starts_with("IoTSystem factory (component gateway) refuses deployment/gateway: "),
            "{message}"
        );
        assert!(message.contains("[II-3 Patched software versions] pod deployment/gateway: image registry.example.com/broker:latest uses the tag latest; fix: Pin images"), "{message}");
        assert!(message.contains("[IV-2 No default remote-access ports] pod deployment/gateway container broker opens remote-access port 22"), "{message}");
        assert!(
            message.contains("[V-1 Only the ports the use needs]"),
            "{message}"
        );
    }

    #[test]
    fn audit_warns_and_admits() {
        let object = deployment("{containerPort: 22}", "registry.example.com/broker:2.0.18");
        let pod = pod_shape("Deployment", &object).unwrap().unwrap();
        let yaml = FACTORY.replace("mode: Enforce", "mode: Audit");
        let (system, index) = component_for(&systems(&yaml), &pod.labels).unwrap();
        let Decision::AllowWithWarnings(w) = decide(&system, &system.components[index], &pod)
        else {
            panic!("not warned")
        };
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("iotposture (IoTSystem factory in Audit mode): [IV-2"),
            "{w:?}"
        );
    }

    #[test]
    fn pods_of_no_component_and_other_kinds_are_not_ours() {
        let object = deployment("{containerPort: 22}", "x:latest");
        let mut other = object.clone();
        other["spec"]["template"]["metadata"]["labels"]["app"] = "unrelated".into();
        let pod = pod_shape("Deployment", &other).unwrap().unwrap();
        assert!(component_for(&systems(FACTORY), &pod.labels).is_none());
        assert!(pod_shape("ConfigMap", &object).is_none());
        let cron: Value = serde_saphyr::from_str("{metadata: {name: c}, spec: {jobTemplate: {spec: {template: {metadata: {labels: {a: b}}, spec: {containers: []}}}}}}").unwrap();
        assert_eq!(
            pod_shape("CronJob", &cron).unwrap().unwrap().name,
            "cronjob/c"
        );
        let broken: Value =
            serde_saphyr::from_str("{metadata: {name: p}, spec: {containers: 7}}").unwrap();
        assert!(pod_shape("Pod", &broken).unwrap().is_err());
    }
}
