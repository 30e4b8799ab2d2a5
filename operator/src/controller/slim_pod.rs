//! What the pod cache keeps of a pod. Pods are most of what the operator
//! holds (at 10,000 pods, 18.5 KB each as `k8s_openapi` decodes a
//! Deployment's pod), so everything no check, trigger or probe reads is
//! dropped before the pod is cached, and what is left is packed
//! (`CachedPod`). A check that starts reading a field dropped here must keep
//! it here too: the test at the end judges the fixtures' pods both whole and
//! as the cache gives them back, and wants the same verdicts.
//!
//! Kept: metadata (but the field managers and kubectl's last applied copy),
//! the spec but for scheduling and termination settings, the volumes that
//! name a Secret or a host path (I-10, V-1), and of the status the phase,
//! IP, readiness and each container's restarts, readiness and waiting
//! reason (`triggers::fingerprint`, probing, VIII-1).

use std::borrow::Cow;

use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodSpec,
        PodStatus, Volume,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Deserializer, Serialize};

use super::labels::{Labelled, StringMap};

/// A pod as the pod cache holds it. Slimmed, a `Pod` was still 8 KB in
/// memory (at 10,000 pods, half of all the operator cached), most of it the
/// inline size of k8s-openapi's spec and status types whose fields are nearly
/// all empty; their JSON is a fraction of that. So the metadata stays
/// decoded (selectors, ownership, triggers and names read it for every pod
/// of a namespace) and the slimmed spec and status are kept as JSON,
/// decoded only for the pods a reconcile judges or probes.
///
/// Labels and annotations are kept apart (`labels::StringMap`), each in one
/// allocation; read them with `CachedPod::labels` or `Labelled`.
#[derive(Clone, Debug)]
pub struct CachedPod {
    /// Without managed fields, labels and annotations.
    metadata: ObjectMeta,
    labels: StringMap,
    annotations: StringMap,
    /// The slimmed spec and status (`Body`) as JSON.
    body: Box<[u8]>,
}

#[derive(Default, Serialize, Deserialize)]
struct Body {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<PodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<PodStatus>,
}

impl CachedPod {
    pub fn new(mut pod: Pod) -> Self {
        slim_pod(&mut pod);
        let body = Body {
            spec: pod.spec,
            status: pod.status,
        };
        let mut metadata = pod.metadata;
        Self {
            labels: StringMap::new(metadata.labels.take()),
            annotations: StringMap::new(metadata.annotations.take()),
            metadata,
            // Serializing k8s-openapi's own types cannot fail.
            body: serde_json::to_vec(&body).unwrap_or_default().into(),
        }
    }

    /// The pod as slimmed: what every check reads of it.
    pub fn pod(&self) -> Pod {
        // Written by `new` from the same types: it reads back.
        let body: Body = serde_json::from_slice(&self.body).unwrap_or_default();
        Pod {
            metadata: ObjectMeta {
                labels: self.labels.to_map(),
                annotations: self.annotations.to_map(),
                ..self.metadata.clone()
            },
            spec: body.spec,
            status: body.status,
        }
    }

    /// The slimmed spec and status as stored: equal bytes, equal pods.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Inherent, so that `pod.labels()` never resolves to
    /// `ResourceExt::labels`, which finds none in `metadata`.
    pub fn labels(&self) -> &StringMap {
        &self.labels
    }

    pub fn annotations(&self) -> &StringMap {
        &self.annotations
    }
}

impl Labelled for CachedPod {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }
}

/// Decoded from the API server's JSON as a whole `Pod`, then packed: the
/// watch never holds more than one whole pod at a time.
impl<'de> Deserialize<'de> for CachedPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Pod::deserialize(d).map(CachedPod::new)
    }
}

impl kube::Resource for CachedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Drops what no check, trigger or probe reads (`CachedPod::new` packs the rest).
fn slim_pod(pod: &mut Pod) {
    super::cache::slim(pod);
    if let Some(status) = pod.status.take() {
        pod.status = Some(slim_status(status));
    }
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    spec.tolerations = None;
    spec.dns_policy = None;
    spec.scheduler_name = None;
    spec.enable_service_links = None;
    spec.preemption_policy = None;
    spec.priority = None;
    spec.termination_grace_period_seconds = None;
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        c.termination_message_path = None;
        c.termination_message_policy = None;
        c.image_pull_policy = None;
    }
    if let Some(volumes) = spec.volumes.as_mut() {
        // A Volume is 3 KB inline whatever its source; most pods carry only
        // the API token's projection, which no check reads.
        volumes.retain(names_a_secret_or_host_path);
        for v in volumes.iter_mut() {
            if let Some(sources) = v.projected.as_mut().and_then(|p| p.sources.as_mut()) {
                sources.retain(|s| s.secret.is_some());
            }
        }
        volumes.shrink_to_fit();
    }
}

fn names_a_secret_or_host_path(v: &Volume) -> bool {
    v.secret.is_some()
        || v.host_path.is_some()
        || v.projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .any(|s| s.secret.is_some())
}

fn slim_status(status: PodStatus) -> PodStatus {
    PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect()
        }),
        container_statuses: status
            .container_statuses
            .map(|statuses| statuses.into_iter().map(slim_container_status).collect()),
        ..Default::default()
    }
}

fn slim_container_status(s: ContainerStatus) -> ContainerStatus {
    ContainerStatus {
        name: s.name,
        restart_count: s.restart_count,
        ready: s.ready,
        state: s.state.map(|state| ContainerState {
            waiting: state.waiting.map(|w| ContainerStateWaiting {
                reason: w.reason,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use k8s_openapi::jiff::civil::date;

    use super::*;
    use crate::check::{Admission, Manifests, evaluate, load_text};

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: sensor-0
  namespace: plant
  labels: {app: sensor}
  managedFields: [{manager: kubectl, operation: Apply}]
spec:
  serviceAccountName: sensor
  dnsPolicy: ClusterFirst
  schedulerName: default-scheduler
  tolerations: [{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute}]
  containers:
    - name: app
      image: registry.example.com/iot/sensor:1.2
      imagePullPolicy: IfNotPresent
      terminationMessagePath: /dev/termination-log
      env: [{name: TOKEN, valueFrom: {secretKeyRef: {name: env-secret, key: t}}}]
  volumes:
    - name: kube-api-access
      projected:
        sources:
          - serviceAccountToken: {path: token}
          - configMap: {name: kube-root-ca.crt}
    - name: certs
      projected:
        sources:
          - secret: {name: projected-secret}
          - configMap: {name: bundle}
    - name: creds
      secret: {secretName: mounted-secret}
    - name: dev
      hostPath: {path: /dev/ttyUSB0}
    - name: scratch
      emptyDir: {}
status:
  phase: Running
  podIP: 10.0.1.5
  hostIP: 10.0.0.1
  qosClass: BestEffort
  conditions:
    - {type: PodScheduled, status: "True", lastTransitionTime: "2026-11-30T10:00:00Z"}
    - {type: Ready, status: "True", lastTransitionTime: "2026-11-30T10:00:01Z"}
  containerStatuses:
    - name: app
      image: registry.example.com/iot/sensor:1.2
      imageID: sha256:0123
      ready: false
      restartCount: 7
      lastState: {terminated: {exitCode: 1, reason: Error}}
      state: {waiting: {reason: CrashLoopBackOff, message: back-off 5m0s}}
"#;

    const SYSTEM: &str = r#"
apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {name: line, namespace: plant}
spec:
  mode: Audit
  components:
    - {name: sensor, role: Sensor, selector: {matchLabels: {app: sensor}}}
"#;

    #[test]
    fn keeps_what_is_read_and_drops_the_rest() {
        let mut pod: Pod = serde_saphyr::from_str(POD).unwrap();
        slim_pod(&mut pod);
        assert!(
            pod.metadata
                .managed_fields
                .as_ref()
                .is_none_or(|m| m.is_empty())
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("sensor"));
        assert!(spec.tolerations.is_none() && spec.dns_policy.is_none());
        assert!(spec.containers[0].image_pull_policy.is_none());
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("registry.example.com/iot/sensor:1.2")
        );
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["certs", "creds", "dev"]);
        let projected = spec.volumes.as_ref().unwrap()[0]
            .projected
            .as_ref()
            .unwrap();
        assert_eq!(projected.sources.as_ref().unwrap().len(), 1);
        assert_eq!(
            crate::checklist::user_management::secrets_of(&pod),
            ["env-secret", "mounted-secret", "projected-secret"]
                .map(String::from)
                .into()
        );

        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.1.5"));
        assert!(status.host_ip.is_none() && status.qos_class.is_none());
        let conditions = status.conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(
            (conditions[0].type_.as_str(), conditions[0].status.as_str()),
            ("Ready", "True")
        );
        let c = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            (c.name.as_str(), c.restart_count, c.ready),
            ("app", 7, false)
        );
        let waiting = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(waiting.message.is_none() && c.last_state.is_none() && c.image_id.is_empty());
    }

    #[test]
    fn the_cache_decodes_a_pod_to_its_slimmed_form_and_gives_it_back() {
        use kube::Resource;
        let json =
            serde_json::to_vec(&serde_saphyr::from_str::<serde_json::Value>(POD).unwrap()).unwrap();
        let cached: CachedPod = serde_json::from_slice(&json).unwrap();
        let mut slimmed: Pod = serde_saphyr::from_str(POD).unwrap();
        slim_pod(&mut slimmed);
        assert_eq!(cached.pod(), slimmed);
        assert!(
            cached
                .metadata
                .managed_fields
                .as_ref()
                .is_none_or(|m| m.is_empty())
        );
        assert_eq!(cached.labels().get("app"), Some("sensor"));
        assert_eq!(cached.label("app"), Some("sensor"));
        // Kept apart, in one allocation each.
        assert_eq!(cached.metadata.labels, None);
        assert_eq!(
            CachedPod::url_path(&(), Some("plant")),
            Pod::url_path(&(), Some("plant"))
        );
        assert_eq!(CachedPod::api_version(&()), "v1");
        assert_eq!(CachedPod::kind(&()), "Pod");
    }

    /// Every fixture judged with its pods whole and slimmed: a check that
    /// reads something `slim_pod` drops shows up here.
    #[test]
    fn the_checklist_judges_slimmed_pods_as_whole_ones() {
        let fixtures = [
            include_str!("../../../manifests/examples/smart-factory.yaml"),
            include_str!("../../tests/fixtures/bad-workloads.yaml"),
            &format!("{POD}---\n{SYSTEM}"),
        ];
        for yaml in &fixtures {
            let load = || {
                let mut m = Manifests::default();
                load_text(&mut m, Path::new("fixture.yaml"), yaml, "plant").unwrap();
                m
            };
            let whole = load();
            assert!(!whole.systems.is_empty());
            let mut slimmed = load();
            for snapshot in slimmed.namespaces.values_mut() {
                for pod in snapshot.pods.iter_mut() {
                    // As the cache holds it and hands it to the checks.
                    *pod = std::sync::Arc::new(CachedPod::new(pod.as_ref().clone()).pod());
                }
            }
            let judge = |m: &Manifests| {
                serde_json::to_value(evaluate(m, date(2026, 11, 26), Admission::AsWritten).unwrap())
                    .unwrap()
            };
            assert_eq!(judge(&whole), judge(&slimmed));
        }
    }
}
