//! Reading users' Secrets. The operator reads a Secret's values only when
//! the Secret carries `iotposture.dev/probe-credentials=true`: the metadata
//! cache is asked first, so an unlabelled Secret is never fetched, and the
//! label is checked again on what was fetched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt, runtime::reflector::ObjectRef};

use super::cache::Caches;

/// The label that lets the operator read a Secret (probe test accounts,
/// broker credentials, the log store's CA and credentials).
pub const READABLE_LABEL: &str = "iotposture.dev/probe-credentials";

fn labelled(labels: &BTreeMap<String, String>) -> bool {
    labels.get(READABLE_LABEL).map(String::as_str) == Some("true")
}

/// Whether the Secret exists and is labelled, from the metadata cache only.
/// `field` names the spec field, for the error.
pub fn readable(caches: &Caches, namespace: &str, name: &str, field: &str) -> Result<(), String> {
    let meta = caches
        .secrets
        .get(&ObjectRef::new(name).within(namespace))
        .ok_or_else(|| format!("{field}: no such Secret in namespace {namespace}"))?;
    if !labelled(meta.labels()) {
        return Err(format!(
            "{field}: the Secret lacks the label {READABLE_LABEL}=true that lets the operator use it"
        ));
    }
    Ok(())
}

/// The values of a labelled Secret.
pub async fn read(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    readable(caches, namespace, name, field)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let full = api
        .get_opt(name)
        .await
        .map_err(|e| format!("{field}: reading it failed: {e}"))?
        .filter(|s| labelled(s.labels()))
        .ok_or_else(|| format!("{field}: no such labelled Secret"))?;
    Ok(full
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// `username` and `password` of a Secret's values.
pub fn username_password(
    data: &BTreeMap<String, Vec<u8>>,
    field: &str,
) -> Result<(String, String), String> {
    let text = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.clone()).ok());
    match (text("username"), text("password")) {
        (Some(u), Some(p)) => Ok((u, p)),
        _ => Err(format!("{field}: the Secret lacks username or password")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_and_password_both_or_an_error_naming_the_field() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("username".to_string(), b"u".to_vec()),
            ("password".to_string(), b"p".to_vec()),
        ]
        .into();
        assert_eq!(username_password(&data, "f"), Ok(("u".into(), "p".into())));
        let mut half = data.clone();
        half.remove("password");
        assert_eq!(
            username_password(&half, "logging.credentialsSecret s"),
            Err("logging.credentialsSecret s: the Secret lacks username or password".into())
        );
        let mut binary = data;
        binary.insert("username".into(), vec![0xff]);
        assert!(username_password(&binary, "f").is_err());
    }
}
