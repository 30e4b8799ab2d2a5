//! Sensor liveness (VII-1) heard for real: the project's mosquitto image as
//! the system's broker, behind its Service on the node, with TLS from a
//! Secret as cert-manager would write it; sensor simulators (the example's
//! sensor image) publishing as devices; the operator subscribed over TLS
//! verified for the Service's name. A simulator that stops makes its device
//! silent, and VII-1 fails naming it.
use std::{collections::HashMap, time::Duration};

use iotposture::{
    api::{IoTSystem, Verdict},
    build::meta::child_name,
};
use iotposture_e2e::{RunningOperator, TestNamespace, local_image, wait_until};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::support::tls_secret;

/// VII-1's verdict once it says `says`, or a panic with the last one seen.
async fn vii1(systems: &Api<IoTSystem>, verdict: Verdict, says: &str) -> IoTSystem {
    let last = std::sync::Mutex::new(String::new());
    let found = tokio::time::timeout(
        Duration::from_secs(90),
        wait_until(&format!("VII-1 {verdict:?} saying {says:?}"), || async {
            let system = systems.get("plant").await.ok()?;
            let item = system
                .status
                .as_ref()?
                .items
                .iter()
                .find(|i| i.id == "VII-1")?
                .clone();
            *last.lock().unwrap() = format!("{:?}: {}", item.verdict, item.evidence);
            (item.verdict == verdict && item.evidence.contains(says)).then_some(system)
        }),
    )
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "VII-1 never became {verdict:?} saying {says:?}; last: {}",
            last.lock().unwrap()
        )
    })
}

fn broker(secret: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "broker", "labels": {"app": "broker"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "mosquitto", "image": local_image("mosquitto"), "imagePullPolicy": "Never",
                "ports": [{"name": "mqtts", "containerPort": 8883}],
                "readinessProbe": {"tcpSocket": {"port": 8883}},
                "livenessProbe": {"tcpSocket": {"port": 8883}},
                "volumeMounts": [{"name": "tls", "mountPath": "/etc/iotposture-mqtt/tls", "readOnly": true}],
                "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}},
            }],
            "volumes": [{"name": "tls", "secret": {"secretName": secret}}],
        }
    }))
    .unwrap()
}

/// A device publishing a reading every second, as the example's sensor does.
fn simulator(ns: &str, device: &str, secret: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": device, "labels": {"app": "sensor"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "sensor", "image": local_image("sensor"), "imagePullPolicy": "Never",
                "env": [
                    {"name": "DEVICE", "value": device},
                    {"name": "INTERVAL", "value": "1"},
                    {"name": "MQTT_HOST", "value": format!("broker.{ns}.svc")},
                    {"name": "MQTT_CA", "value": "/etc/ca/ca.crt"},
                ],
                "readinessProbe": {"exec": {"command": ["test", "-e", "/tmp/healthy"]}},
                "livenessProbe": {"exec": {"command": ["true"]}},
                "volumeMounts": [
                    {"name": "ca", "mountPath": "/etc/ca", "readOnly": true},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
                "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
            }],
            "volumes": [
                {"name": "ca", "secret": {"secretName": secret, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"name": "tmp", "emptyDir": {}},
            ],
        }
    }))
    .unwrap()
}

async fn run(ns: &TestNamespace, pod: &Pod) {
    ns.api::<Pod>()
        .create(&PostParams::default(), pod)
        .await
        .unwrap();
    let target = format!("pod/{}", pod.metadata.name.as_deref().unwrap());
    let (ok, _, err) = ns
        .kubectl(
            &["wait", "--for=condition=Ready", "--timeout=120s", &target],
            "",
        )
        .await;
    assert!(ok, "{target} not Ready: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_fails_vii1_by_name_and_recovers_when_heard() {
    let ns = TestNamespace::new("heartbeat").await;
    let secret = child_name("plant", &["gateway", "mqtts"]);
    tls_secret(&ns, &secret, "broker").await;
    ns.apply_manifest(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broker}\nspec:\n  selector: {app: broker}\n  ports: [{name: mqtts, port: 8883, targetPort: mqtts}]\n",
    )
    .await;
    run(&ns, &broker(&secret)).await;
    // No --probe-resolve: the broker is dialled at the Service's ClusterIP.
    let operator = RunningOperator::start_with_probes(&ns, HashMap::new()).await;
    let systems: Api<IoTSystem> = ns.api();
    let system: IoTSystem = serde_saphyr::from_str(
        r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {name: plant}
spec:
  mode: Enforce
  components:
    - name: presses
      role: Sensor
      selector: {matchLabels: {app: sensor}}
      heartbeat:
        maxSilence: 6s
        mqtt: {broker: gateway, port: mqtts, topic: plant/line-1/+/temperature}
        devices: [press-1, press-2]
    - name: gateway
      role: Aggregator
      service: broker
      selector: {matchLabels: {app: broker}}
      ports: [{name: mqtts, port: 8883, tls: true}]
  flows:
    - {from: presses, to: gateway, port: mqtts}
"#,
    )
    .unwrap();
    systems
        .create(&PostParams::default(), &system)
        .await
        .unwrap();

    // Declared, never heard: silent from the start.
    let plant = vii1(&systems, Verdict::Fail, "press-2 (never heard)").await;
    let sensors = plant.status.unwrap().sensors.unwrap();
    assert!(
        sensors.summary.starts_with("2 of 2 devices silent"),
        "{sensors:?}"
    );

    run(&ns, &simulator(&ns.name, "press-1", &secret)).await;
    run(&ns, &simulator(&ns.name, "press-2", &secret)).await;
    let plant = vii1(&systems, Verdict::Pass, "all 2 devices heard within 6s").await;
    let sensors = plant.status.unwrap().sensors.unwrap();
    assert_eq!(sensors.summary, "0 of 2 devices silent", "{sensors:?}");
    assert!(
        sensors
            .devices
            .iter()
            .all(|d| !d.silent && d.last_seen.is_none()),
        "heard devices carry no time, so heartbeats write no status: {sensors:?}"
    );

    // The simulator stops: its device falls silent, named, first in status.
    ns.api::<Pod>()
        .delete("press-1", &DeleteParams::default())
        .await
        .unwrap();
    let plant = vii1(
        &systems,
        Verdict::Fail,
        "1 of 2 devices silent longer than 6s: press-1 (silent for",
    )
    .await;
    let sensors = plant.status.unwrap().sensors.unwrap();
    assert_eq!(sensors.devices[0].device, "press-1", "{sensors:?}");
    assert!(sensors.devices[0].silent && sensors.devices[0].last_seen.is_some());

    run(&ns, &simulator(&ns.name, "press-1", &secret)).await;
    vii1(&systems, Verdict::Pass, "all 2 devices heard").await;

    // A CA the broker's certificate does not chain to: the operator stops
    // listening rather than trust it, and says why once devices fall silent.
    let other = format!("{secret}-other");
    let other_ca = tls_secret(&ns, &other, "broker").await;
    ns.api::<Secret>()
        .patch(
            &secret,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"ca.crt": other_ca}})),
        )
        .await
        .unwrap();
    vii1(&systems, Verdict::Fail, "not listening:").await;
    let evidence = systems.get("plant").await.unwrap().status.unwrap().items;
    let evidence = &evidence.iter().find(|i| i.id == "VII-1").unwrap().evidence;
    assert!(
        evidence.to_lowercase().contains("certificate"),
        "the reason names the certificate: {evidence}"
    );

    operator.stop().await;
    ns.delete().await;
}
