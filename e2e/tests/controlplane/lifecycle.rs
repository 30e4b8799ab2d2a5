//! What the operator keeps about a system goes with it, however it goes:
//! here its whole namespace is deleted while reconciles and probes run.
use std::{collections::HashMap, time::Duration};

use iotposture::api::IoTSystem;
use iotposture_e2e::{RunningOperator, TestNamespace, wait_until};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::support::{factory, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_and_writes_stop_when_the_namespace_goes() {
    let ns = TestNamespace::new("goner").await;
    // Probes on, so TLS series exist too (no Service: probed as a fault).
    let operator = RunningOperator::start_with_probes(&ns, HashMap::new()).await;
    let systems: Api<IoTSystem> = ns.api();
    let names = ["one", "two", "three"];
    for name in names {
        systems
            .create(&PostParams::default(), &factory(name))
            .await
            .unwrap();
    }
    for name in names {
        wait_ready(&ns, name, "True").await;
    }
    let ours = format!("namespace=\"{}\"", ns.name);
    wait_until("verdict and TLS series of the three systems", || async {
        let text = operator.metrics.encode();
        let tls = text
            .lines()
            .filter(|l| l.starts_with("iotposture_tls_handshake_ok") && l.contains(&ours))
            .count();
        let verdicts = text
            .lines()
            .filter(|l| l.starts_with("iotposture_checklist_compliance_ratio") && l.contains(&ours))
            .count();
        (tls == 6 && verdicts == 3).then_some(())
    })
    .await;

    // Reconciles under way (each system touched) as the namespace goes.
    for name in names {
        systems
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touched": "1"}}})),
            )
            .await
            .unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();
    // What was in flight may finish; after that nothing more is written there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = operator.metrics.writes_total();
    wait_until("the namespace gone", || async {
        namespaces
            .get_opt(&ns.name)
            .await
            .ok()
            .and_then(|n| n.is_none().then_some(()))
    })
    .await;
    assert_eq!(
        operator.metrics.writes_total(),
        writes,
        "writes into a terminating namespace:\n{}",
        operator.metrics.encode()
    );
    wait_until("every series of the namespace gone", || async {
        (!operator.metrics.encode().contains(&ours)).then_some(())
    })
    .await;
    // And they stay gone: a late probe round or reconcile brings none back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = operator.metrics.encode();
    assert!(!text.contains(&ours), "{text}");
    operator.stop().await;
}
