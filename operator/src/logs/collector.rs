//! The log collector's configuration, generated from the systems' shipping
//! plans (pure: the same plans give the same text), and the collector's own
//! counters read back per exporter.
//!
//! Per system `<ns>/<system>`, named `<ns>.<system>` (a namespace has no dot,
//! so the name is unique and says which system it is):
//!
//! ```text
//! receivers.file_log/<ns>.<system>     the system's pods' CRI log files; the
//!                                      `container` operator parses each line and
//!                                      sets k8s.namespace.name, k8s.pod.name,
//!                                      k8s.container.name from the file's path;
//!                                      resource iotposture.system = "<ns>/<system>"
//! processors.batch                     one definition, one instance per pipeline
//! exporters.otlp_http/<ns>.<system>    OTLP/HTTP (protobuf) to the system's store,
//!                                      TLS (1.3, the plan's CA only), basic auth
//! service.pipelines.logs/<ns>.<system>
//! service.telemetry.metrics            Prometheus on 0.0.0.0:<metrics_port>; the
//!                                      `exporter` label names the system
//! ```
//!
//! The text is JSON, which the collector reads as YAML.
//!
//! Every string a plan carries reaches the collector as literal text. The
//! collector expands `${...}` in any value (`${env:...}`, `${file:...}`), so
//! a `$` taken from an IoTSystem would let its author send the collector's
//! environment or files (its ServiceAccount token) to their own endpoint:
//! each `$` is written `$$`, the collector's escape for a literal `$`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, json};

use crate::controller::validate::{is_dns_label, is_dns_subdomain};

/// Component types as collector v0.165 names them (the older `filelog` and
/// `otlphttp` still load, with a deprecation warning).
pub const RECEIVER_TYPE: &str = "file_log";
pub const EXPORTER_TYPE: &str = "otlp_http";

/// The lowest TLS version the exporter speaks: log stores (VictoriaLogs with
/// `-tlsMinVersion=TLS13`, any current server) speak 1.3.
pub const MIN_TLS_VERSION: &str = "1.3";

/// Name of the pipeline that runs when no system ships logs: the collector
/// refuses a configuration without pipelines (`service.AllowNoPipelines` is
/// an alpha feature gate, a command-line flag we would rather not depend on).
pub const IDLE: &str = "idle";

/// A folder that can never exist (`/dev/null` is a device, not a directory):
/// the idle receiver, and the receiver of a system without pods, watch it.
const NEVER_EXISTS: &str = "/dev/null/iotposture";

/// The resource attribute that tells which IoTSystem a log record is from.
pub const SYSTEM_ATTRIBUTE: &str = "iotposture.system";

/// The collector's counters of log records per exporter (Prometheus names,
/// without the `_total` suffix that some exposition formats add).
pub const SENT_METRIC: &str = "otelcol_exporter_sent_log_records";
pub const FAILED_METRIC: &str = "otelcol_exporter_send_failed_log_records";

/// Headers the exporter sets itself, or that would carry credentials in the
/// ConfigMap's plain text (credentials come from the Secret, `basic_auth_env`).
const RESERVED_HEADERS: [&str; 7] = [
    "authorization",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "host",
    "transfer-encoding",
];

/// Where one IoTSystem's container logs go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shipping {
    pub namespace: String,
    pub system: String,
    /// The system's pods (exact names) in `namespace`: the collector reads
    /// `<log_root>/<namespace>_<pod>_*/*/*.log`, the kubelet's CRI files.
    pub pods: Vec<String>,
    /// Full OTLP/HTTP logs URL, e.g.
    /// `https://logs.example:9428/insert/opentelemetry/v1/logs`.
    pub endpoint: String,
    /// The CA that signs the store's certificate, as a path in the collector pod.
    pub ca_file: String,
    /// The environment variable holding base64(`<username>:<password>`), sent
    /// as `Authorization: Basic <value>`. The collector cannot encode at run
    /// time, so the operator writes the encoded value into the Secret the
    /// variable comes from.
    pub basic_auth_env: Option<String>,
    /// More request headers (e.g. a store's tenant or stream-field headers).
    pub extra_headers: BTreeMap<String, String>,
    /// The operator's own pods, whose output holds the decision record
    /// (item VII-2): `<namespace>/<pod name prefix>`. Their container
    /// `operator` is read too, and only the record's lines about this
    /// system are kept, so each system's store holds its own decisions.
    pub decisions_from: Option<(String, String)>,
    /// A file holding the system's canary record (absolute path): shipped
    /// as it is, so the operator can look for it in the store (III-1).
    pub canary_file: Option<String>,
}

/// The container of the operator's pods whose output holds the record.
pub const OPERATOR_CONTAINER: &str = "operator";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("log shipping for {system}: {reason}")]
    Invalid { system: String, reason: String },
    #[error("log shipping for {0} is planned twice")]
    Duplicate(String),
    #[error("the pod log folder {0:?} must be an absolute path without glob characters")]
    LogRoot(String),
}

/// A system's canary record: one line naming the system and a nonce the
/// operator then looks for in the store.
pub fn canary_line(namespace: &str, system: &str, nonce: &str) -> String {
    format!("{{\"iotposture.canary\":\"{nonce}\",\"system\":\"{namespace}/{system}\"}}\n")
}

/// The LogsQL query for a system's canary record of the last `since` (plus
/// a margin for batching and the store's own delay). The nonce is hex, one
/// word of the message.
pub fn canary_query(namespace: &str, system: &str, nonce: &str, since_secs: u64) -> String {
    format!(
        "_time:{}s \"{SYSTEM_ATTRIBUTE}\":=\"{namespace}/{system}\" \"{nonce}\" | limit 1",
        since_secs + 300
    )
}

/// The name of a system's receiver, exporter and pipeline.
pub fn component_name(namespace: &str, system: &str) -> String {
    format!("{namespace}.{system}")
}

impl Shipping {
    /// `<ns>.<system>`, the name of this system's components.
    pub fn name(&self) -> String {
        component_name(&self.namespace, &self.system)
    }

    /// The exporter's id, as the `exporter` label of the collector's metrics
    /// shows it (the key of `exporter_counters`).
    pub fn exporter_id(&self) -> String {
        format!("{EXPORTER_TYPE}/{}", self.name())
    }

    /// Refuses what would not be a Kubernetes name, a plain HTTPS URL, an
    /// absolute path, an environment variable or a simple header. Names
    /// become file globs and component names, so only Kubernetes' own
    /// characters pass (no `*`, `_`, `/`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            system: format!("{}/{}", self.namespace, self.system),
            reason,
        };
        if !is_dns_label(&self.namespace) {
            return Err(invalid(format!(
                "namespace {:?} is not a Kubernetes name",
                self.namespace
            )));
        }
        if !is_dns_subdomain(&self.system) {
            return Err(invalid(format!(
                "system {:?} is not a Kubernetes name",
                self.system
            )));
        }
        if let Some(pod) = self.pods.iter().find(|p| !is_dns_subdomain(p)) {
            return Err(invalid(format!("pod {pod:?} is not a Kubernetes name")));
        }
        if let Some((namespace, prefix)) = &self.decisions_from
            && !(is_dns_label(namespace) && is_dns_subdomain(prefix))
        {
            return Err(invalid(format!(
                "the operator's pods {namespace}/{prefix} are not Kubernetes names"
            )));
        }
        if let Some(file) = &self.canary_file
            && (!file.starts_with('/')
                || file
                    .chars()
                    .any(|c| c.is_control() || "*?[]{}\\$".contains(c)))
        {
            return Err(invalid(format!(
                "canary file {file:?} is not an absolute path without glob characters"
            )));
        }
        let Some(rest) = self.endpoint.strip_prefix("https://") else {
            return Err(invalid(format!(
                "endpoint {:?} is not an https:// URL (logs and credentials travel only over TLS)",
                self.endpoint
            )));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty()
            || authority.contains('@')
            || self
                .endpoint
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(format!(
                "endpoint {:?} needs a host, and no user or spaces",
                self.endpoint
            )));
        }
        if !self.ca_file.starts_with('/') || self.ca_file.chars().any(char::is_control) {
            return Err(invalid(format!(
                "CA file {:?} is not an absolute path",
                self.ca_file
            )));
        }
        if let Some(var) = &self.basic_auth_env
            && !is_env_name(var)
        {
            return Err(invalid(format!(
                "{var:?} is not an environment variable name"
            )));
        }
        for (name, value) in &self.extra_headers {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(invalid(format!(
                    "header name {name:?} is not a plain token"
                )));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(invalid(format!(
                    "header {name} is set by the collector or carries credentials (use the Secret)"
                )));
            }
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(invalid(format!("header {name} has control characters")));
            }
        }
        Ok(())
    }
}

/// The collector's configuration for these plans: one receiver, exporter
/// and pipeline per system; with no plans, an idle pipeline that ships
/// nothing. `log_root` is where the node's pod logs are mounted
/// (`/var/log/pods`); `metrics_port` serves the collector's own metrics.
pub fn collector_config(
    plans: &[Shipping],
    log_root: &str,
    metrics_port: u16,
) -> Result<String, ConfigError> {
    if !log_root.starts_with('/')
        || log_root
            .chars()
            .any(|c| c.is_control() || "*?[]{}\\".contains(c))
    {
        return Err(ConfigError::LogRoot(log_root.to_string()));
    }
    let root = literal(log_root.trim_end_matches('/'));

    let mut receivers = Map::new();
    let mut exporters = Map::new();
    let mut pipelines = Map::new();
    let mut names = BTreeSet::new();
    for plan in plans {
        plan.validate()?;
        let name = plan.name();
        if !names.insert(name.clone()) {
            return Err(ConfigError::Duplicate(format!(
                "{}/{}",
                plan.namespace, plan.system
            )));
        }
        let pods: BTreeSet<&String> = plan.pods.iter().collect();
        let include: Vec<String> = if pods.is_empty() {
            // Kept with its exporter, so the system's counters stay while its
            // pods come and go.
            vec![format!("{NEVER_EXISTS}/*.log")]
        } else {
            pods.iter()
                .map(|pod| format!("{root}/{}_{pod}_*/*/*.log", plan.namespace))
                .collect()
        };
        receivers.insert(
            format!("{RECEIVER_TYPE}/{name}"),
            json!({
                "include": include,
                // The container operator reads namespace, pod and container
                // from the path (…/<ns>_<pod>_<uid>/<container>/<n>.log).
                "include_file_path": true,
                "include_file_name": false,
                // No storage extension: a restarted collector reads the files
                // again from the start (duplicates rather than gaps).
                "start_at": "beginning",
                "resource": { SYSTEM_ATTRIBUTE: format!("{}/{}", plan.namespace, plan.system) },
                "operators": [{ "type": "container" }],
            }),
        );
        let mut headers = Map::new();
        if let Some(var) = &plan.basic_auth_env {
            // The one `${...}` this generator writes on purpose.
            headers.insert(
                "Authorization".into(),
                format!("Basic ${{env:{var}}}").into(),
            );
        }
        for (k, v) in &plan.extra_headers {
            headers.insert(k.clone(), literal(v).into());
        }
        exporters.insert(
            format!("{EXPORTER_TYPE}/{name}"),
            json!({
                "logs_endpoint": literal(&plan.endpoint),
                // VictoriaLogs takes OTLP as protobuf only.
                "encoding": "proto",
                "compression": "gzip",
                // Only the plan's CA: never the system pool, never unverified.
                "tls": {
                    "ca_file": literal(&plan.ca_file),
                    "min_version": MIN_TLS_VERSION,
                    "include_system_ca_certs_pool": false,
                },
                "headers": headers,
            }),
        );
        let mut pipeline_receivers = vec![format!("{RECEIVER_TYPE}/{name}")];
        if let Some((namespace, prefix)) = &plan.decisions_from {
            let decisions = format!("{RECEIVER_TYPE}/{name}.decisions");
            // The record's lines begin `{"index":N,"time":"…","system":"<ns>/<name>"`;
            // the names are Kubernetes names, so they need no escaping.
            let ours = format!(
                "body startsWith '{{\"index\":' and body contains '\"system\":\"{}/{}\",'",
                plan.namespace, plan.system
            );
            receivers.insert(
                decisions.clone(),
                json!({
                    "include": [format!("{root}/{namespace}_{prefix}-*_*/{OPERATOR_CONTAINER}/*.log")],
                    "include_file_path": true,
                    "include_file_name": false,
                    "start_at": "beginning",
                    "resource": { SYSTEM_ATTRIBUTE: format!("{}/{}", plan.namespace, plan.system) },
                    "operators": [
                        { "type": "container" },
                        { "type": "filter", "expr": format!("not ({ours})") },
                    ],
                }),
            );
            pipeline_receivers.push(decisions);
        }
        if let Some(file) = &plan.canary_file {
            let canary = format!("{RECEIVER_TYPE}/{name}.canary");
            receivers.insert(
                canary.clone(),
                json!({
                    "include": [file],
                    "start_at": "beginning",
                    "resource": { SYSTEM_ATTRIBUTE: format!("{}/{}", plan.namespace, plan.system) },
                }),
            );
            pipeline_receivers.push(canary);
        }
        pipelines.insert(
            format!("logs/{name}"),
            json!({
                "receivers": pipeline_receivers,
                "processors": ["batch"],
                "exporters": [format!("{EXPORTER_TYPE}/{name}")],
            }),
        );
    }
    if plans.is_empty() {
        receivers.insert(
            format!("{RECEIVER_TYPE}/{IDLE}"),
            json!({ "include": [format!("{NEVER_EXISTS}/*.log")] }),
        );
        // Never connects: nothing reaches it, and `.invalid` never resolves
        // (RFC 6761) should anything ever try.
        exporters.insert(
            format!("{EXPORTER_TYPE}/{IDLE}"),
            json!({
                "logs_endpoint": "https://idle.invalid/",
                "tls": { "min_version": MIN_TLS_VERSION },
            }),
        );
        pipelines.insert(
            format!("logs/{IDLE}"),
            json!({
                "receivers": [format!("{RECEIVER_TYPE}/{IDLE}")],
                "exporters": [format!("{EXPORTER_TYPE}/{IDLE}")],
            }),
        );
    }
    let config = json!({
        "receivers": receivers,
        "processors": { "batch": {} },
        "exporters": exporters,
        "service": {
            "pipelines": pipelines,
            "telemetry": {
                "metrics": {
                    "level": "normal",
                    "readers": [{ "pull": { "exporter": { "prometheus": {
                        "host": "0.0.0.0",
                        "port": metrics_port,
                        // Stable names: no unit or _total suffixes, no scope labels.
                        "without_scope_info": true,
                        "without_type_suffix": true,
                        "without_units": true,
                    }}}}],
                },
            },
        },
    });
    Ok(serde_json::to_string_pretty(&config).expect("a JSON value prints") + "\n")
}

/// Log records each exporter sent and failed to send, from the collector's
/// Prometheus text (`/metrics` on the metrics port), by exporter id
/// (`otlp_http/<ns>.<system>`, see `Shipping::exporter_id`). An exporter
/// shows up once it has sent or dropped something.
pub fn exporter_counters(metrics_text: &str) -> BTreeMap<String, (f64, f64)> {
    let mut counters: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in metrics_text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let name = name.strip_suffix("_total").unwrap_or(name);
        let sent = match name {
            SENT_METRIC => true,
            FAILED_METRIC => false,
            _ => continue,
        };
        let Some(exporter) = labels.get("exporter") else {
            continue;
        };
        // Summed over any other labels, so a new label does not split the count.
        let entry = counters.entry(exporter.clone()).or_default();
        if sent {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    counters
}

/// One sample line: `name{label="value",...} value [timestamp]`.
fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(end);
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        loop {
            // A label name, up to '='; or the closing brace.
            let mut key = String::new();
            let mut closed = None;
            for (i, c) in chars.by_ref() {
                match c {
                    '}' => {
                        closed = Some(i);
                        break;
                    }
                    '=' => break,
                    ',' | ' ' => {}
                    c => key.push(c),
                }
            }
            if let Some(i) = closed {
                rest = &after[i + 1..];
                break;
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// `$` as the collector's configuration spells a literal dollar.
fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::{
        io::{Read, Write},
        path::PathBuf,
        process::{Command, Stdio},
        time::{Duration, Instant},
    };

    fn plan(namespace: &str, system: &str, pods: &[&str]) -> Shipping {
        Shipping {
            namespace: namespace.into(),
            system: system.into(),
            pods: pods.iter().map(|p| p.to_string()).collect(),
            endpoint: "https://logs.example:9428/insert/opentelemetry/v1/logs".into(),
            ca_file: "/etc/iotposture-logs/ca.crt".into(),
            basic_auth_env: Some("LOGS_PLANT_LINE_1".into()),
            extra_headers: BTreeMap::new(),
            decisions_from: None,
            canary_file: None,
        }
    }

    fn config(plans: &[Shipping]) -> Value {
        let text = collector_config(plans, "/var/log/pods", 8888).expect("valid plans");
        serde_json::from_str(&text).expect("JSON")
    }

    /// Every string of a JSON value, keys included.
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            Value::Object(o) => o.iter().for_each(|(k, v)| {
                out.push(k.clone());
                strings(v, out)
            }),
            _ => {}
        }
    }

    #[test]
    fn one_system_reads_its_pods_and_ships_over_verified_tls() {
        let mut p = plan("plant", "line-1", &["broker-0", "sensor-7f9c"]);
        p.extra_headers
            .insert("VL-Stream-Fields".into(), "k8s.pod.name".into());
        let c = config(&[p.clone()]);

        let r = &c["receivers"]["file_log/plant.line-1"];
        assert_eq!(
            r["include"],
            json!([
                "/var/log/pods/plant_broker-0_*/*/*.log",
                "/var/log/pods/plant_sensor-7f9c_*/*/*.log"
            ])
        );
        assert_eq!(r["include_file_path"], true);
        assert_eq!(r["start_at"], "beginning");
        assert_eq!(r["operators"], json!([{"type": "container"}]));
        assert_eq!(r["resource"]["iotposture.system"], "plant/line-1");

        let e = &c["exporters"][p.exporter_id()];
        assert_eq!(p.exporter_id(), "otlp_http/plant.line-1");
        assert_eq!(
            e["logs_endpoint"],
            "https://logs.example:9428/insert/opentelemetry/v1/logs"
        );
        assert_eq!(e["encoding"], "proto");
        assert_eq!(e["tls"]["ca_file"], "/etc/iotposture-logs/ca.crt");
        assert_eq!(e["tls"]["min_version"], "1.3");
        assert_eq!(e["tls"]["include_system_ca_certs_pool"], false);
        assert_eq!(
            e["headers"]["Authorization"],
            "Basic ${env:LOGS_PLANT_LINE_1}"
        );
        assert_eq!(e["headers"]["VL-Stream-Fields"], "k8s.pod.name");

        assert_eq!(
            c["service"]["pipelines"]["logs/plant.line-1"],
            json!({"receivers": ["file_log/plant.line-1"], "processors": ["batch"],
                   "exporters": ["otlp_http/plant.line-1"]})
        );
        assert!(c["processors"]["batch"].is_object());
        let prom =
            &c["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"];
        assert_eq!(prom["host"], "0.0.0.0");
        assert_eq!(prom["port"], 8888);

        let mut all = Vec::new();
        strings(&c, &mut all);
        assert!(!all.iter().any(|s| s.contains("insecure")), "{all:?}");
    }

    #[test]
    fn each_system_gets_its_own_components_and_same_names_in_two_namespaces_stay_apart() {
        let plans = [
            plan("plant", "line-1", &["a"]),
            plan("lab", "line-1", &["a"]),
            plan("plant", "line-1.east", &[]),
        ];
        let c = config(&plans);
        for p in &plans {
            let name = p.name();
            assert!(c["receivers"][format!("file_log/{name}")].is_object());
            assert!(c["exporters"][p.exporter_id()].is_object());
            assert!(c["service"]["pipelines"][format!("logs/{name}")].is_object());
        }
        assert_eq!(c["service"]["pipelines"].as_object().unwrap().len(), 3);
        // No pods yet: the receiver watches a folder that cannot exist.
        assert_eq!(
            c["receivers"]["file_log/plant.line-1.east"]["include"],
            json!(["/dev/null/iotposture/*.log"])
        );
        assert_eq!(
            c["receivers"]["file_log/lab.line-1"]["resource"]["iotposture.system"],
            "lab/line-1"
        );
    }

    #[test]
    fn a_canary_file_is_shipped_as_it_is_with_the_system_named() {
        let mut p = plan("plant", "line-1", &["a"]);
        p.canary_file = Some("/etc/iotposture-logs/canary/plant.line-1.log".into());
        let c = config(&[p.clone()]);
        let r = &c["receivers"]["file_log/plant.line-1.canary"];
        assert_eq!(
            r["include"],
            json!(["/etc/iotposture-logs/canary/plant.line-1.log"])
        );
        assert_eq!(r["resource"]["iotposture.system"], "plant/line-1");
        // A plain line, not a CRI one.
        assert!(r.get("operators").is_none());
        assert_eq!(
            c["service"]["pipelines"]["logs/plant.line-1"]["receivers"],
            json!(["file_log/plant.line-1", "file_log/plant.line-1.canary"])
        );
        for bad in ["canary.log", "/etc/*.log", "/etc/${env:X}.log"] {
            p.canary_file = Some(bad.into());
            assert!(
                matches!(collector_config(&[p.clone()], "/var/log/pods", 8888),
                    Err(ConfigError::Invalid { reason, .. }) if reason.contains("canary file")),
                "{bad}"
            );
        }
        assert_eq!(
            canary_line("plant", "line-1", "00ff"),
            "{\"iotposture.canary\":\"00ff\",\"system\":\"plant/line-1\"}\n"
        );
        assert_eq!(
            canary_query("plant", "line-1", "00ff", 60),
            r#"_time:360s "iotposture.system":="plant/line-1" "00ff" | limit 1"#
        );
    }

    #[test]
    fn the_same_system_twice_is_refused() {
        let p = plan("plant", "line-1", &["a"]);
        assert_eq!(
            collector_config(&[p.clone(), p], "/var/log/pods", 8888),
            Err(ConfigError::Duplicate("plant/line-1".into()))
        );
    }

    #[test]
    fn no_plans_give_an_idle_pipeline() {
        let c = config(&[]);
        let pipelines = c["service"]["pipelines"].as_object().unwrap();
        assert_eq!(pipelines.len(), 1);
        assert_eq!(
            pipelines["logs/idle"],
            json!({"receivers": ["file_log/idle"], "exporters": ["otlp_http/idle"]})
        );
        assert_eq!(
            c["receivers"]["file_log/idle"]["include"],
            json!(["/dev/null/iotposture/*.log"])
        );
    }

    #[test]
    fn output_is_the_same_for_the_same_plans_and_reads_as_yaml() {
        let plans = [
            plan("plant", "line-1", &["b", "a", "a"]),
            plan("lab", "x", &["c"]),
        ];
        let text = collector_config(&plans, "/var/log/pods/", 9999).unwrap();
        assert_eq!(
            text,
            collector_config(&plans, "/var/log/pods", 9999).unwrap()
        );
        let as_yaml: Value = serde_saphyr::from_str(&text).expect("YAML");
        assert_eq!(as_yaml, serde_json::from_str::<Value>(&text).unwrap());
        // Pods sorted and once each.
        assert_eq!(
            as_yaml["receivers"]["file_log/plant.line-1"]["include"],
            json!([
                "/var/log/pods/plant_a_*/*/*.log",
                "/var/log/pods/plant_b_*/*/*.log"
            ])
        );
    }

    #[test]
    fn dollars_from_a_plan_stay_literal() {
        let mut p = plan("plant", "line-1", &["a"]);
        p.extra_headers
            .insert("X-Tenant".into(), "${file:/var/run/secrets/token}".into());
        p.endpoint = "https://logs.example/insert?x=${env:HOME}".into();
        p.ca_file = "/etc/ca$1.pem".into();
        let text = collector_config(&[p.clone()], "/var/log/$pods", 8888).unwrap();
        let c: Value = serde_json::from_str(&text).unwrap();
        let e = &c["exporters"][p.exporter_id()];
        assert_eq!(e["headers"]["X-Tenant"], "$${file:/var/run/secrets/token}");
        assert_eq!(
            e["logs_endpoint"],
            "https://logs.example/insert?x=$${env:HOME}"
        );
        assert_eq!(e["tls"]["ca_file"], "/etc/ca$$1.pem");
        assert_eq!(
            c["receivers"]["file_log/plant.line-1"]["include"][0],
            "/var/log/$$pods/plant_a_*/*/*.log"
        );
        // The credentials header is the only expansion.
        let expansions = text.matches("${").count() - text.matches("$${").count();
        assert_eq!(expansions, 1, "{text}");
    }

    #[test]
    fn plans_that_could_leak_or_escape_are_refused() {
        type Change = fn(&mut Shipping);
        let cases: [(&str, Change); 20] = [
            ("plain http", |p| p.endpoint = "http://logs:9428/x".into()),
            ("no scheme", |p| p.endpoint = "logs:9428".into()),
            ("user in URL", |p| p.endpoint = "https://u:pw@logs/x".into()),
            ("no host", |p| p.endpoint = "https:///x".into()),
            ("space", |p| p.endpoint = "https://logs/ x".into()),
            ("relative CA", |p| p.ca_file = "ca.crt".into()),
            ("env name", |p| p.basic_auth_env = Some("A-B".into())),
            ("env expansion", |p| {
                p.basic_auth_env = Some("}${file:/x".into())
            }),
            ("glob pod", |p| p.pods = vec!["*".into()]),
            ("underscore pod", |p| p.pods = vec!["a_b".into()]),
            ("dot-dot pod", |p| p.pods = vec!["..".into()]),
            ("slash pod", |p| p.pods = vec!["a/../b".into()]),
            ("dotted namespace", |p| p.namespace = "a.b".into()),
            ("upper system", |p| p.system = "Line".into()),
            ("empty system", |p| p.system = String::new()),
            ("EXPR system", |p| p.system = "EXPR(env(\"X\"))".into()),
            ("auth header", |p| {
                p.extra_headers
                    .insert("authorization".into(), "Bearer x".into());
            }),
            ("host header", |p| {
                p.extra_headers.insert("Host".into(), "x".into());
            }),
            ("header injection", |p| {
                p.extra_headers.insert("X-A".into(), "a\r\nX-B: b".into());
            }),
            ("header name", |p| {
                p.extra_headers.insert("X ${env:A}".into(), "a".into());
            }),
        ];
        for (what, change) in cases {
            let mut p = plan("plant", "line-1", &["a"]);
            change(&mut p);
            let err = collector_config(&[p], "/var/log/pods", 8888)
                .expect_err(what)
                .to_string();
            assert!(err.starts_with("log shipping for "), "{what}: {err}");
        }
        for root in ["var/log/pods", "/var/log/*", "/var/log/{a,b}"] {
            assert_eq!(
                collector_config(&[], root, 8888),
                Err(ConfigError::LogRoot(root.into()))
            );
        }
    }

    /// Excerpts of what the collector (v0.165, this module's telemetry
    /// settings) served on its metrics port, verbatim: after shipping two
    /// records to VictoriaLogs, and after the store refused two (wrong
    /// password: a permanent error, dropped at once).
    const METRICS_SENT: &str = r#"# HELP otelcol_exporter_in_flight_requests Number of export requests currently in-flight (including retry backoff). [Development]
# TYPE otelcol_exporter_in_flight_requests gauge
otelcol_exporter_in_flight_requests{data_type="logs",exporter="otlp_http/plant.line-1"} 0
# HELP otelcol_exporter_queue_capacity Fixed capacity of the retry queue (in batches). [Alpha]
# TYPE otelcol_exporter_queue_capacity gauge
otelcol_exporter_queue_capacity{data_type="logs",exporter="otlp_http/plant.line-1"} 1000
# HELP otelcol_exporter_queue_size Current size of the retry queue (in batches). [Alpha]
# TYPE otelcol_exporter_queue_size gauge
otelcol_exporter_queue_size{data_type="logs",exporter="otlp_http/plant.line-1"} 0
# HELP otelcol_exporter_sent_log_records Number of log record successfully sent to destination. [Alpha]
# TYPE otelcol_exporter_sent_log_records counter
otelcol_exporter_sent_log_records{exporter="otlp_http/plant.line-1",server_address="127.0.0.1",server_port="19428",url_path="/insert/opentelemetry/v1/logs"} 2
# HELP otelcol_receiver_accepted_log_records Number of log records successfully pushed into the pipeline. [Alpha]
# TYPE otelcol_receiver_accepted_log_records counter
otelcol_receiver_accepted_log_records{receiver="file_log/plant.line-1",transport=""} 2
# HELP target_info Target metadata
# TYPE target_info gauge
target_info{service_instance_id="fbda6a85-6fee-4878-a665-8d0310795ea4",service_name="iotposture-otelcol",service_version="0.165.0-iotposture"} 1
"#;
    const METRICS_FAILED: &str = r#"# HELP otelcol_exporter_send_failed_log_records Number of log records in failed attempts to send to destination. At detailed telemetry level, includes attributes: error.type (semantic convention), error.permanent. [Alpha]
# TYPE otelcol_exporter_send_failed_log_records counter
otelcol_exporter_send_failed_log_records{exporter="otlp_http/plant.line-1",server_address="127.0.0.1",server_port="19428",url_path="/insert/opentelemetry/v1/logs"} 2
# HELP otelcol_exporter_sent_log_records Number of log record successfully sent to destination. [Alpha]
# TYPE otelcol_exporter_sent_log_records counter
otelcol_exporter_sent_log_records{exporter="otlp_http/plant.line-1",server_address="127.0.0.1",server_port="19428",url_path="/insert/opentelemetry/v1/logs"} 0
"#;

    #[test]
    fn counters_per_exporter() {
        assert_eq!(
            exporter_counters(METRICS_SENT),
            BTreeMap::from([("otlp_http/plant.line-1".to_string(), (2.0, 0.0))])
        );
        assert_eq!(
            exporter_counters(METRICS_FAILED),
            BTreeMap::from([("otlp_http/plant.line-1".to_string(), (0.0, 2.0))])
        );
        // Two systems in one scrape stay apart.
        let both = METRICS_SENT.to_string()
            + &METRICS_FAILED.replace("otlp_http/plant.line-1", "otlp_http/lab.x");
        assert_eq!(
            exporter_counters(&both),
            BTreeMap::from([
                ("otlp_http/lab.x".to_string(), (0.0, 2.0)),
                ("otlp_http/plant.line-1".to_string(), (2.0, 0.0)),
            ])
        );
    }

    #[test]
    fn counters_with_total_suffix_timestamps_escapes_and_split_labels() {
        let text = r#"otelcol_exporter_sent_log_records_total{exporter="otlp_http/a.b",x="q\"}{,"} 5 1700000000000
otelcol_exporter_sent_log_records_total{x="2",exporter="otlp_http/a.b"} 1.5
otelcol_exporter_send_failed_log_records{exporter="otlp_http/a.b"} 7
otelcol_exporter_sent_log_records{data_type="logs"} 9
otelcol_exporter_sent_spans{exporter="otlp_http/a.b"} 100
otelcol_exporter_sent_log_records{exporter="broken} 1
garbage
"#;
        assert_eq!(
            exporter_counters(text),
            BTreeMap::from([("otlp_http/a.b".to_string(), (6.5, 7.0))])
        );
        assert!(exporter_counters("").is_empty());
    }

    /// The collector built by e2e/logs/build.sh: `IOTPOSTURE_OTELCOL`, else
    /// `<workspace>/target/logs/bin/iotposture-otelcol`.
    fn otelcol() -> PathBuf {
        let bin = std::env::var_os("IOTPOSTURE_OTELCOL")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/logs/bin/iotposture-otelcol")
            });
        assert!(
            bin.is_file(),
            "{} is missing: build it with `bash e2e/logs/build.sh` (make test does), \
             or point IOTPOSTURE_OTELCOL at it",
            bin.display()
        );
        bin
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("iotposture-logs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_real_collector_accepts_the_configurations() {
        let bin = otelcol();
        let dir = scratch_dir("validate");
        let three = [
            plan("plant", "line-1", &["broker-0", "sensor-1"]),
            Shipping {
                basic_auth_env: None,
                extra_headers: BTreeMap::from([("AccountID".into(), "0".into())]),
                ..plan("lab", "line-1", &["a"])
            },
            plan("plant", "line-2.east", &[]),
        ];
        for (n, plans) in [(0, &three[..0]), (1, &three[..1]), (3, &three[..])] {
            let file = dir.join(format!("{n}.yaml"));
            std::fs::write(
                &file,
                collector_config(plans, "/var/log/pods", 8888).unwrap(),
            )
            .unwrap();
            let out = Command::new(&bin)
                .arg("validate")
                .arg(format!("--config={}", file.display()))
                .env("LOGS_PLANT_LINE_1", "dXNlcjpwYXNz")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{n} plans: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // And the check is real: a misspelt setting is refused.
        let file = dir.join("wrong.yaml");
        let wrong = collector_config(&three[..1], "/var/log/pods", 8888)
            .unwrap()
            .replace("\"include_file_path\"", "\"include_file_paths\"");
        std::fs::write(&file, wrong).unwrap();
        let out = Command::new(&bin)
            .arg("validate")
            .arg(format!("--config={}", file.display()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "a misspelt setting passed validate");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_real_collector_runs_idle_and_serves_its_metrics() {
        let bin = otelcol();
        let dir = scratch_dir("idle");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = dir.join("idle.yaml");
        std::fs::write(&file, collector_config(&[], "/var/log/pods", port).unwrap()).unwrap();
        let log = std::fs::File::create(dir.join("otelcol.log")).unwrap();
        let mut child = Command::new(&bin)
            .arg(format!("--config={}", file.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let metrics = loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the collector stopped ({status}): {}",
                    std::fs::read_to_string(dir.join("otelcol.log")).unwrap_or_default()
                );
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200") {
                    break body;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no metrics on port {port} within 20s"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        // Running, and idle: nothing sent, nothing failed.
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the idle collector exited"
        );
        assert!(exporter_counters(&metrics).is_empty(), "{metrics}");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
