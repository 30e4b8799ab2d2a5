//! `iotposture check` and `iotposture checklist` as a user runs them: exit
//! codes, formats, and errors that name the file and document.
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_iotposture");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn checklist_lists_all_39_items() {
    let (code, out, _) = run(&["checklist", "-o", "json"]);
    assert_eq!(code, 0);
    let items: serde_json::Value = serde_json::from_str(&out).unwrap();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 39);
    assert_eq!(items[4]["id"], "I-5");
    assert_eq!(
        items[4]["nameJa"],
        "サービスやプロセスを起動するアカウントの権限管理"
    );
    assert_eq!(
        items[4]["targets"],
        serde_json::json!(["Aggregator", "EUtility", "DecisionTrigger"])
    );
    let (code, md, _) = run(&["checklist", "-o", "markdown"]);
    assert_eq!(code, 0);
    assert_eq!(
        md.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| ID"))
            .count(),
        39
    );
}

#[test]
fn a_clean_system_exits_0_and_a_failing_one_exits_1() {
    let (code, out, err) = run(&["check", "-f", "manifests/examples"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("smart-factory/line-1"), "{out}");
    assert!(
        out.contains("compliant: smart-factory/line-1: 16/39"),
        "{out}"
    );
    // Judged as admitted, the web pods carry the injected gateway; as
    // written, they do not, and II-6 says so.
    assert!(
        out.contains("II-6    Pass          all 2 web pods run the gateway"),
        "{out}"
    );
    let (code, out, _) = run(&["check", "-f", "manifests/examples", "--as-written"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("II-6    Fail          pod deployment/analytics of analytics runs without iotposture-gateway"),
        "{out}"
    );

    let (code, out, _) = run(&["check", "-f", "operator/tests/fixtures/bad-workloads.yaml"]);
    assert_eq!(code, 1);
    assert!(out.contains("IV-2    Fail"), "{out}");
    assert!(out.contains("fix: Do not expose SSH"), "{out}");
}

#[test]
fn json_sarif_and_junit_carry_the_same_verdicts() {
    let file = "operator/tests/fixtures/bad-workloads.yaml";
    let (_, json, _) = run(&["check", "-f", file, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let items = json["systems"][0]["items"].as_array().unwrap();
    let fails = items.iter().filter(|i| i["verdict"] == "Fail").count();
    assert_eq!(json["systems"][0]["summary"]["fail"], fails);

    let (code, sarif, _) = run(&["check", "-f", file, "-o", "sarif"]);
    assert_eq!(code, 1);
    let sarif: serde_json::Value = serde_json::from_str(&sarif).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let run0 = &sarif["runs"][0];
    assert_eq!(
        run0["tool"]["driver"]["rules"].as_array().unwrap().len(),
        39
    );
    let results = run0["results"].as_array().unwrap();
    assert_eq!(
        results.iter().filter(|r| r["level"] == "error").count(),
        fails
    );
    assert_eq!(
        results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        file
    );

    let (_, junit, _) = run(&["check", "-f", file, "-o", "junit"]);
    assert!(junit.starts_with("<?xml"));
    assert_eq!(junit.matches("<testcase ").count(), 39);
    assert_eq!(junit.matches("<failure ").count(), fails);
    assert!(junit.contains(&format!("failures=\"{fails}\"")));
}

#[test]
fn bad_input_exits_2_naming_file_and_document() {
    let dir = std::env::temp_dir().join(format!("iotposture-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };

    let broken = write(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\n---\nkind: [unclosed\n",
    );
    let (code, _, err) = run(&["check", "-f", &broken]);
    assert_eq!(code, 2);
    assert!(
        err.contains("broken.yaml (document 2): not valid YAML"),
        "{err}"
    );

    let kindless = write("kindless.yaml", "metadata: {name: x}\n");
    let (code, _, err) = run(&["check", "-f", &kindless]);
    assert_eq!(code, 2);
    assert!(
        err.contains("kindless.yaml (document 1): a Kubernetes object needs apiVersion and kind"),
        "{err}"
    );

    let invalid = write(
        "invalid.yaml",
        "apiVersion: iotposture.dev/v1alpha1\nkind: IoTSystem\nmetadata: {name: s}\nspec:\n  components:\n    - {name: a, role: Sensor, selector: {matchLabels: {app: a}}}\n  flows:\n    - {from: {component: a}, to: b, port: x}\n",
    );
    let (code, _, err) = run(&["check", "-f", &invalid]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid.yaml (document 1): IoTSystem s: flow 0 names component \"b\""),
        "{err}"
    );

    let (code, _, err) = run(&["check", "-f", "/nonexistent/manifests"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/manifests"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_readme_example_skips_files_that_are_not_kubernetes_objects() {
    // README: `iotposture check -f ./manifests`; the folder also holds the
    // Prometheus rules and their promtool tests.
    let (code, out, err) = run(&["check", "-f", "./manifests"]);
    assert_ne!(code, 2, "{err}");
    assert!(out.contains("line-1"), "{out}");
    assert!(
        err.contains(
            "note: ./manifests/prometheus/iotposture.rules.test.yaml (document 1) is not a Kubernetes object"
        ),
        "{err}"
    );
}
