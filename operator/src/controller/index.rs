//! A watch cache, its objects by namespace and name.
//!
//! A reconcile reads one namespace, but kube's `Store` can only hand out
//! every object it holds: at 1,000 systems and 10,000 pods, copying whole
//! stores to filter them was most of the operator's time. And it keys each
//! object by an `ObjectRef` (name, namespace, uid and resourceVersion
//! again, four more strings per object). So the cache is ours: per
//! namespace, the objects sorted by name, so a namespace's objects come out
//! in the same order in every process.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    sync::{Arc, PoisonError, RwLock},
};

use kube::{
    Resource, ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

/// Namespace ("" for cluster-scoped objects), then name.
type ByNamespace<K> = HashMap<String, BTreeMap<String, Arc<K>>>;

struct Objects<K> {
    live: ByNamespace<K>,
    /// Filled during a (re)list and swapped in when it is done: a relist
    /// drops what was deleted meanwhile.
    relisting: Option<ByNamespace<K>>,
}

/// The objects a watch has seen, by namespace.
pub struct Indexed<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    objects: Arc<RwLock<Objects<K>>>,
    dyntype: K::DynamicType,
    /// Whether the watch behind it takes every object of its kind (no
    /// label or field selector): then what it lacks does not exist, but
    /// for changes it has not seen yet.
    complete: bool,
    /// Whether the watch has listed since it last failed: while it is
    /// broken (an API server restart), changes go unseen for seconds.
    current: Arc<std::sync::atomic::AtomicBool>,
}

impl<K: Resource + 'static> Clone for Indexed<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            dyntype: self.dyntype.clone(),
            complete: self.complete,
            current: self.current.clone(),
        }
    }
}

/// What a cache says about objects missing from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Every object of the kind, watched without a break: missing means absent.
    Whole,
    /// Every object of the kind, but the watch broke and has not listed
    /// again: it may be missing changes until it does.
    Lagging,
    /// Only the objects its label selector takes: one of the same name may
    /// exist without the label.
    Selected,
}

impl<K> Indexed<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    /// An empty cache, filled by `apply`.
    pub fn new(dyntype: K::DynamicType) -> Self {
        Self {
            objects: Arc::new(RwLock::new(Objects {
                live: HashMap::new(),
                relisting: None,
            })),
            dyntype,
            complete: false,
            current: Default::default(),
        }
    }

    /// Marks the cache as holding every object of its kind (its watch has
    /// no selector).
    pub fn holding_all(mut self, complete: bool) -> Self {
        self.complete = complete;
        self
    }

    /// How far this cache tells what exists on the server.
    pub fn coverage(&self) -> Coverage {
        match (
            self.complete,
            self.current.load(std::sync::atomic::Ordering::Acquire),
        ) {
            (false, _) => Coverage::Selected,
            (true, true) => Coverage::Whole,
            (true, false) => Coverage::Lagging,
        }
    }

    /// The watch failed: until it has listed again, it may miss changes.
    pub fn broken(&self) {
        self.current
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The objects of `namespace` ("" for cluster-scoped ones), by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let objects = self.objects.read().unwrap_or_else(PoisonError::into_inner);
        objects
            .live
            .get(namespace)
            .into_iter()
            .flat_map(|by_name| by_name.values().cloned())
            .collect()
    }

    /// The object `r` names, if cached.
    pub fn get(&self, r: &ObjectRef<K>) -> Option<Arc<K>> {
        let objects = self.objects.read().unwrap_or_else(PoisonError::into_inner);
        objects
            .live
            .get(r.namespace.as_deref().unwrap_or_default())?
            .get(&r.name)
            .cloned()
    }

    /// Every object cached.
    pub fn state(&self) -> Vec<Arc<K>> {
        let objects = self.objects.read().unwrap_or_else(PoisonError::into_inner);
        objects
            .live
            .values()
            .flat_map(|by_name| by_name.values().cloned())
            .collect()
    }

    /// A cache holding `objects`, with no watch behind it (for what reads
    /// caches outside the controller: tests, benchmarks).
    pub fn of(objects: impl IntoIterator<Item = K>) -> Self
    where
        K::DynamicType: Default,
    {
        let index = Self::new(Default::default());
        for o in objects {
            index.apply(watcher::Event::Apply(o));
        }
        index.apply(watcher::Event::InitDone);
        index
    }

    /// Takes in a watch event; gives it back with the object as now shared
    /// by the cache (nothing is copied).
    pub fn apply(&self, event: watcher::Event<K>) -> watcher::Event<Arc<K>> {
        let mut objects = self.objects.write().unwrap_or_else(PoisonError::into_inner);
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        match event {
            watcher::Event::Apply(o) => {
                let (ns, name) = key(&o);
                let o = Arc::new(o);
                objects.live.entry(ns).or_default().insert(name, o.clone());
                // A watch resumed after an error (no relist) replays what
                // it missed, in order, from here on.
                self.current
                    .store(true, std::sync::atomic::Ordering::Release);
                watcher::Event::Apply(o)
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = key(&o);
                if let Some(by_name) = objects.live.get_mut(&ns) {
                    by_name.remove(&name);
                    if by_name.is_empty() {
                        objects.live.remove(&ns);
                    }
                }
                self.current
                    .store(true, std::sync::atomic::Ordering::Release);
                watcher::Event::Delete(Arc::new(o))
            }
            watcher::Event::Init => {
                objects.relisting = Some(HashMap::new());
                watcher::Event::Init
            }
            watcher::Event::InitApply(o) => {
                let (ns, name) = key(&o);
                let o = Arc::new(o);
                objects
                    .relisting
                    .get_or_insert_with(HashMap::new)
                    .entry(ns)
                    .or_default()
                    .insert(name, o.clone());
                watcher::Event::InitApply(o)
            }
            watcher::Event::InitDone => {
                if let Some(listed) = objects.relisting.take() {
                    objects.live = listed;
                }
                self.current
                    .store(true, std::sync::atomic::Ordering::Release);
                watcher::Event::InitDone
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some(ns.into());
        c.metadata.name = Some(name.into());
        c
    }

    /// A cache, fed as `spawn_into` feeds it.
    fn indexed() -> (Indexed<ConfigMap>, impl FnMut(watcher::Event<ConfigMap>)) {
        let index = Indexed::new(());
        let feed = {
            let index = index.clone();
            move |e: watcher::Event<ConfigMap>| {
                index.apply(e);
            }
        };
        (index, feed)
    }

    fn names(objects: Vec<Arc<ConfigMap>>) -> Vec<String> {
        objects.iter().map(|o| o.name_any()).collect()
    }

    #[test]
    fn a_namespace_gives_its_own_objects_by_name() {
        let (index, mut feed) = indexed();
        for (ns, name) in [("a", "z"), ("b", "x"), ("a", "m"), ("a", "b")] {
            feed(watcher::Event::Apply(cm(ns, name)));
        }
        assert_eq!(names(index.in_namespace("a")), ["b", "m", "z"]);
        assert_eq!(names(index.in_namespace("b")), ["x"]);
        assert!(index.in_namespace("c").is_empty());
        feed(watcher::Event::Delete(cm("a", "m")));
        assert_eq!(names(index.in_namespace("a")), ["b", "z"]);
        feed(watcher::Event::Delete(cm("b", "x")));
        assert!(index.in_namespace("b").is_empty());
        assert!(
            !index.objects.read().unwrap().live.contains_key("b"),
            "an emptied namespace leaves no entry"
        );
    }

    #[test]
    fn an_object_is_found_by_namespace_and_name_and_replaced_by_its_change() {
        let (index, mut feed) = indexed();
        let mut changed = cm("a", "z");
        changed.data = Some([("k".to_string(), "v".to_string())].into());
        feed(watcher::Event::Apply(cm("a", "z")));
        feed(watcher::Event::Apply(changed.clone()));
        let mut cluster_wide = ConfigMap::default();
        cluster_wide.metadata.name = Some("z".into());
        feed(watcher::Event::Apply(cluster_wide.clone()));
        assert_eq!(
            index.get(&ObjectRef::new("z").within("a")).as_deref(),
            Some(&changed)
        );
        assert_eq!(
            index.get(&ObjectRef::new("z")).as_deref(),
            Some(&cluster_wide)
        );
        assert_eq!(index.get(&ObjectRef::new("z").within("b")), None);
        assert_eq!(index.get(&ObjectRef::new("y").within("a")), None);
        assert_eq!(index.state().len(), 2);
    }

    #[test]
    fn only_a_whole_cache_that_has_listed_since_it_broke_is_whole() {
        let (index, mut feed) = indexed();
        let index = index.holding_all(true);
        assert_ne!(index.coverage(), Coverage::Whole, "not listed yet");
        feed(watcher::Event::Init);
        feed(watcher::Event::InitDone);
        assert_eq!(index.coverage(), Coverage::Whole);
        index.broken();
        assert_ne!(
            index.coverage(),
            Coverage::Whole,
            "a broken watch misses changes"
        );
        feed(watcher::Event::Init);
        feed(watcher::Event::InitDone);
        assert_eq!(index.coverage(), Coverage::Whole);
        index.broken();
        feed(watcher::Event::Apply(cm("a", "x")));
        assert_eq!(
            index.coverage(),
            Coverage::Whole,
            "a watch resumed without a relist"
        );
        let (selected, mut feed) = indexed();
        feed(watcher::Event::InitDone);
        assert_ne!(
            selected.coverage(),
            Coverage::Whole,
            "a label-selected cache never does"
        );
        assert_eq!(selected.coverage(), Coverage::Selected);
        index.broken();
        assert_eq!(index.coverage(), Coverage::Lagging);
    }

    #[test]
    fn a_relist_replaces_the_index_when_done() {
        let (index, mut feed) = indexed();
        feed(watcher::Event::Apply(cm("a", "gone")));
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(cm("a", "kept")));
        assert_eq!(
            names(index.in_namespace("a")),
            ["gone"],
            "the old list stays until the relist is done"
        );
        feed(watcher::Event::InitDone);
        assert_eq!(names(index.in_namespace("a")), ["kept"]);
        assert_eq!(names(index.state()), ["kept"]);
    }
}
