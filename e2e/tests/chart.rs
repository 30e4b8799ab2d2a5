//! The Helm chart, on the real local control plane and its node: static
//! checks of what it renders (lint, server-side dry run, promtool, checkov,
//! manifests/install.yaml current), a release's install, upgrade from the
//! previous chart version and uninstall, and two replicas failing over and
//! rolling without a webhook call failing. The operator runs as pods from
//! the image built here, under the chart's ServiceAccount.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use iotposture::api::IoTSystem;
use iotposture_e2e::{
    AuditLog, TestNamespace, WRITE_VERBS, client, helm, local_image, plane_dir, wait_until,
    workspace_root,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/iotposture")
}

fn kubectl() -> Command {
    let mut cmd = Command::new(workspace_root().join("target/testplane/bin/kubectl"));
    cmd.env("KUBECONFIG", plane_dir().join("kubeconfig"));
    cmd
}

/// Runs a command and returns its stdout; fails the test with its output otherwise.
fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs helm and returns stdout; fails the test with stderr otherwise.
fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("helm renders YAML");
    docs.retain(|d| !d.is_null());
    docs
}

/// Values for a release on the local node: the images built here, the API
/// server where pods reach it.
async fn local_values(client: &Client, dir: &Path) -> PathBuf {
    let slice: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    let slice = slice.get("kubernetes").await.unwrap();
    let port = slice.ports.unwrap()[0].port.unwrap();
    let address = slice.endpoints.unwrap()[0].addresses[0].clone();
    let operator = local_image("operator");
    let (repository, tag) = operator.rsplit_once(':').unwrap();
    let mut values = json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "gatewayImage": local_image("gateway"),
        "networkPolicy": {"apiServerCIDRs": [format!("{address}/32")], "apiServerPorts": [port]},
        "shutdownDelaySeconds": 3,
        // The tests' systems have no ports to probe.
        "probes": {"intervalSeconds": 0},
    });
    // The local tag names every build: the image's digest rolls the pods when it changes.
    let tar = workspace_root().join("target/images/operator.oci.tar");
    let sum = Command::new("sha256sum").arg(&tar).output().ok();
    let sum = sum.map(|s| String::from_utf8_lossy(&s.stdout).to_string());
    if let Some(digest) = sum.as_deref().and_then(|s| s.split_whitespace().next()) {
        values["podAnnotations"] = json!({"iotposture.dev/image-tar-sha256": digest});
    }
    let path = dir.join("local-values.yaml");
    std::fs::write(&path, serde_json::to_string(&values).unwrap()).unwrap();
    path
}

/// A fresh folder, by its canonical path (checkov skips paths through `..`).
fn temp_dir(name: &str) -> PathBuf {
    let dir = plane_dir().join("chart-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

#[tokio::test]
async fn the_chart_lints_renders_and_passes_static_checks() {
    let admin = client().await;
    iotposture_e2e::ensure_crds(&admin).await;
    let dir = temp_dir("static");
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let every = chart_dir().join("ci/every-feature-values.yaml");
    let every = every.to_str().unwrap();

    helm_ok(&["lint", "--strict", chart]);
    helm_ok(&["lint", "--strict", chart, "-f", every]);
    // A wrong type is refused by values.schema.json, naming the value.
    let out = helm(&["template", "t", chart, "--set", "replicaCount=two"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replicaCount"));

    // Both renders, dry-run on the real API server in a namespace of their own.
    let ns = TestNamespace::new("chart-dry").await;
    for (name, extra) in [("default", vec![]), ("every-feature", vec!["-f", every])] {
        let mut args = vec!["template", "dry", chart, "--namespace", &ns.name];
        args.extend(extra);
        let rendered = helm_ok(&args);
        let out = kubectl()
            .args(["apply", "--server-side", "--dry-run=server", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(rendered.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{name} render refused by the API server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kinds: BTreeSet<String> = documents(&rendered)
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect();
        if name == "every-feature" {
            for kind in [
                "ServiceMonitor",
                "PrometheusRule",
                "ConfigMap",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "Lease",
            ] {
                assert!(
                    kinds.contains(kind),
                    "{kind} missing from the every-feature render"
                );
            }
            let rule = documents(&rendered)
                .into_iter()
                .find(|d| d["kind"] == "PrometheusRule")
                .unwrap();
            let rules = dir.join("rendered.rules.yaml");
            std::fs::write(&rules, serde_json::to_string(&rule["spec"]).unwrap()).unwrap();
            let out = Command::new("promtool")
                .args(["check", "rules"])
                .arg(&rules)
                .output()
                .expect("promtool (Debian's prometheus package; make test installs it)");
            assert!(
                out.status.success(),
                "promtool check rules: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let dashboard = documents(&rendered)
                .into_iter()
                .find(|d| d["kind"] == "ConfigMap")
                .unwrap();
            let json: Value =
                serde_json::from_str(dashboard["data"]["iotposture.json"].as_str().unwrap())
                    .expect("the Grafana dashboard is JSON");
            assert!(json["panels"].as_array().unwrap().len() >= 6);
        }
        std::fs::write(dir.join(format!("{name}.yaml")), &rendered).unwrap();
    }
    ns.delete().await;

    // checkov on both renders: nothing fails beyond the skips the chart justifies.
    let checkov = workspace_root().join("target/tools/checkov/bin/checkov");
    let out = Command::new(&checkov)
        .arg("--config-file")
        .arg(chart_dir().join(".checkov.yaml"))
        .args(["--compact", "--quiet", "--skip-download", "-d"])
        .arg(&dir)
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: e2e/tools/build.sh installs it", checkov.display()));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("Failed checks: 0"),
        "checkov ({}): {report}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // manifests/install.yaml is the chart as rendered now.
    let mut render = Command::new("bash");
    render.arg(workspace_root().join("scripts/render-install.sh"));
    let rendered = run_ok(render);
    let committed =
        std::fs::read_to_string(workspace_root().join("manifests/install.yaml")).unwrap();
    assert!(
        committed == rendered,
        "manifests/install.yaml is stale: run `make install-yaml` and commit it"
    );
}

/// The chart as of the newest commit whose Chart.yaml names another version:
/// what a user upgrades from.
fn previous_chart(into: &Path) -> (String, PathBuf) {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let version_at = |commit: &str| {
        let text = git(&["show", &format!("{commit}:charts/iotposture/Chart.yaml")]);
        text.lines()
            .find_map(|l| l.strip_prefix("version:"))
            .map(|v| v.trim().to_string())
            .unwrap()
    };
    let current = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let current = current
        .lines()
        .find_map(|l| l.strip_prefix("version:"))
        .unwrap()
        .trim()
        .to_string();
    let commits = git(&["log", "--format=%H", "--", "charts/iotposture/Chart.yaml"]);
    let commit = commits
        .lines()
        .find(|c| version_at(c) != current)
        .unwrap_or_else(|| {
            panic!("no earlier chart version in the git history (a full clone is needed to test the upgrade from it)")
        })
        .to_string();
    let version = version_at(&commit);
    let archive = Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["archive", "--format=tar", &commit, "charts/iotposture"])
        .output()
        .unwrap();
    assert!(archive.status.success());
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        tar.stdin
            .take()
            .unwrap()
            .write_all(&archive.stdout)
            .unwrap();
    }
    assert!(tar.wait().unwrap().success());
    (version, into.join("charts/iotposture"))
}

/// An IoTSystem with one Sensor component and no ports (nothing to probe).
fn sensor_system(namespace: &str) -> IoTSystem {
    serde_json::from_value(json!({
        "apiVersion": "iotposture.dev/v1alpha1",
        "kind": "IoTSystem",
        "metadata": {"name": "plant", "namespace": namespace},
        "spec": {
            "mode": "Enforce",
            "components": [{
                "name": "sensor", "role": "Sensor",
                "selector": {"matchLabels": {"app": "sensor"}},
            }],
        },
    }))
    .unwrap()
}

/// Creates the test system (or finds it there) once the release's webhooks
/// answer: a Deployment is ready a moment before the proxy routes its
/// Service, and the IoTSystem webhook fails closed meanwhile.
async fn create_system(systems: &Api<IoTSystem>, namespace: &str) {
    wait_until("the release's webhooks admitting the IoTSystem", || async {
        match systems
            .create(&PostParams::default(), &sensor_system(namespace))
            .await
        {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(e) => {
                eprintln!("not admitted yet: {e}");
                None
            }
        }
    })
    .await;
}

async fn wait_system_ready(client: &Client, namespace: &str) {
    let api: Api<IoTSystem> = Api::namespaced(client.clone(), namespace);
    wait_until("the IoTSystem Ready", || async {
        let system = api.get("plant").await.ok()?;
        let conditions = system.status?.conditions;
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// Waits until the PolicyReport carries the checkpoint of the status: the
/// leader writes the report just after the status, so Ready alone may show
/// between the two writes.
async fn wait_report_follows_status(client: &Client, namespace: &str) {
    let systems: Api<IoTSystem> = Api::namespaced(client.clone(), namespace);
    let reports: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::discovery::ApiResource {
            group: "wgpolicyk8s.io".into(),
            version: "v1alpha2".into(),
            api_version: "wgpolicyk8s.io/v1alpha2".into(),
            kind: "PolicyReport".into(),
            plural: "policyreports".into(),
        },
    );
    wait_until("the PolicyReport written after the status", || async {
        let checkpoint = systems
            .get("plant")
            .await
            .ok()?
            .status?
            .decision_log?
            .checkpoint;
        let report = reports.get("iotposture-plant").await.ok()?;
        (report
            .metadata
            .annotations?
            .get("iotposture.dev/decision-checkpoint")?
            == &checkpoint)
            .then_some(())
    })
    .await;
}

async fn wait_rolled_out(client: &Client, namespace: &str, name: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    wait_until("the operator's Deployment rolled out", || async {
        let d = api.get(name).await.ok()?;
        let status = d.status?;
        let want = d.spec.replicas.unwrap_or(1);
        (status.observed_generation == d.metadata.generation
            && status.updated_replicas == Some(want)
            && status.ready_replicas == Some(want)
            && status.replicas == Some(want))
        .then_some(())
    })
    .await;
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if let Some(ns) = api.get_opt(name).await.unwrap() {
        if ns.metadata.deletion_timestamp.is_some() {
            wait_until("the old namespace gone", || async {
                api.get_opt(name).await.unwrap().is_none().then_some(())
            })
            .await;
        } else {
            return;
        }
    }
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
}

/// An administrator's client, a fresh folder, the values for a release here,
/// and the namespace of the release's systems.
async fn release_setup(name: &str, apps: &str) -> (Client, PathBuf, PathBuf) {
    let admin = client().await;
    iotposture_e2e::ensure_crds(&admin).await;
    let dir = temp_dir(name);
    let values = local_values(&admin, &dir).await;
    namespace(&admin, apps).await;
    (admin, dir, values)
}

#[tokio::test]
async fn install_upgrade_from_the_previous_version_and_uninstall() {
    let apps = "chart-life-apps";
    let (admin, dir, values) = release_setup("lifecycle", apps).await;
    let values = values.to_str().unwrap();
    let (previous, old_chart) = previous_chart(&dir);
    let (release, ns) = ("iotposture-life", "chart-life");
    let _ = helm(&["uninstall", release, "--namespace", ns, "--wait"]);

    helm_ok(&[
        "install",
        release,
        old_chart.to_str().unwrap(),
        "--namespace",
        ns,
        "--create-namespace",
        "-f",
        values,
        "--set",
        &format!("watchNamespace={apps}"),
        "--set",
        "replicaCount=1",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let systems: Api<IoTSystem> = Api::namespaced(admin.clone(), apps);
    let _ = systems.delete("plant", &DeleteParams::default()).await;
    wait_until("no system left from an earlier run", || async {
        systems.get_opt("plant").await.ok()?.is_none().then_some(())
    })
    .await;
    create_system(&systems, apps).await;
    wait_system_ready(&admin, apps).await;

    let current = chart_dir();
    helm_ok(&[
        "upgrade",
        release,
        current.to_str().unwrap(),
        "--namespace",
        ns,
        "-f",
        values,
        "--set",
        &format!("watchNamespace={apps}"),
        "--wait",
        "--timeout",
        "180s",
    ]);
    wait_rolled_out(&admin, ns, release).await;
    let status = helm_ok(&["status", release, "--namespace", ns, "-o", "json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["version"], 2, "upgraded from chart {previous}");
    assert_eq!(status["info"]["status"], "deployed");
    // The upgraded release still judges and admits: the system stays Ready and a new one is reviewed.
    wait_system_ready(&admin, apps).await;
    // Refused by the webhook itself, naming the item (an unreachable webhook
    // would refuse too, for the wrong reason: retried until it answers).
    let ssh: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ssh", "labels": {"app": "sensor"}},
        "spec": {"containers": [{"name": "ssh", "image": local_image("toolbox"),
            "ports": [{"containerPort": 22}]}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), apps);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_until(
        "the upgraded webhooks refusing port 22 in Enforce",
        || async {
            match pods.create(&dry, &ssh).await {
                Err(kube::Error::Api(e)) if e.message.contains("IV-2") => Some(()),
                other => {
                    eprintln!("not refused by the webhook yet: {other:?}");
                    None
                }
            }
        },
    )
    .await;

    helm_ok(&[
        "uninstall",
        release,
        "--namespace",
        ns,
        "--wait",
        "--timeout",
        "120s",
    ]);
    // Nothing of the release stays: namespaced objects, its cluster-wide RBAC,
    // and (through their owner, the ClusterRole) the webhook configurations.
    wait_until("every object of the release gone", || async {
        let names = |args: &[&str]| {
            let out = kubectl().args(args).output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let selector = format!("app.kubernetes.io/instance={release}");
        let mut left = Vec::new();
        for kind in [
            "deployments",
            "replicasets",
            "pods",
            "services",
            "secrets",
            "serviceaccounts",
            "roles",
            "rolebindings",
            "networkpolicies",
            "poddisruptionbudgets",
            "leases",
            "configmaps",
        ] {
            left.extend(names(&[
                "get", kind, "-n", ns, "-o", "name", "-l", &selector,
            ]));
        }
        for kind in [
            "clusterroles",
            "clusterrolebindings",
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
        ] {
            left.extend(names(&[
                "get",
                kind,
                release,
                "-o",
                "name",
                "--ignore-not-found",
            ]));
        }
        if !left.is_empty() {
            eprintln!("left behind so far: {left:?}");
        }
        left.is_empty().then_some(())
    })
    .await;
    // The CRDs stay, and so do the IoTSystems and what they own, still in force.
    kubectl()
        .args(["get", "crd", "iotsystems.iotposture.dev"])
        .output()
        .unwrap()
        .status
        .success()
        .then_some(())
        .expect("CRD kept");
    assert!(
        systems.get_opt("plant").await.unwrap().is_some(),
        "IoTSystems outlive the operator"
    );
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(admin.clone(), apps);
    assert!(
        !policies
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    systems
        .delete("plant", &DeleteParams::default())
        .await
        .unwrap();
}

/// The host process of a pod's container: found by the pod's UID in its cgroup.
fn host_pid_of(pod: &Pod) -> Option<i32> {
    let uid = pod.metadata.uid.clone()?;
    let underscored = uid.replace('-', "_");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmdline.starts_with(b"/usr/bin/iotposture\0run") {
            continue;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cgroup.contains(&uid) || cgroup.contains(&underscored) {
            return Some(pid);
        }
    }
    None
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get(name).await.ok()?.spec?.holder_identity
}

#[tokio::test]
async fn two_replicas_fail_over_within_15s_and_keep_answering_through_a_rollout() {
    let (release, ns, apps) = ("iotposture-ha", "chart-ha", "chart-ha-apps");
    let (admin, _, values) = release_setup("ha", apps).await;
    helm_ok(&[
        "upgrade",
        "--install",
        release,
        chart_dir().to_str().unwrap(),
        "--namespace",
        ns,
        "--create-namespace",
        "-f",
        values.to_str().unwrap(),
        "--set",
        &format!("watchNamespace={apps}"),
        "--set",
        "replicaCount=2",
        "--wait",
        "--timeout",
        "180s",
    ]);
    wait_rolled_out(&admin, ns, release).await;
    let systems: Api<IoTSystem> = Api::namespaced(admin.clone(), apps);
    create_system(&systems, apps).await;
    wait_system_ready(&admin, apps).await;
    wait_report_follows_status(&admin, apps).await;

    // Kill the leader's process outright (SIGKILL, no lease release).
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let lease = format!("{release}-leader");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    // A leader among the running pods (not one still stopping after the rollout).
    let leader = wait_until("a leader among the running pods", || async {
        let holder = holder(&leases, &lease).await?;
        let pod = pods.get(holder.split('_').next()?).await.ok()?;
        pod.metadata.deletion_timestamp.is_none().then_some(holder)
    })
    .await;
    // The holder is `<pod>_<process>`.
    let leader_pod = pods.get(leader.split('_').next().unwrap()).await.unwrap();
    let pid = host_pid_of(&leader_pod).expect("the leader's process on this host");
    // Clusters other than this project's (make e2e-kind) have no audit log here.
    let audit = plane_dir()
        .join("logs/audit.log")
        .exists()
        .then(AuditLog::default);
    let mark = audit.as_ref().map(AuditLog::mark);
    let killed = Instant::now();
    assert_eq!(unsafe { libc_kill(pid, 9) }, 0, "kill -9 {pid}");
    let successor = wait_until("another replica leads", || async {
        holder(&leases, &lease).await.filter(|h| *h != leader)
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("leader {leader} killed; {successor} leads after {takeover:?}");
    assert!(
        takeover <= Duration::from_secs(15),
        "takeover took {takeover:?}"
    );

    // The new leader finds everything in place: it writes nothing (the Lease aside).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let account = format!("system:serviceaccount:{ns}:{release}");
    let writes: Vec<String> = audit
        .iter()
        .zip(mark)
        .flat_map(|(audit, mark)| audit.entries_since(mark))
        .filter(|e| e["user"]["username"] == account.as_str())
        .filter(|e| WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default()))
        .filter(|e| e["objectRef"]["resource"] != "leases")
        .map(|e| {
            format!(
                "{} {} {}/{}",
                e["verb"],
                e["objectRef"]["resource"],
                e["objectRef"]["namespace"],
                e["objectRef"]["name"]
            )
        })
        .collect();
    assert!(writes.is_empty(), "writes after the failover: {writes:?}");
    if audit.is_none() {
        eprintln!("no audit log for this cluster: the writes after the failover were not checked");
    }
    wait_system_ready(&admin, apps).await;
    // One decision record key across leaders: the first leader stored it in
    // the chart's Secret, and the system's record names it.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(admin.clone(), ns);
    let key_secret = secrets
        .get(&format!("{release}-decision-record"))
        .await
        .unwrap();
    assert!(
        key_secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("ed25519.pkcs8")),
        "the leader stored the signing key"
    );
    let vkey = key_secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("iotposture.dev/verifier-key"))
        .cloned()
        .expect("the verifier key beside it");
    let log = systems
        .get("plant")
        .await
        .unwrap()
        .status
        .unwrap()
        .decision_log;
    assert_eq!(
        log.map(|l| l.key),
        Some(vkey),
        "the record is signed with the stored key"
    );
    wait_rolled_out(&admin, ns, release).await;

    // A rollout: component pods keep being admitted (and hardened) throughout.
    let apps_pods: Api<Pod> = Api::namespaced(admin.clone(), apps);
    let sensor: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "sensor-", "labels": {"app": "sensor"}},
        "spec": {"containers": [{"name": "sensor", "image": local_image("toolbox")}]},
    }))
    .unwrap();
    let mut restart = kubectl();
    restart.args([
        "rollout",
        "restart",
        &format!("deployment/{release}"),
        "-n",
        ns,
    ]);
    run_ok(restart);
    let started = Instant::now();
    let (mut admitted, mut failures) = (0, Vec::new());
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    loop {
        match apps_pods.create(&dry, &sensor).await {
            Ok(pod) => {
                let hardened = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.security_context.as_ref())
                    .and_then(|c| c.run_as_non_root);
                if hardened == Some(true) {
                    admitted += 1;
                } else {
                    failures.push("admitted without hardening".to_string());
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
        let d = deployments.get(release).await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        let done = s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(2)
            && s.ready_replicas == Some(2)
            && s.replicas == Some(2);
        if done && started.elapsed() > Duration::from_secs(5) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the rollout did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{admitted} component pods admitted during the rollout, {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "webhook calls failed during the rollout: {failures:?}"
    );
    // At least 5 s of admissions, each a round trip through the API server
    // and the webhook (about 16 under a loaded machine, 30 and more idle).
    assert!(
        admitted >= 10,
        "only {admitted} admissions during the rollout"
    );

    // The shared certificate spoiled: the leader issues a new one, and the
    // webhook configurations trust the new CA and the previous one while
    // the replicas switch; admission goes on.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(admin.clone(), ns);
    let secret_name = format!("{release}-webhook-tls");
    let before = secrets.get(&secret_name).await.unwrap();
    let old_ca = before.data.as_ref().unwrap()["ca.crt"].0.clone();
    secrets
        .patch(
            &secret_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": {"tls.key": "anVuaw=="}})),
        )
        .await
        .unwrap();
    let configs: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(admin.clone());
    wait_until("a new certificate, both CAs trusted", || async {
        let secret = secrets.get(&secret_name).await.ok()?;
        let data = secret.data?;
        let new_ca = data.get("ca.crt")?.0.clone();
        let previous = data.get("previous-ca.crt")?.0.clone();
        let bundle = configs.get(release).await.ok()?.webhooks?[0]
            .client_config
            .ca_bundle
            .clone()?
            .0;
        let has = |pem: &[u8]| bundle.windows(pem.len()).any(|w| w == pem);
        (new_ca != old_ca && previous == old_ca && has(&new_ca) && has(&old_ca)).then_some(())
    })
    .await;
    wait_until(
        "component pods admitted with the new certificate",
        || async { apps_pods.create(&dry, &sensor).await.ok().map(|_| ()) },
    )
    .await;
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The operator's accounts in this plane: the suite's (chart RBAC, release
/// iotposture-e2e) and the chart tests' releases.
const OPERATOR_ACCOUNTS: [&str; 3] = [
    "system:serviceaccount:iotposture-e2e:iotposture-e2e",
    "system:serviceaccount:chart-ha:iotposture-ha",
    "system:serviceaccount:chart-life:iotposture-life",
];

/// What one audited request used: (group, resource[/subresource], verb, name),
/// one or two of them.
fn used(entry: &Value) -> Vec<(String, String, String, String)> {
    used_one(entry)
        .into_iter()
        .flat_map(|(g, r, v, n)| {
            // A server-side apply that made the object was authorized as a create too.
            let created = v == "patch" && entry["responseStatus"]["code"] == 201;
            let mut all = vec![(g.clone(), r.clone(), v, n.clone())];
            if created {
                all.push((g, r, "create".into(), n));
            }
            all
        })
        .collect()
}

fn used_one(entry: &Value) -> Option<(String, String, String, String)> {
    let object = &entry["objectRef"];
    let resource = object["resource"].as_str()?;
    let resource = match object["subresource"].as_str() {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    let verb = entry["verb"].as_str()?.to_string();
    Some((
        object["apiGroup"].as_str().unwrap_or_default().to_string(),
        resource,
        verb,
        object["name"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Run by `make test` after every other test (it reads what they made the
/// operator do): every verb on every resource the chart grants was used by
/// the operator, and nothing it asked for was refused.
#[tokio::test]
#[ignore = "reads the requests of the whole suite: make test runs it last"]
async fn the_operator_roles_grant_only_what_the_operator_uses() {
    let audit = AuditLog::default();
    // make test sets the time its tests began: requests of earlier runs on
    // the same plane (still in its log) would hide what this code no longer asks.
    let since = std::env::var("IOTPOSTURE_AUDIT_SINCE").unwrap_or_default();
    let entries: Vec<Value> = audit
        .entries_since(0)
        .into_iter()
        .filter(|e| OPERATOR_ACCOUNTS.contains(&e["user"]["username"].as_str().unwrap_or_default()))
        .filter(|e| e["requestReceivedTimestamp"].as_str().unwrap_or_default() >= since.as_str())
        .filter(|e| e["stage"] == "ResponseComplete" || e["stage"] == "ResponseStarted")
        .collect();
    assert!(
        entries.len() > 1000,
        "only {} requests of the operator in the audit log: run the whole suite first (make test does)",
        entries.len()
    );
    // An uninstall deletes the release's bindings while its pods are still
    // stopping: what those pods are refused from then on is not a gap.
    let all = audit.entries_since(0);
    let unbound_at = |account: &str| -> Option<String> {
        let (namespace, name) = account
            .strip_prefix("system:serviceaccount:")?
            .split_once(':')?;
        all.iter()
            .filter(|e| e["verb"] == "delete")
            .filter(|e| {
                let o = &e["objectRef"];
                o["name"] == name
                    && (o["resource"] == "clusterrolebindings"
                        || (o["resource"] == "rolebindings" && o["namespace"] == namespace))
            })
            .filter_map(|e| e["requestReceivedTimestamp"].as_str().map(String::from))
            .min()
    };
    // The upgrade test runs this operator under the previous chart's roles
    // first (it must go on without what they lack): only what it was refused
    // under the chart's current roles, written last, is a gap.
    let role_written_at = |account: &str| -> Option<String> {
        let name = account.rsplit(':').next()?;
        all.iter()
            .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update" | "patch")))
            .filter(|e| {
                e["objectRef"]["resource"] == "clusterroles" && e["objectRef"]["name"] == name
            })
            .filter_map(|e| e["requestReceivedTimestamp"].as_str().map(String::from))
            .max()
    };
    let mut windows: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for account in OPERATOR_ACCOUNTS {
        windows.insert(
            account.to_string(),
            (role_written_at(account), unbound_at(account)),
        );
    }
    let refused: BTreeSet<String> = entries
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .filter(|e| {
            let at = e["requestReceivedTimestamp"].as_str().unwrap_or_default();
            let (written, unbound) = windows
                .get(e["user"]["username"].as_str().unwrap_or_default())
                .cloned()
                .unwrap_or_default();
            written.is_none_or(|w| at >= w.as_str()) && unbound.is_none_or(|u| at < u.as_str())
        })
        .flat_map(used)
        .map(|(g, r, v, n)| format!("{v} {g}/{r} {n}"))
        .collect();
    let uses: BTreeSet<(String, String, String, String)> = entries
        .iter()
        .filter(|e| e["responseStatus"]["code"] != 403)
        .flat_map(used)
        .collect();
    let used_any = |group: &str, resource: &str, verb: &str, names: &Option<Vec<String>>| {
        uses.iter().any(|(g, r, v, n)| {
            g == group
                && r == resource
                && v == verb
                && names.as_ref().is_none_or(|names| names.contains(n))
        })
    };

    let rendered = helm_ok(&[
        "template",
        "iotposture-e2e",
        chart_dir().to_str().unwrap(),
        "--namespace",
        "iotposture-e2e",
        // As the tests' operator account was bound (operator_client).
        "--set",
        "logShipping.enabled=true",
        "--set",
        "nodeAgent.enabled=true",
        "--show-only",
        "templates/rbac.yaml",
    ]);
    let mut unused = Vec::new();
    let mut rules_seen = 0;
    for role in documents(&rendered)
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in role["rules"].as_array().unwrap() {
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            let names = rule.get("resourceNames").map(|_| strings("resourceNames"));
            // The chart's names are those of release iotposture-e2e; the
            // chart tests' releases use the same templates under their names.
            let names = names.map(|names| {
                names
                    .iter()
                    .flat_map(|n| {
                        ["iotposture-e2e", "iotposture-ha", "iotposture-life"]
                            .map(|release| n.replace("iotposture-e2e", release))
                    })
                    .collect::<Vec<_>>()
            });
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        rules_seen += 1;
                        let used = match verb.as_str() {
                            // Not requests but checks on writing Roles and
                            // RoleBindings: used when those were written.
                            "escalate" => ["patch", "update", "create"]
                                .iter()
                                .any(|v| used_any(&group, "roles", v, &None)),
                            "bind" => ["patch", "update", "create"]
                                .iter()
                                .any(|v| used_any(&group, "rolebindings", v, &None)),
                            // A system's status is read back only when its
                            // write conflicts (the cache behind the server),
                            // which a test run rarely meets: needed wherever
                            // the status is written.
                            "get" if resource == "iotsystems/status" => {
                                used_any(&group, &resource, "patch", &names)
                            }
                            _ => used_any(&group, &resource, &verb, &names),
                        };
                        if !used {
                            unused.push(format!(
                                "{} {verb} {group}/{resource}{}",
                                role["kind"].as_str().unwrap(),
                                names
                                    .as_ref()
                                    .map(|n| format!(" {n:?}"))
                                    .unwrap_or_default()
                            ));
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{} requests of the operator, {rules_seen} granted permissions checked",
        entries.len()
    );
    assert!(
        refused.is_empty(),
        "the operator was refused (the chart's roles lack these): {refused:#?}"
    );
    assert!(
        unused.is_empty(),
        "granted but never used by the operator: {unused:#?}"
    );
}
