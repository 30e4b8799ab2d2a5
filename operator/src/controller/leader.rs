//! Leader election on a coordination.k8s.io Lease. Every replica fills its
//! caches and serves the admission webhooks; only the lease holder
//! reconciles, probes and writes the webhook configurations and their
//! certificate. A replica that loses the lease exits at once, so two
//! processes never write at the same time; it comes back as a follower.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace and name of the Lease (the chart: the release's namespace,
    /// `<release>-leader`).
    pub namespace: String,
    pub lease: String,
    /// This replica, as the Lease's holder (the pod name).
    pub identity: String,
    /// How long a holder that stopped renewing keeps the lease.
    pub duration: Duration,
    /// How long before expiry the holder renews.
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election on Lease {namespace}/{lease}: {source}")]
    Lease {
        namespace: String,
        lease: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// Whether this process leads now; always true without an election.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// Without an election: keeps `leading` open and true.
    _always: Option<watch::Sender<bool>>,
    /// With one: the task renewing the lease, which releases it when
    /// `leading` is dropped.
    task: Option<
        tokio::task::JoinHandle<
            Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
        >,
    >,
}

impl Leadership {
    pub async fn start(client: Client, election: Option<LeaderElection>) -> Result<Self, Error> {
        let Some(e) = election else {
            let (tx, rx) = watch::channel(true);
            return Ok(Self {
                leading: rx,
                _always: Some(tx),
                task: None,
            });
        };
        let wrap = |source| Error::Lease {
            namespace: e.namespace.clone(),
            lease: e.lease.clone(),
            source,
        };
        let manager = LeaseManagerBuilder::new(client, &e.lease)
            .with_namespace(&e.namespace)
            .with_identity(&e.identity)
            .with_duration(e.duration.as_secs().max(2))
            .with_grace(e.grace.as_secs().max(1))
            // The chart makes the Lease; a missing one is made here (when
            // permitted), e.g. for a replica run outside the chart.
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
            .await
            .map_err(wrap)?;
        let (leading, task) = manager.watch().await;
        info!(lease = %e.lease, identity = %e.identity, "taking part in leader election");
        Ok(Self {
            leading,
            _always: None,
            task: Some(task),
        })
    }

    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Completes once this process leads.
    pub async fn acquired(&mut self) {
        if self.leading.wait_for(|l| *l).await.is_ok() {
            info!("leading: reconciling, probing and keeping the webhook configurations");
        }
    }

    /// Completes if this process stops leading; it then must stop writing.
    pub async fn lost(mut leading: watch::Receiver<bool>) {
        let _ = leading.wait_for(|l| !*l).await;
        error!("lost the leader lease; exiting so that only the new leader writes");
    }

    /// Gives the lease up, so a successor need not wait for it to expire.
    pub async fn release(self) {
        let Self { leading, task, .. } = self;
        drop(leading);
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
