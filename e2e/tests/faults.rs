//! Faults, on a control plane of this test's own (restarting the API server
//! would disturb every other test): kube-apiserver and etcd restarted while
//! systems are being reconciled, the operator killed with SIGKILL in the
//! middle of applying and started again, and a thousand invalid systems
//! beside ten valid ones. Each ends with nothing lost or duplicated: every
//! child there once, none deleted, no object written twice (the API
//! server's audit log), and a quiet operator afterwards.
//!
//! One test, run in order: the faults share the plane and must not overlap.
use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt;
use iotposture::api::{IoTSystem, Subject, SubjectKind};
use iotposture_e2e::{
    AuditLog, RunningOperator, TestNamespace, controlplane::Plane, http_get, use_plane,
    workspace_root,
};
use kube::{Api, ResourceExt, api::PostParams};

/// Stops the plane however the test ends.
struct OwnPlane(Plane);

impl Drop for OwnPlane {
    fn drop(&mut self) {
        let _ = self.0.down();
    }
}

fn system(name: &str) -> IoTSystem {
    let yaml = include_str!("../../operator/tests/fixtures/factory.yaml");
    let mut s: IoTSystem = serde_saphyr::from_str(yaml).unwrap();
    s.metadata = Default::default();
    s.metadata.name = Some(name.into());
    // Selectors of its own, so systems never contest pods.
    for c in &mut s.spec.components {
        c.selector.match_labels = Some([("app".to_string(), format!("{name}-{}", c.name))].into());
        c.selector.match_expressions = None;
    }
    s
}

async fn create_systems(ns: &TestNamespace, names: &[String]) {
    let api: Api<IoTSystem> = ns.api();
    futures::stream::iter(names)
        .map(|n| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &system(n)).await }
        })
        .buffer_unordered(16)
        .for_each(|r| {
            r.expect("created");
            futures::future::ready(())
        })
        .await;
}

/// Waits until every named system is Ready=True for its generation.
async fn all_ready(ns: &TestNamespace, names: &[String], limit: Duration) -> Duration {
    let api: Api<IoTSystem> = ns.api();
    let start = Instant::now();
    loop {
        let list = api.list(&Default::default()).await;
        let ready = list
            .map(|l| {
                l.items
                    .iter()
                    .filter(|s| names.contains(&s.name_any()))
                    .filter(|s| {
                        s.status.as_ref().is_some_and(|st| {
                            st.observed_generation == s.metadata.generation
                                && st
                                    .conditions
                                    .iter()
                                    .any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        if ready == names.len() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{ready} of {} systems Ready after {limit:?}",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Successful writes of the operator's children in the namespace since
/// `mark`, per `resource/name`; and the deletes among them.
fn child_writes(audit: &AuditLog, mark: u64, ns: &str) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut writes = BTreeMap::new();
    let mut deletes = Vec::new();
    for e in audit.writes_since(mark, ns) {
        let resource = e["objectRef"]["resource"].as_str().unwrap_or_default();
        if matches!(resource, "iotsystems" | "events" | "namespaces")
            || e["objectRef"].get("subresource").is_some()
        {
            continue;
        }
        let ok = e["responseStatus"]["code"]
            .as_u64()
            .is_some_and(|c| (200..300).contains(&c));
        if !ok {
            continue;
        }
        let key = format!(
            "{resource}/{}",
            e["objectRef"]["name"].as_str().unwrap_or_default()
        );
        if e["verb"] == "delete" {
            deletes.push(key.clone());
        }
        *writes.entry(key).or_insert(0) += 1;
    }
    (writes, deletes)
}

/// No child deleted, none written twice, and (from the API) every system's
/// children there. A write cut off by a kill may be logged with an error
/// status though it was stored: the objects themselves are the count.
async fn nothing_lost_or_duplicated(
    audit: &AuditLog,
    mark: u64,
    ns: &TestNamespace,
    systems: usize,
    what: &str,
) {
    let (writes, deletes) = child_writes(audit, mark, &ns.name);
    assert!(deletes.is_empty(), "{what}: deleted {deletes:?}");
    // The PolicyReport is an account, not a child kept in force: it carries
    // the decision record's latest checkpoint, which grows when a retry
    // completes an apply the fault cut short, so it may be written again.
    let twice: Vec<_> = writes
        .iter()
        .filter(|(key, n)| **n > 1 && !key.starts_with("policyreports/"))
        .collect();
    assert!(
        twice.is_empty(),
        "{what}: written more than once: {twice:?}"
    );
    // Per system: 3 ServiceAccounts, 3 Roles, 2 RoleBindings, 6
    // NetworkPolicies, the gateway ConfigMap, the alert rules (a PrometheusRule:
    // the plane serves its CRD) and the PolicyReport.
    assert_eq!(children(ns).await, systems * 17, "{what}: children");
}

/// Objects labelled as ours in the namespace, by kind (from the API).
async fn children(ns: &TestNamespace) -> usize {
    let (ok, out, err) = ns
        .kubectl(
            &[
                "get",
                "serviceaccounts,roles,rolebindings,networkpolicies,configmaps,prometheusrules,policyreports",
                "-l",
                "app.kubernetes.io/managed-by=iotposture",
                "-o",
                "name",
            ],
            "",
        )
        .await;
    assert!(ok, "{err}");
    out.lines().count()
}

async fn quiet(operator: &RunningOperator, what: &str) {
    let writes = || {
        operator
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("iotposture_api_writes_total"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // A write that failed during the fault is retried after its backoff, so
    // Ready systems may still owe one write: the operator must fall quiet
    // (3 s without a write) soon, not at once.
    let start = Instant::now();
    let mut before = writes();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = writes();
        if now == before {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "{what}: the operator kept writing\n  before: {before:?}\n  after: {now:?}"
        );
        before = now;
    }
}

async fn restart_mid_reconcile(plane: &Plane, process: &'static str) {
    let ns = TestNamespace::new(&format!("fault-{}", &process[..4])).await;
    let operator = RunningOperator::start(&ns).await;
    let audit = AuditLog::default();
    let mark = audit.mark();
    let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    create_systems(&ns, &names).await;
    let restarted = Instant::now();
    let plane = plane.clone();
    tokio::task::spawn_blocking(move || plane.restart(process))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("restarting {process}: {e}"));
    let back = restarted.elapsed();
    let converged = all_ready(&ns, &names, Duration::from_secs(180)).await;
    eprintln!(
        "figure: {process} restarted mid-reconcile: back in {back:.1?}, 10 systems Ready {:.1?} after the restart began",
        back + converged
    );
    quiet(&operator, process).await;
    nothing_lost_or_duplicated(&audit, mark, &ns, 10, process).await;
    operator.stop().await;
    ns.delete().await;
}

/// The operator as a process of its own; killed when dropped, so a failing
/// test leaves none behind.
struct OperatorProcess(Child);

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The operator as a process, with the chart's permissions (its ServiceAccount's kubeconfig).
fn start_operator_process(
    kubeconfig: &std::path::Path,
    ns: &str,
    http: std::net::SocketAddr,
) -> OperatorProcess {
    let bin = workspace_root().join("target/debug/iotposture");
    assert!(
        bin.exists(),
        "{} is missing: cargo test --workspace builds it",
        bin.display()
    );
    Command::new(bin)
        .args(["run", "--namespace", ns, "--trust-unreviewed-access"])
        .args(["--probe-interval-seconds", "0", "--http-addr"])
        .arg(http.to_string())
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(OperatorProcess)
        .expect("the operator starts")
}

async fn wait_http_ready(http: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = tokio::time::timeout(Duration::from_secs(2), async {
            match tokio::net::TcpStream::connect(http).await {
                Ok(_) => http_get(http, "/readyz").await.0,
                Err(_) => 0,
            }
        })
        .await
        .unwrap_or(0);
        if answer == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the operator process never got ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn operator_killed_mid_apply() {
    let ns = TestNamespace::new("fault-kill").await;
    let http: std::net::SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kubeconfig = iotposture_e2e::operator_kubeconfig().await;
    let mut first = start_operator_process(&kubeconfig, &ns.name, http);
    wait_http_ready(http).await;
    let audit = AuditLog::default();
    let mark = audit.mark();
    let names: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    create_systems(&ns, &names).await;
    // Killed once it has begun and before it is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    let written_at_kill = loop {
        let written = child_writes(&audit, mark, &ns.name).0.len();
        if written >= 10 {
            break written;
        }
        assert!(Instant::now() < deadline, "the operator wrote nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(
        written_at_kill < names.len() * 17,
        "killed after it had finished ({written_at_kill} writes): not mid-apply"
    );
    let restarted = Instant::now();
    let second = start_operator_process(&kubeconfig, &ns.name, http);
    let converged = all_ready(&ns, &names, Duration::from_secs(180)).await;
    eprintln!(
        "figure: operator SIGKILLed after {written_at_kill} of {} child writes; 20 systems Ready {:.1?} after the restart",
        names.len() * 17,
        converged.max(restarted.elapsed())
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = child_writes(&audit, mark, &ns.name)
        .0
        .values()
        .sum::<usize>();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        child_writes(&audit, mark, &ns.name)
            .0
            .values()
            .sum::<usize>(),
        settled,
        "the restarted operator kept writing"
    );
    nothing_lost_or_duplicated(&audit, mark, &ns, 20, "SIGKILL").await;
    drop(second);
    ns.delete().await;
}

async fn invalid_systems_beside_valid_ones() {
    let ns = TestNamespace::new("fault-flood").await;
    let operator = RunningOperator::start(&ns).await;
    // Invalid for the controller (the schema admits them): a group that means
    // every user may not be bound.
    let api: Api<IoTSystem> = ns.api();
    let started = Instant::now();
    futures::stream::iter(0..1000)
        .map(|i| {
            let api = api.clone();
            async move {
                let mut s = system(&format!("bad-{i}"));
                s.spec.access.admins = vec![Subject {
                    kind: SubjectKind::Group,
                    name: "system:authenticated".into(),
                    namespace: None,
                }];
                api.create(&PostParams::default(), &s).await
            }
        })
        .buffer_unordered(32)
        .for_each(|r| {
            r.expect("created");
            futures::future::ready(())
        })
        .await;
    let created = started.elapsed();
    let valid: Vec<String> = (0..10).map(|i| format!("good-{i}")).collect();
    create_systems(&ns, &valid).await;
    let valid_ready = all_ready(&ns, &valid, Duration::from_secs(300)).await;
    // Every invalid one says why.
    let deadline = Instant::now() + Duration::from_secs(300);
    let refused = loop {
        let refused = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.conditions
                        .iter()
                        .any(|c| c.reason == "UnbindableSubject" && c.status == "False")
                })
            })
            .count();
        if refused == 1000 {
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "{refused} of 1000 refused");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "figure: 1000 invalid systems created in {created:.1?}; the 10 valid ones created after them Ready {valid_ready:.1?} later; all 1000 refused with a reason {refused:.1?} after the first was created"
    );
    quiet(&operator, "flood").await;
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_end_with_nothing_lost_or_duplicated() {
    let root = workspace_root();
    let plane = Plane::new(
        root.join("target/testplane-faults"),
        root.join("target/testplane/bin"),
    );
    let own = OwnPlane(plane.clone());
    {
        let plane = plane.clone();
        tokio::task::spawn_blocking(move || plane.up())
            .await
            .unwrap()
            .expect("the fault tests' own control plane");
    }
    use_plane(plane.dir.clone());

    restart_mid_reconcile(&plane, "kube-apiserver").await;
    restart_mid_reconcile(&plane, "etcd").await;
    operator_killed_mid_apply().await;
    invalid_systems_beside_valid_ones().await;
    drop(own);
}
