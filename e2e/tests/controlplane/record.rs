//! The decision record (VII-2) end to end: the operator appends what it
//! applies and every verdict change, the status and the PolicyReport carry
//! the signed checkpoint, and `iotposture verify` (the binary) accepts the
//! lines as written and names the entry that was altered or removed.
use std::{path::Path, process::Command};

use iotposture::api::IoTSystem;
use iotposture_e2e::{RunningOperator, TestNamespace, wait_until, workspace_root};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    discovery::ApiResource,
};
use serde_json::json;

use crate::support::{factory, wait_ready};

fn verify(entries: &Path, status: &Path) -> (i32, String) {
    let bin = workspace_root().join("target/debug/iotposture");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p iotposture)",
        bin.display()
    );
    let out = Command::new(&bin)
        .args(["verify", "--entries"])
        .arg(entries)
        .arg("--status")
        .arg(status)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_record_verifies_and_names_a_tampered_entry() {
    let ns = TestNamespace::new("record").await;
    let file = RunningOperator::record_file(&ns);
    let _ = std::fs::remove_file(&file);
    let operator = RunningOperator::start(&ns).await;
    let systems: Api<IoTSystem> = ns.api();
    systems
        .create(&PostParams::default(), &factory("rec"))
        .await
        .unwrap();
    wait_ready(&ns, "rec", "True").await;
    wait_until("a decision log in status", || async {
        systems.get("rec").await.ok()?.status?.decision_log
    })
    .await;
    // A verdict change: attesting an item no check decides.
    systems
        .patch(
            "rec",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"attestations": [
                {"item": "II-4", "statement": "ClamAV scans images nightly", "by": "qa@example.com", "expires": "2099-01-01"}
            ]}})),
        )
        .await
        .unwrap();
    let before = systems
        .get("rec")
        .await
        .unwrap()
        .status
        .unwrap()
        .decision_log
        .unwrap()
        .size;
    let system = wait_until("II-4 attested and recorded", || async {
        let s = systems.get("rec").await.ok()?;
        let status = s.status.as_ref()?;
        let attested = status
            .items
            .iter()
            .any(|i| i.id == "II-4" && i.verdict == iotposture::api::Verdict::Attested);
        (attested && status.decision_log.as_ref()?.size > before).then_some(s)
    })
    .await;
    let log = system.status.clone().unwrap().decision_log.unwrap();
    assert!(
        log.checkpoint
            .starts_with(&format!("{}\n{}\n", log.origin, log.size)),
        "{log:?}"
    );

    // The PolicyReport carries the same checkpoint.
    let reports: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource {
            group: "wgpolicyk8s.io".into(),
            version: "v1alpha2".into(),
            api_version: "wgpolicyk8s.io/v1alpha2".into(),
            kind: "PolicyReport".into(),
            plural: "policyreports".into(),
        },
    );
    wait_until("the PolicyReport carries the checkpoint", || async {
        let r = reports.get("iotposture-rec").await.ok()?;
        (r.metadata
            .annotations?
            .get("iotposture.dev/decision-checkpoint")?
            == &log.checkpoint)
            .then_some(())
    })
    .await;

    let dir = std::env::temp_dir().join(format!("iotposture-e2e-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let status = dir.join("rec.json");
    std::fs::write(&status, serde_json::to_string(&system).unwrap()).unwrap();
    let (code, text) = verify(&file, &status);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("{}/rec: {} entries", ns.name, log.size)),
        "{text}"
    );
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""kind":"VerdictChanged","subject":"II-4""#)),
        "{lines:?}"
    );

    // One entry altered, or removed: verify fails and names it.
    let victim = lines
        .iter()
        .rposition(|l| l.contains(r#""subject":"II-4""#))
        .unwrap();
    assert!(lines[victim].contains("Attested"), "{}", lines[victim]);
    let write = |name: &str, lines: &[String]| {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let mut altered = lines.clone();
    altered[victim] = altered[victim].replace("Attested", "Pass");
    let (code, text) = verify(&write("altered.jsonl", &altered), &status);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("entry {victim} was altered")),
        "{text}"
    );
    let mut removed = lines.clone();
    removed.remove(victim);
    let (code, text) = verify(&write("removed.jsonl", &removed), &status);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("entry {victim}")), "{text}");

    operator.stop().await;
    ns.delete().await;
    let _ = std::fs::remove_dir_all(&dir);
}
