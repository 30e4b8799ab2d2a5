//! The committed CRD YAML must be what the Rust types generate.
#[test]
fn committed_crds_match_the_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/iotsystem.yaml"
    ))
    .expect("crds/iotsystem.yaml exists");
    let generated = iotposture::api::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/iotsystem.yaml is stale: run `make crds` and commit the result"
    );
}
