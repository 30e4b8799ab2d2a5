//! The operator's own writes, recognised when the watch brings them back.
//!
//! A reconcile writes a system's children and then judges the state it
//! wrote. Each write comes back as a watch event a moment later; re-running
//! the writer for it judged the same state again (at 1,000 systems that was
//! two extra reconciles per system, each re-reading every child). An event
//! whose resourceVersion is the one our write returned is that echo: the
//! writer is not triggered by it, everyone else the change affects still is.
//! The watch can bring the echo before the write's answer is recorded (one
//! in ten under load): an unrecognised change of one of our own objects is
//! looked at again after `ECHO_GRACE` before it triggers. Nothing is ever
//! missed: at worst a system is judged once more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::{Resource, ResourceExt, runtime::reflector::ObjectRef};

use crate::api::IoTSystem;

/// How long a write waits for its echo: longer than any watch lag that
/// matters, short enough that writes whose echo never comes (a relist that
/// skipped it) do not pile up.
const KEPT: Duration = Duration::from_secs(120);

/// How long a change of one of our objects waits for its write's answer
/// before it counts as someone else's.
pub const ECHO_GRACE: Duration = Duration::from_millis(500);

/// Kind, namespace ("" when cluster-scoped) and name.
pub type Key = (&'static str, String, String);

struct Write {
    resource_version: String,
    writer: ObjectRef<IoTSystem>,
    at: Instant,
}

#[derive(Default)]
pub struct OwnWrites {
    writes: Mutex<Writes>,
}

#[derive(Default)]
struct Writes {
    by_object: HashMap<Key, Write>,
    /// Size at which old entries are next swept.
    sweep_at: usize,
}

/// The object's key and resourceVersion, to look for its write later.
pub fn version_key<K: Resource>(kind: &'static str, object: &K) -> Option<(Key, String)> {
    Some((key(kind, object), object.resource_version()?))
}

fn key<K: Resource>(kind: &'static str, object: &K) -> Key {
    (
        kind,
        object.namespace().unwrap_or_default(),
        object.name_any(),
    )
}

impl OwnWrites {
    /// `writer` wrote `object` (the API server's answer, with its new
    /// resourceVersion).
    pub fn wrote<K: Resource>(&self, kind: &'static str, object: &K, writer: ObjectRef<IoTSystem>) {
        self.wrote_at(kind, object, writer, Instant::now());
    }

    fn wrote_at<K: Resource>(
        &self,
        kind: &'static str,
        object: &K,
        writer: ObjectRef<IoTSystem>,
        at: Instant,
    ) {
        let Some(resource_version) = object.resource_version() else {
            return;
        };
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        writes.by_object.insert(
            key(kind, object),
            Write {
                resource_version,
                writer,
                at,
            },
        );
        if writes.by_object.len() >= writes.sweep_at {
            writes
                .by_object
                .retain(|_, w| at.duration_since(w.at) < KEPT);
            writes.sweep_at = (writes.by_object.len() * 2).max(1024);
        }
    }

    /// The system whose own write this watched object is, if it is one
    /// (and forgets that write: a resourceVersion comes back once).
    pub fn echo_of<K: Resource>(
        &self,
        kind: &'static str,
        object: &K,
    ) -> Option<ObjectRef<IoTSystem>> {
        let (key, seen) = version_key(kind, object)?;
        self.echo_of_version(&key, &seen)
    }

    /// `echo_of` for an object seen earlier, by its key and resourceVersion.
    pub fn echo_of_version(&self, key: &Key, seen: &str) -> Option<ObjectRef<IoTSystem>> {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        match writes.by_object.get(key) {
            Some(w) if w.resource_version == seen => writes.by_object.remove(key).map(|w| w.writer),
            _ => None,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.writes.lock().unwrap().by_object.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    fn policy(name: &str, rv: &str) -> NetworkPolicy {
        let mut p = NetworkPolicy::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("plant".into());
        p.metadata.resource_version = Some(rv.into());
        p
    }

    fn system(name: &str) -> ObjectRef<IoTSystem> {
        ObjectRef::new(name).within("plant")
    }

    #[test]
    fn only_the_version_written_is_an_echo_and_only_once() {
        let own = OwnWrites::default();
        own.wrote("NetworkPolicy", &policy("a", "10"), system("line-1"));
        // Someone else's later change, or an older event: not ours.
        assert_eq!(own.echo_of("NetworkPolicy", &policy("a", "11")), None);
        assert_eq!(own.echo_of("NetworkPolicy", &policy("b", "10")), None);
        assert_eq!(own.echo_of("ConfigMap", &policy("a", "10")), None);
        assert_eq!(
            own.echo_of("NetworkPolicy", &policy("a", "10")),
            Some(system("line-1"))
        );
        assert_eq!(own.echo_of("NetworkPolicy", &policy("a", "10")), None);
    }

    #[test]
    fn an_echo_seen_before_its_write_was_recorded_is_recognised_later() {
        let own = OwnWrites::default();
        let (key, seen) = version_key("NetworkPolicy", &policy("a", "10")).unwrap();
        assert_eq!(own.echo_of_version(&key, &seen), None);
        own.wrote("NetworkPolicy", &policy("a", "10"), system("line-1"));
        assert_eq!(own.echo_of_version(&key, &seen), Some(system("line-1")));
    }

    #[test]
    fn a_newer_write_replaces_the_older() {
        let own = OwnWrites::default();
        own.wrote("NetworkPolicy", &policy("a", "10"), system("line-1"));
        own.wrote("NetworkPolicy", &policy("a", "12"), system("line-2"));
        assert_eq!(own.echo_of("NetworkPolicy", &policy("a", "10")), None);
        assert_eq!(
            own.echo_of("NetworkPolicy", &policy("a", "12")),
            Some(system("line-2"))
        );
    }

    #[test]
    fn writes_whose_echo_never_came_are_swept() {
        let own = OwnWrites::default();
        let start = Instant::now();
        for i in 0..1023 {
            own.wrote_at(
                "NetworkPolicy",
                &policy(&format!("old-{i}"), "1"),
                system("line-1"),
                start,
            );
        }
        assert_eq!(own.len(), 1023, "swept only once the map has grown");
        own.wrote_at(
            "NetworkPolicy",
            &policy("new", "2"),
            system("line-1"),
            start + KEPT + Duration::from_secs(1),
        );
        assert_eq!(own.len(), 1, "only the fresh write is kept");
        assert_eq!(
            own.echo_of("NetworkPolicy", &policy("new", "2")),
            Some(system("line-1"))
        );
    }

    #[test]
    fn an_object_without_a_version_is_never_an_echo() {
        let own = OwnWrites::default();
        let mut p = policy("a", "10");
        p.metadata.resource_version = None;
        own.wrote("NetworkPolicy", &p, system("line-1"));
        assert_eq!(own.len(), 0);
        assert_eq!(own.echo_of("NetworkPolicy", &p), None);
    }
}
