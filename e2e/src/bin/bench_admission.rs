//! Admission benchmark (not a test): latency percentiles and throughput of the
//! webhooks under concurrent AdmissionReview load on loopback, measured against
//! a bare TLS round trip to the same server (`/healthz`) in the same run, so the
//! ratios hold on a noisy machine. Writes bench/results/admission.json.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use iotposture::{
    api::IoTSystem,
    metrics::Metrics,
    webhook::{self, WebhookState, certs::ServingCert},
};
use serde_json::{Value, json};

const CONCURRENCY: usize = 16;
const REQUESTS: usize = 4000;

fn review(kind: &str, group: &str, resource: &str, object: Value) -> Bytes {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "bench",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "namespace": "plant",
            "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": object,
            "dryRun": false,
        }
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

struct Scenario {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Bytes,
}

async fn worker(
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    scenario: Arc<Scenario>,
    count: usize,
) -> Vec<Duration> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tls.connect(name, tcp).await.unwrap();
    iotposture_e2e::bench::timed_requests(TokioIo::new(stream), scenario.name, count, || {
        hyper::Request::builder()
            .method(scenario.method)
            .uri(scenario.path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(scenario.body.clone()))
            .unwrap()
    })
    .await
}

async fn run(
    addr: std::net::SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    scenario: Scenario,
) -> Value {
    let scenario = Arc::new(scenario);
    let start = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            tokio::spawn(worker(
                addr,
                tls.clone(),
                scenario.clone(),
                REQUESTS / CONCURRENCY,
            ))
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    iotposture_e2e::bench::summary(all, start.elapsed())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench/results/admission.json".into());
    let mut system: IoTSystem = serde_saphyr::from_str(include_str!(
        "../../../operator/tests/fixtures/factory.yaml"
    ))?;
    system.metadata.uid = Some("bench".into());
    let systems = iotposture::controller::index::Indexed::of([system]);

    let cert = ServingCert::issue(&["127.0.0.1".into()], SystemTime::now())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let slot = Arc::new(std::sync::RwLock::new(Arc::new(cert.server_config()?)));
    let state = WebhookState {
        systems,
        metrics: Arc::new(Metrics::default()),
        images: webhook::gateway::Images {
            gateway: iotposture::gateway::DEFAULT_GATEWAY_IMAGE.into(),
            exporter: iotposture::gateway::DEFAULT_EXPORTER_IMAGE.into(),
        },
        // Ready from the start: the caches here are the one system above.
        ready: tokio::sync::watch::channel(true).1,
        // Only the IoTSystem webhook talks to the API server; this measures pods.
        client: kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse()?))?,
        handovers: None,
    };
    // Never asked to stop: the sender is kept for the whole run.
    let (_keep_serving, draining) = tokio::sync::watch::channel(false);
    tokio::spawn(webhook::serve(listener, slot, state, draining));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.chain[1].clone())?;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client));

    let bare_pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gw", "namespace": "plant", "labels": {"app": "mqtt-gateway"}},
        "spec": {"containers": [{"name": "broker", "image": "registry.example.com/broker:2.0.18", "ports": [{"containerPort": 8883}]}]}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "gw", "namespace": "plant"},
        "spec": {"selector": {"matchLabels": {"app": "mqtt-gateway"}}, "template": {"metadata": {"labels": {"app": "mqtt-gateway"}},
          "spec": {"containers": [{"name": "broker", "image": "registry.example.com/broker:latest", "ports": [{"containerPort": 22}]}]}}}});
    let scenarios = [
        Scenario {
            name: "tls_round_trip_healthz",
            method: "GET",
            path: "/healthz",
            body: Bytes::new(),
        },
        Scenario {
            name: "mutate_bare_pod",
            method: "POST",
            path: "/mutate",
            body: review("Pod", "", "pods", bare_pod),
        },
        Scenario {
            name: "validate_bad_deployment",
            method: "POST",
            path: "/validate",
            body: review("Deployment", "apps", "deployments", deployment),
        },
    ];
    // Warm up connections and caches.
    for s in &scenarios {
        let warm = Scenario {
            name: s.name,
            method: s.method,
            path: s.path,
            body: s.body.clone(),
        };
        worker(addr, tls.clone(), Arc::new(warm), 50).await;
    }
    let mut results = serde_json::Map::new();
    for s in scenarios {
        let name = s.name;
        let r = run(addr, &tls, s).await;
        eprintln!("{name}: {r}");
        results.insert(name.into(), r);
    }
    let base = results["tls_round_trip_healthz"]["p50_us"]
        .as_f64()
        .unwrap_or(1.0)
        .max(1.0);
    let ratio = |name: &str| {
        (results[name]["p50_us"].as_f64().unwrap_or(0.0) / base * 100.0).round() / 100.0
    };
    let report = json!({
        "benchmark": "admission",
        "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "concurrency": CONCURRENCY,
        "requests_per_scenario": REQUESTS,
        "scenarios": results,
        "p50_ratio_to_tls_round_trip": {
            "mutate_bare_pod": ratio("mutate_bare_pod"),
            "validate_bad_deployment": ratio("validate_bad_deployment"),
        },
    });
    iotposture_e2e::bench::write_report(&out, &report)
}
