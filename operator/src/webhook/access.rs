//! Who may hand out access through `spec.access`. The operator binds the
//! subjects an IoTSystem names to its admin, operator and viewer Roles; if it
//! did that for anyone who may write an IoTSystem, it would grant what the
//! requester could not grant themselves (a confused deputy). So, like the API
//! server for a RoleBinding, the IoTSystem webhook admits a new subject on a
//! level only when the requester may `bind` that level's Role, or already
//! holds every permission the Role grants in the namespace; both are asked of
//! the API server's own authorizer with SubjectAccessReviews.

use std::collections::BTreeMap;

use futures::{StreamExt, stream};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, Client, api::PostParams, core::admission::AdmissionRequest};

use crate::{
    api::{Access, IoTSystem, Subject},
    build::{
        meta::child_name,
        rbac::{AccessLevel, rules_for},
    },
};

/// SubjectAccessReviews under way at once for one admission request.
const CONCURRENT_REVIEWS: usize = 16;
/// Missing permissions named in a refusal; the rest are counted.
const NAMED: usize = 3;

/// One thing a Role allows, as a SubjectAccessReview asks it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub verb: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        };
        match self.group.as_str() {
            "" => write!(f, "{} {resource}", self.verb),
            group => write!(f, "{} {resource}.{group}", self.verb),
        }
    }
}

/// Every permission the Role of `level` grants.
pub fn permissions(level: AccessLevel) -> Vec<Permission> {
    let mut out: Vec<Permission> = rules_for(level)
        .iter()
        .flat_map(|rule| {
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            groups.into_iter().flat_map(move |group| {
                let verbs = rule.verbs.clone();
                resources.clone().into_iter().flat_map(move |resource| {
                    let (resource, subresource) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_string(), Some(s.to_string())),
                        None => (resource, None),
                    };
                    let group = group.clone();
                    verbs.clone().into_iter().map(move |verb| Permission {
                        group: group.clone(),
                        resource: resource.clone(),
                        subresource: subresource.clone(),
                        verb,
                    })
                })
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn subjects(access: &Access, level: AccessLevel) -> &[Subject] {
    match level {
        AccessLevel::Admin => &access.admins,
        AccessLevel::Operator => &access.operators,
        AccessLevel::Viewer => &access.viewers,
    }
}

fn field(level: AccessLevel) -> &'static str {
    match level {
        AccessLevel::Admin => "admins",
        AccessLevel::Operator => "operators",
        AccessLevel::Viewer => "viewers",
    }
}

/// The subjects a request adds, per level: all of them on create; on
/// update those the old object did not have on that level. Removing a
/// subject never grants anything, so it needs no review.
pub fn added_subjects<'a>(
    new: &'a Access,
    old: Option<&Access>,
) -> Vec<(AccessLevel, Vec<&'a Subject>)> {
    AccessLevel::ALL
        .iter()
        .filter_map(|&level| {
            let before = old.map(|o| subjects(o, level)).unwrap_or_default();
            let added: Vec<&Subject> = subjects(new, level)
                .iter()
                .filter(|s| !before.contains(s))
                .collect();
            (!added.is_empty()).then_some((level, added))
        })
        .collect()
}

/// Who sent the admission request, as the API server authenticated them.
#[derive(Clone, Debug, Default)]
pub struct Requester {
    pub user: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Requester {
    pub fn of<T: kube::Resource>(request: &AdmissionRequest<T>) -> Self {
        let info = &request.user_info;
        Self {
            user: info.username.clone().unwrap_or_default(),
            uid: info.uid.clone(),
            groups: info.groups.clone().unwrap_or_default(),
            extra: info.extra.clone().unwrap_or_default(),
        }
    }
}

/// Asks the API server whether `requester` may do one thing.
pub trait Authorizer {
    fn allowed(
        &self,
        requester: &Requester,
        attributes: ResourceAttributes,
    ) -> impl Future<Output = Result<bool, String>> + Send;
}

/// The API server's authorizer, through SubjectAccessReviews.
pub struct ApiServer(pub Client);

impl Authorizer for ApiServer {
    async fn allowed(
        &self,
        requester: &Requester,
        attributes: ResourceAttributes,
    ) -> Result<bool, String> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(requester.user.clone()),
                uid: requester.uid.clone(),
                groups: Some(requester.groups.clone()),
                extra: Some(requester.extra.clone()),
                resource_attributes: Some(attributes),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        Api::<SubjectAccessReview>::all(self.0.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("asking the API server failed: {e}"))
            .map(|r| r.status.is_some_and(|s| s.allowed))
    }
}

/// Why a request may not grant a level.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// The requester can neither bind the Role nor holds what it grants.
    CannotGrant {
        level: AccessLevel,
        subjects: Vec<String>,
        role: String,
        missing: Vec<Permission>,
    },
    /// The API server could not be asked.
    Unanswered(String),
}

impl Refusal {
    pub fn message(&self, requester: &Requester, namespace: &str) -> String {
        match self {
            Refusal::CannotGrant {
                level,
                subjects,
                role,
                missing,
            } => {
                let named: Vec<String> =
                    missing.iter().take(NAMED).map(|p| p.to_string()).collect();
                let more = match missing.len().saturating_sub(NAMED) {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                format!(
                    "spec.access.{field} would give {subjects} the {level} role of this IoTSystem, which {user:?} cannot grant: \
                     they lack {named}{more} in namespace {namespace}, and may not bind Role {role}. \
                     Ask someone who holds those permissions to make this change, or a cluster administrator to grant \
                     you `bind` on that Role (see the README, \"Who may grant access\")",
                    field = field(*level),
                    subjects = subjects.join(", "),
                    level = level.as_str(),
                    user = requester.user,
                    named = named.join(", "),
                )
            }
            Refusal::Unanswered(why) => format!(
                "cannot check whether {:?} may grant the access in spec.access: {why}",
                requester.user
            ),
        }
    }
}

fn describe(s: &Subject) -> String {
    match &s.namespace {
        Some(ns) => format!("{} {ns}/{}", s.kind.as_str(), s.name),
        None => format!("{} {}", s.kind.as_str(), s.name),
    }
}

/// Reviews every level that gains subjects in `new` (against `old`, on
/// update). `name` is the system's name, which names its Roles; without one
/// (generateName) `bind` is asked of Roles in general.
pub async fn review(
    authorizer: &impl Authorizer,
    requester: &Requester,
    namespace: &str,
    name: Option<&str>,
    new: &IoTSystem,
    old: Option<&IoTSystem>,
) -> Result<(), Refusal> {
    for (level, added) in added_subjects(&new.spec.access, old.map(|o| &o.spec.access)) {
        let role = name.map(|n| child_name(n, &[level.as_str()]));
        let bind = ResourceAttributes {
            namespace: Some(namespace.to_string()),
            verb: Some("bind".into()),
            group: Some("rbac.authorization.k8s.io".into()),
            resource: Some("roles".into()),
            name: role.clone(),
            ..ResourceAttributes::default()
        };
        if authorizer
            .allowed(requester, bind)
            .await
            .map_err(Refusal::Unanswered)?
        {
            continue;
        }
        let answers: Vec<(Permission, Result<bool, String>)> = stream::iter(permissions(level))
            .map(|p| async move {
                let attributes = ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some(p.verb.clone()),
                    group: Some(p.group.clone()),
                    resource: Some(p.resource.clone()),
                    subresource: p.subresource.clone(),
                    ..ResourceAttributes::default()
                };
                let answer = authorizer.allowed(requester, attributes).await;
                (p, answer)
            })
            .buffered(CONCURRENT_REVIEWS)
            .collect()
            .await;
        let mut missing = Vec::new();
        for (p, answer) in answers {
            if !answer.map_err(Refusal::Unanswered)? {
                missing.push(p);
            }
        }
        if !missing.is_empty() {
            return Err(Refusal::CannotGrant {
                level,
                subjects: added.iter().map(|s| describe(s)).collect(),
                role: role.unwrap_or_else(|| format!("<name>-{}", level.as_str())),
                missing,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SubjectKind;

    fn subject(kind: SubjectKind, name: &str) -> Subject {
        Subject {
            kind,
            name: name.into(),
            namespace: None,
        }
    }

    #[test]
    fn every_rule_becomes_permissions_to_ask() {
        let admin = permissions(AccessLevel::Admin);
        let secrets = Permission {
            group: String::new(),
            resource: "secrets".into(),
            subresource: None,
            verb: "get".into(),
        };
        assert!(admin.contains(&secrets));
        let exec = admin
            .iter()
            .find(|p| p.subresource.as_deref() == Some("exec") && p.verb == "create")
            .unwrap();
        assert_eq!(exec.to_string(), "create pods/exec");
        assert!(!permissions(AccessLevel::Viewer).contains(&secrets));
        let scale = permissions(AccessLevel::Operator)
            .into_iter()
            .find(|p| p.subresource.as_deref() == Some("scale"))
            .unwrap();
        assert_eq!(scale.to_string(), "get deployments/scale.apps");
    }

    #[test]
    fn only_added_subjects_are_reviewed() {
        let old = Access {
            admins: vec![subject(SubjectKind::Group, "ops")],
            ..Access::default()
        };
        let mut new = old.clone();
        assert!(added_subjects(&new, Some(&old)).is_empty(), "unchanged");
        new.admins.push(subject(SubjectKind::User, "mallory"));
        new.viewers.push(subject(SubjectKind::User, "vic"));
        let added = added_subjects(&new, Some(&old));
        assert_eq!(added.len(), 2);
        assert_eq!(added[0].0, AccessLevel::Admin);
        assert_eq!(added[0].1, [&subject(SubjectKind::User, "mallory")]);
        // A create reviews every level that names anyone.
        assert_eq!(added_subjects(&new, None)[0].1.len(), 2);
        // Removing is never reviewed.
        assert!(added_subjects(&Access::default(), Some(&new)).is_empty());
    }

    /// An authorizer that allows a fixed list of (verb, resource).
    struct Allows(Vec<(&'static str, &'static str)>);

    impl Authorizer for Allows {
        async fn allowed(&self, _: &Requester, a: ResourceAttributes) -> Result<bool, String> {
            let resource = match &a.subresource {
                Some(s) => format!("{}/{s}", a.resource.unwrap_or_default()),
                None => a.resource.unwrap_or_default(),
            };
            Ok(self
                .0
                .iter()
                .any(|(v, r)| Some(*v) == a.verb.as_deref() && *r == resource))
        }
    }

    fn system(yaml: &str) -> IoTSystem {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const MALLORY_ADMIN: &str = "{apiVersion: iotposture.dev/v1alpha1, kind: IoTSystem, metadata: {name: s}, spec: {components: [{name: a, role: Sensor, selector: {matchLabels: {a: b}}}], access: {admins: [{kind: User, name: mallory}]}}}";

    #[tokio::test]
    async fn a_requester_without_the_permissions_is_refused_naming_them() {
        let requester = Requester {
            user: "mallory".into(),
            ..Requester::default()
        };
        let only_systems = Allows(vec![("create", "iotsystems"), ("get", "iotsystems")]);
        let refusal = review(
            &only_systems,
            &requester,
            "plant",
            Some("s"),
            &system(MALLORY_ADMIN),
            None,
        )
        .await
        .unwrap_err();
        let Refusal::CannotGrant { level, role, .. } = &refusal else {
            panic!("{refusal:?}")
        };
        assert_eq!((*level, role.as_str()), (AccessLevel::Admin, "s-admin"));
        let message = refusal.message(&requester, "plant");
        assert!(
            message.starts_with("spec.access.admins would give User mallory the admin role of this IoTSystem, which \"mallory\" cannot grant: they lack "),
            "{message}"
        );
        assert!(message.contains("may not bind Role s-admin"), "{message}");
    }

    #[tokio::test]
    async fn bind_on_the_role_is_enough() {
        let requester = Requester::default();
        let binder = Allows(vec![("bind", "roles")]);
        review(
            &binder,
            &requester,
            "plant",
            Some("s"),
            &system(MALLORY_ADMIN),
            None,
        )
        .await
        .unwrap();
    }
}
