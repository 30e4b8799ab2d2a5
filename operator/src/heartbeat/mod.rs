//! Sensor heartbeats (checklist item VII-1): which devices were heard, when,
//! and which are silent. Most sensors are devices outside the cluster that
//! publish to the system's MQTT broker; the operator subscribes there
//! (`mqtt`) and keeps the last time it heard each device in a `Ledger`.
//! Everything here but `mqtt` is pure and judged with an explicit `now`.

pub mod mqtt;

use std::{
    collections::{BTreeMap, HashMap},
    sync::RwLock,
    time::{Duration, SystemTime},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("{0:?} must have exactly one '+' level, which names the device (e.g. plant/+/status)")]
    DeviceLevel(String),
    #[error("{0:?} may not contain '#', an empty level or a wildcard inside a level")]
    Malformed(String),
}

/// The index of the one `+` level of a topic filter: the device's name.
pub fn device_level(filter: &str) -> Result<usize, TopicError> {
    let levels: Vec<&str> = filter.split('/').collect();
    let malformed = levels
        .iter()
        .any(|l| l.is_empty() || l.contains('#') || (l.contains('+') && *l != "+"));
    if malformed {
        return Err(TopicError::Malformed(filter.to_string()));
    }
    let mut pluses = levels.iter().enumerate().filter(|(_, l)| **l == "+");
    match (pluses.next(), pluses.next()) {
        (Some((i, _)), None) => Ok(i),
        _ => Err(TopicError::DeviceLevel(filter.to_string())),
    }
}

/// The device a message on `topic` comes from, when the topic matches the
/// filter (the broker only sends matching ones, but a topic is input).
pub fn device_of<'t>(filter: &str, topic: &'t str) -> Option<&'t str> {
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&'t str> = topic.split('/').collect();
    if filter.len() != topic.len() {
        return None;
    }
    let mut device = None;
    for (f, t) in filter.iter().zip(&topic) {
        match *f {
            "+" if !t.is_empty() => device = Some(*t),
            _ if f == t => {}
            _ => return None,
        }
    }
    device
}

/// Whether the operator is subscribed to a component's broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listening {
    /// Subscribed since then.
    Since(SystemTime),
    /// Not (or no longer) subscribed, and why.
    Not(String),
}

/// What the operator heard for one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heard {
    pub listening: Listening,
    /// The broker and topic, for evidence.
    pub source: String,
    pub last_seen: BTreeMap<String, SystemTime>,
}

/// One device as judged at some instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    pub device: String,
    pub silent: bool,
    pub last_seen: Option<SystemTime>,
}

/// Every device declared or heard, silent ones first, then by name. A
/// declared device never heard is silent; one not declared and silent for
/// longer than `forget_after` is left out (a replaced pod, a retired device).
pub fn judge(
    declared: &[String],
    last_seen: &BTreeMap<String, SystemTime>,
    max_silence: Duration,
    forget_after: Duration,
    now: SystemTime,
) -> Vec<DeviceState> {
    let forgotten = |device: &String| {
        !declared.contains(device)
            && last_seen
                .get(device)
                .is_some_and(|at| now.duration_since(*at).unwrap_or_default() > forget_after)
    };
    let mut names: Vec<&String> = declared
        .iter()
        .chain(last_seen.keys().filter(|d| !forgotten(d)))
        .collect();
    names.sort();
    names.dedup();
    let mut states: Vec<DeviceState> = names
        .into_iter()
        .map(|device| {
            let seen = last_seen.get(device).copied();
            let silent = match seen {
                // A clock step backwards makes the age negative: heard.
                Some(at) => now.duration_since(at).unwrap_or_default() > max_silence,
                None => true,
            };
            DeviceState {
                device: device.clone(),
                silent,
                last_seen: seen,
            }
        })
        .collect();
    states.sort_by(|a, b| {
        b.silent
            .cmp(&a.silent)
            .then_with(|| a.device.cmp(&b.device))
    });
    states
}

/// One component's devices as judged for a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub listening: Listening,
    pub source: String,
    pub max_silence: Duration,
    pub now: SystemTime,
    pub devices: Vec<DeviceState>,
}

/// The judged devices of every listened component of a system, by component.
pub fn judge_system(
    ledger: &Ledger,
    system: &crate::controller::validate::ValidatedSystem,
    now: SystemTime,
) -> BTreeMap<String, Judged> {
    let heard = ledger.of_system(&system.namespace, &system.name);
    system
        .components
        .iter()
        .filter_map(|c| {
            let heartbeat = c.heartbeat.as_ref()?;
            heartbeat.mqtt.as_ref()?;
            let h = heard.get(&c.name)?;
            Some((
                c.name.clone(),
                Judged {
                    listening: h.listening.clone(),
                    source: h.source.clone(),
                    max_silence: heartbeat.max_silence,
                    now,
                    devices: judge(
                        &heartbeat.devices,
                        &h.last_seen,
                        heartbeat.max_silence,
                        heartbeat.forget_after,
                        now,
                    ),
                },
            ))
        })
        .collect()
}

/// (namespace, system, component)
pub type Key = (String, String, String);

/// Devices cap per component: a misbehaving publisher inventing device names
/// cannot grow the operator's memory without bound.
pub const MAX_DEVICES: usize = 10_000;

/// Last-seen times of every listened component, shared between the MQTT
/// listeners (writers) and the reconciler (reader).
#[derive(Default)]
pub struct Ledger(RwLock<HashMap<Key, Heard>>);

impl Ledger {
    pub fn get(&self, key: &Key) -> Option<Heard> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Every component of one system that is listened to.
    pub fn of_system(&self, namespace: &str, system: &str) -> BTreeMap<String, Heard> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((ns, s, _), _)| ns == namespace && s == system)
            .map(|((_, _, c), h)| (c.clone(), h.clone()))
            .collect()
    }

    pub fn keys(&self) -> Vec<Key> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Starts (or restarts) listening for a component: what was heard stays.
    pub fn open(&self, key: &Key, source: String) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(key.clone()).or_insert_with(|| Heard {
            listening: Listening::Not("connecting".into()),
            source: source.clone(),
            last_seen: BTreeMap::new(),
        });
        entry.source = source;
    }

    pub fn set_listening(&self, key: &Key, listening: Listening) {
        if let Some(h) = self
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
        {
            h.listening = listening;
        }
    }

    /// Records a heartbeat; false when the device was refused (cap reached).
    pub fn heard(&self, key: &Key, device: &str, at: SystemTime) -> bool {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let Some(h) = map.get_mut(key) else {
            return false;
        };
        if h.last_seen.len() >= MAX_DEVICES && !h.last_seen.contains_key(device) {
            return false;
        }
        h.last_seen.insert(device.to_string(), at);
        true
    }

    /// Drops the devices `keep` refuses (forgotten ones), freeing their room.
    pub fn prune(&self, key: &Key, keep: impl Fn(&str, SystemTime) -> bool) {
        if let Some(h) = self
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
        {
            h.last_seen.retain(|device, at| keep(device, *at));
        }
    }

    pub fn forget(&self, key: &Key) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plus_level_names_the_device() {
        assert_eq!(device_level("plant/+/status"), Ok(1));
        assert_eq!(device_level("+"), Ok(0));
        for bad in [
            "plant/status",
            "plant/+/+",
            "plant/#",
            "plant//+",
            "plant/a+/x",
            "",
        ] {
            assert!(device_level(bad).is_err(), "{bad}");
        }
        assert_eq!(
            device_of("plant/+/status", "plant/press-1/status"),
            Some("press-1")
        );
        assert_eq!(device_of("plant/+/status", "plant/press-1/other"), None);
        assert_eq!(device_of("plant/+/status", "plant/a/b/status"), None);
        assert_eq!(device_of("plant/+/status", "plant//status"), None);
        assert_eq!(device_of("plant/+", "other/x"), None);
    }

    #[test]
    fn silent_devices_come_first_and_declared_ones_never_heard_are_silent() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let seen = BTreeMap::from([
            ("a".to_string(), t0 - Duration::from_secs(10)),
            ("b".to_string(), t0 - Duration::from_secs(61)),
            ("c".to_string(), t0 - Duration::from_secs(60)),
        ]);
        let hour = Duration::from_secs(3600);
        let states = judge(
            &["z".into(), "a".into()],
            &seen,
            Duration::from_secs(60),
            hour,
            t0,
        );
        let names: Vec<(&str, bool)> = states
            .iter()
            .map(|s| (s.device.as_str(), s.silent))
            .collect();
        assert_eq!(
            names,
            [("b", true), ("z", true), ("a", false), ("c", false)]
        );
        assert_eq!(states[1].last_seen, None);
        // Undeclared and silent past forgetting: gone; declared: never.
        let states = judge(
            &["a".into()],
            &seen,
            Duration::from_secs(30),
            Duration::from_secs(60),
            t0,
        );
        let names: Vec<&str> = states.iter().map(|s| s.device.as_str()).collect();
        assert_eq!(names, ["c", "a"], "b (61s) is forgotten, c (60s) not yet");
        let states = judge(
            &[],
            &seen,
            Duration::from_secs(1),
            Duration::from_secs(1),
            t0,
        );
        assert!(states.is_empty(), "{states:?}");
    }

    #[test]
    fn the_ledger_caps_devices_and_keeps_what_was_heard_across_reconnects() {
        let ledger = Ledger::default();
        let key: Key = ("ns".into(), "sys".into(), "sensor".into());
        let t = SystemTime::UNIX_EPOCH;
        assert!(!ledger.heard(&key, "x", t), "not listening yet");
        ledger.open(&key, "broker".into());
        for i in 0..MAX_DEVICES {
            assert!(ledger.heard(&key, &format!("d{i}"), t));
        }
        assert!(!ledger.heard(&key, "one-too-many", t));
        assert!(
            ledger.heard(&key, "d0", t),
            "a known device is still recorded"
        );
        ledger.open(&key, "broker again".into());
        assert_eq!(ledger.get(&key).unwrap().last_seen.len(), MAX_DEVICES);
        assert_eq!(ledger.of_system("ns", "sys").len(), 1);
        assert!(ledger.of_system("ns", "other").is_empty());
        ledger.forget(&key);
        assert!(ledger.get(&key).is_none());
    }
}
