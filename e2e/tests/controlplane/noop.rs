//! A reconcile with nothing to change writes nothing: proven by the API
//! server's own audit log, by resourceVersions and by the operator's write
//! counter, for every kind of child (Certificates and the PolicyReport
//! included), subjects of every kind, and both modes.
use std::{collections::BTreeMap, time::Duration};

use iotposture::api::{
    IoTSystem, IssuerKind, IssuerRef, KeyAlgorithm, Mode, Subject, SubjectKind, TlsPolicy,
    certmanager::certificate::Certificate,
};
use iotposture_e2e::{AuditLog, RunningOperator, TestNamespace, wait_until};
use k8s_openapi::api::{
    core::v1::{ConfigMap, ServiceAccount},
    networking::v1::NetworkPolicy,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    core::DynamicObject,
};
use serde_json::json;

use crate::support::{factory, wait_ready};

/// Every child's resourceVersion, by kind and name.
async fn versions(ns: &TestNamespace) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=iotposture");
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
    collect!(Certificate);
    let reports = Api::<DynamicObject>::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &iotposture::build::policy_report::api_resource(),
    );
    for o in reports.list(&lp).await.unwrap() {
        out.insert(
            format!("PolicyReport/{}", o.name_any()),
            o.resource_version().unwrap(),
        );
    }
    out
}

fn subject(kind: SubjectKind, name: &str, namespace: Option<&str>) -> Subject {
    Subject {
        kind,
        name: name.into(),
        namespace: namespace.map(String::from),
    }
}

#[tokio::test]
async fn a_reconcile_with_nothing_to_change_writes_nothing() {
    let ns = TestNamespace::new("noop").await;
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();

    // Enforce, with certificates and subjects of every kind: a ServiceAccount
    // subject's empty apiGroup is dropped by the API server, which an
    // incomplete comparison takes for a change on every reconcile.
    let mut enforced = factory("quiet");
    enforced.spec.tls = Some(TlsPolicy {
        issuer_ref: IssuerRef {
            kind: IssuerKind::ClusterIssuer,
            name: "factory-ca".into(),
        },
        renew_before: "720h".into(),
        duration: "2160h".into(),
        key_algorithm: KeyAlgorithm::ECDSA,
    });
    enforced.spec.access.admins = vec![
        subject(SubjectKind::Group, "factory-admins", None),
        subject(SubjectKind::ServiceAccount, "ops-bot", Some(&ns.name)),
    ];
    enforced.spec.access.operators = vec![
        subject(SubjectKind::User, "olga", None),
        subject(SubjectKind::ServiceAccount, "deployer", Some("ci")),
    ];
    enforced.spec.access.viewers = vec![subject(SubjectKind::ServiceAccount, "grafana", None)];
    // Audit, beside it, on pods of other labels.
    let mut audited: IoTSystem = serde_json::from_value(
        serde_json::to_value(factory("watched"))
            .unwrap()
            .to_string()
            .replace("\"app\":\"", "\"app\":\"audited-")
            .replace("\"values\":[\"", "\"values\":[\"audited-")
            .parse()
            .unwrap(),
    )
    .unwrap();
    audited.spec.mode = Mode::Audit;
    for system in [&enforced, &audited] {
        systems
            .create(&PostParams::default(), system)
            .await
            .unwrap();
    }
    wait_ready(&ns, "quiet", "True").await;
    wait_ready(&ns, "watched", "True").await;
    operator.settle(Duration::from_secs(2)).await;

    let before = versions(&ns).await;
    let kinds: std::collections::BTreeSet<&str> = before
        .keys()
        .map(|k| k.split('/').next().unwrap())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "Certificate",
            "ConfigMap",
            "NetworkPolicy",
            "PolicyReport",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ],
        "every kind of child is covered"
    );
    let statuses_before = (
        systems.get_status("quiet").await.unwrap().status,
        systems.get_status("watched").await.unwrap().status,
    );
    let writes_before = operator.metrics.writes_total();
    let reconciles_before = operator.metrics.reconciliations.get();
    let audit = AuditLog::default();
    let mark = audit.mark();

    // Touch the systems without changing their specs, three times: the
    // operator reconciles them again each time.
    for round in 0..3 {
        for name in ["quiet", "watched"] {
            systems
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touched": round.to_string()}}})),
                )
                .await
                .unwrap();
        }
        let seen = operator.metrics.reconciliations.get();
        wait_until("another reconcile", || async {
            (operator.metrics.reconciliations.get() >= seen.max(reconciles_before) + 2)
                .then_some(())
        })
        .await;
    }
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
        (
            systems.get_status("quiet").await.unwrap().status,
            systems.get_status("watched").await.unwrap().status,
        ),
        statuses_before
    );
    let writes: Vec<_> = audit
        .writes_since(mark, &ns.name)
        .into_iter()
        // The test's own annotation patches.
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
