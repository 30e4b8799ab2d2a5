//! The node side of IV-1…IV-4 and VI-1: each of the system's edge nodes
//! judged from its agent's facts (`edge::judge`), folded into one verdict
//! that names the node and the fact that decided.

use super::{Scope, evidence::Check};
use crate::api::Verdict;

/// One edge node of the system: its agent's facts, or why they cannot be
/// trusted (no agent report, or the agent that wrote it is gone).
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeNode {
    pub name: String,
    pub facts: Result<crate::api::nodeposture::NodeFacts, String>,
}

/// The node-side verdict of `item` for the system, or None when the system
/// declares no edge nodes.
pub fn node_side(s: &Scope<'_>, item: &str) -> Option<Check> {
    let declared = s.system.edge_nodes.as_ref()?;
    let nodes = match &s.snapshot.edge_nodes {
        None => {
            return Some(Check::unknown(
                "edge nodes are judged by the running operator from its node agents; audit a host offline with `iotposture node-agent --once`",
            ));
        }
        Some(Err(why)) => return Some(Check::unknown(why.clone())),
        Some(Ok(nodes)) => nodes,
    };
    if nodes.is_empty() {
        return Some(Check::unknown(if declared.selector.is_some() {
            "spec.edgeNodes.nodeSelector matches no node"
        } else {
            "no component pod runs on a node yet"
        }));
    }
    let mut failed = Vec::new();
    let mut unknown = Vec::new();
    let mut passed = Vec::new();
    for node in nodes {
        match &node.facts {
            Err(why) => unknown.push(format!("node {}: {why}", node.name)),
            Ok(facts) => {
                let check = crate::edge::judge::judge_item(item, facts, &declared.expect)
                    .unwrap_or_else(|| Check::unknown(format!("{item} is not judged on nodes")));
                let line = format!("node {}: {}", node.name, check.evidence);
                match check.verdict {
                    Verdict::Fail => failed.push(line),
                    Verdict::Pass => passed.push(line),
                    _ => unknown.push(line),
                }
            }
        }
    }
    Some(if !failed.is_empty() {
        Check::fail(failed.join("; "))
    } else if !unknown.is_empty() {
        Check::unknown(unknown.join("; "))
    } else {
        Check::pass(passed.join("; "))
    })
}

/// IV-1 and IV-2: the pods' verdict, and the nodes' where they are judged.
/// Where no agent report is read (offline, or an operator without
/// --edge-namespace) the pods' verdict stands and the evidence says so, so
/// the offline check and such an operator agree.
pub fn with_edge_nodes(pods: Check, s: &Scope<'_>, item: &str) -> Check {
    if s.system.edge_nodes.is_none() {
        return pods;
    }
    let not_judged = |why: &str| Check {
        evidence: super::evidence::bounded(format!(
            "{}; edge nodes not judged: {why}",
            pods.evidence
        )),
        ..pods.clone()
    };
    match &s.snapshot.edge_nodes {
        None => not_judged("only the running operator reads the node agents"),
        Some(Err(why)) => not_judged(why),
        Some(Ok(_)) => with_pods(pods.clone(), node_side(s, item)),
    }
}

/// The pods' verdict and the nodes' together: a failure on either side
/// fails, an unknown side leaves it unknown, and both passing passes.
fn with_pods(pods: Check, nodes: Option<Check>) -> Check {
    let Some(nodes) = nodes else { return pods };
    let evidence = format!("pods: {}; edge nodes: {}", pods.evidence, nodes.evidence);
    match (pods.verdict, nodes.verdict) {
        (Verdict::Fail, Verdict::Fail) => Check::fail(evidence),
        (Verdict::Fail, _) => Check::fail(format!("pods: {}", pods.evidence)),
        (_, Verdict::Fail) => Check::fail(format!("edge nodes: {}", nodes.evidence)),
        (Verdict::Pass, Verdict::Pass) => Check::pass(evidence),
        _ => Check::unknown(evidence),
    }
}
