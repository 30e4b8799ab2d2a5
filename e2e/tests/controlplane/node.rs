//! On the plane's real node: pods that run, NetworkPolicies that kube-router
//! enforces, and the operator's verdicts next to what the connections show.
use std::time::Duration;

use iotposture::api::{IoTSystem, Verdict};
use iotposture_e2e::{RunningOperator, TestNamespace, local_image, wait_until};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};

use crate::support::wait_ready;

/// A toolbox pod listening on the given TCP ports (and UDP 1900 when asked),
/// labelled `app: <app>`.
fn pod(name: &str, app: &str, tcp: &[u16], udp_ssdp: bool) -> Pod {
    let mut script = String::new();
    for port in tcp {
        script.push_str(&format!("nc -lk {port} >/dev/null & "));
    }
    if udp_ssdp {
        script.push_str("nc -lku 1900 >/tmp/ssdp & ");
    }
    script.push_str("exec sleep infinity");
    let ports: Vec<serde_json::Value> = tcp
        .iter()
        .map(|p| serde_json::json!({"containerPort": p}))
        .chain(udp_ssdp.then(|| serde_json::json!({"containerPort": 1900, "protocol": "UDP"})))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c", "image": local_image("toolbox"), "imagePullPolicy": "Never",
                "command": ["sh", "-c", script], "ports": ports,
                "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
            }],
        }
    }))
    .unwrap()
}

async fn start_pods(ns: &TestNamespace, pods: &[Pod]) {
    let api: Api<Pod> = ns.api();
    for p in pods {
        api.create(&PostParams::default(), p).await.unwrap();
    }
    let names: Vec<String> = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let mut args = vec!["wait", "--for=condition=Ready", "--timeout=120s"];
    let targets: Vec<String> = names.iter().map(|n| format!("pod/{n}")).collect();
    args.extend(targets.iter().map(String::as_str));
    let (ok, _, err) = ns.kubectl(&args, "").await;
    assert!(ok, "pods not Ready: {err}");
}

async fn ip(ns: &TestNamespace, name: &str) -> String {
    let api: Api<Pod> = ns.api();
    api.get(name).await.unwrap().status.unwrap().pod_ip.unwrap()
}

/// Whether `from` (a pod of `ns`) opens a TCP connection to `to:port`.
async fn connects(ns: &TestNamespace, from: &str, to: &str, port: u16) -> bool {
    let port = port.to_string();
    let (ok, _, _) = ns
        .kubectl(&["exec", from, "--", "nc", "-z", "-w", "2", to, &port], "")
        .await;
    ok
}

/// Whether a UDP datagram from `from` to `to:1900` reaches the listener pod `listener`.
async fn ssdp_arrives(ns: &TestNamespace, from: &str, to: &str, listener: &str) -> bool {
    static SENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // A token of its own: the listener's file keeps what came before.
    let token = format!(
        "M-SEARCH-{}",
        SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let send = format!("echo {token} | nc -u -w 1 {to} 1900");
    let _ = ns
        .kubectl(&["exec", from, "--", "sh", "-c", &send], "")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, got, _) = ns
        .kubectl(&["exec", listener, "--", "cat", "/tmp/ssdp"], "")
        .await;
    got.contains(&token)
}

fn system(mode: &str, other: &str, outside: u16) -> IoTSystem {
    serde_saphyr::from_str(&format!(
        r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {{name: fenced}}
spec:
  mode: {mode}
  components:
    - name: client
      role: DecisionTrigger
      selector: {{matchLabels: {{app: client}}}}
      ports: [{{name: back, port: 8080}}]
    - name: server
      role: Aggregator
      selector: {{matchLabels: {{app: server}}}}
      ports: [{{name: api, port: 8080}}, {{name: admin, port: 9090}}, {{name: ssdp, port: 1900, protocol: UDP}}]
      upnp: true
  flows:
    - {{from: client, to: server, port: api}}
    - from: {{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {other}}}}}, podSelector: {{matchLabels: {{app: visitor}}}}}}
      to: server
      port: api
  egress:
    - {{from: client, to: {{cidr: 10.250.0.1/32}}, ports: [{{port: {outside}}}]}}
"#
    ))
    .unwrap()
}

/// Every case of the enforcement: what, whether Enforce lets it through,
/// whether it connected.
async fn cases(
    ns: &TestNamespace,
    other: &TestNamespace,
    outside: u16,
) -> Vec<(&'static str, bool, bool)> {
    let server = ip(ns, "server").await;
    let client = ip(ns, "client").await;
    let host = "10.250.0.1";
    vec![
        (
            "declared flow client → server:api",
            true,
            connects(ns, "client", &server, 8080).await,
        ),
        (
            "the selected pods of another namespace → server:api",
            true,
            connects(other, "visitor", &server, 8080).await,
        ),
        (
            "declared egress client → a network outside",
            true,
            connects(ns, "client", host, outside).await,
        ),
        (
            "client → server:admin, a port no flow names",
            false,
            connects(ns, "client", &server, 9090).await,
        ),
        (
            "server → client:back, against the flow",
            false,
            connects(ns, "server", &client, 8080).await,
        ),
        (
            "a pod of no component → server:api",
            false,
            connects(ns, "stranger", &server, 8080).await,
        ),
        (
            "other pods of that namespace → server:api",
            false,
            connects(other, "intruder", &server, 8080).await,
        ),
        (
            "server → the network outside, no egress declared",
            false,
            connects(ns, "server", host, outside).await,
        ),
        (
            "client → SSDP (UDP 1900), not declared UPnP",
            false,
            ssdp_arrives(ns, "client", &server, "server").await,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_flows_connect_and_nothing_else_and_the_verdicts_agree() {
    let ns = TestNamespace::new("fence").await;
    let other = TestNamespace::new("visitor").await;
    start_pods(
        &ns,
        &[
            pod("client", "client", &[8080], false),
            pod("server", "server", &[8080, 9090], true),
            pod("stranger", "stranger", &[], false),
        ],
    )
    .await;
    start_pods(
        &other,
        &[
            pod("visitor", "visitor", &[], false),
            pod("intruder", "intruder", &[], false),
        ],
    )
    .await;
    // Something outside the cluster: a listener on the node's own address.
    let outside = std::net::TcpListener::bind("10.250.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in outside.incoming() {});
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();

    // Audit first: nothing is enforced, everything connects, and the
    // operator says the firewall is missing.
    systems
        .create(
            &PostParams::default(),
            &system("Audit", &other.name, outside_port),
        )
        .await
        .unwrap();
    let audited = wait_ready(&ns, "fenced", "True").await;
    let firewall = |s: &IoTSystem| {
        s.status
            .as_ref()
            .unwrap()
            .items
            .iter()
            .find(|i| i.id == "II-2")
            .map(|i| (i.verdict, i.evidence.clone()))
            .unwrap()
    };
    assert_eq!(
        firewall(&audited).0,
        Verdict::Fail,
        "{:?}",
        firewall(&audited)
    );
    for (what, _, connected) in cases(&ns, &other, outside_port).await {
        assert!(connected, "without policies, {what} should connect");
    }

    // Enforce: only the declared flow connects, and II-2, V-1 and V-2 pass.
    systems
        .patch(
            "fenced",
            &Default::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"mode": "Enforce"}})),
        )
        .await
        .unwrap();
    let enforced = wait_until("II-2 passing under Enforce", || async {
        let s = systems.get("fenced").await.ok()?;
        (firewall(&s).0 == Verdict::Pass).then_some(s)
    })
    .await;
    // kube-router applies what it sees within a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let last = loop {
        let last = cases(&ns, &other, outside_port).await;
        let as_declared = last
            .iter()
            .all(|(_, allowed, connected)| allowed == connected);
        if as_declared || tokio::time::Instant::now() > deadline {
            break last;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    for (what, allowed, connected) in &last {
        assert_eq!(connected, allowed, "{what}: connected {connected}");
    }
    for id in ["II-2", "V-1", "V-2"] {
        let item = enforced
            .status
            .as_ref()
            .unwrap()
            .items
            .iter()
            .find(|i| i.id == id)
            .unwrap();
        assert_eq!(item.verdict, Verdict::Pass, "{id}: {}", item.evidence);
    }

    operator.stop().await;
    other.delete().await;
    ns.delete().await;
}
