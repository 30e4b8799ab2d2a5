//! Alerting for checklist items VIII-1 (abnormal sensor state) and VIII-2
//! (failed-login bursts, lockouts, certificates near expiry).
//!
//! An alert rule file on disk proves nothing: these items pass only when
//! the rules are loaded and healthy in Prometheus and an alert carrying the
//! system's labels reaches a receiver that can notify someone. So this module
//! has three pure parts, and the caller does the HTTP:
//!
//! - [`rules`]: the per-IoTSystem rule groups, as a Prometheus rule file or
//!   PrometheusRule `spec.groups`;
//! - [`loaded`]: reads `GET /api/v1/rules` to tell which of those rules
//!   Prometheus has loaded, which fail to evaluate and which fire;
//! - [`routing`]: reads the running Alertmanager configuration
//!   (`config.original` of `GET /api/v2/status`) and resolves where an alert
//!   with given labels goes, and whether that receiver has any integration.

pub mod loaded;
pub mod routing;
pub mod rules;

pub use loaded::{Loaded, loaded};
pub use routing::{Delivery, RoutingTree, original_config, routes_for};
pub use rules::{
    ALERTS, ITEM_ABNORMAL_STATE, ITEM_LOGIN_AND_CERTS, LABEL_NAMESPACE, LABEL_SYSTEM, Rule,
    RuleGroup, RulesFile, Wants, alert_label_sets, expected_alerts, group_name, rule_groups,
    rules_file_yaml,
};

/// What can go wrong reading the answers of Prometheus and Alertmanager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rule file could not be written as YAML.
    #[error("cannot write the rule file as YAML: {0}")]
    RulesYaml(String),
    /// `/api/v1/rules` answered something that is not its documented JSON.
    #[error("the answer of Prometheus' /api/v1/rules is not of the expected shape: {0}")]
    RulesShape(#[source] serde_json::Error),
    /// Prometheus answered with `"status": "error"` (or an unknown status).
    #[error("Prometheus answered status {status:?}: {error_type}: {error}")]
    PrometheusApi {
        status: String,
        error_type: String,
        error: String,
    },
    /// `/api/v2/status` answered something without `config.original`.
    #[error("the answer of Alertmanager's /api/v2/status is not of the expected shape: {0}")]
    StatusShape(#[source] serde_json::Error),
    /// The Alertmanager configuration is not YAML of the expected shape.
    #[error("the Alertmanager configuration cannot be read: {0}")]
    ConfigYaml(String),
    /// Alertmanager refuses a configuration without a root route.
    #[error("the Alertmanager configuration has no route")]
    NoRoute,
    /// Alertmanager refuses a root route without a default receiver.
    #[error("the root route of the Alertmanager configuration names no receiver")]
    RootWithoutReceiver,
    /// Alertmanager refuses a root route that could fail to match.
    #[error("the root route of the Alertmanager configuration must not have matchers or continue")]
    RootNotCatchAll,
    /// A route names a receiver that `receivers:` does not define.
    #[error("route {route} names receiver {receiver:?}, which `receivers:` does not define")]
    UndefinedReceiver { route: String, receiver: String },
    /// A matcher (new `matchers:` syntax or deprecated `match`/`match_re`)
    /// that Alertmanager would refuse.
    #[error("route {route} has a bad matcher {matcher:?}: {reason}")]
    Matcher {
        route: String,
        matcher: String,
        reason: String,
    },
}
