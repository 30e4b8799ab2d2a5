//! The admission webhooks on the real API server, with the webhook server on
//! 127.0.0.1. The referee is Kubernetes itself: namespaces enforce the Pod
//! Security Standard "restricted", so a bare pod admitted after our mutation
//! proves the hardening meets it.
use iotposture::api::{IoTSystem, Mode};
use iotposture_e2e::{RunningOperator, TestNamespace, wait_until};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Api, api::PostParams};

use crate::support::{factory, wait_ready};

const RESTRICTED: (&str, &str) = ("pod-security.kubernetes.io/enforce", "restricted");

/// A pod with no security settings at all, of the gateway component.
fn bare_pod(name: &str, app: &str, port: i32) -> Pod {
    serde_saphyr::from_str(&format!(
        "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, labels: {{app: {app}}}}}, spec: {{containers: [{{name: broker, image: registry.example.com/broker:2.0.18, ports: [{{containerPort: {port}}}]}}]}}}}"
    ))
    .unwrap()
}

/// Starts a webhook-serving operator and a system, and waits until the
/// namespace carries the operator's admission label.
async fn setup(prefix: &str, mode: Mode) -> (TestNamespace, RunningOperator) {
    let ns = TestNamespace::new(prefix).await;
    ns.label(&[RESTRICTED]).await;
    let operator = RunningOperator::start_with_webhooks(&ns).await;
    let mut system = factory("plant");
    system.spec.mode = mode;
    Api::<IoTSystem>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &system)
        .await
        .unwrap();
    wait_ready(&ns, "plant", "True").await;
    let instance = operator.webhook_instance.clone().unwrap();
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    wait_until("the namespace labelled for admission", || async {
        let n = namespaces.get(&ns.name).await.ok()?;
        (n.metadata.labels?.get("iotposture.dev/admission") == Some(&instance)).then_some(())
    })
    .await;
    (ns, operator)
}

fn create_error(result: Result<Pod, kube::Error>) -> String {
    match result {
        Ok(p) => panic!("pod {} was admitted", p.metadata.name.unwrap_or_default()),
        Err(kube::Error::Api(status)) => status.message,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_pods_are_hardened_to_restricted_and_forbidden_ones_refused() {
    let (ns, operator) = setup("admit", Mode::Enforce).await;
    let pods: Api<Pod> = ns.api();

    // Referee first: without our mutation, restricted refuses a bare pod.
    let message = create_error(
        pods.create(
            &PostParams::default(),
            &bare_pod("stranger", "not-a-component", 8883),
        )
        .await,
    );
    assert!(
        message.contains("violates PodSecurity \"restricted:latest\""),
        "{message}"
    );

    // A component's bare pod is admitted after hardening.
    let pod = pods
        .create(
            &PostParams::default(),
            &bare_pod("gateway-0", "mqtt-gateway", 8883),
        )
        .await
        .expect("a hardened pod passes restricted");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("plant-gateway"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .all(|v| !v.name.starts_with("kube-api-access-"))
    );
    let sc = spec.containers[0].security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let hardened = &pod.metadata.annotations.as_ref().unwrap()["iotposture.dev/hardened"];
    assert!(
        hardened.starts_with("serviceAccountName,automountServiceAccountToken"),
        "{hardened}"
    );

    // Idempotent on the real server: the hardened pod submitted again gains nothing.
    let mut again = pod.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("gateway-again".into()),
        labels: pod.metadata.labels.clone(),
        annotations: pod.metadata.annotations.clone(),
        ..Default::default()
    };
    again.status = None;
    let again = pods.create(&PostParams::default(), &again).await.unwrap();
    assert_eq!(
        again.metadata.annotations.as_ref().unwrap()["iotposture.dev/hardened"],
        *hardened
    );
    assert_eq!(
        again.spec.as_ref().unwrap().security_context,
        spec.security_context
    );
    assert_eq!(again.spec.as_ref().unwrap().containers, spec.containers);

    // A pod of no component is left as it is (this one meets restricted by itself).
    let mut outsider = bare_pod("outsider", "not-a-component", 8080);
    outsider.spec.as_mut().unwrap().security_context =
        Some(k8s_openapi::api::core::v1::PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        });
    outsider.spec.as_mut().unwrap().containers[0].security_context =
        Some(k8s_openapi::api::core::v1::SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        });
    let outsider = pods
        .create(&PostParams::default(), &outsider)
        .await
        .unwrap();
    assert!(
        !outsider
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("iotposture.dev/hardened")
    );
    assert_eq!(
        outsider
            .spec
            .as_ref()
            .unwrap()
            .service_account_name
            .as_deref(),
        Some("default")
    );
    assert_eq!(
        outsider.spec.as_ref().unwrap().containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone()),
        None
    );

    // Enforce refuses what the checklist forbids, naming item, field and fix.
    let message = create_error(
        pods.create(
            &PostParams::default(),
            &bare_pod("gateway-ssh", "mqtt-gateway", 22),
        )
        .await,
    );
    assert!(
        message.contains(
            "denied the request: IoTSystem plant (component gateway) refuses gateway-ssh"
        ),
        "{message}"
    );
    assert!(message.contains("[IV-2 No default remote-access ports] pod gateway-ssh container broker opens remote-access port 22"), "{message}");
    assert!(message.contains("fix: Do not expose SSH"), "{message}");

    // Workloads are refused at apply, before any pod exists.
    let deployment = r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gw"},
      "spec": {"selector": {"matchLabels": {"app": "mqtt-gateway"}}, "template": {"metadata": {"labels": {"app": "mqtt-gateway"}},
      "spec": {"containers": [{"name": "broker", "image": "registry.example.com/broker:latest"}]}}}}"#;
    let (ok, _, err) = ns.kubectl(&["apply", "-f", "-"], deployment).await;
    assert!(!ok);
    assert!(err.contains("[II-3 Patched software versions] pod deployment/gw: image registry.example.com/broker:latest uses the tag latest"), "{err}");

    // A server-side dry run is refused too, but has no side effect.
    let (ok, _, err) = ns
        .kubectl(
            &["create", "--dry-run=server", "-f", "-"],
            &serde_json::to_string(&bare_pod("dry-ssh", "mqtt-gateway", 22)).unwrap(),
        )
        .await;
    assert!(!ok && err.contains("refuses dry-ssh"), "{err}");

    // Both refusals reach the system's decision record (handed to the
    // leader as labelled Events), each once, and the dry run does not.
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let handed = wait_until("two refusals handed over", || async {
        let list = events
            .list(&kube::api::ListParams::default().labels("iotposture.dev/decision"))
            .await
            .ok()?;
        (list.items.len() >= 2).then_some(list.items)
    })
    .await;
    let mut related: Vec<String> = handed
        .iter()
        .map(|e| e.related.as_ref().unwrap().name.clone().unwrap())
        .collect();
    related.sort();
    assert_eq!(related, ["gateway-ssh", "gw"]);
    let record = RunningOperator::record_file(&ns);
    let lines = wait_until("the refusals in the decision record", || async {
        let text = std::fs::read_to_string(&record).ok()?;
        let refused: Vec<String> = text
            .lines()
            .filter(|l| l.contains(r#""kind":"AdmissionRefused""#))
            .map(str::to_string)
            .collect();
        (refused.len() >= 2).then_some(refused)
    })
    .await;
    assert!(
        lines[0].contains(r#""subject":"Pod/gateway-ssh""#)
            && lines[0].contains("IV-2 No default remote-access ports"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains(r#""subject":"Deployment/gw""#),
        "{lines:?}"
    );
    // The status follows the record: it is written after the lines are
    // appended, so it may name the last refusal a moment later.
    let last_handed = handed
        .iter()
        .map(|e| e.metadata.name.clone().unwrap())
        .max()
        .unwrap();
    let systems: Api<iotposture::api::IoTSystem> = ns.api();
    wait_until(
        "admissionsThrough names the last refusal handed",
        || async {
            let log = systems.get("plant").await.ok()?.status?.decision_log?;
            log.admissions_through
                .as_deref()
                .is_some_and(|t| t.ends_with(last_handed.as_str()))
                .then_some(())
        },
    )
    .await;

    // A malformed review gets a clear 400, and the server keeps serving.
    let addr = operator.webhook_addr.unwrap();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sk",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "--data",
            "{not json",
        ])
        .arg(format!("https://{addr}/validate"))
        .output()
        .await
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.ends_with("\n400"), "{body}");
    assert!(
        body.contains("the body is not an AdmissionReview"),
        "{body}"
    );
    pods.create(
        &PostParams::default(),
        &bare_pod("gateway-1", "mqtt-gateway", 8883),
    )
    .await
    .expect("still serving after a bad request");

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pods_get_the_gateway_and_still_pass_restricted() {
    let (ns, operator) = setup("inject", Mode::Enforce).await;
    let pods: Api<Pod> = ns.api();
    let pod = pods
        .create(
            &PostParams::default(),
            &bare_pod("dashboard-0", "dashboard", 8443),
        )
        .await
        .expect("the pod with its injected gateway passes restricted");
    let spec = pod.spec.as_ref().unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "broker",
            "iotposture-gateway",
            "iotposture-gateway-exporter"
        ]
    );
    let app = &spec.containers[0];
    assert!(app.ports.iter().flatten().all(|p| p.container_port != 8443));
    let env = app.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "IOTPOSTURE_BACKEND_PORT_HTTPS"
                && e.value.as_deref() == Some("18443"))
    );
    let gateway = &spec.containers[1];
    assert_eq!(gateway.ports.as_ref().unwrap()[0].container_port, 8443);
    assert_eq!(
        gateway
            .security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true),
        "the gateway is hardened like the application"
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(
        volumes.contains(&"iotposture-gateway-config"),
        "{volumes:?}"
    );
    assert!(volumes.contains(&"iotposture-tls-https"), "{volumes:?}");
    assert!(
        pod.metadata.annotations.as_ref().unwrap()["iotposture.dev/hardened"]
            .starts_with("gateway,"),
    );
    // The ConfigMap it mounts is the system's own.
    let config =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(ns.client.clone(), &ns.name)
            .get("plant-dashboard-gateway")
            .await
            .unwrap();
    assert!(config.data.unwrap()["nginx.conf"].contains("listen 8443 ssl;"));
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_admits_with_warnings() {
    let (ns, operator) = setup("audit-adm", Mode::Audit).await;
    let pod = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gw", "labels": {"app": "mqtt-gateway"}},
      "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "broker", "image": "registry.example.com/broker:2.0.18", "ports": [{"containerPort": 22}],
          "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}"#;
    // Audit mutates nothing: this pod meets restricted by itself.
    let (ok, out, err) = ns.kubectl(&["apply", "-f", "-"], pod).await;
    assert!(ok, "{err}");
    assert!(out.contains("pod/gw created"), "{out}");
    assert!(
        err.contains("Warning: iotposture (IoTSystem plant in Audit mode): [IV-2 No default remote-access ports]"),
        "{err}"
    );
    let pod = ns.api::<Pod>().get("gw").await.unwrap();
    assert!(
        !pod.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("iotposture.dev/hardened")
    );
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_operator_down_only_component_pods_are_affected() {
    let (ns, operator) = setup("down", Mode::Enforce).await;
    let instance = operator.crash().await.unwrap();
    // An unrelated namespace, not labelled, is untouched by the registered webhooks.
    let other = TestNamespace::new("unlabelled").await;
    Api::<Pod>::namespaced(other.client.clone(), &other.name)
        .create(&PostParams::default(), &bare_pod("free", "anything", 8080))
        .await
        .expect("namespaces without the label do not depend on the webhooks");
    // The labelled one fails closed (failurePolicy Fail), as documented.
    let message = create_error(
        ns.api::<Pod>()
            .create(
                &PostParams::default(),
                &bare_pod("gw", "mqtt-gateway", 8883),
            )
            .await,
    );
    assert!(message.contains("failed calling webhook"), "{message}");
    // Only pods that can be components: another pod in the same labelled
    // namespace never reaches the webhooks (their match conditions), so it
    // does not depend on the operator being up.
    let mut outsider = bare_pod("outsider", "not-a-component", 8080);
    outsider.spec.as_mut().unwrap().security_context =
        Some(k8s_openapi::api::core::v1::PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        });
    outsider.spec.as_mut().unwrap().containers[0].security_context =
        Some(k8s_openapi::api::core::v1::SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        });
    ns.api::<Pod>()
        .create(&PostParams::default(), &outsider)
        .await
        .expect("a pod of no component is admitted while the operator is down");
    RunningOperator::remove_webhooks(&ns.client, &instance).await;
    other.delete().await;
    ns.delete().await;
}
