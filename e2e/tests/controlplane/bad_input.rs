//! Bad input never stops the controller: an invalid system gets Ready=False with
//! a reason and a Warning Event, while a valid one beside it is reconciled.
use iotposture::api::{IoTSystem, Subject, SubjectKind};
use iotposture_e2e::{RunningOperator, TestNamespace, wait_until};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};

use crate::support::{factory, ready_condition, wait_event, wait_ready};

const SENSOR_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: line-sensor-0, labels: {app: line-sensor}}
spec:
  containers: [{name: sensor, image: registry.example.com/sensor:1.0}]
"#;

#[tokio::test]
async fn invalid_systems_do_not_stop_valid_ones() {
    let ns = TestNamespace::new("bad").await;
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    ns.apply_yaml::<Pod>(SENSOR_POD).await;

    // The first system takes the sensor pod.
    systems
        .create(&PostParams::default(), &factory("first"))
        .await
        .unwrap();
    wait_ready(&ns, "first", "True").await;

    // A later system whose selector takes the same pod is refused...
    let mut intruder = factory("intruder");
    intruder.spec.components.truncate(1);
    intruder.spec.flows.clear();
    systems
        .create(&PostParams::default(), &intruder)
        .await
        .unwrap();
    // ...and so is one that would hand the system to every authenticated user.
    let mut open = factory("open");
    for c in &mut open.spec.components {
        c.selector.match_labels = Some([("app".to_string(), format!("open-{}", c.name))].into());
        c.selector.match_expressions = None;
    }
    open.spec.access.admins = vec![Subject {
        kind: SubjectKind::Group,
        name: "system:authenticated".into(),
        namespace: None,
    }];
    systems.create(&PostParams::default(), &open).await.unwrap();
    // A valid system created after the bad ones is reconciled normally.
    let mut good = factory("good");
    for c in &mut good.spec.components {
        c.selector.match_labels = Some([("app".to_string(), format!("good-{}", c.name))].into());
        c.selector.match_expressions = None;
    }
    systems.create(&PostParams::default(), &good).await.unwrap();

    let intruder = wait_ready(&ns, "intruder", "False").await;
    let ready = ready_condition(&intruder);
    assert_eq!(ready.reason, "SelectorConflict");
    assert!(
        ready.message.contains("line-sensor-0") && ready.message.contains("\"first\""),
        "{}",
        ready.message
    );
    assert!(
        wait_event(&ns, "intruder", "SelectorConflict")
            .await
            .contains("line-sensor-0")
    );

    let open = wait_ready(&ns, "open", "False").await;
    assert_eq!(ready_condition(&open).reason, "UnbindableSubject");
    assert!(
        ready_condition(&open)
            .message
            .contains("system:authenticated")
    );
    wait_event(&ns, "open", "UnbindableSubject").await;

    let good = wait_ready(&ns, "good", "True").await;
    assert_eq!(ready_condition(&good).reason, "Reconciled");
    let accounts: Api<ServiceAccount> = ns.api();
    assert!(accounts.get_opt("good-gateway").await.unwrap().is_some());
    // The refused systems created nothing.
    assert!(
        accounts
            .get_opt("intruder-line-sensor")
            .await
            .unwrap()
            .is_none()
    );
    assert!(accounts.get_opt("open-gateway").await.unwrap().is_none());

    // A valid system whose spec turns invalid keeps its last verdicts, with
    // their evidence as the server had it: the cache holds only
    // fingerprints of it, which must never be written.
    let judged = good.status.clone().unwrap().items;
    assert!(!judged.is_empty());
    systems
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"access": {"admins": [
                {"kind": "Group", "name": "system:authenticated"}
            ]}}})),
        )
        .await
        .unwrap();
    let turned = wait_ready(&ns, "good", "False").await;
    assert_eq!(ready_condition(&turned).reason, "UnbindableSubject");
    let kept = turned.status.unwrap().items;
    let ids = |items: &[iotposture::api::ItemStatus]| -> Vec<String> {
        items.iter().map(|i| i.id.clone()).collect()
    };
    assert_eq!(ids(&kept), ids(&judged));
    for item in &kept {
        assert!(
            !item.evidence.is_empty() && !item.evidence.starts_with('\0'),
            "{item:?}"
        );
    }

    // Once the first system is gone, the intruder's claim is no longer contested.
    systems
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    let intruder = wait_ready(&ns, "intruder", "True").await;
    assert_eq!(ready_condition(&intruder).reason, "Reconciled");

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn objects_of_others_are_not_taken_over() {
    let ns = TestNamespace::new("conflict").await;
    let operator = RunningOperator::start(&ns).await;
    // Someone else's ServiceAccount with the name the operator would use.
    ns.apply_yaml::<ServiceAccount>(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: taken-gateway}\n",
    )
    .await;
    let systems: Api<IoTSystem> = ns.api();
    systems
        .create(&PostParams::default(), &factory("taken"))
        .await
        .unwrap();

    let system = wait_ready(&ns, "taken", "False").await;
    let ready = ready_condition(&system);
    assert_eq!(ready.reason, "NameConflict");
    assert!(ready.message.contains("taken-gateway"), "{}", ready.message);
    wait_event(&ns, "taken", "NameConflict").await;
    let sa = ns
        .api::<ServiceAccount>()
        .get("taken-gateway")
        .await
        .unwrap();
    assert!(sa.metadata.owner_references.is_none(), "left as it was");

    // Removing the foreign object lets the system converge on the next retry.
    ns.api::<ServiceAccount>()
        .delete("taken-gateway", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the system converges", || async {
        let s = systems.get("taken").await.ok()?;
        (ready_condition(&s).status == "True").then_some(())
    })
    .await;

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn gateway_settings_are_refused_naming_the_field_never_dropped() {
    let ns = TestNamespace::new("gwbad").await;
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    // Through the API server's schema: a login path that would break out of
    // the configuration's quotes is refused at the door.
    let mut quoted = factory("quoted");
    quoted.spec.components[2].http = Some(Box::new(iotposture::api::HttpSettings {
        login_path: Some("/login\" deny".into()),
        ..Default::default()
    }));
    let refused = systems.create(&PostParams::default(), &quoted).await;
    let Err(kube::Error::Api(status)) = refused else {
        panic!("admitted: {refused:?}")
    };
    assert!(status.message.contains("loginPath"), "{}", status.message);

    // What the schema cannot say is the controller's: Ready=False naming the
    // field, and no gateway configuration without it.
    let mut untyped = factory("untyped");
    untyped.spec.components[2].http = Some(Box::new(iotposture::api::HttpSettings {
        login_path: Some("/login".into()),
        allowed_content_types: vec!["application/json".into(), "json".into()],
        ..Default::default()
    }));
    systems
        .create(&PostParams::default(), &untyped)
        .await
        .unwrap();
    let system = wait_ready(&ns, "untyped", "False").await;
    let ready = ready_condition(&system);
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains(
            "component \"dashboard\": http.allowedContentTypes[1] \"json\": must be a media type"
        ),
        "{}",
        ready.message
    );
    assert!(
        ns.api::<k8s_openapi::api::core::v1::ConfigMap>()
            .get_opt("untyped-dashboard-gateway")
            .await
            .unwrap()
            .is_none()
    );
    operator.stop().await;
    ns.delete().await;
}
