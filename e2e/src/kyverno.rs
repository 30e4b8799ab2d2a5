//! Kyverno as the scale benchmark's admission peer: its own binary (built
//! by `bench/scale/build.sh` from the Go module proxy), run out of cluster
//! against a plane, enforcing the Pod Security "restricted" level in one
//! namespace, so pod creates there can be timed against ours.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DynamicObject, PostParams},
};
use serde_json::json;

use crate::controlplane::Plane;

pub const VERSION: &str = "v1.19.1";
/// Where its webhook certificates live (it makes them itself).
const NAMESPACE: &str = "kyverno";
const POLICY: &str = "pod-security-restricted";

pub struct Kyverno {
    child: Child,
}

impl Kyverno {
    /// Installs its CRDs and starts it, enforcing "restricted" on pods of
    /// `namespace` (which must exist); returns once a non-compliant pod is
    /// refused there, so every timed create goes through it.
    pub async fn start(
        plane: &Plane,
        client: &Client,
        bin_dir: &Path,
        log_dir: &Path,
        namespace: &str,
    ) -> Result<Self> {
        let bin = bin_dir.join("kyverno");
        if !bin.exists() {
            bail!(
                "{} is missing: bench/scale/build.sh builds it",
                bin.display()
            );
        }
        let crds = crds(bin_dir)?;
        let mut args = vec!["apply", "--server-side", "--force-conflicts"];
        for c in &crds {
            args.extend(["-f", c.as_str()]);
        }
        plane.kubectl_ok(&args)?;
        plane.kubectl_ok(&["create", "namespace", NAMESPACE])?;
        // Its settings ConfigMaps: present and empty means its defaults.
        for cm in ["kyverno", "kyverno-metrics"] {
            plane.kubectl_ok(&["-n", NAMESPACE, "create", "configmap", cm])?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(log_dir.join("kyverno.log"))?;
        let child = Command::new(&bin)
            .args([
                format!("--kubeconfig={}", plane.kubeconfig().display()),
                // Out of cluster: the API server calls it by URL.
                format!("--serverIP=127.0.0.1:{port}"),
                "--webhookServerHost=127.0.0.1".into(),
                format!("--webhookServerPort={port}"),
                "--caSecretName=kyverno-svc.kyverno.svc.kyverno-tls-ca".into(),
                "--tlsSecretName=kyverno-svc.kyverno.svc.kyverno-tls-pair".into(),
                "--backgroundServiceAccountName=system:serviceaccount:kyverno:kyverno-background-controller".into(),
                "--reportsServiceAccountName=system:serviceaccount:kyverno:kyverno-reports-controller".into(),
                "--disableMetrics".into(),
                // Admission only, as ours: no reports, no generated policies.
                "--admissionReports=false".into(),
                "--generateValidatingAdmissionPolicy=false".into(),
            ])
            .env("KYVERNO_NAMESPACE", NAMESPACE)
            .env("KYVERNO_SERVICEACCOUNT_NAME", "kyverno-admission-controller")
            .env("KYVERNO_DEPLOYMENT", "kyverno-admission-controller")
            .env("KYVERNO_POD_NAME", "kyverno-bench")
            .env("INIT_CONFIG", "kyverno")
            .env("METRICS_CONFIG", "kyverno-metrics")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let kyverno = Self { child };

        let policy: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kyverno.io/v1", "kind": "ClusterPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "background": false,
                "rules": [{
                    "name": "restricted",
                    "match": {"any": [{"resources": {"kinds": ["Pod"], "namespaces": [namespace]}}]},
                    "validate": {
                        "failureAction": "Enforce",
                        "podSecurity": {"level": "restricted", "version": "latest"},
                    },
                }],
            },
        }))?;
        let resource = kube::core::ApiResource {
            group: "kyverno.io".into(),
            version: "v1".into(),
            api_version: "kyverno.io/v1".into(),
            kind: "ClusterPolicy".into(),
            plural: "clusterpolicies".into(),
        };
        let policies = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let privileged: Pod = serde_json::from_value(json!({
            "metadata": {"name": "kyverno-probe"},
            "spec": {"containers": [{"name": "c", "image": "registry.example.com/x:1",
                                     "securityContext": {"privileged": true}}]},
        }))?;
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut created = false;
        loop {
            if !created {
                // Its policy webhook must be up to take the policy.
                created = policies
                    .create(&PostParams::default(), &policy)
                    .await
                    .is_ok();
            }
            if created
                && let Err(kube::Error::Api(status)) = pods.create(&dry, &privileged).await
                && status.message.contains(POLICY)
            {
                return Ok(kyverno);
            }
            if Instant::now() > deadline {
                bail!(
                    "kyverno did not enforce its policy within 240 s; see {}",
                    log_dir.join("kyverno.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// (VmHWM, VmRSS) in MiB.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> (f64, f64) {
        crate::bench::memory_of(self.child.id())
    }

    /// Stops it and removes its webhooks, which would fail every call once
    /// it is gone.
    pub fn stop(mut self, plane: &Plane) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        plane.kubectl_ok(&[
            "delete",
            "validatingwebhookconfigurations,mutatingwebhookconfigurations",
            "-l",
            "webhook.kyverno.io/managed-by=kyverno",
        ])
    }
}

impl Drop for Kyverno {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Kyverno's CRDs, but for the PolicyReport ones the plane already serves
/// (from the policy working group, the same as ours).
fn crds(bin_dir: &Path) -> Result<Vec<String>> {
    let dir: PathBuf = bin_dir.join("kyverno-crds");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("wgpolicyk8s.io"))
        })
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    Ok(files)
}
