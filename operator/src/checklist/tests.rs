//! The engine on YAML fixtures: the example system passes every check this
//! version implements, the sloppy one fails each of them for the right reason.

use std::path::Path;

use k8s_openapi::jiff::civil::date;

use crate::{
    api::{ItemStatus, Verdict},
    check::{Manifests, SystemReport, evaluate, load_text},
};

const GOOD: &str = include_str!("../../../manifests/examples/smart-factory.yaml");
const BAD: &str = include_str!("../../tests/fixtures/bad-workloads.yaml");

/// Items with a real check in this version.
const CHECKED: [&str; 16] = [
    "I-2", "I-5", "I-6", "I-7", "I-8", "I-9", "I-10", "II-2", "II-3", "II-5", "IV-1", "IV-2",
    "V-1", "V-2", "VI-4", "VII-1",
];

/// Checked, but decided only by the running operator (heartbeats heard over
/// MQTT): the offline check says so instead of passing.
const LIVE_ONLY: [&str; 1] = ["VII-1"];

fn judge(yaml: &str) -> SystemReport {
    let mut m = Manifests::default();
    load_text(&mut m, Path::new("fixture.yaml"), yaml, "default").unwrap();
    let mut reports = evaluate(&m, date(2026, 11, 26), crate::check::Admission::AsWritten).unwrap();
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

fn item<'a>(r: &'a SystemReport, id: &str) -> &'a ItemStatus {
    r.items.iter().find(|i| i.id == id).unwrap()
}

#[test]
fn every_item_gets_a_verdict() {
    let r = judge(GOOD);
    assert_eq!(r.items.len(), 39);
}

#[test]
fn the_example_passes_every_implemented_check() {
    let r = judge(GOOD);
    for id in LIVE_ONLY {
        let i = item(&r, id);
        assert_eq!(i.verdict, Verdict::Unknown, "{id}: {}", i.evidence);
        assert!(
            i.evidence.contains("heard only by the running operator"),
            "{id}: {}",
            i.evidence
        );
    }
    for id in CHECKED.iter().filter(|id| !LIVE_ONLY.contains(id)) {
        let id = *id;
        let i = item(&r, id);
        assert_eq!(i.verdict, Verdict::Pass, "{id}: {}", i.evidence);
        assert!(!i.evidence.is_empty() && i.remediation.is_none());
    }
}

#[test]
fn nothing_unimplemented_claims_pass() {
    for yaml in [GOOD, BAD] {
        for i in &judge(yaml).items {
            if !CHECKED.contains(&i.id.as_str()) {
                assert_ne!(i.verdict, Verdict::Pass, "{} passes without a check", i.id);
            }
        }
    }
}

#[test]
fn the_sloppy_system_fails_each_check_for_its_reason() {
    let r = judge(BAD);
    let expect = [
        (
            "I-2",
            "Secret shared-token is a never-expiring token of ServiceAccount shared",
        ),
        ("I-5", "runAsNonRoot is not true"),
        (
            "I-6",
            "ServiceAccount shared is shared by dashboard and gateway",
        ),
        ("I-7", "names nobody"),
        ("I-8", "Role sloppy-operator is missing"),
        (
            "I-9",
            "RoleBinding everyone-admin gives ClusterRole cluster-admin to User intern",
        ),
        ("I-10", "takes Secret gateway-db into its environment"),
        ("II-2", "no NetworkPolicy selects it for Ingress"),
        ("II-3", "eclipse-mosquitto:latest uses the tag latest"),
        ("II-5", "has no cpu limit"),
        ("IV-1", "is privileged"),
        ("IV-2", "remote-access port 22"),
        (
            "V-1",
            "opens 22/TCP, which component gateway does not declare",
        ),
        ("V-2", "uses the host network"),
        (
            "VII-1",
            "pod sensor-0 container sensor has no liveness probe",
        ),
        (
            "VII-2",
            "RoleBinding everyone-admin lets User intern read pods/log through ClusterRole cluster-admin",
        ),
        (
            "VI-2",
            "flow sensor → gateway uses port mqtt (1883), which is not declared tls",
        ),
        (
            "III-9",
            "component dashboard serves HTTP on port http (8080) without TLS",
        ),
    ];
    for (id, evidence) in expect {
        let i = item(&r, id);
        assert_eq!(i.verdict, Verdict::Fail, "{id}: {}", i.evidence);
        assert!(
            i.evidence.contains(evidence),
            "{id}: {:?} lacks {evidence:?}",
            i.evidence
        );
        assert!(i.remediation.is_some(), "{id} has no remediation");
    }
    // Findings the evidence lists beside the first.
    assert!(
        item(&r, "I-6")
            .evidence
            .contains("Secret gateway-db is used by dashboard and gateway")
    );
    assert!(item(&r, "IV-1").evidence.contains("mounts host path /"));
    assert!(item(&r, "IV-1").evidence.contains("squat.ai/serial"));
    assert!(
        item(&r, "IV-2")
            .evidence
            .contains("exposes outside the cluster")
    );
    assert!(
        item(&r, "II-3")
            .evidence
            .contains("not an allowed registry")
    );
}

#[test]
fn audit_mode_loses_what_only_enforce_provides() {
    let r = judge(&GOOD.replace("mode: Enforce", "mode: Audit"));
    for id in ["II-2", "I-7", "I-8"] {
        assert_eq!(item(&r, id).verdict, Verdict::Fail, "{id}");
    }
}

#[test]
fn one_bad_container_flips_least_privilege() {
    let r = judge(&GOOD.replacen(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
        2,
    ));
    let i = item(&r, "I-5");
    assert_eq!(i.verdict, Verdict::Fail);
    assert!(
        i.evidence
            .contains("deployment/mqtt-gateway container broker: root filesystem is not read-only"),
        "{}",
        i.evidence
    );
}

#[test]
fn minimum_versions_are_enforced() {
    let policy =
        "  images:\n    minimumVersions: [{image: iotposture.local/mosquitto, version: 2.1.0}]\n";
    let r = judge(&GOOD.replace("  access:\n", &format!("{policy}  access:\n")));
    let i = item(&r, "II-3");
    assert_eq!(i.verdict, Verdict::Fail);
    assert!(
        i.evidence.contains("older than the minimum version 2.1.0"),
        "{}",
        i.evidence
    );
}

#[test]
fn attestations_count_until_they_expire() {
    let attest = |expires: &str, item: &str| {
        GOOD.replace(
            "  access:\n",
            &format!("  attestations:\n    - {{item: {item}, statement: WPA3-SAE only, by: plant security, expires: {expires}}}\n  access:\n"),
        )
    };
    let r = judge(&attest("2027-06-30", "IV-3"));
    assert_eq!(item(&r, "IV-3").verdict, Verdict::Attested);
    assert!(
        item(&r, "IV-3")
            .evidence
            .contains("attested by plant security until 2027-06-30")
    );

    let r = judge(&attest("2026-01-31", "IV-3"));
    assert_eq!(item(&r, "IV-3").verdict, Verdict::Fail);
    assert!(item(&r, "IV-3").evidence.contains("expired on 2026-01-31"));

    // A machine check that passes is stronger than a statement; one that fails is not hidden.
    let r = judge(&attest("2027-06-30", "I-5"));
    assert_eq!(item(&r, "I-5").verdict, Verdict::Pass);
}

#[test]
fn items_without_a_targeted_component_do_not_apply() {
    let without_sensor = GOOD
        .replace("    - name: temp-sensor\n      role: Sensor\n      selector: {matchLabels: {app: temp-sensor}}\n", "")
        .replace("      # Each reading is a heartbeat of the device the topic names (the\n      # sensor's host name); one silent for a minute fails VII-1.\n      heartbeat:\n        maxSilence: 60s\n        mqtt: {broker: gateway, port: mqtts, topic: plant/line-1/+/temperature}\n", "")
        .replace("    - {from: {component: temp-sensor}, to: gateway, port: mqtts}\n", "");
    let r = judge(&without_sensor);
    for id in ["VII-1", "VIII-1"] {
        assert_eq!(item(&r, id).verdict, Verdict::NotApplicable, "{id}");
    }
    let (summary, compliant) = super::summarize(&r.items);
    assert_eq!(summary.not_applicable, 2);
    assert_eq!(compliant, format!("{}/37", summary.pass + summary.attested));
}

#[test]
fn certificates_are_judged_from_the_spec_and_cert_manager() {
    let r = judge(GOOD);
    let iii9 = item(&r, "III-9");
    assert!(
        iii9.evidence
            .starts_with("2 Certificates requested from ClusterIssuer factory-ca (0 Ready)"),
        "{}",
        iii9.evidence
    );
    assert_eq!(
        iii9.verdict,
        Verdict::Unknown,
        "no Pass before the probe confirms it"
    );
    assert!(
        item(&r, "VI-4")
            .evidence
            .contains("renew 720h before they expire")
    );

    let without_issuer = GOOD.replace(
        "  tls:\n    issuerRef: {kind: ClusterIssuer, name: factory-ca}\n    renewBefore: 720h\n",
        "",
    );
    let r = judge(&without_issuer);
    for id in ["III-9", "VI-4"] {
        assert_eq!(item(&r, id).verdict, Verdict::Fail, "{id}");
        assert!(
            item(&r, id).evidence.contains("no issuer in spec.tls"),
            "{id}"
        );
    }
    let wrong = GOOD.replace("renewBefore: 720h", "renewBefore: 9000h");
    let r = judge(&wrong);
    assert_eq!(item(&r, "VI-4").verdict, Verdict::Fail);
    assert!(
        item(&r, "VI-4")
            .evidence
            .contains("renews 9000h before expiry within a lifetime of 2160h")
    );
}

#[test]
fn go_durations() {
    use super::encryption::duration_hours;
    assert_eq!(duration_hours("720h"), Some(720.0));
    assert_eq!(duration_hours("1h30m"), Some(1.5));
    assert_eq!(duration_hours("90m"), Some(1.5));
    assert_eq!(duration_hours("5x"), None);
    assert_eq!(duration_hours("12"), None);
}

#[test]
fn without_cert_manager_certificate_items_are_unknown_and_the_rest_goes_on() {
    let mut m = crate::check::Manifests::default();
    load_text(&mut m, Path::new("fixture.yaml"), GOOD, "default").unwrap();
    let (_, system) = &m.systems[0];
    let alone = crate::controller::validate::Neighbourhood {
        pods: &[],
        systems: &[],
    };
    let valid = crate::controller::validate::validate(system, &alone).unwrap();
    let mut snapshot = m.namespaces["smart-factory"].clone();
    snapshot.certificates = None; // no Certificate CRD in the cluster
    let snapshot = snapshot.with_desired(
        &valid.name,
        &crate::build::build_all(&valid, Default::default()),
    );
    let items = super::evaluate(&valid, &snapshot, date(2026, 11, 26));
    for id in ["III-9", "VI-4"] {
        let i = items.iter().find(|i| i.id == id).unwrap();
        assert_eq!(i.verdict, Verdict::Unknown, "{id}");
        assert!(
            i.evidence.contains("cert-manager is not installed"),
            "{id}: {}",
            i.evidence
        );
    }
    let i5 = items.iter().find(|i| i.id == "I-5").unwrap();
    assert_eq!(i5.verdict, Verdict::Pass);
}

#[test]
fn a_policy_that_lets_everything_through_fails_the_firewall() {
    // Someone else's allow-all policy beside ours: the pods are "isolated"
    // by policy type but reachable by anything.
    let open = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: let-everyone-in, namespace: smart-factory}
spec:
  podSelector: {matchLabels: {app: mqtt-gateway}}
  policyTypes: [Ingress]
  ingress: [{}]
"#;
    let r = judge(&format!("{GOOD}{open}"));
    let i = item(&r, "II-2");
    assert_eq!(i.verdict, Verdict::Fail, "{}", i.evidence);
    assert!(
        i.evidence.contains(
            "NetworkPolicy let-everyone-in allows all ingress of pod deployment/mqtt-gateway"
        ),
        "{}",
        i.evidence
    );
    // A rule limited to a port is not "everything".
    let port_only = open.replace("ingress: [{}]", "ingress: [{ports: [{port: 8883}]}]");
    assert_eq!(
        item(&judge(&format!("{GOOD}{port_only}")), "II-2").verdict,
        Verdict::Pass
    );
}

#[test]
fn a_tls_port_needs_a_service_of_the_declared_name() {
    // The component's Service is named otherwise than `service` says: its
    // certificate would carry names nobody dials.
    let r = judge(&GOOD.replace("      service: mqtt-gateway\n", ""));
    let i = item(&r, "VI-2");
    assert_eq!(i.verdict, Verdict::Fail, "{}", i.evidence);
    assert!(
        i.evidence
            .contains("no Service gateway in namespace smart-factory"),
        "{}",
        i.evidence
    );
}

/// The example with spec.edgeNodes, judged with the given nodes' reports.
fn with_edge_nodes(
    edge_nodes: &str,
    nodes: Option<Result<Vec<super::edge_nodes::EdgeNode>, String>>,
) -> Vec<ItemStatus> {
    let mut m = crate::check::Manifests::default();
    let yaml =
        without_edge_nodes().replacen("spec:\n", &format!("spec:\n  edgeNodes: {edge_nodes}\n"), 1);
    load_text(&mut m, Path::new("fixture.yaml"), &yaml, "default").unwrap();
    let (_, system) = &m.systems[0];
    let alone = crate::controller::validate::Neighbourhood {
        pods: &[],
        systems: &[],
    };
    let valid = crate::controller::validate::validate(system, &alone).unwrap();
    assert!(valid.edge_nodes.is_some(), "{yaml}");
    let mut snapshot = m.namespaces["smart-factory"].clone();
    snapshot.edge_nodes = nodes;
    let snapshot = snapshot.with_desired(
        &valid.name,
        &crate::build::build_all(&valid, Default::default()),
    );
    super::evaluate(&valid, &snapshot, date(2026, 11, 26))
}

#[test]
fn edge_node_reports_decide_iv_3_iv_4_and_join_the_pods_for_iv_1_iv_2() {
    use super::edge_nodes::EdgeNode;
    use crate::api::nodeposture::{DataMount, ListeningSocket, NodeFacts, UsbFacts};
    let good = NodeFacts {
        listening: Some(vec![ListeningSocket {
            address: "0.0.0.0".into(),
            port: 8883,
        }]),
        usb: UsbFacts {
            bus: Some(false),
            ..UsbFacts::default()
        },
        mounts: vec![DataMount {
            mount_point: "/".into(),
            device: "/dev/mapper/root".into(),
            encrypted: true,
        }],
        ..NodeFacts::default()
    };
    let mut telnet = good.clone();
    telnet.listening = Some(vec![ListeningSocket {
        address: "0.0.0.0".into(),
        port: 23,
    }]);
    let verdicts = |items: &[ItemStatus]| -> Vec<(String, Verdict)> {
        ["IV-1", "IV-2", "IV-3", "IV-4", "VI-1"]
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    items.iter().find(|i| i.id == *id).unwrap().verdict,
                )
            })
            .collect()
    };
    let node = |name: &str, facts: Result<NodeFacts, String>| EdgeNode {
        name: name.into(),
        facts,
    };

    let items = with_edge_nodes("{}", Some(Ok(vec![node("edge-1", Ok(good.clone()))])));
    assert_eq!(
        verdicts(&items),
        [
            ("IV-1", Verdict::Pass),
            ("IV-2", Verdict::Pass),
            ("IV-3", Verdict::Pass),
            ("IV-4", Verdict::Pass),
            ("VI-1", Verdict::Unknown)
        ]
        .map(|(i, v)| (i.to_string(), v))
    );
    let vi1 = items.iter().find(|i| i.id == "VI-1").unwrap();
    assert!(vi1.evidence.contains("etcd"), "{}", vi1.evidence);

    let items = with_edge_nodes(
        "{}",
        Some(Ok(vec![
            node("edge-1", Ok(good.clone())),
            node("edge-2", Ok(telnet)),
        ])),
    );
    let iv2 = items.iter().find(|i| i.id == "IV-2").unwrap();
    assert_eq!(iv2.verdict, Verdict::Fail);
    assert!(
        iv2.evidence.contains("node edge-2") && iv2.evidence.contains(":23"),
        "{}",
        iv2.evidence
    );
    assert!(!iv2.evidence.contains("edge-1"), "{}", iv2.evidence);
    // A bastion's port, allowed by the system.
    let items = with_edge_nodes(
        "{allowedRemoteAccessPorts: [23]}",
        Some(Ok(vec![node(
            "edge-2",
            Ok({
                let mut t = good.clone();
                t.listening = Some(vec![ListeningSocket {
                    address: "0.0.0.0".into(),
                    port: 23,
                }]);
                t
            }),
        )])),
    );
    assert_eq!(
        items.iter().find(|i| i.id == "IV-2").unwrap().verdict,
        Verdict::Pass
    );

    // A stale or missing agent leaves the item unknown with that reason.
    let items = with_edge_nodes(
        "{}",
        Some(Ok(vec![node(
            "edge-3",
            Err("no node agent runs there".into()),
        )])),
    );
    let iv3 = items.iter().find(|i| i.id == "IV-3").unwrap();
    assert_eq!(iv3.verdict, Verdict::Unknown);
    assert!(
        iv3.evidence
            .contains("node edge-3: no node agent runs there"),
        "{}",
        iv3.evidence
    );
    // ...but a failing pod still fails IV-1 whatever the node says: the
    // example's pods pass, so IV-1 is unknown here.
    assert_eq!(
        items.iter().find(|i| i.id == "IV-1").unwrap().verdict,
        Verdict::Unknown
    );

    let items = with_edge_nodes("{}", Some(Ok(Vec::new())));
    assert!(
        items
            .iter()
            .find(|i| i.id == "IV-4")
            .unwrap()
            .evidence
            .contains("no component pod runs on a node")
    );
    let items = with_edge_nodes("{}", None);
    assert!(
        items
            .iter()
            .find(|i| i.id == "IV-3")
            .unwrap()
            .evidence
            .contains("node-agent --once")
    );
    // Offline, or where the operator reads no agents, IV-1 and IV-2 stay
    // the pods' verdicts and say the nodes were not judged.
    let without_agents = with_edge_nodes("{}", Some(Err("no --edge-namespace".into())));
    for id in ["IV-1", "IV-2"] {
        let i = without_agents.iter().find(|i| i.id == id).unwrap();
        assert_eq!(i.verdict, Verdict::Pass, "{id}");
        assert!(
            i.evidence
                .contains("edge nodes not judged: no --edge-namespace"),
            "{}",
            i.evidence
        );
    }
    let iv3 = without_agents.iter().find(|i| i.id == "IV-3").unwrap();
    assert_eq!(
        (iv3.verdict, iv3.evidence.as_str()),
        (Verdict::Unknown, "no --edge-namespace")
    );
    for id in ["IV-1", "IV-2"] {
        assert_eq!(
            items.iter().find(|i| i.id == id).unwrap().verdict,
            Verdict::Pass,
            "{id}"
        );
    }
}

/// The example as it would be without its `edgeNodes: {}`.
fn without_edge_nodes() -> String {
    assert!(GOOD.contains("\n  edgeNodes: {}\n"));
    GOOD.replacen("\n  edgeNodes: {}\n", "\n", 1)
}

#[test]
fn without_edge_nodes_the_node_items_say_how_to_get_them() {
    let r = judge(&without_edge_nodes());
    for id in ["IV-3", "IV-4", "VI-1"] {
        let i = item(&r, id);
        assert_eq!(i.verdict, Verdict::Unknown, "{id}");
        assert!(
            i.evidence.contains("spec.edgeNodes"),
            "{id}: {}",
            i.evidence
        );
    }
    assert_eq!(item(&r, "IV-1").verdict, Verdict::Pass);
}
