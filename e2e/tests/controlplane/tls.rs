//! The operator's TLS probe on the real control plane: it dials each TLS port
//! (here real `openssl s_server`s on loopback, reached through --probe-resolve
//! since a local control plane has no cluster DNS), verifies what is presented
//! against the CA cert-manager stored with the Certificate, and shows it in
//! status, verdicts and the expiry metric.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use iotposture::api::{IoTSystem, Verdict};
use iotposture_e2e::{RunningOperator, TestNamespace, wait_until};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, api::PostParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::support::factory;

struct Server(Child, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, tag: &str, issuer: &Issuer<'_, KeyPair>, name: &str, expired: bool) -> Server {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept", &addr.to_string()])
        .arg("-cert")
        .arg(&c)
        .arg("-key")
        .arg(&k)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl on PATH");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probed_endpoints_show_in_status_verdicts_and_metrics() {
    let ns = TestNamespace::new("tls").await;
    let dir = std::env::temp_dir().join(format!("iotposture-e2e-tls-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();

    // The issuer's CA, as cert-manager would keep it beside each certificate.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "factory-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let gateway_name = format!("gateway.{}.svc", ns.name);
    let dashboard_name = format!("dashboard.{}.svc", ns.name);
    let gateway = serve(&dir, "gateway", &issuer, &gateway_name, false);
    let dashboard = serve(&dir, "dashboard", &issuer, &dashboard_name, true);
    for secret in ["probed-gateway-mqtts", "probed-dashboard-https"] {
        let mut s = Secret::default();
        s.metadata.name = Some(secret.into());
        s.data = Some(
            [(
                "ca.crt".to_string(),
                ByteString(ca_pem.clone().into_bytes()),
            )]
            .into(),
        );
        ns.api::<Secret>()
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }

    let resolve: HashMap<String, SocketAddr> = [
        (format!("{gateway_name}:8883"), gateway.1),
        (format!("{dashboard_name}:8443"), dashboard.1),
    ]
    .into();
    let operator = RunningOperator::start_with_probes(&ns, resolve).await;
    let mut system = factory("probed");
    system.spec.tls =
        serde_saphyr::from_str("{issuerRef: {kind: ClusterIssuer, name: factory-ca}}").unwrap();
    let systems: Api<IoTSystem> = ns.api();
    systems
        .create(&PostParams::default(), &system)
        .await
        .unwrap();

    let status = wait_until("both endpoints probed", || async {
        let s = systems.get("probed").await.ok()?.status?;
        (s.endpoints.len() == 2
            && s.items
                .iter()
                .any(|i| i.id == "VI-3" && i.verdict != Verdict::Unknown))
        .then_some(s)
    })
    .await;
    let dash = &status.endpoints[0];
    let gw = &status.endpoints[1];
    assert_eq!(
        (dash.component.as_str(), gw.component.as_str()),
        ("dashboard", "gateway")
    );
    assert_eq!(gw.protocol.as_deref(), Some("TLSv1_3"), "{gw:?}");
    assert!(gw.cipher_suite.as_deref().unwrap().starts_with("TLS13_"));
    assert_eq!(gw.key.as_deref(), Some("ECDSA 256-bit"));
    assert!(gw.problems.is_empty(), "{gw:?}");
    assert!(
        dash.problems
            .iter()
            .any(|p| p.contains("certificate expired on 2021-01-01")),
        "{dash:?}"
    );

    let verdict = |id: &str| status.items.iter().find(|i| i.id == id).unwrap().clone();
    // The method in use is known and strong on both ports...
    assert_eq!(
        verdict("VI-3").verdict,
        Verdict::Pass,
        "{:?}",
        verdict("VI-3")
    );
    assert!(verdict("VI-3").evidence.contains("gateway/mqtts: TLSv1_3"));
    // ...but the dashboard presents an expired certificate.
    for id in ["III-9", "VI-4"] {
        let v = verdict(id);
        assert_eq!(v.verdict, Verdict::Fail, "{id}: {v:?}");
        assert!(v.evidence.contains("expired"), "{id}: {}", v.evidence);
    }

    let metrics = operator.metrics.encode();
    let gateway_series = metrics
        .lines()
        .find(|l| {
            l.starts_with("iotposture_certificate_expiry_timestamp_seconds")
                && l.contains("component=\"gateway\"")
        })
        .unwrap_or_else(|| panic!("no expiry series for the gateway:\n{metrics}"));
    let seconds: i64 = gateway_series.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds > 1_800_000_000, "{gateway_series}");
    assert!(
        metrics.contains("component=\"dashboard\",port=\"https\"} 1609459200"),
        "{metrics}"
    );

    operator.stop().await;
    drop((gateway, dashboard));
    let _ = std::fs::remove_dir_all(&dir);
    ns.delete().await;
}
