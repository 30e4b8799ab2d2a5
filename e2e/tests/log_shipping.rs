//! Log shipping end to end, without a cluster: the collector built by
//! `e2e/logs/build.sh`, configured by the operator's generator, tails CRI
//! log files laid out as the kubelet writes them (a temporary folder stands
//! in for /var/log/pods) and ships them over TLS with basic auth to a real
//! VictoriaLogs; the store answers with the lines and their Kubernetes
//! attributes, and the collector's counters say per system what was sent
//! and what was refused.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use iotposture::logs::collector::{
    Shipping, canary_line, canary_query, collector_config, exporter_counters,
};
use iotposture_e2e::logstore::{self, LogStore};
use serde_json::Value;

/// The collector from `IOTPOSTURE_OTELCOL`, else
/// `<workspace>/target/logs/bin/iotposture-otelcol`.
fn otelcol_bin() -> PathBuf {
    let bin = std::env::var_os("IOTPOSTURE_OTELCOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/logs/bin/iotposture-otelcol")
        });
    assert!(
        bin.is_file(),
        "{} is missing: build it with `bash e2e/logs/build.sh` (make test does), \
         or point IOTPOSTURE_OTELCOL at it",
        bin.display()
    );
    bin
}

/// The running collector and its folder; stopped and removed when dropped.
struct Collector {
    child: Child,
    dir: PathBuf,
}

impl Collector {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("otelcol.log")).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Now as the CRI writes it: RFC 3339, nanoseconds, UTC. The store refuses
/// entries older than its retention, so fixed old dates would not do.
fn cri_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let secs = now.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        now.subsec_nanos()
    )
}

/// Writes `<root>/<ns>_<pod>_<uid>/<container>/0.log` with one CRI line per
/// message (stream stdout, full lines).
fn write_pod_log(root: &Path, ns: &str, pod: &str, uid: &str, container: &str, lines: &[&str]) {
    let dir = root.join(format!("{ns}_{pod}_{uid}")).join(container);
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = lines
        .iter()
        .map(|l| format!("{} stdout F {l}\n", cri_now()))
        .collect();
    std::fs::write(dir.join("0.log"), text).unwrap();
}

/// The collector's own metrics (plain HTTP on loopback).
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).to_string()
}

fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or_default()
}

#[tokio::test]
async fn container_logs_reach_the_store_with_their_system_and_pod() {
    let store = LogStore::start(
        &logstore::victoria_logs_bin(),
        [127, 0, 0, 1].into(),
        &["logs.iotposture.test".to_string()],
    )
    .await;
    // Auth is on: no credentials, no answer.
    let (code, _) = store
        .call_as(None, "GET", "/select/logsql/query?query=*", None)
        .await;
    assert_eq!(code, 401);

    let dir = std::env::temp_dir().join(format!("iotposture-log-shipping-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pods = dir.join("pods");
    write_pod_log(
        &pods,
        "plant",
        "broker-0",
        "5f0c2a9e-1b2c-4d3e-8f90-a1b2c3d4e5f6",
        "mosquitto",
        &["hello from broker-0", "second line from broker-0"],
    );
    // A pod of the same namespace that no plan names: never read.
    write_pod_log(
        &pods,
        "plant",
        "other-0",
        "0a0b0c0d-0000-4000-8000-000000000001",
        "app",
        &["not for shipping"],
    );
    // The same system name in another namespace, with a wrong password.
    write_pod_log(
        &pods,
        "lab",
        "sensor-1",
        "0a0b0c0d-0000-4000-8000-000000000002",
        "sensor",
        &["refused line one", "refused line two", "refused line three"],
    );
    // The operator's pod: its decision record about two systems, and its
    // own log lines. Only the plant's record lines go with the plant's logs.
    let plant_decisions = [
        r#"{"index":0,"time":"2026-11-30T07:02:44Z","system":"plant/line-1","kind":"Applied","subject":"NetworkPolicy/a","detail":"applied","prevRoot":"AA=="}"#,
        r#"{"index":1,"time":"2026-11-30T07:02:45Z","system":"plant/line-1","kind":"Verdict","subject":"III-1","detail":"Pass","prevRoot":"AB=="}"#,
    ];
    write_pod_log(
        &pods,
        "iotposture-system",
        "iotposture-7d9f8c-x2k4p",
        "0a0b0c0d-0000-4000-8000-000000000003",
        "operator",
        &[
            plant_decisions[0],
            r#"{"index":0,"time":"2026-11-30T07:02:44Z","system":"plant/line-10","kind":"Applied","subject":"Role/b","detail":"applied","prevRoot":"AA=="}"#,
            r#"{"timestamp":"2026-11-30T07:02:44Z","level":"INFO","fields":{"message":"reconciled","system":"plant/line-1"}}"#,
            plant_decisions[1],
        ],
    );
    // Another container of a pod of that name: not the record.
    write_pod_log(
        &pods,
        "iotposture-system",
        "iotposture-log-collector-abcde",
        "0a0b0c0d-0000-4000-8000-000000000004",
        "collector",
        &[plant_decisions[0]],
    );
    std::fs::write(dir.join("ca.crt"), &store.ca_pem).unwrap();

    let ca_file = dir.join("ca.crt").display().to_string();
    // The plant's canary record, as the operator's ConfigMap puts it in the
    // collector's folder.
    let canaries = dir.join("canary");
    std::fs::create_dir_all(&canaries).unwrap();
    let canary_file = canaries.join("plant.line-1.log");
    std::fs::write(&canary_file, canary_line("plant", "line-1", "5eed0001")).unwrap();
    let plans = [
        Shipping {
            namespace: "plant".into(),
            system: "line-1".into(),
            pods: vec!["broker-0".into()],
            endpoint: store.otlp_logs_url(),
            ca_file: ca_file.clone(),
            basic_auth_env: Some("LOGS_PLANT".into()),
            extra_headers: BTreeMap::new(),
            decisions_from: Some(("iotposture-system".into(), "iotposture".into())),
            canary_file: Some(canary_file.display().to_string()),
        },
        Shipping {
            namespace: "lab".into(),
            system: "line-1".into(),
            pods: vec!["sensor-1".into()],
            endpoint: store.otlp_logs_url(),
            ca_file,
            basic_auth_env: Some("LOGS_LAB".into()),
            extra_headers: BTreeMap::new(),
            decisions_from: None,
            canary_file: None,
        },
    ];
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = collector_config(&plans, pods.to_str().unwrap(), metrics_port).unwrap();
    std::fs::write(dir.join("otelcol.yaml"), config).unwrap();
    let log = std::fs::File::create(dir.join("otelcol.log")).unwrap();
    let collector = Collector {
        child: Command::new(otelcol_bin())
            .arg(format!("--config={}", dir.join("otelcol.yaml").display()))
            // Pre-encoded, as the operator's Secret holds them.
            .env("LOGS_PLANT", store.basic_credentials())
            .env(
                "LOGS_LAB",
                logstore::base64(format!("{}:wrong", store.username).as_bytes()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        dir,
    };

    let query = r#""iotposture.system":="plant/line-1" "k8s.namespace.name":=plant"#;
    store.wait_for(query).await;
    // Both lines (they may come in two batches).
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        store.flush().await;
        let found = store.query(query).await;
        if found.len() >= 2 || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut messages: Vec<&str> = found.iter().map(|e| field(e, "_msg")).collect();
    messages.sort();
    assert_eq!(
        messages,
        ["hello from broker-0", "second line from broker-0"],
        "{found:#?}"
    );
    for entry in &found {
        assert_eq!(field(entry, "k8s.namespace.name"), "plant", "{entry}");
        assert_eq!(field(entry, "k8s.pod.name"), "broker-0", "{entry}");
        assert_eq!(field(entry, "k8s.container.name"), "mosquitto", "{entry}");
        assert_eq!(field(entry, "log.iostream"), "stdout", "{entry}");
    }

    // Per system: the plant's exporter sent its two records, the lab's had
    // its three refused (401 is permanent: dropped and counted at once).
    let deadline = Instant::now() + Duration::from_secs(60);
    let counters = loop {
        let counters = exporter_counters(&scrape(metrics_port).await);
        let sent = counters.get("otlp_http/plant.line-1").copied();
        let failed = counters.get("otlp_http/lab.line-1").copied();
        if sent.is_some_and(|(s, _)| s >= 5.0) && failed.is_some_and(|(_, f)| f >= 3.0) {
            break counters;
        }
        assert!(
            Instant::now() < deadline,
            "counters {counters:?}\n{}",
            collector.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Two lines of the broker, two decisions, the canary.
    assert_eq!(counters["otlp_http/plant.line-1"], (5.0, 0.0));
    assert_eq!(counters["otlp_http/lab.line-1"], (0.0, 3.0));

    // The plant's decisions, in order, and nothing else of the operator's.
    store.flush().await;
    let decisions = store
        .query(r#""iotposture.system":="plant/line-1" "k8s.namespace.name":="iotposture-system" | sort by (_msg)"#)
        .await;
    let shipped: Vec<&str> = decisions.iter().map(|e| field(e, "_msg")).collect();
    assert_eq!(shipped, plant_decisions, "{decisions:#?}");
    for entry in &decisions {
        assert_eq!(field(entry, "k8s.container.name"), "operator", "{entry}");
    }

    // The canary is found by the operator's own query, and only its nonce.
    store.flush().await;
    let found = store
        .query(&canary_query("plant", "line-1", "5eed0001", 60))
        .await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        store
            .query(&canary_query("plant", "line-1", "5eed0002", 60))
            .await
            .is_empty()
    );
    assert!(
        store
            .query(&canary_query("lab", "line-1", "5eed0001", 60))
            .await
            .is_empty()
    );
    // A new canary replaces the file as the kubelet updates a ConfigMap
    // volume (a new file renamed over the old): it is read and shipped too.
    let next = canaries.join(".next");
    std::fs::write(&next, canary_line("plant", "line-1", "5eed0002")).unwrap();
    std::fs::rename(&next, &canary_file).unwrap();
    store
        .wait_for(&canary_query("plant", "line-1", "5eed0002", 60))
        .await;

    store.flush().await;
    assert!(store.query(r#"_msg:"refused line""#).await.is_empty());
    assert!(store.query(r#"_msg:"not for shipping""#).await.is_empty());
    assert!(
        store.query(r#""k8s.namespace.name":=lab"#).await.is_empty(),
        "the lab's lines went in despite the wrong password"
    );
    drop(collector);
}
