//! Generated and copied files must match their sources: the CRD YAML (in
//! crds/ and in the chart) what the Rust types generate, and the chart's
//! alert rules the rule file Prometheus users load directly.

fn read(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn committed_crds_match_the_types() {
    for (file, generated) in iotposture::api::crd_files().unwrap() {
        for dir in ["crds", "charts/iotposture/crds"] {
            let path = format!("{dir}/{file}");
            assert!(
                read(&path) == generated,
                "{path} is stale: run `make crds` and commit the result"
            );
        }
    }
}

#[test]
fn the_chart_carries_the_alert_rules_as_published() {
    assert!(
        read("charts/iotposture/files/iotposture.rules.yaml")
            == read("manifests/prometheus/iotposture.rules.yaml"),
        "charts/iotposture/files/iotposture.rules.yaml differs from manifests/prometheus/: run `make crds`"
    );
}
