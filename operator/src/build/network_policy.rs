//! NetworkPolicies (checklist items II-2, V-1, V-2): every component's pods are
//! isolated in both directions, then opened only for the declared flows, DNS,
//! and SSDP where a component declares UPnP.
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
    controller::validate::{FlowSource, SSDP_PORT, ValidComponent, ValidatedSystem},
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
            let from = match flow.source {
                FlowSource::Component(src) => Some(vec![pods_of(&system.components[src].selector)]),
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
}
