//! Keeps one MQTT subscription running per sensor component that declares
//! `heartbeat.mqtt`, and wakes a system when one of its devices falls silent
//! or is heard again (checklist item VII-1). Like the probes, the broker is
//! dialled at the address the API shows (`probing::dial`) and verified
//! against its port's CA; a credentials Secret is read only when it carries
//! the label that lets the operator use it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use kube::{Client, ResourceExt, runtime::reflector::ObjectRef};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    cache::Caches,
    probing::{Dial, dial, issuer_ca, service_name},
    secrets,
    validate::{Neighbourhood, ValidComponent, ValidatedSystem, validate},
};
use crate::{
    api::IoTSystem,
    build::certificate::certificate_name,
    heartbeat::{
        Key, Ledger, Listening, judge,
        mqtt::{Subscription, listen},
    },
};

/// How often silence is looked for; a device falls silent at most this late.
const SWEEP: Duration = Duration::from_secs(2);
/// How often subscriptions are compared with the specs and Secrets.
const RESOLVE: Duration = Duration::from_secs(10);

struct Running {
    sub: Subscription,
    task: JoinHandle<()>,
}

/// What a subscription depends on, from the caches alone: the address,
/// and the resourceVersions of the Secrets it reads. Unchanged, the
/// Secrets are not read again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    addr: Option<SocketAddr>,
    ca_version: Option<String>,
    credentials_version: Option<String>,
    topic: String,
}

/// How long a subscription that could not be made waits before the
/// Secrets are read again, when nothing they depend on changed.
const RETRY: Duration = Duration::from_secs(60);

fn fingerprint(
    caches: &Caches,
    resolve: &HashMap<String, SocketAddr>,
    system: &ValidatedSystem,
    sensor: &ValidComponent,
) -> Option<Fingerprint> {
    let mqtt = sensor.heartbeat.as_ref()?.mqtt.as_ref()?;
    let broker = system.components.iter().find(|c| c.name == mqtt.broker)?;
    let port = broker.ports.iter().find(|p| p.name == mqtt.port)?;
    let version = |name: &str| {
        caches
            .secrets
            .get(&ObjectRef::new(name).within(&system.namespace))
            .and_then(|s| s.resource_version())
    };
    Some(Fingerprint {
        addr: match dial(caches, resolve, system, broker, port) {
            Dial::To(addr) => Some(addr),
            _ => None,
        },
        ca_version: version(&certificate_name(system, broker, &port.name)),
        credentials_version: mqtt.credentials_secret.as_deref().and_then(version),
        topic: mqtt.topic.clone(),
    })
}

/// A component's subscription as the spec and the API describe it now, or
/// why there is none.
async fn desired(
    client: &Client,
    caches: &Caches,
    resolve: &HashMap<String, SocketAddr>,
    system: &ValidatedSystem,
    sensor: &ValidComponent,
    uid: &str,
) -> Result<Subscription, String> {
    let Some(mqtt) = sensor.heartbeat.as_ref().and_then(|h| h.mqtt.as_ref()) else {
        return Err("no heartbeat.mqtt".into());
    };
    let broker = system
        .components
        .iter()
        .find(|c| c.name == mqtt.broker)
        .ok_or("the broker component is gone")?;
    let port = broker
        .ports
        .iter()
        .find(|p| p.name == mqtt.port)
        .ok_or("the broker port is gone")?;
    let addr = match dial(caches, resolve, system, broker, port) {
        Dial::To(addr) => addr,
        Dial::Fault(why) | Dial::Refused(why) => return Err(why),
    };
    let (server_name, _) = service_name(system, broker, port);
    let secret = certificate_name(system, broker, &port.name);
    let ca = issuer_ca(client, system, &secret).await;
    if ca.is_empty() {
        return Err(format!(
            "no ca.crt in Secret {secret} (the broker port's certificate): heartbeats are read only over TLS verified against it"
        ));
    }
    let credentials = match &mqtt.credentials_secret {
        Some(name) => Some(credentials(client, caches, &system.namespace, name).await?),
        None => None,
    };
    Ok(Subscription {
        addr,
        server_name,
        ca,
        topic: mqtt.topic.clone(),
        credentials,
        // Unique per system and component, so two replicas' brief overlap
        // or two systems on one broker never take each other's session.
        client_id: format!("iotposture-{}-{}", &uid[..uid.len().min(8)], sensor.name),
    })
}

async fn credentials(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    name: &str,
) -> Result<(String, String), String> {
    let field = format!("heartbeat.mqtt.credentialsSecret {name}");
    let data = secrets::read(client, caches, namespace, name, &field).await?;
    secrets::username_password(&data, &field)
}

/// What a reconcile shows of a component: which devices are silent, and
/// whether the operator listens. Compared between sweeps to wake systems.
type Shown = (Vec<(String, bool)>, bool);

fn shown(ledger: &Ledger, key: &Key, system: &ValidatedSystem, now: SystemTime) -> Option<Shown> {
    let heard = ledger.get(key)?;
    let heartbeat = system
        .components
        .iter()
        .find(|c| c.name == key.2)?
        .heartbeat
        .as_ref()?;
    let states = judge(
        &heartbeat.devices,
        &heard.last_seen,
        heartbeat.max_silence,
        heartbeat.forget_after,
        now,
    );
    Some((
        states.into_iter().map(|s| (s.device, s.silent)).collect(),
        matches!(heard.listening, Listening::Since(_)),
    ))
}

/// Runs until aborted: subscriptions follow the specs; silence and
/// recovery wake the system's reconcile.
pub async fn listen_loop(
    client: Client,
    caches: Caches,
    resolve: HashMap<String, SocketAddr>,
    ledger: Arc<Ledger>,
    changed: mpsc::UnboundedSender<ObjectRef<IoTSystem>>,
) {
    let mut running: HashMap<Key, Running> = HashMap::new();
    // What each subscription was last made (or tried) from, and when.
    let mut made_from: HashMap<Key, (Option<Fingerprint>, tokio::time::Instant)> = HashMap::new();
    let mut last_shown: HashMap<Key, Shown> = HashMap::new();
    let mut last_resolve: Option<tokio::time::Instant> = None;
    loop {
        let systems = caches.systems.state();
        let alone = Neighbourhood {
            pods: &[],
            systems: &[],
        };
        // Only systems with a sensor to listen to are validated: at 1,000
        // systems the validated copies of all were 9 MB, held through the sleep.
        let valid: Vec<(Arc<IoTSystem>, ValidatedSystem)> = systems
            .iter()
            .filter(|s| {
                s.spec
                    .components
                    .iter()
                    .any(|c| c.heartbeat.as_ref().is_some_and(|h| h.mqtt.is_some()))
            })
            .filter_map(|s| Some((s.clone(), validate(s, &alone).ok()?)))
            .collect();
        drop(systems);
        let wanted: HashMap<Key, (&Arc<IoTSystem>, &ValidatedSystem, &ValidComponent)> = valid
            .iter()
            .flat_map(|(obj, v)| {
                v.components
                    .iter()
                    .filter(|c| c.heartbeat.as_ref().is_some_and(|h| h.mqtt.is_some()))
                    .map(move |c| {
                        (
                            (v.namespace.clone(), v.name.clone(), c.name.clone()),
                            (obj, v, c),
                        )
                    })
            })
            .collect();
        // Components no longer listened to: stop, forget, and let the
        // system (if still there) show it.
        running.retain(|key, r| {
            let keep = wanted.contains_key(key);
            if !keep {
                r.task.abort();
            }
            keep
        });
        made_from.retain(|key, _| wanted.contains_key(key));
        for key in ledger.keys() {
            if !wanted.contains_key(&key) {
                ledger.forget(&key);
                last_shown.remove(&key);
            }
        }
        if last_resolve.is_none_or(|t| t.elapsed() >= RESOLVE) {
            last_resolve = Some(tokio::time::Instant::now());
            for (key, (obj, system, sensor)) in &wanted {
                let print = fingerprint(&caches, &resolve, system, sensor);
                let unchanged = made_from.get(key).is_some_and(|(p, at)| {
                    *p == print && (running.contains_key(key) || at.elapsed() < RETRY)
                });
                if unchanged {
                    continue;
                }
                made_from.insert(key.clone(), (print, tokio::time::Instant::now()));
                let uid = obj.uid().unwrap_or_default();
                match desired(&client, &caches, &resolve, system, sensor, &uid).await {
                    Ok(sub) => {
                        if running.get(key).is_some_and(|r| r.sub == sub) {
                            continue;
                        }
                        if let Some(old) = running.remove(key) {
                            old.task.abort();
                        }
                        let task = tokio::spawn(listen(key.clone(), sub.clone(), ledger.clone()));
                        running.insert(key.clone(), Running { sub, task });
                    }
                    Err(why) => {
                        if let Some(old) = running.remove(key) {
                            old.task.abort();
                        }
                        ledger.open(key, format!("broker of component {}", sensor.name));
                        ledger.set_listening(key, Listening::Not(why));
                    }
                }
            }
        }
        let now = SystemTime::now();
        for (key, (_, _, sensor)) in &wanted {
            if let Some(h) = &sensor.heartbeat {
                ledger.prune(key, |device, at| {
                    h.devices.iter().any(|d| d == device)
                        || now.duration_since(at).unwrap_or_default() <= h.forget_after
                });
            }
        }
        for (key, (obj, system, _)) in &wanted {
            let Some(now_shown) = shown(&ledger, key, system, now) else {
                continue;
            };
            if last_shown.get(key) != Some(&now_shown) {
                last_shown.insert(key.clone(), now_shown);
                let _ = changed.send(ObjectRef::from_obj(obj.as_ref()));
            }
        }
        drop(wanted);
        drop(valid);
        tokio::time::sleep(SWEEP).await;
    }
}
