//! The caches of the kinds the operator writes (NetworkPolicies, Roles,
//! ServiceAccounts…) hold each object packed: its metadata decoded, the rest
//! as JSON. Decoded, a NetworkPolicy of ours took 4.6 KB and a Role 6.1 KB,
//! mostly the inline size of k8s-openapi's types whose fields are nearly all
//! empty; at 1,000 systems these caches held 80 MiB. A reconcile decodes
//! only the objects of its own namespace (`Packed::unpack`), and of those
//! only what changed since the last reconcile there (`Recent`).
//! Labels and annotations are kept apart, each in one allocation
//! (`labels::StringMap`): read them with `Packed::labels` or `Labelled`.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    marker::PhantomData,
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

use super::index::Indexed;
use super::labels::{Labelled, StringMap};

/// An object of kind `K` as its cache holds it.
pub struct Packed<K> {
    /// Without managed fields, labels and annotations.
    metadata: ObjectMeta,
    labels: StringMap,
    annotations: StringMap,
    /// The object but its metadata, as JSON.
    body: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Packed<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            body: self.body.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for Packed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("metadata", &self.metadata)
            .field("labels", &self.labels)
            .field("annotations", &self.annotations)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl<K> Packed<K> {
    /// Inherent, so that `packed.labels()` never resolves to
    /// `ResourceExt::labels`, which finds none in `metadata`.
    pub fn labels(&self) -> &StringMap {
        &self.labels
    }

    pub fn annotations(&self) -> &StringMap {
        &self.annotations
    }
}

impl<K> Labelled for Packed<K> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }
}

impl<K: Resource + Serialize + DeserializeOwned + Default> Packed<K> {
    pub fn new(mut object: K) -> Self {
        super::cache::slim(&mut object);
        let mut metadata = std::mem::take(object.meta_mut());
        Self {
            labels: StringMap::new(metadata.labels.take()),
            annotations: StringMap::new(metadata.annotations.take()),
            metadata,
            // Serializing k8s-openapi's and kopium's types cannot fail.
            body: serde_json::to_vec(&object).unwrap_or_default().into(),
            kind: PhantomData,
        }
    }

    /// The object as the API server sent it (less what `slim` drops).
    pub fn unpack(&self) -> K {
        // Written by `new` from the same type: it reads back.
        let mut object: K = serde_json::from_slice(&self.body).unwrap_or_default();
        *object.meta_mut() = ObjectMeta {
            labels: self.labels.to_map(),
            annotations: self.annotations.to_map(),
            ..self.metadata.clone()
        };
        object
    }
}

/// Decoded from the API server's JSON as a whole object, then packed.
impl<'de, K: Resource + Serialize + DeserializeOwned + Default> Deserialize<'de> for Packed<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::deserialize(d).map(Packed::new)
    }
}

/// Served from the same URLs as `K`.
impl<K: Resource> Resource for Packed<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &K::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &K::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &K::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &K::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The decoded objects of the namespaces reconciled last, so that the next
/// reconcile there decodes only what changed since. With 100 systems in one
/// namespace, decoding its 2,700 objects and dropping them again was 60% of
/// every reconcile's CPU, while between two reconciles one or two of them
/// change. Bounded to `RECENT_NAMESPACES`: memory grows with the largest
/// namespaces (decoded, an object takes 2–3 times its packed size), not with
/// the cluster.
pub struct Recent<K> {
    /// Most recently used last.
    namespaces: Mutex<VecDeque<Decoded<K>>>,
}

/// One namespace's objects: each packed object, as the cache held it when
/// decoded, with its decoded form. Holding the packed `Arc` keeps its address
/// from being reused, so an equal address means the very same object.
struct Decoded<K> {
    namespace: String,
    objects: Vec<(Arc<Packed<K>>, Arc<K>)>,
}

/// As many as reconciles run at once: each finds its namespace still there.
pub const RECENT_NAMESPACES: usize = 16;

impl<K> Default for Recent<K> {
    fn default() -> Self {
        Self {
            namespaces: Mutex::new(VecDeque::new()),
        }
    }
}

impl<K> Recent<K>
where
    K: Resource + Serialize + DeserializeOwned + Default + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// The objects `index` holds in `namespace`, decoded: what was decoded
    /// before and has not changed since is shared, not decoded again.
    pub fn in_namespace(&self, index: &Indexed<Packed<K>>, namespace: &str) -> Vec<Arc<K>> {
        let lock = || {
            self.namespaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        // Taken out while decoding, so other namespaces' reconciles do not
        // wait; two at once in the same namespace each decode, harmlessly.
        let before = {
            let mut namespaces = lock();
            namespaces
                .iter()
                .position(|d| d.namespace == namespace)
                .and_then(|i| namespaces.remove(i))
        };
        let mut known: HashMap<*const Packed<K>, Arc<K>> = before
            .iter()
            .flat_map(|d| &d.objects)
            .map(|(p, k)| (Arc::as_ptr(p), k.clone()))
            .collect();
        let objects: Vec<(Arc<Packed<K>>, Arc<K>)> = index
            .in_namespace(namespace)
            .into_iter()
            .map(|p| {
                let decoded = known
                    .remove(&Arc::as_ptr(&p))
                    .unwrap_or_else(|| Arc::new(p.unpack()));
                (p, decoded)
            })
            .collect();
        // Dropped here, outside the lock: the objects that changed or went.
        drop((before, known));
        let decoded = objects.iter().map(|(_, k)| k.clone()).collect();
        let mut namespaces = lock();
        if namespaces.len() >= RECENT_NAMESPACES {
            namespaces.pop_front();
        }
        namespaces.push_back(Decoded {
            namespace: namespace.to_string(),
            objects,
        });
        decoded
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{networking::v1::NetworkPolicy, rbac::v1::Role};
    use kube::{ResourceExt, runtime::watcher};

    use super::*;

    const POLICY: &str = r#"{
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "sensor-ingress", "namespace": "plant", "uid": "u-1",
            "labels": {"app.kubernetes.io/managed-by": "iotposture"},
            "annotations": {"note": "kept"},
            "ownerReferences": [{"apiVersion": "iotposture.dev/v1alpha1", "kind": "IoTSystem",
                "name": "factory", "uid": "s-1", "controller": true}]},
        "spec": {"podSelector": {"matchLabels": {"app": "sensor"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "gw"}}}],
                "ports": [{"port": 8883, "protocol": "TCP"}]}]}
    }"#;

    #[test]
    fn an_object_comes_back_as_it_was_sent() {
        let whole: NetworkPolicy = serde_json::from_str(POLICY).unwrap();
        let packed: Packed<NetworkPolicy> = serde_json::from_str(POLICY).unwrap();
        assert_eq!(packed.name_any(), "sensor-ingress");
        assert_eq!(packed.labels().to_map().as_ref(), Some(whole.labels()));
        assert_eq!(
            packed.label("app.kubernetes.io/managed-by"),
            Some("iotposture")
        );
        assert_eq!(packed.annotations().get("note"), Some("kept"));
        assert_eq!(packed.owner_references(), whole.owner_references());
        assert_eq!(packed.unpack(), whole);
        // The metadata is kept once, not again in the body, and its maps
        // apart: `ObjectMeta`'s were most of a small object's size.
        assert!(!String::from_utf8_lossy(&packed.body).contains("sensor-ingress"));
        assert_eq!(packed.meta().labels, None);
        assert_eq!(packed.meta().annotations, None);
    }

    #[test]
    fn field_managers_and_the_last_applied_copy_are_not_kept() {
        let mut whole: NetworkPolicy = serde_json::from_str(POLICY).unwrap();
        whole.metadata.managed_fields = Some(vec![Default::default()]);
        whole.metadata.annotations.as_mut().unwrap().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        let back = Packed::new(whole).unpack();
        assert_eq!(back, serde_json::from_str::<NetworkPolicy>(POLICY).unwrap());
    }

    #[test]
    fn it_is_served_from_the_same_urls_as_the_kind() {
        assert_eq!(
            Packed::<Role>::url_path(&(), Some("plant")),
            Role::url_path(&(), Some("plant"))
        );
        assert_eq!(Packed::<Role>::kind(&()), "Role");
    }

    fn policy(namespace: &str, name: &str) -> NetworkPolicy {
        let mut p: NetworkPolicy = serde_json::from_str(POLICY).unwrap();
        p.metadata.namespace = Some(namespace.into());
        p.metadata.name = Some(name.into());
        p
    }

    #[test]
    fn a_namespaces_objects_come_decoded() {
        let index = Indexed::of(
            [
                policy("plant", "b"),
                policy("plant", "a"),
                policy("elsewhere", "a"),
            ]
            .map(Packed::new),
        );
        let recent = Recent::default();
        let plant = recent.in_namespace(&index, "plant");
        let names: Vec<_> = plant.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(*plant[0], policy("plant", "a"));
        assert!(recent.in_namespace(&index, "nowhere").is_empty());
    }

    #[test]
    fn only_what_changed_since_the_last_reconcile_is_decoded_again() {
        let index = Indexed::<Packed<NetworkPolicy>>::of([]);
        for name in ["a", "b", "c"] {
            index.apply(watcher::Event::Apply(Packed::new(policy("plant", name))));
        }
        let recent = Recent::default();
        let first = recent.in_namespace(&index, "plant");
        let mut changed = policy("plant", "b");
        changed.spec.as_mut().unwrap().policy_types = Some(vec!["Egress".into()]);
        index.apply(watcher::Event::Apply(Packed::new(changed.clone())));
        index.apply(watcher::Event::Delete(Packed::new(policy("plant", "c"))));
        index.apply(watcher::Event::Apply(Packed::new(policy("plant", "d"))));
        let second = recent.in_namespace(&index, "plant");
        // "a" is the very same decoded object; "b" is its new version.
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        assert_eq!(*second[1], changed);
        let names: Vec<_> = second.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["a", "b", "d"]);
    }

    #[test]
    fn only_the_namespaces_reconciled_last_are_kept_decoded() {
        let namespaces: Vec<String> = (0..=RECENT_NAMESPACES).map(|i| format!("ns{i}")).collect();
        let index = Indexed::of(namespaces.iter().map(|ns| Packed::new(policy(ns, "a"))));
        let recent = Recent::default();
        let first: Vec<_> = namespaces
            .iter()
            .map(|ns| recent.in_namespace(&index, ns))
            .collect();
        // The first namespace was pushed out by the others; the last is kept.
        let again = |i: usize| recent.in_namespace(&index, &namespaces[i]);
        assert!(Arc::ptr_eq(
            &again(RECENT_NAMESPACES)[0],
            &first[RECENT_NAMESPACES][0]
        ));
        assert!(!Arc::ptr_eq(&again(0)[0], &first[0][0]));
        assert_eq!(recent.namespaces.lock().unwrap().len(), RECENT_NAMESPACES);
    }
}
