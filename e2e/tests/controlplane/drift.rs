//! Our objects as others leave them: a field someone else adds is removed,
//! the checklist judges the object as it is in the cluster until then, and
//! one kind that cannot be written holds back no other. The operator is kept
//! from writing by a ValidatingAdmissionPolicy on its identity, the real API
//! server's own way to refuse a request.
use iotposture::api::{IoTSystem, Verdict};
use iotposture_e2e::{RunningOperator, TestNamespace, client_as, wait_until};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    networking::v1::NetworkPolicy,
    rbac::v1::RoleBinding,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::support::{factory, ready_condition, wait_ready};

/// The identity of the operator in these tests (the plane's admin certificate).
/// The operator's identity in these tests: the chart's ServiceAccount.
const OPERATOR_USER: &str = "system:serviceaccount:iotposture-e2e:iotposture-e2e";

/// Refuses the operator's `operation` on `resource` in the namespace while it lives.
struct Block {
    name: String,
    client: kube::Client,
}

impl Block {
    async fn new(ns: &TestNamespace, group: &str, resource: &str, operation: &str) -> Self {
        let name = format!("block-{}-{resource}", ns.name);
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": [group], "apiVersions": ["*"],
                    "operations": [operation], "resources": [resource]}]},
                "matchConditions": [{"name": "the-operator",
                    "expression": format!("request.userInfo.username == '{OPERATOR_USER}'")}],
                "validations": [{"expression": "false", "message": "blocked by the test"}],
            }
        }))
        .unwrap();
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}}}
        }))
        .unwrap();
        let params = PatchParams::apply("iotposture-e2e").force();
        Api::<ValidatingAdmissionPolicy>::all(ns.client.clone())
            .patch(&name, &params, &Patch::Apply(&policy))
            .await
            .unwrap();
        Api::<ValidatingAdmissionPolicyBinding>::all(ns.client.clone())
            .patch(&name, &params, &Patch::Apply(&binding))
            .await
            .unwrap();
        Self {
            name,
            client: ns.client.clone(),
        }
    }

    async fn lift(self) {
        let dp = DeleteParams::default();
        let _ = Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone())
            .delete(&self.name, &dp)
            .await;
        let _ = Api::<ValidatingAdmissionPolicy>::all(self.client.clone())
            .delete(&self.name, &dp)
            .await;
    }
}

fn verdict(system: &IoTSystem, id: &str) -> (Verdict, String) {
    let item = system
        .status
        .as_ref()
        .unwrap()
        .items
        .iter()
        .find(|i| i.id == id)
        .unwrap();
    (item.verdict, item.evidence.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_allow_all_rule_is_removed_and_judged_until_it_is() {
    let ns = TestNamespace::new("drift").await;
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    systems
        .create(&PostParams::default(), &factory("fenced"))
        .await
        .unwrap();
    wait_ready(&ns, "fenced", "True").await;
    let policies: Api<NetworkPolicy> = ns.api();
    let deny = "fenced-gateway-default-deny";

    // While the operator may not write NetworkPolicies, someone else opens
    // the default-deny to all ingress.
    let block = Block::new(&ns, "networking.k8s.io", "networkpolicies", "UPDATE").await;
    let as_operator: Api<NetworkPolicy> =
        Api::namespaced(iotposture_e2e::operator_client().await, &ns.name);
    wait_until("the block in force", || async {
        let current = policies.get(deny).await.ok()?;
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        as_operator
            .replace(deny, &dry, &current)
            .await
            .err()
            .map(|_| ())
    })
    .await;
    let someone = Api::<NetworkPolicy>::namespaced(
        client_as("someone-else", &["system:masters"]).await,
        &ns.name,
    );
    someone
        .patch(
            deny,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingress": [{}]}})),
        )
        .await
        .unwrap();

    // The check judges the policy as it is: II-2 fails, naming it, and the
    // failed restore shows in Ready and in the error counter.
    let opened = wait_until("II-2 failing on the opened policy", || async {
        let s = systems.get("fenced").await.ok()?;
        let (v, evidence) = verdict(&s, "II-2");
        (v == Verdict::Fail && ready_condition(&s).status == "False").then_some((s, evidence))
    })
    .await;
    assert!(
        opened.1.contains(
            "NetworkPolicy fenced-gateway-default-deny allows all ingress of component gateway"
        ),
        "{}",
        opened.1
    );
    let ready = ready_condition(&opened.0);
    assert_eq!(ready.reason, "ApplyFailed");
    assert!(
        ready.message.contains("blocked by the test"),
        "{}",
        ready.message
    );
    // Counted once the reconcile returns its error, just after it wrote the status.
    wait_until("the failed restore counted", || async {
        operator
            .metrics
            .encode()
            .contains("iotposture_reconcile_errors_total{reason=\"ApplyFailed\"}")
            .then_some(())
    })
    .await;

    // Once it may write again, the policy is restored exactly and II-2 passes.
    block.lift().await;
    wait_until("the policy restored", || async {
        let p = policies.get(deny).await.ok()?;
        p.spec?.ingress.is_none().then_some(())
    })
    .await;
    let restored = wait_ready(&ns, "fenced", "True").await;
    let (v, evidence) = verdict(&restored, "II-2");
    assert_eq!(v, Verdict::Pass, "{evidence}");

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_that_cannot_be_written_holds_back_no_other() {
    let ns = TestNamespace::new("partial").await;
    let block = Block::new(&ns, "rbac.authorization.k8s.io", "rolebindings", "CREATE").await;
    // The block is in force once the operator's dry-run create is refused.
    let bindings: Api<RoleBinding> =
        Api::namespaced(iotposture_e2e::operator_client().await, &ns.name);
    let probe: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "x"}],
    }))
    .unwrap();
    wait_until("the block in force", || async {
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        bindings.create(&dry, &probe).await.err().map(|_| ())
    })
    .await;
    let operator = RunningOperator::start(&ns).await;
    Api::<IoTSystem>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &factory("partial"))
        .await
        .unwrap();
    let system = wait_ready(&ns, "partial", "False").await;
    let ready = ready_condition(&system);
    assert_eq!(ready.reason, "ApplyFailed");
    assert!(
        ready
            .message
            .contains("applying RoleBinding \"partial-admin\" failed"),
        "{}",
        ready.message
    );
    // Everything else is in place: the isolation first of all.
    let policies = ns
        .api::<NetworkPolicy>()
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(policies.items.len(), 6);
    assert!(
        bindings
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    block.lift().await;
    wait_ready(&ns, "partial", "True").await;
    assert_eq!(
        bindings
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    operator.stop().await;
    ns.delete().await;
}
