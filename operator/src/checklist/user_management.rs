//! Chapter I, user management: I-2, I-5, I-6, I-7, I-8, I-9, I-10.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    core::v1::{Container, Pod, PodSpec},
    rbac::v1::{PolicyRule, RoleBinding, Subject},
};

use super::{Scope, evidence::Check, evidence::Offences, pod_name};
use crate::build::{rbac::AccessLevel, rbac::role_name, service_account::service_account_name};

/// The annotation that marks a legacy, never-expiring token Secret.
const TOKEN_SECRET_ANNOTATION: &str = "kubernetes.io/service-account.name";

pub fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

fn service_account_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

/// I-2: no legacy token Secret for the accounts the components run as.
pub fn check_legacy_token_secrets(s: &Scope<'_>) -> Check {
    let mut accounts: BTreeSet<String> = s
        .targets
        .iter()
        .map(|c| service_account_name(s.system, c.component))
        .collect();
    for c in &s.targets {
        accounts.extend(c.pods.iter().map(|p| service_account_of(p).to_string()));
    }
    let mut offences = Offences::default();
    for secret in &s.snapshot.secrets {
        if let Some(sa) = secret
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOKEN_SECRET_ANNOTATION))
            && accounts.contains(sa)
        {
            offences.add(format!(
                "Secret {} is a never-expiring token of ServiceAccount {sa}",
                secret.name.as_deref().unwrap_or("?")
            ));
        }
    }
    offences.verdict(format!(
        "no legacy token Secret for the accounts {}; pods get short-lived projected tokens",
        accounts.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// I-5: every container runs as the Pod Security Standard "restricted" requires.
pub fn check_least_privilege(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let mut offences = Offences::default();
    let mut checked = 0;
    for (_, pod, spec) in &pods {
        let pod_sc = spec.security_context.as_ref();
        for c in containers(spec) {
            checked += 1;
            let sc = c.security_context.as_ref();
            let at = |what: &str| format!("pod {} container {}: {what}", pod_name(pod), c.name);
            let non_root = sc
                .and_then(|x| x.run_as_non_root)
                .or(pod_sc.and_then(|x| x.run_as_non_root));
            let uid = sc
                .and_then(|x| x.run_as_user)
                .or(pod_sc.and_then(|x| x.run_as_user));
            if non_root != Some(true) {
                offences.add(at("runAsNonRoot is not true"));
            }
            if uid == Some(0) {
                offences.add(at("runs as UID 0"));
            }
            if sc.and_then(|x| x.allow_privilege_escalation) != Some(false) {
                offences.add(at("allowPrivilegeEscalation is not false"));
            }
            let drops_all = sc
                .and_then(|x| x.capabilities.as_ref())
                .and_then(|caps| caps.drop.as_ref())
                .is_some_and(|d| d.iter().any(|c| c == "ALL"));
            if !drops_all {
                offences.add(at("capabilities do not drop ALL"));
            }
            let seccomp = sc
                .and_then(|x| x.seccomp_profile.as_ref())
                .or(pod_sc.and_then(|x| x.seccomp_profile.as_ref()))
                .map(|p| p.type_.as_str());
            if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
                offences.add(at("seccomp profile is not RuntimeDefault or Localhost"));
            }
            if sc.and_then(|x| x.read_only_root_filesystem) != Some(true) {
                offences.add(at("root filesystem is not read-only"));
            }
        }
    }
    offences.verdict(format!(
        "{checked} containers in {} pods run non-root, without privilege escalation, with ALL capabilities dropped, seccomp and a read-only root filesystem",
        pods.len()
    ))
}

/// Secrets a pod refers to, by volume, projection, env or envFrom.
pub fn secrets_of(pod: &Pod) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(spec) = &pod.spec else { return out };
    for v in spec.volumes.iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.insert(name);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(secret) = &source.secret {
                out.insert(secret.name.clone());
            }
        }
    }
    for c in containers(spec) {
        for e in c.env.iter().flatten() {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                out.insert(r.name.clone());
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.secret_ref {
                out.insert(r.name.clone());
            }
        }
    }
    out
}

/// I-6: no pod on `default`; no account or Secret used by two components.
pub fn check_no_shared_accounts(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let mut offences = Offences::default();
    let mut account_users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut secret_users: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (component, pod, _) in &pods {
        let sa = service_account_of(pod);
        if sa == "default" {
            offences.add(format!(
                "pod {} runs as the default ServiceAccount",
                pod_name(pod)
            ));
        }
        account_users.entry(sa).or_default().insert(&component.name);
        for secret in secrets_of(pod) {
            secret_users
                .entry(secret)
                .or_default()
                .insert(&component.name);
        }
    }
    for (sa, users) in &account_users {
        if users.len() > 1 && *sa != "default" {
            offences.add(format!("ServiceAccount {sa} is shared by {}", join(users)));
        }
    }
    for (secret, users) in &secret_users {
        if users.len() > 1 {
            offences.add(format!("Secret {secret} is used by {}", join(users)));
        }
    }
    offences.verdict(format!(
        "each of {} components runs as its own ServiceAccount and uses its own Secrets",
        s.targets.len()
    ))
}

fn join(set: &BTreeSet<&str>) -> String {
    set.iter().copied().collect::<Vec<_>>().join(" and ")
}

fn find_role_rules<'a>(s: &'a Scope<'_>, name: &str) -> Option<&'a [PolicyRule]> {
    s.snapshot
        .roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
        .map(|r| r.rules.as_deref().unwrap_or_default())
}

fn find_binding<'a>(s: &'a Scope<'_>, name: &str) -> Option<&'a RoleBinding> {
    s.snapshot
        .role_bindings
        .iter()
        .find(|b| b.metadata.name.as_deref() == Some(name))
        .map(|b| b.as_ref())
}

pub(crate) fn grants(rules: &[PolicyRule], resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.resources
            .iter()
            .flatten()
            .any(|x| x == resource || x == "*")
            && r.verbs.iter().any(|v| v == verb || v == "*")
    })
}

pub(crate) fn same_subject(a: &Subject, b: &Subject) -> bool {
    a.kind == b.kind
        && a.name == b.name
        && (a.kind != "ServiceAccount" || a.namespace == b.namespace)
}

/// Each declared subject of `level` is bound to the level's Role.
fn check_level_bound(
    s: &Scope<'_>,
    level: AccessLevel,
    declared: &[Subject],
    offences: &mut Offences,
) {
    if declared.is_empty() {
        return;
    }
    let binding_name = role_name(s.system, level);
    let Some(binding) = find_binding(s, &binding_name) else {
        offences.add(format!("RoleBinding {binding_name} is missing"));
        return;
    };
    if binding.role_ref.name != binding_name {
        offences.add(format!(
            "RoleBinding {binding_name} points at {}",
            binding.role_ref.name
        ));
    }
    let bound = binding.subjects.as_deref().unwrap_or_default();
    for d in declared {
        if !bound.iter().any(|b| same_subject(b, d)) {
            offences.add(format!(
                "{} {} is not bound to {binding_name}",
                d.kind, d.name
            ));
        }
    }
}

/// I-7: administrators are declared and bound to a Role that lets them administer.
pub fn check_admin_access(s: &Scope<'_>) -> Check {
    let admins = &s.system.access.admins;
    if admins.is_empty() {
        return Check::fail("spec.access.admins names nobody: the system has no administrator");
    }
    let mut offences = Offences::default();
    let role = role_name(s.system, AccessLevel::Admin);
    match find_role_rules(s, &role) {
        None => offences.add(format!("Role {role} is missing")),
        Some(rules) => {
            for (resource, verb) in [
                ("secrets", "get"),
                ("pods", "delete"),
                ("deployments", "update"),
            ] {
                if !grants(rules, resource, verb) {
                    offences.add(format!("Role {role} cannot {verb} {resource}"));
                }
            }
        }
    }
    check_level_bound(s, AccessLevel::Admin, admins, &mut offences);
    offences.verdict(format!(
        "Role {role} is bound to {} declared administrators",
        admins.len()
    ))
}

/// I-8: operators and viewers get Roles without Secrets or exec, bound to the declared users.
pub fn check_user_access(s: &Scope<'_>) -> Check {
    let mut offences = Offences::default();
    for level in [AccessLevel::Operator, AccessLevel::Viewer] {
        let role = role_name(s.system, level);
        match find_role_rules(s, &role) {
            None => offences.add(format!("Role {role} is missing")),
            Some(rules) => {
                for (resource, verb) in [
                    ("secrets", "get"),
                    ("secrets", "list"),
                    ("pods/exec", "create"),
                ] {
                    if grants(rules, resource, verb) {
                        offences.add(format!("Role {role} can {verb} {resource}"));
                    }
                }
            }
        }
    }
    check_level_bound(
        s,
        AccessLevel::Operator,
        &s.system.access.operators,
        &mut offences,
    );
    check_level_bound(
        s,
        AccessLevel::Viewer,
        &s.system.access.viewers,
        &mut offences,
    );
    offences.verdict(format!(
        "Roles {} and {} grant no Secrets and no exec; {} operators and {} viewers are bound",
        role_name(s.system, AccessLevel::Operator),
        role_name(s.system, AccessLevel::Viewer),
        s.system.access.operators.len(),
        s.system.access.viewers.len()
    ))
}

/// The rules a RoleBinding grants, when its Role or ClusterRole is known.
pub(crate) fn bound_rules<'a>(s: &'a Scope<'_>, binding: &RoleBinding) -> Option<&'a [PolicyRule]> {
    let role = &binding.role_ref;
    match role.kind.as_str() {
        "ClusterRole" => s
            .snapshot
            .cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(role.name.as_str()))
            .map(|r| r.rules.as_deref().unwrap_or_default()),
        _ => find_role_rules(s, &role.name),
    }
}

/// I-9: no binding in the namespace gives wildcard rules or cluster-admin to non-admins.
pub fn check_authorization(s: &Scope<'_>) -> Check {
    let mut offences = Offences::default();
    for binding in &s.snapshot.role_bindings {
        let role = &binding.role_ref;
        let rules = bound_rules(s, binding);
        let wildcard = role.kind == "ClusterRole" && role.name == "cluster-admin"
            || rules.is_some_and(|rules| {
                rules.iter().any(|r| {
                    r.verbs.iter().any(|v| v == "*")
                        || r.resources.iter().flatten().any(|x| x == "*")
                        || r.api_groups.iter().flatten().any(|g| g == "*")
                })
            });
        if !wildcard {
            continue;
        }
        for subject in binding.subjects.iter().flatten() {
            if !s
                .system
                .access
                .admins
                .iter()
                .any(|a| same_subject(a, subject))
            {
                offences.add(format!(
                    "RoleBinding {} gives {} {} to {} {}, who is not an administrator",
                    binding.metadata.name.as_deref().unwrap_or("?"),
                    role.kind,
                    role.name,
                    subject.kind,
                    subject.name
                ));
            }
        }
    }
    // No count of the namespace's bindings: evidence that moved with every
    // other system's bindings would rewrite this system's status each time.
    offences.verdict(
        "no RoleBinding in the namespace grants wildcard rules or cluster-admin to a non-administrator",
    )
}

/// I-10: tokens only where declared, no credentials in the environment, no
/// Secret that belongs to another component.
pub fn check_credential_passing(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let secret_owner: BTreeMap<&str, &str> = s
        .snapshot
        .secrets
        .iter()
        .filter_map(|m| {
            let component = m
                .labels
                .as_ref()?
                .get(crate::build::meta::COMPONENT_LABEL)?;
            Some((m.name.as_deref()?, component.as_str()))
        })
        .collect();
    let mut offences = Offences::default();
    for (component, pod, spec) in &pods {
        let sa = service_account_of(pod);
        let sa_automount = s
            .snapshot
            .service_accounts
            .iter()
            .find(|a| a.metadata.name.as_deref() == Some(sa))
            .and_then(|a| a.automount_service_account_token);
        let mounted = spec
            .automount_service_account_token
            .or(sa_automount)
            .unwrap_or(true);
        if mounted && !component.automount_service_account_token {
            offences.add(format!(
                "pod {} mounts an API token, which component {} does not declare",
                pod_name(pod),
                component.name
            ));
        }
        for c in containers(spec) {
            let from_env = c.env.iter().flatten().filter_map(|e| {
                e.value_from
                    .as_ref()?
                    .secret_key_ref
                    .as_ref()
                    .map(|r| r.name.clone())
            });
            let from_env_from = c
                .env_from
                .iter()
                .flatten()
                .filter_map(|e| e.secret_ref.as_ref().map(|r| r.name.clone()));
            for secret in from_env.chain(from_env_from) {
                offences.add(format!(
                    "pod {} container {} takes Secret {secret} into its environment; mount it as a file",
                    pod_name(pod),
                    c.name
                ));
            }
        }
        for secret in secrets_of(pod) {
            if let Some(owner) = secret_owner.get(secret.as_str())
                && *owner != component.name
            {
                offences.add(format!(
                    "pod {} of {} uses Secret {secret} of component {owner}",
                    pod_name(pod),
                    component.name
                ));
            }
        }
    }
    offences.verdict(format!(
        "{} pods mount API tokens only where declared, take no Secrets into their environment and use no other component's Secrets",
        pods.len()
    ))
}
