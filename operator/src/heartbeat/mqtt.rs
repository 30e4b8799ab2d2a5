//! Listening to a broker: one MQTT subscription per sensor component, over
//! TLS verified against the broker port's CA, for the name of its Service.
//!
//! The operator dials the address the API shows (the Service's ClusterIP),
//! never a name it resolves, so the certificate is checked against the
//! Service's DNS name rather than against the address dialled.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tracing::{debug, info};

use super::{Key, Ledger, Listening, device_of};

/// Everything one subscription needs; a change of any of it restarts it.
#[derive(Clone, PartialEq)]
pub struct Subscription {
    pub addr: SocketAddr,
    /// The name the broker's certificate must carry, e.g. `mqtt-gateway.ns.svc`.
    pub server_name: String,
    pub ca: Vec<CertificateDer<'static>>,
    pub topic: String,
    pub credentials: Option<(String, String)>,
    pub client_id: String,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Subscription")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub fn source(&self) -> String {
        format!(
            "topic {} on {} ({})",
            self.topic, self.server_name, self.addr
        )
    }
}

/// Checks the chain against the CA and the leaf against `name`, whatever
/// address was dialled.
#[derive(Debug)]
struct ServiceNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ServiceNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS client configuration that trusts only `ca`, for `server_name`.
pub fn tls_config(
    ca: &[CertificateDer<'static>],
    server_name: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone()).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the broker against".into());
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("{server_name:?}: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServiceNameVerifier { inner, name }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Keeps one subscription alive until the task is aborted: every message on
/// a matching topic is a heartbeat of the device its `+` level names.
pub async fn listen(key: Key, sub: Subscription, ledger: Arc<Ledger>) {
    ledger.open(&key, sub.source());
    let config = match tls_config(&sub.ca, &sub.server_name) {
        Ok(c) => c,
        Err(why) => {
            ledger.set_listening(&key, Listening::Not(why));
            return;
        }
    };
    let mut options = MqttOptions::new(
        sub.client_id.clone(),
        sub.addr.ip().to_string(),
        sub.addr.port(),
    );
    options
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)))
        .set_keep_alive(std::time::Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(64 * 1024, 4 * 1024);
    if let Some((user, password)) = &sub.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    let (client, mut events) = AsyncClient::new(options, 16);
    let mut retry = std::time::Duration::from_secs(1);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A clean session forgets subscriptions: ask again each time.
                if let Err(e) = client.try_subscribe(sub.topic.clone(), QoS::AtMostOnce) {
                    ledger.set_listening(&key, Listening::Not(e.to_string()));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                let listening = if granted {
                    info!(subscription = ?sub, "listening for sensor heartbeats");
                    retry = std::time::Duration::from_secs(1);
                    Listening::Since(SystemTime::now())
                } else {
                    Listening::Not(format!(
                        "the broker refused the subscription to {}",
                        sub.topic
                    ))
                };
                ledger.set_listening(&key, listening);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(device) = device_of(&sub.topic, &p.topic) {
                    ledger.heard(&key, device, SystemTime::now());
                }
            }
            Ok(_) => {}
            Err(e) => {
                debug!(subscription = ?sub, error = %e, "broker connection failed; retrying");
                ledger.set_listening(&key, Listening::Not(describe(&e)));
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

/// The error with its causes: "TLS: invalid peer certificate: …" says what
/// to fix where a bare "TLS error" does not.
fn describe(e: &rumqttc::ConnectionError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
