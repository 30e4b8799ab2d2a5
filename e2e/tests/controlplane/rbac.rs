//! The access matrix of the three roles, judged by the real API server's RBAC
//! authorizer through SubjectAccessReviews (checklist items I-7, I-8, I-9, III-6).
use iotposture::api::{IoTSystem, Subject, SubjectKind};
use iotposture_e2e::{RunningOperator, TestNamespace};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, api::PostParams};

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
