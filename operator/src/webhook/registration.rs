//! The webhook configurations the operator keeps. The pod and workload
//! webhooks are scoped twice: to namespaces the operator labels (never
//! kube-system or its own), and by `matchConditions` to objects whose labels
//! can make them a component, so other pods never depend on the operator
//! being up. Their failure policy is the installer's choice. The IoTSystem
//! webhook (who may grant spec.access) always fails closed: a review that
//! could be skipped would be no review.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
        ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
};

use crate::{
    api::IoTSystem,
    build::meta::{MANAGED_BY, MANAGED_BY_LABEL},
};

/// Namespaces carrying this label (value: the operator instance) get the webhooks.
pub const ADMISSION_LABEL: &str = "iotposture.dev/admission";
pub const MUTATE_PATH: &str = "/mutate";
pub const VALIDATE_PATH: &str = "/validate";
pub const VALIDATE_SYSTEM_PATH: &str = "/validate-iotsystem";
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
    /// The one namespace the operator manages, if it manages only one: the
    /// IoTSystem webhook then reviews that namespace only.
    pub managed_namespace: Option<String>,
    pub timeout_seconds: i32,
    /// Set as the configurations' owner, so they go when it goes: with the
    /// Helm chart, its ClusterRole, which an uninstall deletes. (The match
    /// conditions follow live IoTSystems, so the operator writes these
    /// configurations, not the chart.)
    pub owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

/// Which pods can be components: for each selector of each system, one
/// label it requires (a superset, never missing a component), by namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComponentFilter {
    /// `namespace/key=value`
    pairs: BTreeSet<String>,
    /// `namespace/key`, for `Exists` requirements.
    keys: BTreeSet<String>,
    /// Namespaces where a selector requires no label at all: every pod there.
    whole: BTreeSet<String>,
    /// Too many namespaces to name within the API server's limit: every pod
    /// of every selected namespace goes to the webhook.
    everything: bool,
}

/// The API server refuses a CEL expression over 100,000 code points; the
/// longest label path and the expression's fixed text stay well within the
/// rest.
const CONDITION_BUDGET: usize = 80_000;

impl ComponentFilter {
    pub fn of(systems: &[Arc<IoTSystem>]) -> Self {
        let mut f = Self::default();
        for system in systems {
            let ns = system.metadata.namespace.clone().unwrap_or_default();
            for c in &system.spec.components {
                let labels = c.selector.match_labels.iter().flatten().next();
                if let Some((k, v)) = labels {
                    f.pairs.insert(format!("{ns}/{k}={v}"));
                    continue;
                }
                let positive =
                    c.selector.match_expressions.iter().flatten().find(|e| {
                        e.operator == "Exists" || (e.operator == "In" && e.values.is_some())
                    });
                match positive {
                    Some(e) if e.operator == "Exists" => {
                        f.keys.insert(format!("{ns}/{}", e.key));
                    }
                    Some(e) => {
                        for v in e.values.iter().flatten() {
                            f.pairs.insert(format!("{ns}/{}={v}", e.key));
                        }
                    }
                    None => {
                        f.whole.insert(ns.clone());
                    }
                }
            }
        }
        f.bounded(CONDITION_BUDGET)
    }

    /// The length of one map entry: `"<s>": true, `.
    fn entry_len(s: &str) -> usize {
        cel_string(s).chars().count() + 8
    }

    fn entries_len(&self) -> usize {
        self.pairs
            .iter()
            .chain(&self.keys)
            .chain(&self.whole)
            .map(|s| Self::entry_len(s))
            .sum()
    }

    /// Widens the filter until its condition fits `budget`: the namespace
    /// with the most entries is taken whole first (its non-component pods
    /// then reach the webhook too, which admits them untouched), then, when
    /// even the namespaces alone do not fit, every pod of the selected
    /// namespaces. Never narrower than before: no component is missed.
    fn bounded(mut self, budget: usize) -> Self {
        let mut length = self.entries_len();
        if length <= budget {
            return self;
        }
        let mut per_namespace: std::collections::BTreeMap<&str, usize> = Default::default();
        for entry in self.pairs.iter().chain(&self.keys) {
            let ns = entry.split_once('/').map_or(entry.as_str(), |(ns, _)| ns);
            *per_namespace.entry(ns).or_default() += Self::entry_len(entry);
        }
        // The largest first; by name among equals, so it is deterministic.
        let mut order: Vec<(&str, usize)> = per_namespace.into_iter().collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut widened = BTreeSet::new();
        for (ns, size) in order {
            if length <= budget {
                break;
            }
            length = length - size + Self::entry_len(ns);
            widened.insert(ns.to_string());
        }
        if length > budget {
            // Even the namespaces alone do not fit.
            return Self {
                everything: true,
                ..Self::default()
            };
        }
        let inside =
            |e: &String| widened.contains(e.split_once('/').map_or(e.as_str(), |(ns, _)| ns));
        self.pairs.retain(|e| !inside(e));
        self.keys.retain(|e| !inside(e));
        self.whole.extend(widened);
        self
    }

    pub fn condition(&self, labels: &str) -> String {
        if self.everything {
            return "true".into();
        }
        let map = |set: &BTreeSet<String>| {
            let entries: Vec<String> = set
                .iter()
                .map(|s| format!("{}: true", cel_string(s)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        };
        let (parent, field) = labels.rsplit_once('.').unwrap_or(("object", labels));
        format!(
            "request.namespace in {whole} || (has({parent}.{field}) && {parent}.{field}.exists(k, (request.namespace + '/' + k) in {keys} || (request.namespace + '/' + k + '=' + {parent}.{field}[k]) in {pairs}))",
            whole = map(&self.whole),
            keys = map(&self.keys),
            pairs = map(&self.pairs),
        )
    }
}

/// A CEL string literal.
fn cel_string(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '\\' => vec!['\\', '\\'],
            '"' => vec!['\\', '"'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

fn component_condition(filter: &ComponentFilter, labels: &str) -> Option<Vec<MatchCondition>> {
    Some(vec![MatchCondition {
        name: "could-be-a-component".into(),
        expression: filter.condition(labels),
    }])
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
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }

    pub fn mutating(&self, ca_pem: &str, filter: &ComponentFilter) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: self.meta(),
            webhooks: Some(vec![MutatingWebhook {
                name: "pods.harden.iotposture.dev".into(),
                client_config: self.client_config(MUTATE_PATH, ca_pem),
                rules: Some(vec![rule(&[""], &["pods"], &["CREATE"])]),
                namespace_selector: Some(self.namespace_selector()),
                match_conditions: component_condition(filter, "object.metadata.labels"),
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

    pub fn validating(
        &self,
        ca_pem: &str,
        filter: &ComponentFilter,
    ) -> ValidatingWebhookConfiguration {
        let workloads =
            |name: &str, rules: Vec<RuleWithOperations>, labels: &str| ValidatingWebhook {
                name: name.into(),
                client_config: self.client_config(VALIDATE_PATH, ca_pem),
                rules: Some(rules),
                namespace_selector: Some(self.namespace_selector()),
                match_conditions: component_condition(filter, labels),
                failure_policy: Some(self.failure_policy.clone()),
                // A refusal becomes an Event for the decision record, except
                // on dry runs.
                side_effects: "NoneOnDryRun".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(self.timeout_seconds),
                ..ValidatingWebhook::default()
            };
        ValidatingWebhookConfiguration {
            metadata: self.meta(),
            webhooks: Some(vec![
                workloads(
                    "pods.checklist.iotposture.dev",
                    vec![rule(&[""], &["pods"], &["CREATE"])],
                    "object.metadata.labels",
                ),
                workloads(
                    "workloads.checklist.iotposture.dev",
                    vec![
                        rule(
                            &["apps"],
                            &["deployments", "statefulsets", "daemonsets", "replicasets"],
                            &["CREATE", "UPDATE"],
                        ),
                        rule(&["batch"], &["jobs"], &["CREATE", "UPDATE"]),
                    ],
                    "object.spec.template.metadata.labels",
                ),
                workloads(
                    "cronjobs.checklist.iotposture.dev",
                    vec![rule(&["batch"], &["cronjobs"], &["CREATE", "UPDATE"])],
                    "object.spec.jobTemplate.spec.template.metadata.labels",
                ),
                ValidatingWebhook {
                    name: "access.iotsystems.iotposture.dev".into(),
                    client_config: self.client_config(VALIDATE_SYSTEM_PATH, ca_pem),
                    rules: Some(vec![RuleWithOperations {
                        api_versions: Some(vec!["v1alpha1".into()]),
                        ..rule(&["iotposture.dev"], &["iotsystems"], &["CREATE", "UPDATE"])
                    }]),
                    namespace_selector: self.managed_namespace.as_ref().map(|ns| LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".into(),
                            ns.clone(),
                        )])),
                        match_expressions: None,
                    }),
                    failure_policy: Some("Fail".into()),
                    side_effects: "NoneOnDryRun".into(),
                    admission_review_versions: vec!["v1".into()],
                    timeout_seconds: Some(self.timeout_seconds),
                    ..ValidatingWebhook::default()
                },
            ]),
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
            managed_namespace: None,
            timeout_seconds: 5,
            owner: None,
        };
        let m = r.mutating("CA", &ComponentFilter::default());
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
        let v = r.validating("CA", &ComponentFilter::default());
        let hooks = v.webhooks.as_ref().unwrap();
        assert_eq!(hooks.len(), 4);
        let system = hooks.last().unwrap();
        assert_eq!(
            system.failure_policy.as_deref(),
            Some("Fail"),
            "never skipped"
        );
        assert_eq!(system.namespace_selector, None, "every namespace");
    }

    #[test]
    fn the_filter_widens_namespace_by_namespace_to_stay_within_the_servers_limit() {
        let systems: Vec<Arc<IoTSystem>> = (0..1000)
            .map(|i| {
                let mut s: IoTSystem =
                    serde_saphyr::from_str(crate::build::fixtures::FACTORY).unwrap();
                s.metadata.namespace = Some(format!("namespace-number-{i}"));
                Arc::new(s)
            })
            .collect();
        let full = ComponentFilter::of(&systems[..10]);
        assert!(full.whole.is_empty() && full.pairs.len() == 30, "{full:?}");
        let f = ComponentFilter::of(&systems);
        let cel = f.condition("object.spec.jobTemplate.spec.template.metadata.labels");
        assert!(cel.chars().count() < 100_000, "{}", cel.len());
        // Widened, never narrowed: each namespace is named, whole or by pair.
        for i in 0..1000 {
            let ns = format!("namespace-number-{i}");
            assert!(
                f.whole.contains(&ns) || f.pairs.contains(&format!("{ns}/app=line-sensor")),
                "{ns} lost"
            );
        }
        assert!(
            !f.whole.is_empty() && !f.pairs.is_empty(),
            "only as wide as needed"
        );
        // Beyond what even whole namespaces can name: every pod.
        let tight = ComponentFilter::of(&systems[..10]).bounded(10);
        assert_eq!(tight.condition("object.metadata.labels"), "true");
    }

    #[test]
    fn the_filter_keeps_one_required_label_per_selector() {
        let system: IoTSystem = serde_saphyr::from_str(
            r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {name: s, namespace: plant}
spec:
  components:
    - {name: a, role: Sensor, selector: {matchLabels: {app: sensor, tier: edge}}}
    - {name: b, role: Sensor, selector: {matchExpressions: [{key: app, operator: In, values: [x, y]}]}}
    - {name: c, role: Sensor, selector: {matchExpressions: [{key: probe, operator: Exists}]}}
    - {name: d, role: Sensor, selector: {matchExpressions: [{key: app, operator: NotIn, values: [z]}]}}
"#,
        )
        .unwrap();
        let f = ComponentFilter::of(&[Arc::new(system)]);
        let cel = f.condition("object.metadata.labels");
        assert!(cel.starts_with(r#"request.namespace in {"plant": true} || (has(object.metadata.labels) && object.metadata.labels.exists(k, (request.namespace + '/' + k) in {"plant/probe": true} || (request.namespace + '/' + k + '=' + object.metadata.labels[k]) in {"#), "{cel}");
        assert!(
            cel.contains(r#""plant/app=sensor": true, "plant/app=x": true, "plant/app=y": true"#),
            "{cel}"
        );
        assert_eq!(cel_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
