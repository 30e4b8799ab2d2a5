//! The alert rules of one IoTSystem, in the shape of a Prometheus rule file
//! (and of a PrometheusRule's `spec.groups`, which is the same shape).
//!
//! Rules are per system rather than one global file so that each alert
//! carries the system's identity as rule labels (`iotsystem`,
//! `iotsystem_namespace`): those are what the loaded check looks for in
//! `/api/v1/rules` and what the routing check feeds to the Alertmanager
//! route tree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alerts::Error;

/// Checklist item of abnormal sensor state (silent, crash-looping, restarting).
pub const ITEM_ABNORMAL_STATE: &str = "VIII-1";
/// Checklist item of failed-login bursts, lockouts and certificates near expiry.
pub const ITEM_LOGIN_AND_CERTS: &str = "VIII-2";
/// Rule label with the IoTSystem's name.
pub const LABEL_SYSTEM: &str = "iotsystem";
/// Rule label with the IoTSystem's namespace.
pub const LABEL_NAMESPACE: &str = "iotsystem_namespace";

const SENSOR_SILENT: &str = "IoTSensorSilent";
const SENSOR_CRASH_LOOPING: &str = "IoTSensorCrashLooping";
const SENSOR_RESTARTING: &str = "IoTSensorRestarting";
const FAILED_LOGIN_BURST: &str = "IoTFailedLoginBurst";
const CLIENT_LOCKED_OUT: &str = "IoTClientLockedOut";
const CERTIFICATE_EXPIRING_SOON: &str = "IoTCertificateExpiringSoon";

/// Every alert this module can generate, with its checklist item.
pub const ALERTS: &[(&str, &str)] = &[
    (SENSOR_SILENT, ITEM_ABNORMAL_STATE),
    (SENSOR_CRASH_LOOPING, ITEM_ABNORMAL_STATE),
    (SENSOR_RESTARTING, ITEM_ABNORMAL_STATE),
    (FAILED_LOGIN_BURST, ITEM_LOGIN_AND_CERTS),
    (CLIENT_LOCKED_OUT, ITEM_LOGIN_AND_CERTS),
    (CERTIFICATE_EXPIRING_SOON, ITEM_LOGIN_AND_CERTS),
];

/// Which rules apply to a system, and their thresholds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wants {
    /// The system has Sensor components: alert when their containers
    /// crash-loop or keep restarting.
    pub sensors: bool,
    /// The operator tracks device heartbeats for the system: alert when a
    /// device goes silent.
    pub heartbeats: bool,
    /// The system has web logins behind the gateway: alert on failed-login
    /// bursts and lockouts.
    pub web_logins: bool,
    /// Regex (RE2, fully anchored by Prometheus) of the system's web gateway
    /// pod names. The gateway series carry `namespace` and `pod` but no
    /// `system`, so without it the login rules cover the whole namespace.
    pub web_pod_regex: Option<String>,
    /// The system has TLS ports whose certificates the operator probes.
    pub tls: bool,
    /// Alert when a certificate has fewer seconds than this left.
    pub cert_warning_seconds: u64,
    /// Alert when this many failed logins happen within 5 minutes.
    pub failed_login_burst: u64,
}

impl Default for Wants {
    fn default() -> Self {
        Self {
            sensors: false,
            heartbeats: false,
            web_logins: false,
            web_pod_regex: None,
            tls: false,
            // cert-manager renews 30 days ahead by default; half of that
            // left means renewal is not happening.
            cert_warning_seconds: 15 * 24 * 3600,
            failed_login_burst: 10,
        }
    }
}

/// A Prometheus rule file: `groups:` at the top.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesFile {
    pub groups: Vec<RuleGroup>,
}

/// One rule group, as in a rule file or a PrometheusRule's `spec.groups`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// One alerting rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    /// A Prometheus duration such as `5m`; absent fires on the first
    /// evaluation that returns a result.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The name of a system's rule group. Not unique across systems in
/// general (`a-b`/`c` and `a`/`b-c` meet): nothing here relies on it,
/// the loaded check goes by the rule labels.
pub fn group_name(namespace: &str, system: &str) -> String {
    format!("iotposture-{namespace}-{system}")
}

/// The alert names [`rule_groups`] generates for `wants`, in order.
pub fn expected_alerts(wants: &Wants) -> Vec<&'static str> {
    specs(wants).into_iter().map(|s| s.alert).collect()
}

/// The rule groups of one system: one group, or none when no rule applies.
pub fn rule_groups(namespace: &str, system: &str, wants: &Wants) -> Vec<RuleGroup> {
    let rules: Vec<Rule> = specs(wants)
        .into_iter()
        .map(|spec| spec.rule(namespace, system, wants))
        .collect();
    if rules.is_empty() {
        return Vec::new();
    }
    vec![RuleGroup {
        name: group_name(namespace, system),
        rules,
    }]
}

/// The labels known before any alert fires, per alert: `alertname`, the
/// rule labels, and the series labels that survive the rule's aggregation
/// and have a value known in advance (`namespace`, `system`). Labels such as
/// `component` or `pod` depend on the series, and Prometheus' external
/// labels on its configuration, so neither is here: a route that matches on
/// them is resolved as if the label were empty, as Alertmanager does for a
/// missing label.
pub fn alert_label_sets(
    namespace: &str,
    system: &str,
    wants: &Wants,
) -> Vec<(String, BTreeMap<String, String>)> {
    specs(wants)
        .into_iter()
        .map(|spec| {
            let mut labels = rule_labels(namespace, system, spec.severity, spec.item);
            labels.insert("alertname".to_string(), spec.alert.to_string());
            labels.insert("namespace".to_string(), namespace.to_string());
            if spec.keeps_system {
                labels.insert("system".to_string(), system.to_string());
            }
            (spec.alert.to_string(), labels)
        })
        .collect()
}

/// The groups as a Prometheus rule file. Written with serde-saphyr; the
/// output is checked by `promtool check rules` in the tests.
pub fn rules_file_yaml(groups: &[RuleGroup]) -> Result<String, Error> {
    #[derive(Serialize)]
    struct File<'a> {
        groups: &'a [RuleGroup],
    }
    // One line per expression: folded block scalars would read the same,
    // but are harder to read and to diff.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&File { groups }, options)
        .map_err(|e| Error::RulesYaml(e.to_string()))
}

#[derive(Clone, Copy)]
enum Kind {
    Silent,
    CrashLooping,
    Restarting,
    FailedLogins,
    Lockouts,
    CertificateExpiry,
}

struct Spec {
    alert: &'static str,
    item: &'static str,
    severity: &'static str,
    for_: Option<&'static str>,
    /// Whether the expression keeps the `system` series label.
    keeps_system: bool,
    kind: Kind,
}

fn specs(wants: &Wants) -> Vec<Spec> {
    let mut out = Vec::new();
    if wants.heartbeats {
        out.push(Spec {
            alert: SENSOR_SILENT,
            item: ITEM_ABNORMAL_STATE,
            severity: "warning",
            // The operator calls a device silent only once maxSilence has
            // passed without a heartbeat: that is the persistence already.
            for_: None,
            keeps_system: true,
            kind: Kind::Silent,
        });
    }
    if wants.sensors {
        out.push(Spec {
            alert: SENSOR_CRASH_LOOPING,
            item: ITEM_ABNORMAL_STATE,
            severity: "warning",
            // The expression looks back 5m (see below); 15m of that means
            // the container kept going back into CrashLoopBackOff, not that
            // it crashed once.
            for_: Some("15m"),
            keeps_system: true,
            kind: Kind::CrashLooping,
        });
        out.push(Spec {
            alert: SENSOR_RESTARTING,
            item: ITEM_ABNORMAL_STATE,
            severity: "warning",
            // The 15m window of the expression is the persistence already.
            for_: None,
            keeps_system: true,
            kind: Kind::Restarting,
        });
    }
    if wants.web_logins {
        out.push(Spec {
            alert: FAILED_LOGIN_BURST,
            item: ITEM_LOGIN_AND_CERTS,
            severity: "warning",
            for_: None,
            keeps_system: false,
            kind: Kind::FailedLogins,
        });
        out.push(Spec {
            alert: CLIENT_LOCKED_OUT,
            item: ITEM_LOGIN_AND_CERTS,
            severity: "warning",
            for_: None,
            keeps_system: false,
            kind: Kind::Lockouts,
        });
    }
    if wants.tls {
        out.push(Spec {
            alert: CERTIFICATE_EXPIRING_SOON,
            item: ITEM_LOGIN_AND_CERTS,
            severity: "warning",
            // Rides out a probe that saw the old certificate while a renewed
            // one was being rolled out.
            for_: Some("10m"),
            keeps_system: true,
            kind: Kind::CertificateExpiry,
        });
    }
    out
}

fn rule_labels(
    namespace: &str,
    system: &str,
    severity: &str,
    item: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SYSTEM.to_string(), system.to_string()),
        (LABEL_NAMESPACE.to_string(), namespace.to_string()),
        ("severity".to_string(), severity.to_string()),
        ("checklist_item".to_string(), item.to_string()),
    ])
}

impl Spec {
    fn rule(&self, namespace: &str, system: &str, wants: &Wants) -> Rule {
        let ns = promql_string(namespace);
        let sys = promql_string(system);
        let by_component = "namespace, system, component";
        let (expr, summary, description) = match self.kind {
            Kind::Silent => (
                format!(
                    "max by ({by_component}) (iotposture_sensor_devices{{namespace={ns}, system={sys}, state=\"silent\"}}) > 0"
                ),
                "{{ $value }} device(s) of {{ $labels.namespace }}/{{ $labels.system }} {{ $labels.component }} went silent",
                "No heartbeat arrived within the timeout: the device, its network or its power failed, or someone took it off-line. kubectl get iotsystem {{ $labels.system }} -n {{ $labels.namespace }} -o yaml names the devices.",
            ),
            // CrashLoopBackOff alternates with short running spells between
            // back-offs (capped at 5m), so the gauge dips to 0 now and then;
            // max_over_time over 5m bridges those dips, else `for` would
            // restart at every dip and never fire.
            Kind::CrashLooping => (
                format!(
                    "max by ({by_component}) (max_over_time(iotposture_component_crash_looping_containers{{namespace={ns}, system={sys}}}[5m])) > 0"
                ),
                "{{ $labels.namespace }}/{{ $labels.system }} {{ $labels.component }} is crash-looping",
                "{{ $value }} container(s) keep crashing and Kubernetes backs off restarting them; kubectl logs --previous shows why.",
            ),
            // The series is a gauge of summed restartCounts: it rises by one
            // per restart and drops when a pod is replaced (the new pod starts
            // at 0). increase() would read such a drop as a counter reset and
            // count the surviving pods' totals as new restarts; delta() would
            // let a drop cancel real restarts and extrapolates to fractions.
            // The rise above the window's lowest value counts only restarts
            // (after the last drop), exactly, and works for series younger
            // than the window.
            Kind::Restarting => {
                let sel = format!(
                    "iotposture_component_container_restarts{{namespace={ns}, system={sys}}}"
                );
                (
                    format!("max by ({by_component}) ({sel} - min_over_time({sel}[15m])) > 3"),
                    "{{ $labels.namespace }}/{{ $labels.system }} {{ $labels.component }} restarted {{ $value }} times in 15 minutes",
                    "Its containers keep restarting: crashes, failing liveness probes or OOM kills; kubectl describe pod shows the last state.",
                )
            }
            // A Service spreads a guessing run over the replicas, so the
            // burst is counted over all of the system's web pods together.
            Kind::FailedLogins => (
                format!(
                    "sum by (namespace) (increase(iotposture_gateway_failed_logins_total{{{}}}[5m])) >= {}",
                    gateway_selector(&ns, wants),
                    wants.failed_login_burst
                ),
                "{{ $value | humanize }} failed logins in 5 minutes at the web gateways of {{ $labels.namespace }}",
                "Someone may be guessing passwords; the gateway's audit log names the client addresses.",
            ),
            Kind::Lockouts => (
                format!(
                    "sum by (namespace, pod) (increase(iotposture_gateway_lockouts_total{{{}}}[5m])) > 0",
                    gateway_selector(&ns, wants)
                ),
                "The gateway at {{ $labels.namespace }}/{{ $labels.pod }} locked a client out of the login",
                "Too many failed logins from one client; the gateway's audit log names the client address.",
            ),
            Kind::CertificateExpiry => (
                format!(
                    "min by ({by_component}, port) (iotposture_certificate_expiry_timestamp_seconds{{namespace={ns}, system={sys}}}) - time() < {}",
                    wants.cert_warning_seconds
                ),
                "{{ $labels.namespace }}/{{ $labels.system }} {{ $labels.component }}/{{ $labels.port }} presents a certificate that expires in {{ $value | humanizeDuration }}",
                "Renewal is not happening (a negative time means it expired); clients that verify certificates will refuse this endpoint.",
            ),
        };
        Rule {
            alert: self.alert.to_string(),
            expr,
            for_: self.for_.map(str::to_string),
            labels: rule_labels(namespace, system, self.severity, self.item),
            annotations: BTreeMap::from([
                ("summary".to_string(), summary.to_string()),
                ("description".to_string(), description.to_string()),
            ]),
        }
    }
}

fn gateway_selector(quoted_namespace: &str, wants: &Wants) -> String {
    match &wants.web_pod_regex {
        Some(re) => format!("namespace={quoted_namespace}, pod=~{}", promql_string(re)),
        None => format!("namespace={quoted_namespace}"),
    }
}

/// `s` as a PromQL double-quoted string literal. PromQL unescapes string
/// literals like Go does, so backslash and double quote are escaped, and
/// control characters (a raw newline ends the literal) are written as
/// `\uXXXX`.
pub(crate) fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn all() -> Wants {
        Wants {
            sensors: true,
            heartbeats: true,
            web_logins: true,
            web_pod_regex: Some("dashboard-.*".to_string()),
            tls: true,
            ..Wants::default()
        }
    }

    /// A fresh directory for files handed to promtool.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("iotposture-alerts-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn promtool(args: &[&str], dir: &Path) -> std::process::Output {
        match Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
        {
            Ok(out) => out,
            Err(e) => panic!(
                "promtool is needed for this test (Debian: apt-get install -y prometheus): {e}"
            ),
        }
    }

    #[test]
    fn one_group_per_system_with_every_wanted_rule() {
        let groups = rule_groups("plant", "line-1", &all());
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].name, "iotposture-plant-line-1");
        let names: Vec<&str> = groups[0].rules.iter().map(|r| r.alert.as_str()).collect();
        let all_names: Vec<&str> = ALERTS.iter().map(|(a, _)| *a).collect();
        assert_eq!(names, all_names);
        assert_eq!(expected_alerts(&all()), all_names);
        for rule in &groups[0].rules {
            let item = ALERTS.iter().find(|(a, _)| *a == rule.alert).unwrap().1;
            assert_eq!(rule.labels["iotsystem"], "line-1");
            assert_eq!(rule.labels["iotsystem_namespace"], "plant");
            assert_eq!(rule.labels["checklist_item"], item);
            assert_eq!(rule.labels["severity"], "warning");
            assert!(rule.annotations.contains_key("summary"));
        }
        assert_eq!(
            groups[0].rules[0].expr,
            r#"max by (namespace, system, component) (iotposture_sensor_devices{namespace="plant", system="line-1", state="silent"}) > 0"#
        );
        assert_eq!(
            groups[0].rules[3].expr,
            r#"sum by (namespace) (increase(iotposture_gateway_failed_logins_total{namespace="plant", pod=~"dashboard-.*"}[5m])) >= 10"#
        );
        assert_eq!(
            groups[0].rules[5].expr,
            r#"min by (namespace, system, component, port) (iotposture_certificate_expiry_timestamp_seconds{namespace="plant", system="line-1"}) - time() < 1296000"#
        );
    }

    #[test]
    fn only_the_wanted_rules() {
        assert!(rule_groups("a", "b", &Wants::default()).is_empty());
        let tls_only = Wants {
            tls: true,
            ..Wants::default()
        };
        let groups = rule_groups("a", "b", &tls_only);
        assert_eq!(groups[0].rules.len(), 1);
        assert_eq!(groups[0].rules[0].alert, "IoTCertificateExpiringSoon");
        let logins = Wants {
            web_logins: true,
            ..Wants::default()
        };
        let groups = rule_groups("a", "b", &logins);
        assert_eq!(
            groups[0].rules[1].expr,
            r#"sum by (namespace, pod) (increase(iotposture_gateway_lockouts_total{namespace="a"}[5m])) > 0"#
        );
        let sensors = Wants {
            sensors: true,
            ..Wants::default()
        };
        assert_eq!(
            expected_alerts(&sensors),
            ["IoTSensorCrashLooping", "IoTSensorRestarting"]
        );
    }

    #[test]
    fn label_sets_carry_alertname_rule_labels_and_known_series_labels() {
        let sets = alert_label_sets("plant", "line-1", &all());
        assert_eq!(sets.len(), ALERTS.len());
        let (name, silent) = &sets[0];
        assert_eq!(name, "IoTSensorSilent");
        assert_eq!(silent["alertname"], "IoTSensorSilent");
        assert_eq!(silent["system"], "line-1");
        assert_eq!(silent["namespace"], "plant");
        assert_eq!(silent["iotsystem"], "line-1");
        let burst = &sets[3].1;
        assert!(!burst.contains_key("system"));
        assert_eq!(burst["checklist_item"], "VIII-2");
    }

    #[test]
    fn yaml_is_a_rule_file_that_reads_back_the_same() {
        let groups = rule_groups("plant", "line-1", &all());
        let yaml = rules_file_yaml(&groups).unwrap();
        assert!(yaml.starts_with("groups:"), "{yaml}");
        assert!(yaml.contains("\n    for: 15m\n"), "{yaml}");
        let back: RulesFile = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back.groups, groups);
        // The restart rule has no `for`, and the key is left out.
        let restarting = yaml.split("- alert: IoTSensorRestarting").nth(1).unwrap();
        let restarting = restarting.split("- alert:").next().unwrap();
        assert!(!restarting.contains("for:"), "{restarting}");
    }

    #[test]
    fn escapes_label_values_in_promql() {
        assert_eq!(promql_string("plant"), r#""plant""#);
        assert_eq!(promql_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(promql_string("a\nb\u{7}"), r#""a\nb\u0007""#);
        let wants = Wants {
            web_logins: true,
            web_pod_regex: Some(r#"web-\d+"#.to_string()),
            ..Wants::default()
        };
        let groups = rule_groups("ns", "sys", &wants);
        assert!(
            groups[0].rules[0].expr.contains(r#"pod=~"web-\\d+""#),
            "{}",
            groups[0].rules[0].expr
        );
    }

    /// Go's unquoting of the escapes [`promql_string`] writes, to check
    /// that PromQL reads back the original.
    fn unquote(lit: &str) -> String {
        let inner = &lit[1..lit.len() - 1];
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                assert!(c != '"' && c != '\n', "unescaped {c:?} in {lit}");
                out.push(c);
                continue;
            }
            match chars.next().unwrap() {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).unwrap();
                    out.push(char::from_u32(code).unwrap());
                }
                other => panic!("unexpected escape \\{other} in {lit}"),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn promql_strings_read_back(s in any::<String>()) {
            prop_assert_eq!(unquote(&promql_string(&s)), s);
        }

        /// Whatever the names and the regex, the YAML reads back as written.
        #[test]
        fn yaml_reads_back(ns in any::<String>(), sys in any::<String>(), re in any::<String>()) {
            let wants = Wants { web_pod_regex: Some(re), ..all() };
            let groups = rule_groups(&ns, &sys, &wants);
            let yaml = rules_file_yaml(&groups).unwrap();
            let back: RulesFile = serde_saphyr::from_str(&yaml).unwrap();
            prop_assert_eq!(back.groups, groups);
        }
    }

    #[test]
    fn promtool_accepts_the_rule_file() {
        let dir = scratch_dir("check");
        let mut groups = rule_groups("plant", "line-1", &all());
        // Awkward but legal values: a quote and a backslash in label values,
        // a regex with escapes.
        let odd = Wants {
            web_pod_regex: Some(r#"web-(a|b)-\d+\."x""#.to_string()),
            ..all()
        };
        groups.extend(rule_groups(r#"ns"q"#, r"sys\1", &odd));
        let path = dir.join("rules.yaml");
        std::fs::write(&path, rules_file_yaml(&groups).unwrap()).unwrap();
        let out = promtool(&["check", "rules", "rules.yaml"], &dir);
        assert!(
            out.status.success(),
            "promtool check rules failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 12 rules found"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Unit tests of the rules' behaviour (testdata/rules.test.yaml), run by
    /// `promtool test rules` against the generated file.
    #[test]
    fn promtool_unit_tests_pass() {
        let dir = scratch_dir("unit");
        let groups = rule_groups("plant", "line-1", &all());
        std::fs::write(dir.join("rules.yaml"), rules_file_yaml(&groups).unwrap()).unwrap();
        std::fs::write(
            dir.join("rules.test.yaml"),
            include_str!("testdata/rules.test.yaml"),
        )
        .unwrap();
        let out = promtool(&["test", "rules", "rules.test.yaml"], &dir);
        assert!(
            out.status.success(),
            "promtool test rules failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
