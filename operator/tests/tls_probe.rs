//! The TLS probe against real TLS servers on loopback (Debian's `openssl
//! s_server`), one per case the checklist cares about.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use iotposture::probe::tls::{Finding, Settings, Target, probe, probe_all};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;

const NAME: &str = "gateway.plant.svc";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes a leaf for `names` signed by `ca` (optionally already expired); returns (cert, key) paths.
fn leaf(dir: &Path, tag: &str, ca: &Ca, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// A folder of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    let d = std::env::temp_dir().join(format!(
        "iotposture-tls-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `openssl s_server` with extra flags, stopped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s_server(cert: &Path, key: &Path, extra: &[&str]) -> Server {
    // A port found free may be taken before openssl binds it (the plane's
    // own connections draw from the same range during make test): openssl
    // then exits, and whatever holds the port would answer instead.
    for _ in 0..5 {
        if let Some(server) = try_s_server(cert, key, extra) {
            return server;
        }
    }
    panic!("openssl s_server did not start on any of 5 ports");
}

fn try_s_server(cert: &Path, key: &Path, extra: &[&str]) -> Option<Server> {
    let addr = free_addr();
    let mut child = Command::new("openssl")
        .arg("s_server")
        .arg("-accept")
        .arg(addr.to_string())
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .args(["-www", "-quiet"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl on PATH (make test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut server = Server { child, addr };
    match server.child.try_wait() {
        Ok(None) => Some(server),
        _ => None,
    }
}

fn settings(trust: &Ca) -> Settings {
    Settings {
        trust: vec![trust.der.clone()],
        handshake_timeout: Duration::from_secs(2),
        ..Settings::default()
    }
}

async fn check(server: &Server, name: &str, trust: &Ca) -> Finding {
    probe(
        &Target {
            name: name.into(),
            addr: server.addr,
        },
        // One openssl s_server answers one handshake at a time, slowly on a
        // loaded machine: a timeout here would hide the finding under test.
        &Settings {
            handshake_timeout: Duration::from_secs(15),
            ..settings(trust)
        },
    )
    .await
}

#[tokio::test]
async fn modern_endpoints_pass_with_what_was_negotiated() {
    let dir = temp_dir();
    let ca = new_ca("plant CA");
    let (c, k) = leaf(&dir, "good", &ca, &[NAME], false);

    let tls13 = s_server(&c, &k, &[]);
    let f = check(&tls13, NAME, &ca).await;
    assert!(f.problems().is_empty(), "{f:?}");
    assert_eq!(f.protocol.as_deref(), Some("TLSv1_3"));
    assert!(
        f.cipher_suite.as_deref().unwrap().starts_with("TLS13_"),
        "{f:?}"
    );
    assert_eq!(
        (f.chain_valid, f.name_matches, f.expired),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(f.key.as_deref(), Some("ECDSA 256-bit"));

    let tls12 = s_server(&c, &k, &["-tls1_2"]);
    let f = check(&tls12, NAME, &ca).await;
    assert!(f.problems().is_empty(), "{f:?}");
    assert_eq!(f.protocol.as_deref(), Some("TLSv1_2"));
    assert!(
        f.cipher_suite
            .as_deref()
            .unwrap()
            .starts_with("TLS_ECDHE_ECDSA_WITH_"),
        "{f:?}"
    );
}

#[tokio::test]
async fn old_protocols_and_weak_suites_fail() {
    let dir = temp_dir();
    let ca = new_ca("plant CA");
    let (c, k) = leaf(&dir, "old", &ca, &[NAME], false);
    for flags in [
        &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"][..],
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"][..],
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"][..],
    ] {
        let server = s_server(&c, &k, flags);
        let f = check(&server, NAME, &ca).await;
        let p = f.problems();
        assert_eq!(p.len(), 1, "{flags:?}: {f:?}");
        assert!(
            p[0].contains("no handshake with TLS 1.2 or 1.3 and a strong cipher suite"),
            "{flags:?}: {p:?}"
        );
    }
}

#[tokio::test]
async fn a_certificate_shown_before_the_handshake_failed_is_still_judged() {
    let dir = temp_dir();
    let ca = new_ca("plant CA");
    let (c, k) = leaf(&dir, "expired", &ca, &[NAME], true);
    // TLS 1.2 with a client certificate demanded: the server refuses the
    // probe after it has shown its own certificate.
    let server = s_server(&c, &k, &["-tls1_2", "-Verify", "1"]);
    let f = check(&server, NAME, &ca).await;
    assert!(f.error.is_some(), "{f:?}");
    assert_eq!(f.expired, Some(true), "{f:?}");
    assert_eq!(f.chain_valid, Some(false), "{f:?}");
}

#[tokio::test]
async fn bad_certificates_fail_for_their_reason() {
    let dir = temp_dir();
    let ca = new_ca("plant CA");
    let stranger = new_ca("someone else");

    let (c, k) = leaf(&dir, "expired", &ca, &[NAME], true);
    let server = s_server(&c, &k, &[]);
    let f = check(&server, NAME, &ca).await;
    assert_eq!(f.expired, Some(true), "{f:?}");
    assert!(
        f.chain_error
            .as_deref()
            .unwrap()
            .contains("certificate expired"),
        "{f:?}"
    );
    assert!(
        f.problems()
            .iter()
            .any(|p| p.contains("expired on 2021-01-01")),
        "{f:?}"
    );

    let (c, k) = leaf(&dir, "wrong-name", &ca, &["dashboard.plant.svc"], false);
    let server = s_server(&c, &k, &[]);
    let f = check(&server, NAME, &ca).await;
    assert_eq!(f.name_matches, Some(false), "{f:?}");
    assert!(
        f.problems()
            .iter()
            .any(|p| p.contains("not valid for the endpoint's name")),
        "{f:?}"
    );

    let (c, k) = leaf(&dir, "untrusted", &stranger, &[NAME], false);
    let server = s_server(&c, &k, &[]);
    let f = check(&server, NAME, &ca).await;
    assert_eq!(f.chain_valid, Some(false), "{f:?}");
    assert!(
        f.chain_error.as_deref().unwrap().contains("UnknownIssuer"),
        "{f:?}"
    );
    assert_eq!(f.name_matches, Some(true), "only the chain is wrong");

    // RSA 1024, made by openssl (the Rust stack here cannot make RSA keys).
    let (c, k) = (dir.join("short.crt"), dir.join("short.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=short",
        ])
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{NAME}"))
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl made the short key");
    let server = s_server(&c, &k, &["-tls1_2", "-cipher", "DEFAULT@SECLEVEL=0"]);
    let f = check(&server, NAME, &ca).await;
    assert_eq!(f.key.as_deref(), Some("RSA 1024"), "{f:?}");
    assert!(
        f.problems()
            .iter()
            .any(|p| p.contains("key RSA 1024 is too short")),
        "{f:?}"
    );
}

#[tokio::test]
async fn plaintext_and_silent_peers_fail_without_holding_up_others() {
    let dir = temp_dir();
    let ca = new_ca("plant CA");
    let (c, k) = leaf(&dir, "good", &ca, &[NAME], false);
    let good = s_server(&c, &k, &[]);

    // Plaintext HTTP on the port.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = plain.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    // Accepts and says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });

    let targets = [
        Target {
            name: NAME.into(),
            addr: silent_addr,
        },
        Target {
            name: NAME.into(),
            addr: plain_addr,
        },
        Target {
            name: NAME.into(),
            addr: good.addr,
        },
    ];
    let start = Instant::now();
    let findings = probe_all(&targets, &settings(&ca)).await;
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "probes ran one after the other: {:?}",
        start.elapsed()
    );
    assert!(
        findings[0]
            .error
            .as_deref()
            .unwrap()
            .contains("the peer said nothing"),
        "{:?}",
        findings[0]
    );
    assert!(
        findings[1]
            .error
            .as_deref()
            .unwrap()
            .contains("no handshake"),
        "{:?}",
        findings[1]
    );
    assert!(findings[2].problems().is_empty(), "{:?}", findings[2]);
}

/// Protocols and suites a third-party scanner (sslyze, from PyPI) sees accepted.
fn sslyze(addr: SocketAddr, dir: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let out = dir.join(format!("sslyze-{}.json", addr.port()));
    let status = Command::new("python3")
        .args(["-m", "sslyze"])
        .arg(format!("--json_out={}", out.display()))
        .args(["--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3"])
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("python3 with sslyze (make test installs it with pip)");
    assert!(status.success(), "sslyze failed on {addr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let result = &report["server_scan_results"][0]["scan_result"];
    [
        ("TLSv1_0", "tls_1_0"),
        ("TLSv1_1", "tls_1_1"),
        ("TLSv1_2", "tls_1_2"),
        ("TLSv1_3", "tls_1_3"),
    ]
    .iter()
    .map(|(ours, theirs)| {
        let suites = result[format!("{theirs}_cipher_suites")]["result"]["accepted_cipher_suites"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["cipher_suite"]["name"].as_str().map(String::from))
            .collect();
        (ours.to_string(), suites)
    })
    .collect()
}

#[tokio::test]
async fn sslyze_agrees_with_our_reading() {
    let dir = temp_dir();
    let ca = new_ca("plant CA");
    let (c, k) = leaf(&dir, "cross", &ca, &[NAME], false);
    for flags in [
        &[][..],
        &["-tls1_2"][..],
        &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"][..],
    ] {
        let server = s_server(&c, &k, flags);
        let ours = check(&server, NAME, &ca).await;
        let theirs = sslyze(server.addr, &dir);
        let modern: Vec<&str> = ["TLSv1_3", "TLSv1_2"]
            .into_iter()
            .filter(|p| !theirs[*p].is_empty())
            .collect();
        match modern.first() {
            // We negotiate the newest protocol the scanner finds, with a suite it finds accepted.
            Some(best) => {
                assert_eq!(
                    ours.protocol.as_deref(),
                    Some(*best),
                    "{flags:?}: {ours:?} vs {theirs:?}"
                );
                let suite = ours.cipher_suite.clone().unwrap().replace("TLS13_", "TLS_");
                assert!(
                    theirs[*best].contains(&suite),
                    "{flags:?}: {suite} not in {:?}",
                    theirs[*best]
                );
            }
            // The scanner finds no TLS 1.2+, and we fail the endpoint.
            None => {
                assert!(!theirs["TLSv1_0"].is_empty(), "{flags:?}: {theirs:?}");
                assert!(ours.error.is_some(), "{flags:?}: {ours:?}");
            }
        }
    }
}

/// A front on loopback that resets its first `resets` connections (a zero
/// linger close sends RST) and passes later ones on to `to`; counts them all.
async fn resetting_front(
    to: SocketAddr,
    resets: usize,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) < resets {
                conn.set_zero_linger().unwrap();
                drop(conn);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut server).await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_reset_before_the_peer_says_anything_is_asked_once_more() {
    use std::sync::atomic::Ordering;
    let dir = temp_dir();
    let ca = new_ca("plant CA");
    let (c, k) = leaf(&dir, "good", &ca, &[NAME], false);
    let server = s_server(&c, &k, &[]);
    let settings = Settings {
        handshake_timeout: Duration::from_secs(15),
        ..settings(&ca)
    };
    let target = |addr| Target {
        name: NAME.into(),
        addr,
    };

    // Once: the second handshake is judged.
    let (front, connections) = resetting_front(server.addr, 1).await;
    let f = probe(&target(front), &settings).await;
    assert!(f.problems().is_empty(), "{f:?}");
    assert_eq!(f.protocol.as_deref(), Some("TLSv1_3"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    // Always: judged on the second reset, not retried for ever.
    let (front, connections) = resetting_front(server.addr, usize::MAX).await;
    let f = probe(&target(front), &settings).await;
    let error = f.error.as_deref().unwrap_or_default();
    assert!(error.contains("no handshake with TLS 1.2 or 1.3"), "{f:?}");
    assert!(error.contains("reset"), "{f:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}
