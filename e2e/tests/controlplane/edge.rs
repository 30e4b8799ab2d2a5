//! Edge nodes on the real node: the chart's node agent DaemonSet (the
//! project's image) reads a host root whose /etc is a fixture folder on this
//! machine (with this machine's own /proc and /sys) and publishes the node's
//! NodePosture; the operator folds it into IV-1…IV-4 and VI-1 of a system
//! with spec.edgeNodes. Changing the fixture, or listening on a remote-access
//! port on the host, changes the verdicts; removing the agent makes them
//! Unknown. Under its own pod-bound token, an agent can write only its own
//! node's object.
use std::{path::Path, time::Duration};

use iotposture::{
    api::{
        IoTSystem, Verdict,
        nodeposture::{NodePosture, Reporter},
    },
    controller::cache::EdgeOptions,
    edge::judge::{Expectations, judge},
};
use iotposture_e2e::{
    OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, RunningOperator, TestNamespace, apply_objects,
    client_with_token, helm, local_image, operator_client, plane_dir, service_account_token,
    wait_for_item, workspace_root,
};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// The agent's name, as the chart names it for the tests' release.
const AGENT: &str = "iotposture-e2e-node-agent";
const AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=iotposture-node-agent,app.kubernetes.io/instance=iotposture-e2e";

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), target).unwrap();
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The chart's node-agent objects for the tests' release, reading
/// `host_root`; its NetworkPolicy lets it reach the API server at `api_port`
/// on the node's address.
fn agent_objects(host_root: &Path, api_port: i32) -> Vec<Value> {
    let chart = workspace_root().join("charts/iotposture");
    let image = local_image("operator");
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let out = helm(&[
        "template",
        OPERATOR_ACCOUNT,
        chart.to_str().unwrap(),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--set",
        "nodeAgent.enabled=true",
        "--set",
        &format!("nodeAgent.hostRoot={}", host_root.display()),
        "--set",
        "nodeAgent.intervalSeconds=1",
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.tag={tag}"),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "networkPolicy.apiServerCIDRs={10.250.0.1/32}",
        "--set",
        &format!("networkPolicy.apiServerPorts={{{api_port}}}"),
        "--show-only",
        "templates/node-agent.yaml",
    ]);
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple(std::str::from_utf8(&out.stdout).unwrap()).expect("YAML")
}

async fn remove_agent(admin: &kube::Client) {
    let dp = DeleteParams::background();
    let _ = Api::<NetworkPolicy>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .delete(AGENT, &dp)
        .await;
    let policy = format!("{AGENT}-own-node");
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
        .delete(&policy, &dp)
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(admin.clone())
        .delete(&policy, &dp)
        .await;
    let _ = Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .delete(AGENT, &dp)
        .await;
    let _ = Api::<NodePosture>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .delete_collection(&dp, &ListParams::default())
        .await;
}

/// The running, ready agent pod on `node`.
async fn agent_pod(admin: &kube::Client, node: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let list = pods
            .list(&ListParams::default().labels(AGENT_SELECTOR))
            .await
            .unwrap();
        if let Some(pod) = list.items.into_iter().find(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                && p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }) {
            return pod;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ready node agent pod on {node}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn system() -> IoTSystem {
    serde_json::from_value(json!({
        "apiVersion": "iotposture.dev/v1alpha1",
        "kind": "IoTSystem",
        "metadata": {"name": "plant"},
        "spec": {
            "mode": "Audit",
            "components": [{
                "name": "gateway", "role": "Aggregator",
                "selector": {"matchLabels": {"app": "gateway"}},
            }],
            // The nodes the component pods run on.
            "edgeNodes": {},
        }
    }))
    .unwrap()
}

fn gateway_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "gateway", "labels": {"app": "gateway"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app", "image": local_image("toolbox"), "imagePullPolicy": "Never",
                "command": ["sleep", "infinity"],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true, "runAsUser": 10001, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"cpu": "50m", "memory": "32Mi"}},
            }],
        }
    }))
    .unwrap()
}

async fn write_as(client: &kube::Client, name: &str, node: &str) -> Result<(), kube::Error> {
    let api: Api<NodePosture> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let mut np = NodePosture::new(
        name,
        iotposture::api::nodeposture::NodePostureSpec {
            node: node.into(),
            reporter: Reporter::default(),
            facts: Default::default(),
        },
    );
    np.metadata.namespace = Some(OPERATOR_NAMESPACE.into());
    api.patch(
        name,
        &PatchParams::apply("iotposture-e2e-as-agent").force(),
        &Patch::Apply(&np),
    )
    .await
    .map(|_| ())
}

fn forbidden(result: Result<(), kube::Error>, says: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert!(status.code == 403 || status.code == 422, "{status:?}");
            assert!(status.message.contains(says), "{}", status.message);
        }
        other => panic!("expected a refusal saying {says:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agents_report_and_the_operator_judges_the_edge_nodes() {
    let ns = TestNamespace::new("edge").await;
    let admin = ns.client.clone();
    // Makes the operator's namespace and account, where the agent goes too.
    let operator_client = operator_client().await;
    remove_agent(&admin).await;
    let nodes = Api::<Node>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(nodes.items.len(), 1, "the test plane runs one node");
    let node = nodes.items[0].name_any();

    // The node's /etc: a good edge gateway's, from the fixtures.
    let host = plane_dir().join("edge-host");
    let _ = std::fs::remove_dir_all(&host);
    copy_tree(
        &workspace_root().join("operator/tests/fixtures/hosts/good-gateway/etc"),
        &host.join("etc"),
    );
    let host = std::fs::canonicalize(&host).unwrap();
    // Pods reach the API server at the node's address, on the plane's port.
    let slice = Api::<EndpointSlice>::namespaced(admin.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let api_port = slice.ports.unwrap()[0].port.unwrap();
    let objects = agent_objects(&host, api_port);
    assert!(
        objects.iter().any(|o| o["kind"] == "NetworkPolicy"),
        "the agent comes with its NetworkPolicy"
    );
    apply_objects(&admin, objects, OPERATOR_NAMESPACE).await;
    let pod = agent_pod(&admin, &node).await;

    // Its report: named after the node, by that pod, with the fixture's Wi-Fi.
    let postures: Api<NodePosture> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let report = iotposture_e2e::wait_until("the node's NodePosture", || async {
        postures
            .get_opt(&node)
            .await
            .ok()?
            .filter(|p| p.spec.reporter.uid == pod.uid().unwrap_or_default())
    })
    .await;
    assert_eq!(report.spec.node, node);
    let ssids: Vec<&str> = report
        .spec
        .facts
        .wifi
        .iter()
        .map(|n| n.ssid.as_str())
        .collect();
    assert_eq!(ssids.len(), 3, "{ssids:?}");
    assert!(
        report.spec.facts.listening.is_some(),
        "the host's /proc/1/net was read"
    );
    eprintln!(
        "figure: node {node} published: {} listening sockets, mounts {:?}, consoles {:?}, unreadable {:?}",
        report.spec.facts.listening.as_ref().map_or(0, Vec::len),
        report.spec.facts.mounts,
        report.spec.facts.consoles,
        report.spec.facts.unreadable
    );
    let text = serde_json::to_string(&report).unwrap();
    assert!(
        !text.contains("fixture-passphrase"),
        "a passphrase was published"
    );

    // The operator, with the chart's permissions, and a system on the node.
    let mut options = RunningOperator::options(&ns, false);
    options.edge = Some(EdgeOptions {
        namespace: OPERATOR_NAMESPACE.into(),
        agent_selector: AGENT_SELECTOR.into(),
    });
    let operator = RunningOperator::start_as(&ns, operator_client, options).await;
    let pp = PostParams::default();
    ns.api::<Pod>().create(&pp, &gateway_pod()).await.unwrap();
    let systems: Api<IoTSystem> = ns.api();
    systems.create(&pp, &system()).await.unwrap();

    let on_node = format!("node {node}");
    wait_for_item(&systems, "plant", "IV-3", Verdict::Pass, "plant-sensors").await;
    wait_for_item(&systems, "plant", "IV-4", Verdict::Pass, &on_node).await;
    // This machine's own disks and listeners decide VI-1 and IV-2: the
    // operator's verdicts must be what the published facts say.
    let facts = postures.get(&node).await.unwrap().spec.facts;
    let expected = judge(&facts, &Expectations::default());
    let vi1 = &expected.iter().find(|(id, _)| *id == "VI-1").unwrap().1;
    let vi1_verdict = if vi1.verdict == Verdict::Fail {
        Verdict::Fail
    } else {
        Verdict::Unknown
    };
    wait_for_item(&systems, "plant", "VI-1", vi1_verdict, &on_node).await;

    // A serial login, a legacy Wi-Fi network and a WPS access point appear
    // on the host: each item turns to Fail naming what decided it.
    std::fs::write(
        host.join("etc/inittab"),
        "T0:23:respawn:/sbin/getty -L ttyS0 115200 vt100\n",
    )
    .unwrap();
    wait_for_item(&systems, "plant", "IV-1", Verdict::Fail, "ttyS0").await;
    std::fs::write(
        host.join("etc/wpa_supplicant/wpa_supplicant.conf"),
        "network={\n\tssid=\"plant-legacy\"\n\tpsk=\"fixture-passphrase-9\"\n}\n",
    )
    .unwrap();
    wait_for_item(&systems, "plant", "IV-3", Verdict::Fail, "plant-legacy").await;
    std::fs::create_dir_all(host.join("etc/hostapd")).unwrap();
    std::fs::write(
        host.join("etc/hostapd/hostapd.conf"),
        "interface=wlan0\nssid=plant-ap\nwpa=2\nwpa_key_mgmt=WPA-PSK\nrsn_pairwise=CCMP\nwpa_passphrase=fixture-passphrase-10\nwps_state=2\n",
    )
    .unwrap();
    wait_for_item(&systems, "plant", "IV-4", Verdict::Fail, "offers WPS").await;

    // A telnet-like listener on the host's network: IV-2 fails naming it,
    // and passes again once it is gone (when nothing else of this machine listens there).
    let listener =
        std::net::TcpListener::bind("0.0.0.0:2323").expect("port 2323 free on this machine");
    wait_for_item(&systems, "plant", "IV-2", Verdict::Fail, "0.0.0.0:2323").await;
    drop(listener);
    let facts_without = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let f = postures.get(&node).await.unwrap().spec.facts;
            if !f.listening.iter().flatten().any(|s| s.port == 2323) {
                break f;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "2323 still reported"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let iv2 = &judge(&facts_without, &Expectations::default())[1].1;
    if iv2.verdict == Verdict::Pass {
        wait_for_item(&systems, "plant", "IV-2", Verdict::Pass, &on_node).await;
    }

    // Under its own token, bound to its pod: its node's object only.
    let pod = agent_pod(&admin, &node).await;
    let as_agent = client_with_token(
        &service_account_token(&admin, OPERATOR_NAMESPACE, AGENT, Some(&pod), 600).await,
    )
    .await;
    write_as(&as_agent, &node, &node)
        .await
        .expect("an agent writes its own node's NodePosture");
    forbidden(
        write_as(&as_agent, "another-node", "another-node").await,
        "only the NodePosture of the node its pod runs on",
    );
    forbidden(
        write_as(&as_agent, &node, "another-node").await,
        "spec.node must be the NodePosture's own name",
    );
    // A token of the same account bound to no pod carries no node: refused.
    let unbound = client_with_token(
        &service_account_token(&admin, OPERATOR_NAMESPACE, AGENT, None, 600).await,
    )
    .await;
    forbidden(
        write_as(&unbound, &node, &node).await,
        "only the NodePosture of the node its pod runs on",
    );
    // And RBAC gives it no delete at all.
    let deleted = Api::<NodePosture>::namespaced(as_agent.clone(), OPERATOR_NAMESPACE)
        .delete(&node, &DeleteParams::default())
        .await;
    assert!(
        matches!(&deleted, Err(kube::Error::Api(s)) if s.code == 403),
        "{deleted:?}"
    );

    // The agent goes: its report is stale, and the node items Unknown.
    Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .delete(AGENT, &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for_item(
        &systems,
        "plant",
        "IV-3",
        Verdict::Unknown,
        "no longer runs there",
    )
    .await;

    operator.stop().await;
    remove_agent(&admin).await;
    let _ = std::fs::remove_dir_all(&host);
    ns.delete().await;
}
