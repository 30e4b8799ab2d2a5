//! Which nodes are a system's edge nodes, and which of their agents'
//! reports can be trusted: a NodePosture counts only while the agent pod
//! that wrote it (its uid) runs on that node and is ready, since the object
//! carries no time of its own.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::{ResourceExt, core::SelectorExt, runtime::reflector::ObjectRef};

use super::cache::EdgeCaches;
use crate::{
    api::nodeposture::{NodeFacts, NodePosture},
    checklist::{Snapshot, component_pods, edge_nodes::EdgeNode},
    controller::validate::ValidatedSystem,
};

/// The system's edge nodes with their trusted facts; None when it declares none.
pub fn resolve(
    valid: &ValidatedSystem,
    snapshot: &Snapshot,
    edge: Option<&EdgeCaches>,
) -> Option<Result<Vec<EdgeNode>, String>> {
    let declared = valid.edge_nodes.as_ref()?;
    let Some(edge) = edge else {
        return Some(Err(
            "the operator runs without --edge-namespace (chart: nodeAgent.enabled), so no node agent's report is read".into(),
        ));
    };
    let names: BTreeSet<String> = match &declared.selector {
        Some(selector) => edge
            .nodes
            .state()
            .iter()
            .filter(|n| selector.matches(n.labels()))
            .map(|n| n.name_any())
            .collect(),
        None => component_pods(valid, snapshot)
            .iter()
            .flat_map(|c| c.pods.iter())
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect(),
    };
    // The agent pods by node, once, rather than a scan of all per node.
    let mut agents: BTreeMap<String, Vec<std::sync::Arc<Pod>>> = BTreeMap::new();
    for pod in edge.agents.state() {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            agents.entry(node).or_default().push(pod);
        }
    }
    Some(Ok(names
        .into_iter()
        .map(|name| {
            let posture = edge
                .postures
                .get(&ObjectRef::new(&name).within(&edge.namespace));
            let on_node = agents.get(&name).map(Vec::as_slice).unwrap_or_default();
            EdgeNode {
                facts: trusted(&name, posture.as_deref(), on_node),
                name,
            }
        })
        .collect()))
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The facts of `node`'s report, or why they are not to be trusted.
pub fn trusted(
    node: &str,
    posture: Option<&NodePosture>,
    agents: &[std::sync::Arc<Pod>],
) -> Result<NodeFacts, String> {
    let on_node: BTreeMap<String, &Pod> = agents
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .map(|p| (p.uid().unwrap_or_default(), p.as_ref()))
        .collect();
    let Some(posture) = posture else {
        return Err(if on_node.is_empty() {
            "no node agent runs there".into()
        } else {
            "its node agent has not reported yet".into()
        });
    };
    if posture.spec.node != node {
        return Err(format!("its report names node {:?}", posture.spec.node));
    }
    match on_node.get(&posture.spec.reporter.uid) {
        None => Err(format!(
            "the agent pod that reported ({}) no longer runs there: the report is stale",
            posture.spec.reporter.pod
        )),
        Some(pod) if !ready(pod) => Err(format!(
            "the agent pod {} is not ready: its last report did not get through",
            posture.spec.reporter.pod
        )),
        Some(_) => Ok(posture.spec.facts.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::nodeposture::{NodePostureSpec, Reporter};
    use std::sync::Arc;

    fn agent(uid: &str, node: &str, is_ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("agent-{uid}"), "uid": uid},
                "spec": {"nodeName": node, "containers": []},
                "status": {"conditions": [{"type": "Ready", "status": if is_ready {"True"} else {"False"}}]},
            }))
            .unwrap(),
        )
    }

    fn report(node: &str, uid: &str) -> NodePosture {
        NodePosture::new(
            node,
            NodePostureSpec {
                node: node.into(),
                reporter: Reporter {
                    pod: format!("agent-{uid}"),
                    uid: uid.into(),
                },
                facts: NodeFacts {
                    sshd_ports: Some(vec![22]),
                    ..NodeFacts::default()
                },
            },
        )
    }

    #[test]
    fn a_report_counts_while_its_writer_runs_ready_on_that_node() {
        let r = report("edge-1", "u1");
        assert!(trusted("edge-1", Some(&r), &[agent("u1", "edge-1", true)]).is_ok());
        let stale = trusted("edge-1", Some(&r), &[agent("u2", "edge-1", true)]).unwrap_err();
        assert!(stale.contains("stale"), "{stale}");
        let unready = trusted("edge-1", Some(&r), &[agent("u1", "edge-1", false)]).unwrap_err();
        assert!(unready.contains("not ready"), "{unready}");
        // The same pod uid on another node is not this node's agent.
        assert!(trusted("edge-1", Some(&r), &[agent("u1", "edge-2", true)]).is_err());
        assert_eq!(
            trusted("edge-1", None, &[]).unwrap_err(),
            "no node agent runs there"
        );
        assert!(
            trusted("edge-1", None, &[agent("u1", "edge-1", true)])
                .unwrap_err()
                .contains("not reported")
        );
        let elsewhere = report("edge-2", "u1");
        assert!(trusted("edge-1", Some(&elsewhere), &[agent("u1", "edge-1", true)]).is_err());
    }
}
