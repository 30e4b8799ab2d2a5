//! Labels and annotations as the caches hold them. In `ObjectMeta` each is a
//! `BTreeMap<String, String>`: a 640-byte node however few its entries, and
//! an allocation per key and value. `Packed` and `CachedPod` keep theirs as
//! a `StringMap`, in one allocation: on a bench plane of 1,000 systems
//! (13,000 pods, 20,000 NetworkPolicies, 12,000 ServiceAccounts) their
//! caches went from 106 to 74 MiB. `Labelled` reads labels whichever way an
//! object holds them.

use std::collections::BTreeMap;

use kube::{ResourceExt, core::Selector, core::SelectorExt};

/// A string map in one allocation: per entry, in key order, the key's and
/// the value's length (u32, little-endian) then their bytes. Lookups scan:
/// objects carry a handful of labels.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct StringMap(Box<[u8]>);

impl StringMap {
    pub fn new(map: Option<BTreeMap<String, String>>) -> Self {
        let map = map.unwrap_or_default();
        let size = map.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut bytes = Vec::with_capacity(size);
        for (k, v) in &map {
            bytes.extend_from_slice(&(k.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
            bytes.extend_from_slice(k.as_bytes());
            bytes.extend_from_slice(v.as_bytes());
        }
        Self(bytes.into_boxed_slice())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        Entries(&self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As `ObjectMeta` holds it: `None` when empty, as the API server
    /// leaves empty maps out.
    pub fn to_map(&self) -> Option<BTreeMap<String, String>> {
        (!self.is_empty()).then(|| {
            self.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    /// Whether `selector` takes an object with these labels.
    pub fn matched_by(&self, selector: &Selector) -> bool {
        selector.matches(&self.to_map().unwrap_or_default())
    }
}

impl std::fmt::Debug for StringMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

struct Entries<'a>(&'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (lengths, rest) = self.0.split_first_chunk::<8>()?;
        let key_len = u32::from_le_bytes([lengths[0], lengths[1], lengths[2], lengths[3]]);
        let value_len = u32::from_le_bytes([lengths[4], lengths[5], lengths[6], lengths[7]]);
        let (key, rest) = rest.split_at_checked(key_len as usize)?;
        let (value, rest) = rest.split_at_checked(value_len as usize)?;
        self.0 = rest;
        // Written by `StringMap::new` from `String`s: valid UTF-8.
        Some((
            std::str::from_utf8(key).ok()?,
            std::str::from_utf8(value).ok()?,
        ))
    }
}

/// An object's labels wherever its cache keeps them. The caches' generic
/// code reads labels through this, never through `ResourceExt::labels`,
/// which sees none on a `Packed` or `CachedPod`.
pub trait Labelled {
    fn label(&self, key: &str) -> Option<&str>;
}

/// The kinds cached as the API server sends them.
macro_rules! labelled_as_sent {
    ($($kind:ty),* $(,)?) => {$(
        impl Labelled for $kind {
            fn label(&self, key: &str) -> Option<&str> {
                self.labels().get(key).map(String::as_str)
            }
        }
    )*};
}

labelled_as_sent!(
    crate::api::IoTSystem,
    crate::api::nodeposture::NodePosture,
    k8s_openapi::api::core::v1::Pod,
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::rbac::v1::ClusterRole,
    k8s_openapi::api::rbac::v1::ClusterRoleBinding,
    k8s_openapi::api::events::v1::Event,
    kube::core::DynamicObject,
);

impl<K: kube::Resource> Labelled for kube::core::PartialObjectMeta<K> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels().get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn it_gives_back_the_map_it_was_made_from() {
        let labels = map(&[
            ("app", "sensor"),
            ("iotposture.dev/system", "plant"),
            ("empty", ""),
            // Annotation values may hold anything, separators included.
            ("note", "a\0b=c,d\n"),
        ]);
        let packed = StringMap::new(Some(labels.clone()));
        assert_eq!(packed.to_map(), Some(labels));
        assert_eq!(packed.get("app"), Some("sensor"));
        assert_eq!(packed.get("empty"), Some(""));
        assert_eq!(packed.get("note"), Some("a\0b=c,d\n"));
        assert_eq!(packed.get("ap"), None);
        assert_eq!(
            packed.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["app", "empty", "iotposture.dev/system", "note"]
        );
    }

    #[test]
    fn empty_or_absent_comes_back_absent() {
        assert_eq!(StringMap::new(None).to_map(), None);
        assert_eq!(StringMap::new(Some(BTreeMap::new())).to_map(), None);
        assert!(StringMap::new(None).is_empty());
        assert!(!StringMap::new(Some(map(&[("a", "")]))).is_empty());
    }

    #[test]
    fn a_selector_matches_it_as_it_matches_the_map() {
        let labels = StringMap::new(Some(map(&[("app", "sensor"), ("tier", "edge")])));
        let sel = |s: &[(&'static str, &'static str)]| Selector::from_iter(s.iter().copied());
        assert!(labels.matched_by(&sel(&[("app", "sensor")])));
        assert!(labels.matched_by(&sel(&[("app", "sensor"), ("tier", "edge")])));
        assert!(!labels.matched_by(&sel(&[("app", "gateway")])));
        assert!(!labels.matched_by(&sel(&[("zone", "a")])));
        assert!(!StringMap::default().matched_by(&sel(&[("app", "sensor")])));
    }

    #[test]
    fn equal_maps_are_equal_and_hash_alike() {
        use std::hash::{BuildHasher, RandomState};
        let a = StringMap::new(Some(map(&[("a", "1"), ("b", "2")])));
        let b = StringMap::new(Some(map(&[("b", "2"), ("a", "1")])));
        let c = StringMap::new(Some(map(&[("a", "1"), ("b", "3")])));
        let s = RandomState::new();
        assert_eq!(a, b);
        assert_eq!(s.hash_one(&a), s.hash_one(&b));
        assert_ne!(a, c);
        assert_eq!(format!("{a:?}"), r#"{"a": "1", "b": "2"}"#);
    }
}
