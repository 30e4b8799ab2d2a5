//! `iotposture check`: the checklist engine on YAML files, before anything is
//! deployed. Workload pod templates are judged as the pods they will create, and
//! in Enforce mode the objects the operator would create are added, so the
//! verdicts are those the controller reaches once the manifests are applied.
//! By default component pods are judged as the mutating webhook admits them
//! (gateway injected, hardened); `Admission::AsWritten` judges them unchanged.

pub mod output;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        apps::v1::{
            DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec,
            StatefulSet, StatefulSetSpec,
        },
        batch::v1::{CronJob, CronJobSpec, Job, JobSpec},
        core::v1::{Pod, PodTemplateSpec, Secret, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    jiff::civil::Date,
};
use kube::core::{Selector, SelectorExt};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    api::{IoTSystem, ItemStatus, Mode, Verdict},
    build::build_all,
    checklist::{self, Snapshot},
    controller::validate::ValidatedSystem,
    controller::validate::{Neighbourhood, validate},
    webhook::{
        gateway::{Images, inject_gateway},
        harden::harden_pod,
    },
};

/// Where a document came from, for error messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based position among the non-empty documents of a file; 0 when the
    /// file as a whole does not parse (the message then gives the line).
    pub document: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.document {
            0 => write!(f, "{}", self.file.display()),
            n => write!(f, "{} (document {n})", self.file.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not valid YAML: {message}")]
    Yaml { origin: Origin, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: Origin, message: String },
    #[error("no YAML files found in {0}")]
    Empty(String),
}

/// The objects of all files, grouped by namespace.
#[derive(Default)]
pub struct Manifests {
    pub systems: Vec<(Origin, IoTSystem)>,
    pub namespaces: BTreeMap<String, Snapshot>,
    /// Documents of kinds the checklist does not read.
    pub ignored: usize,
    /// Documents that are not Kubernetes objects at all (a Prometheus rules
    /// file, a promtool test): skipped, and named in a note.
    pub not_kubernetes: Vec<Origin>,
}

/// The verdicts for one system.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemReport {
    pub namespace: String,
    pub name: String,
    pub file: String,
    pub items: Vec<ItemStatus>,
}

impl SystemReport {
    pub fn failed(&self) -> bool {
        self.items.iter().any(|i| i.verdict == Verdict::Fail)
    }
}

/// Files named, and `.yaml`/`.yml` files under folders named, in a stable order.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CheckError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| CheckError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let before = out.len();
            walk(path, &mut out)?;
            if out.len() == before {
                return Err(CheckError::Empty(path.display().to_string()));
            }
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CheckError> {
    let read = |p: &Path| {
        std::fs::read_dir(p).map_err(|source| CheckError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut entries: Vec<PathBuf> = read(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

pub fn load_files(files: &[PathBuf], default_namespace: &str) -> Result<Manifests, CheckError> {
    let mut manifests = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|source| CheckError::Read {
            path: file.clone(),
            source,
        })?;
        load_text(&mut manifests, file, &text, default_namespace)?;
    }
    Ok(manifests)
}

/// Adds every document of one YAML stream.
pub fn load_text(
    manifests: &mut Manifests,
    file: &Path,
    text: &str,
    default_namespace: &str,
) -> Result<(), CheckError> {
    for (index, document) in split_documents(text).into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: index + 1,
        };
        if is_blank(document) {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let value: Value = serde_saphyr::from_str(document).map_err(|e| CheckError::Yaml {
            origin: origin.clone(),
            message: first_line(&e.to_string()),
        })?;
        if value.is_null() {
            continue;
        }
        add_document(manifests, origin, value, default_namespace)?;
    }
    Ok(())
}

/// The documents of a YAML stream: a line starting with `---` begins a new
/// one (a marker YAML reserves at column 0, whatever the context).
fn split_documents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']));
        if marker {
            out.push(&text[start..offset]);
            start = offset + 3; // content may follow the marker on its line
        }
        offset += line.len();
    }
    out.push(&text[start..]);
    // Nothing before the first marker is not a document of its own.
    if out.first().is_some_and(|d| is_blank(d)) && out.len() > 1 {
        out.remove(0);
    }
    out
}

/// Only whitespace and comments.
fn is_blank(document: &str) -> bool {
    document
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "...")
}

/// The parser's message without its source excerpt.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn parse<K: DeserializeOwned>(origin: &Origin, kind: &str, value: Value) -> Result<K, CheckError> {
    serde_json::from_value(value).map_err(|e| CheckError::Invalid {
        origin: origin.clone(),
        message: format!("not a valid {kind}: {e}"),
    })
}

/// The pod a template will create, named after its workload for the evidence.
fn pod_from_template(
    kind: &str,
    name: Option<String>,
    namespace: Option<String>,
    template: PodTemplateSpec,
) -> Pod {
    let mut metadata = template.metadata.unwrap_or_default();
    metadata.name = Some(format!(
        "{}/{}",
        kind.to_lowercase(),
        name.unwrap_or_default()
    ));
    metadata.namespace = namespace;
    Pod {
        metadata,
        spec: template.spec,
        status: None,
    }
}

fn add_document(
    m: &mut Manifests,
    origin: Origin,
    value: Value,
    default_namespace: &str,
) -> Result<(), CheckError> {
    let looks_kubernetes = ["apiVersion", "kind", "metadata"]
        .iter()
        .any(|k| value.get(k).is_some());
    if !looks_kubernetes {
        m.not_kubernetes.push(origin);
        return Ok(());
    }
    let (Some(api_version), Some(kind)) = (
        value
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(String::from),
        value.get("kind").and_then(Value::as_str).map(String::from),
    ) else {
        return Err(CheckError::Invalid {
            origin,
            message: "a Kubernetes object needs apiVersion and kind".into(),
        });
    };
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(default_namespace)
        .to_string();
    fn snap<'m>(m: &'m mut Manifests, namespace: &str) -> &'m mut Snapshot {
        m.namespaces.entry(namespace.to_string()).or_default()
    }
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    // A workload counts as the pod its template creates.
    macro_rules! workload {
        ($kind:ty, $template:expr) => {{
            let w: $kind = parse(&origin, &kind, value)?;
            let template: PodTemplateSpec = $template(w.spec);
            let pod = pod_from_template(&kind, w.metadata.name, Some(namespace.clone()), template);
            snap(m, &namespace).pods.push(Arc::new(pod));
        }};
    }
    match (group, kind.as_str()) {
        ("iotposture.dev", "IoTSystem") => {
            let mut system: IoTSystem = parse(&origin, &kind, value)?;
            system.metadata.namespace = Some(namespace.clone());
            // Stand-ins for what the API server would assign.
            let name = system.metadata.name.clone().unwrap_or_default();
            system
                .metadata
                .uid
                .get_or_insert_with(|| format!("offline-{namespace}-{name}"));
            snap(m, &namespace);
            m.systems.push((origin, system));
        }
        ("", "Pod") => {
            let mut pod: Pod = parse(&origin, &kind, value)?;
            pod.metadata.namespace = Some(namespace.clone());
            snap(m, &namespace).pods.push(Arc::new(pod));
        }
        ("apps", "Deployment") => workload!(Deployment, |s: DeploymentSpec| s.template),
        ("apps", "StatefulSet") => workload!(StatefulSet, |s: StatefulSetSpec| s.template),
        ("apps", "DaemonSet") => workload!(DaemonSet, |s: DaemonSetSpec| s.template),
        ("apps", "ReplicaSet") => {
            workload!(ReplicaSet, |s: ReplicaSetSpec| s
                .template
                .unwrap_or_default())
        }
        ("batch", "Job") => workload!(Job, |s: Option<JobSpec>| s.unwrap_or_default().template),
        ("batch", "CronJob") => workload!(CronJob, |s: CronJobSpec| s
            .job_template
            .spec
            .unwrap_or_default()
            .template),
        ("", "Service") => {
            let o: Service = parse(&origin, &kind, value)?;
            snap(m, &namespace)
                .services
                .push(Arc::new(with_namespace(o, &namespace)));
        }
        ("", "ServiceAccount") => {
            let o: ServiceAccount = parse(&origin, &kind, value)?;
            snap(m, &namespace)
                .service_accounts
                .push(Arc::new(with_namespace(o, &namespace)));
        }
        ("", "Secret") => {
            // Metadata only, as in the cluster: values are never read.
            let o: Secret = parse(&origin, &kind, value)?;
            let mut meta = o.metadata;
            meta.namespace = Some(namespace.clone());
            snap(m, &namespace).secrets.push(meta);
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let o: NetworkPolicy = parse(&origin, &kind, value)?;
            snap(m, &namespace)
                .network_policies
                .push(Arc::new(with_namespace(o, &namespace)));
        }
        ("rbac.authorization.k8s.io", "Role") => {
            let o: Role = parse(&origin, &kind, value)?;
            snap(m, &namespace)
                .roles
                .push(Arc::new(with_namespace(o, &namespace)));
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            let o: RoleBinding = parse(&origin, &kind, value)?;
            snap(m, &namespace)
                .role_bindings
                .push(Arc::new(with_namespace(o, &namespace)));
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            let o: ClusterRoleBinding = parse(&origin, &kind, value)?;
            m.namespaces
                .entry(String::new())
                .or_default()
                .cluster_role_bindings
                .get_or_insert_with(Vec::new)
                .push(Arc::new(o));
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            let o: ClusterRole = parse(&origin, &kind, value)?;
            // Cluster-wide: visible from every namespace.
            m.namespaces
                .entry(String::new())
                .or_default()
                .cluster_roles
                .push(Arc::new(o));
        }
        _ => m.ignored += 1,
    }
    Ok(())
}

fn with_namespace<K: kube::Resource>(mut o: K, namespace: &str) -> K {
    o.meta_mut().namespace = Some(namespace.to_string());
    o
}

/// Judges every IoTSystem of the manifests. An IoTSystem the controller would
/// refuse is an input error, named by file and document.
/// How component pods are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// As the operator's mutating webhook admits them in Enforce mode.
    Mutated,
    /// As written in the files (a cluster without the webhooks).
    AsWritten,
}

/// What the mutating webhook makes of each component pod of an Enforce system.
fn admit(pods: &mut [Arc<Pod>], system: &ValidatedSystem) {
    let images = Images {
        gateway: crate::gateway::DEFAULT_GATEWAY_IMAGE.into(),
        exporter: crate::gateway::DEFAULT_EXPORTER_IMAGE.into(),
    };
    for pod in pods.iter_mut() {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let component = system
            .components
            .iter()
            .find(|c| Selector::try_from(c.selector.clone()).is_ok_and(|sel| sel.matches(&labels)));
        if let Some(component) = component {
            let pod = Arc::make_mut(pod);
            inject_gateway(pod, system, component, &images);
            *pod = harden_pod(pod, system, component).pod;
        }
    }
}

pub fn evaluate(
    manifests: &Manifests,
    today: Date,
    admission: Admission,
) -> Result<Vec<SystemReport>, CheckError> {
    let cluster = manifests.namespaces.get("");
    let cluster_roles: Vec<Arc<ClusterRole>> =
        cluster.map(|s| s.cluster_roles.clone()).unwrap_or_default();
    let cluster_role_bindings: Vec<Arc<ClusterRoleBinding>> = cluster
        .and_then(|s| s.cluster_role_bindings.clone())
        .unwrap_or_default();
    let mut reports = Vec::new();
    for (origin, system) in &manifests.systems {
        let namespace = system.metadata.namespace.clone().unwrap_or_default();
        let mut snapshot = manifests
            .namespaces
            .get(&namespace)
            .cloned()
            .unwrap_or_default();
        snapshot.cluster_roles = cluster_roles.clone();
        snapshot.cluster_role_bindings = Some(cluster_role_bindings.clone());
        // Offline, cert-manager is assumed present: the verdicts are those of a
        // cluster that has it.
        snapshot.certificates.get_or_insert_with(Vec::new);
        let pods: Vec<_> = snapshot
            .pods
            .iter()
            .map(|p| {
                Arc::new(crate::controller::slim_pod::CachedPod::new(
                    p.as_ref().clone(),
                ))
            })
            .collect();
        let siblings: Vec<Arc<IoTSystem>> = manifests
            .systems
            .iter()
            .filter(|(_, s)| s.metadata.namespace == system.metadata.namespace)
            .map(|(_, s)| Arc::new(s.clone()))
            .collect();
        let valid = validate(
            system,
            &Neighbourhood {
                pods: &pods,
                systems: &siblings,
            },
        )
        .map_err(|e| CheckError::Invalid {
            origin: origin.clone(),
            message: format!(
                "IoTSystem {}: {e}",
                system.metadata.name.as_deref().unwrap_or("?")
            ),
        })?;
        let desired = match valid.mode {
            // Offline there is no cluster to ask: the rules file form.
            Mode::Enforce => build_all(&valid, crate::build::RulesAs::ConfigMap),
            Mode::Audit => Default::default(),
        };
        let mut snapshot = snapshot.with_desired(&valid.name, &desired);
        if admission == Admission::Mutated && valid.mode == Mode::Enforce {
            admit(&mut snapshot.pods, &valid);
        }
        reports.push(SystemReport {
            namespace,
            name: valid.name.clone(),
            file: origin.file.display().to_string(),
            items: checklist::evaluate(&valid, &snapshot, today),
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = include_str!("../../../manifests/examples/smart-factory.yaml");

    /// The example with a few characters cut out or put in: almost YAML.
    fn mangled() -> impl Strategy<Value = String> {
        prop::collection::vec(
            (
                0..EXAMPLE.len(),
                prop::option::of(prop::sample::select(vec![
                    ":", "-", "\n", "{", "]", "'", "\"", "---\n", " ", "\t", "7",
                ])),
            ),
            1..6,
        )
        .prop_map(|edits| {
            let mut text = EXAMPLE.to_string();
            for (at, insert) in edits {
                let at = (0..=at.min(text.len()))
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                match insert {
                    Some(s) => text.insert_str(at, s),
                    None if at < text.len() => {
                        let end = (at + 1..=text.len())
                            .find(|i| text.is_char_boundary(*i))
                            .unwrap_or(text.len());
                        text.replace_range(at..end, "");
                    }
                    None => {}
                }
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any text: read or refused with an error naming the file, never a panic;
        /// what is read is judged.
        #[test]
        fn the_reader_never_panics(text in prop_oneof![mangled(), ".{0,300}"]) {
            let mut m = Manifests::default();
            match load_text(&mut m, Path::new("input.yaml"), &text, "default") {
                Ok(()) => {
                    let _ = evaluate(&m, k8s_openapi::jiff::civil::date(2026, 11, 29), Admission::Mutated);
                }
                Err(e) => prop_assert!(e.to_string().contains("input.yaml"), "{}", e),
            }
        }
    }
}
