//! The controller's watch caches. Everything the pipeline reads comes from
//! here, never from polling lists: pods and the namespace objects the checklist
//! judges, the RBAC objects, and Secrets and Namespaces as metadata only
//! (`Api<PartialObjectMeta<K>>` asks the API server for metadata alone, so
//! secret values never even cross the wire).
//!
//! Each cache is driven by a task of its own, which also turns every change
//! into the systems it can affect (sent on one channel, the controller's
//! triggers) and reports to `Health` when it has listed and when it fails, so
//! nothing starts before every cache is filled and a failing watch shows.

use std::{fmt::Debug, hash::Hash, sync::Arc};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{DynamicObject, PartialObjectMeta, Selector, SelectorExt},
    runtime::{WatchStreamExt, reflector, reflector::ObjectRef, reflector::Store, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{index::Indexed, own_writes, slim_pod::CachedPod, validate::ValidatedSystem};
use super::{
    labels::Labelled,
    packed::{Packed, Recent},
};
use crate::{
    api::{
        IoTSystem, certmanager::certificate::Certificate,
        monitoring::prometheusrule::PrometheusRule, nodeposture::NodePosture,
    },
    build::meta::{SYSTEM_LABEL, managed_selector},
    checklist::Snapshot,
    health::Health,
    metrics::Metrics,
};

#[derive(Clone)]
pub struct Caches {
    pub systems: Indexed<IoTSystem>,
    /// Each system's identity (name, namespace, uid), as kube's `Controller`
    /// needs a `Store` to schedule reconciles by; the systems themselves
    /// are cached once, in `systems`.
    pub roster: Store<Roster>,
    /// Counts the systems cache's changes: for whoever derives state from
    /// all systems (the webhooks' match conditions).
    pub systems_changed: tokio::sync::watch::Receiver<u64>,
    /// Metadata decoded, spec and status packed (`CachedPod`).
    pub pods: Indexed<CachedPod>,
    pub services: Indexed<Service>,
    // The kinds the operator writes, packed (`Packed`).
    pub network_policies: Indexed<Packed<NetworkPolicy>>,
    pub service_accounts: Indexed<Packed<ServiceAccount>>,
    pub roles: Indexed<Packed<Role>>,
    pub role_bindings: Indexed<Packed<RoleBinding>>,
    pub cluster_roles: Indexed<ClusterRole>,
    /// None when the operator may not list them (an older chart's RBAC).
    pub cluster_role_bindings: Option<Indexed<ClusterRoleBinding>>,
    /// Only the ConfigMaps this operator manages (by label).
    pub config_maps: Indexed<Packed<ConfigMap>>,
    /// Metadata only: secret values never reach the operator.
    pub secrets: Indexed<PartialObjectMeta<Secret>>,
    /// Metadata only: labels (admission) and termination.
    pub namespaces: Indexed<PartialObjectMeta<Namespace>>,
    /// Our PolicyReports; None when the cluster has no PolicyReport CRD.
    pub policy_reports: Option<Indexed<DynamicObject>>,
    /// cert-manager Certificates; None when cert-manager is not installed.
    pub certificates: Option<Indexed<Packed<Certificate>>>,
    /// Admission refusals and warnings the webhook replicas handed over for
    /// the decision record (labelled Events only).
    /// None when the operator may not list Events (an older chart's RBAC):
    /// refusals then stay out of the record.
    pub handovers: Option<Indexed<k8s_openapi::api::events::v1::Event>>,
    /// Our PrometheusRules; None when the Prometheus Operator's CRD is not
    /// served, and the alert rules go into ConfigMaps instead.
    pub prometheus_rules: Option<Indexed<Packed<PrometheusRule>>>,
    /// The node agents' reports; None when the operator reads none.
    pub edge: Option<EdgeCaches>,
    /// What the reconciles wrote, so that its echo on a watch does not
    /// re-run the writer.
    pub own_writes: Arc<own_writes::OwnWrites>,
    /// The packed kinds the checks read, decoded for the namespaces
    /// reconciled last.
    decoded: Arc<RecentlyDecoded>,
}

#[derive(Default)]
struct RecentlyDecoded {
    network_policies: Recent<NetworkPolicy>,
    service_accounts: Recent<ServiceAccount>,
    roles: Recent<Role>,
    role_bindings: Recent<RoleBinding>,
    certificates: Recent<Certificate>,
}

/// The labels last seen per node, to tell a label change from the status
/// updates that make up most Node events.
#[derive(Default)]
struct NodeLabels(std::collections::HashMap<String, std::collections::BTreeMap<String, String>>);

impl NodeLabels {
    /// Whether this event changes what label selectors see.
    fn changed(
        &mut self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
        deleted: bool,
    ) -> bool {
        if deleted {
            return self.0.remove(name).is_some();
        }
        if self.0.get(name) == Some(labels) {
            return false;
        }
        self.0.insert(name.to_string(), labels.clone());
        true
    }
}

/// Where the node agents run and publish (`--edge-namespace`).
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    pub namespace: String,
    /// Labels of the agent pods, as a label selector (`k=v,k2=v2`).
    pub agent_selector: String,
}

#[derive(Clone)]
pub struct EdgeCaches {
    pub namespace: String,
    pub postures: Indexed<NodePosture>,
    /// The agent pods: a report counts only while its writer runs, ready.
    pub agents: Indexed<Pod>,
    /// Metadata only: node labels, for spec.edgeNodes.nodeSelector.
    pub nodes: Indexed<PartialObjectMeta<Node>>,
}

/// An IoTSystem's identity in the controller's roster.
pub type Roster = PartialObjectMeta<IoTSystem>;

/// Systems to reconcile, from every cache's changes.
pub type Triggers = mpsc::UnboundedReceiver<ObjectRef<IoTSystem>>;

/// Called with (namespace, name) when an IoTSystem is gone, so that state
/// kept about it elsewhere (metrics, probe findings) goes too.
pub type OnSystemGone = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What every watch task needs.
struct Drivers {
    client: Client,
    namespace: Option<String>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    triggers: mpsc::UnboundedSender<ObjectRef<IoTSystem>>,
    systems: Indexed<IoTSystem>,
    own_writes: Arc<own_writes::OwnWrites>,
}

impl Drivers {
    /// All namespaces, or the one the operator manages.
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Drives `events` into a new cache; every change triggers the systems
    /// that `affected` names.
    fn spawn<K, S>(
        &self,
        kind: &'static str,
        events: S,
        affected: impl FnMut(&K, bool) -> Vec<ObjectRef<IoTSystem>> + Send + 'static,
    ) -> Indexed<K>
    where
        K: Resource + Labelled + Clone + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
        S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    {
        self.spawn_into(kind, Indexed::new(Default::default()), events, affected)
    }

    fn spawn_into<K, S>(
        &self,
        kind: &'static str,
        index: Indexed<K>,
        events: S,
        affected: impl FnMut(&K, bool) -> Vec<ObjectRef<IoTSystem>> + Send + 'static,
    ) -> Indexed<K>
    where
        K: Resource + Labelled + Clone + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Send + Sync,
        S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    {
        self.health.expect_watch(kind);
        let health = self.health.clone();
        let metrics = self.metrics.clone();
        let triggers = self.triggers.clone();
        let own_writes = self.own_writes.clone();
        let events = events.default_backoff();
        let mut affected = affected;
        // Every system reconciles once the caches have first listed, so the
        // objects of that first list need not trigger it again (at 10,000
        // pods that was 10,000 triggers per namespace's systems). A later
        // relist (after a watch error) still triggers: changes may be missed.
        let mut first_list = kind != "IoTSystem";
        let indexing = index.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                // Cached first: `affected` may read this very cache.
                let event = event.map(|e| indexing.apply(e));
                let refs = match event {
                    Ok(watcher::Event::Apply(o)) => {
                        let o: &K = &o;
                        let refs = affected(o, false);
                        match own_writes.echo_of(kind, o) {
                            // The system that wrote this very version judged it.
                            Some(writer) => without(refs, &writer),
                            None if refs.is_empty() || !may_be_our_write(kind, o) => refs,
                            // Its write's answer may not be recorded yet.
                            None => match own_writes::version_key(kind, o) {
                                Some((key, seen)) => {
                                    let (own, metrics, triggers) =
                                        (own_writes.clone(), metrics.clone(), triggers.clone());
                                    tokio::spawn(async move {
                                        tokio::time::sleep(own_writes::ECHO_GRACE).await;
                                        let refs = match own.echo_of_version(&key, &seen) {
                                            Some(writer) => without(refs, &writer),
                                            None => refs,
                                        };
                                        send(&metrics, &triggers, kind, refs);
                                    });
                                    Vec::new()
                                }
                                None => refs,
                            },
                        }
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        // Called anyway: some keep state per object.
                        let refs = affected(&o, false);
                        if first_list { Vec::new() } else { refs }
                    }
                    Ok(watcher::Event::Delete(o)) => affected(&o, true),
                    Ok(watcher::Event::InitDone) => {
                        first_list = false;
                        health.watch_listed(kind);
                        Vec::new()
                    }
                    Ok(watcher::Event::Init) => Vec::new(),
                    Err(e) => {
                        indexing.broken();
                        health.watch_failed(kind);
                        metrics.watch_failed(kind);
                        warn!(kind, error = %e, "watch failed; retrying with backoff");
                        Vec::new()
                    }
                };
                send(&metrics, &triggers, kind, refs);
            }
        });
        index
    }

    /// A namespaced kind whose changes re-judge the system of a child of
    /// ours, or every system of the namespace for anyone else's object.
    fn namespaced<K>(&self, kind: &'static str, config: watcher::Config) -> Indexed<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Labelled
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    {
        let systems = self.systems.clone();
        self.namespaced_with(kind, config, move |o: &K| systems_of_child(&systems, o))
    }

    fn namespaced_with<K>(
        &self,
        kind: &'static str,
        config: watcher::Config,
        mut affected: impl FnMut(&K) -> Vec<ObjectRef<IoTSystem>> + Send + 'static,
    ) -> Indexed<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Labelled
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    {
        let complete = config.label_selector.is_none() && config.field_selector.is_none();
        self.spawn(
            kind,
            watcher(self.api::<K>(), config).modify(slim),
            move |o: &K, _| affected(o),
        )
        .holding_all(complete)
    }
}

impl Caches {
    /// Starts a watch per kind (all namespaces, or `namespace` only) and
    /// returns the caches with the stream of systems their changes affect.
    /// `Health` learns when they have listed.
    pub async fn start(
        client: Client,
        namespace: Option<String>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        on_system_gone: OnSystemGone,
        edge: Option<EdgeOptions>,
    ) -> (Caches, Triggers) {
        let (tx, rx) = mpsc::unbounded_channel();
        let systems_index = Indexed::new(());
        let drivers = Drivers {
            client: client.clone(),
            namespace,
            health,
            metrics,
            triggers: tx,
            systems: systems_index.clone(),
            own_writes: Default::default(),
        };
        let every = watcher::Config::default();
        let managed = every.clone().labels(&managed_selector());

        // A system's change also re-runs its siblings: a selector conflict
        // may have been settled.
        let (changed_tx, systems_changed) = tokio::sync::watch::channel(0u64);
        let mut roster = reflector::store::Writer::<Roster>::default();
        let roster_reader = roster.as_reader();
        // Ready at once: the controller holds reconciles until its store is,
        // and systems enter it one by one, each before its first trigger.
        roster.apply_watcher_event(&watcher::Event::InitDone);
        let systems = {
            let store = drivers.systems.clone();
            let mut seen = SystemPrints::default();
            drivers.spawn_into(
                "IoTSystem",
                systems_index,
                // Without the field managers (a status write's entry alone
                // decoded to kilobytes, per system), and with each item's
                // evidence as a fingerprint.
                watcher(drivers.api::<IoTSystem>(), every.clone()).modify(|s| {
                    slim(s);
                    if let Some(status) = &mut s.status {
                        super::status::fingerprint_items(status);
                    }
                }),
                move |s: &IoTSystem, deleted| {
                    let (namespace, name) = (s.namespace().unwrap_or_default(), s.name_any());
                    let change = seen.change(s, deleted);
                    if change == SystemChange::Nothing {
                        return Vec::new();
                    }
                    changed_tx.send_modify(|n| *n = n.wrapping_add(1));
                    let identity = Roster {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(namespace.clone()),
                            uid: s.metadata.uid.clone(),
                            ..ObjectMeta::default()
                        },
                        types: None,
                        _phantom: std::marker::PhantomData,
                    };
                    roster.apply_watcher_event(&match deleted {
                        true => watcher::Event::Delete(identity),
                        false => watcher::Event::Apply(identity),
                    });
                    if deleted {
                        on_system_gone(&namespace, &name);
                    }
                    let mut refs = match change {
                        SystemChange::Siblings => siblings_of(&store, s),
                        _ => Vec::new(),
                    };
                    if !deleted {
                        refs.push(ObjectRef::from_obj(s));
                    }
                    refs
                },
            )
        };
        let namespaces = {
            let store = drivers.systems.clone();
            let config = match &drivers.namespace {
                Some(ns) => every.clone().fields(&format!("metadata.name={ns}")),
                None => every.clone(),
            };
            drivers.spawn(
                "Namespace",
                watcher(
                    Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                    config,
                ),
                move |n: &PartialObjectMeta<Namespace>, _| {
                    systems_in_namespace(&store, Some(&n.name_any()))
                },
            )
        };
        let secrets = {
            let store = drivers.systems.clone();
            drivers.spawn(
                "Secret",
                watcher(drivers.api::<PartialObjectMeta<Secret>>(), every.clone()).modify(slim),
                move |s: &PartialObjectMeta<Secret>, _| {
                    systems_in_namespace(&store, s.namespace().as_deref())
                },
            )
        };
        // A RoleBinding decides who may read every pod of the namespace
        // (VII-2), so it re-judges all its systems.
        let role_bindings: Indexed<Packed<RoleBinding>> = {
            let systems = drivers.systems.clone();
            drivers.namespaced_with(
                "RoleBinding",
                every.clone(),
                move |b: &Packed<RoleBinding>| {
                    systems_in_namespace(&systems, b.namespace().as_deref())
                },
            )
        };
        // A ClusterRoleBinding grants in every namespace: who may read the
        // pods' logs (VII-2) of every system. They change rarely.
        let cluster_role_bindings = if may_list(
            &Api::<ClusterRoleBinding>::all(client.clone()),
            "ClusterRoleBindings: VII-2 cannot see who reads logs cluster-wide",
        )
        .await
        {
            let store = drivers.systems.clone();
            Some(
                drivers.spawn(
                    "ClusterRoleBinding",
                    watcher(
                        Api::<ClusterRoleBinding>::all(client.clone()),
                        every.clone(),
                    )
                    .modify(slim),
                    move |_: &ClusterRoleBinding, _| systems_in_namespace(&store, None),
                ),
            )
        } else {
            None
        };
        // A ClusterRole matters to a system through a RoleBinding in its
        // namespace that refers to it, or any ClusterRoleBinding that does.
        let cluster_roles = {
            let store = drivers.systems.clone();
            let bindings = role_bindings.clone();
            let cluster_bindings = cluster_role_bindings.clone();
            drivers.spawn(
                "ClusterRole",
                watcher(Api::<ClusterRole>::all(client.clone()), every.clone()).modify(slim),
                move |role: &ClusterRole, _| {
                    let name = role.name_any();
                    if cluster_bindings
                        .as_ref()
                        .is_some_and(|b| b.state().iter().any(|b| b.role_ref.name == name))
                    {
                        return systems_in_namespace(&store, None);
                    }
                    let namespaces: std::collections::BTreeSet<String> = bindings
                        .state()
                        .iter()
                        .filter(|b| {
                            // Rare (a ClusterRole changed): decoding each binding is fine.
                            let role = b.unpack().role_ref;
                            role.kind == "ClusterRole" && role.name == name
                        })
                        .filter_map(|b| b.namespace())
                        .collect();
                    namespaces
                        .iter()
                        .flat_map(|ns| store.in_namespace(ns))
                        .map(|s| ObjectRef::from_obj(s.as_ref()))
                        .collect()
                },
            )
        };
        // PolicyReports only where their CRD is installed; the rest works without.
        let policy_reports = if serves(&client, "wgpolicyk8s.io/v1alpha2", "policyreports").await {
            let resource = crate::build::policy_report::api_resource();
            let api = match &drivers.namespace {
                Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource),
                None => Api::<DynamicObject>::all_with(client.clone(), &resource),
            };
            let store = drivers.systems.clone();
            let index = Indexed::new(resource);
            Some(drivers.spawn_into(
                "PolicyReport",
                index,
                // Bodies dropped: the digest annotation stands for them.
                watcher(api, managed.clone()).modify(|r| {
                    slim(r);
                    crate::build::policy_report::drop_body(r);
                }),
                move |r: &DynamicObject, _| systems_of_child(&store, r),
            ))
        } else {
            warn!(
                "the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is not installed: verdicts go to status and metrics only"
            );
            None
        };
        // Certificates only where cert-manager's CRDs are installed.
        let certificates = if serves(&client, "cert-manager.io/v1", "certificates").await {
            Some(drivers.namespaced::<Packed<Certificate>>("Certificate", every.clone()))
        } else {
            warn!(
                "cert-manager is not installed: no Certificates are made; items III-9 and VI-4 report Unknown"
            );
            None
        };
        // Refusals handed over by the webhooks: only the system named.
        let events = drivers.api::<k8s_openapi::api::events::v1::Event>();
        let handovers = if may_list(
            &events,
            "Events: admission refusals stay out of the decision record",
        )
        .await
        {
            Some(
                drivers.spawn(
                    "AdmissionEvent",
                    watcher(
                        events,
                        every
                            .clone()
                            .labels(crate::webhook::refusals::DECISION_LABEL),
                    )
                    .modify(|e| e.managed_fields_mut().clear()),
                    |e: &k8s_openapi::api::events::v1::Event, _| match (
                        e.namespace(),
                        e.labels().get(crate::build::meta::SYSTEM_LABEL),
                    ) {
                        (Some(ns), Some(name)) => vec![ObjectRef::new(name).within(&ns)],
                        _ => Vec::new(),
                    },
                ),
            )
        } else {
            None
        };
        // Alert rules as PrometheusRules where their CRD is served.
        let prometheus_rules = if serves(&client, "monitoring.coreos.com/v1", "prometheusrules")
            .await
            && may_list(
                &drivers.api::<PrometheusRule>(),
                "PrometheusRules: alert rules go into ConfigMaps",
            )
            .await
        {
            Some(drivers.namespaced::<Packed<PrometheusRule>>("PrometheusRule", managed.clone()))
        } else {
            info!(
                "the Prometheus Operator's PrometheusRule CRD is not served: alert rules go into ConfigMaps <system>-alert-rules"
            );
            None
        };
        // Node agents' reports, their pods and node labels re-judge the
        // systems that declare edge nodes, and only those.
        let edge = edge.map(|opts| {
            let with_edge = |store: Indexed<IoTSystem>| {
                move || -> Vec<ObjectRef<IoTSystem>> {
                    store
                        .state()
                        .into_iter()
                        .filter(|s| s.spec.edge_nodes.is_some())
                        .map(|s| ObjectRef::from_obj(s.as_ref()))
                        .collect()
                }
            };
            let affected = with_edge(drivers.systems.clone());
            let postures = drivers.spawn(
                "NodePosture",
                watcher(
                    Api::<NodePosture>::namespaced(client.clone(), &opts.namespace),
                    every.clone(),
                ),
                move |_: &NodePosture, _| affected(),
            );
            let affected = with_edge(drivers.systems.clone());
            let agents = drivers.spawn(
                "NodeAgentPod",
                watcher(
                    Api::<Pod>::namespaced(client.clone(), &opts.namespace),
                    every.clone().labels(&opts.agent_selector),
                )
                .modify(|p| p.managed_fields_mut().clear()),
                move |_: &Pod, _| affected(),
            );
            // Nodes change often (status), but only their labels matter, and
            // only to systems that select nodes by label.
            let selecting = drivers.systems.clone();
            let mut seen = NodeLabels::default();
            let nodes = drivers.spawn(
                "Node",
                watcher(
                    Api::<PartialObjectMeta<Node>>::all(client.clone()),
                    every.clone(),
                ),
                move |n: &PartialObjectMeta<Node>, deleted| {
                    if !seen.changed(&n.name_any(), n.labels(), deleted) {
                        return Vec::new();
                    }
                    selecting
                        .state()
                        .into_iter()
                        .filter(|s| {
                            s.spec
                                .edge_nodes
                                .as_ref()
                                .is_some_and(|e| e.node_selector.is_some())
                        })
                        .map(|s| ObjectRef::from_obj(s.as_ref()))
                        .collect()
                },
            );
            EdgeCaches {
                namespace: opts.namespace,
                postures,
                agents,
                nodes,
            }
        });
        let caches = Caches {
            roster: roster_reader,
            own_writes: drivers.own_writes.clone(),
            decoded: Default::default(),
            edge,
            systems,
            systems_changed,
            pods: {
                // Pods wake only the systems that take them, on what checks read.
                let store = drivers.systems.clone();
                let mut seen = super::triggers::PodTriggers::default();
                drivers.spawn(
                    "Pod",
                    watcher(drivers.api::<CachedPod>(), every.clone()),
                    move |p: &CachedPod, deleted| seen.affected(&store, p, deleted),
                )
            },
            services: drivers.namespaced("Service", every.clone()),
            network_policies: drivers.namespaced("NetworkPolicy", every.clone()),
            service_accounts: drivers.namespaced("ServiceAccount", every.clone()),
            roles: {
                let (systems, bindings) = (drivers.systems.clone(), role_bindings.clone());
                drivers.namespaced_with("Role", every.clone(), move |role: &Packed<Role>| {
                    systems_of_role(&systems, &bindings, role)
                })
            },
            role_bindings,
            cluster_roles,
            cluster_role_bindings,
            config_maps: drivers.namespaced("ConfigMap", managed),
            secrets,
            namespaces,
            policy_reports,
            certificates,
            handovers,
            prometheus_rules,
        };
        info!("watches started");
        (caches, rx)
    }

    /// The admission Events handed over in `namespace` for the system `name`.
    pub fn handovers_of(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<Arc<k8s_openapi::api::events::v1::Event>> {
        self.handovers
            .iter()
            .flat_map(|h| h.in_namespace(namespace))
            .filter(|e| {
                e.labels()
                    .get(crate::build::meta::SYSTEM_LABEL)
                    .map(String::as_str)
                    == Some(name)
            })
            .collect()
    }

    /// The form of the alert rules this cluster takes.
    pub fn rules_as(&self) -> crate::build::RulesAs {
        match self.prometheus_rules {
            Some(_) => crate::build::RulesAs::PrometheusRule,
            None => crate::build::RulesAs::ConfigMap,
        }
    }

    /// The system's namespace's objects as the caches hold them: shared,
    /// not copied (a reconcile in a namespace of 100 systems used to copy
    /// 2,000 objects). Of the pods, only those a component selects, decoded
    /// (no check reads any other).
    pub fn snapshot(&self, system: &ValidatedSystem) -> Snapshot {
        let namespace = system.namespace.as_str();
        Snapshot {
            pods: self
                .pods_of(system)
                .iter()
                .map(|p| Arc::new(p.pod()))
                .collect(),
            services: self.services.in_namespace(namespace),
            network_policies: (self.decoded.network_policies)
                .in_namespace(&self.network_policies, namespace),
            service_accounts: (self.decoded.service_accounts)
                .in_namespace(&self.service_accounts, namespace),
            roles: self.decoded.roles.in_namespace(&self.roles, namespace),
            role_bindings: (self.decoded.role_bindings)
                .in_namespace(&self.role_bindings, namespace),
            cluster_roles: {
                let mut roles = self.cluster_roles.state();
                roles.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                roles
            },
            cluster_role_bindings: self.cluster_role_bindings.as_ref().map(|store| {
                let mut bindings = store.state();
                bindings.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                bindings
            }),
            secrets: self
                .secrets
                .in_namespace(namespace)
                .into_iter()
                .map(|s| s.metadata.clone())
                .collect(),
            certificates: self
                .certificates
                .as_ref()
                .map(|store| self.decoded.certificates.in_namespace(store, namespace)),
            tls_probes: None,
            http_probes: None,
            heartbeats: None,
            decision_record: None,
            alerting: None,
            shipping: None,
            edge_nodes: None,
        }
    }

    /// The cached pods some component of `system` selects.
    pub fn pods_of(&self, system: &ValidatedSystem) -> Vec<Arc<CachedPod>> {
        let selectors: Vec<Selector> = system
            .components
            .iter()
            .filter_map(|c| c.selector.clone().try_into().ok())
            .collect();
        let mut pods = self.pods.in_namespace(&system.namespace);
        pods.retain(|p| {
            let labels = p.labels().to_map().unwrap_or_default();
            selectors.iter().any(|s| s.matches(&labels))
        });
        pods
    }

    /// Whether the namespace is being deleted: nothing should be written there.
    pub fn namespace_terminating(&self, namespace: &str) -> bool {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    }

    /// Whether this very system (same uid) is still in the cache.
    pub fn holds_system(&self, namespace: &str, name: &str, uid: Option<&str>) -> bool {
        self.systems
            .get(&ObjectRef::new(name).within(namespace))
            .is_some_and(|s| s.metadata.uid.as_deref() == uid)
    }
}

/// Whether the operator may list `api`'s kind: an operator newer than its
/// chart's RBAC (as during an upgrade) goes on without what it may not read,
/// saying so, rather than never becoming ready. Other errors count as yes:
/// the watch retries them and readiness shows them.
async fn may_list<K>(api: &Api<K>, without: &str) -> bool
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            warn!("not allowed to list {without} (grant list and watch to change that)");
            false
        }
        _ => true,
    }
}

/// Whether the API server serves `resource` in `group_version` (an optional CRD).
async fn serves(client: &Client, group_version: &str, resource: &str) -> bool {
    client
        .list_api_group_resources(group_version)
        .await
        .is_ok_and(|list| list.resources.iter().any(|r| r.name == resource))
}

/// What no check reads, dropped before an object is cached: the field
/// managers and kubectl's copy of the last applied object (often the biggest
/// parts of an object).
pub(super) fn slim<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
    if let Some(a) = o.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Queues `refs` for a reconcile, counted under the kind that changed.
fn send(
    metrics: &Metrics,
    triggers: &mpsc::UnboundedSender<ObjectRef<IoTSystem>>,
    kind: &'static str,
    refs: Vec<ObjectRef<IoTSystem>>,
) {
    metrics.triggered(kind, refs.len());
    for r in refs {
        // The receiver goes only when the controller stops.
        let _ = triggers.send(r);
    }
}

/// `refs` but the system that wrote the change.
fn without(
    mut refs: Vec<ObjectRef<IoTSystem>>,
    writer: &ObjectRef<IoTSystem>,
) -> Vec<ObjectRef<IoTSystem>> {
    refs.retain(|r| (&r.name, &r.namespace) != (&writer.name, &writer.namespace));
    refs
}

/// Whether a reconcile may have written this object: one of our children,
/// or a namespace (the admission label).
fn may_be_our_write<K: Labelled>(kind: &str, o: &K) -> bool {
    kind == "Namespace"
        || o.label(crate::build::meta::MANAGED_BY_LABEL) == Some(crate::build::meta::MANAGED_BY)
}

/// The systems of a namespace (all systems for cluster-scoped objects).
fn systems_in_namespace(
    systems: &Indexed<IoTSystem>,
    ns: Option<&str>,
) -> Vec<ObjectRef<IoTSystem>> {
    let systems = match ns {
        Some(ns) => systems.in_namespace(ns),
        None => systems.state(),
    };
    systems
        .iter()
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// The system a child of ours belongs to (by its system label) and no other:
/// in a namespace of 100 systems, each child written re-ran all 100 (37
/// reconciles per system to converge). Others' objects, unlabelled, may
/// concern any system of their namespace.
fn systems_of_child<K: Resource + Labelled>(
    systems: &Indexed<IoTSystem>,
    o: &K,
) -> Vec<ObjectRef<IoTSystem>> {
    let namespace = o.meta().namespace.as_deref();
    match (namespace, o.label(SYSTEM_LABEL)) {
        (Some(ns), Some(system)) => {
            let r = ObjectRef::new(system).within(ns);
            match systems.get(&r) {
                Some(_) => vec![r],
                None => Vec::new(),
            }
        }
        _ => systems_in_namespace(systems, namespace),
    }
}

/// The systems a Role's change may concern. Checks read a Role's rules only
/// through a RoleBinding that refers to it (VII-2: who may read the pods'
/// logs), so a Role some RoleBinding of its namespace refers to concerns
/// every system there; an unbound one grants nobody anything and concerns
/// only the system it is a child of (its drift). In a namespace of 100
/// systems without subjects, each system's three unbound Roles re-ran all 99
/// others. A binding seen after its Role triggers on its own.
fn systems_of_role(
    systems: &Indexed<IoTSystem>,
    bindings: &Indexed<Packed<RoleBinding>>,
    role: &Packed<Role>,
) -> Vec<ObjectRef<IoTSystem>> {
    let namespace = role.namespace().unwrap_or_default();
    let name = role.name_any();
    // Role events are rare beside pods': decoding the namespace's bindings is fine.
    let bound = bindings.in_namespace(&namespace).iter().any(|b| {
        let to = b.unpack().role_ref;
        to.kind == "Role" && to.name == name
    });
    match bound {
        true => systems_in_namespace(systems, Some(&namespace)),
        false => systems_of_child(systems, role),
    }
}

/// What an IoTSystem's event changed, for whom.
#[derive(Debug, PartialEq, Eq)]
enum SystemChange {
    /// Most of a system's events are its own status writes.
    Nothing,
    /// Labels or annotations: the system's own business.
    Itself,
    /// New, gone, its spec, its deletion begun: what decides which of its
    /// namespace's systems keeps a pod (`siblings_of`).
    Siblings,
}

/// Per system, fingerprints of what it was last seen with: all that
/// matters to it, and what matters to its siblings. Touching an annotation
/// of each of 100 systems in one namespace re-ran 465 reconciles.
#[derive(Default)]
struct SystemPrints(std::collections::HashMap<(String, String), (u64, u64)>);

impl SystemPrints {
    fn change(&mut self, s: &IoTSystem, deleted: bool) -> SystemChange {
        use std::hash::{Hash, Hasher};
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        if deleted {
            self.0.remove(&key);
            return SystemChange::Siblings;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        s.metadata.generation.hash(&mut h);
        s.metadata.deletion_timestamp.is_some().hash(&mut h);
        s.uid().hash(&mut h);
        let shared = h.finish();
        s.labels().hash(&mut h);
        s.annotations().hash(&mut h);
        let own = h.finish();
        match self.0.insert(key, (own, shared)) {
            Some((o, _)) if o == own => SystemChange::Nothing,
            Some((_, sh)) if sh == shared => SystemChange::Itself,
            _ => SystemChange::Siblings,
        }
    }
}

/// The systems of the namespace a change of `changed` may concern: the
/// younger ones only, since of two systems selecting a pod the elder keeps it
/// (`validate::check_pod_ownership`). In a namespace of 100 systems created
/// one after another, each creation re-ran every earlier one.
fn siblings_of(systems: &Indexed<IoTSystem>, changed: &IoTSystem) -> Vec<ObjectRef<IoTSystem>> {
    systems
        .in_namespace(&changed.namespace().unwrap_or_default())
        .into_iter()
        .filter(|s| s.metadata.uid != changed.metadata.uid && super::validate::is_older(changed, s))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{
        Indexed, IoTSystem, Namespace, NodeLabels, ObjectRef, Packed, PartialObjectMeta, Role,
        RoleBinding, SystemChange, SystemPrints, may_be_our_write, siblings_of, systems_of_child,
        systems_of_role, without,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;

    #[test]
    fn a_system_changed_triggers_only_its_younger_siblings() {
        let system = |name: &str, created: &str| -> IoTSystem {
            let mut s: IoTSystem = serde_saphyr::from_str(&format!(
                "apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {{name: {name}, namespace: plant, creationTimestamp: '{created}'}}
spec:
  components: [{{name: c, role: Aggregator, selector: {{matchLabels: {{app: x}}}}}}]
"
            ))
            .unwrap();
            s.metadata.uid = Some(name.into());
            s
        };
        let (a, b, c) = (
            system("a", "2026-11-30T10:00:00Z"),
            system("b", "2026-11-30T10:00:01Z"),
            system("c", "2026-11-30T10:00:01Z"),
        );
        let systems = Indexed::of([a.clone(), b.clone(), c.clone()]);
        assert_eq!(names(siblings_of(&systems, &a)), ["b", "c"]);
        // The same second: the name decides, as it does for the pods.
        assert_eq!(names(siblings_of(&systems, &b)), ["c"]);
        assert!(siblings_of(&systems, &c).is_empty());
    }

    /// Systems `a` and `b` in namespace `plant`, each selecting `app: <name>`.
    fn systems_a_and_b() -> Indexed<IoTSystem> {
        Indexed::of(["a", "b"].map(|name| {
            let mut s: IoTSystem = serde_saphyr::from_str(&format!(
                "apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {{name: {name}, namespace: plant}}
spec:
  components: [{{name: c, role: Aggregator, selector: {{matchLabels: {{app: {name}}}}}}}]
"
            ))
            .unwrap();
            s.metadata.uid = Some(name.into());
            s
        }))
    }

    /// The names of `refs`, sorted.
    fn names(refs: Vec<ObjectRef<IoTSystem>>) -> Vec<String> {
        let mut n: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    #[test]
    fn a_child_of_ours_triggers_its_own_system_only() {
        let systems = systems_a_and_b();
        // As the cache holds it: labels kept outside `ObjectMeta`.
        let account = |labels: serde_json::Value| -> Packed<ServiceAccount> {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "namespace": "plant", "labels": labels}
            }))
            .unwrap()
        };
        assert_eq!(
            names(systems_of_child(
                &systems,
                &account(serde_json::json!({"iotposture.dev/system": "a"}))
            )),
            ["a"]
        );
        assert_eq!(
            names(systems_of_child(&systems, &account(serde_json::json!({})))),
            ["a", "b"],
            "someone else's object may concern every system there"
        );
        assert!(
            systems_of_child(
                &systems,
                &account(serde_json::json!({"iotposture.dev/system": "gone"}))
            )
            .is_empty(),
            "a child of a deleted system concerns none"
        );
    }

    #[test]
    fn only_a_new_changed_or_deleted_spec_concerns_a_systems_siblings() {
        let mut system: IoTSystem = serde_saphyr::from_str(
            "apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {name: a, namespace: plant, generation: 1, uid: u1}
spec:
  components: [{name: c, role: Aggregator, selector: {matchLabels: {app: x}}}]
",
        )
        .unwrap();
        let mut prints = SystemPrints::default();
        assert_eq!(prints.change(&system, false), SystemChange::Siblings, "new");
        system.status = Some(Default::default());
        assert_eq!(
            prints.change(&system, false),
            SystemChange::Nothing,
            "its status"
        );
        system
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("touched".into(), "1".into());
        assert_eq!(prints.change(&system, false), SystemChange::Itself);
        system
            .metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "a".into());
        assert_eq!(prints.change(&system, false), SystemChange::Itself);
        system.metadata.generation = Some(2);
        assert_eq!(
            prints.change(&system, false),
            SystemChange::Siblings,
            "spec"
        );
        system.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert_eq!(
            prints.change(&system, false),
            SystemChange::Siblings,
            "deletion begun"
        );
        assert_eq!(prints.change(&system, true), SystemChange::Siblings, "gone");
        system.metadata.uid = Some("u2".into());
        system.metadata.deletion_timestamp = None;
        assert_eq!(
            prints.change(&system, false),
            SystemChange::Siblings,
            "made again"
        );
    }

    #[test]
    fn a_role_concerns_the_whole_namespace_only_once_a_binding_there_refers_to_it() {
        let systems = systems_a_and_b();
        let role: Packed<Role> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a-admin", "namespace": "plant",
                         "labels": {"iotposture.dev/system": "a"}},
            "rules": [{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}],
        }))
        .unwrap();
        let binding = |namespace: &str, kind: &str, role: &str| -> Packed<RoleBinding> {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("to-{role}"), "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"kind": "User", "name": "someone"}],
            }))
            .unwrap()
        };
        let unbound = Indexed::of([
            binding("plant", "Role", "other"),
            binding("plant", "ClusterRole", "a-admin"),
            binding("elsewhere", "Role", "a-admin"),
        ]);
        assert_eq!(
            names(systems_of_role(&systems, &unbound, &role)),
            ["a"],
            "unbound, it grants nobody anything: only its own system's drift"
        );
        let bound = Indexed::of([binding("plant", "Role", "a-admin")]);
        assert_eq!(
            names(systems_of_role(&systems, &bound, &role)),
            ["a", "b"],
            "bound, it decides who reads every system's pod logs there"
        );
    }

    #[test]
    fn only_our_children_and_namespaces_wait_for_their_write_and_the_writer_is_dropped() {
        let account = |labels: serde_json::Value| -> Packed<ServiceAccount> {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x", "labels": labels}}))
                .unwrap()
        };
        assert!(!may_be_our_write(
            "ServiceAccount",
            &account(serde_json::json!({}))
        ));
        let ours = account(serde_json::json!({"app.kubernetes.io/managed-by": "iotposture"}));
        assert!(may_be_our_write("ServiceAccount", &ours));
        let namespace: PartialObjectMeta<Namespace> = Default::default();
        assert!(may_be_our_write("Namespace", &namespace));

        let a = ObjectRef::<IoTSystem>::new("a").within("plant");
        let b = ObjectRef::<IoTSystem>::new("b").within("plant");
        let other_a = ObjectRef::<IoTSystem>::new("a").within("mill");
        assert_eq!(
            without(vec![a.clone(), b.clone(), other_a.clone()], &a),
            vec![b, other_a]
        );
    }

    #[test]
    fn only_label_changes_of_nodes_count() {
        let mut seen = NodeLabels::default();
        let edge = [("role".to_string(), "edge".to_string())].into();
        assert!(seen.changed("n1", &edge, false), "a new node");
        assert!(!seen.changed("n1", &edge, false), "a status update");
        assert!(
            seen.changed("n1", &Default::default(), false),
            "a label removed"
        );
        assert!(seen.changed("n1", &Default::default(), true), "deleted");
        assert!(
            !seen.changed("n1", &Default::default(), true),
            "deleted twice"
        );
    }
}
