//! Chapter III, web interfaces and sessions: III-9 from the Certificates the
//! operator requests and from what the TLS probe saw presented. Without the
//! probe's confirmation a correct setup stays Unknown rather than Pass.

use super::{Scope, evidence::Check, evidence::Offences};
use crate::{
    api::certmanager::certificate::{Certificate, CertificateStatusConditionsStatus},
    build::certificate::{certificate_name, service_names},
};

pub fn find_certificate<'a>(
    certs: &'a [std::sync::Arc<Certificate>],
    name: &str,
) -> Option<&'a Certificate> {
    certs
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .map(|c| c.as_ref())
}

/// Ready condition of a Certificate: Some(true/false) once cert-manager said so.
pub fn ready(cert: &Certificate) -> Option<(bool, String)> {
    let c = cert
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.r#type == "Ready")?;
    let why = format!(
        "{}: {}",
        c.reason.as_deref().unwrap_or("no reason"),
        c.message.as_deref().unwrap_or("")
    );
    Some((c.status == CertificateStatusConditionsStatus::True, why))
}

/// III-9: every TLS port of a web component has its Certificate from the declared issuer.
pub fn check_tls_certificate(s: &Scope<'_>) -> Check {
    let mut offences = Offences::default();
    let mut tls_ports = Vec::new();
    for c in &s.targets {
        for p in &c.component.ports {
            if p.http && !p.tls {
                offences.add(format!(
                    "component {} serves HTTP on port {} ({}) without TLS",
                    c.component.name, p.name, p.port
                ));
            }
            if p.tls {
                tls_ports.push((c.component, p));
            }
        }
    }
    if tls_ports.is_empty() {
        return if offences.is_empty() {
            Check::unknown("no TLS port declared on the web components")
        } else {
            offences.verdict("")
        };
    }
    let Some(tls) = &s.system.tls else {
        offences.add(format!(
            "{} TLS ports but no issuer in spec.tls: no certificate is requested",
            tls_ports.len()
        ));
        return offences.verdict("");
    };
    let Some(certs) = &s.snapshot.certificates else {
        return Check::unknown(
            "cert-manager is not installed (no Certificate CRD): certificates cannot be requested",
        );
    };
    let mut ready_count = 0;
    for (component, port) in &tls_ports {
        let name = certificate_name(s.system, component, &port.name);
        let Some(cert) = find_certificate(certs, &name) else {
            offences.add(format!("Certificate {name} is missing"));
            continue;
        };
        if cert.spec.issuer_ref.name != tls.issuer_ref.name {
            offences.add(format!(
                "Certificate {name} is issued by {}, not {}",
                cert.spec.issuer_ref.name, tls.issuer_ref.name
            ));
        }
        let names = cert.spec.dns_names.clone().unwrap_or_default();
        if !service_names(s.system, component)
            .iter()
            .all(|n| names.contains(n))
        {
            offences.add(format!(
                "Certificate {name} does not carry the names of Service {}",
                component.service
            ));
        }
        match ready(cert) {
            Some((true, _)) => ready_count += 1,
            Some((false, why)) => offences.add(format!("Certificate {name} is not Ready ({why})")),
            None => {}
        }
    }
    if !offences.is_empty() {
        return offences.verdict("");
    }
    let mut not_reached = Vec::new();
    if let Some(probes) = &s.snapshot.tls_probes {
        let mut verified = 0;
        for (component, port) in &tls_ports {
            let Some(p) = super::encryption::probed(probes, &component.name, &port.name) else {
                continue;
            };
            if let Some(why) = &p.finding.unreachable {
                not_reached.push(format!("{}: {why}", p.finding.endpoint));
                continue;
            }
            for problem in p.finding.problems() {
                offences.add(problem);
            }
            verified += 1;
        }
        if verified == tls_ports.len() {
            return offences.verdict(format!(
                "the probe verified the {verified} certificates the web components present: chain to the issuer's CA, names, expiry and key size"
            ));
        }
        if !offences.is_empty() {
            return offences.verdict("");
        }
    }
    let why = if not_reached.is_empty() {
        "the TLS probe has not yet confirmed what the endpoints present".to_string()
    } else {
        format!("the TLS probe could not reach {}", not_reached.join("; "))
    };
    Check::unknown(format!(
        "{} Certificates requested from {:?} {} ({} Ready); {why}",
        tls_ports.len(),
        tls.issuer_ref.kind,
        tls.issuer_ref.name,
        ready_count
    ))
}
