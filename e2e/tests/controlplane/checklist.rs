//! Checklist verdicts on the real control plane: in status, in the one
//! PolicyReport, in metrics scraped by a real Prometheus, and equal to what
//! `iotposture check` says offline about the same manifests.
use std::{path::Path, time::Duration};

use iotposture::{
    api::{IoTSystem, ItemStatus, Verdict},
    check,
};
use iotposture_e2e::{Prometheus, RunningOperator, TestNamespace, wait_until};
use k8s_openapi::jiff::Zoned;
use kube::{Api, core::DynamicObject};

const GOOD: &str = include_str!("../../../manifests/examples/smart-factory.yaml");
const BAD: &str = include_str!("../../../operator/tests/fixtures/bad-workloads.yaml");

/// The manifests, moved into the test's namespace.
fn in_namespace(yaml: &str, from: &str, ns: &str) -> String {
    yaml.replace(&format!("namespace: {from}"), &format!("namespace: {ns}"))
}

fn offline(yaml: &str, admission: check::Admission) -> Vec<ItemStatus> {
    let mut m = check::Manifests::default();
    check::load_text(&mut m, Path::new("manifests.yaml"), yaml, "default").unwrap();
    check::evaluate(&m, Zoned::now().date(), admission)
        .unwrap()
        .remove(0)
        .items
}

/// Waits until the system was judged with its pods present and its verdicts
/// are those `iotposture check` gives offline for the same manifests (the
/// watches may see the manifests' objects in any order meanwhile).
async fn judged(ns: &TestNamespace, name: &str, pods: usize, offline: &[ItemStatus]) -> IoTSystem {
    let systems: Api<IoTSystem> = ns.api();
    let pod_api: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    let expected = verdicts(offline);
    let last = std::sync::Mutex::new(Vec::new());
    let found = tokio::time::timeout(
        Duration::from_secs(90),
        wait_until(
            &format!("{pods} pods and the verdicts of {name}"),
            || async {
                let count = pod_api.list(&Default::default()).await.ok()?.items.len();
                if count < pods {
                    return None;
                }
                let s = systems.get(name).await.ok()?;
                let items = &s.status.as_ref()?.items;
                let seen = verdicts(items);
                *last.lock().unwrap() = seen.clone();
                (seen == expected).then_some(s)
            },
        ),
    )
    .await;
    found.unwrap_or_else(|_| {
        let last = last.lock().unwrap().clone();
        let differ: Vec<_> = last
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("{}: in cluster {:?}, offline {:?}", a.0, a.1, b.1))
            .collect();
        panic!("in-cluster and offline verdicts differ: {differ:?}")
    })
}

fn verdicts(items: &[ItemStatus]) -> Vec<(String, Verdict)> {
    items.iter().map(|i| (i.id.clone(), i.verdict)).collect()
}

/// The PolicyReport once it counts `fails` failures: it is written right
/// after the status, in the same reconcile.
async fn policy_report(ns: &TestNamespace, system: &str, fails: usize) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &iotposture::build::policy_report::api_resource(),
    );
    wait_until("the PolicyReport", || async {
        let report = api.get_opt(&format!("iotposture-{system}")).await.ok()??;
        (report.data["summary"]["fail"] == fails).then_some(report)
    })
    .await
}

#[tokio::test]
async fn a_well_built_system_passes_and_offline_agrees() {
    let ns = TestNamespace::new("good").await;
    // With the admission webhooks, as a cluster runs it: the web pods get
    // their gateway. The system first, so that the namespace is selected
    // before the workloads' pods are created.
    let operator = RunningOperator::start_with_webhooks(&ns).await;
    let yaml = in_namespace(GOOD, "smart-factory", &ns.name);
    let system_doc = yaml
        .split("\n---\n")
        .find(|doc| doc.contains("kind: IoTSystem"))
        .unwrap();
    ns.apply_manifest(system_doc).await;
    let instance = operator.webhook_instance.clone().unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ns.client.clone());
    wait_until("the namespace selected for admission", || async {
        let n = namespaces.get(&ns.name).await.ok()?;
        (n.metadata.labels?.get("iotposture.dev/admission") == Some(&instance)).then_some(())
    })
    .await;
    ns.apply_manifest(&yaml).await;
    let system = judged(&ns, "line-1", 5, &offline(&yaml, check::Admission::Mutated)).await;
    let status = system.status.unwrap();

    for id in [
        "I-2", "I-5", "I-6", "I-7", "I-8", "I-9", "I-10", "II-2", "II-3", "II-5", "II-6", "IV-1",
        "IV-2", "V-1", "V-2", "VI-4",
    ] {
        let item = status.items.iter().find(|i| i.id == id).unwrap();
        assert_eq!(item.verdict, Verdict::Pass, "{id}: {}", item.evidence);
    }
    // Its sensors are heard over MQTT, and no broker runs here (the
    // heartbeats test hears one).
    let vii1 = status.items.iter().find(|i| i.id == "VII-1").unwrap();
    assert_eq!(vii1.verdict, Verdict::Unknown, "{}", vii1.evidence);
    assert_eq!(status.compliant.as_deref(), Some("16/39"));

    // A cert-manager Certificate per TLS port, from the declared issuer, owned by the system.
    let certificates: Api<iotposture::api::certmanager::certificate::Certificate> = ns.api();
    let mut names: Vec<String> = certificates
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            assert_eq!(c.spec.issuer_ref.name, "factory-ca");
            assert_eq!(c.metadata.owner_references.unwrap()[0].name, "line-1");
            c.metadata.name.unwrap()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "line-1-analytics-api",
            "line-1-dashboard-https",
            "line-1-gateway-mqtts"
        ]
    );

    let report = policy_report(&ns, "line-1", 0).await;
    assert_eq!(report.data["results"].as_array().unwrap().len(), 39);
    assert_eq!(report.data["summary"]["fail"], 0);
    assert_eq!(report.data["summary"]["pass"], 16);

    // The verdicts follow the namespace: RBAC and Service changes are seen from the watches.
    ns.apply_manifest(GRANT_AND_EXPOSE).await;
    let flipped = |id: &'static str, verdict: Verdict| {
        let systems: Api<IoTSystem> = ns.api();
        async move {
            wait_until(&format!("{id} becomes {verdict:?}"), || async {
                let s = systems.get("line-1").await.ok()?;
                let item = s.status?.items.into_iter().find(|i| i.id == id)?;
                (item.verdict == verdict).then_some(item.evidence)
            })
            .await
        }
    };
    assert!(
        flipped("I-9", Verdict::Fail)
            .await
            .contains("cluster-admin to User intern")
    );
    assert!(
        flipped("IV-2", Verdict::Fail)
            .await
            .contains("Service dashboard-ssh")
    );
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = ns.api();
    bindings
        .delete("intern-admin", &Default::default())
        .await
        .unwrap();
    flipped("I-9", Verdict::Pass).await;

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn a_sloppy_system_fails_in_status_report_metrics_and_offline() {
    let ns = TestNamespace::new("sloppy").await;
    let operator = RunningOperator::start(&ns).await;
    let yaml = in_namespace(BAD, "sloppy", &ns.name);
    ns.apply_manifest(&yaml).await;
    let system = judged(
        &ns,
        "sloppy",
        3,
        &offline(&yaml, check::Admission::AsWritten),
    )
    .await;
    let status = system.status.unwrap();

    let failing = [
        "I-2", "I-5", "I-6", "I-7", "I-8", "I-9", "I-10", "II-2", "II-3", "II-5", "II-6", "III-1",
        "III-9", "IV-1", "IV-2", "V-1", "V-2", "VII-1", "VII-2", "VI-2", "VIII-2",
    ];
    for id in failing {
        let item = status.items.iter().find(|i| i.id == id).unwrap();
        assert_eq!(item.verdict, Verdict::Fail, "{id}: {}", item.evidence);
        assert!(item.remediation.is_some());
    }
    let i5 = status.items.iter().find(|i| i.id == "I-5").unwrap();
    assert!(
        i5.evidence
            .contains("container broker: runAsNonRoot is not true"),
        "{}",
        i5.evidence
    );
    assert_eq!(status.summary.as_ref().unwrap().fail, failing.len() as i32);

    // One PolicyReport, updated in place.
    let report = policy_report(&ns, "sloppy", failing.len()).await;
    let results = report.data["results"].as_array().unwrap();
    assert_eq!(results.len(), 39);
    let ssh = results.iter().find(|r| r["rule"] == "IV-2").unwrap();
    assert_eq!(ssh["result"], "fail");
    assert_eq!(ssh["severity"], "high");
    assert_eq!(report.data["summary"]["fail"], failing.len());

    // Fix one thing: the report changes in place, and the verdict flips.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    pods.delete("sensor-0", &Default::default()).await.unwrap();
    ns.apply_manifest(&BAD_SENSOR_FIXED.replace("NS", &ns.name))
        .await;
    let systems: Api<IoTSystem> = ns.api();
    wait_until("VII-1 passes once the sensor has probes", || async {
        let s = systems.get("sloppy").await.ok()?;
        let item = s.status?.items.into_iter().find(|i| i.id == "VII-1")?;
        (item.verdict == Verdict::Pass).then_some(())
    })
    .await;
    policy_report(&ns, "sloppy", failing.len() - 1).await;

    // A real Prometheus scrapes the operator's /metrics and reads the verdicts back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(iotposture::http::serve(
        listener,
        operator.metrics.clone(),
        operator.health.clone(),
    ));
    assert_eq!(
        iotposture_e2e::http_get(metrics_addr, "/healthz").await.0,
        200
    );
    assert_eq!(
        iotposture_e2e::http_get(metrics_addr, "/readyz").await.0,
        200
    );
    let prometheus = Prometheus::start("iotposture", &[metrics_addr]).await;
    let query = format!(
        "iotposture_checklist_item_verdict{{namespace=\"{}\",system=\"sloppy\",item=\"IV-2\"}}",
        ns.name
    );
    let series = wait_until("Prometheus has the IV-2 verdict", || async {
        let result = prometheus.query(&query).await;
        (!result.is_empty()).then_some(result)
    })
    .await;
    assert_eq!(series.len(), 1, "one series per item: {series:?}");
    assert_eq!(series[0]["metric"]["verdict"], "Fail");
    assert_eq!(series[0]["value"][1], "1");
    let ratio = prometheus
        .query(&format!(
            "iotposture_checklist_compliance_ratio{{namespace=\"{}\"}}",
            ns.name
        ))
        .await;
    let value: f64 = ratio[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value < 0.2, "compliance ratio {value}");
    let items = prometheus
        .query(&format!(
            "count(iotposture_checklist_item_verdict{{namespace=\"{}\"}})",
            ns.name
        ))
        .await;
    assert_eq!(items[0]["value"][1], "39");
    // Pod health, one series per component of each family (the VIII-1 alert
    // rules read them).
    for family in [
        "iotposture_component_container_restarts",
        "iotposture_component_crash_looping_containers",
    ] {
        let components = prometheus
            .query(&format!(
                "count({family}{{namespace=\"{}\",system=\"sloppy\"}})",
                ns.name
            ))
            .await;
        assert_eq!(
            components.len(),
            1,
            "{family} has no series: {components:?}"
        );
        assert_eq!(components[0]["value"][1], "3", "{family}: {components:?}");
    }
    drop(prometheus);
    server.abort();

    tokio::time::sleep(Duration::from_millis(10)).await;
    operator.stop().await;
    ns.delete().await;
}

const GRANT_AND_EXPOSE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: intern-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: User, name: intern, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: v1
kind: Service
metadata: {name: dashboard-ssh}
spec:
  selector: {app: dashboard}
  ports: [{name: ssh, port: 22}]
"#;

const BAD_SENSOR_FIXED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sensor-1, namespace: NS, labels: {app: sensor}}
spec:
  containers:
    - name: sensor
      image: registry.example.com/sensor:1.0
      livenessProbe: {exec: {command: [/bin/true]}}
      readinessProbe: {exec: {command: [/bin/true]}}
"#;
