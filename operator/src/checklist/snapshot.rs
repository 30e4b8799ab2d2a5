//! The cluster state the checks read: one namespace's objects, from the
//! controller's watch caches or from YAML files (`iotposture check`). Secrets
//! appear as metadata only: no check ever sees a secret value.

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use std::sync::Arc;

use crate::api::certmanager::certificate::Certificate;
use crate::build::{
    DesiredObjects,
    meta::{MANAGED_BY, MANAGED_BY_LABEL, SYSTEM_LABEL},
};

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    pub service_accounts: Vec<Arc<ServiceAccount>>,
    pub roles: Vec<Arc<Role>>,
    pub role_bindings: Vec<Arc<RoleBinding>>,
    /// Cluster-wide: RoleBindings may refer to them.
    pub cluster_roles: Vec<Arc<ClusterRole>>,
    /// Cluster-wide: they grant in every namespace (VII-2 reads them).
    /// None when the operator may not list them.
    pub cluster_role_bindings: Option<Vec<Arc<ClusterRoleBinding>>>,
    pub secrets: Vec<ObjectMeta>,
    /// cert-manager Certificates; None when cert-manager is not installed.
    pub certificates: Option<Vec<Arc<Certificate>>>,
    /// What the TLS probe saw at the system's TLS ports; None when not probed.
    pub tls_probes: Option<Vec<crate::controller::probing::ProbedPort>>,
    /// What the HTTP probe saw at the system's web ports; None when not probed.
    pub http_probes: Option<Vec<crate::controller::probing::ProbedHttpPort>>,
    /// Devices heard over MQTT, by sensor component; None where nothing
    /// listens (the offline check).
    pub heartbeats: Option<std::collections::BTreeMap<String, crate::heartbeat::Judged>>,
    /// The decision record: its size, or why none is kept; None offline.
    pub decision_record: Option<Result<i64, String>>,
    /// What Prometheus and Alertmanager say of the system's alerts, or why
    /// nobody asked; None offline.
    pub alerting: Option<Result<crate::controller::alerting::AlertFindings, String>>,
    /// What the log collector and the store show of the system's shipping,
    /// or why nothing is shipped by this operator; None offline.
    pub shipping: Option<Result<crate::controller::shipping::ShippingFindings, String>>,
    /// The system's edge nodes with their agents' facts, or why none are
    /// read; None offline.
    pub edge_nodes: Option<Result<Vec<super::edge_nodes::EdgeNode>, String>>,
}

impl Snapshot {
    /// The state once the operator's apply step has run: this system's own
    /// objects replaced by `desired` (empty in Audit mode). Both the controller
    /// and `iotposture check` judge this state, so they agree.
    pub fn with_desired(mut self, system: &str, desired: &DesiredObjects) -> Self {
        let DesiredObjects {
            service_accounts,
            roles,
            role_bindings,
            network_policies,
            certificates,
            // Not judged by any item: the gateway probes judge what it does.
            config_maps: _,
            // VIII-1/VIII-2 ask Prometheus whether the rules are loaded.
            prometheus_rules: _,
        } = desired;
        let ours = |meta: &ObjectMeta| {
            meta.labels.as_ref().is_some_and(|l| {
                l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
                    && l.get(SYSTEM_LABEL).map(String::as_str) == Some(system)
            })
        };
        fn replace<K: kube::Resource<DynamicType = ()> + Clone>(
            existing: &mut Vec<Arc<K>>,
            desired: &[K],
            ours: &dyn Fn(&ObjectMeta) -> bool,
        ) {
            let names: Vec<_> = desired.iter().map(|d| d.meta().name.clone()).collect();
            existing.retain(|e| !ours(e.meta()) && !names.contains(&e.meta().name));
            existing.extend(desired.iter().cloned().map(Arc::new));
        }
        replace(&mut self.service_accounts, service_accounts, &ours);
        replace(&mut self.roles, roles, &ours);
        replace(&mut self.role_bindings, role_bindings, &ours);
        replace(&mut self.network_policies, network_policies, &ours);
        if let Some(existing) = self.certificates.as_mut() {
            replace(existing, certificates, &ours);
        }
        self
    }
}
