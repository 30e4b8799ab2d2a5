//! The WAF gateway end to end: the operator writes the gateway's ConfigMap,
//! a real nginx + ModSecurity + CRS runs exactly that configuration on
//! loopback (paths mapped from the image's to Debian's), and the operator's
//! HTTP probe turns what it sees into verdicts: a protected endpoint passes,
//! the same application without the gateway fails. The test account's
//! password reaches only an endpoint whose TLS certificate verified against
//! the port's CA, and only from a Secret labelled for the probe.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use iotposture::api::{IoTSystem, IoTSystemStatus, Verdict};
use iotposture_e2e::{
    RunningOperator, TestNamespace,
    waf::{Nginx, free_port},
    wait_until,
};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{Api, api::PostParams};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const LOGIN_FAILURE: &[u8] =
    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno";

/// A small web application: plain session cookies, 401 for a wrong password,
/// and at a right one a new session (`renews`) or the same one. Returns its
/// port and whether the test account's password ever reached it.
fn application(renews: bool) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let saw_password = Arc::new(AtomicBool::new(false));
    let saw = saw_password.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            let saw = saw.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
                let mut buf = [0u8; 65536];
                let len = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..len]).to_string();
                let response = if request.contains("password=wrong") {
                    LOGIN_FAILURE.to_vec()
                } else if request.contains("password=s3cret-test") {
                    saw.store(true, Ordering::SeqCst);
                    let sid = if renews {
                        format!("fresh{n}")
                    } else {
                        "anonymous".into()
                    };
                    format!("HTTP/1.1 302 Found\r\nLocation: /\r\nSet-Cookie: sid={sid}; Path=/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
                } else {
                    b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=anonymous; Path=/\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
                };
                let _ = stream.write_all(&response);
            });
        }
    });
    (port, saw_password)
}

/// A CA, as cert-manager keeps it beside each certificate (`ca.crt`).
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

/// Writes the port's certificate for `name` where the gateway reads it.
fn write_certificate(dir: &Path, port: &str, issuer: &Issuer<'_, KeyPair>, name: &str) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    let tls = dir.join("tls").join(port);
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(tls.join("tls.key"), key.serialize_pem()).unwrap();
}

async fn create_secret(
    ns: &TestNamespace,
    name: &str,
    data: &[(&str, &str)],
    labels: &[(&str, &str)],
) {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    secret.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// Runs the ConfigMap's configuration on Debian's nginx: only the paths of
/// the image are mapped to the packages' and to a folder of this test.
fn run_gateway(config: &ConfigMap, dir: &Path, port: u16) -> Nginx {
    let d = dir.to_str().unwrap();
    let map = |text: &str| {
        text.replace("/etc/nginx/modules/", "/usr/lib/nginx/modules/")
            .replace(
                "/opt/owasp-crs/crs-setup.conf",
                "/etc/modsecurity/crs/crs-setup.conf",
            )
            .replace("/opt/owasp-crs/rules", "/usr/share/modsecurity-crs/rules")
            .replace("/etc/iotposture-tls/", &format!("{d}/tls/"))
            .replace("/etc/iotposture/", &format!("{d}/"))
            .replace("/tmp/iotposture", d)
    };
    let data = config.data.as_ref().unwrap();
    Nginx::start(
        dir,
        &map(&data["nginx.conf"]),
        &dir.join("modsecurity.conf"),
        &map(&data["modsecurity.conf"]),
        port,
    )
}

/// A web system; `tls` names its port `https` (TLS), else `http`.
fn web_system(name: &str, port: u16, backend: u16, tls: bool, account: &str) -> IoTSystem {
    let port_name = if tls { "https" } else { "http" };
    serde_saphyr::from_str(&format!(
        r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {{name: {name}}}
spec:
  components:
    - name: portal
      role: EUtility
      service: {name}
      selector: {{matchLabels: {{app: {name}}}}}
      ports: [{{name: {port_name}, port: {port}, backendPort: {backend}, tls: {tls}}}]
      http:
        loginPath: /login
        lockout: {{maxFailures: 3, window: 5m, duration: 10m}}
        probeCredentialsSecret: {account}
  flows:
    - {{from: {{ingress: true}}, to: portal, port: {port_name}}}
"#
    ))
    .unwrap()
}

async fn verdicts_settle(systems: &Api<IoTSystem>, name: &str, items: &[&str]) -> IoTSystemStatus {
    wait_until(&format!("{name}'s probe verdicts"), || async {
        let status = systems.get(name).await.ok()?.status?;
        items
            .iter()
            .all(|id| {
                status
                    .items
                    .iter()
                    .any(|i| &i.id == id && i.verdict != Verdict::Unknown)
            })
            .then_some(status)
    })
    .await
}

fn item<'a>(status: &'a IoTSystemStatus, id: &str) -> (&'a Verdict, &'a str) {
    let i = status.items.iter().find(|i| i.id == id).unwrap();
    (&i.verdict, i.evidence.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_proves_the_gateway_and_exposes_its_absence() {
    let ns = TestNamespace::new("gateway").await;
    let account = [("username", "probe-user"), ("password", "s3cret-test")];
    let for_probe = [("iotposture.dev/probe-credentials", "true")];
    create_secret(&ns, "test-account", &account, &for_probe).await;
    create_secret(&ns, "unlabelled-account", &account, &[]).await;
    // The CA cert-manager would have kept beside the certificates, and one
    // that signed nothing here.
    let (ca_pem, issuer) = certificate_authority("factory-ca");
    let (_, other_issuer) = certificate_authority("some-other-ca");
    create_secret(&ns, "guarded-portal-https", &[("ca.crt", &ca_pem)], &[]).await;
    create_secret(&ns, "impostor-portal-https", &[("ca.crt", &ca_pem)], &[]).await;

    // "guarded": the application behind the generated gateway, over TLS.
    let guarded_port = free_port();
    let (guarded_backend, guarded_saw) = application(true);
    // "impostor": the same, but its certificate is not from the port's CA.
    let impostor_port = free_port();
    let (impostor_backend, impostor_saw) = application(true);
    // "bare": an application that sets plain cookies, keeps the session at
    // login and has no gateway in front; plaintext, its port its own.
    let (bare_port, bare_saw) = application(false);
    // "unlabelled": a plaintext application whose test account Secret is
    // not labelled for the probe.
    let (unlabelled_port, unlabelled_saw) = application(true);
    let resolve: HashMap<String, SocketAddr> = [
        ("guarded", guarded_port),
        ("impostor", impostor_port),
        ("bare", bare_port),
        ("unlabelled", unlabelled_port),
    ]
    .into_iter()
    .map(|(name, port)| {
        (
            format!("{name}.{}.svc:{port}", ns.name),
            format!("127.0.0.1:{port}").parse().unwrap(),
        )
    })
    .collect();
    let operator = RunningOperator::start_with_probes(&ns, resolve).await;
    let systems: Api<IoTSystem> = ns.api();
    for system in [
        web_system(
            "guarded",
            guarded_port,
            guarded_backend,
            true,
            "test-account",
        ),
        web_system(
            "impostor",
            impostor_port,
            impostor_backend,
            true,
            "test-account",
        ),
        web_system("bare", bare_port, free_port(), false, "test-account"),
        web_system(
            "unlabelled",
            unlabelled_port,
            free_port(),
            false,
            "unlabelled-account",
        ),
    ] {
        systems
            .create(&PostParams::default(), &system)
            .await
            .unwrap();
    }

    let configs: Api<ConfigMap> = ns.api();
    let mut gateways = Vec::new();
    for (name, port, ca) in [
        ("guarded", guarded_port, &issuer),
        ("impostor", impostor_port, &other_issuer),
    ] {
        let config = wait_until("the gateway ConfigMap", || async {
            configs
                .get_opt(&format!("{name}-portal-gateway"))
                .await
                .ok()?
        })
        .await;
        let owner = &config.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("IoTSystem", name)
        );
        // Not under /tmp/iotposture: that prefix is one of the mapped paths.
        let dir = std::env::temp_dir().join(format!("e2e-waf-{}-{name}", ns.name));
        write_certificate(&dir, "https", ca, &format!("{name}.{}.svc", ns.name));
        gateways.push((config, dir, port));
    }
    // The first probe rounds find the ports closed: the probe must ask again
    // rather than keep that.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _gateways: Vec<Nginx> = gateways
        .iter()
        .map(|(config, dir, port)| run_gateway(config, dir, *port))
        .collect();

    let probed = ["I-1", "II-1", "III-2", "III-3", "III-4", "III-8"];
    let guarded = verdicts_settle(&systems, "guarded", &probed).await;
    for id in probed {
        let (verdict, evidence) = item(&guarded, id);
        assert_eq!(*verdict, Verdict::Pass, "guarded {id}: {evidence}");
    }
    assert!(
        item(&guarded, "I-1")
            .1
            .contains("locked out after 3 failed logins")
    );
    assert!(item(&guarded, "III-8").1.contains("cross-site POST"));
    assert!(
        guarded_saw.load(Ordering::SeqCst),
        "the verified endpoint got the login"
    );

    let without_fixation = ["I-1", "II-1", "III-2", "III-3", "III-8"];
    let bare = verdicts_settle(&systems, "bare", &without_fixation).await;
    for id in without_fixation {
        let (verdict, evidence) = item(&bare, id);
        assert_eq!(*verdict, Verdict::Fail, "bare {id}: {evidence}");
    }
    assert!(
        item(&bare, "III-2")
            .1
            .contains("sid lacks Secure, HttpOnly, SameSite"),
        "{}",
        item(&bare, "III-2").1
    );
    assert!(item(&bare, "I-1").1.contains("no lockout"));
    let (verdict, evidence) = item(&bare, "III-4");
    assert_eq!(*verdict, Verdict::Unknown, "{evidence}");
    assert!(evidence.contains("is not TLS"), "{evidence}");

    let impostor = verdicts_settle(&systems, "impostor", &["I-1", "II-1"]).await;
    let (verdict, evidence) = item(&impostor, "III-4");
    assert_eq!(*verdict, Verdict::Unknown, "{evidence}");
    assert!(evidence.contains("TLS handshake failed"), "{evidence}");

    let unlabelled = verdicts_settle(&systems, "unlabelled", &["I-1"]).await;
    let (verdict, evidence) = item(&unlabelled, "III-4");
    assert_eq!(*verdict, Verdict::Unknown, "{evidence}");
    assert!(
        evidence.contains("lacks the label iotposture.dev/probe-credentials=true"),
        "{evidence}"
    );
    for (name, saw) in [
        ("bare (plaintext)", &bare_saw),
        ("impostor (unverified TLS)", &impostor_saw),
        ("unlabelled", &unlabelled_saw),
    ] {
        assert!(!saw.load(Ordering::SeqCst), "the password reached {name}");
    }

    // Later rounds skip the login checks (the probe account is locked out
    // for 10 minutes) but keep their verdicts: nothing flips.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, expected, items) in [
        ("guarded", Verdict::Pass, &probed[..]),
        ("bare", Verdict::Fail, &without_fixation[..]),
    ] {
        let status = systems.get(name).await.unwrap().status.unwrap();
        for id in items {
            let (verdict, evidence) = item(&status, id);
            assert_eq!(*verdict, expected, "{name} {id} later: {evidence}");
        }
    }

    operator.stop().await;
    ns.delete().await;
}
