//! On the plane's real node: pods that run, NetworkPolicies that kube-router
//! enforces, and the operator's verdicts next to what the connections show.
use std::time::Duration;

use iotposture::api::{IoTSystem, Verdict};
use iotposture_e2e::{RunningOperator, TestNamespace, local_image, wait_until};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};

use crate::support::{tls_secret, wait_ready};

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
                "resources": {"requests": {"cpu": "5m", "memory": "16Mi"},
                              "limits": {"cpu": "100m", "memory": "64Mi"}},
            }],
        }
    }))
    .unwrap()
}

fn selector(
    key: &str,
    value: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some([(key.to_string(), value.to_string())].into()),
        match_expressions: None,
    }
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
      ports: [{{name: api, port: 8080, tls: true}}, {{name: admin, port: 9090}}, {{name: ssdp, port: 1900, protocol: UDP}}]
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
            "the operator's probe pods → server:api, a TLS port",
            true,
            connects(other, "prober", &server, 8080).await,
        ),
        (
            "the operator's probe pods → server:admin, not probed",
            false,
            connects(other, "prober", &server, 9090).await,
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
            pod("prober", "prober", &[], false),
        ],
    )
    .await;
    // Something outside the cluster: a listener on the node's own address.
    let outside = std::net::TcpListener::bind("10.250.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in outside.incoming() {});
    // As if the operator ran in `other` as the pods labelled app=prober.
    let mut options = RunningOperator::options(&ns, false);
    options.operator_peers.probes = Some(iotposture::controller::validate::PodPeers {
        namespace_selector: Some(selector("kubernetes.io/metadata.name", &other.name)),
        pod_selector: Some(selector("app", "prober")),
    });
    let operator =
        RunningOperator::start_as(&ns, iotposture_e2e::operator_client().await, options).await;
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

/// The example's dashboard as a Deployment, its password from a Secret file.
fn dashboard(listen: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "dashboard"},
        "spec": {
            "selector": {"matchLabels": {"app": "dashboard"}},
            "template": {
                "metadata": {"labels": {"app": "dashboard"}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "ui", "image": local_image("dashboard"), "imagePullPolicy": "Never",
                        "env": [
                            {"name": "DASHBOARD_USER", "value": "probe-user"},
                            {"name": "DASHBOARD_PASSWORD_FILE", "value": "/etc/dashboard/password"},
                            {"name": "DASHBOARD_LISTEN", "value": listen},
                        ],
                        "ports": [{"containerPort": 8443}],
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                      "limits": {"cpu": "200m", "memory": "128Mi"}},
                        "volumeMounts": [{"name": "account", "mountPath": "/etc/dashboard", "readOnly": true}],
                    }],
                    "volumes": [{"name": "account", "secret": {"secretName": "dash-account"}}],
                }
            }
        }
    })
}

/// GET `url` with curl from the pod `user`: the response head and the status.
/// A pod turns ready a
/// moment before the proxy routes its Service: retried while nothing answers
/// (curl's 000), for up to 20 s.
async fn curl(ns: &TestNamespace, url: &str) -> String {
    let mut out = String::new();
    for _ in 0..20 {
        out = curl_once(ns, url).await;
        if !out.trim_end().ends_with("000") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    out
}

async fn curl_once(ns: &TestNamespace, url: &str) -> String {
    let (_, out, _) = ns
        .kubectl(
            &[
                "exec",
                "user",
                "--",
                "curl",
                "-sk",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-w",
                "%{http_code}\n",
                url,
            ],
            "",
        )
        .await;
    out
}

fn web_system(name: &str, mode: &str, port: &str) -> IoTSystem {
    serde_saphyr::from_str(&format!(
        r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {{name: {name}}}
spec:
  mode: {mode}
  components:
    - name: dashboard
      role: EUtility
      service: dashboard
      selector: {{matchLabels: {{app: dashboard}}}}
      ports: [{port}]
      writablePaths: [/tmp]
      http:
        loginPath: /login
        lockout: {{maxFailures: 3, window: 5m, duration: 10m}}
        probeCredentialsSecret: dash-account
  flows:
    - {{from: {{ingress: true}}, to: dashboard, port: https}}
"#
    ))
    .unwrap()
}

async fn web_namespace(prefix: &str) -> TestNamespace {
    let ns = TestNamespace::new(prefix).await;
    ns.apply_manifest(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: dash-account, labels: {iotposture.dev/probe-credentials: "true"}}
stringData: {username: probe-user, password: s3cret-on-the-node}
---
apiVersion: v1
kind: Service
metadata: {name: dashboard}
spec:
  selector: {app: dashboard}
  ports: [{name: https, port: 8443, targetPort: 8443}]
"#,
    )
    .await;
    ns
}

fn verdicts(s: &IoTSystem, ids: &[&str]) -> Vec<(String, Verdict, String)> {
    ids.iter()
        .map(|id| {
            let i = s
                .status
                .as_ref()
                .unwrap()
                .items
                .iter()
                .find(|i| i.id == *id)
                .unwrap();
            (i.id.clone(), i.verdict, i.evidence.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_guards_the_dashboard_and_the_probe_proves_it_from_live_traffic() {
    // VI-3 too: the TLS probe may first have found the pod not yet listening.
    let probed = ["I-1", "II-1", "III-2", "III-3", "III-4", "III-8", "VI-3"];

    // Good: admitted through the webhooks, the pod gets the gateway (the
    // image built here) in front of the application on its backend port.
    let good = web_namespace("webgood").await;
    tls_secret(&good, "guarded-dashboard-https", "dashboard").await;
    let mut options = RunningOperator::options(&good, true);
    if let Some(admission) = options.admission.as_mut() {
        admission.images.gateway = local_image("gateway");
        admission.images.exporter = local_image("operator");
    }
    options.probes = Some(iotposture::controller::probing::ProbeOptions {
        interval: Duration::from_secs(2),
        resolve: Default::default(),
        settings: Default::default(),
        http: Default::default(),
    });
    let operator =
        RunningOperator::start_as(&good, iotposture_e2e::operator_client().await, options).await;
    let systems: Api<IoTSystem> = good.api();
    systems
        .create(
            &PostParams::default(),
            &web_system(
                "guarded",
                "Enforce",
                "{name: https, port: 8443, tls: true, http: true}",
            ),
        )
        .await
        .unwrap();
    wait_ready(&good, "guarded", "True").await;
    good.apply_manifest(&dashboard("127.0.0.1").to_string())
        .await;
    let (ok, _, err) = good
        .kubectl(
            &[
                "rollout",
                "status",
                "deployment/dashboard",
                "--timeout=120s",
            ],
            "",
        )
        .await;
    assert!(ok, "the guarded dashboard never ran: {err}");
    let pods: Api<Pod> = good.api();
    let admitted = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .remove(0);
    let containers: Vec<String> = admitted
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        containers,
        ["ui", "iotposture-gateway", "iotposture-gateway-exporter"]
    );

    // Through the Service, from a pod, as a user would.
    start_pods(&good, &[pod("user", "user", &[], false)]).await;
    let base = format!("https://dashboard.{}.svc:8443", good.name);
    let login_page = curl(&good, &format!("{base}/login")).await;
    assert!(login_page.trim_end().ends_with("200"), "{login_page}");
    let cookie = login_page
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        cookie.contains("secure") && cookie.contains("httponly") && cookie.contains("samesite"),
        "{cookie}"
    );
    let sqli = curl(&good, &format!("{base}/?id=1%27%20OR%20%271%27%3D%271")).await;
    assert!(sqli.trim_end().ends_with("403"), "SQL injection: {sqli}");
    let sid = curl(&good, &format!("{base}/?sessionid=stolen")).await;
    assert!(
        sid.trim_end().ends_with("400"),
        "session id in the URL: {sid}"
    );

    // The probe decides the web items from what it saw there.
    let guarded = wait_until("the probe's verdicts on the guarded dashboard", || async {
        let s = systems.get("guarded").await.ok()?;
        verdicts(&s, &probed)
            .iter()
            // A round that ran while the pod was starting found no endpoints;
            // wait for one that reached the running pod.
            .all(|(_, v, e)| *v != Verdict::Unknown && !e.contains("no ready pod"))
            .then_some(s)
    })
    .await;
    for (id, verdict, evidence) in verdicts(&guarded, &probed) {
        assert_eq!(verdict, Verdict::Pass, "guarded {id}: {evidence}");
    }

    // Bad: the same application in Audit mode, nothing injected, plaintext.
    let bad = web_namespace("webbad").await;
    let bad_operator = {
        let mut options = RunningOperator::options(&bad, false);
        options.probes = Some(iotposture::controller::probing::ProbeOptions {
            interval: Duration::from_secs(2),
            resolve: Default::default(),
            settings: Default::default(),
            http: Default::default(),
        });
        RunningOperator::start_as(&bad, iotposture_e2e::operator_client().await, options).await
    };
    Api::<IoTSystem>::namespaced(bad.client.clone(), &bad.name)
        .create(
            &PostParams::default(),
            &web_system("bare", "Audit", "{name: https, port: 8443, http: true}"),
        )
        .await
        .unwrap();
    // Its own port, in plaintext, for anyone.
    let mut bare_app = dashboard("0.0.0.0");
    bare_app["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "IOTPOSTURE_BACKEND_PORT_HTTPS", "value": "8443"}));
    bad.apply_manifest(&bare_app.to_string()).await;
    let (ok, _, err) = bad
        .kubectl(
            &[
                "rollout",
                "status",
                "deployment/dashboard",
                "--timeout=120s",
            ],
            "",
        )
        .await;
    assert!(ok, "the bare dashboard never ran: {err}");
    let bare = wait_until("the probe's verdicts on the bare dashboard", || async {
        let s = Api::<IoTSystem>::namespaced(bad.client.clone(), &bad.name)
            .get("bare")
            .await
            .ok()?;
        let v = verdicts(&s, &["I-1", "II-1", "III-2", "III-3", "III-8"]);
        v.iter()
            // A round that ran while the pod was starting found no endpoints;
            // wait for one that reached the running pod.
            .all(|(_, v, e)| *v != Verdict::Unknown && !e.contains("no ready pod"))
            .then_some(v)
    })
    .await;
    for (id, verdict, evidence) in bare {
        assert_eq!(verdict, Verdict::Fail, "bare {id}: {evidence}");
    }

    bad_operator.stop().await;
    operator.stop().await;
    bad.delete().await;
    good.delete().await;
}

/// In-cluster configuration as a client library does it: the Service
/// address from the environment, the cluster's name through CoreDNS, the
/// CA and the token the kubelet mounted. Allowed where RBAC says so, and
/// refused as that ServiceAccount (not as anonymous) where it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_the_api_server_with_their_service_account() {
    let ns = TestNamespace::new("incluster").await;
    ns.apply_manifest(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: read-pods}
rules: [{apiGroups: [""], resources: [pods], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-reads-pods}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-pods}
subjects: [{kind: ServiceAccount, name: reader}]
"#,
    )
    .await;
    let mut reader = pod("reader", "reader", &[], false);
    reader.spec.as_mut().unwrap().service_account_name = Some("reader".into());
    start_pods(&ns, &[reader, pod("nobody", "nobody", &[], false)]).await;

    let ask = |who: &'static str, host: &'static str, path: String| {
        let ns = &ns;
        async move {
            let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
            let script = format!(
                "curl -s --cacert {sa}/ca.crt -H \"Authorization: Bearer $(cat {sa}/token)\" \
                 -w '\\n%{{http_code}}' https://{host}{path}"
            );
            let (ok, out, err) = ns
                .kubectl(&["exec", who, "--", "sh", "-c", &script], "")
                .await;
            assert!(ok, "{who} could not ask {host}: {err}");
            out
        }
    };
    let pods = format!("/api/v1/namespaces/{}/pods", ns.name);
    for host in [
        "${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}",
        "kubernetes.default.svc",
    ] {
        let listed = ask("reader", host, pods.clone()).await;
        assert!(
            listed.ends_with("200")
                && listed
                    .replace(char::is_whitespace, "")
                    .contains("\"kind\":\"PodList\""),
            "reader via {host}: {listed}"
        );
        let refused = ask("nobody", host, pods.clone()).await;
        let identity = format!("system:serviceaccount:{}:default", ns.name);
        assert!(
            refused.ends_with("403") && refused.contains(&identity),
            "nobody via {host}: {refused}"
        );
    }
    ns.delete().await;
}
