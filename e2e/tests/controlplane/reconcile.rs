//! The operator creates, keeps and prunes a system's objects on the real API server.
use std::collections::BTreeSet;

use iotposture::{
    api::{
        IoTSystem, Mode, certmanager::certificate::Certificate,
        monitoring::prometheusrule::PrometheusRule,
    },
    build::policy_report,
};
use iotposture_e2e::{RunningOperator, TestNamespace, wait_until};
use k8s_openapi::api::{
    core::v1::ServiceAccount,
    networking::v1::NetworkPolicy,
    rbac::v1::{PolicyRule, Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::support::{factory, ready_condition, wait_event, wait_ready};

async fn names<K>(api: &Api<K>, system: &str) -> BTreeSet<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let lp = ListParams::default().labels(&format!("iotposture.dev/system={system}"));
    api.list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn creates_restores_and_prunes_children() {
    let ns = TestNamespace::new("reconcile").await;
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    systems
        .create(&PostParams::default(), &factory("factory"))
        .await
        .unwrap();

    let system = wait_ready(&ns, "factory", "True").await;
    let ready = ready_condition(&system);
    assert_eq!(ready.reason, "Reconciled");
    let status = system.status.as_ref().unwrap();
    assert_eq!(status.component_count, 3);
    // ServiceAccounts, Roles, RoleBindings, NetworkPolicies, the gateway
    // ConfigMap and the alert rules' PrometheusRule.
    assert_eq!(status.managed_objects.len(), 3 + 3 + 2 + 6 + 1 + 1);
    assert!(
        wait_event(&ns, "factory", "Applied")
            .await
            .contains("16 applied")
    );
    // What `kubectl get iots` shows, as the README says.
    let (ok, table, err) = ns.kubectl(&["get", "iots"], "").await;
    assert!(ok, "{err}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "MODE", "COMPONENTS", "READY", "COMPLIANT", "AGE"]
    );
    let compliant = status.compliant.as_deref().unwrap();
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .contains(&format!(" {compliant} ")),
        "{table}"
    );

    let accounts: Api<ServiceAccount> = ns.api();
    let roles: Api<Role> = ns.api();
    let bindings: Api<RoleBinding> = ns.api();
    let policies: Api<NetworkPolicy> = ns.api();
    assert_eq!(
        names(&accounts, "factory").await,
        set(&[
            "factory-line-sensor",
            "factory-gateway",
            "factory-dashboard"
        ])
    );
    assert_eq!(
        names(&roles, "factory").await,
        set(&["factory-admin", "factory-operator", "factory-viewer"])
    );
    assert_eq!(
        names(&bindings, "factory").await,
        set(&["factory-admin", "factory-viewer"])
    );
    assert_eq!(names(&policies, "factory").await.len(), 6);
    let configs: Api<k8s_openapi::api::core::v1::ConfigMap> = ns.api();
    assert_eq!(
        names(&configs, "factory").await,
        set(&["factory-dashboard-gateway"])
    );
    // The plane serves the Prometheus Operator's CRD: the alert rules are a
    // PrometheusRule, not a rules-file ConfigMap.
    let rules: Api<PrometheusRule> = ns.api();
    assert_eq!(
        names(&rules, "factory").await,
        set(&["factory-alert-rules"])
    );

    // Every child is owned by the system, so the garbage collector removes it with it.
    let sa = accounts.get("factory-gateway").await.unwrap();
    let owner = &sa.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("IoTSystem", system.uid().unwrap().as_str())
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(sa.automount_service_account_token, Some(false));
    assert!(
        sa.managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("iotposture")
                && f.operation.as_deref() == Some("Apply")),
        "applied server-side by the iotposture field manager"
    );

    // A deleted child comes back.
    policies
        .delete("factory-gateway-default-deny", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the deleted NetworkPolicy restored", || async {
        let p = policies
            .get_opt("factory-gateway-default-deny")
            .await
            .ok()??;
        p.metadata.deletion_timestamp.is_none().then_some(())
    })
    .await;

    // An edited child is put back as built.
    let mut viewer = roles.get("factory-viewer").await.unwrap();
    viewer.rules.get_or_insert_with(Vec::new).push(PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        verbs: vec!["get".into()],
        ..PolicyRule::default()
    });
    roles
        .replace("factory-viewer", &PostParams::default(), &viewer)
        .await
        .unwrap();
    wait_until("the viewer Role restored without Secrets", || async {
        let r = roles.get("factory-viewer").await.ok()?;
        let grants_secrets = r
            .rules
            .iter()
            .flatten()
            .any(|rule| rule.resources.iter().flatten().any(|x| x == "secrets"));
        (!grants_secrets).then_some(())
    })
    .await;

    // With certificates: every kind of child, edited by someone else, is
    // put back as built.
    systems
        .patch(
            "factory",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tls": {
                "issuerRef": {"kind": "ClusterIssuer", "name": "factory-ca"},
            }}})),
        )
        .await
        .unwrap();
    let certificates: Api<Certificate> = ns.api();
    wait_until("the TLS ports' Certificates", || async {
        (names(&certificates, "factory").await.len() == 2).then_some(())
    })
    .await;
    let certificate = names(&certificates, "factory").await.pop_first().unwrap();
    let pp = PatchParams::default();
    let edit = |value| Patch::Merge(value);
    accounts
        .patch(
            "factory-gateway",
            &pp,
            &edit(json!({"automountServiceAccountToken": true})),
        )
        .await
        .unwrap();
    configs
        .patch(
            "factory-dashboard-gateway",
            &pp,
            &edit(json!({"data": {"foreign": "x"}})),
        )
        .await
        .unwrap();
    let intruder = json!({"subjects": [{"kind": "User", "name": "intruder", "apiGroup": "rbac.authorization.k8s.io"}]});
    bindings
        .patch("factory-admin", &pp, &edit(intruder))
        .await
        .unwrap();
    certificates
        .patch(
            &certificate,
            &pp,
            &edit(json!({"spec": {"dnsNames": ["elsewhere.example.com"]}})),
        )
        .await
        .unwrap();
    wait_until("every edited child put back", || async {
        let sa = accounts.get("factory-gateway").await.ok()?;
        let cm = configs.get("factory-dashboard-gateway").await.ok()?;
        let rb = bindings.get("factory-admin").await.ok()?;
        let cert = certificates.get(&certificate).await.ok()?;
        (sa.automount_service_account_token == Some(false)
            && !cm.data.unwrap_or_default().contains_key("foreign")
            && !rb
                .subjects
                .unwrap_or_default()
                .iter()
                .any(|s| s.name == "intruder")
            && !cert
                .spec
                .dns_names
                .unwrap_or_default()
                .iter()
                .any(|d| d == "elsewhere.example.com"))
        .then_some(())
    })
    .await;

    // A component removed from the spec loses its objects; a flow removed
    // loses its rule; without a TLS policy the Certificates go.
    systems
        .patch(
            "factory",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "components": factory("x").spec.components[1..].to_vec(),
                "flows": factory("x").spec.flows[1..].to_vec(),
                "access": {"admins": [{"kind": "Group", "name": "factory-admins"}], "viewers": []},
                "tls": null,
            }})),
        )
        .await
        .unwrap();
    let system = wait_ready(&ns, "factory", "True").await;
    assert_eq!(system.status.unwrap().component_count, 2);
    wait_until("the sensor's objects pruned", || async {
        let left = names(&accounts, "factory").await;
        let pols = names(&policies, "factory").await;
        let binds = names(&bindings, "factory").await;
        (left == set(&["factory-gateway", "factory-dashboard"])
            && pols.len() == 4
            && binds == set(&["factory-admin"])
            && names(&certificates, "factory").await.is_empty())
        .then_some(())
    })
    .await;
    assert!(
        wait_event(&ns, "factory", "Pruned")
            .await
            .contains("ServiceAccount/factory-line-sensor")
    );

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn audit_mode_plans_without_applying() {
    let ns = TestNamespace::new("audit").await;
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    let mut audited = factory("audited");
    audited.spec.mode = Mode::Audit;
    systems
        .create(&PostParams::default(), &audited)
        .await
        .unwrap();

    let system = wait_ready(&ns, "audited", "True").await;
    assert_eq!(ready_condition(&system).reason, "AuditOnly");
    let planned = &system.status.as_ref().unwrap().managed_objects;
    assert_eq!(planned.len(), 16);
    assert!(planned.iter().all(|m| !m.applied));
    let accounts: Api<ServiceAccount> = ns.api();
    let policies: Api<NetworkPolicy> = ns.api();
    assert!(names(&accounts, "audited").await.is_empty());
    assert!(names(&policies, "audited").await.is_empty());

    // Enforce applies, and going back to Audit removes what Enforce made.
    let set_mode = |mode: &'static str| {
        let systems = systems.clone();
        async move {
            systems
                .patch(
                    "audited",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"mode": mode}})),
                )
                .await
                .unwrap();
        }
    };
    set_mode("Enforce").await;
    let system = wait_ready(&ns, "audited", "True").await;
    assert_eq!(ready_condition(&system).reason, "Reconciled");
    assert_eq!(names(&policies, "audited").await.len(), 6);
    set_mode("Audit").await;
    wait_until("Audit removes the enforced objects", || async {
        (names(&policies, "audited").await.is_empty()
            && names(&accounts, "audited").await.is_empty())
        .then_some(())
    })
    .await;

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn someone_elses_objects_of_the_same_names_are_left_alone() {
    // One kind whose cache holds every object (ServiceAccounts) and those
    // whose caches hold only labelled ones (ConfigMaps, PrometheusRules,
    // PolicyReports: made by a create, which never touches an existing
    // object): none is taken over.
    let ns = TestNamespace::new("not-ours").await;
    let accounts: Api<ServiceAccount> = ns.api();
    let configs: Api<k8s_openapi::api::core::v1::ConfigMap> = ns.api();
    let account: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "factory-gateway", "labels": {"team": "plant"}},
        "automountServiceAccountToken": true,
    }))
    .unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let config: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "factory-dashboard-gateway"},
        "data": {"owner": "someone else"},
    }))
    .unwrap();
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    let rules: Api<PrometheusRule> = ns.api();
    let rule: PrometheusRule = serde_json::from_value(json!({
        "metadata": {"name": "factory-alert-rules"},
        "spec": {"groups": [{"name": "plant", "rules": []}]},
    }))
    .unwrap();
    rules.create(&PostParams::default(), &rule).await.unwrap();
    let reports: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &policy_report::api_resource());
    let mut report = DynamicObject::new("iotposture-factory", &policy_report::api_resource());
    report.data = json!({"summary": {"pass": 7}});
    reports
        .create(&PostParams::default(), &report)
        .await
        .unwrap();

    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    systems
        .create(&PostParams::default(), &factory("factory"))
        .await
        .unwrap();
    let system = wait_ready(&ns, "factory", "False").await;
    let ready = ready_condition(&system);
    assert_eq!(ready.reason, "NameConflict", "{}", ready.message);
    assert!(
        ready
            .message
            .contains("ConfigMap \"factory-dashboard-gateway\" already exists and does not belong")
            && ready.message.contains("(and 2 more failures)"),
        "{}",
        ready.message
    );
    // The PolicyReport is written after the status: once its conflict has
    // failed a reconcile, the operator has tried to make it.
    let text = wait_until("the PolicyReport's conflict", || async {
        let text = operator.metrics.encode();
        (text.contains(r#"iotposture_api_writes_total{kind="PolicyReport",verb="create"}"#)
            && text.contains(r#"iotposture_reconcile_errors_total{reason="NameConflict"}"#))
        .then_some(text)
    })
    .await;
    assert!(
        !text.contains(r#"kind="PolicyReport",verb="update""#),
        "{text}"
    );
    let report = reports.get("iotposture-factory").await.unwrap();
    assert!(report.owner_references().is_empty() && report.labels().is_empty());
    assert_eq!(report.data["summary"], json!({"pass": 7}));
    let rule = rules.get("factory-alert-rules").await.unwrap();
    assert!(rule.owner_references().is_empty() && rule.labels().is_empty());
    assert_eq!(rule.spec.groups.unwrap_or_default()[0].name, "plant");

    let account = accounts.get("factory-gateway").await.unwrap();
    assert!(account.owner_references().is_empty());
    assert_eq!(
        account.labels().clone(),
        [("team".to_string(), "plant".to_string())].into()
    );
    assert_eq!(account.automount_service_account_token, Some(true));
    let config = configs.get("factory-dashboard-gateway").await.unwrap();
    assert!(config.owner_references().is_empty() && config.labels().is_empty());
    assert_eq!(
        config
            .data
            .unwrap_or_default()
            .get("owner")
            .map(String::as_str),
        Some("someone else")
    );
    // The system's other children are in place all the same.
    assert!(
        accounts
            .get_opt("factory-line-sensor")
            .await
            .unwrap()
            .is_some()
    );
    operator.stop().await;
    ns.delete().await;
}
