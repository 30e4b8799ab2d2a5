//! The ratio's denominator: the API server taking the writes of a
//! convergence from a bare client, with no operator running. Two of them, in
//! namespaces of their own:
//! - `children`: server-side applies of every system's child objects at the
//!   operator's concurrency, without owners;
//! - `same_writes`: every write the converge phase makes, in the operator's
//!   order per system: the IoTSystem's create (the user's), then the
//!   operator's namespace label, children with owner references, status,
//!   Events and PolicyReport, the last three copied from what the operator
//!   wrote for the system it mirrors.
//!
//! Both resolve each kind's resource once, before timing: a client asking
//! discovery before every write measures discovery.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use iotposture::{
    api::IoTSystem,
    build::{RulesAs, build_all, policy_report},
    controller::validate::{Neighbourhood, validate},
    webhook::registration::ADMISSION_LABEL,
};
use k8s_openapi::api::{core::v1::Namespace, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};

use crate::{CONCURRENCY, each};

/// Each kind's resource, looked up once.
#[derive(Clone, Default)]
pub struct Resolver {
    known: Arc<Mutex<HashMap<(String, String), ApiResource>>>,
}

impl Resolver {
    async fn resource(&self, client: &Client, object: &Value) -> Result<ApiResource> {
        let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_string();
        let kind = object["kind"].as_str().context("kind")?.to_string();
        let key = (api_version.clone(), kind.clone());
        if let Some(r) = self.known.lock().unwrap().get(&key) {
            return Ok(r.clone());
        }
        let (group, version) = api_version
            .split_once('/')
            .unwrap_or(("", api_version.as_str()));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await?;
        self.known.lock().unwrap().insert(key, resource.clone());
        Ok(resource)
    }

    /// Server-side applies `object` (force: the bench owns what it applies).
    pub async fn apply(&self, client: &Client, object: &Value, manager: &str) -> Result<()> {
        let resource = self.resource(client, object).await?;
        let name = object["metadata"]["name"].as_str().context("name")?;
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("{} {name}", resource.kind))?;
        Ok(())
    }
}

/// The children the operator builds for `system`, as JSON with their kinds,
/// in the order the operator applies them (controller/apply.rs).
fn children_of(system: &IoTSystem) -> Result<Vec<Value>> {
    let valid = validate(
        system,
        &Neighbourhood {
            pods: &[],
            systems: &[],
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    let d = build_all(&valid, RulesAs::PrometheusRule);
    let mut out = Vec::new();
    let mut push = |v: Value, kind: Option<(&str, &str)>| {
        let mut v = v;
        if let Some((api_version, kind)) = kind {
            v["apiVersion"] = api_version.into();
            v["kind"] = kind.into();
        }
        out.push(v);
    };
    const RBAC: &str = "rbac.authorization.k8s.io/v1";
    for o in &d.network_policies {
        push(
            serde_json::to_value(o)?,
            Some(("networking.k8s.io/v1", "NetworkPolicy")),
        );
    }
    for o in &d.config_maps {
        push(serde_json::to_value(o)?, Some(("v1", "ConfigMap")));
    }
    for o in &d.service_accounts {
        push(serde_json::to_value(o)?, Some(("v1", "ServiceAccount")));
    }
    for o in &d.roles {
        push(serde_json::to_value(o)?, Some((RBAC, "Role")));
    }
    for o in &d.role_bindings {
        push(serde_json::to_value(o)?, Some((RBAC, "RoleBinding")));
    }
    for o in &d.certificates {
        push(serde_json::to_value(o)?, None);
    }
    for o in &d.prometheus_rules {
        push(serde_json::to_value(o)?, None);
    }
    Ok(out)
}

/// `systems` moved to the namespace `prefix-<their namespace>`.
pub fn moved(systems: &[IoTSystem], prefix: &str) -> Vec<IoTSystem> {
    systems
        .iter()
        .map(|s| {
            let mut b = s.clone();
            b.metadata.namespace = Some(format!("{prefix}-{}", s.namespace().unwrap_or_default()));
            b
        })
        .collect()
}

/// Resolves every kind `objects` hold, so the timed writes ask no discovery.
async fn warm(resolver: &Resolver, client: &Client, objects: &[Value]) -> Result<()> {
    for o in objects {
        resolver.resource(client, o).await?;
    }
    Ok(())
}

/// The children of `systems`, without owners (the garbage collector would
/// delete children of an owner that does not exist), applied at the
/// operator's concurrency.
pub async fn children(client: &Client, systems: &[IoTSystem]) -> Result<(Duration, usize)> {
    let mut objects = Vec::new();
    for system in systems {
        let mut system = system.clone();
        system.metadata.uid = Some("baseline".into());
        for mut o in children_of(&system)? {
            if let Some(m) = o["metadata"].as_object_mut() {
                m.remove("ownerReferences");
            }
            objects.push(o);
        }
    }
    let resolver = Resolver::default();
    warm(&resolver, client, &objects).await?;
    let count = objects.len();
    let start = Instant::now();
    each(objects, CONCURRENCY, |o| {
        let (client, resolver) = (client.clone(), resolver.clone());
        async move {
            resolver
                .apply(&client, &o, "iotposture-bench-baseline")
                .await
        }
    })
    .await?;
    Ok((start.elapsed(), count))
}

/// What the operator wrote for one system besides its children.
#[derive(Default, Clone)]
pub struct Written {
    status: Value,
    events: Vec<Event>,
    report: Option<DynamicObject>,
}

/// Reads back, per system (namespace, name), the status, Events and
/// PolicyReport the operator wrote, and the namespaces' admission label.
pub async fn what_the_operator_wrote(
    client: &Client,
) -> Result<(BTreeMap<(String, String), Written>, Option<String>)> {
    let mut written: BTreeMap<(String, String), Written> = BTreeMap::new();
    let key = |ns: Option<String>, name: String| (ns.unwrap_or_default(), name);
    for s in Api::<IoTSystem>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        written
            .entry(key(s.namespace(), s.name_any()))
            .or_default()
            .status = serde_json::to_value(&s.status)?;
    }
    for e in Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        let Some(regarding) = &e.regarding else {
            continue;
        };
        if regarding.kind.as_deref() != Some("IoTSystem") {
            continue;
        }
        let k = key(
            regarding.namespace.clone(),
            regarding.name.clone().unwrap_or_default(),
        );
        if let Some(w) = written.get_mut(&k) {
            w.events.push(e);
        }
    }
    let reports = Api::<DynamicObject>::all_with(client.clone(), &policy_report::api_resource());
    for r in reports.list(&ListParams::default()).await? {
        let Some(owner) = r.owner_references().first().map(|o| o.name.clone()) else {
            continue;
        };
        if let Some(w) = written.get_mut(&key(r.namespace(), owner)) {
            w.report = Some(r);
        }
    }
    let label = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .find_map(|ns| ns.labels().get(ADMISSION_LABEL).cloned());
    Ok((written, label))
}

/// A copy of `event` about `system`, under a name of its own.
fn event_about(event: &Event, system: &IoTSystem, n: usize) -> Event {
    let mut e = event.clone();
    e.metadata = kube::api::ObjectMeta {
        name: Some(format!("{}.baseline{n}", system.name_any())),
        namespace: system.namespace(),
        ..Default::default()
    };
    if let Some(r) = e.regarding.as_mut() {
        r.namespace = system.namespace();
        r.uid = system.metadata.uid.clone();
        r.resource_version = system.metadata.resource_version.clone();
    }
    e
}

/// A copy of `report` for `system`: same name and body, owned by it.
fn report_for(report: &DynamicObject, system: &IoTSystem) -> DynamicObject {
    let mut r = report.clone();
    let owners = r.metadata.owner_references.clone().map(|mut owners| {
        for o in &mut owners {
            o.uid = system.metadata.uid.clone().unwrap_or_default();
        }
        owners
    });
    r.metadata = kube::api::ObjectMeta {
        name: report.metadata.name.clone(),
        namespace: system.namespace(),
        labels: report.metadata.labels.clone(),
        annotations: report.metadata.annotations.clone(),
        owner_references: owners,
        ..Default::default()
    };
    r
}

/// The converge phase's writes for `systems` (moved copies of the measured
/// ones, `written` keyed by the originals' namespace and name, `origin`
/// mapping a moved namespace back), 16 systems at a time like the
/// operator's reconciles. Returns the time and the number of writes.
pub async fn same_writes(
    client: &Client,
    systems: &[IoTSystem],
    origin: impl Fn(&str) -> String,
    written: &BTreeMap<(String, String), Written>,
    admission_label: Option<String>,
) -> Result<(Duration, usize)> {
    let resolver = Resolver::default();
    if let Some(first) = systems.first() {
        let mut probe = first.clone();
        probe.metadata.uid = Some("probe".into());
        warm(&resolver, client, &children_of(&probe)?).await?;
    }
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let labelled = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let chains: Vec<(IoTSystem, Written)> = systems
        .iter()
        .map(|s| {
            let ns = s.namespace().unwrap_or_default();
            let w = written
                .get(&(origin(&ns), s.name_any()))
                .cloned()
                .unwrap_or_default();
            (s.clone(), w)
        })
        .collect();
    let report_resource = policy_report::api_resource();
    let start = Instant::now();
    each(chains, CONCURRENCY, |(system, w)| {
        let (client, resolver) = (client.clone(), resolver.clone());
        let (writes, labelled) = (writes.clone(), labelled.clone());
        let admission_label = admission_label.clone();
        let report_resource = report_resource.clone();
        async move {
            let ns = system.namespace().unwrap_or_default();
            let count = |n: usize| writes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let systems = Api::<IoTSystem>::namespaced(client.clone(), &ns);
            let created = systems.create(&PostParams::default(), &system).await?;
            count(1);
            let first_here = labelled.lock().unwrap().insert(ns.clone());
            if let (true, Some(value)) = (first_here, &admission_label) {
                let label = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": {ADMISSION_LABEL: value}}});
                resolver.apply(&client, &label, "iotposture").await?;
                count(1);
            }
            for child in children_of(&created)? {
                resolver.apply(&client, &child, "iotposture").await?;
                count(1);
            }
            systems
                .patch_status(
                    &created.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": w.status })),
                )
                .await?;
            count(1);
            let events = Api::<Event>::namespaced(client.clone(), &ns);
            for (n, e) in w.events.iter().enumerate() {
                events
                    .create(&PostParams::default(), &event_about(e, &created, n))
                    .await?;
                count(1);
            }
            if let Some(r) = &w.report {
                Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &report_resource)
                    .create(&PostParams::default(), &report_for(r, &created))
                    .await?;
                count(1);
            }
            Ok(())
        }
    })
    .await?;
    Ok((
        start.elapsed(),
        writes.load(std::sync::atomic::Ordering::Relaxed),
    ))
}
