//! A reconcile with nothing to change writes nothing: proven by the API
//! server's own audit log, by resourceVersions and by the operator's write counter.
use std::{collections::BTreeMap, time::Duration};

use iotposture::api::IoTSystem;
use iotposture_e2e::{AuditLog, RunningOperator, TestNamespace, wait_until};
use k8s_openapi::api::{
    core::v1::{ConfigMap, ServiceAccount},
    networking::v1::NetworkPolicy,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::support::{factory, wait_ready};

async fn versions(ns: &iotposture_e2e::TestNamespace) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels("iotposture.dev/system=quiet");
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($kind:ty) => {
            for o in ns.api::<$kind>().list(&lp).await.unwrap() {
                out.insert(
                    format!("{}/{}", stringify!($kind), o.name_any()),
                    o.resource_version().unwrap(),
                );
            }
        };
    }
    collect!(ServiceAccount);
    collect!(Role);
    collect!(RoleBinding);
    collect!(NetworkPolicy);
    collect!(ConfigMap);
    out
}

#[tokio::test]
async fn a_reconcile_with_nothing_to_change_writes_nothing() {
    let ns = TestNamespace::new("noop").await;
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    systems
        .create(&PostParams::default(), &factory("quiet"))
        .await
        .unwrap();
    wait_ready(&ns, "quiet", "True").await;
    operator.settle(Duration::from_secs(2)).await;

    let before = versions(&ns).await;
    assert_eq!(before.len(), 15);
    let status_before = systems.get_status("quiet").await.unwrap().status;
    let writes_before = operator.metrics.writes_total();
    let reconciles_before = operator.metrics.reconciliations.get();
    let audit = AuditLog::default();
    let mark = audit.mark();

    // Touch the system without changing its spec: the operator reconciles it again.
    systems
        .patch(
            "quiet",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touched": "yes"}}})),
        )
        .await
        .unwrap();
    wait_until("another reconcile", || async {
        (operator.metrics.reconciliations.get() > reconciles_before).then_some(())
    })
    .await;
    // Give a stray write time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(
        operator.metrics.writes_total(),
        writes_before,
        "the operator sent write requests:\n{}",
        operator.metrics.encode()
    );
    assert_eq!(versions(&ns).await, before, "a child object changed");
    assert_eq!(
        systems.get_status("quiet").await.unwrap().status,
        status_before
    );
    let writes: Vec<_> = audit
        .writes_since(mark, &ns.name)
        .into_iter()
        // The test's own annotation patch.
        .filter(|e| {
            !(e["objectRef"]["resource"] == "iotsystems"
                && e["objectRef"].get("subresource").is_none())
        })
        .map(|e| {
            format!(
                "{} {} {}",
                e["verb"], e["objectRef"]["resource"], e["objectRef"]["name"]
            )
        })
        .collect();
    assert!(
        writes.is_empty(),
        "the API server logged writes: {writes:?}"
    );

    operator.stop().await;
    ns.delete().await;
}
