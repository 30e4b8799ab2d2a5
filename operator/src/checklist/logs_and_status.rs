//! Chapter VII, logs and sensor status: VII-1.

use super::{Scope, evidence::Check, evidence::Offences, pod_name};

/// VII-1: sensor containers have liveness and readiness probes.
pub fn check_sensor_probes(s: &Scope<'_>) -> Check {
    let mut offences = Offences::default();
    let mut checked = 0;
    let mut external = Vec::new();
    for c in &s.targets {
        if c.pods.is_empty() {
            external.push(c.component.name.as_str());
            continue;
        }
        for pod in &c.pods {
            for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                checked += 1;
                for (probe, what) in [
                    (&container.liveness_probe, "liveness"),
                    (&container.readiness_probe, "readiness"),
                ] {
                    if probe.is_none() {
                        offences.add(format!(
                            "pod {} container {} has no {what} probe",
                            pod_name(pod),
                            container.name
                        ));
                    }
                }
            }
        }
    }
    if !offences.is_empty() || external.is_empty() {
        return offences.verdict(format!(
            "{checked} sensor containers have liveness and readiness probes"
        ));
    }
    Check::unknown(format!(
        "no pods of sensor {} (external sensors?); heartbeat tracking is not evaluated by this version",
        external.join(", ")
    ))
}
