//! The WAF gateway end to end: the operator writes the gateway's ConfigMap,
//! a real nginx + ModSecurity + CRS runs exactly that configuration on
//! loopback (paths mapped from the image's to Debian's), and the operator's
//! HTTP probe turns what it sees into verdicts: a protected endpoint passes,
//! the same application without the gateway fails.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
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

const LOGIN_FAILURE: &[u8] =
    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno";

/// A small web application: plain session cookies, 401 for a wrong password,
/// and at a right one a new session (`renews`) or the same one.
fn application(renews: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
                let mut buf = [0u8; 65536];
                let len = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..len]).to_string();
                let response = if request.contains("password=wrong") {
                    LOGIN_FAILURE.to_vec()
                } else if request.contains("password=s3cret-test") {
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
    port
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

fn web_system(name: &str, port: u16, backend: u16) -> IoTSystem {
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
      ports: [{{name: http, port: {port}, backendPort: {backend}}}]
      http:
        loginPath: /login
        lockout: {{maxFailures: 3, window: 5m, duration: 10m}}
        probeCredentialsSecret: test-account
  flows:
    - {{from: {{ingress: true}}, to: portal, port: http}}
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
    let mut secret = Secret::default();
    secret.metadata.name = Some("test-account".into());
    secret.data = Some(
        [
            ("username".to_string(), ByteString(b"probe-user".to_vec())),
            ("password".to_string(), ByteString(b"s3cret-test".to_vec())),
        ]
        .into(),
    );
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    // "guarded": the application behind the generated gateway.
    let guarded_port = free_port();
    let guarded_backend = application(true);
    // "bare": an application that sets plain cookies, keeps the session at
    // login and has no gateway in front; its declared port is its own.
    let bare_port = application(false);
    let resolve: HashMap<String, SocketAddr> = [
        (
            format!("guarded.{}.svc:{guarded_port}", ns.name),
            format!("127.0.0.1:{guarded_port}").parse().unwrap(),
        ),
        (
            format!("bare.{}.svc:{bare_port}", ns.name),
            format!("127.0.0.1:{bare_port}").parse().unwrap(),
        ),
    ]
    .into();
    let operator = RunningOperator::start_with_probes(&ns, resolve).await;
    let systems: Api<IoTSystem> = ns.api();
    for system in [
        web_system("guarded", guarded_port, guarded_backend),
        web_system("bare", bare_port, free_port()),
    ] {
        systems
            .create(&PostParams::default(), &system)
            .await
            .unwrap();
    }

    let configs: Api<ConfigMap> = ns.api();
    let config = wait_until("the gateway ConfigMap", || async {
        configs.get_opt("guarded-portal-gateway").await.ok()?
    })
    .await;
    let owner = &config.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("IoTSystem", "guarded")
    );
    // Not under /tmp/iotposture: that prefix is one of the mapped paths.
    let dir = std::env::temp_dir().join(format!("e2e-waf-{}", ns.name));
    // The first probe rounds find the port closed: the probe must ask again
    // rather than keep that.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _gateway = run_gateway(&config, &dir, guarded_port);

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

    let bare = verdicts_settle(&systems, "bare", &probed).await;
    for id in probed {
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
    assert!(item(&bare, "III-4").1.contains("kept its pre-login value"));

    // Later rounds skip the login checks (the probe account is locked out
    // for 10 minutes) but keep their verdicts: nothing flips.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, expected) in [("guarded", Verdict::Pass), ("bare", Verdict::Fail)] {
        let status = systems.get(name).await.unwrap().status.unwrap();
        for id in probed {
            let (verdict, evidence) = item(&status, id);
            assert_eq!(*verdict, expected, "{name} {id} later: {evidence}");
        }
    }

    operator.stop().await;
    ns.delete().await;
}
