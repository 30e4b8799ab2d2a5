//! NetworkPolicies (checklist items II-2, V-1, V-2): every component's pods are
//! isolated in both directions, then opened only for the declared flows (from
//! components, selected pods elsewhere, networks outside, or anyone), the
//! declared egress, DNS, SSDP where a component declares UPnP, and the
//! operator's own probes and Prometheus scrapes where it is told their pods.
//!
//! Per component two policies: `<system>-<component>-default-deny` (isolation on
//! its own, so the intent survives someone deleting the allow policy) and
//! `<system>-<component>-allow` (ingress per inbound flow, egress per outbound
//! flow plus DNS).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::meta::{child_meta, child_name};
use crate::{
    api::Protocol,
    controller::validate::{
        Destination, FlowSource, IpBlock, PodPeers, SSDP_PORT, ValidComponent, ValidatedSystem,
    },
    webhook::gateway::EXPORTER_PORT,
};

/// Where the cluster DNS runs (the kube-dns / CoreDNS convention).
const DNS_NAMESPACE: &str = "kube-system";
const DNS_POD_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
/// The SSDP multicast group.
const SSDP_GROUP: &str = "239.255.255.250/32";

const POLICY_TYPES: [&str; 2] = ["Ingress", "Egress"];

pub fn build_network_policies(system: &ValidatedSystem) -> Vec<NetworkPolicy> {
    system
        .components
        .iter()
        .enumerate()
        .flat_map(|(index, c)| [build_default_deny(system, c), build_allow(system, index)])
        .collect()
}

/// Isolates the component's pods: no ingress, no egress.
pub fn build_default_deny(system: &ValidatedSystem, component: &ValidComponent) -> NetworkPolicy {
    NetworkPolicy {
        metadata: child_meta(
            system,
            child_name(&system.name, &[&component.name, "default-deny"]),
            Some(&component.name),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(component.selector.clone()),
            policy_types: Some(POLICY_TYPES.map(String::from).to_vec()),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Opens what the component's declared flows need, and nothing more.
pub fn build_allow(system: &ValidatedSystem, index: usize) -> NetworkPolicy {
    let component = &system.components[index];
    let mut ingress: Vec<NetworkPolicyIngressRule> = Vec::new();
    let mut egress: Vec<NetworkPolicyEgressRule> = vec![dns_egress()];

    for flow in &system.flows {
        let port = vec![policy_port(flow.port.port, flow.port.protocol)];
        if flow.target == index {
            let from = match &flow.source {
                FlowSource::Component(src) => {
                    Some(vec![pods_of(&system.components[*src].selector)])
                }
                FlowSource::Pods(peers) => Some(vec![selected(peers)]),
                FlowSource::Cidr(block) => Some(vec![network(block)]),
                // No peer list: any source may connect, on this port only.
                FlowSource::Ingress => None,
            };
            push_unique(
                &mut ingress,
                NetworkPolicyIngressRule {
                    from,
                    ports: Some(port.clone()),
                },
            );
        }
        if flow.source == FlowSource::Component(index) {
            push_unique(
                &mut egress,
                NetworkPolicyEgressRule {
                    to: Some(vec![pods_of(&system.components[flow.target].selector)]),
                    ports: Some(port),
                },
            );
        }
    }

    for e in system.egress.iter().filter(|e| e.source == index) {
        let to = match &e.to {
            Destination::Pods(peers) => selected(peers),
            Destination::Cidr(block) => network(block),
        };
        push_unique(
            &mut egress,
            NetworkPolicyEgressRule {
                to: Some(vec![to]),
                ports: Some(
                    e.ports
                        .iter()
                        .map(|(port, protocol)| policy_port(*port, *protocol))
                        .collect(),
                ),
            },
        );
    }

    // The operator's probes reach the TLS and web ports; Prometheus the
    // gateway's exporter. Only where the operator was told their pods.
    let probed: Vec<NetworkPolicyPort> = component
        .ports
        .iter()
        .filter(|p| p.tls || p.http)
        .map(|p| policy_port(p.port, p.protocol))
        .collect();
    if let (Some(peers), false) = (&system.operator_peers.probes, probed.is_empty()) {
        push_unique(
            &mut ingress,
            NetworkPolicyIngressRule {
                from: Some(vec![selected(peers)]),
                ports: Some(probed),
            },
        );
    }
    if let (Some(peers), true) = (
        &system.operator_peers.scrapes,
        component.http_ports().next().is_some(),
    ) {
        push_unique(
            &mut ingress,
            NetworkPolicyIngressRule {
                from: Some(vec![selected(peers)]),
                ports: Some(vec![policy_port(EXPORTER_PORT, Protocol::TCP)]),
            },
        );
    }

    if component.upnp {
        // Discovery requests go to the multicast group; announcements arrive on 1900.
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: SSDP_GROUP.into(),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![policy_port(SSDP_PORT, Protocol::UDP)]),
        });
        push_unique(
            &mut ingress,
            NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![policy_port(SSDP_PORT, Protocol::UDP)]),
            },
        );
    }

    NetworkPolicy {
        metadata: child_meta(
            system,
            child_name(&system.name, &[&component.name, "allow"]),
            Some(&component.name),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(component.selector.clone()),
            policy_types: Some(POLICY_TYPES.map(String::from).to_vec()),
            // An empty rule list is dropped by the API server: send none rather
            // than an empty one, so the applied object equals what we built.
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: Some(egress),
        }),
    }
}

fn push_unique<T: PartialEq>(rules: &mut Vec<T>, rule: T) {
    if !rules.contains(&rule) {
        rules.push(rule);
    }
}

/// Pods by selectors, as a NetworkPolicy means them: a pod selector alone
/// picks pods of the system's namespace; a namespace selector alone, every
/// pod of those namespaces; both, those pods in those namespaces.
fn selected(peers: &PodPeers) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: peers.namespace_selector.clone(),
        pod_selector: peers.pod_selector.clone(),
        ip_block: None,
    }
}

fn network(block: &IpBlock) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: block.cidr.clone(),
            except: (!block.except.is_empty()).then(|| block.except.clone()),
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn pods_of(selector: &LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector.clone()),
        ..NetworkPolicyPeer::default()
    }
}

fn policy_port(port: i32, protocol: Protocol) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.as_str().into()),
        end_port: None,
    }
}

fn dns_egress() -> NetworkPolicyEgressRule {
    let labels = |k: &str, v: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
        match_expressions: None,
    };
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(labels("kubernetes.io/metadata.name", DNS_NAMESPACE)),
            pod_selector: Some(labels(DNS_POD_LABEL.0, DNS_POD_LABEL.1)),
            ip_block: None,
        }]),
        ports: Some(vec![
            policy_port(53, Protocol::UDP),
            policy_port(53, Protocol::TCP),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{FACTORY, validated};

    fn policy<'a>(all: &'a [NetworkPolicy], name: &str) -> &'a NetworkPolicySpec {
        all.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no policy {name}"))
            .spec
            .as_ref()
            .unwrap()
    }

    fn ports(rule_ports: &Option<Vec<NetworkPolicyPort>>) -> Vec<(i32, String)> {
        rule_ports
            .iter()
            .flatten()
            .map(|p| match (&p.port, &p.protocol) {
                (Some(IntOrString::Int(n)), Some(proto)) => (*n, proto.clone()),
                other => panic!("unexpected port {other:?}"),
            })
            .collect()
    }

    #[test]
    fn every_component_is_isolated_both_ways() {
        let all = build_network_policies(&validated(FACTORY));
        assert_eq!(all.len(), 6);
        for c in ["line-sensor", "gateway", "dashboard"] {
            let deny = policy(&all, &format!("factory-{c}-default-deny"));
            assert_eq!(deny.policy_types.as_deref().unwrap(), ["Ingress", "Egress"]);
            assert!(deny.ingress.is_none() && deny.egress.is_none());
        }
    }

    #[test]
    fn flows_open_only_their_port_between_their_components() {
        let all = build_network_policies(&validated(FACTORY));
        let gateway = policy(&all, "factory-gateway-allow");
        let ingress = gateway.ingress.as_ref().unwrap();
        // Sensor and dashboard on mqtts, SSDP because the gateway declares UPnP.
        assert_eq!(ingress.len(), 3);
        assert_eq!(ports(&ingress[0].ports), [(8883, "TCP".to_string())]);
        let from = &ingress[0].from.as_ref().unwrap()[0];
        assert_eq!(
            from.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app"],
            "line-sensor"
        );

        let sensor = policy(&all, "factory-line-sensor-allow");
        assert!(
            sensor.ingress.is_none(),
            "nothing may connect to the sensor"
        );
        let egress = sensor.egress.as_ref().unwrap();
        assert_eq!(
            ports(&egress[0].ports),
            [(53, "UDP".to_string()), (53, "TCP".to_string())]
        );
        assert_eq!(ports(&egress[1].ports), [(8883, "TCP".to_string())]);
        assert_eq!(egress.len(), 2);
    }

    #[test]
    fn ingress_flow_allows_any_source_on_that_port_only() {
        let all = build_network_policies(&validated(FACTORY));
        let dashboard = policy(&all, "factory-dashboard-allow");
        let ingress = dashboard.ingress.as_ref().unwrap();
        assert_eq!(ingress.len(), 1);
        assert!(ingress[0].from.is_none());
        assert_eq!(ports(&ingress[0].ports), [(8443, "TCP".to_string())]);
    }

    #[test]
    fn behind_a_gateway_only_the_gateway_port_opens() {
        // The dashboard's HTTPS port is fronted: the gateway listens on 8443
        // and the application on loopback 18443, which no rule may open.
        let all = build_network_policies(&validated(FACTORY));
        let opened: Vec<i32> = all
            .iter()
            .flat_map(|p| {
                let spec = p.spec.as_ref().unwrap();
                let ingress = spec.ingress.iter().flatten().flat_map(|r| ports(&r.ports));
                let egress = spec.egress.iter().flatten().flat_map(|r| ports(&r.ports));
                ingress.chain(egress).collect::<Vec<_>>()
            })
            .map(|(port, _)| port)
            .collect();
        assert!(opened.contains(&8443));
        assert!(!opened.contains(&18443), "{opened:?}");
    }

    #[test]
    fn ssdp_stays_closed_unless_declared() {
        let all = build_network_policies(&validated(FACTORY));
        let ssdp = (1900, "UDP".to_string());
        for c in ["line-sensor", "dashboard"] {
            let spec = policy(&all, &format!("factory-{c}-allow"));
            let opened = spec
                .egress
                .iter()
                .flatten()
                .flat_map(|r| ports(&r.ports))
                .chain(spec.ingress.iter().flatten().flat_map(|r| ports(&r.ports)));
            assert!(opened.clone().all(|p| p != ssdp), "{c} opens SSDP");
        }
        let gateway = policy(&all, "factory-gateway-allow");
        let egress = gateway.egress.as_ref().unwrap().last().unwrap();
        assert_eq!(ports(&egress.ports), [ssdp]);
        assert_eq!(
            egress.to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            SSDP_GROUP
        );
    }

    #[test]
    fn duplicate_flows_give_one_rule() {
        let yaml = FACTORY.replace(
            "  access:",
            "    - {from: {component: line-sensor}, to: gateway, port: mqtts}\n  access:",
        );
        let all = build_network_policies(&validated(&yaml));
        assert_eq!(
            policy(&all, "factory-gateway-allow")
                .ingress
                .as_ref()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            policy(&all, "factory-line-sensor-allow")
                .egress
                .as_ref()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn named_sources_networks_and_egress_become_peers() {
        let yaml = FACTORY.replace(
            "  access:",
            r#"    - {from: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress}}, podSelector: {matchLabels: {app: nginx}}}, to: dashboard, port: https}
    - {from: {cidr: 192.168.10.0/24}, to: gateway, port: mqtts}
  egress:
    - {from: gateway, to: {cidr: 203.0.113.0/24, except: [203.0.113.9/32]}, ports: [{port: 8883}]}
  access:"#,
        );
        let all = build_network_policies(&validated(&yaml));
        let dashboard = policy(&all, "factory-dashboard-allow");
        let from = dashboard.ingress.as_ref().unwrap()[1]
            .from
            .as_ref()
            .unwrap();
        assert_eq!(
            from[0]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "ingress"
        );
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app"],
            "nginx"
        );
        let gateway = policy(&all, "factory-gateway-allow");
        let sensors = gateway
            .ingress
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.from.as_ref().is_some_and(|f| f[0].ip_block.is_some()))
            .unwrap();
        assert_eq!(
            sensors.from.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            "192.168.10.0/24"
        );
        assert_eq!(ports(&sensors.ports), [(8883, "TCP".to_string())]);
        let cloud = gateway
            .egress
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| {
                r.to.as_ref().is_some_and(|t| {
                    t[0].ip_block
                        .as_ref()
                        .is_some_and(|b| b.cidr == "203.0.113.0/24")
                })
            })
            .unwrap();
        assert_eq!(
            cloud.to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .except
                .as_deref(),
            Some(&["203.0.113.9/32".to_string()][..])
        );
    }

    #[test]
    fn the_operators_probes_and_scrapes_get_in_only_when_configured() {
        let mut system = validated(FACTORY);
        let none = build_network_policies(&system);
        let peers = crate::controller::validate::PodPeers {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_string(),
                        "iotposture-system".to_string(),
                    )]
                    .into(),
                ),
                match_expressions: None,
            }),
            pod_selector: None,
        };
        system.operator_peers.probes = Some(peers.clone());
        system.operator_peers.scrapes = Some(peers);
        let with = build_network_policies(&system);
        let rules = |all: &[NetworkPolicy], name: &str| {
            policy(all, name).ingress.clone().unwrap_or_default().len()
        };
        assert_eq!(
            rules(&with, "factory-dashboard-allow"),
            rules(&none, "factory-dashboard-allow") + 2
        );
        // The gateway has a TLS port (probed) but no web port (no exporter).
        assert_eq!(
            rules(&with, "factory-gateway-allow"),
            rules(&none, "factory-gateway-allow") + 1
        );
        assert_eq!(
            rules(&with, "factory-line-sensor-allow"),
            0,
            "nothing to probe there"
        );
        let scrape = policy(&with, "factory-dashboard-allow")
            .ingress
            .clone()
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(ports(&scrape.ports), [(9145, "TCP".to_string())]);
    }
}
