//! The serving certificate every replica shares, kept in a Secret of the
//! operator's namespace. Every replica watches the Secret and serves what it
//! holds; only the leader writes it. A new certificate comes with a new CA,
//! and the webhook configurations trust the new and the previous CA before
//! the Secret changes, so a replica still serving the old certificate stays
//! trusted until it has loaded the new one. No CA key is kept anywhere: the
//! next renewal makes a new CA.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tracing::{info, warn};

use super::{Error, Registrar, TlsSlot, certs::ServingCert, registration::ComponentFilter};

pub const CA_CRT: &str = "ca.crt";
pub const PREVIOUS_CA_CRT: &str = "previous-ca.crt";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// Where the shared certificate lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedSecret {
    pub namespace: String,
    pub name: String,
}

/// What the leader does with the Secret as stored.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// It serves the right names for long enough: trust these CAs.
    Keep { bundle: String },
    /// Missing, unreadable, for other names or due for renewal: issue anew,
    /// still trusting `previous_ca` (the stored CA, while it is valid).
    Rotate {
        previous_ca: Option<String>,
        why: &'static str,
    },
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

/// A CA in PEM that is still valid at `now`.
fn valid_ca(pem: Option<String>, now: SystemTime) -> Option<String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = pem?;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    (super::certs::not_after(&der).ok()? > now).then_some(pem)
}

/// The certificate a Secret holds, if it holds a readable one.
pub fn stored(secret: &Secret) -> Result<ServingCert, String> {
    let field = |key| text(secret, key).ok_or_else(|| format!("{key} is missing or empty"));
    ServingCert::from_pem(&field(CA_CRT)?, &field(TLS_CRT)?, &field(TLS_KEY)?)
        .map_err(|e| e.to_string())
}

/// Decides, from the Secret as stored, whether to keep or rotate.
pub fn plan(secret: Option<&Secret>, hosts: &[String], now: SystemTime) -> Plan {
    let Some(secret) = secret else {
        return Plan::Rotate {
            previous_ca: None,
            why: "no certificate stored yet",
        };
    };
    if [CA_CRT, TLS_CRT, TLS_KEY]
        .iter()
        .all(|k| text(secret, k).is_none())
    {
        return Plan::Rotate {
            previous_ca: None,
            why: "no certificate stored yet",
        };
    }
    let previous_ca = valid_ca(text(secret, CA_CRT), now);
    let rotate = |why| Plan::Rotate {
        previous_ca: previous_ca.clone(),
        why,
    };
    let Ok(cert) = stored(secret) else {
        return rotate("the stored certificate is unreadable");
    };
    let mut want: Vec<&String> = hosts.iter().collect();
    let mut have = cert.hosts().unwrap_or_default();
    want.sort();
    have.sort();
    if want != have.iter().collect::<Vec<_>>() {
        return rotate("the stored certificate is for other names");
    }
    if cert.needs_renewal(now) {
        return rotate("the stored certificate is due for renewal");
    }
    let mut bundle = cert.ca_pem.clone();
    bundle.extend(valid_ca(text(secret, PREVIOUS_CA_CRT), now));
    Plan::Keep { bundle }
}

/// The Secret's data for a new certificate.
fn data(next: &ServingCert, previous_ca: Option<&String>) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::from([
        (CA_CRT.to_string(), next.ca_pem.clone()),
        (TLS_CRT.to_string(), next.chain_pem.clone()),
        (TLS_KEY.to_string(), next.key_pem.clone()),
    ]);
    data.extend(previous_ca.map(|ca| (PREVIOUS_CA_CRT.to_string(), ca.clone())));
    data.into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect()
}

/// The leader's part: makes the Secret hold a good certificate and the
/// webhook configurations trust it (and, during a switch, its predecessor).
pub async fn ensure(
    api: &Api<Secret>,
    shared: &SharedSecret,
    hosts: &[String],
    registrar: &Registrar,
    filter: ComponentFilter,
) -> Result<(), Error> {
    let current = api.get_opt(&shared.name).await.map_err(Error::Secret)?;
    let now = SystemTime::now();
    match plan(current.as_ref(), hosts, now) {
        Plan::Keep { bundle } => registrar.publish(Some(bundle), filter).await,
        Plan::Rotate { previous_ca, why } => {
            let next = ServingCert::issue(hosts, now)?;
            // Trust first, then switch: every replica stays trusted throughout.
            let mut bundle = next.ca_pem.clone();
            bundle.extend(previous_ca.clone());
            registrar.publish(Some(bundle), filter).await?;
            let data = Some(data(&next, previous_ca.as_ref()));
            let pp = PostParams {
                field_manager: Some(crate::controller::FIELD_MANAGER.into()),
                ..Default::default()
            };
            match current {
                // A replace carries the resourceVersion read above: a
                // concurrent writer makes it fail, and the next round reads again.
                Some(mut secret) => {
                    secret.data = data;
                    secret.string_data = None;
                    api.replace(&shared.name, &pp, &secret).await
                }
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(shared.name.clone()),
                            namespace: Some(shared.namespace.clone()),
                            ..Default::default()
                        },
                        data,
                        ..Default::default()
                    };
                    api.create(&pp, &secret).await
                }
            }
            .map_err(Error::Secret)?;
            info!(secret = %shared.name, reason = why, "issued a new webhook serving certificate");
            Ok(())
        }
    }
}

/// Every replica's part: serves the certificate the Secret holds, and says
/// when it changed (`changed`) and that one is loaded (`loaded`).
pub async fn follow(
    api: Api<Secret>,
    shared: SharedSecret,
    tls: TlsSlot,
    loaded: tokio::sync::watch::Sender<bool>,
    changed: tokio::sync::watch::Sender<u64>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", shared.name));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut serving: Option<String> = None;
    while let Some(event) = events.next().await {
        let secret = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
            Ok(watcher::Event::Delete(_)) => {
                changed.send_modify(|n| *n += 1);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, secret = %shared.name, "watching the webhook certificate Secret failed; retrying");
                continue;
            }
        };
        changed.send_modify(|n| *n += 1);
        let cert = match stored(&secret) {
            Ok(cert) => cert,
            Err(e) => {
                warn!(secret = %shared.name, error = %e, "the webhook certificate Secret holds no usable certificate yet");
                continue;
            }
        };
        if serving.as_deref() == Some(cert.chain_pem.as_str()) {
            continue;
        }
        match cert.server_config() {
            Ok(config) => {
                *tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                serving = Some(cert.chain_pem.clone());
                loaded.send_replace(true);
                info!(secret = %shared.name, "serving the shared webhook certificate");
            }
            Err(e) => warn!(error = %e, "the shared webhook certificate is unusable"),
        }
    }
}

/// How long after a failed `ensure` the leader tries again.
pub const RETRY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn rotates_what_is_missing_wrong_or_due_and_keeps_the_rest() {
        let now = SystemTime::now();
        let hosts = vec!["iotposture.ops.svc".to_string()];
        assert!(matches!(
            plan(None, &hosts, now),
            Plan::Rotate {
                previous_ca: None,
                ..
            }
        ));
        assert!(matches!(
            plan(Some(&secret(BTreeMap::new())), &hosts, now),
            Plan::Rotate {
                previous_ca: None,
                ..
            }
        ));

        let first = ServingCert::issue(&hosts, now).unwrap();
        let stored = secret(data(&first, None));
        assert_eq!(
            plan(Some(&stored), &hosts, now),
            Plan::Keep {
                bundle: first.ca_pem.clone()
            }
        );
        // Other names: rotate, still trusting the stored CA.
        let other = vec!["iotposture.other.svc".to_string()];
        assert_eq!(
            plan(Some(&stored), &other, now),
            Plan::Rotate {
                previous_ca: Some(first.ca_pem.clone()),
                why: "the stored certificate is for other names"
            }
        );
        // Due for renewal.
        let later = now + Duration::from_secs(61 * 24 * 3600);
        assert!(matches!(
            plan(Some(&stored), &hosts, later),
            Plan::Rotate {
                why: "the stored certificate is due for renewal",
                ..
            }
        ));
        // After a rotation both CAs are trusted, the previous one only while valid.
        let second = ServingCert::issue(&hosts, now).unwrap();
        let rotated = secret(data(&second, Some(&first.ca_pem)));
        assert_eq!(
            plan(Some(&rotated), &hosts, now),
            Plan::Keep {
                bundle: format!("{}{}", second.ca_pem, first.ca_pem)
            }
        );
        // A previous CA past its validity is trusted no longer.
        let expired =
            ServingCert::issue(&hosts, now - Duration::from_secs(100 * 24 * 3600)).unwrap();
        let after_expiry = secret(data(&second, Some(&expired.ca_pem)));
        assert_eq!(
            plan(Some(&after_expiry), &hosts, now),
            Plan::Keep {
                bundle: second.ca_pem.clone()
            }
        );
        let mut junk = data(&second, None);
        junk.insert(TLS_KEY.into(), ByteString(b"junk".to_vec()));
        assert!(matches!(
            plan(Some(&secret(junk)), &hosts, now),
            Plan::Rotate {
                why: "the stored certificate is unreadable",
                ..
            }
        ));
    }
}
