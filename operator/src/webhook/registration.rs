//! The webhook configurations the operator keeps, scoped to namespaces it
//! labels (never kube-system or its own), with short timeouts and a failure
//! policy chosen by the installer.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
        ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
};

use crate::build::meta::{MANAGED_BY, MANAGED_BY_LABEL};

/// Namespaces carrying this label (value: the operator instance) get the webhooks.
pub const ADMISSION_LABEL: &str = "iotposture.dev/admission";
pub const MUTATE_PATH: &str = "/mutate";
pub const VALIDATE_PATH: &str = "/validate";
/// Namespaces the webhooks never select, whatever their labels say.
pub const NEVER_SELECTED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// How the API server reaches the webhook server.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A URL, e.g. `https://127.0.0.1:8443` for a local control plane.
    Url(String),
    /// A Service in the cluster.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

#[derive(Clone, Debug)]
pub struct Registration {
    /// Names the configurations and is the namespace label's value.
    pub instance: String,
    pub endpoint: Endpoint,
    /// `Fail` (refuse pods while the webhook is down) or `Ignore` (admit them unchecked).
    pub failure_policy: String,
    /// The operator's own namespace, never selected.
    pub own_namespace: Option<String>,
    pub timeout_seconds: i32,
}

impl Registration {
    fn client_config(&self, path: &str, ca_pem: &str) -> WebhookClientConfig {
        let ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
        match &self.endpoint {
            Endpoint::Url(url) => WebhookClientConfig {
                url: Some(format!("{}{path}", url.trim_end_matches('/'))),
                ca_bundle,
                service: None,
            },
            Endpoint::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.into()),
                    port: Some(*port),
                }),
                ca_bundle,
                url: None,
            },
        }
    }

    fn namespace_selector(&self) -> LabelSelector {
        let mut never: Vec<String> = NEVER_SELECTED.iter().map(|s| s.to_string()).collect();
        never.extend(self.own_namespace.clone());
        LabelSelector {
            match_labels: Some(BTreeMap::from([(
                ADMISSION_LABEL.into(),
                self.instance.clone(),
            )])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "NotIn".into(),
                values: Some(never),
            }]),
        }
    }

    fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.instance.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.into(),
                MANAGED_BY.into(),
            )])),
            ..ObjectMeta::default()
        }
    }

    pub fn mutating(&self, ca_pem: &str) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: self.meta(),
            webhooks: Some(vec![MutatingWebhook {
                name: "pods.harden.iotposture.dev".into(),
                client_config: self.client_config(MUTATE_PATH, ca_pem),
                rules: Some(vec![rule(&[""], &["pods"], &["CREATE"])]),
                namespace_selector: Some(self.namespace_selector()),
                failure_policy: Some(self.failure_policy.clone()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(self.timeout_seconds),
                // Other mutating webhooks may add containers after us.
                reinvocation_policy: Some("IfNeeded".into()),
                ..MutatingWebhook::default()
            }]),
        }
    }

    pub fn validating(&self, ca_pem: &str) -> ValidatingWebhookConfiguration {
        ValidatingWebhookConfiguration {
            metadata: self.meta(),
            webhooks: Some(vec![ValidatingWebhook {
                name: "workloads.checklist.iotposture.dev".into(),
                client_config: self.client_config(VALIDATE_PATH, ca_pem),
                rules: Some(vec![
                    rule(&[""], &["pods"], &["CREATE"]),
                    rule(
                        &["apps"],
                        &["deployments", "statefulsets", "daemonsets", "replicasets"],
                        &["CREATE", "UPDATE"],
                    ),
                    rule(&["batch"], &["jobs", "cronjobs"], &["CREATE", "UPDATE"]),
                ]),
                namespace_selector: Some(self.namespace_selector()),
                failure_policy: Some(self.failure_policy.clone()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(self.timeout_seconds),
                ..ValidatingWebhook::default()
            }]),
        }
    }

    /// Whether the operator may label this namespace for its webhooks.
    pub fn may_select(&self, namespace: &str) -> bool {
        !NEVER_SELECTED.contains(&namespace) && self.own_namespace.as_deref() != Some(namespace)
    }
}

fn rule(groups: &[&str], resources: &[&str], operations: &[&str]) -> RuleWithOperations {
    let strings = |xs: &[&str]| Some(xs.iter().map(|s| s.to_string()).collect());
    RuleWithOperations {
        api_groups: strings(groups),
        api_versions: strings(&["v1"]),
        resources: strings(resources),
        operations: strings(operations),
        scope: Some("Namespaced".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_to_labelled_namespaces_never_system_or_own() {
        let r = Registration {
            instance: "iotposture".into(),
            endpoint: Endpoint::Service {
                namespace: "iotposture-system".into(),
                name: "iotposture-webhook".into(),
                port: 443,
            },
            failure_policy: "Fail".into(),
            own_namespace: Some("iotposture-system".into()),
            timeout_seconds: 5,
        };
        let m = r.mutating("CA");
        let hook = &m.webhooks.as_ref().unwrap()[0];
        let sel = hook.namespace_selector.as_ref().unwrap();
        assert_eq!(
            sel.match_labels.as_ref().unwrap()[ADMISSION_LABEL],
            "iotposture"
        );
        let never = sel.match_expressions.as_ref().unwrap()[0]
            .values
            .as_ref()
            .unwrap();
        assert!(
            never.contains(&"kube-system".to_string())
                && never.contains(&"iotposture-system".to_string())
        );
        assert_eq!(hook.timeout_seconds, Some(5));
        assert_eq!(
            hook.client_config.service.as_ref().unwrap().path.as_deref(),
            Some("/mutate")
        );
        assert_eq!(hook.client_config.ca_bundle.as_ref().unwrap().0, b"CA");
        assert!(
            !r.may_select("kube-system")
                && !r.may_select("iotposture-system")
                && r.may_select("plant")
        );
        let v = r.validating("CA");
        assert_eq!(
            v.webhooks.as_ref().unwrap()[0]
                .rules
                .as_ref()
                .unwrap()
                .len(),
            3
        );
    }
}
