//! The `iotposture` command line. Only argument handling lives here.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

/// The watch caches are built from large list responses whose decoded pages
/// are freed right after. With glibc's malloc the operator's RSS stayed near
/// twice what its caches hold (330 MiB at 1,000 systems and 10,000 pods,
/// about 160 MB cached); jemalloc hands freed pages back. Its options
/// (one arena, a background thread) are set at build time, in
/// `.cargo/config.toml`.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "iotposture",
    version,
    about = "Enforce and prove the IoT security checklist on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a system's decision record: recompute the Merkle tree from the
    /// logged entries and check the signed checkpoints against it. Exit 0
    /// when it holds, 1 naming the first entry that was altered, removed or
    /// moved, 2 on unreadable input.
    Verify {
        /// The logged lines (a file, or - for stdin): the operator's output,
        /// or a log store's JSON lines whose `_msg` holds them. Lines that are
        /// not entries of the system are skipped.
        #[arg(long)]
        entries: std::path::PathBuf,
        /// A signed checkpoint (repeatable), e.g. from an earlier status.
        #[arg(long = "checkpoint")]
        checkpoints: Vec<std::path::PathBuf>,
        /// The IoTSystem as `kubectl get -o json` shows it: its
        /// status.decisionLog gives the latest checkpoint, the key and the system.
        #[arg(long)]
        status: Option<std::path::PathBuf>,
        /// The verifier key (default: the one in --status).
        #[arg(long)]
        key: Option<String>,
        /// `namespace/name` (default: the one in --status).
        #[arg(long)]
        system: Option<String>,
    },
    /// Run the controller against the cluster of KUBECONFIG (or the in-cluster config).
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "IOTPOSTURE_NAMESPACE")]
        namespace: Option<String>,
        /// Address of the /metrics, /healthz and /readyz endpoints.
        #[arg(long, env = "IOTPOSTURE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "IOTPOSTURE_LOG_JSON")]
        log_json: bool,
        #[command(flatten)]
        webhook: Box<WebhookArgs>,
        /// Seconds between TLS probe rounds; 0 turns probing off.
        #[arg(long, env = "IOTPOSTURE_PROBE_INTERVAL_SECONDS", default_value_t = 300)]
        probe_interval_seconds: u64,
        /// Dial NAME:PORT at ADDR:PORT instead of the Service's ClusterIP
        /// (repeatable), where the operator cannot reach ClusterIPs.
        #[arg(long = "probe-resolve", value_name = "NAME:PORT=ADDR:PORT")]
        probe_resolve: Vec<String>,
        #[command(flatten)]
        records: Box<RecordArgs>,
        #[command(flatten)]
        edge: Box<EdgeArgs>,
        /// Without the admission webhooks nothing reviews who may grant the
        /// access an IoTSystem's spec.access names, so its subjects are not
        /// bound; set this only where nobody but cluster administrators may
        /// create or change IoTSystems.
        #[arg(long, env = "IOTPOSTURE_TRUST_UNREVIEWED_ACCESS")]
        trust_unreviewed_access: bool,
        /// The namespace of the operator's own pods: the NetworkPolicies it
        /// writes let its probes reach the TLS and web ports (with
        /// --probe-pod-labels, only pods with those labels).
        #[arg(long, env = "IOTPOSTURE_PROBE_NAMESPACE")]
        probe_namespace: Option<String>,
        /// Labels of the operator's pods, as k=v[,k=v].
        #[arg(long, env = "IOTPOSTURE_PROBE_POD_LABELS", value_parser = parse_labels)]
        probe_pod_labels: Option<std::collections::BTreeMap<String, String>>,
        /// Prometheus' namespace: the NetworkPolicies let it scrape the gateway
        /// exporters (port 9145) of web components.
        #[arg(long, env = "IOTPOSTURE_SCRAPE_NAMESPACE")]
        scrape_namespace: Option<String>,
        /// Labels of the Prometheus pods, as k=v[,k=v].
        #[arg(long, env = "IOTPOSTURE_SCRAPE_POD_LABELS", value_parser = parse_labels)]
        scrape_pod_labels: Option<std::collections::BTreeMap<String, String>>,
        #[command(flatten)]
        election: Box<ElectionArgs>,
        /// After SIGTERM, stay up this long, unready, while Services stop
        /// sending webhook requests here.
        #[arg(long, env = "IOTPOSTURE_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
        shutdown_delay_seconds: u64,
    },
    /// Print the CustomResourceDefinitions as YAML.
    Crd {
        /// Write one file per CRD into this folder instead (through a
        /// temporary file, so a failed run leaves no half-written CRD).
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// On an edge node: read the host's Wi-Fi, remote-access ports, USB,
    /// consoles and disk encryption, and keep the node's NodePosture equal to
    /// them. With --once: judge one host root offline (IV-1…IV-4, VI-1) and
    /// exit 0 when nothing fails, 1 when an item fails, 2 when the host root
    /// cannot be read.
    NodeAgent(Box<NodeAgentArgs>),
    /// Print the checklist catalog: the 39 items and what the operator does for each.
    Checklist {
        #[arg(short, long, value_enum, default_value_t = CatalogFormat::Table)]
        output: CatalogFormat,
    },
    /// Judge YAML manifests offline, with the controller's rules. Exit 0: nothing
    /// fails; 1: an item fails; 2: unreadable or invalid input.
    Check {
        /// Files or folders (searched for *.yaml and *.yml).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        paths: Vec<std::path::PathBuf>,
        #[arg(short, long, value_enum, default_value_t = ReportFormat::Table)]
        output: ReportFormat,
        /// Namespace of objects that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Judge component pods as written, not as the mutating webhook admits
        /// them (with the WAF gateway injected and hardened).
        #[arg(long)]
        as_written: bool,
    },
    /// Beside an injected WAF gateway: count failed logins, lockouts and
    /// blocked attacks from its audit log and serve them on /metrics.
    GatewayExporter {
        /// The gateway's state folder, holding modsecurity-audit.log.
        #[arg(long, default_value = "/tmp/iotposture")]
        logs: std::path::PathBuf,
        #[arg(long, default_value = "0.0.0.0:9145")]
        listen: SocketAddr,
    },
}

#[derive(clap::Args, Debug)]
struct NodeAgentArgs {
    /// The host's `/`, mounted read-only (or an edge device image's root).
    #[arg(long, env = "IOTPOSTURE_HOST_ROOT", default_value = "/host")]
    host_root: std::path::PathBuf,
    /// Print this host root's facts and verdicts once, and exit.
    #[arg(long)]
    once: bool,
    #[arg(short, long, value_enum, default_value_t = NodeFormat::Table)]
    output: NodeFormat,
    /// Remote-access default ports the node may listen on (--once), e.g. a bastion's 22.
    #[arg(long = "allow-remote-access-port")]
    allow_remote_access_ports: Vec<u16>,
    /// The node may serve Wi-Fi access points (--once).
    #[arg(long)]
    access_point: bool,
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Namespace of the NodePosture objects (the agent's own).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
    #[arg(long, env = "POD_UID", default_value = "")]
    pod_uid: String,
    #[arg(long, env = "IOTPOSTURE_NODE_INTERVAL_SECONDS", default_value_t = 60)]
    interval_seconds: u64,
    /// Address of /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8081")]
    http_addr: SocketAddr,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum NodeFormat {
    Table,
    Json,
}

async fn node_agent(args: NodeAgentArgs) -> anyhow::Result<i32> {
    use iotposture::edge;
    if args.once {
        let root = &args.host_root;
        if !root.is_dir() {
            eprintln!(
                "error: host root {} is not a readable folder",
                root.display()
            );
            return Ok(EXIT_INPUT);
        }
        let host = edge::Host::new(root);
        let facts = edge::scan(&host);
        let expect = edge::judge::Expectations {
            allowed_remote_access_ports: args.allow_remote_access_ports,
            access_point: args.access_point,
        };
        let report = edge::report::Report::new(&root.display().to_string(), facts, &expect);
        match args.output {
            NodeFormat::Table => print_out(&report.table()),
            NodeFormat::Json => print_out(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
        }
        for u in &report.facts.unreadable {
            eprintln!("error: {}: {}", u.path, u.error);
        }
        return Ok(if report.facts.unreadable.is_empty() {
            report.exit_code()
        } else {
            EXIT_INPUT
        });
    }
    iotposture::telemetry::init(true);
    let (Some(node), Some(namespace)) = (args.node, args.namespace) else {
        anyhow::bail!(
            "the node agent needs --node (NODE_NAME) and --namespace (POD_NAMESPACE), or --once"
        );
    };
    let client = kube::Client::try_default().await?;
    edge::agent::run(
        client,
        edge::agent::AgentOptions {
            host_root: args.host_root,
            node,
            namespace,
            reporter: iotposture::api::nodeposture::Reporter {
                pod: args.pod_name,
                uid: args.pod_uid,
            },
            interval: std::time::Duration::from_secs(args.interval_seconds.max(1)),
            http_addr: args.http_addr,
        },
    )
    .await?;
    Ok(0)
}

/// Edge nodes (IV-1…IV-4, VI-1): where the node agents publish.
#[derive(clap::Args, Debug)]
struct EdgeArgs {
    /// The namespace where the node agents run and publish their
    /// NodePostures; without it no node is judged.
    #[arg(long, env = "IOTPOSTURE_EDGE_NAMESPACE")]
    edge_namespace: Option<String>,
    /// Labels of the node agent pods there, as k=v[,k=v]: a report counts
    /// only while the pod that wrote it runs, ready, on its node.
    #[arg(
        long,
        env = "IOTPOSTURE_NODE_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/component=node-agent"
    )]
    node_agent_selector: String,
}

/// The decision record (VII-2) and the alerting checks (VIII-1, VIII-2).
#[derive(clap::Args, Debug)]
struct RecordArgs {
    /// Keep the decision record's signing key in this Secret of the
    /// operator's namespace (made when empty); without it each process
    /// signs with a key of its own, whose checkpoints verify only until
    /// it restarts.
    #[arg(long, env = "IOTPOSTURE_DECISION_RECORD_SECRET")]
    decision_record_secret: Option<String>,
    /// Prometheus' HTTP address (http://host:port[/prefix]): whether each
    /// system's alert rules are loaded decides VIII-1 and VIII-2.
    #[arg(long, env = "IOTPOSTURE_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Alertmanager's HTTP address: whether the alerts reach a receiver
    /// that notifies someone.
    #[arg(long, env = "IOTPOSTURE_ALERTMANAGER_URL")]
    alertmanager_url: Option<String>,
    /// Seconds between questions to Prometheus and Alertmanager.
    #[arg(
        long,
        env = "IOTPOSTURE_ALERTING_INTERVAL_SECONDS",
        default_value_t = 60
    )]
    alerting_interval_seconds: u64,
    /// Append the decision record's lines to this file instead of stdout.
    #[arg(long, env = "IOTPOSTURE_DECISION_RECORD_FILE")]
    decision_record_file: Option<std::path::PathBuf>,
    /// The log collector's image: with it, the operator runs the collector
    /// DaemonSet that ships the logs of systems with spec.logging (III-1).
    #[arg(long, env = "IOTPOSTURE_LOG_COLLECTOR_IMAGE")]
    log_collector_image: Option<String>,
    /// Name of the collector's DaemonSet, ConfigMap and Secret, in the
    /// operator's namespace (POD_NAMESPACE) or --namespace.
    #[arg(
        long,
        env = "IOTPOSTURE_LOG_COLLECTOR_NAME",
        default_value = "iotposture-log-collector"
    )]
    log_collector_name: String,
    /// The nodes' pod log folder, mounted read-only into the collector.
    #[arg(long, env = "IOTPOSTURE_POD_LOG_DIR", default_value = "/var/log/pods")]
    pod_log_dir: String,
    /// The name its pods begin with (its Deployment's name), in its own
    /// namespace: the collector ships the decision record from those pods'
    /// output with each system's logs. Unset: the record is not shipped.
    #[arg(long, env = "IOTPOSTURE_OPERATOR_POD_PREFIX")]
    operator_pod_prefix: Option<String>,
    /// Seconds between looks at the collector and the store.
    #[arg(
        long,
        env = "IOTPOSTURE_SHIPPING_INTERVAL_SECONDS",
        default_value_t = 30
    )]
    shipping_interval_seconds: u64,
}

/// Several replicas: only the holder of a Lease writes.
#[derive(clap::Args)]
struct ElectionArgs {
    /// Take part in leader election; needs --leader-election-namespace (or POD_NAMESPACE).
    #[arg(long, env = "IOTPOSTURE_LEADER_ELECTION")]
    leader_election: bool,
    /// The Lease's name.
    #[arg(
        long,
        env = "IOTPOSTURE_LEADER_ELECTION_LEASE",
        default_value = "iotposture-leader"
    )]
    leader_election_lease: String,
    /// The Lease's namespace (default: POD_NAMESPACE).
    #[arg(long, env = "IOTPOSTURE_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Seconds a leader that stopped renewing keeps the lease: how long a
    /// killed leader's successor waits at most.
    #[arg(long, env = "IOTPOSTURE_LEASE_DURATION_SECONDS", default_value_t = 10)]
    lease_duration_seconds: u64,
}

impl ElectionArgs {
    fn election(
        self,
        own_namespace: Option<&String>,
    ) -> anyhow::Result<Option<iotposture::controller::leader::LeaderElection>> {
        if !self.leader_election {
            return Ok(None);
        }
        let namespace = self
            .leader_election_namespace
            .or_else(|| own_namespace.cloned())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--leader-election needs --leader-election-namespace or POD_NAMESPACE"
                )
            })?;
        // The pod's name and what tells this process from the pod's next
        // container: a restarted container must wait for the lease like any
        // other replica, not resume a leadership its predecessor held.
        let pod = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "iotposture".into());
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let identity = format!("{pod}_{:x}{:x}", std::process::id(), started & 0xffff_ffff);
        let duration = self.lease_duration_seconds.max(3);
        Ok(Some(iotposture::controller::leader::LeaderElection {
            namespace,
            lease: self.leader_election_lease,
            identity,
            duration: std::time::Duration::from_secs(duration),
            // Renew with a third of the lease left: two tries before it lapses.
            grace: std::time::Duration::from_secs(duration / 3),
        }))
    }
}

/// Admission webhooks: off unless --webhook-addr is given.
#[derive(clap::Args)]
struct WebhookArgs {
    /// Serve the admission webhooks (TLS) on this address, e.g. 0.0.0.0:8443.
    #[arg(long, env = "IOTPOSTURE_WEBHOOK_ADDR")]
    webhook_addr: Option<SocketAddr>,
    /// How the API server reaches them: a URL (https://127.0.0.1:8443 for a
    /// local control plane)...
    #[arg(
        long,
        env = "IOTPOSTURE_WEBHOOK_URL",
        conflicts_with = "webhook_service"
    )]
    webhook_url: Option<String>,
    /// ...or a Service, as NAMESPACE/NAME:PORT.
    #[arg(long, env = "IOTPOSTURE_WEBHOOK_SERVICE")]
    webhook_service: Option<String>,
    /// Names the webhook configurations and is the value of the namespace label
    /// iotposture.dev/admission that selects namespaces.
    #[arg(
        long,
        env = "IOTPOSTURE_WEBHOOK_INSTANCE",
        default_value = "iotposture"
    )]
    webhook_instance: String,
    /// Fail: refuse component pods while the webhooks are unreachable (only in
    /// labelled namespaces). Ignore: admit them unchecked.
    #[arg(long, env = "IOTPOSTURE_WEBHOOK_FAILURE_POLICY", default_value = "Fail", value_parser = ["Fail", "Ignore"])]
    webhook_failure_policy: String,
    /// The operator's own namespace, which the webhooks never select.
    #[arg(long, env = "POD_NAMESPACE")]
    own_namespace: Option<String>,
    /// Image of the WAF gateway injected in front of HTTP ports.
    #[arg(long, env = "IOTPOSTURE_GATEWAY_IMAGE", default_value = iotposture::gateway::DEFAULT_GATEWAY_IMAGE)]
    gateway_image: String,
    /// Image of the gateway's log exporter (the operator's image).
    #[arg(long, env = "IOTPOSTURE_EXPORTER_IMAGE", default_value = iotposture::gateway::DEFAULT_EXPORTER_IMAGE)]
    exporter_image: String,
    /// Serve the certificate kept in this Secret of the operator's namespace,
    /// shared by every replica and renewed by the leader (default: each
    /// process issues its own, which suits one replica only).
    #[arg(long, env = "IOTPOSTURE_WEBHOOK_CERTIFICATE_SECRET")]
    webhook_certificate_secret: Option<String>,
    /// Make this ClusterRole the owner of the webhook configurations, so that
    /// deleting it (uninstalling the chart) deletes them.
    #[arg(long, env = "IOTPOSTURE_WEBHOOK_OWNER_CLUSTER_ROLE")]
    webhook_owner_cluster_role: Option<String>,
}

impl WebhookArgs {
    async fn options(
        self,
        client: &kube::Client,
        managed_namespace: Option<String>,
    ) -> anyhow::Result<Option<iotposture::webhook::Options>> {
        use iotposture::webhook::registration::{Endpoint, Registration};
        let Some(listen) = self.webhook_addr else {
            return Ok(None);
        };
        let (endpoint, hosts) = match (self.webhook_url, self.webhook_service) {
            (_, Some(service)) => {
                let (namespace, rest) = service.split_once('/').ok_or_else(|| {
                    anyhow::anyhow!("--webhook-service must be NAMESPACE/NAME:PORT")
                })?;
                let (name, port) = rest.split_once(':').unwrap_or((rest, "443"));
                let port: i32 = port
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--webhook-service: bad port {port:?}"))?;
                let hosts = vec![
                    format!("{name}.{namespace}.svc"),
                    format!("{name}.{namespace}.svc.cluster.local"),
                ];
                (
                    Endpoint::Service {
                        namespace: namespace.into(),
                        name: name.into(),
                        port,
                    },
                    hosts,
                )
            }
            (url, None) => {
                let url = url.unwrap_or_else(|| format!("https://{listen}"));
                let host = url
                    .trim_start_matches("https://")
                    .split(['/', ':'])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                (Endpoint::Url(url), vec![host])
            }
        };
        let shared_certificate = match self.webhook_certificate_secret {
            None => None,
            Some(name) => Some(iotposture::webhook::shared::SharedSecret {
                namespace: self.own_namespace.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--webhook-certificate-secret needs POD_NAMESPACE (--own-namespace)"
                    )
                })?,
                name,
            }),
        };
        let owner = match self.webhook_owner_cluster_role {
            None => None,
            Some(name) => {
                use k8s_openapi::api::rbac::v1::ClusterRole;
                let role = kube::Api::<ClusterRole>::all(client.clone())
                    .get(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!("--webhook-owner-cluster-role {name}: {e}"))?;
                Some(
                    kube::Resource::controller_owner_ref(&role, &())
                        .ok_or_else(|| anyhow::anyhow!("ClusterRole {name} has no uid"))?,
                )
            }
        };
        // An owner that blocks deletion would need the finalizers permission on it.
        let owner = owner.map(|mut o| {
            o.controller = None;
            o.block_owner_deletion = None;
            o
        });
        Ok(Some(iotposture::webhook::Options {
            shared_certificate,
            listen,
            hosts,
            images: iotposture::webhook::gateway::Images {
                gateway: self.gateway_image,
                exporter: self.exporter_image,
            },
            registration: Registration {
                instance: self.webhook_instance,
                endpoint,
                failure_policy: self.webhook_failure_policy,
                own_namespace: self.own_namespace,
                managed_namespace,
                timeout_seconds: 5,
                owner,
            },
        }))
    }
}

/// `k=v[,k=v]` as labels.
fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    text.split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: expected key=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Pods by namespace name and labels, as NetworkPolicy peers.
fn peers(
    namespace: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
) -> Option<iotposture::controller::validate::PodPeers> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let selector = |labels| LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    };
    namespace.map(|ns| iotposture::controller::validate::PodPeers {
        namespace_selector: Some(selector(
            [("kubernetes.io/metadata.name".to_string(), ns)].into(),
        )),
        pod_selector: labels.map(selector),
    })
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CatalogFormat {
    Table,
    Json,
    Markdown,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Sarif,
    Junit,
}

/// Prints a report; a closed pipe (`| head`) is not an error.
fn print_out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", text.trim_end());
}

/// Exit codes of `check`.
const EXIT_FAIL: i32 = 1;
const EXIT_INPUT: i32 = 2;

fn check(
    paths: &[std::path::PathBuf],
    output: ReportFormat,
    namespace: &str,
    admission: iotposture::check::Admission,
) -> i32 {
    use iotposture::check::{self, output as out};
    let today = k8s_openapi::jiff::Zoned::now().date();
    let reports = check::collect_files(paths)
        .and_then(|files| check::load_files(&files, namespace))
        .and_then(|m| {
            for origin in &m.not_kubernetes {
                eprintln!("note: {origin} is not a Kubernetes object (no apiVersion, kind or metadata); skipped");
            }
            if m.systems.is_empty() {
                eprintln!("warning: no IoTSystem in the input: nothing to judge");
            }
            check::evaluate(&m, today, admission)
        });
    let reports = match reports {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INPUT;
        }
    };
    let text = match output {
        ReportFormat::Table => {
            let mut t = out::table(&reports);
            t.push_str(&format!("compliant: {}\n", out::totals(&reports)));
            t
        }
        ReportFormat::Json => out::json(&reports),
        ReportFormat::Sarif => out::sarif(&reports),
        ReportFormat::Junit => out::junit(&reports),
    };
    print_out(&text);
    if reports.iter().any(|r| r.failed()) {
        EXIT_FAIL
    } else {
        0
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { out_dir: None } => print!("{}", iotposture::api::crd_yaml()?),
        Command::Crd { out_dir: Some(dir) } => {
            for (file, yaml) in iotposture::api::crd_files()? {
                let tmp = dir.join(format!(".{file}.new"));
                std::fs::write(&tmp, yaml)?;
                std::fs::rename(&tmp, dir.join(file))?;
            }
        }
        Command::NodeAgent(args) => std::process::exit(node_agent(*args).await?),
        Command::Checklist { output } => {
            use iotposture::check::output as out;
            let text = match output {
                CatalogFormat::Table => out::catalog_table(),
                CatalogFormat::Json => out::catalog_json(),
                CatalogFormat::Markdown => out::catalog_markdown(),
            };
            print_out(&text);
        }
        Command::Check {
            paths,
            output,
            namespace,
            as_written,
        } => {
            let admission = if as_written {
                iotposture::check::Admission::AsWritten
            } else {
                iotposture::check::Admission::Mutated
            };
            std::process::exit(check(&paths, output, &namespace, admission))
        }
        Command::Verify {
            entries,
            checkpoints,
            status,
            key,
            system,
        } => std::process::exit(iotposture::record::cli::run(
            &entries,
            &checkpoints,
            status.as_deref(),
            key.as_deref(),
            system.as_deref(),
        )),
        Command::GatewayExporter { logs, listen } => {
            iotposture::telemetry::init(true);
            let listener = tokio::net::TcpListener::bind(listen).await?;
            iotposture::gateway::exporter::run(logs, listener).await?;
        }
        Command::Run {
            namespace,
            http_addr,
            log_json,
            webhook,
            probe_interval_seconds,
            probe_resolve,
            trust_unreviewed_access,
            records,
            edge,
            probe_namespace,
            probe_pod_labels,
            scrape_namespace,
            scrape_pod_labels,
            election,
            shutdown_delay_seconds,
        } => {
            iotposture::telemetry::init(log_json);
            let mut resolve = std::collections::HashMap::new();
            for entry in probe_resolve {
                let (name, addr) = entry.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--probe-resolve {entry:?}: expected NAME:PORT=ADDR:PORT")
                })?;
                resolve.insert(name.to_string(), addr.parse()?);
            }
            let probes = (probe_interval_seconds > 0).then(|| {
                iotposture::controller::probing::ProbeOptions {
                    interval: std::time::Duration::from_secs(probe_interval_seconds),
                    resolve,
                    settings: iotposture::probe::tls::Settings::default(),
                    http: iotposture::probe::http::Settings::default(),
                }
            });
            let client = kube::Client::try_default().await?;
            let leader_election = election.election(webhook.own_namespace.as_ref())?;
            let RecordArgs {
                decision_record_secret,
                decision_record_file,
                prometheus_url,
                alertmanager_url,
                alerting_interval_seconds,
                log_collector_image,
                log_collector_name,
                pod_log_dir,
                operator_pod_prefix,
                shipping_interval_seconds,
            } = *records;
            let shipping = match log_collector_image {
                None => None,
                Some(image) => {
                    let collector_namespace = webhook
                        .own_namespace
                        .clone()
                        .or_else(|| namespace.clone())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "--log-collector-image needs the operator's namespace (POD_NAMESPACE) or --namespace"
                            )
                        })?;
                    // Kubernetes refuses hostPath paths with `..`.
                    if !pod_log_dir.starts_with('/') || pod_log_dir.split('/').any(|p| p == "..") {
                        anyhow::bail!(
                            "--pod-log-dir {pod_log_dir:?} must be an absolute path without `..`"
                        );
                    }
                    Some(iotposture::controller::shipping::ShippingOptions {
                        collector: iotposture::build::log_collector::Settings {
                            namespace: collector_namespace,
                            name: log_collector_name,
                            image,
                            pod_log_dir,
                            operator_pods: operator_pod_prefix
                                .zip(webhook.own_namespace.clone())
                                .map(|(prefix, ns)| (ns, prefix)),
                        },
                        interval: std::time::Duration::from_secs(shipping_interval_seconds.max(1)),
                    })
                }
            };
            let key_secret = match decision_record_secret {
                None => None,
                Some(name) => Some((
                    webhook.own_namespace.clone().ok_or_else(|| {
                        anyhow::anyhow!(
                            "--decision-record-secret needs POD_NAMESPACE (--own-namespace)"
                        )
                    })?,
                    name,
                )),
            };
            let record = Some(iotposture::controller::RecordOptions {
                key_secret,
                out: decision_record_file,
            });
            let alerting = prometheus_url.map(|prometheus| {
                iotposture::controller::alerting::AlertingOptions {
                    prometheus,
                    alertmanager: alertmanager_url,
                    interval: std::time::Duration::from_secs(alerting_interval_seconds.max(1)),
                }
            });
            let EdgeArgs {
                edge_namespace,
                node_agent_selector,
            } = *edge;
            parse_labels(&node_agent_selector)
                .map_err(|e| anyhow::anyhow!("--node-agent-selector: {e}"))?;
            let options = iotposture::controller::Options {
                edge: edge_namespace.map(|namespace| iotposture::controller::cache::EdgeOptions {
                    namespace,
                    agent_selector: node_agent_selector,
                }),
                alerting,
                shipping,
                record,
                leader_election,
                admission: webhook.options(&client, namespace.clone()).await?,
                namespace,
                probes,
                trust_unreviewed_access,
                operator_peers: iotposture::controller::validate::OperatorPeers {
                    probes: peers(probe_namespace, probe_pod_labels),
                    scrapes: peers(scrape_namespace, scrape_pod_labels),
                },
            };
            let delay = std::time::Duration::from_secs(shutdown_delay_seconds);
            iotposture::controller::run_with_http(client, options, http_addr, delay).await?;
        }
    }
    Ok(())
}
