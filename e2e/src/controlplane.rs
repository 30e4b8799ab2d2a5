//! A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and
//! kube-controller-manager built from the Go module proxy by
//! `e2e/controlplane/build.sh`, started with certificates from a throwaway CA.
//!
//! The processes run detached, so one plane serves many test runs; their pids,
//! ports, certificates, logs and the kubeconfig live in one state folder.

use std::{
    fs,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Where one control plane keeps its state.
#[derive(Clone, Debug)]
pub struct Plane {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    /// Whether the plane has a node (`e2e/node/node.sh`): pods run, Services
    /// answer, NetworkPolicies are enforced. Needs root; one per machine.
    pub node: bool,
    /// Where kwok and its stages are (`bench/scale/build.sh`): the plane then
    /// also runs kube-scheduler and kwok, whose simulated nodes run pods
    /// without containers (benchmarks). None for tests.
    pub simulated_nodes: Option<PathBuf>,
}

/// The node's address, on loopback: pods reach the API server here.
pub const NODE_IP: [u8; 4] = [10, 250, 0, 1];

const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The plane's processes, in the order they start.
const PROCESSES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];
/// Also started, after those, on a plane with simulated nodes.
const SIMULATION: [&str; 2] = ["kube-scheduler", "kwok"];
/// The annotation (and taint) by which kwok knows the nodes it simulates.
pub const SIMULATED_NODE: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// Where one plane listens, kept so that a process restarts as it was.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    api: u16,
}
const SERVICE_API_IP: [u8; 4] = [10, 96, 0, 1];

/// Audit writes, so tests can count what a component wrote; and every
/// request of the operator's ServiceAccounts (reads and Leases included), so
/// a test can hold its ClusterRole against what it really uses. Other
/// Lease traffic (node heartbeats) is left out.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts:iotposture-e2e", "system:serviceaccounts:chart-ha", "system:serviceaccounts:chart-life"]
  - level: Metadata
    users: ["iotposture-bench"]
  - level: None
    resources:
      - group: coordination.k8s.io
        resources: ["leases"]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"#;

impl Plane {
    pub fn new(dir: impl Into<PathBuf>, bin_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            bin_dir: bin_dir.into(),
            node: false,
            simulated_nodes: None,
        }
    }

    /// The same plane, with kube-scheduler and kwok (from `kwok_dir`).
    pub fn with_simulated_nodes(mut self, kwok_dir: impl Into<PathBuf>) -> Self {
        self.simulated_nodes = Some(kwok_dir.into());
        self
    }

    /// A kubeconfig for the user `iotposture-bench` (group system:masters),
    /// whose every request the audit log keeps.
    pub fn bench_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig-bench")
    }

    fn processes(&self) -> Vec<&'static str> {
        let mut all = PROCESSES.to_vec();
        if self.simulated_nodes.is_some() {
            all.extend(SIMULATION);
        }
        all
    }

    /// Each running process of the plane by name (etcd, kube-apiserver, …),
    /// as recorded at its start.
    pub fn process_ids(&self) -> Vec<(&'static str, u32)> {
        let pids = fs::read_to_string(self.pid_file()).unwrap_or_default();
        self.processes()
            .into_iter()
            .zip(pids.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }

    fn bin_path(&self, bin: &str) -> PathBuf {
        match &self.simulated_nodes {
            Some(dir) if bin == "kwok" => dir.join(bin),
            _ => self.bin_dir.join(bin),
        }
    }

    /// The same plane, with a node.
    pub fn with_node(mut self) -> Self {
        self.node = true;
        self
    }

    /// Runs `e2e/node/node.sh ACTION` for this plane.
    fn node_script(&self, action: &str) -> Result<()> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node/node.sh");
        let status = Command::new("bash")
            .arg(script)
            .arg(action)
            .arg(&self.dir)
            .arg(&self.bin_dir)
            .stdin(Stdio::null())
            .status()
            .context("running e2e/node/node.sh")?;
        if !status.success() {
            bail!(
                "e2e/node/node.sh {action} failed ({status}); logs in {}",
                self.dir.join("logs/node").display()
            );
        }
        Ok(())
    }

    /// Where clients reach the API server: loopback, or the node's address
    /// when pods must reach it too.
    fn api_host(&self) -> String {
        if self.node {
            std::net::Ipv4Addr::from(NODE_IP).to_string()
        } else {
            "127.0.0.1".into()
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("logs/audit.log")
    }

    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pids")
    }

    /// True when every process this plane started is still alive.
    pub fn is_running(&self) -> bool {
        let Ok(pids) = fs::read_to_string(self.pid_file()) else {
            return false;
        };
        let pids: Vec<&str> = pids.split_whitespace().collect();
        !pids.is_empty() && pids.iter().all(|pid| is_alive(pid)) && self.kubeconfig().exists()
    }

    /// Starts the plane unless it already runs, and waits until the API server is ready.
    /// A failed start stops whatever it had started.
    pub fn up(&self) -> Result<()> {
        if self.is_running() {
            eprintln!(
                "control plane already running ({})",
                self.kubeconfig().display()
            );
            return Ok(());
        }
        self.down()?;
        let started = self.start();
        if started.is_err() {
            let _ = self.down();
        }
        started
    }

    fn start(&self) -> Result<()> {
        for bin in self.processes().iter().chain(&["kubectl"]) {
            if !self.bin_path(bin).exists() {
                bail!(
                    "{} is missing: run e2e/controlplane/build.sh (make testplane-bins) and, for simulated nodes, bench/scale/build.sh first",
                    self.bin_path(bin).display()
                );
            }
        }
        fs::create_dir_all(self.dir.join("logs"))?;
        fs::create_dir_all(self.pki())?;
        self.write_pki()?;
        fs::write(self.dir.join("audit-policy.yaml"), AUDIT_POLICY)?;
        fs::write(
            self.dir.join("scheduler.yaml"),
            format!(
                "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {{kubeconfig: {}, qps: 500, burst: 1000}}
leaderElection: {{leaderElect: false}}
",
                self.kubeconfig().display()
            ),
        )?;
        let ports = Ports {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            api: free_port()?,
        };
        fs::write(
            self.dir.join("ports"),
            format!("{} {} {}", ports.etcd_client, ports.etcd_peer, ports.api),
        )?;
        if self.node {
            // The node's address must exist before the API server binds it.
            self.node_script("network")?;
        }
        self.write_kubeconfig(&format!("https://{}:{}", self.api_host(), ports.api))?;

        let mut children: Vec<(&str, Child)> = Vec::new();
        for bin in self.processes() {
            children.push(self.spawn(bin, &self.args(bin, &ports))?);
            // Record what runs so far, so a failed start can still be cleaned up.
            fs::write(self.pid_file(), join_pids(&children))?;
            match bin {
                "kube-apiserver" => self.wait_for(
                    &mut children,
                    "kube-apiserver /readyz",
                    Duration::from_secs(180),
                    || self.api_ready(),
                )?,
                // The controller manager is up once it has made the default ServiceAccount.
                "kube-controller-manager" => self.wait_for(
                    &mut children,
                    "the default ServiceAccount",
                    Duration::from_secs(120),
                    || {
                        Ok(self
                            .kubectl(&["get", "serviceaccount", "default", "-n", "default"])?
                            .status
                            .success())
                    },
                )?,
                // Nothing to wait for; an early exit shows in the next wait.
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        if self.node {
            self.node_script("up")?;
        }
        eprintln!(
            "control plane ready: KUBECONFIG={}",
            self.kubeconfig().display()
        );
        Ok(())
    }

    fn api_ready(&self) -> Result<bool> {
        Ok(self.kubectl(&["get", "--raw=/readyz"])?.status.success())
    }

    /// How each process is started; the same on a restart.
    fn args(&self, bin: &str, ports: &Ports) -> Vec<String> {
        let pki = self.pki();
        let p = |f: &str| pki.join(f).display().to_string();
        let etcd_url = format!("http://127.0.0.1:{}", ports.etcd_client);
        let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
        match bin {
            "etcd" => vec![
                "--name=plane".into(),
                format!("--data-dir={}", self.dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=plane={peer_url}"),
                // Test data is thrown away; fsync only slows the plane down.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            "kube-apiserver" => vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", p("")),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--secure-port={}", ports.api),
                format!("--bind-address={}", self.api_host()),
                format!("--advertise-address={}", self.api_host()),
                // Without a node nothing needs the `kubernetes` Service's
                // endpoint, and loopback may not be published as one; with
                // a node, pods reach the API server through it.
                format!(
                    "--endpoint-reconciler-type={}",
                    if self.node { "lease" } else { "none" }
                ),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--authorization-mode=Node,RBAC".into(),
                format!(
                    "--kubelet-client-certificate={}",
                    p("apiserver-kubelet-client.crt")
                ),
                format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                format!("--kubelet-certificate-authority={}", p("ca.crt")),
                // The node's name resolves nowhere; its address does.
                "--kubelet-preferred-address-types=InternalIP".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--allow-privileged=true".into(),
                format!(
                    "--audit-policy-file={}",
                    self.dir.join("audit-policy.yaml").display()
                ),
                format!("--audit-log-path={}", self.audit_log().display()),
                "--audit-log-format=json".into(),
                // Rotated files are read too (AuditLog::entries_since); large, so rarely.
                "--audit-log-maxsize=1000".into(),
                // A benchmark's plane serves /debug/pprof, to see where the
                // API server's time goes (IOTPOSTURE_BENCH_PROFILE).
                format!("--profiling={}", self.simulated_nodes.is_some()),
            ],
            "kube-scheduler" => vec![
                format!("--config={}", self.dir.join("scheduler.yaml").display()),
                "--secure-port=0".into(),
            ],
            "kwok" => vec![
                format!("--kubeconfig={}", self.kubeconfig().display()),
                format!(
                    "--config={}",
                    self.simulated_nodes
                        .as_ref()
                        .map(|d| d.join("kwok-stages.yaml"))
                        .unwrap_or_default()
                        .display()
                ),
                "--manage-all-nodes=false".into(),
                format!(
                    "--manage-nodes-with-annotation-selector={}={}",
                    SIMULATED_NODE.0, SIMULATED_NODE.1
                ),
                // Without leases (the default 0) the nodes turn NotReady.
                "--node-lease-duration-seconds=40".into(),
                "--cidr=10.0.0.0/16".into(),
            ],
            _ => vec![
                format!("--kubeconfig={}", self.kubeconfig().display()),
                // Thousands of pods: the defaults (20/s, burst 30) would
                // measure the controller manager, not what runs beside it.
                format!(
                    "--kube-api-qps={}",
                    if self.simulated_nodes.is_some() {
                        500
                    } else {
                        20
                    }
                ),
                format!(
                    "--kube-api-burst={}",
                    if self.simulated_nodes.is_some() {
                        1000
                    } else {
                        30
                    }
                ),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=false".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--secure-port=0".into(),
                "--profiling=false".into(),
            ],
        }
    }

    /// Kills one process of the running plane (etcd, kube-apiserver or
    /// kube-controller-manager) and starts it again as it was; returns once
    /// the API server answers ready again. For fault tests.
    pub fn restart(&self, bin: &str) -> Result<()> {
        let index = PROCESSES
            .iter()
            .position(|b| *b == bin)
            .with_context(|| format!("{bin} is not a process of the plane"))?;
        let pids = fs::read_to_string(self.pid_file())?;
        let mut pids: Vec<String> = pids.split_whitespace().map(String::from).collect();
        let old = pids.get(index).cloned().context("no pid recorded")?;
        let _ = Command::new("kill").args(["-9", &old]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while is_alive(&old) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let ports: Vec<u16> = fs::read_to_string(self.dir.join("ports"))?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let ports = Ports {
            etcd_client: ports[0],
            etcd_peer: ports[1],
            api: ports[2],
        };
        // A killed process's leader can show as a zombie while its other
        // threads still hold the listening sockets: wait until its ports
        // can be bound again (std binds with SO_REUSEADDR, as Go does).
        let own_ports: &[u16] = match bin {
            "etcd" => &[ports.etcd_client, ports.etcd_peer],
            "kube-apiserver" => &[ports.api],
            _ => &[],
        };
        while own_ports
            .iter()
            .any(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (_, child) = self.spawn(PROCESSES[index], &self.args(bin, &ports))?;
        pids[index] = child.id().to_string();
        fs::write(self.pid_file(), pids.join(" "))?;
        let mut children = vec![(PROCESSES[index], child)];
        let waited = self.wait_for(
            &mut children,
            "kube-apiserver /readyz after a restart",
            Duration::from_secs(180),
            || self.api_ready(),
        );
        // The process belongs to the plane, not to this handle: never reaped here.
        std::mem::forget(children);
        waited
    }

    /// Stops the processes of this plane and removes its data.
    pub fn down(&self) -> Result<()> {
        // The node first: its pods and tables, while the API server still answers.
        if self.dir.join("node").exists() {
            self.node_script("down")?;
        }
        if let Ok(pids) = fs::read_to_string(self.pid_file()) {
            // Reverse order: controllers first, storage last.
            let pids: Vec<&str> = pids.split_whitespace().rev().collect();
            for pid in &pids {
                let _ = Command::new("kill").arg(pid).stderr(Stdio::null()).status();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while pids.iter().any(|pid| is_alive(pid)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            for pid in &pids {
                let _ = Command::new("kill")
                    .args(["-9", pid])
                    .stderr(Stdio::null())
                    .status();
            }
            fs::remove_file(self.pid_file())?;
        }
        for gone in ["etcd", "kubeconfig"] {
            let path = self.dir.join(gone);
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else if path.exists() {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn spawn<'b>(&self, bin: &'b str, args: &[String]) -> Result<(&'b str, Child)> {
        // Appended: a restarted process keeps the log of the one before.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{bin}.log")))?;
        let child = Command::new(self.bin_path(bin))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: the plane outlives the command that started it
            // and is not hit by the terminal's Ctrl-C.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        Ok((bin, child))
    }

    /// Runs kubectl against this plane as its admin; fails with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<()> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn kubectl(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(self.bin_dir.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// Polls `ready` until it holds; fails early, naming the log, when a process exits.
    fn wait_for(
        &self,
        children: &mut [(&str, Child)],
        what: &str,
        timeout: Duration,
        ready: impl Fn() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready()? {
                return Ok(());
            }
            for (bin, child) in children.iter_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{bin} exited ({status}) while waiting for {what}; last lines of its log:\n{}",
                        self.log_tail(bin)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what} after {timeout:?}; logs in {}",
                    self.dir.join("logs").display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_tail(&self, bin: &str) -> String {
        let log = fs::read_to_string(self.dir.join("logs").join(format!("{bin}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn write_pki(&self) -> Result<()> {
        let dir = self.pki();
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = name("iotposture-testplane-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);
        fs::write(dir.join("ca.crt"), ca_cert.pem())?;

        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        serving
            .subject_alt_names
            .push(SanType::IpAddress(SERVICE_API_IP.into()));
        serving
            .subject_alt_names
            .push(SanType::IpAddress(NODE_IP.into()));
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        fs::write(
            dir.join("apiserver.crt"),
            serving.signed_by(&serving_key, &ca)?.pem(),
        )?;
        fs::write(dir.join("apiserver.key"), serving_key.serialize_pem())?;

        let issue = |file: &str, cn: &str, org: Option<&str>, sans: Vec<SanType>| -> Result<()> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name = name(cn, org);
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ];
            let key = KeyPair::generate()?;
            fs::write(
                dir.join(format!("{file}.crt")),
                params.signed_by(&key, &ca)?.pem(),
            )?;
            fs::write(dir.join(format!("{file}.key")), key.serialize_pem())?;
            Ok(())
        };
        // The admin identity of tests and the demo: group system:masters.
        issue("admin", "iotposture-admin", Some("system:masters"), vec![])?;
        // The operator under benchmark: audited request by request.
        issue("bench", "iotposture-bench", Some("system:masters"), vec![])?;
        // How the API server proves itself to the kubelet (logs, exec).
        issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            vec![],
        )?;
        // The node's identity, to the API server (Node authorization) and as
        // the kubelet's serving certificate.
        issue(
            "kubelet",
            "system:node:iotposture-node",
            Some("system:nodes"),
            vec![
                SanType::IpAddress(NODE_IP.into()),
                SanType::DnsName("iotposture-node".try_into()?),
            ],
        )?;

        let sa = KeyPair::generate()?;
        fs::write(dir.join("sa.key"), sa.serialize_pem())?;
        fs::write(dir.join("sa.pub"), sa.public_key_pem())?;
        Ok(())
    }

    fn write_kubeconfig(&self, server: &str) -> Result<()> {
        let pki = self.pki();
        let b64 = |f: &str| -> Result<String> {
            let out = Command::new("base64")
                .args(["-w0"])
                .arg(pki.join(f))
                .output()?;
            Ok(String::from_utf8(out.stdout)?)
        };
        let kubeconfig = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: iotposture-testplane
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: iotposture-testplane
  context:
    cluster: iotposture-testplane
    user: admin
current-context: iotposture-testplane
",
            ca = b64("ca.crt")?,
            cert = b64("admin.crt")?,
            key = b64("admin.key")?,
        );
        fs::write(self.kubeconfig(), &kubeconfig)?;
        fs::write(
            self.bench_kubeconfig(),
            kubeconfig
                .replace(&b64("admin.crt")?, &b64("bench.crt")?)
                .replace(&b64("admin.key")?, &b64("bench.key")?),
        )?;
        Ok(())
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

/// A free port below the kernel's ephemeral range (32768 and up here): a
/// port from that range may be taken by some client's outgoing connection
/// while its server restarts, and the restart would fail.
fn free_port() -> Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    for i in 0..2000u32 {
        let port = 20000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between 20000 and 32000")
}

fn join_pids(children: &[(&str, Child)]) -> String {
    children
        .iter()
        .map(|(_, c)| c.id().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Alive and not a zombie: a process whose parent has not reaped it still has
/// a /proc entry.
fn is_alive(pid: &str) -> bool {
    fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}
