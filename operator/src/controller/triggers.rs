//! Which systems a cache's change should re-judge, and when.
//!
//! At scale most events concern nothing a check reads (a pod's status
//! heartbeat, a ClusterRole no RoleBinding of a system refers to), and a
//! namespace may never fall quiet. So: pods trigger only the systems whose
//! selectors take them, and only when something a check reads changed;
//! and triggers are coalesced from the first one, never pushed back by later
//! ones (a debounce would starve a busy namespace).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
    time::Duration,
};

use futures::Stream;
use kube::{
    Resource, ResourceExt,
    core::{Selector, SelectorExt},
    runtime::reflector::ObjectRef,
};
use tokio::{sync::mpsc, time::Instant};

use super::{index::Indexed, slim_pod::CachedPod};
use crate::api::IoTSystem;

/// The systems in `pod`'s namespace with a component whose selector takes
/// these labels.
fn taking(
    systems: &Indexed<IoTSystem>,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<ObjectRef<IoTSystem>> {
    systems
        .in_namespace(namespace)
        .into_iter()
        .filter(|s| {
            s.spec.components.iter().any(|c| {
                Selector::try_from(c.selector.clone()).is_ok_and(|sel| sel.matches(labels))
            })
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// What the checks read of a pod, hashed: labels, annotations, deletion,
/// and the spec and status as the cache keeps them (`slim_pod`: of the
/// status, phase, IP, readiness and each container's restarts, readiness
/// and waiting reason). Other status updates (heartbeats, timestamps)
/// change nothing a verdict rests on.
fn fingerprint(pod: &CachedPod) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pod.labels().hash(&mut h);
    pod.annotations().hash(&mut h);
    pod.meta().deletion_timestamp.is_some().hash(&mut h);
    pod.body().hash(&mut h);
    h.finish()
}

/// What the checks last saw of a pod (its fingerprint), and the names of
/// the systems of its namespace that took it (names only: an `ObjectRef`
/// per pod was four more strings, kept for every pod of the cluster).
type Seen = (u64, Box<[Box<str>]>);

/// Per pod (namespace, name): what was last seen of it.
#[derive(Default)]
pub struct PodTriggers(HashMap<(String, String), Seen>);

impl PodTriggers {
    /// The systems to re-judge after this pod event: none when nothing read
    /// changed; else those that take the pod now and those that took it.
    pub fn affected(
        &mut self,
        systems: &Indexed<IoTSystem>,
        pod: &CachedPod,
        deleted: bool,
    ) -> Vec<ObjectRef<IoTSystem>> {
        let namespace = pod.namespace().unwrap_or_default();
        let key = (namespace.clone(), pod.name_any());
        let refs = |names: Box<[Box<str>]>| {
            names
                .iter()
                .map(|n| ObjectRef::new(n).within(&namespace))
                .collect::<Vec<_>>()
        };
        if deleted {
            return self
                .0
                .remove(&key)
                .map(|(_, took)| refs(took))
                .unwrap_or_default();
        }
        let print = fingerprint(pod);
        if self.0.get(&key).is_some_and(|(p, _)| *p == print) {
            return Vec::new();
        }
        let labels = pod.labels().to_map().unwrap_or_default();
        let mut all = taking(systems, &namespace, &labels);
        let names = all.iter().map(|r| r.name.as_str().into()).collect();
        let before = self
            .0
            .insert(key, (print, names))
            .map(|(_, took)| refs(took))
            .unwrap_or_default();
        for r in before {
            if !all.contains(&r) {
                all.push(r);
            }
        }
        all
    }
}

/// Passes each system on `window` after its first trigger, however many
/// more arrive meanwhile; order is kept.
pub fn coalesce(
    mut triggers: impl Stream<Item = ObjectRef<IoTSystem>> + Send + Unpin + 'static,
    window: Duration,
) -> impl Stream<Item = ObjectRef<IoTSystem>> + Send {
    use futures::StreamExt;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut pending: HashSet<ObjectRef<IoTSystem>> = HashSet::new();
        let mut due: VecDeque<(Instant, ObjectRef<IoTSystem>)> = VecDeque::new();
        let mut open = true;
        while open || !due.is_empty() {
            let next_due = due.front().map(|(at, _)| *at);
            tokio::select! {
                biased;
                _ = async { tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)).await }, if next_due.is_some() => {
                    if let Some((_, r)) = due.pop_front() {
                        pending.remove(&r);
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                }
                t = triggers.next(), if open => match t {
                    Some(r) => {
                        if pending.insert(r.clone()) {
                            due.push_back((Instant::now() + window, r));
                        }
                    }
                    None => open = false,
                },
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn systems() -> Indexed<IoTSystem> {
        Indexed::of([("a", "x"), ("b", "y")].map(|(name, app)| {
            let mut s: IoTSystem = serde_saphyr::from_str(&format!(
                "apiVersion: iotposture.dev/v1alpha1
kind: IoTSystem
metadata: {{name: {name}, namespace: plant}}
spec:
  components: [{{name: c, role: Aggregator, selector: {{matchLabels: {{app: {app}}}}}}}]
"
            ))
            .unwrap();
            s.metadata.uid = Some(name.into());
            s
        }))
    }

    /// Decoded as the watch decodes it.
    fn pod(app: &str, restarts: i32, heartbeat: u32) -> CachedPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "plant", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": format!("2026-11-30T10:00:{heartbeat:02}Z")}],
                "containerStatuses": [{"name": "c", "image": "i:1", "imageID": "", "ready": true, "restartCount": restarts}]},
        }))
        .unwrap()
    }

    fn names(refs: Vec<ObjectRef<IoTSystem>>) -> Vec<String> {
        let mut n: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    #[test]
    fn a_pod_wakes_only_the_systems_that_take_it_and_only_on_what_checks_read() {
        let store = systems();
        let mut t = PodTriggers::default();
        assert_eq!(names(t.affected(&store, &pod("x", 0, 1), false)), ["a"]);
        // A status heartbeat: nothing a check reads.
        assert!(t.affected(&store, &pod("x", 0, 2), false).is_empty());
        // A restart is read (VII-1, the restart metrics).
        assert_eq!(names(t.affected(&store, &pod("x", 1, 2), false)), ["a"]);
        // Relabelled: the system it left and the one it joined.
        let relabelled = t.affected(&store, &pod("y", 1, 2), false);
        assert!(
            relabelled
                .iter()
                .all(|r| r.namespace.as_deref() == Some("plant"))
        );
        assert_eq!(names(relabelled), ["a", "b"]);
        assert_eq!(names(t.affected(&store, &pod("y", 1, 2), true)), ["b"]);
        // A pod no system takes wakes none.
        assert!(t.affected(&store, &pod("z", 0, 0), false).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_system_triggered_without_pause_is_still_reconciled_every_window() {
        let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<IoTSystem>>();
        let input = Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut out = Box::pin(coalesce(input, Duration::from_millis(300)));
        let system = ObjectRef::<IoTSystem>::new("a").within("plant");
        let feeder = {
            let system = system.clone();
            tokio::spawn(async move {
                // A trigger every 50 ms for 2 s: a debounce would never fire.
                for _ in 0..40 {
                    tx.send(system.clone()).unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let start = Instant::now();
        let mut passed = 0;
        while start.elapsed() < Duration::from_millis(1900) {
            if tokio::time::timeout(Duration::from_millis(400), out.next())
                .await
                .ok()
                .flatten()
                .is_some()
            {
                passed += 1;
            }
        }
        feeder.await.unwrap();
        assert!((5..=7).contains(&passed), "{passed} reconciles in 1.9 s");
    }
}
