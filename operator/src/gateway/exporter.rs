//! The gateway's log exporter (item VIII-2): reads ModSecurity's JSON audit
//! log as the gateway appends to it and counts failed logins, lockouts and
//! blocked attacks for Prometheus. Runs beside the gateway in the same pod
//! (`iotposture gateway-exporter`); the alert rules in
//! manifests/prometheus/iotposture.rules.yaml fire on these series.
//!
//! Each audit record is also written to the exporter's standard output, one
//! JSON line as ModSecurity wrote it: the node's log collector ships the
//! container's output with the system's other logs (item III-1), so the
//! WAF's blocks reach the log store without a volume the collector reads.

use std::{
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, text::encode},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::Deserialize;

/// Rule IDs of the generated lockout rules (see `config::lockout_rules`).
const RULE_LOCKED_OUT_REFUSED: &str = "10101";
const RULE_FAILED_LOGIN: &str = "10104";
const RULE_LOCKOUT: &str = "10105";
/// The CRS rule that blocks a request once its anomaly score is reached.
const RULE_INBOUND_ANOMALY: &str = "949110";

/// The attack classes of the CRS, from the rule file a rule lives in; a
/// fixed set so that the label stays bounded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Attack {
    sqli,
    xss,
    rce,
    lfi,
    rfi,
    php,
    java,
    protocol,
    scanner,
    session_fixation,
    other,
}

impl Attack {
    fn of_rule(id: &str) -> Option<Attack> {
        let family = id.get(..3)?;
        Some(match family {
            "942" => Attack::sqli,
            "941" => Attack::xss,
            "932" => Attack::rce,
            "930" => Attack::lfi,
            "931" => Attack::rfi,
            "933" => Attack::php,
            "944" => Attack::java,
            "920" | "921" => Attack::protocol,
            "913" => Attack::scanner,
            "943" => Attack::session_fixation,
            // 949/959/980 are the scoring and correlation rules, not a class.
            "949" | "959" | "980" | "901" => return None,
            _ if id.len() == 6 && id.starts_with('9') => Attack::other,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttackLabels {
    attack: Attack,
}

/// What one audit log entry says, for the counters.
#[derive(Debug, Default, PartialEq)]
pub struct Entry {
    pub failed_login: bool,
    pub lockout: bool,
    pub refused_while_locked: bool,
    /// The classes of a request the CRS blocked; empty when not blocked.
    pub blocked: Vec<Attack>,
}

#[derive(Deserialize)]
struct Line {
    transaction: Transaction,
}
#[derive(Deserialize)]
struct Transaction {
    #[serde(default)]
    messages: Vec<Message>,
}
#[derive(Deserialize)]
struct Message {
    details: Details,
}
#[derive(Deserialize)]
struct Details {
    #[serde(rename = "ruleId")]
    rule_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("not a ModSecurity JSON audit entry: {0}")]
pub struct ParseError(#[from] serde_json::Error);

/// Reads one line of the JSON audit log.
pub fn parse(line: &str) -> Result<Entry, ParseError> {
    let line: Line = serde_json::from_str(line)?;
    let ids: Vec<&str> = line
        .transaction
        .messages
        .iter()
        .map(|m| m.details.rule_id.as_str())
        .collect();
    let mut entry = Entry {
        failed_login: ids.contains(&RULE_FAILED_LOGIN),
        lockout: ids.contains(&RULE_LOCKOUT),
        refused_while_locked: ids.contains(&RULE_LOCKED_OUT_REFUSED),
        blocked: Vec::new(),
    };
    if ids.contains(&RULE_INBOUND_ANOMALY) {
        for attack in ids.iter().filter_map(|id| Attack::of_rule(id)) {
            if !entry.blocked.contains(&attack) {
                entry.blocked.push(attack);
            }
        }
        if entry.blocked.is_empty() {
            entry.blocked.push(Attack::other);
        }
    }
    Ok(entry)
}

pub struct Counters {
    registry: Registry,
    failed_logins: Counter,
    lockouts: Counter,
    refused_while_locked: Counter,
    blocked: Family<AttackLabels, Counter>,
    unreadable: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iotposture_gateway");
        let failed_logins = Counter::default();
        let lockouts = Counter::default();
        let refused_while_locked = Counter::default();
        let blocked = Family::<AttackLabels, Counter>::default();
        let unreadable = Counter::default();
        registry.register(
            "failed_logins",
            "Logins the application refused (401/403 at the login path)",
            failed_logins.clone(),
        );
        registry.register(
            "lockouts",
            "Clients locked out of the login after repeated failures (I-1)",
            lockouts.clone(),
        );
        registry.register(
            "locked_out_requests",
            "Login attempts refused because the client is locked out",
            refused_while_locked.clone(),
        );
        registry.register(
            "blocked_attacks",
            "Requests the Core Rule Set blocked, by attack class",
            blocked.clone(),
        );
        registry.register(
            "audit_lines_unreadable",
            "Audit log lines that were not ModSecurity JSON entries",
            unreadable.clone(),
        );
        Self {
            registry,
            failed_logins,
            lockouts,
            refused_while_locked,
            blocked,
            unreadable,
        }
    }
}

impl Counters {
    pub fn record_line(&self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let Ok(entry) = parse(line) else {
            self.unreadable.inc();
            return;
        };
        if entry.failed_login {
            self.failed_logins.inc();
        }
        if entry.lockout {
            self.lockouts.inc();
        }
        if entry.refused_while_locked {
            self.refused_while_locked.inc();
        }
        for attack in entry.blocked {
            self.blocked.get_or_create(&AttackLabels { attack }).inc();
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Follows a file as it grows; starts over when it shrinks (rotation).
pub struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call.
    pub fn read_lines(&mut self) -> std::io::Result<Vec<String>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            // Not written yet: nothing has happened.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines: Vec<String> = self.partial.split('\n').map(String::from).collect();
        self.partial = lines.pop().unwrap_or_default();
        Ok(lines)
    }
}

/// Serves /metrics on `listener` and follows the audit log in `logs`.
pub async fn run(logs: PathBuf, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let counters = Arc::new(Counters::default());
    let follower = {
        let counters = counters.clone();
        let mut tail = Tail::new(&logs.join("modsecurity-audit.log"));
        tokio::spawn(async move {
            loop {
                match tail.read_lines() {
                    Ok(lines) => {
                        let mut out = std::io::stdout().lock();
                        for line in &lines {
                            counters.record_line(line);
                            echo(&mut out, line);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the audit log"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(counters);
    let served = axum::serve(listener, app).await;
    follower.abort();
    served
}

/// Writes one audit record as one line (an empty line is not a record).
fn echo(out: &mut impl std::io::Write, line: &str) {
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() {
        return;
    }
    // Nowhere to report a closed stdout: the counters still count.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

async fn metrics_text(State(counters): State<Arc<Counters>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        counters.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(code: u16, rules: &[&str]) -> String {
        let messages: Vec<String> = rules
            .iter()
            .map(|id| format!(r#"{{"message":"m","details":{{"ruleId":"{id}","tags":[]}}}}"#))
            .collect();
        format!(
            r#"{{"transaction":{{"client_ip":"10.0.0.7","response":{{"http_code":{code}}},"messages":[{}]}}}}"#,
            messages.join(",")
        )
    }

    #[test]
    fn audit_records_are_echoed_one_per_line_and_blank_lines_not_at_all() {
        let mut out = Vec::new();
        echo(&mut out, r#"{"transaction":{"id":"a"}}"#);
        echo(&mut out, "");
        echo(&mut out, "  ");
        echo(&mut out, "{\"transaction\":{\"id\":\"b\"}}\r");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"transaction\":{\"id\":\"a\"}}\n{\"transaction\":{\"id\":\"b\"}}\n"
        );
    }

    #[test]
    fn entries_are_classified_by_rule() {
        let sqli = parse(&line(403, &["942100", "949110", "980130"])).unwrap();
        assert_eq!(sqli.blocked, [Attack::sqli]);
        let scored_only = parse(&line(200, &["920350"])).unwrap();
        assert!(
            scored_only.blocked.is_empty(),
            "below the threshold: not blocked"
        );
        let login = parse(&line(401, &["10104", "10105"])).unwrap();
        assert!(login.failed_login && login.lockout && login.blocked.is_empty());
    }

    #[test]
    fn counters_follow_lines_and_count_garbage() {
        let counters = Counters::default();
        counters.record_line(&line(403, &["941100", "949110"]));
        counters.record_line(&line(401, &["10104"]));
        counters.record_line("not json");
        let text = counters.encode();
        assert!(
            text.contains("iotposture_gateway_blocked_attacks_total{attack=\"xss\"} 1"),
            "{text}"
        );
        assert!(text.contains("iotposture_gateway_failed_logins_total 1"));
        assert!(text.contains("iotposture_gateway_audit_lines_unreadable_total 1"));
    }

    #[test]
    fn tail_reads_whole_lines_and_survives_rotation() {
        let dir = std::env::temp_dir().join(format!("iotposture-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let mut tail = Tail::new(&path);
        assert!(tail.read_lines().unwrap().is_empty(), "no file yet");
        std::fs::write(&path, "one\ntw").unwrap();
        assert_eq!(tail.read_lines().unwrap(), ["one"]);
        std::fs::write(&path, "one\ntwo\n").unwrap();
        assert_eq!(tail.read_lines().unwrap(), ["two"]);
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(
            tail.read_lines().unwrap(),
            ["new"],
            "a shorter file is a new file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
