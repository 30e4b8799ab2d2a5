//! A watch cache with its objects' names by namespace.
//!
//! A reconcile reads one namespace, but a `Store` can only hand out every
//! object it holds: at 1,000 systems and 10,000 pods, copying whole stores
//! to filter them was most of the operator's time. The index holds names
//! only (the objects stay in the store, once), sorted, so a namespace's
//! objects come out in the same order in every process.

use std::{
    collections::{BTreeSet, HashMap},
    hash::Hash,
    ops::Deref,
    sync::{Arc, PoisonError, RwLock},
};

use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

/// Names only: an `ObjectRef` per object (name, namespace, uid and
/// resourceVersion again) took 26 MiB at 1,000 systems; lookups build one.
type ByNamespace = HashMap<String, BTreeSet<String>>;

struct Names {
    live: ByNamespace,
    /// Filled during a (re)list and swapped in when it is done, as the
    /// store does: a relist drops what was deleted meanwhile.
    relisting: Option<ByNamespace>,
}

/// A `Store` (reached through `Deref`) and its namespace index.
pub struct Indexed<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    dyntype: K::DynamicType,
    names: Arc<RwLock<Names>>,
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
            store: self.store.clone(),
            dyntype: self.dyntype.clone(),
            names: self.names.clone(),
            complete: self.complete,
            current: self.current.clone(),
        }
    }
}

impl<K> Deref for Indexed<K>
where
    K: Resource + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    type Target = Store<K>;

    fn deref(&self) -> &Store<K> {
        &self.store
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
    /// An index over `store`; `observe` must see every event the store's
    /// writer applies, after it applied it.
    pub fn new(store: Store<K>, dyntype: K::DynamicType) -> Self {
        Self {
            store,
            dyntype,
            names: Arc::new(RwLock::new(Names {
                live: HashMap::new(),
                relisting: None,
            })),
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
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        names
            .live
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let r = ObjectRef::new_with(name, self.dyntype.clone());
                self.store.get(&match namespace {
                    "" => r,
                    ns => r.within(ns),
                })
            })
            .collect()
    }

    /// A store holding `objects`, indexed, with no watch behind it (for what
    /// reads caches outside the controller: tests, benchmarks).
    pub fn of(objects: impl IntoIterator<Item = K>) -> Self
    where
        K::DynamicType: Default,
    {
        let mut writer = reflector::store::Writer::default();
        let index = Self::new(writer.as_reader(), Default::default());
        for o in objects {
            let event = watcher::Event::Apply(o);
            writer.apply_watcher_event(&event);
            index.observe(&event);
        }
        index.observe(&watcher::Event::InitDone);
        index
    }

    /// Keeps the index in step with a watch event.
    pub fn observe(&self, event: &watcher::Event<K>) {
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        match event {
            watcher::Event::Apply(o) => {
                let (ns, name) = key(o);
                names.live.entry(ns).or_default().insert(name);
                // A watch resumed after an error (no relist) replays what
                // it missed, in order, from here on.
                self.current
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                if let Some(by_name) = names.live.get_mut(&ns) {
                    by_name.remove(&name);
                    if by_name.is_empty() {
                        names.live.remove(&ns);
                    }
                }
                self.current
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            watcher::Event::Init => names.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let (ns, name) = key(o);
                names
                    .relisting
                    .get_or_insert_with(HashMap::new)
                    .entry(ns)
                    .or_default()
                    .insert(name);
            }
            watcher::Event::InitDone => {
                if let Some(listed) = names.relisting.take() {
                    names.live = listed;
                }
                self.current
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some(ns.into());
        c.metadata.name = Some(name.into());
        c
    }

    /// A store and its index, fed the same events as `spawn_into` feeds them.
    fn indexed() -> (Indexed<ConfigMap>, impl FnMut(watcher::Event<ConfigMap>)) {
        let (store, mut writer) = reflector::store();
        let index = Indexed::new(store, ());
        let feed = {
            let index = index.clone();
            move |e: watcher::Event<ConfigMap>| {
                writer.apply_watcher_event(&e);
                index.observe(&e);
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
            !index.names.read().unwrap().live.contains_key("b"),
            "an emptied namespace leaves no entry"
        );
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
            "the store too keeps the old list until the relist is done"
        );
        feed(watcher::Event::InitDone);
        assert_eq!(names(index.in_namespace("a")), ["kept"]);
    }
}
