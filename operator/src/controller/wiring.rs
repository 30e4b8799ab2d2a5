//! Starting the operator, in the order that never acts on half-filled
//! caches: watches first; the webhook server right away, but answering
//! "not ready" (an error, so each webhook's failure policy decides) until
//! every cache has listed; then the probes and the reconciles.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, future};
use kube::{Client, runtime::Controller};
use tracing::{error, info};

use super::{Context, FIELD_MANAGER, access::AccessReview, backoff::Backoff, cache::Caches};
use crate::{
    health::{Health, WebhookState},
    metrics::Metrics,
};

/// Coalesces bursts of events, and lets every cache catch up with an event that
/// several watches see; counted from a system's first trigger, so later ones
/// never push its reconcile back (`triggers::coalesce`).
const COALESCE: Duration = Duration::from_millis(300);
/// Reconciles under way at once: bounded, so a burst of changes cannot run
/// the process out of memory or flood the API server.
const CONCURRENCY: u16 = 16;

/// What to watch, and whether to serve the admission webhooks.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Watch and manage only this namespace.
    pub namespace: Option<String>,
    pub admission: Option<crate::webhook::Options>,
    /// TLS probes of every TLS port; None: not probed (III-9, VI-3 stay Unknown).
    pub probes: Option<super::probing::ProbeOptions>,
    /// Bind `spec.access` subjects even though no admission webhook of this
    /// operator reviews who asked for them: only for clusters where nobody
    /// but cluster administrators may write IoTSystems.
    pub trust_unreviewed_access: bool,
    /// The operator's own pods (its probes) and Prometheus' (the gateway
    /// exporters' scrapes), let in by the NetworkPolicies it writes.
    pub operator_peers: super::validate::OperatorPeers,
    /// With several replicas: the Lease that picks the one that writes.
    pub leader_election: Option<super::leader::LeaderElection>,
    /// The decision record (item VII-2); None: no record is kept.
    pub record: Option<RecordOptions>,
    /// Prometheus and Alertmanager to ask about the alert rules (VIII-1, VIII-2).
    pub alerting: Option<super::alerting::AlertingOptions>,
    /// The log collector to run for systems with spec.logging (III-1);
    /// None: no logs are shipped.
    pub shipping: Option<super::shipping::ShippingOptions>,
    /// Where the node agents publish their NodePostures; None: edge nodes
    /// are not judged (IV-1…IV-4 and VI-1 say so).
    pub edge: Option<super::cache::EdgeOptions>,
}

/// Where the decision record's signing key comes from, and where its lines go.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// `namespace/name` of the key's Secret; None: a key of this process only.
    pub key_secret: Option<(String, String)>,
    /// A file to append the lines to instead of stdout.
    pub out: Option<std::path::PathBuf>,
}

/// The record the leader keeps, or None (logged) when its key is unusable.
async fn open_record(
    client: &Client,
    options: &RecordOptions,
) -> Option<Arc<super::record::DecisionRecord>> {
    use super::record::{DecisionRecord, KEY_NAME, load_or_create_key};
    let out: Box<dyn std::io::Write + Send> = match &options.out {
        None => Box::new(std::io::stdout()),
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                error!(error = %e, path = %path.display(), "cannot open the decision record's file; no record");
                return None;
            }
        },
    };
    let signer = match &options.key_secret {
        Some((namespace, name)) => match load_or_create_key(client, namespace, name).await {
            Ok(signer) => signer,
            Err(e) => {
                error!(error = %e, "no decision record: its key is unusable");
                return None;
            }
        },
        None => {
            let made = crate::record::Signer::generate_pkcs8()
                .and_then(|k| crate::record::Signer::from_pkcs8(KEY_NAME, &k));
            match made {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "no decision record: no key");
                    return None;
                }
            }
        }
    };
    info!(key = %signer.vkey(), "keeping the decision record");
    Some(Arc::new(DecisionRecord::new(signer, out)))
}

/// Runs the controller with the HTTP endpoints until SIGINT/SIGTERM. After
/// the signal it stays up, unready, for `shutdown_delay`, so the Services in
/// front of its webhooks stop sending it requests before it stops answering.
pub async fn run_with_http(
    client: Client,
    options: Options,
    http_addr: SocketAddr,
    shutdown_delay: Duration,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(http_addr).await?;
    info!(%http_addr, "serving /metrics, /healthz and /readyz");
    let http = tokio::spawn(crate::http::serve(
        listener,
        metrics.clone(),
        health.clone(),
    ));
    let stopping = {
        let health = health.clone();
        async move {
            shutdown_signal().await;
            health.set_terminating();
            info!(delay = ?shutdown_delay, "stopping; unready meanwhile");
            tokio::time::sleep(shutdown_delay).await;
        }
    };
    let result = run(client, options, metrics, health, stopping).await;
    http.abort();
    result
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Runs the operator until `shutdown` completes. With `namespace` it watches
/// and manages that namespace only. `health` tells when it is ready.
pub async fn run(
    client: Client,
    options: Options,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let probe_results = options
        .probes
        .as_ref()
        .map(|_| Arc::new(super::probing::ProbeResults::default()));
    // State kept per system goes with the system, whatever deletes it.
    let on_gone: super::cache::OnSystemGone = {
        let metrics = metrics.clone();
        let probes = probe_results.clone();
        Arc::new(move |namespace: &str, name: &str| {
            metrics.forget_system(namespace, name);
            if let Some(p) = &probes {
                p.forget(namespace, name);
            }
        })
    };
    let (caches, triggers) = Caches::start(
        client.clone(),
        options.namespace.clone(),
        health.clone(),
        metrics.clone(),
        on_gone,
        options.edge.clone(),
    )
    .await;

    let mut leadership =
        super::leader::Leadership::start(client.clone(), options.leader_election.clone()).await?;

    // The serving certificate and the registrar exist before anything is
    // served, so reconciles and the webhook task publish the same CA. A
    // shared certificate comes from its Secret, later.
    let admission = options.admission.clone().and_then(|admission| {
        let cert = match admission.shared_certificate {
            Some(_) => Ok(None),
            None => crate::webhook::certs::ServingCert::issue(
                &admission.hosts,
                std::time::SystemTime::now(),
            )
            .map(Some),
        };
        match cert {
            Ok(cert) => {
                let registrar = Arc::new(crate::webhook::Registrar::new(
                    client.clone(),
                    admission.registration.clone(),
                    cert.as_ref().map(|c| c.ca_pem.as_str()).unwrap_or_default(),
                ));
                Some((admission, cert, registrar))
            }
            Err(e) => {
                error!(error = %e, "cannot issue the webhook serving certificate; no webhooks");
                health.set_webhooks(WebhookState::Down);
                None
            }
        }
    });
    let registrar = admission.as_ref().map(|(_, _, r)| r.clone());
    let webhooks = admission.map(|(admission, cert, registrar)| {
        health.set_webhooks(WebhookState::Starting);
        let state = crate::webhook::WebhookState {
            systems: caches.systems.clone(),
            metrics: metrics.clone(),
            images: admission.images.clone(),
            ready: health.listed_receiver(),
            client: client.clone(),
            // Refusals reach the leader's record through Events.
            handovers: options.record.as_ref().map(|_| {
                Arc::new(crate::webhook::refusals::Handovers::start(
                    client.clone(),
                    std::env::var("POD_NAME").unwrap_or_else(|_| FIELD_MANAGER.into()),
                    metrics.clone(),
                ))
            }),
        };
        let health = health.clone();
        let systems_changed = caches.systems_changed.clone();
        let leading = leadership.receiver();
        tokio::spawn(async move {
            let run = crate::webhook::run(
                registrar,
                cert,
                admission,
                state,
                systems_changed,
                leading,
                health.clone(),
            );
            if let Err(e) = run.await {
                error!(error = %e, "the admission webhooks stopped");
            }
            health.set_webhooks(WebhookState::Down);
        })
    });

    let shutdown = shutdown.boxed().shared();
    tokio::select! {
        _ = async {
            health.wait_listed().await;
            info!("caches filled");
            leadership.acquired().await;
        } => info!("reconciling"),
        _ = shutdown.clone() => {
            if let Some(w) = webhooks { w.abort(); }
            leadership.release().await;
            return Ok(());
        }
    }
    // Losing the lease stops the reconciles as a signal would, then fails.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = {
        let leading = leadership.receiver();
        let lost = lost.clone();
        let leadership_lost = async move {
            super::leader::Leadership::lost(leading).await;
            lost.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        futures::future::select(shutdown, leadership_lost.boxed())
            .map(|_| ())
            .boxed()
            .shared()
    };

    // Probes run beside the reconciles and wake a system when its findings change.
    let (probe_tx, probe_rx) = tokio::sync::mpsc::unbounded_channel();
    let probe_task = options
        .probes
        .clone()
        .zip(probe_results.clone())
        .map(|(probe, results)| {
            tokio::spawn(super::probing::probe_loop(
                client.clone(),
                caches.clone(),
                probe,
                results,
                metrics.clone(),
                probe_tx,
            ))
        });
    // Sensor heartbeats: subscriptions follow the specs; silence wakes a system.
    let heartbeats = Arc::new(crate::heartbeat::Ledger::default());
    let (heard_tx, heard_rx) = tokio::sync::mpsc::unbounded_channel();
    let listen_task = tokio::spawn(super::listening::listen_loop(
        client.clone(),
        caches.clone(),
        options
            .probes
            .as_ref()
            .map(|p| p.resolve.clone())
            .unwrap_or_default(),
        heartbeats.clone(),
        heard_tx,
    ));
    let (alert_tx, alert_rx) = tokio::sync::mpsc::unbounded_channel();
    let alert_results = options
        .alerting
        .as_ref()
        .map(|_| Arc::new(super::alerting::AlertResults::default()));
    let alert_task = options
        .alerting
        .clone()
        .zip(alert_results.clone())
        .map(|(o, r)| {
            tokio::spawn(super::alerting::alerting_loop(
                caches.clone(),
                o,
                r,
                alert_tx,
            ))
        });
    let (ship_tx, ship_rx) = tokio::sync::mpsc::unbounded_channel();
    let shipping_results = options
        .shipping
        .as_ref()
        .map(|_| Arc::new(super::shipping::ShippingResults::default()));
    let shipping_task = options
        .shipping
        .clone()
        .zip(shipping_results.clone())
        .map(|(o, r)| {
            tokio::spawn(super::shipping::shipping_loop(
                client.clone(),
                caches.clone(),
                o,
                r,
                ship_tx,
            ))
        });
    let record = match &options.record {
        Some(r) => open_record(&client, r).await,
        None => None,
    };
    let access_review = if webhooks.is_some() {
        AccessReview::AtAdmission
    } else if options.trust_unreviewed_access {
        AccessReview::Trusted
    } else {
        AccessReview::Unavailable
    };
    let ctx = Arc::new(Context {
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client,
        caches: caches.clone(),
        metrics,
        clock: super::now,
        webhooks: registrar,
        probes: probe_results,
        heartbeats,
        record,
        alerting: alert_results,
        shipping: shipping_results,
        access_review,
        operator_peers: options.operator_peers.clone(),
        backoff: Backoff::default(),
    });

    // Every change in every cache, and every changed probe finding, names the
    // systems to look at again; the systems' own cache starts each of them once.
    let triggers = futures::stream::select(
        tokio_stream_of(triggers),
        futures::stream::select(
            tokio_stream_of(probe_rx),
            futures::stream::select(
                tokio_stream_of(heard_rx),
                futures::stream::select(tokio_stream_of(alert_rx), tokio_stream_of(ship_rx)),
            ),
        ),
    );
    let triggers = super::triggers::coalesce(Box::pin(triggers), COALESCE).map(|r| {
        kube::runtime::reflector::ObjectRef::<super::cache::Roster>::new(&r.name)
            .within(r.namespace.as_deref().unwrap_or_default())
    });
    Controller::for_stream(futures::stream::pending(), caches.roster.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(super::reconcile, super::error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                // Already counted and logged by error_policy when it came from reconcile.
                tracing::debug!(error = %e, "reconcile did not complete");
            }
            future::ready(())
        })
        .await;
    if let Some(w) = webhooks {
        w.abort();
    }
    if let Some(p) = probe_task {
        p.abort();
    }
    listen_task.abort();
    if let Some(a) = alert_task {
        a.abort();
    }
    if let Some(s) = shipping_task {
        s.abort();
    }
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("lost the leader lease");
    }
    leadership.release().await;
    Ok(())
}

fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}
