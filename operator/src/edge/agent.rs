//! `iotposture node-agent`: reads its node's host root every interval and
//! keeps that node's `NodePosture` equal to what it read. The object has no
//! timestamps, so a node that does not change costs one GET per interval and
//! no write. `/readyz` fails when the last round did not get through, which
//! is how the operator tells a live report from a stale one.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tracing::{info, warn};

use super::{Host, scan};
use crate::api::nodeposture::{NodePosture, NodePostureSpec, Reporter};

pub const FIELD_MANAGER: &str = "iotposture-node-agent";

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub host_root: PathBuf,
    pub node: String,
    pub namespace: String,
    pub reporter: Reporter,
    pub interval: Duration,
    pub http_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading NodePosture {name}: {source}")]
    Get { name: String, source: kube::Error },
    #[error("writing NodePosture {name}: {source}")]
    Apply { name: String, source: kube::Error },
    #[error("reading the host root: {0}")]
    Scan(String),
}

/// The object for this node as the agent would write it.
pub fn desired(opts: &AgentOptions, facts: crate::api::nodeposture::NodeFacts) -> NodePosture {
    let mut np = NodePosture::new(
        &opts.node,
        NodePostureSpec {
            node: opts.node.clone(),
            reporter: opts.reporter.clone(),
            facts,
        },
    );
    np.metadata.namespace = Some(opts.namespace.clone());
    np.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        )]
        .into(),
    );
    np
}

/// One round: scan, and write only when the stored facts differ.
/// Returns whether it wrote.
pub async fn publish_once(api: &Api<NodePosture>, opts: &AgentOptions) -> Result<bool, AgentError> {
    let root = opts.host_root.clone();
    let facts = tokio::task::spawn_blocking(move || scan(&Host::new(root)))
        .await
        .map_err(|e| AgentError::Scan(e.to_string()))?;
    let want = desired(opts, facts);
    let current = api
        .get_opt(&opts.node)
        .await
        .map_err(|source| AgentError::Get {
            name: opts.node.clone(),
            source,
        })?;
    if current.is_some_and(|c| c.spec == want.spec) {
        return Ok(false);
    }
    api.patch(
        &opts.node,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&want),
    )
    .await
    .map_err(|source| AgentError::Apply {
        name: opts.node.clone(),
        source,
    })?;
    Ok(true)
}

pub async fn run(client: Client, opts: AgentOptions) -> anyhow::Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(opts.http_addr).await?;
    let probe = ready.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = probe.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the last report did not get through",
                        )
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the probe endpoint stopped");
        }
    });
    let api: Api<NodePosture> = Api::namespaced(client, &opts.namespace);
    info!(node = %opts.node, root = %opts.host_root.display(), "node agent started");
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        match publish_once(&api, &opts).await {
            Ok(wrote) => {
                if wrote {
                    info!(node = %opts.node, "published the node's facts");
                }
                ready.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                warn!(error = %e, "could not publish the node's facts");
                ready.store(false, Ordering::Relaxed);
            }
        }
    }
}
