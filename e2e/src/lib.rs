//! Support for tests that need a real control plane: the plane itself
//! (`controlplane`), a client for it, a fresh namespace per test, the operator
//! running in-process for that namespace, and the API server's audit log.

pub mod alerting;
pub mod bench;
pub mod controlplane;
pub mod kyverno;
pub mod logstore;
pub mod waf;

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
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

use iotposture::{health::Health, metrics::Metrics};

/// An image images/build.sh built and the node imported, e.g. `toolbox`.
pub fn local_image(name: &str) -> String {
    format!("iotposture.local/{name}:{}", env!("CARGO_PKG_VERSION"))
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

static PLANE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes this test process use the plane in `dir` (one of its own, e.g. for
/// tests that restart the API server); the first call wins.
pub fn use_plane(dir: PathBuf) {
    let _ = PLANE_DIR.set(dir);
}

/// The state folder of the plane the tests use: the one `use_plane` chose,
/// else `IOTPOSTURE_TESTPLANE`, else `target/testplane`.
pub fn plane_dir() -> PathBuf {
    if let Some(dir) = PLANE_DIR.get() {
        return dir.clone();
    }
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

/// A client for the local control plane that acts as `user` (in `groups`)
/// by impersonation: the API server authorizes each request as that user.
pub async fn client_as(user: &str, groups: &[&str]) -> Client {
    let path = plane_dir().join("kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).expect("a local control plane");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Client::try_from(config).expect("client builds")
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// CRD files the tests install: ours, and the third-party ones that
/// `e2e/thirdparty/fetch-crds.sh` fetched (make test runs it).
fn crd_files() -> Vec<PathBuf> {
    let third_party = workspace_root().join("target/thirdparty/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&third_party)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run e2e/thirdparty/fetch-crds.sh (make test does)",
                third_party.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "third-party CRDs missing in {}",
        third_party.display()
    );
    files.insert(0, workspace_root().join("crds/iotsystem.yaml"));
    files.insert(1, workspace_root().join("crds/nodeposture.yaml"));
    files
}

/// Installs the CRDs once per test process and waits until they serve.
pub async fn ensure_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        let text: String = crd_files()
            .iter()
            .map(|f| std::fs::read_to_string(f).expect("CRD file readable") + "\n---\n")
            .collect();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        for value in docs {
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(value).expect("CRD parses");
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
        let docs: Vec<K> = serde_saphyr::from_multiple(yaml).expect("fixture parses");
        for obj in docs {
            out.push(
                self.api::<K>()
                    .create(&PostParams::default(), &obj)
                    .await
                    .expect("created"),
            );
        }
        out
    }

    /// Server-side applies every document of a YAML stream into this namespace,
    /// whatever its kind (resolved through discovery). Namespace documents are skipped.
    pub async fn apply_manifest(&self, yaml: &str) {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("YAML");
        for value in docs {
            if value.is_null() || value["kind"] == "Namespace" {
                continue;
            }
            let mut object: kube::core::DynamicObject =
                serde_json::from_value(value).expect("a Kubernetes object");
            object.metadata.namespace = Some(self.name.clone());
            let types = object.types.clone().expect("apiVersion and kind");
            let gvk = kube::core::GroupVersionKind::try_from(&types).expect("valid apiVersion");
            let (resource, _) = kube::discovery::pinned_kind(&self.client, &gvk)
                .await
                .unwrap_or_else(|e| panic!("{gvk:?} is not served: {e}"));
            let api: Api<kube::core::DynamicObject> =
                Api::namespaced_with(self.client.clone(), &self.name, &resource);
            let name = object.metadata.name.clone().expect("a name");
            api.patch(
                &name,
                &PatchParams::apply("iotposture-e2e").force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", types.kind));
        }
    }

    /// Sets labels on the namespace (e.g. Pod Security admission levels).
    pub async fn label(&self, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        Api::<Namespace>::all(self.client.clone())
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": labels}})),
            )
            .await
            .expect("namespace labelled");
    }

    /// Runs the bundled kubectl against the plane; returns exit status, stdout, stderr.
    /// Async, so servers on this test's runtime (webhooks) keep answering meanwhile.
    pub async fn kubectl(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut child =
            tokio::process::Command::new(workspace_root().join("target/testplane/bin/kubectl"))
                .arg(format!(
                    "--kubeconfig={}",
                    plane_dir().join("kubeconfig").display()
                ))
                .args(["-n", &self.name])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kubectl runs");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Deletes the namespace; the control plane's garbage collector does the rest.
    pub async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

impl Drop for TestNamespace {
    /// A test that fails before its cleanup still takes its namespace (and,
    /// on the node, its pods) with it, so later tests find the node free.
    fn drop(&mut self) {
        let _ = std::process::Command::new(workspace_root().join("target/testplane/bin/kubectl"))
            .arg(format!(
                "--kubeconfig={}",
                plane_dir().join("kubeconfig").display()
            ))
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The operator, in this process, watching one namespace.
pub struct RunningOperator {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The webhook instance (configuration name and namespace label value), if served.
    pub webhook_instance: Option<String>,
    pub webhook_addr: Option<std::net::SocketAddr>,
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningOperator {
    pub async fn start(ns: &TestNamespace) -> Self {
        Self::start_with(ns, false, None).await
    }

    /// Also probes TLS ports every second, dialling the given `name:port` → address.
    pub async fn start_with_probes(
        ns: &TestNamespace,
        resolve: std::collections::HashMap<String, std::net::SocketAddr>,
    ) -> Self {
        let probes = iotposture::controller::probing::ProbeOptions {
            interval: Duration::from_secs(1),
            resolve,
            settings: iotposture::probe::tls::Settings {
                handshake_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            http: iotposture::probe::http::Settings {
                request_timeout: Duration::from_secs(3),
            },
        };
        Self::start_with(ns, false, Some(probes)).await
    }

    /// Options for an operator of this namespace; `webhooks` serves the
    /// admission webhooks on 127.0.0.1, registered by URL under an instance
    /// name of this namespace's own. Without them, spec.access is trusted
    /// (as with --trust-unreviewed-access), unless the test says otherwise.
    pub fn options(ns: &TestNamespace, webhooks: bool) -> iotposture::controller::Options {
        use iotposture::webhook::registration::{Endpoint, Registration};
        let admission = webhooks.then(|| {
            let listen = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            iotposture::webhook::Options {
                listen,
                hosts: vec!["127.0.0.1".into()],
                images: iotposture::webhook::gateway::Images {
                    gateway: iotposture::gateway::DEFAULT_GATEWAY_IMAGE.into(),
                    exporter: iotposture::gateway::DEFAULT_EXPORTER_IMAGE.into(),
                },
                shared_certificate: None,
                registration: Registration {
                    instance: format!("iotposture-{}", ns.name),
                    endpoint: Endpoint::Url(format!("https://{listen}")),
                    failure_policy: "Fail".into(),
                    own_namespace: None,
                    managed_namespace: Some(ns.name.clone()),
                    timeout_seconds: 5,
                    owner: None,
                },
            }
        });
        iotposture::controller::Options {
            namespace: Some(ns.name.clone()),
            admission,
            probes: None,
            trust_unreviewed_access: !webhooks,
            operator_peers: Default::default(),
            leader_election: None,
            alerting: None,
            shipping: None,
            edge: None,
            // Every test's operator keeps its decision record, in a file of
            // the namespace's own (a key of the process's own).
            record: Some(iotposture::controller::RecordOptions {
                key_secret: None,
                out: Some(Self::record_file(ns)),
            }),
        }
    }

    /// Where the operator of `ns` writes its decision record's lines.
    pub fn record_file(ns: &TestNamespace) -> PathBuf {
        std::env::temp_dir().join(format!("iotposture-e2e-record-{}.jsonl", ns.name))
    }

    /// Also serves the admission webhooks on 127.0.0.1, registered by URL
    /// under an instance name of this namespace's own.
    pub async fn start_with_webhooks(ns: &TestNamespace) -> Self {
        Self::start_with(ns, true, None).await
    }

    async fn start_with(
        ns: &TestNamespace,
        webhooks: bool,
        probes: Option<iotposture::controller::probing::ProbeOptions>,
    ) -> Self {
        let mut options = Self::options(ns, webhooks);
        options.probes = probes;
        Self::start_as(ns, operator_client().await, options).await
    }

    /// Starts the operator with `options`, talking to the API server as
    /// `client`, and waits until it is ready.
    pub async fn start_as(
        ns: &TestNamespace,
        client: Client,
        options: iotposture::controller::Options,
    ) -> Self {
        let running = Self::launch(ns, client, options);
        wait_until("the operator ready", || async {
            running.health.is_ready().then_some(())
        })
        .await;
        if let (Some(instance), Some(addr)) = (&running.webhook_instance, running.webhook_addr) {
            let configs: Api<
                k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
            > = Api::all(ns.client.clone());
            wait_until("the webhooks registered and listening", || async {
                configs.get_opt(instance).await.ok()??;
                tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
            })
            .await;
            Self::wait_admission_calls_webhooks(ns).await;
        }
        running
    }

    /// The API server calls a new webhook only once its own watch of the
    /// configurations has seen it, which lags the write under load: until a
    /// dry-run create of an invalid IoTSystem is refused by our webhook, a
    /// test's first create could be admitted unseen.
    async fn wait_admission_calls_webhooks(ns: &TestNamespace) {
        let resource = kube::core::ApiResource::erase::<iotposture::api::IoTSystem>(&());
        let api = Api::<kube::core::DynamicObject>::namespaced_with(
            ns.client.clone(),
            &ns.name,
            &resource,
        );
        let probe: kube::core::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "iotposture.dev/v1alpha1", "kind": "IoTSystem",
            "metadata": {"name": "webhook-probe"},
            "spec": {
                "components": [{"name": "c", "role": "Aggregator", "selector": {"matchLabels": {"app": "c"}},
                                "ports": [{"name": "mqtts", "port": 8883, "tls": true}]}],
                "flows": [{"from": "no-such-component", "to": "c", "port": "mqtts"}]
            }
        }))
        .expect("the probe is an object");
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        wait_until("the API server calling the webhooks", || async {
            match api.create(&dry, &probe).await {
                Err(kube::Error::Api(status))
                    if status.message.contains("IoTSystem spec is invalid") =>
                {
                    Some(())
                }
                _ => None,
            }
        })
        .await;
    }

    /// Starts the operator without waiting for anything.
    pub fn launch(
        ns: &TestNamespace,
        client: Client,
        options: iotposture::controller::Options,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let webhook_instance = options
            .admission
            .as_ref()
            .map(|a| a.registration.instance.clone());
        let webhook_addr = options.admission.as_ref().map(|a| a.listen);
        let task = tokio::spawn(iotposture::controller::run(
            client,
            options,
            metrics.clone(),
            health.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            metrics,
            health,
            webhook_instance,
            webhook_addr,
            client: ns.client.clone(),
            stop: Some(stop),
            task,
        }
    }

    /// Stops the operator, webhook server included, but leaves the webhook
    /// configurations registered: the cluster as it is while the operator is down.
    pub async fn crash(mut self) -> Option<String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        self.webhook_instance.take()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        if let Some(instance) = &self.webhook_instance {
            Self::remove_webhooks(&self.client, instance).await;
        }
    }

    /// Deletes the webhook configurations of an instance.
    pub async fn remove_webhooks(client: &Client, instance: &str) {
        use k8s_openapi::api::admissionregistration::v1::{
            MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
        };
        let dp = DeleteParams::default();
        let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(instance, &dp)
            .await;
        let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(instance, &dp)
            .await;
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

/// A plain HTTP/1.0 GET on loopback; returns the status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path_and_query: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10s")
        .expect("read");
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

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
        self.entries_since(mark)
            .into_iter()
            .filter(|e| e["objectRef"]["namespace"] == namespace)
            .filter(|e| {
                WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default())
                    && e["objectRef"]["resource"] != "leases"
            })
            .collect()
    }

    /// Every entry logged after `mark` (reads only of the operator's accounts).
    /// From 0, the files the API server rotated out (`audit-<time>.log`,
    /// oldest first) come before the current one, so a whole suite's
    /// requests are read however large the log grew.
    pub fn entries_since(&self, mark: u64) -> Vec<Value> {
        let mut files = Vec::new();
        if mark == 0
            && let (Some(dir), Some(stem)) = (
                self.path.parent(),
                self.path.file_stem().and_then(|s| s.to_str()),
            )
        {
            let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(".log"))
                })
                .collect();
            // Their names carry the rotation time, so they sort in order.
            rotated.sort();
            files.extend(rotated);
        }
        let current = std::fs::read(&self.path).expect("audit log readable");
        let start = usize::try_from(mark).unwrap().min(current.len());
        let mut entries = Vec::new();
        for file in files {
            let text = std::fs::read(&file).expect("rotated audit log readable");
            entries.extend(
                String::from_utf8_lossy(&text)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
            );
        }
        entries.extend(
            String::from_utf8_lossy(&current[start..])
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
        );
        entries
    }
}

/// A real Prometheus (Debian's package, installed by `make test`) scraping
/// the given targets every second. Stopped when dropped.
pub struct Prometheus {
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
    _dir: PathBuf,
}

/// A free loopback address, for a server started later.
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Prometheus {
    pub async fn start(job: &str, targets: &[std::net::SocketAddr]) -> Self {
        Self::start_with(free_addr(), job, targets, None, None).await
    }

    /// At `addr`, also loading the rule files matching `rules` (a glob) and
    /// sending alerts to `alertmanager`; evaluates every second.
    pub async fn start_with(
        addr: std::net::SocketAddr,
        job: &str,
        targets: &[std::net::SocketAddr],
        rules: Option<&std::path::Path>,
        alertmanager: Option<std::net::SocketAddr>,
    ) -> Self {
        let dir = plane_dir().join(format!(
            "prometheus-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let mut config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: {job}\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        if let Some(glob) = rules {
            config.push_str(&format!("rule_files: [\"{}\"]\n", glob.display()));
        }
        if let Some(am) = alertmanager {
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs: [{{targets: [\"{am}\"]}}]\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus on PATH (make test installs Debian's package)");
        let prometheus = Self {
            addr,
            child,
            _dir: dir,
        };
        wait_until("Prometheus ready", || async {
            let (code, _) = tokio::time::timeout(Duration::from_secs(2), async {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => http_get(addr, "/-/ready").await,
                    Err(_) => (0, String::new()),
                }
            })
            .await
            .unwrap_or((0, String::new()));
            (code == 200).then_some(())
        })
        .await;
        prometheus
    }

    /// Runs an instant query and returns `data.result`.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let encoded = iotposture::probe::http::form_encode(expr);
        let (code, body) = http_get(self.addr, &format!("/api/v1/query?query={encoded}")).await;
        assert_eq!(code, 200, "query {expr}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON from Prometheus");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// The identity the tests run the operator as: the chart's ServiceAccount,
/// ClusterRole and Role, rendered by Helm for release `iotposture-e2e` in
/// namespace `iotposture-e2e` — never the plane's administrator. The one
/// permission added for tests: the webhook configurations of every test's
/// own instance (the chart's role allows only its release's name).
pub const OPERATOR_NAMESPACE: &str = "iotposture-e2e";
pub const OPERATOR_ACCOUNT: &str = "iotposture-e2e";

static OPERATOR_TOKEN: OnceCell<String> = OnceCell::const_new();

/// Runs helm (built into target/testplane/bin by e2e/tools/build.sh).
pub fn helm(args: &[&str]) -> std::process::Output {
    let bin = workspace_root().join("target/testplane/bin/helm");
    std::process::Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", plane_dir().join("kubeconfig"))
        .env("HELM_CACHE_HOME", plane_dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", plane_dir().join("helm/config"))
        .env("HELM_DATA_HOME", plane_dir().join("helm/data"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: build it with e2e/tools/build.sh (make test does)",
                bin.display()
            )
        })
}

/// Installs the operator's identity from the chart (idempotent) and returns
/// a bearer token of its ServiceAccount.
async fn operator_token() -> String {
    OPERATOR_TOKEN
        .get_or_init(|| async {
            let admin = client().await;
            ensure_crds(&admin).await;
            let chart = workspace_root().join("charts/iotposture");
            let out = helm(&[
                "template",
                OPERATOR_ACCOUNT,
                chart.to_str().unwrap(),
                "--namespace",
                OPERATOR_NAMESPACE,
                // Every permission the tests' operators use, the log
                // collector's and the node agents' included (the shipping
                // and edge tests run them).
                "--set",
                "logShipping.enabled=true",
                "--set",
                "nodeAgent.enabled=true",
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/rbac.yaml",
            ]);
            assert!(
                out.status.success(),
                "helm template: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut objects: Vec<Value> = serde_saphyr::from_multiple(
                std::str::from_utf8(&out.stdout).unwrap(),
            )
            .expect("helm renders YAML");
            objects.retain(|o| !o.is_null());
            objects.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": OPERATOR_NAMESPACE},
            }));
            let extra = "iotposture-e2e-webhook-instances";
            objects.push(serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": extra},
                "rules": [{
                    "apiGroups": ["admissionregistration.k8s.io"],
                    "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
                    "verbs": ["get", "patch"],
                }],
            }));
            objects.push(serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": extra},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": extra},
                "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
            }));
            apply_objects(&admin, objects, OPERATOR_NAMESPACE).await;
            service_account_token(&admin, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, None, 4 * 3600)
                .await
        })
        .await
        .clone()
}

/// Waits (up to 3 minutes: longer than `wait_until`, for images that start
/// and stores that flush) until item `id` of system `name` has `verdict`
/// with evidence containing `says`; returns the evidence.
pub async fn wait_for_item(
    systems: &Api<iotposture::api::IoTSystem>,
    name: &str,
    id: &str,
    verdict: iotposture::api::Verdict,
    says: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut last = String::new();
    loop {
        let item = systems
            .get(name)
            .await
            .ok()
            .and_then(|s| s.status?.items.into_iter().find(|i| i.id == id));
        if let Some(item) = item {
            if item.verdict == verdict && item.evidence.contains(says) {
                return item.evidence;
            }
            last = format!("{:?}: {}", item.verdict, item.evidence);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} {id} never became {verdict:?} saying {says:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Server-side applies rendered objects as `admin` (namespaced ones into
/// `namespace`), Namespaces first.
pub async fn apply_objects(admin: &Client, mut objects: Vec<Value>, namespace: &str) {
    objects.retain(|o| !o.is_null());
    objects.sort_by_key(|o| o["kind"] != "Namespace");
    let pp = PatchParams::apply("iotposture-e2e").force();
    for object in objects {
        let gvk = kube::core::GroupVersionKind::try_from(
            &serde_json::from_value::<kube::core::TypeMeta>(object.clone()).unwrap(),
        )
        .unwrap();
        let (resource, caps) = kube::discovery::pinned_kind(admin, &gvk)
            .await
            .expect("the kind is served");
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let api: Api<kube::core::DynamicObject> =
            if caps.scope == kube::discovery::Scope::Namespaced {
                Api::namespaced_with(admin.clone(), namespace, &resource)
            } else {
                Api::all_with(admin.clone(), &resource)
            };
        api.patch(&name, &pp, &Patch::Apply(object))
            .await
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }
}

/// A token of ServiceAccount `namespace/account` from a TokenRequest, bound
/// to `pod` when given (as the kubelet mounts it: it then carries the pod's node).
pub async fn service_account_token(
    admin: &Client,
    namespace: &str,
    account: &str,
    pod: Option<&k8s_openapi::api::core::v1::Pod>,
    seconds: i64,
) -> String {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(seconds),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for {namespace}/{account}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

/// A client of the local plane that authenticates with `token` only.
pub async fn client_with_token(token: &str) -> Client {
    let path = plane_dir().join("kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).expect("a local control plane");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).expect("client builds")
}

/// A client that acts as the operator's ServiceAccount, with the chart's
/// permissions only.
pub async fn operator_client() -> Client {
    client_with_token(&operator_token().await).await
}

/// A kubeconfig file for the operator's ServiceAccount, for tests that run
/// the operator as a process.
pub async fn operator_kubeconfig() -> PathBuf {
    let token = operator_token().await;
    let admin =
        Kubeconfig::read_from(plane_dir().join("kubeconfig")).expect("a local control plane");
    let mut config = admin.clone();
    for auth in &mut config.auth_infos {
        auth.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    let path = plane_dir().join("operator.kubeconfig");
    let text = serde_saphyr::to_string(&config).expect("kubeconfig serializes");
    std::fs::write(&path, text).expect("writing the operator's kubeconfig");
    path
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A line of an audit log: an event of some namespace, or anything else
    /// (a line cut short by a restart, bytes that are not UTF-8).
    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => (
                prop::sample::select(vec!["ns-a", "ns-b", ""]),
                prop_oneof![
                    prop::sample::select(vec!["create", "patch", "update", "delete", "get", "list"])
                        .prop_map(String::from),
                    "[a-z]{1,8}",
                ],
                "[a-z]{1,8}",
            )
                .prop_map(|(ns, verb, name)| serde_json::to_vec(&serde_json::json!({
                    "verb": verb, "objectRef": {"namespace": ns, "resource": "roles", "name": name},
                    "responseStatus": {"code": 200}})).unwrap()),
            1 => prop::collection::vec(any::<u8>(), 0..80),
            1 => Just(br#"{"verb": "patch", "objectRef": {"namespace": "ns-a""#.to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any log, read from any mark: the write events of the namespace
        /// asked for, and nothing else; never a panic.
        #[test]
        fn the_audit_log_reader_keeps_only_whole_events_of_the_namespace(
            lines in prop::collection::vec(line(), 0..40),
            // From the start half the time, where the count is known exactly.
            mark in prop_oneof![Just(0u64), 0u64..4000],
        ) {
            let dir = std::env::temp_dir().join(format!("iotposture-audit-prop-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{mark}-{}.log", lines.len()));
            let text: Vec<u8> = lines.join(&b'\n');
            std::fs::write(&path, &text).unwrap();
            let log = AuditLog { path: path.clone() };
            let events = log.writes_since(mark, "ns-a");
            let _ = std::fs::remove_file(&path);
            for e in &events {
                prop_assert_eq!(&e["objectRef"]["namespace"], "ns-a");
            }
            if mark == 0 {
                let whole = lines
                    .iter()
                    .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
                    .filter(|e| e["objectRef"]["namespace"] == "ns-a")
                    .filter(|e| WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default()))
                    .count();
                prop_assert_eq!(events.len(), whole);
            }
        }
    }
}
