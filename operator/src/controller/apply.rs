//! Step 4 of the pipeline: make the cluster hold exactly the desired objects.
//!
//! Reads come from the watch caches, so a reconcile with nothing to change
//! sends no request at all. An object is compared with its cached copy on
//! everything it carries (not only the fields we set), so a field someone
//! else added counts as drift: a missing object is created by server-side
//! apply; a drifted one is replaced whole (PUT), which also removes fields
//! other managers own and an apply would leave in place. Then our objects
//! that are no longer wanted are deleted. Every object is tried even when
//! another fails, NetworkPolicies first, and the report carries the objects
//! as the API server now holds them, for the checklist to judge.

use std::{collections::BTreeSet, fmt::Debug, sync::Arc};

use k8s_openapi::{NamespaceResourceScope, api::core::v1::Namespace};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    core::{DynamicObject, PartialObjectMeta},
    runtime::reflector::ObjectRef,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{
    Context, FIELD_MANAGER,
    index::{Coverage, Indexed},
    packed::Packed,
};
use crate::{
    build::{DesiredObjects, meta::SYSTEM_LABEL},
    controller::validate::ValidatedSystem,
    metrics::Metrics,
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
    #[error("updating the admission webhooks for this system failed: {0}")]
    Webhooks(String),
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
            ApplyError::Apply { .. } | ApplyError::Encode { .. } | ApplyError::Webhooks(_) => {
                "ApplyFailed"
            }
            ApplyError::Prune { .. } => "PruneFailed",
        }
    }
}

/// Every object that could not be applied or pruned in one reconcile.
#[derive(Debug)]
pub struct ApplyFailures(pub Vec<ApplyError>);

impl std::fmt::Display for ApplyFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [] => write!(f, "nothing failed"),
            [one] => write!(f, "{one}"),
            [first, rest @ ..] => write!(f, "{first} (and {} more failures)", rest.len()),
        }
    }
}

impl std::error::Error for ApplyFailures {}

impl ApplyFailures {
    /// The reason of the first failure: the one the message leads with.
    pub fn reason(&self) -> &'static str {
        self.0.first().map_or("ApplyFailed", ApplyError::reason)
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

/// What one apply step changed, and what the cluster holds afterwards.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: Vec<ObjectKey>,
    pub pruned: Vec<ObjectKey>,
    /// Objects the cluster already held as built.
    pub kept: Vec<ObjectKey>,
    pub failed: Vec<ApplyError>,
    /// The system's objects as the API server holds them now: our writes'
    /// answers, the cached copies of what was kept or could not be written.
    pub current: DesiredObjects,
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
) -> ApplyReport {
    // No `..`: a new kind must be synced here before this compiles.
    let DesiredObjects {
        service_accounts,
        roles,
        role_bindings,
        network_policies,
        certificates,
        config_maps,
        prometheus_rules,
    } = desired;
    let caches = &ctx.caches;
    let mut report = ApplyReport::default();
    // Isolation first: whatever fails after it, the pods are fenced in.
    let network_policies = sync_kind(
        ctx,
        system,
        &caches.network_policies,
        network_policies,
        &mut report,
    )
    .await;
    // Gateway configuration next: pods admitted later find it to mount.
    let config_maps = sync_kind(ctx, system, &caches.config_maps, config_maps, &mut report).await;
    let service_accounts = sync_kind(
        ctx,
        system,
        &caches.service_accounts,
        service_accounts,
        &mut report,
    )
    .await;
    // Roles before their bindings.
    let roles = sync_kind(ctx, system, &caches.roles, roles, &mut report).await;
    let role_bindings = sync_kind(
        ctx,
        system,
        &caches.role_bindings,
        role_bindings,
        &mut report,
    )
    .await;
    // Without cert-manager's CRDs there is nowhere to put Certificates; III-9
    // and VI-4 then say so.
    let certificates = match &caches.certificates {
        Some(store) => sync_kind(ctx, system, store, certificates, &mut report).await,
        None => Vec::new(),
    };
    // Only where the CRD is served; the rules are then not in `config_maps`.
    let prometheus_rules = match &caches.prometheus_rules {
        Some(store) => sync_kind(ctx, system, store, prometheus_rules, &mut report).await,
        None => Vec::new(),
    };
    report.current = DesiredObjects {
        service_accounts,
        roles,
        role_bindings,
        network_policies,
        certificates,
        config_maps,
        prometheus_rules,
    };
    report
}

/// What happened to one desired object.
enum Synced<K> {
    Kept(K),
    Written(K),
    /// Not written; the cluster's copy, if any, stays as it is.
    Failed(ApplyError, Option<K>),
}

/// Makes the cluster's copy of `object` equal to it; `cached` is what the
/// watch cache holds under its name, and `coverage` what that cache says
/// about objects missing from it.
///
/// Where the cache takes every object of the kind and its watch is unbroken,
/// a missing object is new: one apply. Missing from a label-selected cache,
/// it is created (a create never touches an existing object). Where that
/// meets an existing object, or the watch is broken, the server's copy is
/// read (`read_current`) and judged: ours is kept or restored, someone
/// else's left alone.
async fn sync_object<K>(
    api: &Api<K>,
    metrics: &Metrics,
    kind: &'static str,
    object: &K,
    cached: Option<Arc<K>>,
    coverage: Coverage,
    owner_uid: &str,
) -> Synced<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object.name_any();
    let failed_apply = |source| ApplyError::Apply {
        kind,
        name: name.clone(),
        source,
    };
    let Some(current) = cached else {
        // Missing from a cache of every such object, it is new (or ours,
        // written and not seen yet); missing from a label-selected one, it
        // may exist unlabelled. Either way one request makes a new one, as a
        // bare client would, and an existing one comes back as a conflict
        // and is looked at below: never taken over if it is someone else's.
        // What a first write is, and the refusal that says the name is taken.
        let first: Option<(Make, IsTaken)> = match coverage {
            Coverage::Whole => Some((Make::Apply, is_conflict)),
            Coverage::Selected => Some((Make::Create, is_already_there)),
            Coverage::Lagging => None,
        };
        if let Some((how, taken)) = first {
            match make(api, metrics, kind, object, how).await {
                Err(source) if taken(&source) => {}
                done => {
                    return done
                        .map_or_else(|e| Synced::Failed(failed_apply(e), None), Synced::Written);
                }
            }
        }
        return match read_current(api, &name, coverage).await {
            Err(source) => Synced::Failed(failed_apply(source), None),
            Ok(Some(existing)) if !is_owned_by(&existing, owner_uid) => Synced::Failed(
                ApplyError::NotOurs {
                    kind,
                    name: name.clone(),
                },
                Some(existing),
            ),
            Ok(Some(existing)) => replace_if_drifted(api, metrics, kind, object, existing).await,
            // Gone meanwhile, or never there. A label-selected kind is only
            // ever created: the operator needs no `patch` on it.
            Ok(None) => {
                let how = match coverage {
                    Coverage::Selected => Make::Create,
                    Coverage::Whole | Coverage::Lagging => Make::ForceApply,
                };
                match make(api, metrics, kind, object, how).await {
                    Ok(created) => Synced::Written(created),
                    Err(source) => Synced::Failed(failed_apply(source), None),
                }
            }
        };
    };
    if !is_owned_by(current.as_ref(), owner_uid) {
        return Synced::Failed(
            ApplyError::NotOurs { kind, name },
            Some(current.as_ref().clone()),
        );
    }
    match replace_if_drifted(api, metrics, kind, object, current.as_ref().clone()).await {
        // The cache may be behind the server: look at the server's copy once.
        Synced::Failed(ApplyError::Apply { source, .. }, _) if is_conflict(&source) => {
            match read_current(api, &name, coverage).await {
                Ok(Some(fresh)) => replace_if_drifted(api, metrics, kind, object, fresh).await,
                Ok(None) => Synced::Failed(failed_apply(source), None),
                Err(e) => Synced::Failed(failed_apply(e), Some(current.as_ref().clone())),
            }
        }
        other => other,
    }
}

/// Whether a refused write says an object of the name exists.
type IsTaken = fn(&kube::Error) -> bool;

/// How `make` writes an object the cache does not hold.
enum Make {
    /// Server-side apply without force: a conflicting object made meanwhile
    /// is refused (409), not taken over.
    Apply,
    /// Server-side apply that takes every field: only once the name was
    /// seen to be free.
    ForceApply,
    /// A create, which never touches an existing object (409 AlreadyExists).
    Create,
}

async fn make<K>(
    api: &Api<K>,
    metrics: &Metrics,
    kind: &'static str,
    object: &K,
    how: Make,
) -> kube::Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object.name_any();
    match how {
        Make::Apply | Make::ForceApply => {
            metrics.write(kind, "apply");
            let mut params = PatchParams::apply(FIELD_MANAGER);
            params.force = matches!(how, Make::ForceApply);
            api.patch(&name, &params, &Patch::Apply(object)).await
        }
        Make::Create => {
            metrics.write(kind, "create");
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            api.create(&params, object).await
        }
    }
}

async fn replace_if_drifted<K>(
    api: &Api<K>,
    metrics: &Metrics,
    kind: &'static str,
    object: &K,
    current: K,
) -> Synced<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object.name_any();
    let (desired_value, current_value) =
        match (serde_json::to_value(object), serde_json::to_value(&current)) {
            (Ok(d), Ok(c)) => (d, c),
            (Err(source), _) | (_, Err(source)) => {
                return Synced::Failed(ApplyError::Encode { kind, name, source }, Some(current));
            }
        };
    if !differs(&desired_value, &current_value) {
        return Synced::Kept(current);
    }

    let replacement = merge_into_current(object, &current);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    metrics.write(kind, "update");
    match api.replace(&name, &params, &replacement).await {
        Ok(written) => Synced::Written(written),
        Err(source) => Synced::Failed(ApplyError::Apply { kind, name, source }, Some(current)),
    }
}

/// `object` with the identity of `current` (resourceVersion, uid, …) and
/// the labels, annotations and owners others put there besides ours.
fn merge_into_current<K: Resource + Clone>(object: &K, current: &K) -> K {
    let mut out = object.clone();
    let mut meta = current.meta().clone();
    let ours = object.meta();
    let mut labels = meta.labels.take().unwrap_or_default();
    labels.extend(ours.labels.clone().unwrap_or_default());
    meta.labels = Some(labels);
    if let Some(annotations) = &ours.annotations {
        let mut merged = meta.annotations.take().unwrap_or_default();
        merged.extend(annotations.clone());
        meta.annotations = Some(merged);
    }
    let mut owners = meta.owner_references.take().unwrap_or_default();
    for owner in ours.owner_references.iter().flatten() {
        if !owners.iter().any(|o| o.uid == owner.uid) {
            owners.push(owner.clone());
        }
    }
    meta.owner_references = Some(owners);
    // Omitted, the server keeps the field managers it has and moves what
    // this write changes to ours.
    meta.managed_fields = None;
    *out.meta_mut() = meta;
    out
}

/// The server's copy of `name`, if any. A kind watched whole is read as the
/// watch reads it (a list, narrowed to the name), so the operator needs no
/// `get` on it; a label-selected kind by name.
async fn read_current<K>(api: &Api<K>, name: &str, coverage: Coverage) -> kube::Result<Option<K>>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    if coverage == Coverage::Selected {
        return api.get_opt(name).await;
    }
    let named = ListParams::default().fields(&format!("metadata.name={name}"));
    Ok(api.list(&named).await?.items.into_iter().next())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// A create refused because an object of the name exists.
fn is_already_there(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

async fn sync_kind<K>(
    ctx: &Context,
    system: &ValidatedSystem,
    cache: &Indexed<Packed<K>>,
    desired: &[K],
    report: &mut ApplyReport,
) -> Vec<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Default
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
    let mut current = Vec::with_capacity(desired.len());

    for object in desired {
        let name = object.name_any();
        let cached = cache
            .get(&ObjectRef::new(&name).within(&system.namespace))
            .map(|p| Arc::new(p.unpack()));
        let key = ObjectKey {
            kind,
            name: name.clone(),
        };
        let synced = sync_object(
            &api,
            &ctx.metrics,
            kind,
            object,
            cached,
            cache.coverage(),
            owner_uid,
        );
        match synced.await {
            Synced::Kept(o) => {
                report.kept.push(key);
                current.push(o);
            }
            Synced::Written(o) => {
                ctx.caches.own_writes.wrote(kind, &o, system.object_ref());
                report.applied.push(key);
                current.push(o);
            }
            Synced::Failed(e, o) => {
                report.failed.push(e);
                current.extend(o);
            }
        }
    }

    let wanted: BTreeSet<String> = desired.iter().map(|o| o.name_any()).collect();
    for stale in cache.in_namespace(&system.namespace) {
        let ours = stale.labels().get(SYSTEM_LABEL) == Some(system.name.as_str())
            && is_owned_by(stale.as_ref(), owner_uid);
        let name = stale.name_any();
        if !ours || wanted.contains(&name) || stale.meta().deletion_timestamp.is_some() {
            continue;
        }
        ctx.metrics.write(kind, "delete");
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => report.pruned.push(ObjectKey { kind, name }),
            // Gone already: that is what we wanted.
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                report.pruned.push(ObjectKey { kind, name })
            }
            Err(source) => {
                report.failed.push(ApplyError::Prune { kind, name, source });
                current.push(stale.unpack());
            }
        }
    }
    current
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
    let api =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &system.namespace, &resource);
    let cached = cache
        .get(&ObjectRef::new_with(&name, resource.clone()).within(&system.namespace))
        .map(|c| {
            Arc::new(crate::build::policy_report::with_body_if_unchanged(
                &c, report,
            ))
        });
    // Label-selected: a PolicyReport of that name may exist unlabelled.
    let synced = sync_object(
        &api,
        &ctx.metrics,
        KIND,
        report,
        cached,
        cache.coverage(),
        &system.owner.uid,
    );
    match synced.await {
        Synced::Kept(_) => Ok(false),
        Synced::Written(o) => {
            ctx.caches.own_writes.wrote(KIND, &o, system.object_ref());
            Ok(true)
        }
        Synced::Failed(e, _) => Err(e),
    }
}

/// Makes the admission webhooks review this system's pods: their match
/// conditions cover its selectors, and its namespace carries their label.
/// Sends nothing when both are in place already.
pub async fn admit_for_review(ctx: &Context, system: &ValidatedSystem) -> Result<(), ApplyError> {
    use crate::webhook::registration::ADMISSION_LABEL;
    let namespace = system.namespace.as_str();
    let Some(webhooks) = &ctx.webhooks else {
        return Ok(());
    };
    webhooks
        .cover(&ctx.caches.systems, &ctx.caches.systems_changed)
        .await
        .map_err(|e| ApplyError::Webhooks(e.to_string()))?;
    let registration = &webhooks.registration;
    if !registration.may_select(namespace) {
        return Ok(());
    }
    let current: Option<Arc<PartialObjectMeta<Namespace>>> =
        ctx.caches.namespaces.get(&ObjectRef::new(namespace));
    if current.is_some_and(|ns| ns.labels().get(ADMISSION_LABEL) == Some(&registration.instance)) {
        return Ok(());
    }
    ctx.metrics.write("Namespace", "apply");
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {ADMISSION_LABEL: registration.instance}},
    });
    let labelled = Api::<Namespace>::all(ctx.client.clone())
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
    ctx.caches
        .own_writes
        .wrote("Namespace", &labelled, system.object_ref());
    Ok(())
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
        "PrometheusRule" => "PrometheusRule",
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

/// Whether the cluster's copy (`actual`, as JSON) differs from what we built
/// (`desired`): any difference in the object's content (everything but
/// apiVersion, kind, metadata and status) counts, fields others added
/// included; of the metadata, our labels, annotations and owner must be there.
/// Empty values count as absent, as the API server drops them.
pub fn differs(desired: &Value, actual: &Value) -> bool {
    content(desired) != content(actual) || !metadata_kept(&desired["metadata"], &actual["metadata"])
}

fn content(object: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Value::Object(fields) = object {
        for (key, value) in fields {
            if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    pruned(Value::Object(out)).unwrap_or(Value::Null)
}

/// Drops null, "", [] and {} values from maps, recursively. Elements of
/// lists stay, even empty ones: `ingress: [{}]` (allow everything) is not
/// the same as no ingress rule at all.
fn pruned(value: Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) => Some(Value::Array(
            items
                .into_iter()
                .map(|i| pruned(i).unwrap_or(Value::Null))
                .collect(),
        )),
        Value::Object(fields) => {
            let kept: serde_json::Map<String, Value> = fields
                .into_iter()
                .filter_map(|(k, v)| pruned(v).map(|v| (k, v)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other => Some(other),
    }
}

fn metadata_kept(desired: &Value, actual: &Value) -> bool {
    let map_kept = |field: &str| match desired[field].as_object() {
        None => true,
        Some(ours) => ours.iter().all(|(k, v)| actual[field].get(k) == Some(v)),
    };
    let owners_kept = desired["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|ours| {
            actual["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|theirs| theirs["uid"] == ours["uid"])
        });
    map_kept("labels") && map_kept("annotations") && owners_kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_additions_to_metadata_and_status_are_not_drift() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"types": ["Ingress"]}});
        let actual = json!({
            "metadata": {"name": "a", "labels": {"x": "1", "other": "2"}, "resourceVersion": "7", "managedFields": []},
            "spec": {"types": ["Ingress"]},
            "status": {"observed": 3}
        });
        assert!(!differs(&desired, &actual));
    }

    #[test]
    fn empty_values_match_absent_ones() {
        // The API server drops an empty apiGroup of a ServiceAccount subject.
        let desired = json!({"subjects": [{"kind": "ServiceAccount", "name": "bot", "apiGroup": ""}], "x": {}, "y": []});
        let actual = json!({"subjects": [{"kind": "ServiceAccount", "name": "bot"}]});
        assert!(!differs(&desired, &actual));
    }

    #[test]
    fn a_field_added_by_someone_else_is_drift() {
        let desired = json!({"spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress", "Egress"]}});
        let mut actual = desired.clone();
        actual["spec"]["ingress"] = json!([{}]);
        assert!(differs(&desired, &actual), "an allow-all rule slipped in");
    }

    #[test]
    fn edits_removals_and_lost_labels_are_drift() {
        let desired = json!({"metadata": {"labels": {"x": "1"}, "ownerReferences": [{"uid": "u"}]}, "rules": [{"verbs": ["get"]}]});
        let same = json!({"metadata": {"labels": {"x": "1"}, "ownerReferences": [{"uid": "u"}]}, "rules": [{"verbs": ["get"]}]});
        assert!(!differs(&desired, &same));
        let mut edited = same.clone();
        edited["rules"][0]["verbs"] = json!(["get", "delete"]);
        assert!(differs(&desired, &edited));
        let mut removed = same.clone();
        removed["rules"] = json!([]);
        assert!(differs(&desired, &removed));
        let mut relabelled = same.clone();
        relabelled["metadata"]["labels"]["x"] = json!("2");
        assert!(differs(&desired, &relabelled));
        let mut orphaned = same.clone();
        orphaned["metadata"]["ownerReferences"] = json!([]);
        assert!(differs(&desired, &orphaned));
        assert!(differs(
            &json!({"automountServiceAccountToken": false}),
            &json!({"automountServiceAccountToken": true})
        ));
    }

    #[test]
    fn a_replacement_keeps_identity_and_foreign_labels() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let mut desired = ConfigMap::default();
        desired.metadata.name = Some("c".into());
        desired.metadata.labels = Some([("ours".to_string(), "1".to_string())].into());
        desired.data = Some([("k".to_string(), "v".to_string())].into());
        let mut current = ConfigMap::default();
        current.metadata.name = Some("c".into());
        current.metadata.resource_version = Some("42".into());
        current.metadata.labels = Some([("theirs".to_string(), "x".to_string())].into());
        current.data = Some(
            [
                ("k".to_string(), "old".to_string()),
                ("extra".to_string(), "1".to_string()),
            ]
            .into(),
        );
        let out = merge_into_current(&desired, &current);
        assert_eq!(out.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(out.metadata.labels.as_ref().unwrap().len(), 2);
        assert_eq!(out.data, desired.data, "content is ours, whole");
        assert!(out.metadata.managed_fields.is_none());
    }
}
