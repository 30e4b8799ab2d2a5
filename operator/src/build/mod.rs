//! Step 3 of the pipeline: the desired objects of a system, from pure functions
//! of a `ValidatedSystem`. One module per managed kind; no network here.

pub mod alert_rules;
pub mod certificate;
pub mod gateway;
pub mod log_collector;
pub mod meta;
pub mod network_policy;
pub mod policy_report;
pub mod rbac;
pub mod service_account;

#[cfg(test)]
pub(crate) mod fixtures;

use crate::api::{
    certmanager::certificate::Certificate, monitoring::prometheusrule::PrometheusRule,
};
use k8s_openapi::api::{
    core::v1::{ConfigMap, ServiceAccount},
    networking::v1::NetworkPolicy,
    rbac::v1::{Role, RoleBinding},
};

use crate::controller::validate::ValidatedSystem;

/// Everything the operator keeps for one system. Consumers destructure it
/// without `..`, so adding a kind here fails to compile until it is applied,
/// pruned and reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredObjects {
    pub service_accounts: Vec<ServiceAccount>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub network_policies: Vec<NetworkPolicy>,
    pub certificates: Vec<Certificate>,
    /// The WAF gateways' configuration, and the alert rules file where
    /// PrometheusRules are not served.
    pub config_maps: Vec<ConfigMap>,
    /// The alert rules, where PrometheusRules are served.
    pub prometheus_rules: Vec<PrometheusRule>,
}

pub use alert_rules::RulesAs;

/// The desired objects; `rules_as` is the one thing that depends on the
/// cluster (whether the Prometheus Operator's CRD is served).
pub fn build_all(system: &ValidatedSystem, rules_as: RulesAs) -> DesiredObjects {
    let (rules_files, prometheus_rules) = alert_rules::build_alert_rules(system, rules_as);
    DesiredObjects {
        service_accounts: service_account::build_service_accounts(system),
        roles: rbac::build_roles(system),
        role_bindings: rbac::build_role_bindings(system),
        network_policies: network_policy::build_network_policies(system),
        certificates: certificate::build_certificates(system),
        config_maps: gateway::build_gateway_configs(system)
            .into_iter()
            .chain(rules_files)
            .collect(),
        prometheus_rules,
    }
}
