//! A real VictoriaLogs (built by `e2e/logs/build.sh`) for tests that ship
//! logs: HTTPS only (TLS 1.3, a certificate from a throwaway CA), HTTP basic
//! auth, on one address and a free port, its data in a folder of its own.
//! Stopped, and the folder removed, when dropped.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::Value;

/// How long the store keeps entries; it also refuses older ones at ingest,
/// so test log lines carry recent timestamps.
pub const RETENTION: &str = "7d";

/// The OTLP/HTTP logs path (protobuf only).
pub const OTLP_LOGS_PATH: &str = "/insert/opentelemetry/v1/logs";

/// VictoriaLogs from `IOTPOSTURE_VICTORIA_LOGS`, else
/// `<workspace>/target/logs/bin/victoria-logs`.
pub fn victoria_logs_bin() -> PathBuf {
    std::env::var_os("IOTPOSTURE_VICTORIA_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/logs/bin/victoria-logs")
        })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct LogStore {
    pub addr: SocketAddr,
    /// The CA that signed the store's certificate, PEM; also in `ca_file`.
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub username: String,
    pub password: String,
    /// Certificates, password file, data and the store's own log.
    pub dir: PathBuf,
    child: Child,
    tls: tokio_rustls::TlsConnector,
}

impl LogStore {
    /// Starts VictoriaLogs on `ip` with a certificate for `ip` and `names`
    /// (DNS names), and returns once it answers an authenticated request.
    pub async fn start(bin: &Path, ip: IpAddr, names: &[String]) -> LogStore {
        assert!(
            bin.is_file(),
            "{} is missing: build it with `bash e2e/logs/build.sh` (make test does), \
             or point IOTPOSTURE_VICTORIA_LOGS at it",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "iotposture-logstore-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_pem, ca_der) = write_pki(&dir, ip, names);
        let username = "iotposture-test".to_string();
        let password = random_hex(16);
        // From a file, so the password is not in the process list.
        write_private(&dir.join("password"), &password);

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        // 1.3 only: a store that spoke less would fail here.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));

        // The port is free when asked; another process may take it before
        // the store binds, so a failed bind tries another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind((ip, 0))
                .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
                .local_addr()
                .unwrap()
                .port();
            let addr = SocketAddr::new(ip, port);
            let log = std::fs::File::create(dir.join("victoria-logs.log")).unwrap();
            let child = Command::new(bin)
                .arg(format!("-httpListenAddr={addr}"))
                .arg(format!("-storageDataPath={}", dir.join("data").display()))
                .arg(format!("-retentionPeriod={RETENTION}"))
                .arg("-tls")
                .arg(format!("-tlsCertFile={}", dir.join("server.crt").display()))
                .arg(format!("-tlsKeyFile={}", dir.join("server.key").display()))
                .arg("-tlsMinVersion=TLS13")
                .arg(format!("-httpAuth.username={username}"))
                .arg(format!(
                    "-httpAuth.password=file://{}",
                    dir.join("password").display()
                ))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            // Dropped (process killed, folder removed) on any panic below.
            let mut store = LogStore {
                addr,
                ca_pem: ca_pem.clone(),
                ca_file: dir.join("ca.crt"),
                username: username.clone(),
                password: password.clone(),
                dir: dir.clone(),
                child,
                tls: tls.clone(),
            };
            if store.wait_ready().await {
                return store;
            }
            let log = store.log();
            assert!(
                log.contains("address already in use"),
                "VictoriaLogs did not start:\n{log}"
            );
            // Only the process goes; the next try uses the same folder.
            let _ = store.child.kill();
            let _ = store.child.wait();
            store.dir = PathBuf::new();
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("VictoriaLogs found no free port on {ip} in 5 tries");
    }

    /// True once the store answers with our credentials; false if it exited.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let flushed = self
                .send(
                    Some(self.basic_credentials()),
                    "GET",
                    "/internal/force_flush",
                    None,
                )
                .await;
            if let Ok((200, _)) = flushed {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "VictoriaLogs did not answer within 30s ({flushed:?}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL a collector ships OTLP logs to (by IP address).
    pub fn otlp_logs_url(&self) -> String {
        format!("https://{}{OTLP_LOGS_PATH}", self.addr)
    }

    /// base64 of `username:password`: what `Authorization: Basic` carries.
    pub fn basic_credentials(&self) -> String {
        base64(format!("{}:{}", self.username, self.password).as_bytes())
    }

    /// Runs a LogsQL query (POST /select/logsql/query) and returns its
    /// entries, one JSON object per line of the answer.
    pub async fn query(&self, logsql: &str) -> Vec<Value> {
        let body = format!("query={}", iotposture::probe::http::form_encode(logsql));
        let (code, text) = self
            .call(
                "POST",
                "/select/logsql/query",
                Some(("application/x-www-form-urlencoded", body)),
            )
            .await;
        assert_eq!(code, 200, "LogsQL {logsql}: {text}");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Makes what was ingested so far searchable (/internal/force_flush).
    pub async fn flush(&self) {
        let (code, text) = self.call("GET", "/internal/force_flush", None).await;
        assert_eq!(code, 200, "force_flush: {text}");
    }

    /// Flushes and queries until `logsql` finds something (60s at most).
    pub async fn wait_for(&self, logsql: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.flush().await;
            let found = self.query(logsql).await;
            if !found.is_empty() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "nothing matched {logsql} within 60s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One request with the store's credentials: (status, body).
    pub async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<(&str, String)>,
    ) -> (u16, String) {
        self.call_as(Some(self.basic_credentials()), method, path_and_query, body)
            .await
    }

    /// One request with the given base64 `user:password`, or none.
    pub async fn call_as(
        &self,
        credentials: Option<String>,
        method: &str,
        path_and_query: &str,
        body: Option<(&str, String)>,
    ) -> (u16, String) {
        let (code, bytes) = self
            .send(credentials, method, path_and_query, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path_and_query} to {}: {e}", self.addr));
        (code, String::from_utf8_lossy(&bytes).to_string())
    }

    /// One request on a fresh connection, TLS verified against our CA for
    /// the store's IP address.
    async fn send(
        &self,
        credentials: Option<String>,
        method: &str,
        path_and_query: &str,
        body: Option<(&str, String)>,
    ) -> Result<(u16, Bytes), String> {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP: {e}"))?;
            tokio::spawn(conn);
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(path_and_query)
                .header(hyper::header::HOST, self.addr.to_string());
            if let Some(credentials) = credentials {
                request =
                    request.header(hyper::header::AUTHORIZATION, format!("Basic {credentials}"));
            }
            let payload = match body {
                Some((content_type, body)) => {
                    request = request.header(hyper::header::CONTENT_TYPE, content_type);
                    Bytes::from(body)
                }
                None => Bytes::new(),
            };
            let request = request
                .body(Full::new(payload))
                .map_err(|e| format!("request: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let code = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok((code, bytes))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no answer within 10s".to_string())?
    }

    /// What the store logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("victoria-logs.log")).unwrap_or_default()
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A CA and the store's certificate (for `ip` and `names`) in `dir`:
/// ca.crt, server.crt, server.key. Returns the CA as PEM and DER.
fn write_pki(
    dir: &Path,
    ip: IpAddr,
    names: &[String],
) -> (String, rustls::pki_types::CertificateDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name = common_name("iotposture-logstore-test-ca");
    // Signs the one server certificate, nothing below it.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(names.to_vec()).expect("DNS names");
    server.subject_alt_names.push(SanType::IpAddress(ip));
    server.distinguished_name = common_name("victoria-logs");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), server_cert.pem()).unwrap();
    write_private(&dir.join("server.key"), &server_key.serialize_pem());
    (ca_cert.pem(), ca_cert.der().clone())
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Written readable by the owner only.
fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64, as HTTP basic credentials carry it.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}
