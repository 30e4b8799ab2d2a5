//! The shipped alert rules are valid and behave as their unit tests say,
//! judged by Prometheus's own promtool (Debian's package, installed by make test).
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/prometheus");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
        .expect("promtool on PATH (make test installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_are_valid() {
    assert!(
        promtool(&["check", "rules", "iotposture.rules.yaml"]).contains("SUCCESS: 9 rules found")
    );
}

#[test]
fn rules_fire_as_their_tests_expect() {
    assert!(promtool(&["test", "rules", "iotposture.rules.test.yaml"]).contains("SUCCESS"));
}
