//! The real API server refuses bad specs with messages a person understands,
//! from the CRD's OpenAPI bounds and CEL rules.
use iotposture::api::IoTSystem;
use iotposture_e2e::TestNamespace;
use kube::api::PostParams;

const VALID: &str = r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {name: NAME}
spec:
  components:
    - {name: sensor, role: Sensor, selector: {matchLabels: {app: sensor}}}
    - name: gateway
      role: Aggregator
      selector: {matchLabels: {app: gateway}}
      ports: [{name: mqtts, port: 8883, tls: true}]
  flows:
    - {from: {component: sensor}, to: gateway, port: mqtts}
"#;

/// Creates the spec and returns the API server's refusal message ("" if accepted).
async fn refusal(ns: &TestNamespace, name: &str, yaml: &str) -> String {
    let value: serde_json::Value = serde_saphyr::from_str(&yaml.replace("NAME", name)).unwrap();
    // Through untyped JSON, so values the Rust types would refuse reach the server.
    let api = kube::Api::<kube::core::DynamicObject>::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kube::core::ApiResource::erase::<IoTSystem>(&()),
    );
    let object: kube::core::DynamicObject = serde_json::from_value(value).unwrap();
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => String::new(),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn assert_refused(message: &str, expected: &str) {
    assert!(
        message.contains(expected),
        "expected a refusal containing {expected:?}, got {message:?}"
    );
}

#[tokio::test]
async fn bad_specs_are_refused_with_readable_messages() {
    let ns = TestNamespace::new("crd").await;
    assert_eq!(
        refusal(&ns, "valid", VALID).await,
        "",
        "the valid spec is accepted"
    );
    // `from: NAME` is short for `from: {component: NAME}`.
    assert_eq!(
        refusal(
            &ns,
            "short",
            &VALID.replace("from: {component: sensor}", "from: sensor")
        )
        .await,
        "",
        "the short form is accepted"
    );
    let short: IoTSystem = kube::Api::namespaced(ns.client.clone(), &ns.name)
        .get("short")
        .await
        .unwrap();
    assert_eq!(
        short.spec.flows[0].from.component.as_deref(),
        Some("sensor")
    );

    let cases: &[(&str, String, &str)] = &[
        (
            "unknown-role",
            VALID.replace("role: Sensor", "role: Toaster"),
            r#"Unsupported value: "Toaster": supported values: "Sensor", "Aggregator", "EUtility", "DecisionTrigger""#,
        ),
        (
            "duplicate",
            VALID
                .replace("name: gateway", "name: sensor")
                .replace("to: gateway", "to: sensor"),
            "component names must be unique within the system",
        ),
        (
            "unknown-target",
            VALID.replace("to: gateway", "to: cloud"),
            "every flow's 'to' must name a component of spec.components",
        ),
        (
            "unknown-port",
            VALID.replace("port: mqtts}", "port: mqtt}"),
            "every flow's 'port' must name a port that its target component declares",
        ),
        (
            "port-range",
            VALID.replace("port: 8883", "port: 70000"),
            "should be less than or equal to 65535",
        ),
        (
            "port-zero",
            VALID.replace("port: 8883", "port: 0"),
            "should be greater than or equal to 1",
        ),
        (
            "empty-selector",
            VALID.replace("selector: {matchLabels: {app: sensor}}", "selector: {}"),
            "an empty selector would match every pod in the namespace",
        ),
        (
            "ssdp",
            VALID.replace(
                "[{name: mqtts, port: 8883, tls: true}]",
                "[{name: mqtts, port: 8883, tls: true}, {name: ssdp, port: 1900, protocol: UDP}]",
            ),
            "UDP port 1900 is SSDP (UPnP, checklist item V-2)",
        ),
        (
            "no-components",
            VALID.split("  components:").next().unwrap().to_string() + "  components: []\n",
            "should have at least 1 items",
        ),
        (
            "bad-mode",
            VALID.replace("spec:\n", "spec:\n  mode: Maybe\n"),
            r#"Unsupported value: "Maybe": supported values: "Enforce", "Audit""#,
        ),
        (
            "bad-name",
            VALID.replace("name: sensor,", "name: Sensor_1,"),
            "spec.components[0].name",
        ),
        (
            "bad-subject",
            VALID.to_string() + "  access: {admins: [{kind: Robot, name: r2}]}\n",
            r#"Unsupported value: "Robot""#,
        ),
    ];
    for (name, yaml, expected) in cases {
        let message = refusal(&ns, name, yaml).await;
        assert_refused(&message, expected);
    }
    ns.delete().await;
}
