//! Roles and RoleBindings for the three access levels (checklist items I-7,
//! I-8, I-9, III-6, VII-2): admin sees and changes everything of the system,
//! Secrets included; operator reads, scales and restarts, without Secrets or
//! config; viewer only reads, without Secrets, config, logs or exec. Rules name
//! resources and verbs explicitly: no wildcards.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef};

use super::meta::{child_meta, child_name};
use crate::controller::validate::ValidatedSystem;

/// The access levels, in the order their objects are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLevel {
    Admin,
    Operator,
    Viewer,
}

impl AccessLevel {
    pub const ALL: [AccessLevel; 3] = [
        AccessLevel::Admin,
        AccessLevel::Operator,
        AccessLevel::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::Admin => "admin",
            AccessLevel::Operator => "operator",
            AccessLevel::Viewer => "viewer",
        }
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const ALL_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
/// Workload kinds of the apps group, shared by all levels.
const APPS_WORKLOADS: &[&str] = &["deployments", "statefulsets", "daemonsets", "replicasets"];
const BATCH_WORKLOADS: &[&str] = &["jobs", "cronjobs"];
/// Core kinds every level may read. ConfigMaps and Secrets are missing on
/// purpose: system data is for admins only (III-6).
const CORE_READABLE: &[&str] = &[
    "pods",
    "services",
    "endpoints",
    "events",
    "persistentvolumeclaims",
];

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// The read-only rules every level has.
fn read_rules() -> Vec<PolicyRule> {
    vec![
        rule("", CORE_READABLE, READ),
        rule("apps", APPS_WORKLOADS, READ),
        rule("batch", BATCH_WORKLOADS, READ),
        rule("networking.k8s.io", &["networkpolicies"], READ),
        rule("discovery.k8s.io", &["endpointslices"], READ),
        rule("iotposture.dev", &["iotsystems", "iotsystems/status"], READ),
    ]
}

pub fn rules_for(level: AccessLevel) -> Vec<PolicyRule> {
    match level {
        AccessLevel::Admin => vec![
            rule(
                "",
                &[
                    "pods",
                    "pods/log",
                    "pods/exec",
                    "pods/attach",
                    "pods/portforward",
                    "services",
                    "endpoints",
                    "configmaps",
                    "secrets",
                    "persistentvolumeclaims",
                    "serviceaccounts",
                ],
                ALL_VERBS,
            ),
            rule("", &["events"], READ),
            rule(
                "apps",
                &[
                    "deployments",
                    "deployments/scale",
                    "statefulsets",
                    "statefulsets/scale",
                    "daemonsets",
                    "replicasets",
                ],
                ALL_VERBS,
            ),
            rule("batch", BATCH_WORKLOADS, ALL_VERBS),
            // The operator owns the system's NetworkPolicies; edits would be undone.
            rule("networking.k8s.io", &["networkpolicies"], READ),
            rule("discovery.k8s.io", &["endpointslices"], READ),
            rule("iotposture.dev", &["iotsystems"], ALL_VERBS),
            rule("iotposture.dev", &["iotsystems/status"], READ),
        ],
        AccessLevel::Operator => {
            let mut rules = read_rules();
            rules.extend([
                // Restart a pod by deleting it; read logs for incident response (VII-2).
                rule("", &["pods"], &["delete"]),
                rule("", &["pods/log"], READ),
                // `kubectl rollout restart` patches the pod template.
                rule(
                    "apps",
                    &["deployments", "statefulsets", "daemonsets"],
                    &["patch"],
                ),
                rule(
                    "apps",
                    &["deployments/scale", "statefulsets/scale"],
                    &["get", "update", "patch"],
                ),
            ]);
            rules
        }
        AccessLevel::Viewer => read_rules(),
    }
}

pub fn role_name(system: &ValidatedSystem, level: AccessLevel) -> String {
    child_name(&system.name, &[level.as_str()])
}

pub fn build_roles(system: &ValidatedSystem) -> Vec<Role> {
    AccessLevel::ALL
        .iter()
        .map(|&level| Role {
            metadata: child_meta(system, role_name(system, level), None),
            rules: Some(rules_for(level)),
        })
        .collect()
}

/// One binding per level that has subjects; a level without subjects has no
/// binding at all.
pub fn build_role_bindings(system: &ValidatedSystem) -> Vec<RoleBinding> {
    AccessLevel::ALL
        .iter()
        .filter_map(|&level| {
            let subjects = match level {
                AccessLevel::Admin => &system.access.admins,
                AccessLevel::Operator => &system.access.operators,
                AccessLevel::Viewer => &system.access.viewers,
            };
            (!subjects.is_empty()).then(|| RoleBinding {
                metadata: child_meta(system, role_name(system, level), None),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: role_name(system, level),
                },
                subjects: Some(subjects.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{FACTORY, validated};

    fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
        rules.iter().any(|r| {
            r.api_groups.as_ref().unwrap().iter().any(|g| g == group)
                && r.resources.as_ref().unwrap().iter().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    }

    #[test]
    fn the_matrix() {
        let admin = rules_for(AccessLevel::Admin);
        let operator = rules_for(AccessLevel::Operator);
        let viewer = rules_for(AccessLevel::Viewer);
        assert!(allows(&admin, "", "secrets", "get"));
        assert!(allows(&admin, "", "pods/exec", "create"));
        for rules in [&operator, &viewer] {
            assert!(!allows(rules, "", "secrets", "get"));
            assert!(!allows(rules, "", "secrets", "list"));
            assert!(!allows(rules, "", "configmaps", "get"));
            assert!(!allows(rules, "", "pods/exec", "create"));
            assert!(allows(rules, "", "pods", "list"));
        }
        assert!(allows(&operator, "apps", "deployments/scale", "update"));
        assert!(allows(&operator, "", "pods/log", "get"));
        assert!(!allows(&viewer, "", "pods/log", "get"));
        assert!(!allows(&viewer, "", "pods", "delete"));
        assert!(!allows(&viewer, "apps", "deployments", "patch"));
    }

    #[test]
    fn no_wildcards_anywhere() {
        for level in AccessLevel::ALL {
            for r in rules_for(level) {
                let all = r
                    .api_groups
                    .iter()
                    .flatten()
                    .chain(r.resources.iter().flatten())
                    .chain(r.verbs.iter());
                assert!(all.clone().all(|s| s != "*"), "{level:?} has a wildcard");
            }
        }
    }

    #[test]
    fn bindings_only_for_levels_with_subjects() {
        let system = validated(FACTORY);
        let bindings = build_role_bindings(&system);
        let names: Vec<_> = bindings
            .iter()
            .map(|b| b.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["factory-admin", "factory-viewer"]);
        assert_eq!(bindings[0].role_ref.name, "factory-admin");
        let subject = &bindings[0].subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("Group", "factory-admins")
        );
        assert_eq!(build_roles(&system).len(), 3);
    }
}
