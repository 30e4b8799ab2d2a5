//! Defects an administrator would reject the operator for, each proven on
//! the real API server: granting through spec.access what the requester
//! could not grant (a confused deputy), admitting pods on the word of an
//! empty cache at start-up, and a dead webhook server that still looks ready.
use std::time::Duration;

use iotposture::{
    api::{IoTSystem, Subject, SubjectKind},
    probe::http,
};
use iotposture_e2e::{RunningOperator, TestNamespace, client_as, wait_until};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::{Namespace, Pod},
    rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::support::{factory, wait_ready};

fn subject(kind: SubjectKind, name: &str) -> Subject {
    Subject {
        kind,
        name: name.into(),
        namespace: None,
    }
}

fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Ok(o) => panic!("admitted: {o:?}"),
        Err(kube::Error::Api(status)) => status.message,
        Err(e) => panic!("unexpected error {e}"),
    }
}

async fn may(
    ns: &TestNamespace,
    user: &str,
    verb: &str,
    resource: &str,
    sub: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.name.clone()),
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                subresource: sub.map(String::from),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(ns.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_access_grants_only_what_the_requester_could_grant() {
    let ns = TestNamespace::new("escalate").await;
    let operator = RunningOperator::start_with_webhooks(&ns).await;
    // mallory may create, read and change IoTSystems here, and nothing else.
    ns.apply_manifest(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: systems-editor}
rules:
  - {apiGroups: [iotposture.dev], resources: [iotsystems], verbs: [get, list, watch, create, update, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: mallory-edits-systems}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: systems-editor}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}]
"#,
    )
    .await;
    let as_mallory: Api<IoTSystem> = Api::namespaced(client_as("mallory", &[]).await, &ns.name);
    let systems: Api<IoTSystem> = ns.api();

    // Naming herself admin is refused, with the subject, level and what she lacks.
    let mut takeover = factory("takeover");
    takeover.spec.access = Default::default();
    takeover.spec.access.admins = vec![subject(SubjectKind::User, "mallory")];
    let message = refusal(as_mallory.create(&PostParams::default(), &takeover).await);
    assert!(
        message.contains("spec.access.admins would give User mallory the admin role of this IoTSystem, which \"mallory\" cannot grant: they lack create configmaps"),
        "{message}"
    );
    assert!(
        message.contains("may not bind Role takeover-admin"),
        "{message}"
    );
    assert!(!may(&ns, "mallory", "get", "secrets", None).await);
    assert!(!may(&ns, "mallory", "create", "pods", Some("exec")).await);

    // Without access it is admitted; an update that adds an admin is checked
    // like a create.
    takeover.spec.access = Default::default();
    as_mallory
        .create(&PostParams::default(), &takeover)
        .await
        .expect("a system that grants nothing");
    let add_admin = json!({"spec": {"access": {"admins": [{"kind": "User", "name": "mallory"}]}}});
    let message = refusal(
        as_mallory
            .patch(
                "takeover",
                &PatchParams::default(),
                &Patch::Merge(&add_admin),
            )
            .await,
    );
    assert!(
        message.contains("spec.access.admins would give User mallory"),
        "{message}"
    );

    // A cluster administrator's own system is admitted, and bound.
    let mut own = factory("own");
    own.spec.access = Default::default();
    own.spec.access.admins = vec![subject(SubjectKind::User, "alice")];
    systems
        .create(&PostParams::default(), &own)
        .await
        .expect("an administrator may grant admin");
    wait_ready(&ns, "own", "True").await;
    assert!(may(&ns, "alice", "get", "secrets", None).await);

    // Delegation: `bind` on one system's viewer Role lets mallory name viewers
    // there, and nothing more.
    ns.apply_manifest(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: bind-takeover-viewer}
rules:
  - {apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [bind], resourceNames: [takeover-viewer]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: mallory-binds-viewers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: bind-takeover-viewer}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}]
"#,
    )
    .await;
    let add_viewer = json!({"spec": {"access": {"viewers": [{"kind": "User", "name": "vic"}]}}});
    as_mallory
        .patch(
            "takeover",
            &PatchParams::default(),
            &Patch::Merge(&add_viewer),
        )
        .await
        .expect("bind on the viewer Role delegates viewers");
    let message = refusal(
        as_mallory
            .patch(
                "takeover",
                &PatchParams::default(),
                &Patch::Merge(&add_admin),
            )
            .await,
    );
    assert!(
        message.contains("may not bind Role takeover-admin"),
        "{message}"
    );
    wait_ready(&ns, "takeover", "True").await;
    assert!(may(&ns, "vic", "list", "pods", None).await);

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_review_of_who_asked_no_subject_is_bound() {
    let ns = TestNamespace::new("unreviewed").await;
    // No webhooks, and not told that only administrators write IoTSystems.
    let mut options = RunningOperator::options(&ns, false);
    options.trust_unreviewed_access = false;
    let operator =
        RunningOperator::start_as(&ns, iotposture_e2e::operator_client().await, options).await;
    Api::<IoTSystem>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &factory("plant"))
        .await
        .unwrap();
    let system = wait_ready(&ns, "plant", "False").await;
    let ready = crate::support::ready_condition(&system);
    assert_eq!(ready.reason, "AccessNotReviewed");
    assert!(
        ready.message.contains("--trust-unreviewed-access"),
        "{}",
        ready.message
    );
    let bindings = ns
        .api::<RoleBinding>()
        .list(&Default::default())
        .await
        .unwrap();
    assert!(bindings.items.is_empty(), "bound without a review");
    operator.stop().await;
    ns.delete().await;
}

/// What the operator needs to manage one namespace, as a ClusterRole;
/// `roles` false leaves out reading Roles.
fn operator_permissions(name: &str, roles: bool) -> ClusterRole {
    let mut rules = vec![
        json!({"apiGroups": ["iotposture.dev"], "resources": ["iotsystems"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": ["iotposture.dev"], "resources": ["iotsystems/status"], "verbs": ["get", "patch", "update"]}),
        json!({"apiGroups": [""], "resources": ["pods", "services", "secrets"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch", "patch"]}),
        json!({"apiGroups": [""], "resources": ["serviceaccounts", "configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        json!({"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "list", "watch"]}),
        json!({"apiGroups": ["monitoring.coreos.com"], "resources": ["prometheusrules"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        json!({"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create", "update", "patch", "delete", "escalate", "bind"]}),
        json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": ["cert-manager.io"], "resources": ["certificates"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        json!({"apiGroups": ["wgpolicyk8s.io"], "resources": ["policyreports"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"], "verbs": ["get", "create", "update", "patch"]}),
        json!({"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}),
    ];
    if roles {
        rules.push(json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["get", "list", "watch"]}));
    }
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": rules,
    }))
    .unwrap()
}

fn bare_pod(name: &str, app: &str) -> Pod {
    serde_saphyr::from_str(&format!(
        "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, labels: {{app: {app}}}}}, spec: {{containers: [{{name: c, image: registry.example.com/broker:2.0.18, ports: [{{containerPort: 8883}}]}}]}}}}"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_admitted_on_the_word_of_an_empty_cache() {
    let ns = TestNamespace::new("startup").await;
    // A first operator registers the webhooks and labels the namespace, then
    // dies: its webhook configurations stay, as after a crash.
    let first = RunningOperator::start_with_webhooks(&ns).await;
    Api::<IoTSystem>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &factory("plant"))
        .await
        .unwrap();
    wait_ready(&ns, "plant", "True").await;
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    wait_until("the namespace labelled for admission", || async {
        let n = namespaces.get(&ns.name).await.ok()?;
        n.metadata
            .labels?
            .get("iotposture.dev/admission")
            .map(|_| ())
    })
    .await;
    let instance = first.crash().await.unwrap();

    // The second runs as an identity of its own that cannot list Roles yet:
    // its Role cache cannot fill, so it must never act as if it had.
    let identity = format!("iotposture-{}", ns.name);
    let roles: Api<ClusterRole> = Api::all(ns.client.clone());
    let apply = PatchParams::apply("iotposture-e2e").force();
    roles
        .patch(
            &identity,
            &apply,
            &Patch::Apply(operator_permissions(&identity, false)),
        )
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": identity},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": identity},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": identity}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(ns.client.clone())
        .patch(&identity, &apply, &Patch::Apply(&binding))
        .await
        .unwrap();
    let second = RunningOperator::launch(
        &ns,
        client_as(&identity, &[]).await,
        RunningOperator::options(&ns, true),
    );
    wait_until("the Role watch failing", || async {
        let problems = second.health.problems().join("; ");
        (problems.contains("caches not filled yet: Role")
            && second
                .metrics
                .encode()
                .contains("iotposture_watch_errors_total{kind=\"Role\"}"))
        .then_some(())
    })
    .await;

    // Its webhooks answer 503, whatever they are asked: the failure policy decides.
    let target = http::Target {
        name: "127.0.0.1".into(),
        addr: second.webhook_addr.unwrap(),
        tls: true,
    };
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": ns.name,
        "operation": "CREATE", "userInfo": {}, "object": serde_json::to_value(bare_pod("p", "mqtt-gateway")).unwrap()}})
    .to_string();
    let settings = http::Settings::default();
    let content_type = [(hyper::header::CONTENT_TYPE, "application/json".to_string())];
    for path in ["/mutate", "/validate"] {
        let answer = http::request(&target, &settings, "POST", path, &content_type, &review)
            .await
            .unwrap();
        assert_eq!(answer.status, 503, "{path}");
    }
    // Through the API server: a component pod is refused, every time, while
    // other pods do not depend on the operator at all.
    let pods: Api<Pod> = ns.api();
    for i in 0..5 {
        let message = refusal(
            pods.create(
                &PostParams::default(),
                &bare_pod(&format!("gw-{i}"), "mqtt-gateway"),
            )
            .await,
        );
        assert!(message.contains("failed calling webhook"), "{message}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let outsider = pods
        .create(
            &PostParams::default(),
            &bare_pod("outsider", "not-a-component"),
        )
        .await
        .expect("a pod of no component is not sent to the webhooks");
    assert!(
        outsider
            .metadata
            .annotations
            .is_none_or(|a| !a.contains_key("iotposture.dev/hardened"))
    );
    assert!(!second.health.is_ready());

    // Once it may read Roles it fills its caches, registers, and hardens.
    roles
        .patch(
            &identity,
            &apply,
            &Patch::Apply(operator_permissions(&identity, true)),
        )
        .await
        .unwrap();
    wait_until("the second operator ready", || async {
        second.health.is_ready().then_some(())
    })
    .await;
    let pod = wait_until("a component pod admitted, hardened", || async {
        pods.create(&PostParams::default(), &bare_pod("gw-late", "mqtt-gateway"))
            .await
            .ok()
    })
    .await;
    assert!(
        pod.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("iotposture.dev/hardened"),
        "admitted unhardened"
    );

    second.stop().await;
    RunningOperator::remove_webhooks(&ns.client, &instance).await;
    let _ = roles.delete(&identity, &DeleteParams::default()).await;
    let _ = Api::<ClusterRoleBinding>::all(ns.client.clone())
        .delete(&identity, &DeleteParams::default())
        .await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_server_that_cannot_serve_is_not_ready() {
    let ns = TestNamespace::new("deadhook").await;
    let mut options = RunningOperator::options(&ns, true);
    // Someone else holds the webhook port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    if let Some(admission) = options.admission.as_mut() {
        admission.listen = squatter.local_addr().unwrap();
    }
    let operator = RunningOperator::launch(&ns, iotposture_e2e::operator_client().await, options);
    wait_until("the webhook server reported down", || async {
        operator
            .health
            .problems()
            .iter()
            .any(|p| p == "admission webhook server is down")
            .then_some(())
    })
    .await;
    assert!(!operator.health.is_ready());
    drop(squatter);
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_schema_cannot_check_is_refused_at_admission() {
    // `from` takes a name or an object, which no structural schema can say:
    // the IoTSystem webhook refuses what the controller would, at the door.
    let ns = TestNamespace::new("admit-spec").await;
    let operator = RunningOperator::start_with_webhooks(&ns).await;
    let api = Api::<kube::core::DynamicObject>::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kube::core::ApiResource::erase::<IoTSystem>(&()),
    );
    let with_from = |name: &str, from: serde_json::Value| -> kube::core::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "iotposture.dev/v1alpha1", "kind": "IoTSystem",
            "metadata": {"name": name},
            "spec": {
                "components": [
                    {"name": "sensor", "role": "Sensor", "selector": {"matchLabels": {"app": "sensor"}}},
                    {"name": "gateway", "role": "Aggregator", "selector": {"matchLabels": {"app": "gateway"}},
                     "ports": [{"name": "mqtts", "port": 8883, "tls": true}]}
                ],
                "flows": [{"from": from, "to": "gateway", "port": "mqtts"}]
            }
        }))
        .unwrap()
    };
    for (name, from, expected) in [
        ("ghost", json!("ghost"), "flow 0 names component \"ghost\""),
        (
            "ghost-long",
            json!({"component": "ghost"}),
            "flow 0 names component \"ghost\"",
        ),
        (
            "number",
            json!(7),
            "flow 0: from must be one of a component name",
        ),
        (
            "extra",
            json!({"component": "sensor", "pod": "x"}),
            "flow 0: from must be one of a component name",
        ),
        (
            "both",
            json!({"component": "sensor", "ingress": true}),
            "flow 0: from must be one of a component name",
        ),
    ] {
        let message = refusal(
            api.create(&PostParams::default(), &with_from(name, from))
                .await,
        );
        assert!(
            message.contains("IoTSystem spec is invalid: "),
            "{name}: {message}"
        );
        assert!(message.contains(expected), "{name}: {message}");
    }
    api.create(&PostParams::default(), &with_from("short", json!("sensor")))
        .await
        .expect("the short form");
    wait_ready(&ns, "short", "True").await;
    operator.stop().await;
    ns.delete().await;
}
