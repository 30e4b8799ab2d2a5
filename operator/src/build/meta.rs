//! Names, labels and ownership shared by every object the operator builds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::controller::validate::ValidatedSystem;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "iotposture";
pub const SYSTEM_LABEL: &str = "iotposture.dev/system";
pub const COMPONENT_LABEL: &str = "iotposture.dev/component";

/// Label selector for every object this operator manages (watch filter).
/// Lower-case hex of `bytes`, as digests are shown in names and annotations.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Longest name we generate: fits label values and DNS labels alike.
const MAX_NAME: usize = 63;

/// `<system>-<part>-<part>`, shortened with a stable hash when it would exceed 63
/// characters, so distinct inputs keep distinct names.
pub fn child_name(system: &str, parts: &[&str]) -> String {
    let mut name = system.to_string();
    for p in parts {
        name.push('-');
        name.push_str(p);
    }
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = format!("{:08x}", fnv1a(name.as_bytes()) as u32);
    let keep = MAX_NAME - hash.len() - 1;
    let prefix = name[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}")
}

/// FNV-1a: a fixed, dependency-free hash so names never change between releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Metadata for a child object: name, namespace, our labels and the owner
/// reference that makes the garbage collector remove it with the system.
pub fn child_meta(system: &ValidatedSystem, name: String, component: Option<&str>) -> ObjectMeta {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (SYSTEM_LABEL.to_string(), system.name.clone()),
    ]);
    if let Some(c) = component {
        labels.insert(COMPONENT_LABEL.to_string(), c.to_string());
    }
    ObjectMeta {
        name: Some(name),
        namespace: Some(system.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![system.owner.clone()]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_joined() {
        assert_eq!(
            child_name("factory", &["gateway", "allow"]),
            "factory-gateway-allow"
        );
    }

    #[test]
    fn long_names_are_shortened_stably_and_distinctly() {
        let a = child_name(&"s".repeat(40), &[&"c".repeat(40), "default-deny"]);
        let b = child_name(&"s".repeat(40), &[&"c".repeat(39), "default-deny"]);
        assert_eq!(a.len(), 63);
        assert_ne!(a, b);
        assert_eq!(
            a,
            child_name(&"s".repeat(40), &[&"c".repeat(40), "default-deny"])
        );
        assert!(!a.contains("--"));
    }
}
