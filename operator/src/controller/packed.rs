//! The caches of the kinds the operator writes (NetworkPolicies, Roles,
//! ServiceAccounts…) hold each object packed: its metadata decoded, the rest
//! as JSON. Decoded, a NetworkPolicy of ours took 4.6 KB and a Role 6.1 KB,
//! mostly the inline size of k8s-openapi's types whose fields are nearly all
//! empty; at 1,000 systems these caches held 80 MiB. A reconcile decodes
//! only the objects of its own namespace (`Packed::unpack`), a few dozen.
//! Labels and annotations are kept apart, each in one allocation
//! (`labels::StringMap`): read them with `Packed::labels` or `Labelled`.

use std::{borrow::Cow, marker::PhantomData, sync::Arc};

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

impl<K> Indexed<Packed<K>>
where
    K: Resource + Serialize + DeserializeOwned + Default + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// The objects of `namespace`, decoded.
    pub fn unpacked_in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.in_namespace(namespace)
            .iter()
            .map(|p| Arc::new(p.unpack()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{networking::v1::NetworkPolicy, rbac::v1::Role};
    use kube::ResourceExt;

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

    #[test]
    fn the_index_gives_a_namespaces_objects_decoded() {
        let mut other: NetworkPolicy = serde_json::from_str(POLICY).unwrap();
        other.metadata.namespace = Some("elsewhere".into());
        let index = Indexed::of([
            serde_json::from_str::<Packed<NetworkPolicy>>(POLICY).unwrap(),
            Packed::new(other),
        ]);
        let plant = index.unpacked_in_namespace("plant");
        assert_eq!(plant.len(), 1);
        assert_eq!(
            *plant[0],
            serde_json::from_str::<NetworkPolicy>(POLICY).unwrap()
        );
    }
}
