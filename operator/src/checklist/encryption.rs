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
