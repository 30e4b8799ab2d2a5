//! Chapter VI, encryption: VI-2 from the declared flows and the TLS probe,
//! VI-3 from what the probe negotiated, VI-4 from the Certificates' renewal
//! settings and the expiry the probe saw.

use super::{Scope, evidence::Check, evidence::Offences};
use crate::{
    api::Port,
    controller::validate::{FlowSource, ValidComponent},
};

/// VI-2: every declared flow uses a port declared as TLS.
pub fn check_flow_encryption(s: &Scope<'_>) -> Check {
    let mut offences = Offences::default();
    for flow in &s.system.flows {
        if !flow.port.tls {
            let from = match &flow.source {
                FlowSource::Component(i) => s.system.components[*i].name.as_str(),
                FlowSource::Ingress => "ingress",
                FlowSource::Pods(_) => "selected pods",
                FlowSource::Cidr(b) => b.cidr.as_str(),
            };
            offences.add(format!(
                "flow {from} → {} uses port {} ({}), which is not declared tls",
                s.system.components[flow.target].name, flow.port.name, flow.port.port
            ));
        }
    }
    if !offences.is_empty() {
        return offences.verdict("");
    }
    let Some(probes) = &s.snapshot.tls_probes else {
        // Offline: the probe would find the port through its Service.
        for (component, port) in tls_ports(s) {
            let found = s
                .snapshot
                .services
                .iter()
                .any(|svc| svc.metadata.name.as_deref() == Some(component.service.as_str()));
            if !found {
                offences.add(format!(
                    "TLS port {} of component {}: no Service {} in namespace {} (set the component's service: to its Service's name)",
                    port.name, component.name, component.service, s.system.namespace
                ));
            }
        }
        if !offences.is_empty() {
            return offences.verdict("");
        }
        return Check::unknown(format!(
            "all {} flows use ports declared tls; the TLS probe has not reached them yet",
            s.system.flows.len()
        ));
    };
    for flow in &s.system.flows {
        let component = &s.system.components[flow.target].name;
        match probed(probes, component, &flow.port.name) {
            Some(p) if p.finding.unreachable.is_some() => {
                return not_reached(p);
            }
            Some(p) => {
                if let Some(e) = &p.finding.error {
                    offences.add(format!(
                        "{component}/{} is declared tls but: {e}",
                        flow.port.name
                    ));
                }
            }
            None => {
                return Check::unknown(format!(
                    "{component}/{} has not been probed yet",
                    flow.port.name
                ));
            }
        }
    }
    offences.verdict(format!(
        "all {} flows use TLS ports, and the probe completed a TLS handshake on each",
        s.system.flows.len()
    ))
}

/// A probe that could not run decides nothing.
fn not_reached(p: &crate::controller::probing::ProbedPort) -> Check {
    Check::unknown(format!(
        "{}/{}: the probe could not reach {}: {}",
        p.component,
        p.port,
        p.finding.endpoint,
        p.finding.unreachable.as_deref().unwrap_or("?")
    ))
}

/// The probe's finding for one port of one component.
pub fn probed<'a>(
    probes: &'a [crate::controller::probing::ProbedPort],
    component: &str,
    port: &str,
) -> Option<&'a crate::controller::probing::ProbedPort> {
    probes
        .iter()
        .find(|p| p.component == component && p.port == port)
}

/// The TLS ports of the targeted components.
fn tls_ports<'a>(s: &'a Scope<'_>) -> Vec<(&'a ValidComponent, &'a Port)> {
    s.targets
        .iter()
        .flat_map(|c| {
            c.component
                .ports
                .iter()
                .filter(|p| p.tls)
                .map(move |p| (c.component, p))
        })
        .collect()
}

/// VI-3: the encryption in use at each TLS port is known, and strong.
pub fn check_encryption_in_use(s: &Scope<'_>) -> Check {
    let tls_ports = tls_ports(s);
    if tls_ports.is_empty() {
        return Check::unknown(
            "no TLS port declared: no encryption to confirm (VI-2 judges plaintext flows)",
        );
    }
    let Some(probes) = &s.snapshot.tls_probes else {
        return Check::unknown(
            "the TLS probe has not run: the operator probes TLS ports periodically; an offline check cannot",
        );
    };
    let mut offences = Offences::default();
    let mut seen = Vec::new();
    for (component, port) in &tls_ports {
        let Some(p) = probed(probes, &component.name, &port.name) else {
            return Check::unknown(format!(
                "{}/{} has not been probed yet",
                component.name, port.name
            ));
        };
        if p.finding.unreachable.is_some() {
            return not_reached(p);
        }
        match &p.finding.error {
            Some(e) => offences.add(format!("{}/{}: {e}", component.name, port.name)),
            None => seen.push(format!(
                "{}/{}: {} {} {}",
                component.name,
                port.name,
                p.finding.protocol.as_deref().unwrap_or("?"),
                p.finding.cipher_suite.as_deref().unwrap_or("?"),
                p.finding.key.as_deref().unwrap_or("?")
            )),
        }
    }
    offences.verdict(seen.join("; "))
}

/// Hours in a Go duration such as `720h`, `1h30m` or `90m`.
pub fn duration_hours(d: &str) -> Option<f64> {
    crate::api::duration::parse_duration(d)
        .ok()
        .map(|d| d.as_secs_f64() / 3600.0)
}

/// VI-4: every TLS port's Certificate renews before it expires.
pub fn check_certificate_renewal(s: &Scope<'_>) -> Check {
    let tls_ports = tls_ports(s);
    if tls_ports.is_empty() {
        return Check::unknown(
            "no TLS port declared: nothing to renew (VI-2 judges plaintext flows)",
        );
    }
    if s.system.tls.is_none() {
        return Check::fail(format!(
            "{} TLS ports but no issuer in spec.tls: their certificates are not renewed automatically",
            tls_ports.len()
        ));
    }
    let Some(certs) = &s.snapshot.certificates else {
        return Check::unknown(
            "cert-manager is not installed (no Certificate CRD): renewal cannot be arranged",
        );
    };
    let mut offences = Offences::default();
    for (component, port) in &tls_ports {
        let name = crate::build::certificate::certificate_name(s.system, component, &port.name);
        let Some(cert) = super::web_sessions::find_certificate(certs, &name) else {
            offences.add(format!("Certificate {name} is missing"));
            continue;
        };
        let renew = cert.spec.renew_before.as_deref().and_then(duration_hours);
        let life = cert
            .spec
            .duration
            .as_deref()
            .and_then(duration_hours)
            .unwrap_or(2160.0);
        match renew {
            Some(r) if r > 0.0 && r < life => {}
            _ => offences.add(format!(
                "Certificate {name} renews {} before expiry within a lifetime of {}h",
                cert.spec.renew_before.as_deref().unwrap_or("never"),
                life
            )),
        }
    }
    if let Some(probes) = &s.snapshot.tls_probes {
        for (component, port) in &tls_ports {
            if let Some(p) = probed(probes, &component.name, &port.name)
                && p.finding.expired == Some(true)
            {
                offences.add(format!(
                    "{}/{} presents a certificate that expired on {}",
                    component.name,
                    port.name,
                    p.finding.not_after.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    offences.verdict(format!(
        "{} Certificates renew {} before they expire (cert-manager)",
        tls_ports.len(),
        s.system
            .tls
            .as_ref()
            .map(|t| t.renew_before.as_str())
            .unwrap_or("?")
    ))
}

/// VI-1: data at rest. The edge nodes' data mounts are judged from their
/// agents; the cluster's own store (etcd) cannot be seen through the API,
/// so a pass on the nodes still needs that attested.
pub fn check_data_at_rest(s: &Scope<'_>) -> Check {
    const ETCD: &str =
        "encryption at rest of the cluster's etcd is not visible through the API: attest it";
    match super::edge_nodes::node_side(s, "VI-1") {
        None => Check::unknown(format!(
            "the system declares no spec.edgeNodes, so no node's disks are judged; {ETCD}"
        )),
        Some(c) if c.verdict == crate::api::Verdict::Fail => c,
        Some(c) => Check::unknown(format!("edge nodes: {}; {ETCD}", c.evidence)),
    }
}
