//! Chapter VI, encryption: VI-2 from the declared flows. The handshake probe
//! that confirms TLS on the wire comes with a later version.

use super::{Scope, evidence::Check, evidence::Offences};
use crate::controller::validate::FlowSource;

/// VI-2: every declared flow uses a port declared as TLS.
pub fn check_flow_encryption(s: &Scope<'_>) -> Check {
    let mut offences = Offences::default();
    for flow in &s.system.flows {
        if !flow.port.tls {
            let from = match flow.source {
                FlowSource::Component(i) => s.system.components[i].name.as_str(),
                FlowSource::Ingress => "ingress",
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
    Check::unknown(format!(
        "all {} flows use ports declared tls; not evaluated by this version: the TLS handshake probe that confirms it",
        s.system.flows.len()
    ))
}

/// Hours in a Go duration such as `720h`, `1h30m` or `90m`.
pub fn duration_hours(d: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut number = String::new();
    for ch in d.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            number.push(ch);
            continue;
        }
        let n: f64 = number.parse().ok()?;
        number.clear();
        total += match ch {
            'h' => n,
            'm' => n / 60.0,
            's' => n / 3600.0,
            _ => return None,
        };
    }
    number.is_empty().then_some(total)
}

/// VI-4: every TLS port's Certificate renews before it expires.
pub fn check_certificate_renewal(s: &Scope<'_>) -> Check {
    let tls_ports: Vec<_> = s
        .targets
        .iter()
        .flat_map(|c| {
            c.component
                .ports
                .iter()
                .filter(|p| p.tls)
                .map(move |p| (c.component, p))
        })
        .collect();
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
