//! The webhooks' serving certificate: the operator is its own small CA, issues
//! a short-lived certificate for the names the API server dials, renews it
//! well before expiry, and publishes the CA in the webhook configurations.
//! With several replicas the certificate lives in a Secret (`shared`), so
//! every replica serves the one the configurations trust.

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
    #[error("the stored webhook certificate is unreadable: {0}")]
    Stored(String),
}

pub struct ServingCert {
    pub ca_pem: String,
    /// The leaf then the CA, PEM: what a Secret stores as `tls.crt`.
    pub chain_pem: String,
    pub key_pem: String,
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
            chain_pem: format!("{}{}", cert.pem(), ca_pem),
            key_pem: key.serialize_pem(),
            ca_pem,
            chain: vec![cert.der().clone(), ca_cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
        })
    }

    /// A certificate as stored: the CA, the chain (leaf first) and the key, PEM.
    pub fn from_pem(ca_pem: &str, chain_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |what: &str, e: rustls::pki_types::pem::Error| {
            CertError::Stored(format!("{what}: {e}"))
        };
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("tls.crt", e))?;
        let leaf = chain
            .first()
            .ok_or_else(|| CertError::Stored("tls.crt holds no certificate".into()))?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("tls.key", e))?;
        CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .next()
            .ok_or_else(|| CertError::Stored("ca.crt holds no certificate".into()))?
            .map_err(|e| bad("ca.crt", e))?;
        Ok(Self {
            not_after: not_after(leaf)?,
            ca_pem: ca_pem.to_string(),
            chain_pem: chain_pem.to_string(),
            key_pem: key_pem.to_string(),
            chain,
            key,
        })
    }

    /// The DNS names and addresses the leaf is valid for.
    pub fn hosts(&self) -> Result<Vec<String>, CertError> {
        use x509_parser::prelude::*;
        let der = self
            .chain
            .first()
            .ok_or_else(|| CertError::Stored("no leaf".into()))?;
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| CertError::Stored(format!("tls.crt: {e}")))?;
        let mut hosts = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => hosts.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                            16 => <[u8; 16]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                            _ => None,
                        };
                        hosts.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        Ok(hosts)
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

/// When a DER certificate stops being valid.
pub fn not_after(der: &[u8]) -> Result<SystemTime, CertError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertError::Stored(format!("certificate: {e}")))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// A TLS configuration that refuses every handshake: what a replica serves
/// before the shared certificate has reached it.
pub fn no_certificate_yet() -> Result<rustls::ServerConfig, CertError> {
    #[derive(Debug)]
    struct NoCert;
    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(NoCert)))
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

    #[test]
    fn a_stored_certificate_reads_back_as_issued() {
        let now = SystemTime::now();
        let hosts = vec![
            "10.0.0.1".to_string(),
            "fd00::1".to_string(),
            "iotposture.ops.svc".to_string(),
        ];
        let cert = ServingCert::issue(&hosts, now).unwrap();
        let back = ServingCert::from_pem(&cert.ca_pem, &cert.chain_pem, &cert.key_pem).unwrap();
        assert_eq!(back.chain, cert.chain);
        assert_eq!(back.hosts().unwrap(), hosts);
        let drift = |a: SystemTime, b: SystemTime| {
            a.duration_since(b)
                .or_else(|_| b.duration_since(a))
                .unwrap()
        };
        assert!(drift(back.not_after, cert.not_after) < Duration::from_secs(2));
        assert!(back.server_config().is_ok());
        assert!(ServingCert::from_pem("", &cert.chain_pem, &cert.key_pem).is_err());
        assert!(ServingCert::from_pem(&cert.ca_pem, "junk", &cert.key_pem).is_err());
        assert!(ServingCert::from_pem(&cert.ca_pem, &cert.chain_pem, "").is_err());
    }
}
