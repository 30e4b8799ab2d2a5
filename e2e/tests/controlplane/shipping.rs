//! Log shipping (III-1) on the real node: the operator runs the collector
//! DaemonSet (the project's image) in its own namespace, configured for the
//! system's `spec.logging`; a component pod's output reaches a real
//! VictoriaLogs over TLS with basic auth, and III-1 passes on what the
//! collector's counters and the store's answer show. A wrong password turns
//! it to Fail; a system whose CA Secret is missing fails alone while the
//! other ships on; without spec.logging the collector goes away.
use std::time::Duration;

use iotposture::{
    api::{IoTSystem, Verdict},
    build::log_collector::Settings,
    controller::{secrets::READABLE_LABEL, shipping::ShippingOptions},
};
use iotposture_e2e::{
    OPERATOR_NAMESPACE, RunningOperator, TestNamespace, local_image,
    logstore::{self, LogStore},
    operator_client, plane_dir, wait_for_item, wait_until,
};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Pod, Secret},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// The collector's name in the operator's namespace, as the chart names it
/// for the release the tests' operator account belongs to.
const COLLECTOR: &str = "iotposture-e2e-log-collector";

/// A component pod that says `<nonce> line <n>` every second.
fn chatter(nonce: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "chatter", "labels": {"app": "chatter"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app", "image": local_image("toolbox"), "imagePullPolicy": "Never",
                "command": ["sh", "-c", format!("i=0; while true; do i=$((i+1)); echo \"{nonce} line $i\"; sleep 1; done")],
                "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"cpu": "50m", "memory": "32Mi"}},
            }],
        }
    }))
    .unwrap()
}

fn secret(name: &str, data: serde_json::Value) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {READABLE_LABEL: "true"}},
        "stringData": data,
    }))
    .unwrap()
}

fn system(name: &str, store: &LogStore, ca_secret: &str) -> IoTSystem {
    serde_json::from_value(json!({
        "apiVersion": "iotposture.dev/v1alpha1",
        "kind": "IoTSystem",
        "metadata": {"name": name},
        "spec": {
            "mode": "Enforce",
            "components": [{
                "name": "app", "role": "Aggregator",
                "selector": {"matchLabels": {"app": if name == "plant" { "chatter" } else { "nothing" }}},
            }],
            "logging": {
                "endpoint": store.otlp_logs_url(),
                "caSecret": ca_secret,
                "credentialsSecret": "logs-credentials",
                "queryUrl": format!("https://{}", store.addr),
                "retention": "7d",
            },
        }
    }))
    .unwrap()
}

/// Removes the collector's objects a failed earlier run may have left.
async fn remove_collector(admin: &kube::Client) {
    let dp = DeleteParams::default();
    let _ = Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .delete(COLLECTOR, &dp)
        .await;
    for name in [COLLECTOR.to_string(), format!("{COLLECTOR}-canary")] {
        let _ = Api::<ConfigMap>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
            .delete(&name, &dp)
            .await;
    }
    let _ = Api::<Secret>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .delete(COLLECTOR, &dp)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_logs_reach_the_store_and_iii1_passes_on_delivery_observed() {
    let ns = TestNamespace::new("shipping").await;
    remove_collector(&ns.client).await;
    // On the node's address, which pods reach.
    let store = LogStore::start(
        &logstore::victoria_logs_bin(),
        [10, 250, 0, 1].into(),
        &["logs.iotposture.test".to_string()],
    )
    .await;
    let secrets: Api<Secret> = ns.api();
    let pp = PostParams::default();
    secrets
        .create(&pp, &secret("logs-ca", json!({"ca.crt": store.ca_pem})))
        .await
        .unwrap();
    secrets
        .create(
            &pp,
            &secret(
                "logs-credentials",
                json!({"username": store.username, "password": store.password}),
            ),
        )
        .await
        .unwrap();
    let nonce = format!("shipped-{}", ns.name);
    ns.api::<Pod>().create(&pp, &chatter(&nonce)).await.unwrap();

    let mut options = RunningOperator::options(&ns, false);
    options.shipping = Some(ShippingOptions {
        collector: Settings {
            namespace: OPERATOR_NAMESPACE.into(),
            name: COLLECTOR.into(),
            image: local_image("log-collector"),
            pod_log_dir: std::fs::canonicalize(plane_dir().join("node/pod-logs"))
                .unwrap()
                .display()
                .to_string(),
            // The operator runs as this process, not in a pod.
            operator_pods: None,
        },
        interval: Duration::from_secs(2),
    });
    let operator = RunningOperator::start_as(&ns, operator_client().await, options).await;
    let systems: Api<IoTSystem> = ns.api();
    systems
        .create(&pp, &system("plant", &store, "logs-ca"))
        .await
        .unwrap();
    // A second system whose CA Secret does not exist: it fails alone.
    systems
        .create(&pp, &system("lab", &store, "missing-ca"))
        .await
        .unwrap();

    let evidence = wait_for_item(&systems, "plant", "III-1", Verdict::Pass, "read back").await;
    assert!(
        evidence.contains("the store keeps them for 7d (at least 7d)"),
        "{evidence}"
    );
    // The canary the operator gave the collector came back from the store.
    assert!(
        evidence.contains("a canary record given to the collector on every node came back"),
        "{evidence}"
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), OPERATOR_NAMESPACE);
    let canaries = config_maps
        .get(&format!("{COLLECTOR}-canary"))
        .await
        .unwrap();
    let line = canaries.data.unwrap_or_default()[&format!("{}.plant.log", ns.name)].clone();
    let nonce_of_canary = line
        .split('"')
        .nth(3)
        .expect("the canary line carries its nonce")
        .to_string();
    let canary = store
        .wait_for(&iotposture::logs::collector::canary_query(
            &ns.name,
            "plant",
            &nonce_of_canary,
            600,
        ))
        .await;
    assert_eq!(
        canary[0]["_msg"].as_str(),
        Some(line.trim_end()),
        "{canary:?}"
    );
    let lab = wait_for_item(&systems, "lab", "III-1", Verdict::Fail, "missing-ca").await;
    assert!(lab.contains("no such Secret"), "{lab}");

    // The pod's lines are in the store, with the Kubernetes attributes the
    // collector read from the log file's path.
    let found = store
        .wait_for(&format!(
            "\"{nonce} line\" \"iotposture.system\":=\"{}/plant\"",
            ns.name
        ))
        .await;
    let entry = &found[0];
    assert_eq!(entry["k8s.pod.name"], "chatter", "{entry}");
    assert_eq!(entry["k8s.container.name"], "app", "{entry}");
    assert_eq!(entry["k8s.namespace.name"], ns.name.as_str(), "{entry}");

    // The collector as the operator wrote it: read-only pod logs, no token,
    // not root.
    let daemon_sets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), OPERATOR_NAMESPACE);
    let ds = daemon_sets.get(COLLECTOR).await.unwrap();
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));

    // A wrong password: the collector rolls with it, the store refuses, III-1 fails.
    secrets
        .patch(
            "logs-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "wrong"}})),
        )
        .await
        .unwrap();
    wait_for_item(
        &systems,
        "plant",
        "III-1",
        Verdict::Fail,
        "failed to deliver records",
    )
    .await;
    secrets
        .patch(
            "logs-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": store.password}})),
        )
        .await
        .unwrap();
    wait_for_item(&systems, "plant", "III-1", Verdict::Pass, "read back").await;

    // Without spec.logging anywhere, the collector and its objects go.
    for name in ["plant", "lab"] {
        systems
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"logging": null}})),
            )
            .await
            .unwrap();
    }
    wait_for_item(&systems, "plant", "III-1", Verdict::Fail, "no spec.logging").await;
    wait_until("the collector removed", || async {
        daemon_sets
            .get_opt(COLLECTOR)
            .await
            .ok()
            .and_then(|d| d.is_none().then_some(()))
    })
    .await;
    // Deleted one after the other: the ConfigMaps and the Secret with the
    // stores' credentials may go a moment after the DaemonSet.
    let operator_secrets: Api<Secret> = Api::namespaced(ns.client.clone(), OPERATOR_NAMESPACE);
    wait_until("the collector's ConfigMaps and Secret removed", || async {
        let config = config_maps.get_opt(COLLECTOR).await.ok()?;
        let canaries = config_maps
            .get_opt(&format!("{COLLECTOR}-canary"))
            .await
            .ok()?;
        let secret = operator_secrets.get_opt(COLLECTOR).await.ok()?;
        (config.is_none() && canaries.is_none() && secret.is_none()).then_some(())
    })
    .await;

    operator.stop().await;
    remove_collector(&ns.client).await;
    ns.delete().await;
    drop(store);
}
