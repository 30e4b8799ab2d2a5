//! The webhooks' serving certificate: the operator is its own small CA, issues
//! a short-lived certificate for the names the API server dials, renews it
//! well before expiry, and publishes the CA in the webhook configurations.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long one certificate lives, and how much of that is left when it is replaced.
pub const VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("issuing the webhook certificate failed: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("the webhook TLS configuration is invalid: {0}")]
    Tls(#[from] rustls::Error),
}

pub struct ServingCert {
    pub ca_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: SystemTime,
}

impl ServingCert {
    /// A new CA and a certificate for `hosts` (DNS names or IP addresses).
    pub fn issue(hosts: &[String], now: SystemTime) -> Result<Self, CertError> {
        let not_after = now + VALIDITY;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "iotposture webhook CA");
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now.into();
        ca.not_after = not_after.into();
        let ca_cert = ca.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca, ca_key);

        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        for host in hosts {
            leaf.subject_alt_names
                .push(match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(host.clone().try_into()?),
                });
        }
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts.first().cloned().unwrap_or_default(),
        );
        leaf.distinguished_name = dn;
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.not_before = now.into();
        leaf.not_after = not_after.into();
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem,
            chain: vec![cert.der().clone(), ca_cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
        })
    }

    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now + RENEW_BEFORE >= self.not_after
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig, CertError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_for_names_and_addresses_and_renews_in_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cert =
            ServingCert::issue(&["127.0.0.1".into(), "iotposture.ops.svc".into()], now).unwrap();
        assert!(cert.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(cert.chain.len(), 2);
        assert!(cert.server_config().is_ok());
        assert!(!cert.needs_renewal(now));
        assert!(!cert.needs_renewal(now + Duration::from_secs(59 * 24 * 3600)));
        assert!(cert.needs_renewal(now + Duration::from_secs(61 * 24 * 3600)));
    }
}
