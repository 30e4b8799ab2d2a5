//! Chapter IV, physical and wireless access: IV-1…IV-4, on the component
//! pods and, where the system declares edge nodes, on the nodes themselves.

use k8s_openapi::api::core::v1::PodSpec;

use super::{
    Scope, edge_nodes::node_side, edge_nodes::with_edge_nodes, evidence::Check, evidence::Offences,
    pod_name, user_management::containers,
};
use crate::checklist::network_ports::services_of;
use crate::controller::validate::ValidComponent;

/// Default ports of SSH, Telnet (and its IoT alternate), VNC over HTTP, RDP, VNC, TeamViewer.
pub const REMOTE_ACCESS_PORTS: [i32; 7] = [22, 23, 2323, 3389, 5800, 5900, 5938];

/// IV-1: no privileged mode, host namespaces, host root or devices,
/// undeclared device resources; on edge nodes no usable USB storage and no
/// serial login.
pub fn check_physical_access(s: &Scope<'_>) -> Check {
    with_edge_nodes(physical_access_of_pods(s), s, "IV-1")
}

fn physical_access_of_pods(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let mut offences = Offences::default();
    for (component, pod, spec) in &pods {
        physical_access_offences(component, pod_name(pod), spec, &mut offences);
    }
    offences.verdict(format!(
        "{} pods run unprivileged, without host namespaces, host root or device mounts, and request only declared devices",
        pods.len()
    ))
}

/// IV-1 for one pod; also the admission rule.
pub fn physical_access_offences(
    component: &ValidComponent,
    name: &str,
    spec: &PodSpec,
    offences: &mut Offences,
) {
    {
        for (on, what) in [
            (spec.host_pid, "the host PID namespace"),
            (spec.host_ipc, "the host IPC namespace"),
            (spec.host_network, "the host network"),
        ] {
            if on == Some(true) {
                offences.add(format!("pod {name} shares {what}"));
            }
        }
        for v in spec.volumes.iter().flatten() {
            if let Some(host) = &v.host_path {
                let path = host.path.trim_end_matches('/');
                if path.is_empty() || path == "/dev" || path.starts_with("/dev/") {
                    offences.add(format!("pod {name} mounts host path {}", host.path));
                }
            }
        }
        for c in containers(spec) {
            if c.security_context.as_ref().and_then(|x| x.privileged) == Some(true) {
                offences.add(format!("pod {name} container {} is privileged", c.name));
            }
            let resources = c.resources.as_ref();
            let asked = resources
                .iter()
                .flat_map(|r| r.limits.iter().flatten().chain(r.requests.iter().flatten()))
                .map(|(k, _)| k);
            for resource in asked {
                // Extended resources (vendor/name) are devices; cpu, memory and hugepages are not.
                if resource.contains('/') && !component.devices.contains(resource) {
                    offences.add(format!(
                        "pod {name} container {} requests device {resource}, which component {} does not declare",
                        c.name, component.name
                    ));
                }
            }
        }
    }
}

/// IV-2 for the containers of one pod; also the admission rule.
pub fn remote_port_offences(name: &str, spec: &PodSpec, offences: &mut Offences) {
    for c in containers(spec) {
        for p in c.ports.iter().flatten() {
            for (port, what) in [(Some(p.container_port), "port"), (p.host_port, "host port")] {
                if let Some(port) = port.filter(|n| REMOTE_ACCESS_PORTS.contains(n)) {
                    offences.add(format!(
                        "pod {name} container {} opens remote-access {what} {port}",
                        c.name
                    ));
                }
            }
        }
    }
}

/// IV-2: no container or Service port on a remote-access default port, and
/// none listening on the edge nodes beyond what the system allows.
pub fn check_remote_access_ports(s: &Scope<'_>) -> Check {
    with_edge_nodes(remote_access_of_pods(s), s, "IV-2")
}

fn remote_access_of_pods(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let mut offences = Offences::default();
    for (_, pod, spec) in &pods {
        remote_port_offences(pod_name(pod), spec, &mut offences);
    }
    for (service, _) in services_of(s) {
        let Some(spec) = &service.spec else { continue };
        let exposed = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        for p in spec.ports.iter().flatten() {
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => Some(*n),
                _ => None,
            };
            for port in [Some(p.port), target, p.node_port].into_iter().flatten() {
                if REMOTE_ACCESS_PORTS.contains(&port) {
                    offences.add(format!(
                        "Service {} {} remote-access port {port}{}",
                        service.metadata.name.as_deref().unwrap_or("?"),
                        if exposed {
                            "exposes outside the cluster"
                        } else {
                            "serves"
                        },
                        if exposed {
                            format!(" as {}", spec.type_.as_deref().unwrap_or_default())
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
    }
    offences.verdict(format!(
        "no container or Service of the components uses a remote-access default port ({})",
        REMOTE_ACCESS_PORTS.map(|p| p.to_string()).join(", ")
    ))
}

const NO_EDGE_NODES: &str =
    "the system declares no spec.edgeNodes, so no node agent's report is read";

/// IV-3: every Wi-Fi network of the edge nodes WPA2-CCMP or WPA3.
pub fn check_wireless_encryption(s: &Scope<'_>) -> Check {
    node_side(s, "IV-3").unwrap_or_else(|| {
        Check::unknown(format!(
            "{NO_EDGE_NODES}; declare them, or attest the encryption in use"
        ))
    })
}

/// IV-4: no access point on the edge nodes offers WPS.
pub fn check_wps(s: &Scope<'_>) -> Check {
    node_side(s, "IV-4").unwrap_or_else(|| {
        Check::unknown(format!(
            "{NO_EDGE_NODES}; declare them, or attest that WPS is off"
        ))
    })
}
