//! The TLS probe (checklist items III-9, VI-2, VI-3, VI-4): a handshake with
//! each endpoint, recording what was really negotiated and presented:
//! protocol, cipher suite, chain validity against the issuer's CA, name match,
//! notAfter, key type and size. It sends no application data, so it completes
//! handshakes whose certificates fail verification, to report everything at once.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, stream};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde::Serialize;
use x509_parser::{certificate::X509Certificate, prelude::FromDer, public_key::PublicKey};

/// Smallest acceptable keys.
const MIN_RSA_BITS: usize = 2048;
const MIN_EC_BITS: usize = 256;

#[derive(Clone, Debug)]
pub struct Target {
    /// The name the certificate must carry (and the SNI sent).
    pub name: String,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// CA certificates the chain must lead to (the issuer's CA).
    pub trust: Vec<CertificateDer<'static>>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Endpoints probed at once.
    pub concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            trust: Vec::new(),
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            concurrency: 8,
        }
    }
}

/// What one handshake showed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub endpoint: String,
    /// e.g. `TLSv1_3`.
    pub protocol: Option<String>,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: Option<String>,
    pub chain_valid: Option<bool>,
    /// Why the chain did not verify.
    pub chain_error: Option<String>,
    pub name_matches: Option<bool>,
    /// RFC 3339.
    pub not_after: Option<String>,
    pub expired: Option<bool>,
    /// e.g. `ECDSA P-256`, `RSA 3072`.
    pub key: Option<String>,
    pub key_too_short: Option<bool>,
    /// Why no handshake was possible (plaintext, old protocol, weak suites, silence).
    pub error: Option<String>,
    /// Why the probe could not reach the endpoint at all (no connection, no
    /// address it may dial): nothing about its TLS is known.
    pub unreachable: Option<String>,
}

impl Finding {
    /// A finding for an endpoint the probe could not reach.
    pub fn unreachable(endpoint: String, why: String) -> Self {
        Self {
            endpoint,
            unreachable: Some(why),
            ..Self::default()
        }
    }

    /// Everything wrong with the endpoint, in words; empty when it passes,
    /// and when it could not be reached (then nothing is known).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.unreachable.is_some() {
            return out;
        }
        if let Some(e) = &self.error {
            out.push(format!("{}: {e}", self.endpoint));
            return out;
        }
        if self.chain_valid == Some(false) {
            out.push(format!(
                "{}: certificate chain does not verify against the issuer's CA ({})",
                self.endpoint,
                self.chain_error.as_deref().unwrap_or("unknown reason")
            ));
        }
        if self.name_matches == Some(false) {
            out.push(format!(
                "{}: certificate is not valid for the endpoint's name",
                self.endpoint
            ));
        }
        if self.expired == Some(true) {
            out.push(format!(
                "{}: certificate expired on {}",
                self.endpoint,
                self.not_after.as_deref().unwrap_or("?")
            ));
        }
        if self.key_too_short == Some(true) {
            out.push(format!(
                "{}: key {} is too short",
                self.endpoint,
                self.key.as_deref().unwrap_or("?")
            ));
        }
        out
    }
}

/// The chain a server presented, and whether it verified (or why not).
type Presented = (Vec<CertificateDer<'static>>, Result<(), String>);

/// Keeps the presented chain and the verdict of real verification, and lets
/// the handshake finish either way.
#[derive(Debug)]
struct Recorder {
    inner: Arc<dyn ServerCertVerifier>,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<Presented>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((chain, verdict));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Signatures by keys webpki refuses (e.g. RSA 1024) would end the
        // handshake before the key could be reported; the key check covers them.
        let _ = rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let _ = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Probes every target, `settings.concurrency` at a time; a silent peer only
/// costs its own timeout.
pub async fn probe_all(targets: &[Target], settings: &Settings) -> Vec<Finding> {
    stream::iter(targets.iter().cloned())
        .map(|t| async move { probe(&t, settings).await })
        .buffered(settings.concurrency.max(1))
        .collect()
        .await
}

/// Handshakes tried when the peer resets the connection before saying anything.
const RESET_ATTEMPTS: u32 = 2;
const RESET_RETRY_AFTER: Duration = Duration::from_millis(200);

pub async fn probe(target: &Target, settings: &Settings) -> Finding {
    let mut finding = Finding {
        endpoint: format!("{} ({})", target.name, target.addr),
        ..Finding::default()
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in &settings.trust {
        let _ = roots.add(ca.clone());
    }
    let inner: Arc<dyn ServerCertVerifier> = if roots.is_empty() {
        Arc::new(FixedVerdict::Refuse)
    } else {
        match rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        {
            Ok(v) => v,
            Err(e) => {
                finding.error = Some(format!("the trust anchors are unusable: {e}"));
                return finding;
            }
        }
    };
    let recorder = Arc::new(Recorder {
        inner,
        provider: provider.clone(),
        seen: Mutex::new(None),
    });
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth(),
        Err(e) => {
            finding.error = Some(format!("TLS client setup failed: {e}"));
            return finding;
        }
    };
    let name = match ServerName::try_from(target.name.clone()) {
        Ok(n) => n,
        Err(e) => {
            finding.error = Some(format!("{:?} is not a valid server name: {e}", target.name));
            return finding;
        }
    };

    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut attempt = 1;
    let stream = loop {
        let tcp = match tokio::time::timeout(
            settings.connect_timeout,
            tokio::net::TcpStream::connect(target.addr),
        )
        .await
        {
            // No connection says nothing about the endpoint's TLS.
            Err(_) => {
                finding.unreachable = Some(format!(
                    "no TCP connection within {:?}",
                    settings.connect_timeout
                ));
                return finding;
            }
            Ok(Err(e)) => {
                finding.unreachable = Some(format!("TCP connection failed: {e}"));
                return finding;
            }
            Ok(Ok(tcp)) => tcp,
        };
        match tokio::time::timeout(
            settings.handshake_timeout,
            connector.connect(name.clone(), tcp),
        )
        .await
        {
            Err(_) => {
                finding.error = Some(format!(
                    "no TLS handshake within {:?}: the peer said nothing",
                    settings.handshake_timeout
                ));
                return finding;
            }
            // A reset before the peer said anything is not an answer about
            // its TLS (a server restarting, a full accept queue): asked
            // once more before it is judged.
            Ok(Err(e))
                if attempt < RESET_ATTEMPTS
                    && e.kind() == std::io::ErrorKind::ConnectionReset
                    && recorder.seen.lock().is_ok_and(|s| s.is_none()) =>
            {
                attempt += 1;
                tokio::time::sleep(RESET_RETRY_AFTER).await;
            }
            Ok(Err(e)) => {
                finding.error = Some(format!(
                    "no handshake with TLS 1.2 or 1.3 and a strong cipher suite (plaintext, an old protocol or weak suites): {e}"
                ));
                // A peer that failed the handshake after showing its
                // certificate has still shown it: report what it was.
                describe_seen(&recorder, &target.name, &mut finding);
                return finding;
            }
            Ok(Ok(s)) => break s,
        }
    };
    let (_, session) = stream.get_ref();
    finding.protocol = session.protocol_version().map(|v| format!("{v:?}"));
    finding.cipher_suite = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()));
    describe_seen(&recorder, &target.name, &mut finding);
    finding
}

/// The chain the verifier was shown, if it was shown one, into `finding`.
fn describe_seen(recorder: &Recorder, name: &str, finding: &mut Finding) {
    let seen = recorder
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some((chain, verdict)) = seen {
        finding.chain_valid = Some(verdict.is_ok());
        finding.chain_error = verdict.err();
        if let Some(ee) = chain.first() {
            describe_certificate(ee, name, finding);
        }
    }
}

fn describe_certificate(der: &CertificateDer<'_>, name: &str, finding: &mut Finding) {
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        finding.chain_valid = Some(false);
        finding.chain_error = Some("the certificate does not parse".into());
        return;
    };
    let validity = cert.validity();
    finding.not_after = validity
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    finding.expired = Some(!validity.is_valid());
    let (key, short) = match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            (format!("RSA {bits}"), bits < MIN_RSA_BITS)
        }
        Ok(PublicKey::EC(ec)) => {
            let bits = ec.key_size();
            (format!("ECDSA {bits}-bit"), bits < MIN_EC_BITS)
        }
        Ok(other) => (format!("{other:?}").chars().take(40).collect(), false),
        Err(e) => (format!("unparsable key: {e}"), true),
    };
    finding.key = Some(key);
    finding.key_too_short = Some(short);
    finding.name_matches = Some(names_of(&cert).iter().any(|n| matches_name(n, name)));
}

fn names_of(cert: &X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => out.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => out.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                    16 => {
                        let b: [u8; 16] = (*ip).try_into().unwrap_or([0; 16]);
                        out.push(std::net::Ipv6Addr::from(b).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    out
}

/// Exact or single-label wildcard match, case-insensitive.
fn matches_name(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    if let Some(rest) = p.strip_prefix("*.") {
        return n.split_once('.').is_some_and(|(_, tail)| tail == rest);
    }
    p == n
}

/// A verifier whose answer on the chain is fixed: with no trust anchors no
/// chain verifies (`Refuse`); the HTTP probe, which judges HTTP behaviour and
/// leaves certificates to the TLS probe, accepts any (`Accept`).
#[derive(Debug)]
pub(crate) enum FixedVerdict {
    Refuse,
    Accept,
}

impl ServerCertVerifier for FixedVerdict {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self {
            FixedVerdict::Accept => Ok(ServerCertVerified::assertion()),
            FixedVerdict::Refuse => Err(rustls::Error::General(
                "no CA of the issuer is known to verify against".into(),
            )),
        }
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(matches_name("*.plant.svc", "gateway.plant.svc"));
        assert!(!matches_name("*.plant.svc", "a.gateway.plant.svc"));
        assert!(matches_name("Gateway.Plant.svc", "gateway.plant.svc"));
        assert!(!matches_name("gateway", "dashboard"));
    }

    #[test]
    fn problems_say_what_is_wrong() {
        let f = Finding {
            endpoint: "gw (127.0.0.1:1)".into(),
            chain_valid: Some(false),
            chain_error: Some("UnknownIssuer".into()),
            name_matches: Some(false),
            expired: Some(true),
            not_after: Some("2020-01-01T00:00:00Z".into()),
            key: Some("RSA 1024".into()),
            key_too_short: Some(true),
            ..Finding::default()
        };
        let p = f.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(
            p[0].contains("UnknownIssuer")
                && p[2].contains("2020-01-01")
                && p[3].contains("RSA 1024")
        );
    }
}
