//! Step 4 of the pipeline: make the cluster hold exactly the desired objects.
//! Server-side apply with one field manager, only for objects whose cached copy
//! differs from what we built; then delete our objects that are no longer
//! wanted. Reads come from the watch caches, so a reconcile with nothing to
//! change sends no request at all.

use std::{collections::BTreeSet, fmt::Debug};

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    core::DynamicObject,
    runtime::reflector::{ObjectRef, Store},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{Context, FIELD_MANAGER};
use crate::{
    build::{DesiredObjects, meta::SYSTEM_LABEL},
    controller::validate::ValidatedSystem,
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "{kind} {name:?} already exists and does not belong to this IoTSystem; rename the system or remove that object"
    )]
    NotOurs { kind: &'static str, name: String },
    #[error("applying {kind} {name:?} failed: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name:?}, which is no longer wanted, failed: {source}")]
    Prune {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("encoding {kind} {name:?} failed: {source}")]
    Encode {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ApplyError {
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::NotOurs { .. } => "NameConflict",
            ApplyError::Apply { .. } | ApplyError::Encode { .. } => "ApplyFailed",
            ApplyError::Prune { .. } => "PruneFailed",
        }
    }
}

/// `Kind/name`, as reported in status and Events.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// What one apply step changed.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: Vec<ObjectKey>,
    pub pruned: Vec<ObjectKey>,
    /// Objects the cluster already held as built.
    pub kept: Vec<ObjectKey>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        !self.applied.is_empty() || !self.pruned.is_empty()
    }
}

pub async fn apply_all(
    ctx: &Context,
    system: &ValidatedSystem,
    desired: &DesiredObjects,
) -> Result<ApplyReport, ApplyError> {
    // No `..`: a new kind must be synced here before this compiles.
    let DesiredObjects {
        service_accounts,
        roles,
        role_bindings,
        network_policies,
        certificates,
        config_maps,
    } = desired;
    let caches = &ctx.caches;
    let mut report = ApplyReport::default();
    // Gateway configuration first: pods admitted next find it mounted.
    sync_kind(ctx, system, &caches.config_maps, config_maps, &mut report).await?;
    // Roles before their bindings; isolation last, once identities exist.
    sync_kind(
        ctx,
        system,
        &caches.service_accounts,
        service_accounts,
        &mut report,
    )
    .await?;
    sync_kind(ctx, system, &caches.roles, roles, &mut report).await?;
    sync_kind(
        ctx,
        system,
        &caches.role_bindings,
        role_bindings,
        &mut report,
    )
    .await?;
    sync_kind(
        ctx,
        system,
        &caches.network_policies,
        network_policies,
        &mut report,
    )
    .await?;
    // Without cert-manager's CRDs there is nowhere to put Certificates; III-9
    // and VI-4 then say so.
    if let Some(store) = &caches.certificates {
        sync_kind(ctx, system, store, certificates, &mut report).await?;
    }
    Ok(report)
}

async fn sync_kind<K>(
    ctx: &Context,
    system: &ValidatedSystem,
    cache: &Store<K>,
    desired: &[K],
    report: &mut ApplyReport,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let kind = kind_of::<K>();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &system.namespace);
    let owner_uid = &system.owner.uid;

    for object in desired {
        let name = object.name_any();
        let key = ObjectKey {
            kind,
            name: name.clone(),
        };
        let cached = cache.get(&ObjectRef::new(&name).within(&system.namespace));
        match &cached {
            Some(current) => {
                if !is_owned_by(current.as_ref(), owner_uid) {
                    return Err(ApplyError::NotOurs { kind, name });
                }
                let encode = |o: &K| {
                    serde_json::to_value(o).map_err(|source| ApplyError::Encode {
                        kind,
                        name: name.clone(),
                        source,
                    })
                };
                if is_subset(&encode(object)?, &encode(current)?) {
                    report.kept.push(key);
                    continue;
                }
            }
            None => refuse_foreign(&api, kind, &name, owner_uid).await?,
        }
        ctx.metrics.write(kind, "apply");
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|source| ApplyError::Apply {
            kind,
            name: name.clone(),
            source,
        })?;
        report.applied.push(key);
    }

    let wanted: BTreeSet<String> = desired.iter().map(|o| o.name_any()).collect();
    for stale in cache.state() {
        let ours = stale.namespace().as_deref() == Some(system.namespace.as_str())
            && stale.labels().get(SYSTEM_LABEL) == Some(&system.name)
            && is_owned_by(stale.as_ref(), owner_uid);
        let name = stale.name_any();
        if !ours || wanted.contains(&name) || stale.meta().deletion_timestamp.is_some() {
            continue;
        }
        ctx.metrics.write(kind, "delete");
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            // Gone already: that is what we wanted.
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(source) => return Err(ApplyError::Prune { kind, name, source }),
        }
        report.pruned.push(ObjectKey { kind, name });
    }
    Ok(())
}

/// Writes the system's PolicyReport when it differs from the cached one.
/// Returns whether it wrote; without the PolicyReport CRD there is nothing to do.
pub async fn apply_report(
    ctx: &Context,
    system: &ValidatedSystem,
    report: &DynamicObject,
) -> Result<bool, ApplyError> {
    const KIND: &str = "PolicyReport";
    let Some(cache) = &ctx.caches.policy_reports else {
        return Ok(false);
    };
    let resource = crate::build::policy_report::api_resource();
    let name = report.name_any();
    let failed = |source| ApplyError::Apply {
        kind: KIND,
        name: name.clone(),
        source,
    };
    let encode = |o: &DynamicObject| {
        serde_json::to_value(o).map_err(|source| ApplyError::Encode {
            kind: KIND,
            name: name.clone(),
            source,
        })
    };
    let api =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &system.namespace, &resource);
    match cache.get(&ObjectRef::new_with(&name, resource.clone()).within(&system.namespace)) {
        Some(current) => {
            if !is_owned_by(current.as_ref(), &system.owner.uid) {
                return Err(ApplyError::NotOurs { kind: KIND, name });
            }
            if is_subset(&encode(report)?, &encode(&current)?) {
                return Ok(false);
            }
        }
        None => refuse_foreign(&api, KIND, &name, &system.owner.uid).await?,
    }
    ctx.metrics.write(KIND, "apply");
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(report),
    )
    .await
    .map_err(failed)?;
    Ok(true)
}

/// Puts the admission label on the namespace of a system, so the webhooks
/// select its pods. Sends nothing when the label is already there.
pub async fn label_namespace_for_admission(
    ctx: &Context,
    namespace: &str,
) -> Result<(), ApplyError> {
    use crate::webhook::registration::ADMISSION_LABEL;
    let (Some(registration), Some(cache)) = (&ctx.admission, &ctx.caches.namespaces) else {
        return Ok(());
    };
    if !registration.may_select(namespace) {
        return Ok(());
    }
    let current = cache.get(&ObjectRef::new(namespace));
    if current.is_some_and(|ns| ns.labels().get(ADMISSION_LABEL) == Some(&registration.instance)) {
        return Ok(());
    }
    ctx.metrics.write("Namespace", "apply");
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {ADMISSION_LABEL: registration.instance}},
    });
    Api::<k8s_openapi::api::core::v1::Namespace>::all(ctx.client.clone())
        .patch(
            namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(patch),
        )
        .await
        .map_err(|source| ApplyError::Apply {
            kind: "Namespace",
            name: namespace.to_string(),
            source,
        })?;
    Ok(())
}

/// An object missing from our cache may still exist unlabelled: never take
/// over someone else's object of the same name.
async fn refuse_foreign<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    owner_uid: &str,
) -> Result<(), ApplyError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let existing = api
        .get_opt(name)
        .await
        .map_err(|source| ApplyError::Apply {
            kind,
            name: name.to_string(),
            source,
        })?;
    match existing {
        Some(e) if !is_owned_by(&e, owner_uid) => Err(ApplyError::NotOurs {
            kind,
            name: name.to_string(),
        }),
        _ => Ok(()),
    }
}

pub fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Resource::kind borrows from a 'static constant for compiled-in types.
    match K::kind(&()).as_ref() {
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "NetworkPolicy" => "NetworkPolicy",
        "Certificate" => "Certificate",
        "ConfigMap" => "ConfigMap",
        _ => "Other",
    }
}

fn is_owned_by<K: Resource>(object: &K, uid: &str) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid)
}

/// True when every field we set is present with the same value in `actual`.
/// Fields the API server adds (defaults, managedFields, status) are ignored; an
/// empty list or map we set matches an absent one, as the server drops those.
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Null, _) => true,
        (Value::Object(d), Value::Object(a)) => d.iter().all(|(k, v)| match a.get(k) {
            Some(av) => is_subset(v, av),
            None => is_empty(v),
        }),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(dv, av)| is_subset(dv, av))
        }
        (Value::Object(_) | Value::Array(_), Value::Null) => is_empty(desired),
        (d, a) => d == a,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_additions_do_not_count_as_drift() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"types": ["Ingress"]}});
        let actual = json!({
            "metadata": {"name": "a", "labels": {"x": "1", "other": "2"}, "resourceVersion": "7", "managedFields": []},
            "spec": {"types": ["Ingress"], "defaulted": true}
        });
        assert!(is_subset(&desired, &actual));
    }

    #[test]
    fn edits_and_removals_are_drift() {
        let desired = json!({"spec": {"rules": [{"verbs": ["get"]}]}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"rules": [{"verbs": ["get", "delete"]}]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {}})));
        assert!(!is_subset(
            &json!({"automount": false}),
            &json!({"automount": true})
        ));
    }

    #[test]
    fn empty_desired_collections_match_absent_ones() {
        assert!(is_subset(
            &json!({"podSelector": {}, "ingress": []}),
            &json!({})
        ));
        assert!(!is_subset(&json!({"ingress": [{}]}), &json!({})));
    }
}
