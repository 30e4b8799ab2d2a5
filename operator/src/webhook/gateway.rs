//! The mutating webhook's gateway part: a pod of a component with HTTP ports
//! gets the WAF gateway in front of them (items I-1, II-1, II-6, III-2, III-3,
//! III-8) and the exporter that turns the gateway's logs into metrics
//! (VIII-2). The gateway listens on the declared ports; the application is
//! told its loopback backend port by an environment variable.

use k8s_openapi::{
    api::core::v1::{
        ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, Pod, Probe,
        ResourceRequirements, SecretVolumeSource, TCPSocketAction, Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};

use crate::{
    build::{certificate::certificate_name, gateway::gateway_config_name},
    controller::validate::{ValidComponent, ValidatedSystem},
    gateway::config::{CONFIG_DIR, STATE_DIR, TLS_DIR, supervisor_script},
};

pub const GATEWAY_CONTAINER: &str = "iotposture-gateway";
pub const EXPORTER_CONTAINER: &str = "iotposture-gateway-exporter";
/// The exporter's metrics port; closed by the NetworkPolicies unless the
/// component declares it and a flow opens it to the cluster's Prometheus.
pub const EXPORTER_PORT: i32 = 9145;

/// What the injected containers ask for, and may use: one nginx worker with
/// the CRS takes about 50 MiB; the exporter a few.
fn resources(request: (&str, &str), limit: (&str, &str)) -> ResourceRequirements {
    let pair = |(cpu, memory): (&str, &str)| {
        Some(
            [
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
            ]
            .into(),
        )
    };
    ResourceRequirements {
        requests: pair(request),
        limits: pair(limit),
        ..ResourceRequirements::default()
    }
}
const CONFIG_VOLUME: &str = "iotposture-gateway-config";
const STATE_VOLUME: &str = "iotposture-gateway-state";
const TLS_VOLUME_PREFIX: &str = "iotposture-tls-";

/// Images of the injected containers (the chart's values).
#[derive(Clone, Debug)]
pub struct Images {
    pub gateway: String,
    pub exporter: String,
}

/// `IOTPOSTURE_BACKEND_PORT_<PORT NAME>`: where the application must listen.
pub fn backend_env_name(port: &str) -> String {
    format!(
        "IOTPOSTURE_BACKEND_PORT_{}",
        port.to_ascii_uppercase().replace('-', "_")
    )
}

/// Adds the gateway and its exporter; false when there is nothing to add
/// (no HTTP port, or already injected).
pub fn inject_gateway(
    pod: &mut Pod,
    system: &ValidatedSystem,
    component: &ValidComponent,
    images: &Images,
) -> bool {
    let ports: Vec<_> = component.http_ports().cloned().collect();
    let spec = pod.spec.get_or_insert_with(Default::default);
    if ports.is_empty() || spec.containers.iter().any(|c| c.name == GATEWAY_CONTAINER) {
        return false;
    }
    // The application moves to loopback: its containers learn the port, and
    // lose the declared one (now the gateway's) from their port list.
    for c in spec.containers.iter_mut() {
        let env = c.env.get_or_insert_with(Vec::new);
        for p in &ports {
            let name = backend_env_name(&p.name);
            if !env.iter().any(|e| e.name == name) {
                env.push(EnvVar {
                    name,
                    value: Some(p.backend().to_string()),
                    ..EnvVar::default()
                });
            }
        }
        if let Some(declared) = c.ports.as_mut() {
            declared.retain(|cp| !ports.iter().any(|p| p.port == cp.container_port));
        }
    }

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: gateway_config_name(system, component),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: STATE_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    let mut mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: STATE_VOLUME.into(),
            mount_path: STATE_DIR.into(),
            ..VolumeMount::default()
        },
    ];
    for p in ports.iter().filter(|p| p.tls) {
        let volume = format!("{TLS_VOLUME_PREFIX}{}", p.name);
        volumes.push(Volume {
            name: volume.clone(),
            // The Secret cert-manager writes for this port's Certificate; the
            // pod waits for it rather than serve without TLS.
            secret: Some(SecretVolumeSource {
                secret_name: Some(certificate_name(system, component, &p.name)),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{TLS_DIR}/{}", p.name),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    spec.containers.push(Container {
        name: GATEWAY_CONTAINER.into(),
        image: Some(images.gateway.clone()),
        // nginx under a small supervisor that reloads it when the
        // ConfigMap changes, so new settings apply without a restart.
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            supervisor_script(&format!("{CONFIG_DIR}/nginx.conf")),
        ]),
        ports: Some(
            ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: p.port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(ports[0].port),
                ..TCPSocketAction::default()
            }),
            ..Probe::default()
        }),
        resources: Some(resources(("20m", "48Mi"), ("500m", "256Mi"))),
        volume_mounts: Some(mounts),
        ..Container::default()
    });
    spec.containers.push(Container {
        name: EXPORTER_CONTAINER.into(),
        image: Some(images.exporter.clone()),
        args: Some(vec![
            "gateway-exporter".into(),
            "--logs".into(),
            STATE_DIR.into(),
            "--listen".into(),
            format!("0.0.0.0:{EXPORTER_PORT}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("gw-metrics".into()),
            container_port: EXPORTER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(vec![VolumeMount {
            name: STATE_VOLUME.into(),
            mount_path: STATE_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        resources: Some(resources(("5m", "16Mi"), ("100m", "64Mi"))),
        ..Container::default()
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{FACTORY, validated};

    fn images() -> Images {
        Images {
            gateway: "gw:1".into(),
            exporter: "exp:1".into(),
        }
    }

    fn dashboard_pod() -> Pod {
        serde_saphyr::from_str(
            r#"
metadata: {name: dash, labels: {app: dashboard}}
spec:
  containers:
    - name: ui
      image: registry.example.com/ui:1.4.2
      ports: [{containerPort: 8443}, {containerPort: 9000}]
"#,
        )
        .unwrap()
    }

    #[test]
    fn web_pods_get_the_gateway_in_front_of_their_http_ports() {
        let system = validated(FACTORY);
        let dashboard = &system.components[2];
        let mut pod = dashboard_pod();
        assert!(inject_gateway(&mut pod, &system, dashboard, &images()));
        let spec = pod.spec.as_ref().unwrap();
        let app = &spec.containers[0];
        assert_eq!(
            app.env.as_ref().unwrap()[0],
            EnvVar {
                name: "IOTPOSTURE_BACKEND_PORT_HTTPS".into(),
                value: Some("18443".into()),
                ..EnvVar::default()
            }
        );
        let app_ports: Vec<i32> = app
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(app_ports, [9000], "the declared port is the gateway's now");
        let gw = spec
            .containers
            .iter()
            .find(|c| c.name == GATEWAY_CONTAINER)
            .unwrap();
        assert_eq!(gw.image.as_deref(), Some("gw:1"));
        assert_eq!(gw.ports.as_ref().unwrap()[0].container_port, 8443);
        let tls = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "iotposture-tls-https")
            .unwrap();
        assert_eq!(
            tls.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("factory-dashboard-https")
        );
        let config = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == CONFIG_VOLUME)
            .unwrap();
        assert_eq!(
            config.config_map.as_ref().unwrap().name,
            "factory-dashboard-gateway"
        );
        assert!(spec.containers.iter().any(|c| c.name == EXPORTER_CONTAINER));

        let again = pod.clone();
        assert!(
            !inject_gateway(&mut pod, &system, dashboard, &images()),
            "once only"
        );
        assert_eq!(pod, again);
    }

    #[test]
    fn a_refused_gateway_image_is_named_with_the_flag_that_fixes_it() {
        let mut system = validated(FACTORY);
        system.images.allowed_registries = vec!["registry.example.com".into()];
        let dashboard = system.components[2].clone();
        let mut pod = dashboard_pod();
        let images = Images {
            gateway: "docker.io/owasp/modsecurity-crs:3.3.4-nginx".into(),
            exporter: "registry.example.com/iotposture:0.1.0".into(),
        };
        inject_gateway(&mut pod, &system, &dashboard, &images);
        let shape = crate::webhook::review::pod_shape("Pod", &serde_json::to_value(&pod).unwrap())
            .unwrap()
            .unwrap();
        let findings = crate::webhook::review::review(&system, &dashboard, &shape);
        let images: Vec<&String> = findings.iter().filter(|f| f.starts_with("[II-3")).collect();
        assert_eq!(images.len(), 1, "only the gateway's image: {findings:?}");
        assert!(
            images[0].contains("docker.io/owasp/modsecurity-crs"),
            "{}",
            images[0]
        );
        assert!(
            images[0].contains("run it with --gateway-image"),
            "{}",
            images[0]
        );
    }

    #[test]
    fn components_without_http_ports_are_left_alone() {
        let system = validated(FACTORY);
        let mqtt = &system.components[1];
        let mut pod = dashboard_pod();
        let before = pod.clone();
        assert!(!inject_gateway(&mut pod, &system, mqtt, &images()));
        assert_eq!(pod, before);
    }
}
