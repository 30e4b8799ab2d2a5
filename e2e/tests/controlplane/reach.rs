//! Where the probe goes, and what it concludes when it cannot get there: a
//! fault the API already shows (no Service, no ready pod) fails; an address
//! it may not dial (ExternalName) or cannot reach decides nothing.
use std::collections::HashMap;

use iotposture::api::{IoTSystem, Verdict};
use iotposture_e2e::{RunningOperator, TestNamespace, wait_until};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

async fn settles(systems: &Api<IoTSystem>, verdict: Verdict, says: &str) -> String {
    let last = std::sync::Mutex::new(String::new());
    let found = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        wait_until(&format!("VI-3 {verdict:?} saying {says:?}"), || async {
            let status = systems.get("reach").await.ok()?.status?;
            let item = status.items.into_iter().find(|i| i.id == "VI-3")?;
            *last.lock().unwrap() = format!("{:?}: {}", item.verdict, item.evidence);
            (item.verdict == verdict && item.evidence.contains(says)).then_some(item.evidence)
        }),
    )
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "VI-3 never became {verdict:?} saying {says:?}; last: {}",
            last.lock().unwrap()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_could_not_run_decides_nothing() {
    let ns = TestNamespace::new("reach").await;
    // No --probe-resolve: addresses come from the API only.
    let operator = RunningOperator::start_with_probes(&ns, HashMap::new()).await;
    let systems: Api<IoTSystem> = ns.api();
    let system: IoTSystem = serde_saphyr::from_str(
        r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {name: reach}
spec:
  components:
    - name: gateway
      role: Aggregator
      service: broker
      selector: {matchLabels: {app: broker}}
      ports: [{name: mqtts, port: 8883, tls: true}]
"#,
    )
    .unwrap();
    systems
        .create(&PostParams::default(), &system)
        .await
        .unwrap();

    let evidence = settles(&systems, Verdict::Fail, "no Service broker").await;
    assert!(
        evidence.contains(&format!("in namespace {}", ns.name)),
        "{evidence}"
    );

    let services: Api<Service> = ns.api();
    let external: Service = serde_json::from_value(json!({
        "metadata": {"name": "broker"},
        "spec": {"type": "ExternalName", "externalName": "mqtt.example.com"}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &external)
        .await
        .unwrap();
    settles(&systems, Verdict::Unknown, "is of type ExternalName").await;

    services
        .delete("broker", &DeleteParams::default())
        .await
        .unwrap();
    let cluster_ip: Service = serde_json::from_value(json!({
        "metadata": {"name": "broker"},
        "spec": {"clusterIP": "None", "selector": {"app": "broker"}, "ports": [{"name": "mqtts", "port": 8883}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &cluster_ip)
        .await
        .unwrap();
    settles(&systems, Verdict::Fail, "(no endpoints)").await;

    // A ready pod behind the (headless) Service, on the node, where nothing
    // listens on the port: the probe could not run, so it decides nothing.
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "broker-0", "labels": {"app": "broker"}},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "broker",
            "image": iotposture_e2e::local_image("toolbox"), "imagePullPolicy": "Never"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let (ok, _, err) = ns
        .kubectl(
            &[
                "wait",
                "--for=condition=Ready",
                "pod/broker-0",
                "--timeout=120s",
            ],
            "",
        )
        .await;
    assert!(ok, "{err}");
    let pod_ip = pods
        .get("broker-0")
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    let evidence = settles(&systems, Verdict::Unknown, "the probe could not reach").await;
    assert!(
        evidence.contains(&format!("{pod_ip}:8883")),
        "dialled the ready pod behind the headless Service: {evidence}"
    );
    operator.stop().await;
    ns.delete().await;
}
