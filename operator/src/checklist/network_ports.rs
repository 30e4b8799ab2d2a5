//! Chapter V, network ports: V-1, V-2.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Pod, PodSpec, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{Scope, evidence::Check, evidence::Offences, pod_name, user_management::containers};
use crate::{
    api::Protocol,
    controller::validate::{SSDP_PORT, ValidComponent},
};

/// Services of the namespace that select a pod of a targeted component, with that pod.
pub fn services_of<'a>(s: &'a Scope<'_>) -> Vec<(&'a Service, (&'a ValidComponent, &'a Pod))> {
    let mut out = Vec::new();
    for service in &s.snapshot.services {
        let Some(selector) = service.spec.as_ref().and_then(|x| x.selector.as_ref()) else {
            continue;
        };
        if selector.is_empty() {
            continue;
        }
        let empty = BTreeMap::new();
        let hit = s.targets.iter().find_map(|c| {
            c.pods
                .iter()
                .find(|p| {
                    let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
                    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
                .map(|p| (c.component, *p))
        });
        if let Some(hit) = hit {
            out.push((service.as_ref(), hit));
        }
    }
    out
}

fn protocol(p: Option<&String>) -> &str {
    p.map_or("TCP", |s| s.as_str())
}

fn declared(component: &ValidComponent, port: i32, proto: &str) -> bool {
    component
        .ports
        .iter()
        .any(|p| p.port == port && p.protocol.as_str() == proto)
}

/// The container port a Service port reaches on `pod`.
fn target_number(pod: &Pod, port: i32, target: Option<&IntOrString>) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()
            .into_iter()
            .flat_map(containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// V-1 for the containers of one pod; also the admission rule.
pub fn undeclared_port_offences(
    component: &ValidComponent,
    name: &str,
    spec: &PodSpec,
    offences: &mut Offences,
) {
    for c in containers(spec) {
        for p in c.ports.iter().flatten() {
            let proto = protocol(p.protocol.as_ref());
            // The injected exporter's port: ours, and closed by the policies.
            let exporter = c.name == crate::webhook::gateway::EXPORTER_CONTAINER
                && p.container_port == crate::webhook::gateway::EXPORTER_PORT;
            if !exporter && !declared(component, p.container_port, proto) {
                offences.add(format!(
                    "pod {name} container {} opens {}/{proto}, which component {} does not declare",
                    c.name, p.container_port, component.name
                ));
            }
        }
    }
}

/// V-1: containers and Services open only the ports the component declares.
pub fn check_declared_ports(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let mut offences = Offences::default();
    for (component, pod, spec) in &pods {
        undeclared_port_offences(component, pod_name(pod), spec, &mut offences);
    }
    let services = services_of(s);
    for (service, (component, pod)) in &services {
        for p in service
            .spec
            .as_ref()
            .and_then(|x| x.ports.as_ref())
            .into_iter()
            .flatten()
        {
            let proto = protocol(p.protocol.as_ref());
            match target_number(pod, p.port, p.target_port.as_ref()) {
                Some(n) if declared(component, n, proto) => {}
                Some(n) => offences.add(format!(
                    "Service {} forwards to {n}/{proto}, which component {} does not declare",
                    service.metadata.name.as_deref().unwrap_or("?"),
                    component.name
                )),
                None => offences.add(format!(
                    "Service {} targets a port name that pod {} does not have",
                    service.metadata.name.as_deref().unwrap_or("?"),
                    pod_name(pod)
                )),
            }
        }
    }
    offences.verdict(format!(
        "the containers of {} pods and {} Services open only declared ports",
        pods.len(),
        services.len()
    ))
}

/// V-2: no host network; SSDP only on components that declare UPnP.
pub fn check_upnp(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let mut offences = Offences::default();
    let ssdp = Protocol::UDP.as_str();
    for (component, pod, spec) in &pods {
        if spec.host_network == Some(true) {
            offences.add(format!("pod {} uses the host network", pod_name(pod)));
        }
        if component.upnp {
            continue;
        }
        for c in containers(spec) {
            for p in c.ports.iter().flatten() {
                if p.container_port == SSDP_PORT && protocol(p.protocol.as_ref()) == ssdp {
                    offences.add(format!(
                        "pod {} opens SSDP (UDP 1900) but component {} does not declare upnp",
                        pod_name(pod),
                        component.name
                    ));
                }
            }
        }
    }
    offences.verdict(format!(
        "{} pods stay off the host network and only components declaring upnp use SSDP",
        pods.len()
    ))
}
