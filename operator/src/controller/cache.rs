//! The controller's watch caches. Everything the pipeline reads comes from
//! here, never from polling lists: pods and the namespace objects the checklist
//! judges, the RBAC objects, and Secrets as metadata only.

use std::sync::Arc;

use futures::future;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    rbac::v1::{ClusterRole, Role, RoleBinding},
};
use kube::{
    Resource, ResourceExt,
    core::{DynamicObject, PartialObjectMeta},
    runtime::reflector::Store,
};

use crate::{
    api::{IoTSystem, certmanager::certificate::Certificate},
    checklist::Snapshot,
};

#[derive(Clone)]
pub struct Caches {
    pub systems: Store<IoTSystem>,
    /// Turns true once `systems` has its first full list (see `run`).
    pub systems_ready: tokio::sync::watch::Receiver<bool>,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub network_policies: Store<NetworkPolicy>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub cluster_roles: Store<ClusterRole>,
    /// Only the ConfigMaps this operator manages (by label).
    pub config_maps: Store<ConfigMap>,
    /// Metadata only: secret values never reach the operator's memory.
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// Our PolicyReports; None when the cluster has no PolicyReport CRD.
    pub policy_reports: Option<Store<DynamicObject>>,
    /// cert-manager Certificates; None when cert-manager is not installed.
    pub certificates: Option<Store<Certificate>>,
    /// Namespaces (for their labels); only when the admission webhooks run.
    pub namespaces: Option<Store<Namespace>>,
}

pub fn in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store
        .state()
        .into_iter()
        .filter(|o| o.namespace().as_deref() == Some(namespace))
        .collect()
}

fn owned<K: Clone>(items: Vec<Arc<K>>) -> Vec<K> {
    items.into_iter().map(|a| a.as_ref().clone()).collect()
}

impl Caches {
    pub fn snapshot(&self, namespace: &str) -> Snapshot {
        Snapshot {
            pods: owned(in_namespace(&self.pods, namespace)),
            services: owned(in_namespace(&self.services, namespace)),
            network_policies: owned(in_namespace(&self.network_policies, namespace)),
            service_accounts: owned(in_namespace(&self.service_accounts, namespace)),
            roles: owned(in_namespace(&self.roles, namespace)),
            role_bindings: owned(in_namespace(&self.role_bindings, namespace)),
            cluster_roles: owned(self.cluster_roles.state()),
            secrets: in_namespace(&self.secrets, namespace)
                .into_iter()
                .map(|s| s.metadata.clone())
                .collect(),
            certificates: self
                .certificates
                .as_ref()
                .map(|store| owned(in_namespace(store, namespace))),
            tls_probes: None,
            http_probes: None,
        }
    }

    /// Resolves once every cache has its first full list.
    pub async fn wait_until_ready(&self) {
        let _ = future::join3(
            future::join4(
                async {
                    // Never `self.systems.wait_until_ready()`: see `systems_ready`.
                    let _ = self.systems_ready.clone().wait_for(|listed| *listed).await;
                    Ok::<(), kube::runtime::reflector::store::WriterDropped>(())
                },
                self.pods.wait_until_ready(),
                self.services.wait_until_ready(),
                self.network_policies.wait_until_ready(),
            ),
            future::join4(
                self.service_accounts.wait_until_ready(),
                self.roles.wait_until_ready(),
                self.role_bindings.wait_until_ready(),
                self.cluster_roles.wait_until_ready(),
            ),
            async {
                self.secrets.wait_until_ready().await?;
                self.config_maps.wait_until_ready().await?;
                if let Some(reports) = &self.policy_reports {
                    reports.wait_until_ready().await?;
                }
                if let Some(certificates) = &self.certificates {
                    certificates.wait_until_ready().await?;
                }
                if let Some(namespaces) = &self.namespaces {
                    namespaces.wait_until_ready().await?;
                }
                Ok::<(), kube::runtime::reflector::store::WriterDropped>(())
            },
        )
        .await;
    }
}
