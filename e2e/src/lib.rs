//! Support for tests that need a real control plane: the plane itself
//! (`controlplane`), a client for it, a fresh namespace per test, the operator
//! running in-process for that namespace, and the API server's audit log.

pub mod controlplane;

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Namespace, ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;
use tokio::sync::{OnceCell, oneshot};

use iotposture::metrics::Metrics;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The state folder of the plane the tests use: `IOTPOSTURE_TESTPLANE` or
/// `target/testplane`.
pub fn plane_dir() -> PathBuf {
    std::env::var_os("IOTPOSTURE_TESTPLANE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/testplane"))
}

/// A client for the local control plane. Fails loudly, never skips: a test
/// that needs the plane and cannot reach it has not passed.
pub async fn client() -> Client {
    let path = plane_dir().join("kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no local control plane ({}: {e}); start one with `make testplane-up` (`make test` does)",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Installs the committed CRDs once per test process and waits until they serve.
pub async fn ensure_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        let text = std::fs::read_to_string(workspace_root().join("crds/iotsystem.yaml"))
            .expect("crds/iotsystem.yaml");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let crd: CustomResourceDefinition =
                serde::Deserialize::deserialize(doc).expect("CRD parses");
            let name = crd.metadata.name.clone().unwrap();
            crds.patch(
                &name,
                &PatchParams::apply("iotposture-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("CRD applies");
            wait_until(&format!("CRD {name} established"), || async {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            })
            .await;
        }
    })
    .await;
}

/// A namespace of its own for one test.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    /// Creates `<prefix>-<unique>` with the CRDs installed and the default
    /// ServiceAccount present (pods need it).
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        ensure_crds(&client).await;
        let unique = format!(
            "{:x}{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("{prefix}-{unique}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_until("the default ServiceAccount", || async {
            accounts.get_opt("default").await.ok().flatten().map(|_| ())
        })
        .await;
        Self { name, client }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates every document of a YAML stream in this namespace.
    pub async fn apply_yaml<K>(&self, yaml: &str) -> Vec<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let obj: K = serde::Deserialize::deserialize(doc).expect("fixture parses");
            out.push(
                self.api::<K>()
                    .create(&PostParams::default(), &obj)
                    .await
                    .expect("created"),
            );
        }
        out
    }

    /// Deletes the namespace; the control plane's garbage collector does the rest.
    pub async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

/// The operator, in this process, watching one namespace.
pub struct RunningOperator {
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningOperator {
    pub async fn start(ns: &TestNamespace) -> Self {
        let metrics = Arc::new(Metrics::default());
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(iotposture::controller::run(
            ns.client.clone(),
            Some(ns.name.clone()),
            metrics.clone(),
            ready.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        wait_until("the operator's caches", || async {
            ready.load(Ordering::Relaxed).then_some(())
        })
        .await;
        Self {
            metrics,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }

    /// Waits until no write has happened for `quiet`: the operator has settled.
    pub async fn settle(&self, quiet: Duration) {
        let mut last = self.metrics.writes_total();
        let mut since = tokio::time::Instant::now();
        let deadline = since + Duration::from_secs(60);
        while since.elapsed() < quiet {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the operator kept writing for a minute"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.metrics.writes_total();
            if now != last {
                last = now;
                since = tokio::time::Instant::now();
            }
        }
    }
}

/// Polls `check` until it returns Some, for at most 60 s.
pub async fn wait_until<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 60s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The API server's audit log of write requests (see the plane's audit policy).
pub struct AuditLog {
    path: PathBuf,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self {
            path: plane_dir().join("logs/audit.log"),
        }
    }
}

impl AuditLog {
    /// Current end of the log: later calls to `writes_since` read from here.
    pub fn mark(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Write requests logged after `mark` that concern `namespace`.
    pub fn writes_since(&self, mark: u64, namespace: &str) -> Vec<Value> {
        let text = std::fs::read(&self.path).expect("audit log readable");
        let start = usize::try_from(mark).unwrap().min(text.len());
        String::from_utf8_lossy(&text[start..])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["objectRef"]["namespace"] == namespace)
            .collect()
    }
}
