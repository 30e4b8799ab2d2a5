//! The log collector the operator runs for every system with `spec.logging`
//! (item III-1): one DaemonSet in the operator's namespace, reading the
//! node's pod logs read-only, with a ConfigMap holding the configuration
//! `logs::collector` generates and a Secret holding each store's CA and
//! basic-auth value. Pure: the same systems give the same objects.
//!
//! The collector does not reload its configuration, so the pod template
//! carries a hash of everything it reads; a change rolls the pods.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
            EnvVarSource, HTTPGetAction, HostPathVolumeSource, KeyToPath, PodSecurityContext,
            PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
            SecretKeySelector, SecretVolumeSource, SecurityContext, Toleration, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::meta::hex;
use crate::logs::collector::{ConfigError, Shipping, collector_config};

/// Where the pod logs are mounted in the collector (the node's folder may
/// be elsewhere, `Settings::pod_log_dir`).
pub const LOG_ROOT: &str = "/var/log/pods";
/// The collector's own metrics (sent and failed records per exporter).
pub const METRICS_PORT: u16 = 8888;
/// Pod template annotation: the hash of what the collector reads.
pub const CONFIG_HASH_ANNOTATION: &str = "iotposture.dev/config-hash";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
const CONFIG_DIR: &str = "/etc/iotposture-logs/config";
const CA_DIR: &str = "/etc/iotposture-logs/ca";
/// The canary records, one file per system, from a ConfigMap of their own:
/// not in the hash, so a new canary reaches the running pods (the kubelet
/// updates the files) without rolling them.
const CANARY_DIR: &str = "/etc/iotposture-logs/canary";
/// The collector image's user; reads the kubelet's 0640 root:root files
/// through the supplementary group 0, not as root.
const USER: i64 = 65532;

/// Where and how the collector runs, from the operator's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub namespace: String,
    /// Name of the DaemonSet, its ConfigMap and its Secret.
    pub name: String,
    pub image: String,
    /// The node's pod log folder (the kubelet's `--pod-logs-dir`, usually /var/log/pods).
    pub pod_log_dir: String,
    /// The operator's pods (`<namespace>/<name prefix>`), whose decision
    /// record lines are shipped with each system's logs; None where the
    /// operator does not run in a pod.
    pub operator_pods: Option<(String, String)>,
}

/// One system's shipping, with the values read from its Secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemLogs {
    pub namespace: String,
    pub system: String,
    pub pods: Vec<String>,
    pub endpoint: String,
    /// PEM, from the CA Secret's `ca.crt`.
    pub ca_pem: Vec<u8>,
    /// `username:password`, from the credentials Secret.
    pub basic_auth: Option<(String, String)>,
    /// Ship the system's canary file (where the store can be read back).
    pub canary: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CollectorObjects {
    pub config_map: ConfigMap,
    pub secret: Secret,
    pub daemon_set: DaemonSet,
    /// What the pod template's annotation says: equal hashes, nothing to write.
    pub hash: String,
}

/// The Secret keys of a system: `<ns>.<system>.crt` and `<ns>.<system>.auth`
/// (Secret keys take dots; namespaces have none, so they cannot collide).
fn keys(namespace: &str, system: &str) -> (String, String) {
    let base = crate::logs::collector::component_name(namespace, system);
    (format!("{base}.crt"), format!("{base}.auth"))
}

/// An environment variable name for a system's basic-auth value: names
/// carry no dots or dashes, so a hash stands for the system.
fn auth_env(namespace: &str, system: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{namespace}/{system}").as_bytes(),
    );
    format!("LOGS_AUTH_{}", hex(&digest.as_ref()[..8]).to_uppercase())
}

fn labels(settings: &Settings) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            NAME_LABEL.to_string(),
            "iotposture-log-collector".to_string(),
        ),
        (INSTANCE_LABEL.to_string(), settings.name.clone()),
        (
            "app.kubernetes.io/part-of".to_string(),
            "iotposture".to_string(),
        ),
    ])
}

/// The selector of the collector's pods, as a label selector string.
pub fn pod_selector(settings: &Settings) -> String {
    format!(
        "{NAME_LABEL}=iotposture-log-collector,{INSTANCE_LABEL}={}",
        settings.name
    )
}

fn meta(settings: &Settings) -> ObjectMeta {
    ObjectMeta {
        name: Some(settings.name.clone()),
        namespace: Some(settings.namespace.clone()),
        labels: Some(labels(settings)),
        ..Default::default()
    }
}

/// The name of the ConfigMap holding the canary records.
pub fn canary_config_map_name(settings: &Settings) -> String {
    format!("{}-canary", settings.name)
}

/// The canary file of a system: `<ns>.<system>.log`.
fn canary_key(namespace: &str, system: &str) -> String {
    format!(
        "{}.log",
        crate::logs::collector::component_name(namespace, system)
    )
}

/// The canary records, by system (namespace, name) to nonce.
pub fn canary_config_map(
    settings: &Settings,
    nonces: &BTreeMap<(String, String), String>,
) -> ConfigMap {
    let data = nonces
        .iter()
        .map(|((namespace, system), nonce)| {
            (
                canary_key(namespace, system),
                crate::logs::collector::canary_line(namespace, system, nonce),
            )
        })
        .collect();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(canary_config_map_name(settings)),
            ..meta(settings)
        },
        data: Some(data),
        ..Default::default()
    }
}

pub fn build_collector(
    settings: &Settings,
    systems: &[SystemLogs],
) -> Result<CollectorObjects, ConfigError> {
    let mut data = BTreeMap::new();
    let mut env = Vec::new();
    let mut ca_items = Vec::new();
    let mut plans = Vec::new();
    for s in systems {
        let (ca_key, auth_key) = keys(&s.namespace, &s.system);
        data.insert(ca_key.clone(), ByteString(s.ca_pem.clone()));
        ca_items.push(KeyToPath {
            key: ca_key.clone(),
            path: ca_key.clone(),
            ..Default::default()
        });
        let basic_auth_env = s.basic_auth.as_ref().map(|(user, password)| {
            let var = auth_env(&s.namespace, &s.system);
            // The collector cannot encode at run time: the header value is
            // stored ready, base64(user:password).
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            data.insert(auth_key.clone(), ByteString(encoded.into_bytes()));
            env.push(EnvVar {
                name: var.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: settings.name.clone(),
                        key: auth_key.clone(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            var
        });
        plans.push(Shipping {
            namespace: s.namespace.clone(),
            system: s.system.clone(),
            pods: s.pods.clone(),
            endpoint: s.endpoint.clone(),
            ca_file: format!("{CA_DIR}/{ca_key}"),
            basic_auth_env,
            extra_headers: BTreeMap::new(),
            decisions_from: settings.operator_pods.clone(),
            canary_file: s
                .canary
                .then(|| format!("{CANARY_DIR}/{}", canary_key(&s.namespace, &s.system))),
        });
    }
    let config = collector_config(&plans, LOG_ROOT, METRICS_PORT)?;

    // Everything the pods read, in one hash: the configuration, the Secret's
    // values, the image and the host folder.
    let mut hashed = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        config.as_bytes(),
        settings.image.as_bytes(),
        settings.pod_log_dir.as_bytes(),
    ] {
        hashed.update(&(part.len() as u64).to_be_bytes());
        hashed.update(part);
    }
    for (k, v) in &data {
        hashed.update(&(k.len() as u64).to_be_bytes());
        hashed.update(k.as_bytes());
        hashed.update(&(v.0.len() as u64).to_be_bytes());
        hashed.update(&v.0);
    }
    let hash = hex(&hashed.finish().as_ref()[..12]);

    let config_map = ConfigMap {
        metadata: meta(settings),
        data: Some(BTreeMap::from([("config.yaml".to_string(), config)])),
        ..Default::default()
    };
    let secret = Secret {
        metadata: meta(settings),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let daemon_set = daemon_set(settings, env, ca_items, &hash);
    Ok(CollectorObjects {
        config_map,
        secret,
        daemon_set,
        hash,
    })
}

fn daemon_set(
    settings: &Settings,
    env: Vec<EnvVar>,
    ca_items: Vec<KeyToPath>,
    hash: &str,
) -> DaemonSet {
    let selector = BTreeMap::from([
        (
            NAME_LABEL.to_string(),
            "iotposture-log-collector".to_string(),
        ),
        (INSTANCE_LABEL.to_string(), settings.name.clone()),
    ]);
    let quantity = |q: &str| Quantity(q.to_string());
    let container = Container {
        name: "collector".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![format!("--config={CONFIG_DIR}/config.yaml")]),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/metrics".into()),
                port: IntOrString::String("metrics".into()),
                ..Default::default()
            }),
            period_seconds: Some(10),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity("20m")),
                ("memory".to_string(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), quantity("256Mi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "pod-logs".into(),
                mount_path: LOG_ROOT.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "ca".into(),
                mount_path: CA_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "canary".into(),
                mount_path: CANARY_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let volumes = vec![
        Volume {
            name: "pod-logs".into(),
            host_path: Some(HostPathVolumeSource {
                path: settings.pod_log_dir.clone(),
                type_: Some("Directory".into()),
            }),
            ..Default::default()
        },
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: settings.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(settings.name.clone()),
                // Only the CAs: the auth values reach the process as variables.
                items: Some(ca_items),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "canary".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: canary_config_map_name(settings),
                // Written before the DaemonSet; a pod never waits for it.
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    DaemonSet {
        metadata: meta(settings),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..Default::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(settings)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        hash.to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    // The collector never talks to the API server.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(USER),
                        run_as_group: Some(USER),
                        supplemental_groups: Some(vec![0]),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    // Every node's pods, edge nodes with their taints included.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    termination_grace_period_seconds: Some(10),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            namespace: "iotposture-system".into(),
            name: "iotposture-log-collector".into(),
            image: "iotposture.local/log-collector:0.1.0".into(),
            pod_log_dir: "/var/log/pods".into(),
            operator_pods: Some(("iotposture-system".into(), "iotposture".into())),
        }
    }

    fn plant(password: &str) -> SystemLogs {
        SystemLogs {
            namespace: "plant".into(),
            system: "line-1".into(),
            pods: vec!["broker-0".into()],
            endpoint: "https://logs.example:9428/insert/opentelemetry/v1/logs".into(),
            ca_pem: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
            basic_auth: Some(("shipper".into(), password.into())),
            canary: true,
        }
    }

    #[test]
    fn canaries_come_from_a_config_map_of_their_own_that_rolls_no_pod() {
        let built = build_collector(&settings(), &[plant("pw")]).unwrap();
        let config = &built.config_map.data.as_ref().unwrap()["config.yaml"];
        assert!(config.contains(&format!("{CANARY_DIR}/plant.line-1.log")));
        let pod = built.daemon_set.spec.template.spec.unwrap();
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "canary")
            .unwrap();
        let source = volume.config_map.as_ref().unwrap();
        assert_eq!(source.name, "iotposture-log-collector-canary");
        assert_eq!(source.optional, Some(true));
        let mount = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "canary")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (CANARY_DIR, Some(true))
        );

        let nonces = BTreeMap::from([(("plant".into(), "line-1".into()), "00ff".into())]);
        let canaries = canary_config_map(&settings(), &nonces);
        assert_eq!(
            canaries.metadata.name.as_deref(),
            Some("iotposture-log-collector-canary")
        );
        assert_eq!(
            canaries.data.unwrap()["plant.line-1.log"],
            crate::logs::collector::canary_line("plant", "line-1", "00ff")
        );

        // Without a store to read back, no canary is shipped.
        let mut quiet = plant("pw");
        quiet.canary = false;
        let built = build_collector(&settings(), &[quiet]).unwrap();
        assert!(!built.config_map.data.unwrap()["config.yaml"].contains(CANARY_DIR));
    }

    #[test]
    fn the_collector_reads_pod_logs_read_only_as_a_non_root_user_without_a_token() {
        let built = build_collector(&settings(), &[plant("pw")]).unwrap();
        let pod = built.daemon_set.spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc = pod.security_context.unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.supplemental_groups, Some(vec![0]));
        let c = &pod.containers[0];
        let csc = c.security_context.as_ref().unwrap();
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(csc.read_only_root_filesystem, Some(true));
        let logs = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "pod-logs")
            .unwrap();
        assert_eq!(
            (logs.mount_path.as_str(), logs.read_only),
            (LOG_ROOT, Some(true))
        );
        let host = pod.volumes.as_ref().unwrap()[0].host_path.as_ref().unwrap();
        assert_eq!(host.path, "/var/log/pods");
    }

    #[test]
    fn credentials_reach_the_collector_only_through_the_secret() {
        let built = build_collector(&settings(), &[plant("s3cret")]).unwrap();
        let config = &built.config_map.data.as_ref().unwrap()["config.yaml"];
        assert!(!config.contains("s3cret") && !config.contains("shipper"));
        let data = built.secret.data.as_ref().unwrap();
        assert_eq!(
            data["plant.line-1.auth"].0,
            base64::engine::general_purpose::STANDARD
                .encode("shipper:s3cret")
                .into_bytes()
        );
        let pod = built.daemon_set.spec.template.spec.unwrap();
        let env = pod.containers[0].env.as_ref().unwrap();
        let var = &env[0];
        let key = var
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(key.key, "plant.line-1.auth");
        assert!(config.contains(&format!("Basic ${{env:{}}}", var.name)));
        // The CA volume carries the CA files only, where the config looks.
        let ca = pod.volumes.as_ref().unwrap()[2].secret.as_ref().unwrap();
        let items: Vec<&str> = ca.items.iter().flatten().map(|i| i.key.as_str()).collect();
        assert_eq!(items, ["plant.line-1.crt"]);
        assert!(config.contains(&format!("{CA_DIR}/plant.line-1.crt")));
    }

    #[test]
    fn the_hash_follows_everything_the_pods_read_and_nothing_else() {
        let base = build_collector(&settings(), &[plant("a")]).unwrap();
        let again = build_collector(&settings(), &[plant("a")]).unwrap();
        assert_eq!(base, again);
        let annotation = |o: &CollectorObjects| {
            o.daemon_set
                .spec
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_eq!(annotation(&base), base.hash);
        let password = build_collector(&settings(), &[plant("b")]).unwrap();
        assert_ne!(password.hash, base.hash, "a new password rolls the pods");
        let mut more_pods = plant("a");
        more_pods.pods.push("broker-1".into());
        assert_ne!(
            build_collector(&settings(), &[more_pods]).unwrap().hash,
            base.hash
        );
        let mut image = settings();
        image.image.push_str("-next");
        assert_ne!(
            build_collector(&image, &[plant("a")]).unwrap().hash,
            base.hash
        );
        let mut folder = settings();
        folder.pod_log_dir = "/srv/pods".into();
        assert_ne!(
            build_collector(&folder, &[plant("a")]).unwrap().hash,
            base.hash
        );
    }

    #[test]
    fn systems_without_credentials_get_no_variable_and_bad_plans_are_refused() {
        let mut open = plant("x");
        open.basic_auth = None;
        let built = build_collector(&settings(), &[open.clone()]).unwrap();
        let pod = built.daemon_set.spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].env, None);
        assert!(!built.secret.data.unwrap().contains_key("plant.line-1.auth"));
        let mut plain = open;
        plain.endpoint = "http://logs.example/".into();
        assert!(build_collector(&settings(), &[plain]).is_err());
    }
}
