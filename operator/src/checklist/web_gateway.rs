//! Items the WAF gateway makes true and the HTTP probe proves: I-1
//! (lockout), II-1 (WAF), II-6 (rate limits), III-2 (cookies), III-3
//! (session IDs in URLs), III-4 (session fixation), III-8 (XSS, SQLi, CSRF)
//! and VIII-2 (auth-failure metrics). Probe-backed items are Pass only when
//! the probe saw the behaviour at every web port of the targeted components.

use super::{Scope, evidence::Check, evidence::Offences, pod_name};
use crate::{
    api::Port,
    controller::validate::ValidComponent,
    probe::http::{Finding, Observation},
    webhook::gateway::{EXPORTER_CONTAINER, GATEWAY_CONTAINER},
};

/// The web ports of the targeted components.
fn web_ports<'a>(s: &'a Scope<'_>) -> Vec<(&'a ValidComponent, &'a Port)> {
    s.targets
        .iter()
        .flat_map(|c| c.component.http_ports().map(move |p| (c.component, p)))
        .collect()
}

/// Combines the probe's observations (`pick`) at every web port.
fn judge_probed(
    s: &Scope<'_>,
    pick: &dyn Fn(&Finding) -> Vec<Observation>,
    without_web_ports: Check,
) -> Check {
    let ports = web_ports(s);
    if ports.is_empty() {
        return without_web_ports;
    }
    let Some(probes) = &s.snapshot.http_probes else {
        return Check::unknown(
            "the HTTP probe has not run: the operator probes web ports periodically; an offline check cannot",
        );
    };
    let (mut passes, mut fails, mut unknowns) = (Vec::new(), Offences::default(), Vec::new());
    for (component, port) in &ports {
        let Some(probed) = probes
            .iter()
            .find(|p| p.component == component.name && p.port == port.name)
        else {
            unknowns.push(format!("{}/{} not probed yet", component.name, port.name));
            continue;
        };
        for observation in pick(&probed.finding) {
            match observation {
                Observation::Pass(e) => passes.push(e),
                Observation::Fail(e) => fails.add(e),
                Observation::Unknown(e) => unknowns.push(e),
            }
        }
    }
    if !fails.is_empty() {
        return fails.verdict("");
    }
    if !unknowns.is_empty() {
        return Check::unknown(unknowns.join("; "));
    }
    Check::pass(passes.join("; "))
}

/// I-1: failed logins lock the client out (probed with the probe account).
pub fn check_lockout(s: &Scope<'_>) -> Check {
    judge_probed(
        s,
        &|f| vec![f.lockout.clone()],
        Check::unknown(
            "no HTTP port: the gateway's lockout covers web logins only; attest the lockout of other interfaces",
        ),
    )
}

/// II-1: the WAF blocks SQL injection and XSS canaries.
pub fn check_waf(s: &Scope<'_>) -> Check {
    judge_probed(
        s,
        &|f| vec![f.injection.clone()],
        Check::not_applicable("no HTTP port: there is no web interface for a WAF to front"),
    )
}

/// III-2: cookies carry Secure, HttpOnly and SameSite.
pub fn check_cookies(s: &Scope<'_>) -> Check {
    judge_probed(
        s,
        &|f| vec![f.cookies.clone()],
        Check::not_applicable("no HTTP port: no cookies are set"),
    )
}

/// III-3: session identifiers in URLs are refused.
pub fn check_session_in_url(s: &Scope<'_>) -> Check {
    judge_probed(
        s,
        &|f| vec![f.session_in_url.clone()],
        Check::not_applicable("no HTTP port: no URLs to carry a session ID"),
    )
}

/// III-4: the session cookie changes at login.
pub fn check_session_fixation(s: &Scope<'_>) -> Check {
    judge_probed(
        s,
        &|f| vec![f.fixation.clone()],
        Check::not_applicable("no HTTP port: no web sessions"),
    )
}

/// III-8: injection canaries and cross-site state changes are refused.
pub fn check_xss_sqli_csrf(s: &Scope<'_>) -> Check {
    judge_probed(
        s,
        &|f| vec![f.injection.clone(), f.cross_site.clone()],
        Check::not_applicable("no HTTP port: no web interface"),
    )
}

/// Pods of the targeted web components that run without the injected
/// `container`, or the reason there is nothing to look at.
fn pods_without(s: &Scope<'_>, container: &str) -> Result<(usize, Offences), Check> {
    let mut offences = Offences::default();
    let mut checked = 0;
    for c in s
        .targets
        .iter()
        .filter(|c| c.component.http_ports().next().is_some())
    {
        for pod in &c.pods {
            checked += 1;
            let has = pod
                .spec
                .iter()
                .flat_map(|spec| spec.containers.iter())
                .any(|k| k.name == container);
            if !has {
                offences.add(format!(
                    "pod {} of {} runs without {container}",
                    pod_name(pod),
                    c.component.name
                ));
            }
        }
    }
    if checked == 0 {
        return Err(Check::unknown(
            "no pods of the web components to inspect yet",
        ));
    }
    Ok((checked, offences))
}

/// II-6: every pod of a web component runs the gateway, which limits each
/// client's request rate and body size.
pub fn check_traffic_limits(s: &Scope<'_>) -> Check {
    let ports = web_ports(s);
    if ports.is_empty() {
        return Check::unknown(
            "no HTTP port: rate limits apply at the gateway; attest the limits of other interfaces",
        );
    }
    let (checked, offences) = match pods_without(s, GATEWAY_CONTAINER) {
        Ok(r) => r,
        Err(unknown) => return unknown,
    };
    let limits: Vec<String> = s
        .targets
        .iter()
        .filter(|c| c.component.http_ports().next().is_some())
        .map(|c| {
            let h = &c.component.http;
            format!(
                "{}: {} requests/s (burst {}) and {} at once per client, bodies up to {} bytes",
                c.component.name,
                h.requests_per_second,
                h.burst,
                h.connections_per_client,
                h.max_body_bytes
            )
        })
        .collect();
    offences.verdict(format!(
        "all {checked} web pods run the gateway; {}",
        limits.join("; ")
    ))
}

/// VIII-2: the exporter turns failed logins and lockouts into metrics in
/// every web pod, the operator exports certificate expiry, and the rules
/// on them are loaded and reach someone (`alerts::reach`).
pub fn check_auth_alerts(s: &Scope<'_>) -> Check {
    let mut counted = String::new();
    if !web_ports(s).is_empty() {
        let (checked, offences) = match pods_without(s, EXPORTER_CONTAINER) {
            Ok(r) => r,
            Err(unknown) => return unknown,
        };
        if !offences.is_empty() {
            return offences.verdict("");
        }
        counted = format!("all {checked} web pods export failed logins and lockouts; ");
    }
    match super::alerts::reach(s, "VIII-2") {
        Ok(text) => Check::pass(format!("{counted}{text}")),
        Err(verdict) if counted.is_empty() => verdict,
        Err(verdict) => Check {
            evidence: super::evidence::bounded(format!("{counted}{}", verdict.evidence)),
            ..verdict
        },
    }
}
