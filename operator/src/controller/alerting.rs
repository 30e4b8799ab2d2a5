//! Whether each system's alerts can reach someone (items VIII-1, VIII-2):
//! asks Prometheus which of the system's rules are loaded and healthy
//! (`/api/v1/rules`) and Alertmanager where an alert with the system's
//! labels is routed (`/api/v2/status`, the running configuration). Apart
//! from reconciles, like the probes: the answers land in a shared map, and
//! a system whose findings changed is reconciled again.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use super::{
    cache::Caches,
    validate::{Neighbourhood, validate},
};
use crate::{
    alerts::{Loaded, RoutingTree, alert_label_sets, expected_alerts, loaded, original_config},
    api::IoTSystem,
    build::alert_rules::wants,
};

/// Where Prometheus and Alertmanager answer (plain HTTP, in-cluster).
#[derive(Clone, Debug)]
pub struct AlertingOptions {
    /// e.g. `http://prometheus.monitoring.svc:9090`.
    pub prometheus: String,
    /// e.g. `http://alertmanager.monitoring.svc:9093`.
    pub alertmanager: Option<String>,
    pub interval: Duration,
}

/// Where one alert of a system goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub alert: String,
    /// Receivers with at least one integration, with their kinds.
    pub delivering: Vec<String>,
    /// Receivers the alert reaches that notify nobody.
    pub silent: Vec<String>,
}

/// What was found for one system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertFindings {
    /// The system's alerts and their items, as its spec wants them.
    pub expected: Vec<(String, String)>,
    pub rules: Result<Loaded, String>,
    /// None without --alertmanager-url.
    pub routes: Option<Result<Vec<Route>, String>>,
}

pub type AlertResults = super::findings::PerSystem<AlertFindings>;

/// One GET over plain HTTP; the body when the status is 200.
pub(super) async fn get(base: &str, path: &str) -> Result<String, String> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base}: only http:// URLs are supported"))?;
    let (authority, prefix) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let request = Request::get(format!("{prefix}{path}"))
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await;
        let result = async {
            let response = response.map_err(|e| format!("no HTTP answer: {e}"))?;
            let status = response.status();
            // Rule lists of large installations run to megabytes; more is not an answer.
            let body = Limited::new(response.into_body(), 16 << 20)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            if status != hyper::StatusCode::OK {
                return Err(format!("{path} answered {status}"));
            }
            Ok(text)
        }
        .await;
        driver.abort();
        result
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{base}{path}: no answer within 10s"))?
}

/// Asks both, for every valid system, every `interval`, forever.
pub async fn alerting_loop(
    caches: Caches,
    options: AlertingOptions,
    results: Arc<AlertResults>,
    changed: mpsc::UnboundedSender<ObjectRef<IoTSystem>>,
) {
    loop {
        let rules = get(&options.prometheus, "/api/v1/rules").await;
        let config = match &options.alertmanager {
            None => None,
            Some(url) => Some(
                get(url, "/api/v2/status")
                    .await
                    .and_then(|body| original_config(&body).map_err(|e| e.to_string()))
                    .and_then(|yaml| RoutingTree::parse(&yaml).map_err(|e| e.to_string())),
            ),
        };
        let alone = Neighbourhood {
            pods: &[],
            systems: &[],
        };
        let systems = caches.systems.state();
        results.retain(|(ns, name)| caches.holds_system(ns, name, None));
        for object in systems {
            let Ok(system) = validate(&object, &alone) else {
                continue;
            };
            let w = wants(&system);
            let expected_names = expected_alerts(&w);
            let items: BTreeMap<&str, &str> = crate::alerts::ALERTS.iter().copied().collect();
            let expected = expected_names
                .iter()
                .map(|a| {
                    (
                        a.to_string(),
                        items.get(a).copied().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let loaded_rules = rules.clone().and_then(|body| {
                loaded(&body, &expected_names, &system.namespace, &system.name)
                    .map_err(|e| e.to_string())
            });
            let routes = config.as_ref().map(|tree| {
                tree.as_ref().map_err(Clone::clone).map(|tree| {
                    alert_label_sets(&system.namespace, &system.name, &w)
                        .into_iter()
                        .map(|(alert, labels)| {
                            let (delivering, silent): (Vec<_>, Vec<_>) = tree
                                .routes_for(&labels)
                                .into_iter()
                                .partition(|d| d.delivers());
                            let name = |d: &crate::alerts::Delivery| {
                                if d.integrations.is_empty() {
                                    d.receiver.clone()
                                } else {
                                    format!("{} ({})", d.receiver, d.integrations.join(", "))
                                }
                            };
                            Route {
                                alert,
                                delivering: delivering.iter().map(name).collect(),
                                silent: silent.iter().map(name).collect(),
                            }
                        })
                        .collect()
                })
            });
            let findings = AlertFindings {
                expected,
                rules: loaded_rules,
                routes,
            };
            if results.put((system.namespace.clone(), system.name.clone()), findings) {
                let _ = changed.send(ObjectRef::from_obj(object.as_ref()));
            }
        }
        tokio::time::sleep(options.interval).await;
    }
}
