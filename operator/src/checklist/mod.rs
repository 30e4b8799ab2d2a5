//! The checklist engine: one verdict with evidence per item, from a
//! `ValidatedSystem` and a `Snapshot` of its namespace. The controller and the
//! offline `iotposture check` both call `evaluate`; nothing here does I/O.
//!
//! One module per chapter holds that chapter's checks. An item whose mechanism
//! this version does not implement reports `Unknown` and says so, never `Pass`.

/// The targeted pods, or return the Unknown verdict that says there are none.
macro_rules! pods_or_unknown {
    ($scope:expr) => {
        match $scope.pods() {
            Ok(pods) => pods,
            Err(unknown) => return unknown,
        }
    };
}

pub mod alerts;
pub mod catalog;
pub mod edge_nodes;
pub mod evidence;
pub mod snapshot;

pub mod encryption;
pub mod logs_and_status;
pub mod network_ports;
pub mod physical_access;
pub mod software;
pub mod user_management;
pub mod web_gateway;
pub mod web_sessions;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Pod, PodSpec},
    jiff::civil::Date,
};
use kube::core::{Selector, SelectorExt};

use crate::{
    api::{ItemStatus, Role, Verdict, VerdictSummary},
    controller::validate::{ValidComponent, ValidatedSystem},
};
use catalog::{CATALOG, Item};
use evidence::{Check, bounded};
pub use snapshot::Snapshot;

/// One component and the pods of the snapshot it selects.
pub struct ComponentPods<'a> {
    pub component: &'a ValidComponent,
    pub pods: Vec<&'a Pod>,
}

/// What a check sees: the system, the components the item targets, and the snapshot.
pub struct Scope<'a> {
    pub system: &'a ValidatedSystem,
    pub snapshot: &'a Snapshot,
    /// The components whose role the item applies to.
    pub targets: Vec<&'a ComponentPods<'a>>,
    /// Every component of the system.
    pub all: &'a [ComponentPods<'a>],
}

impl Scope<'_> {
    /// The targeted components' pods with their specs, or the reason there are
    /// none to inspect.
    pub fn pods(&self) -> Result<Vec<(&ValidComponent, &Pod, &PodSpec)>, Check> {
        let pods: Vec<_> = self
            .targets
            .iter()
            .flat_map(|c| {
                c.pods
                    .iter()
                    .filter_map(move |p| Some((c.component, *p, p.spec.as_ref()?)))
            })
            .collect();
        if pods.is_empty() {
            let names: Vec<_> = self
                .targets
                .iter()
                .map(|c| c.component.name.as_str())
                .collect();
            return Err(Check::unknown(format!(
                "no pods of {} to inspect yet",
                names.join(", ")
            )));
        }
        Ok(pods)
    }
}

pub fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("<unnamed>")
}

/// Pods of the snapshot selected by each component, in spec order.
pub fn component_pods<'a>(
    system: &'a ValidatedSystem,
    snapshot: &'a Snapshot,
) -> Vec<ComponentPods<'a>> {
    let empty = BTreeMap::new();
    system
        .components
        .iter()
        .map(|component| {
            let pods = match Selector::try_from(component.selector.clone()) {
                Ok(sel) => snapshot
                    .pods
                    .iter()
                    .filter(|p| sel.matches(p.metadata.labels.as_ref().unwrap_or(&empty)))
                    .map(|p| p.as_ref())
                    .collect(),
                Err(_) => Vec::new(),
            };
            ComponentPods { component, pods }
        })
        .collect()
}

/// A verdict for every item of the catalog, in catalog order.
pub fn evaluate(system: &ValidatedSystem, snapshot: &Snapshot, today: Date) -> Vec<ItemStatus> {
    let all = component_pods(system, snapshot);
    CATALOG
        .iter()
        .map(|item| evaluate_item(item, system, snapshot, &all, today))
        .collect()
}

fn evaluate_item(
    item: &'static Item,
    system: &ValidatedSystem,
    snapshot: &Snapshot,
    all: &[ComponentPods<'_>],
    today: Date,
) -> ItemStatus {
    let targets: Vec<&ComponentPods<'_>> = all
        .iter()
        .filter(|c| {
            item.targets
                .iter()
                .any(|t| t.role() == Some(c.component.role))
        })
        .collect();
    let channel = item
        .targets
        .contains(&catalog::Target::CommunicationChannel)
        && !system.flows.is_empty();
    if targets.is_empty() && !channel {
        let roles: Vec<_> = item.targets.iter().map(|t| t.short()).collect();
        return status(
            item,
            Check::not_applicable(format!(
                "the system has no component of role {}",
                roles.join(", ")
            )),
        );
    }
    let scope = Scope {
        system,
        snapshot,
        targets,
        all,
    };
    let machine = run_check(item.id, &scope);
    let attestation = system.attestations.iter().find(|a| a.item == item.id);
    let check = match (machine.verdict, attestation) {
        (_, None) | (Verdict::Pass, Some(_)) => machine,
        (Verdict::Fail, Some(_)) => Check {
            evidence: bounded(format!(
                "{} (an attestation exists, but this check fails)",
                machine.evidence
            )),
            ..machine
        },
        (_, Some(a)) => match a.expires.parse::<Date>() {
            Ok(expires) if expires >= today => Check {
                verdict: Verdict::Attested,
                evidence: bounded(format!(
                    "attested by {} until {}: {}",
                    a.by, a.expires, a.statement
                )),
            },
            _ => Check::fail(format!(
                "the attestation by {} expired on {}; renew it or meet the item: {}",
                a.by, a.expires, a.statement
            )),
        },
    };
    status(item, check)
}

fn status(item: &'static Item, check: Check) -> ItemStatus {
    ItemStatus {
        id: item.id.to_string(),
        remediation: (check.verdict == Verdict::Fail).then(|| item.remediation.to_string()),
        verdict: check.verdict,
        evidence: check.evidence,
    }
}

/// Items of later versions: Unknown with the reason, until their mechanism exists.
fn not_yet(what: &str) -> Check {
    Check::unknown(format!("not evaluated by this version: {what}"))
}

fn run_check(id: &str, s: &Scope<'_>) -> Check {
    match id {
        "I-1" => web_gateway::check_lockout(s),
        "I-2" => user_management::check_legacy_token_secrets(s),
        "I-3" => not_yet("password strength of referenced credential Secrets"),
        "I-4" => not_yet("the OIDC authentication proxy; attest the second factor in place"),
        "I-5" => user_management::check_least_privilege(s),
        "I-6" => user_management::check_no_shared_accounts(s),
        "I-7" => user_management::check_admin_access(s),
        "I-8" => user_management::check_user_access(s),
        "I-9" => user_management::check_authorization(s),
        "I-10" => user_management::check_credential_passing(s),
        "II-1" => web_gateway::check_waf(s),
        "II-2" => software::check_firewall(s),
        "II-3" => software::check_image_versions(s),
        "II-4" => not_yet("anti-malware scanning; attest the measure in place"),
        "II-5" => software::check_resource_limits(s),
        "II-6" => web_gateway::check_traffic_limits(s),
        "III-1" => logs_and_status::check_log_shipping(s),
        "III-2" => web_gateway::check_cookies(s),
        "III-3" => web_gateway::check_session_in_url(s),
        "III-4" => web_gateway::check_session_fixation(s),
        "III-5" => not_yet("cross-system SubjectAccessReviews"),
        "III-6" => not_yet("cluster-wide review of who reads Secrets"),
        "III-7" => not_yet("vulnerability reports and the TLS protocol probe"),
        "III-8" => web_gateway::check_xss_sqli_csrf(s),
        "III-9" => web_sessions::check_tls_certificate(s),
        "IV-1" => physical_access::check_physical_access(s),
        "IV-2" => physical_access::check_remote_access_ports(s),
        "IV-3" => physical_access::check_wireless_encryption(s),
        "IV-4" => physical_access::check_wps(s),
        "V-1" => network_ports::check_declared_ports(s),
        "V-2" => network_ports::check_upnp(s),
        "VI-1" => encryption::check_data_at_rest(s),
        "VI-2" => encryption::check_flow_encryption(s),
        "VI-3" => encryption::check_encryption_in_use(s),
        "VI-4" => encryption::check_certificate_renewal(s),
        "VII-1" => logs_and_status::check_sensor_status(s),
        "VII-2" => logs_and_status::check_log_protection(s),
        "VIII-1" => alerts::check_sensor_alerts(s),
        "VIII-2" => web_gateway::check_auth_alerts(s),
        other => Check::unknown(format!("no check is registered for {other}")),
    }
}

/// Verdict counts, and `compliant` as "pass+attested / applicable".
pub fn summarize(items: &[ItemStatus]) -> (VerdictSummary, String) {
    let count = |v| items.iter().filter(|i| i.verdict == v).count() as i32;
    let summary = VerdictSummary {
        pass: count(Verdict::Pass),
        fail: count(Verdict::Fail),
        attested: count(Verdict::Attested),
        not_applicable: count(Verdict::NotApplicable),
        unknown: count(Verdict::Unknown),
    };
    let applicable = items.len() as i32 - summary.not_applicable;
    let compliant = format!("{}/{}", summary.pass + summary.attested, applicable);
    (summary, compliant)
}

/// Roles whose components run as services (the targets of most items).
pub fn is_server(role: Role) -> bool {
    role != Role::Sensor
}
