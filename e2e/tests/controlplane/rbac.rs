//! The access matrix of the three roles, judged by the real API server's RBAC
//! authorizer through SubjectAccessReviews (checklist items I-7, I-8, I-9, III-6).
use iotposture::api::{IoTSystem, Subject, SubjectKind};
use iotposture_e2e::{RunningOperator, TestNamespace, wait_until};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, api::PostParams};
use std::time::Duration;

use crate::support::{factory, wait_ready};

struct Ask<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: Option<&'a str>,
}

const fn ask<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Ask<'a> {
    Ask {
        verb,
        group,
        resource,
        subresource: None,
    }
}

const fn sub<'a>(verb: &'a str, resource: &'a str, subresource: &'a str) -> Ask<'a> {
    Ask {
        verb,
        group: "",
        resource,
        subresource: Some(subresource),
    }
}

async fn allowed(ns: &TestNamespace, user: &str, groups: &[&str], a: &Ask<'_>) -> bool {
    let reviews: Api<SubjectAccessReview> = Api::all(ns.client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.name.clone()),
                verb: Some(a.verb.into()),
                group: Some(a.group.into()),
                resource: Some(a.resource.into()),
                subresource: a.subresource.map(String::from),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

#[tokio::test]
async fn admin_operator_viewer_matrix_holds() {
    let ns = TestNamespace::new("rbac").await;
    let operator = RunningOperator::start(&ns).await;
    let mut system = factory("matrix");
    let subject = |kind, name: &str| Subject {
        kind,
        name: name.into(),
        namespace: None,
    };
    system.spec.access.admins = vec![subject(SubjectKind::Group, "plant-admins")];
    system.spec.access.operators = vec![subject(SubjectKind::User, "olga")];
    system.spec.access.viewers = vec![
        subject(SubjectKind::User, "victor"),
        subject(SubjectKind::ServiceAccount, "grafana"),
    ];
    Api::<IoTSystem>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &system)
        .await
        .unwrap();
    wait_ready(&ns, "matrix", "True").await;

    let admin = ("alice", vec!["plant-admins"]);
    let operator_user = ("olga", vec![]);
    let viewer = ("victor", vec![]);
    let sa_viewer = (format!("system:serviceaccount:{}:grafana", ns.name), vec![]);
    let stranger = ("mallory", vec!["some-other-team"]);

    // (who, question, expected)
    let read_secrets = ask("get", "", "secrets");
    let list_secrets = ask("list", "", "secrets");
    let read_config = ask("get", "", "configmaps");
    let exec = sub("create", "pods", "exec");
    let logs = sub("get", "pods", "log");
    let list_pods = ask("list", "", "pods");
    let delete_pods = ask("delete", "", "pods");
    let scale = Ask {
        verb: "update",
        group: "apps",
        resource: "deployments",
        subresource: Some("scale"),
    };
    let edit_system = ask("update", "iotposture.dev", "iotsystems");
    let edit_policy = ask("update", "networking.k8s.io", "networkpolicies");

    let matrix: Vec<(&str, &[&str], &Ask, bool)> = vec![
        (admin.0, &admin.1, &read_secrets, true),
        (admin.0, &admin.1, &exec, true),
        (admin.0, &admin.1, &edit_system, true),
        // The operator owns the policies; nobody edits them by hand.
        (admin.0, &admin.1, &edit_policy, false),
        (operator_user.0, &operator_user.1, &read_secrets, false),
        (operator_user.0, &operator_user.1, &read_config, false),
        (operator_user.0, &operator_user.1, &exec, false),
        (operator_user.0, &operator_user.1, &logs, true),
        (operator_user.0, &operator_user.1, &scale, true),
        (operator_user.0, &operator_user.1, &delete_pods, true),
        (operator_user.0, &operator_user.1, &edit_system, false),
        (viewer.0, &viewer.1, &list_pods, true),
        (viewer.0, &viewer.1, &read_secrets, false),
        (viewer.0, &viewer.1, &list_secrets, false),
        (viewer.0, &viewer.1, &read_config, false),
        (viewer.0, &viewer.1, &exec, false),
        (viewer.0, &viewer.1, &logs, false),
        (viewer.0, &viewer.1, &delete_pods, false),
        (viewer.0, &viewer.1, &scale, false),
        (&sa_viewer.0, &sa_viewer.1, &list_pods, true),
        (&sa_viewer.0, &sa_viewer.1, &read_secrets, false),
        (stranger.0, &stranger.1, &list_pods, false),
    ];
    let mut wrong = Vec::new();
    for (user, groups, question, expected) in matrix {
        let got = allowed(&ns, user, groups, question).await;
        if got != expected {
            wrong.push(format!(
                "{user} {} {}/{}{}: expected {expected}, got {got}",
                question.verb,
                question.group,
                question.resource,
                question
                    .subresource
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC matrix differs:\n{}",
        wrong.join("\n")
    );

    operator.stop().await;
    ns.delete().await;
}

/// A user's RoleBinding to a Role that a system makes later: once that
/// system makes it, every system of the namespace is judged again (VII-2
/// reads the Role's rules through the binding), not only the system the Role
/// belongs to, and not only at the next resync (10 minutes).
#[tokio::test]
async fn a_system_role_someone_bound_is_judged_for_every_system_in_the_namespace() {
    let ns = TestNamespace::new("bound-role").await;
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    let pp = PostParams::default();
    systems.create(&pp, &factory("line-b")).await.unwrap();
    wait_ready(&ns, "line-b", "True").await;

    // The intern is bound to line-a's operator Role before line-a exists:
    // a Role nobody has made grants nothing yet. Once line-b has been judged
    // with the binding (its reconciles have settled), line-a comes.
    let started = operator.metrics.reconciliations.get();
    ns.apply_manifest(INTERN_BINDING).await;
    wait_until("line-b judged with the binding", || async {
        let seen = operator.metrics.reconciliations.get();
        tokio::time::sleep(Duration::from_secs(2)).await;
        (seen > started && operator.metrics.reconciliations.get() == seen).then_some(())
    })
    .await;
    let evidence = |name: &'static str| {
        let systems = systems.clone();
        async move {
            let s = systems.get(name).await.ok()?;
            let item = s.status?.items.into_iter().find(|i| i.id == "VII-2")?;
            Some(item.evidence)
        }
    };
    let before = evidence("line-b").await.unwrap();
    assert!(!before.contains("intern"), "{before}");

    // No subjects: line-a makes its Roles but no RoleBinding of its own,
    // whose appearance would re-judge the namespace by itself.
    let mut line_a = factory("line-a");
    line_a.spec.access = Default::default();
    systems.create(&pp, &line_a).await.unwrap();
    wait_ready(&ns, "line-a", "True").await;
    for name in ["line-a", "line-b"] {
        wait_until(&format!("{name}'s VII-2 names the intern"), || async {
            evidence(name).await.filter(|e| {
                e.contains("RoleBinding intern-logs lets User intern read pods/log through Role line-a-operator")
            })
        })
        .await;
    }

    operator.stop().await;
    ns.delete().await;
}

const INTERN_BINDING: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: intern-logs}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: line-a-operator}
subjects: [{kind: User, name: intern, apiGroup: rbac.authorization.k8s.io}]
"#;
