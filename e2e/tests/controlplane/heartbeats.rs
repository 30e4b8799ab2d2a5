//! Sensor liveness (VII-1) heard for real: the project's mosquitto image as
//! the system's broker, behind its Service on the node, with TLS from a
//! Secret as cert-manager would write it; sensor simulators (the example's
//! sensor image) publishing as devices; the operator subscribed over TLS
//! verified for the Service's name. A simulator that stops makes its device
//! silent, and VII-1 fails naming it; the alert rule the operator wrote
//! fires in Debian's Prometheus, and Alertmanager delivers it to a webhook
//! the test runs (VIII-1 passes once the rules are loaded and routed).
use std::time::Duration;

use iotposture::{
    api::{IoTSystem, Verdict, monitoring::prometheusrule::PrometheusRule},
    build::meta::child_name,
};
use iotposture_e2e::{
    Prometheus, RunningOperator, TestNamespace,
    alerting::{Alertmanager, WebhookSink},
    free_addr, local_image, operator_client, wait_until,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::support::tls_secret;

/// VII-1's verdict once it says `says`, or a panic with the last one seen.
async fn vii1(systems: &Api<IoTSystem>, verdict: Verdict, says: &str) -> IoTSystem {
    item(systems, "VII-1", verdict, says).await
}

async fn item(systems: &Api<IoTSystem>, id: &str, verdict: Verdict, says: &str) -> IoTSystem {
    let last = std::sync::Mutex::new(String::new());
    let found = tokio::time::timeout(
        Duration::from_secs(90),
        wait_until(&format!("{id} {verdict:?} saying {says:?}"), || async {
            let system = systems.get("plant").await.ok()?;
            let item = system
                .status
                .as_ref()?
                .items
                .iter()
                .find(|i| i.id == id)?
                .clone();
            *last.lock().unwrap() = format!("{:?}: {}", item.verdict, item.evidence);
            (item.verdict == verdict && item.evidence.contains(says)).then_some(system)
        }),
    )
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "{id} never became {verdict:?} saying {says:?}; last: {}",
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
    // Alerts go to Alertmanager, which posts them to the test's webhook.
    let sink = WebhookSink::start().await;
    let alertmanager = Alertmanager::start(sink.addr).await;
    let prometheus_addr = free_addr();
    // No --probe-resolve: the broker is dialled at the Service's ClusterIP.
    let mut options = RunningOperator::options(&ns, false);
    options.alerting = Some(iotposture::controller::alerting::AlertingOptions {
        prometheus: format!("http://{prometheus_addr}"),
        alertmanager: Some(format!("http://{}", alertmanager.addr)),
        interval: Duration::from_secs(1),
    });
    let operator = RunningOperator::start_as(&ns, operator_client().await, options).await;
    // The operator's metrics, for Prometheus to scrape.
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let serving = tokio::spawn(iotposture::http::serve(
        metrics,
        operator.metrics.clone(),
        operator.health.clone(),
    ));
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

    // The plane serves the Prometheus Operator's CRD, so the rules are a
    // PrometheusRule; its spec is a rules file, loaded here as one.
    let rules: Api<PrometheusRule> = ns.api();
    let rules = wait_until("the alert rules PrometheusRule", || async {
        rules.get_opt("plant-alert-rules").await.ok()?
    })
    .await;
    let dir = std::env::temp_dir().join(format!("iotposture-e2e-rules-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plant.rules.yaml"),
        serde_json::to_string(&rules.spec).unwrap(),
    )
    .unwrap();
    let _prometheus = Prometheus::start_with(
        prometheus_addr,
        "iotposture",
        &[metrics_addr],
        Some(&dir.join("*.yaml")),
        Some(alertmanager.addr),
    )
    .await;

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
    // The rules are loaded and an alert of the system reaches the webhook receiver.
    item(
        &systems,
        "VIII-1",
        Verdict::Pass,
        "the rules IoTSensorSilent, IoTSensorCrashLooping, IoTSensorRestarting are loaded in Prometheus and routed to team (webhook)",
    )
    .await;

    // While nothing changes, the broker's Secrets are not read again (the
    // subscription is kept while their resourceVersions stay).
    let audit = iotposture_e2e::AuditLog::default();
    let mark = audit.mark();
    tokio::time::sleep(Duration::from_secs(22)).await;
    let reads: Vec<_> = audit
        .entries_since(mark)
        .into_iter()
        .filter(|e| {
            e["objectRef"]["resource"] == "secrets"
                && e["objectRef"]["namespace"] == ns.name.as_str()
        })
        .collect();
    assert!(
        reads.is_empty(),
        "Secrets read again with nothing changed: {reads:?}"
    );

    // The simulator stops: its device falls silent, named, first in status.
    let delivered_before = sink.received().len();
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
    // ... and someone is told: the alert arrives at the webhook.
    let alert = tokio::time::timeout(
        Duration::from_secs(60),
        wait_until("IoTSensorSilent delivered to the webhook", || async {
            sink.received()
                .into_iter()
                .skip(delivered_before)
                .flat_map(|payload| payload["alerts"].as_array().cloned().unwrap_or_default())
                .find(|a| {
                    a["status"] == "firing"
                        && a["labels"]["alertname"] == "IoTSensorSilent"
                        && a["labels"]["iotsystem"] == "plant"
                })
        }),
    )
    .await
    .expect("the silent sensor's alert reached the webhook");
    assert_eq!(alert["labels"]["checklist_item"], "VIII-1", "{alert}");
    assert_eq!(alert["labels"]["component"], "presses", "{alert}");
    item(
        &systems,
        "VIII-1",
        Verdict::Pass,
        "firing now: IoTSensorSilent",
    )
    .await;

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

    serving.abort();
    operator.stop().await;
    ns.delete().await;
    let _ = std::fs::remove_dir_all(&dir);
}
