//! The mutating webhook's pure part: a component pod gets its own
//! ServiceAccount and a security context that meets the Pod Security Standard
//! "restricted" (checklist items I-5, I-6, I-10, II-5). Only unset values are
//! filled in, never a value the user chose, so hardening twice equals once.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, EmptyDirVolumeSource, Pod, PodSecurityContext,
        ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
    },
    apimachinery::pkg::api::resource::Quantity,
};

use crate::{
    build::service_account::service_account_name,
    controller::validate::{ValidComponent, ValidatedSystem},
};

/// Annotation listing what the webhook changed, for people and audits.
pub const HARDENED_ANNOTATION: &str = "iotposture.dev/hardened";
/// Volumes the ServiceAccount admission plugin adds for the API token.
const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
const WRITABLE_VOLUME_PREFIX: &str = "iotposture-writable-";

/// The hardened pod and the names of the changes, in a fixed order.
pub struct Hardened {
    pub pod: Pod,
    pub changes: Vec<String>,
}

pub fn harden_pod(pod: &Pod, system: &ValidatedSystem, component: &ValidComponent) -> Hardened {
    let mut pod = pod.clone();
    let mut changes = Vec::new();
    let mut change = |what: &str| {
        if !changes.iter().any(|c| c == what) {
            changes.push(what.to_string());
        }
    };
    let spec = pod.spec.get_or_insert_with(Default::default);

    // I-6: the component's own account instead of `default`.
    let account = spec.service_account_name.as_deref().unwrap_or_default();
    if account.is_empty() || account == "default" {
        let own = service_account_name(system, component);
        spec.service_account_name = Some(own.clone());
        if spec.service_account.is_some() {
            spec.service_account = Some(own);
        }
        change("serviceAccountName");
    }

    // I-10: no API token unless the component declares it needs one.
    if spec.automount_service_account_token.is_none() {
        spec.automount_service_account_token = Some(component.automount_service_account_token);
        change("automountServiceAccountToken");
    }
    if spec.automount_service_account_token == Some(false) {
        let token_volumes: Vec<String> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.name.starts_with(TOKEN_VOLUME_PREFIX) && is_token_projection(v))
            .map(|v| v.name.clone())
            .collect();
        if !token_volumes.is_empty() {
            if let Some(volumes) = spec.volumes.as_mut() {
                volumes.retain(|v| !token_volumes.contains(&v.name));
            }
            for c in all_containers(spec) {
                if let Some(mounts) = c.volume_mounts.as_mut() {
                    mounts.retain(|m| !token_volumes.contains(&m.name));
                }
            }
            change("tokenVolumeRemoved");
        }
    }

    // I-5: pod-level identity and seccomp.
    let psc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if psc.run_as_non_root.is_none() {
        psc.run_as_non_root = Some(true);
        change("runAsNonRoot");
    }
    let any_uid = psc.run_as_user.is_some()
        || spec.containers.iter().any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.run_as_user)
                .is_some()
        });
    let psc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if !any_uid && psc.run_as_non_root == Some(true) {
        psc.run_as_user = Some(system.pod_defaults.run_as_user);
        change("runAsUser");
    }
    let container_seccomp = spec.containers.iter().all(|c| {
        c.security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
            .is_some()
    });
    let psc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if psc.seccomp_profile.is_none() && !container_seccomp {
        psc.seccomp_profile = Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        });
        change("seccompProfile");
    }

    // I-5 and II-5 per container.
    let limits = &system.pod_defaults.limits;
    for c in all_containers(spec) {
        let sc = c
            .security_context
            .get_or_insert_with(SecurityContext::default);
        if sc.allow_privilege_escalation.is_none() {
            sc.allow_privilege_escalation = Some(false);
            change("allowPrivilegeEscalation");
        }
        let caps = sc.capabilities.get_or_insert_with(Capabilities::default);
        let drop = caps.drop.get_or_insert_with(Vec::new);
        if !drop.iter().any(|d| d == "ALL") {
            drop.push("ALL".into());
            change("dropAllCapabilities");
        }
        if sc.read_only_root_filesystem.is_none() {
            sc.read_only_root_filesystem = Some(true);
            change("readOnlyRootFilesystem");
        }
        let resources = c
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        let current = resources.limits.get_or_insert_with(BTreeMap::new);
        for (name, value) in limits {
            if !current.contains_key(name) {
                current.insert(name.clone(), Quantity(value.clone()));
                change("limits");
            }
        }
    }

    // Writable paths under a read-only root: an emptyDir each.
    for (i, path) in component.writable_paths.iter().enumerate() {
        let volume = format!("{WRITABLE_VOLUME_PREFIX}{i}");
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        let mut added = false;
        if !volumes.iter().any(|v| v.name == volume) {
            volumes.push(Volume {
                name: volume.clone(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            added = true;
        }
        for c in all_containers(spec) {
            let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
            if !mounts.iter().any(|m| &m.mount_path == path) {
                mounts.push(VolumeMount {
                    name: volume.clone(),
                    mount_path: path.clone(),
                    ..VolumeMount::default()
                });
                added = true;
            }
        }
        if added {
            change("writablePaths");
        }
    }

    record_changes(&mut pod, &changes);
    Hardened { pod, changes }
}

/// Adds the names of the changes to the pod's annotation, once each.
pub fn record_changes(pod: &mut Pod, changes: &[String]) {
    if changes.is_empty() {
        return;
    }
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut all: Vec<String> = annotations
        .get(HARDENED_ANNOTATION)
        .map(|a| a.split(',').map(String::from).collect())
        .unwrap_or_default();
    for c in changes {
        if !all.contains(c) {
            all.push(c.clone());
        }
    }
    annotations.insert(HARDENED_ANNOTATION.into(), all.join(","));
}

fn all_containers(
    spec: &mut k8s_openapi::api::core::v1::PodSpec,
) -> impl Iterator<Item = &mut Container> {
    spec.init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
}

fn is_token_projection(v: &Volume) -> bool {
    v.projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .is_some_and(|s| s.iter().any(|src| src.service_account_token.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{FACTORY, validated};

    const BARE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: gw, labels: {app: mqtt-gateway}}
spec:
  serviceAccountName: default
  containers:
    - name: broker
      image: registry.example.com/broker:2.0.18
      volumeMounts: [{name: kube-api-access-abcde, mountPath: /var/run/secrets/kubernetes.io/serviceaccount}]
  volumes:
    - name: kube-api-access-abcde
      projected: {sources: [{serviceAccountToken: {path: token}}]}
"#;

    fn bare() -> Pod {
        serde_saphyr::from_str(BARE).unwrap()
    }

    #[test]
    fn a_bare_pod_is_hardened_to_restricted() {
        let system = validated(FACTORY);
        let gateway = &system.components[1];
        let h = harden_pod(&bare(), &system, gateway);
        let spec = h.pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("factory-gateway")
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert!(
            spec.volumes.as_ref().unwrap().is_empty(),
            "token volume removed"
        );
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert!(c.volume_mounts.as_ref().unwrap().is_empty());
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["cpu"], Quantity("500m".into()));
        assert_eq!(
            h.pod.metadata.annotations.as_ref().unwrap()[HARDENED_ANNOTATION],
            "serviceAccountName,automountServiceAccountToken,tokenVolumeRemoved,runAsNonRoot,runAsUser,seccompProfile,allowPrivilegeEscalation,dropAllCapabilities,readOnlyRootFilesystem,limits"
        );
    }

    #[test]
    fn hardening_twice_equals_once() {
        let system = validated(FACTORY);
        let once = harden_pod(&bare(), &system, &system.components[1]);
        let twice = harden_pod(&once.pod, &system, &system.components[1]);
        assert!(twice.changes.is_empty(), "{:?}", twice.changes);
        assert_eq!(once.pod, twice.pod);
    }

    #[test]
    fn user_choices_are_never_weakened_or_overridden() {
        let system = validated(FACTORY);
        let chosen = BARE.replace(
            "    - name: broker\n",
            "    - name: broker\n      securityContext: {allowPrivilegeEscalation: true, readOnlyRootFilesystem: false, runAsUser: 1000, capabilities: {drop: [NET_RAW]}}\n      resources: {limits: {cpu: '2'}}\n",
        ).replace("serviceAccountName: default", "serviceAccountName: custom\n  automountServiceAccountToken: true");
        let pod: Pod = serde_saphyr::from_str(&chosen).unwrap();
        let h = harden_pod(&pod, &system, &system.components[1]);
        let spec = h.pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("custom"));
        assert_eq!(spec.automount_service_account_token, Some(true));
        assert_eq!(
            spec.volumes.as_ref().unwrap().len(),
            1,
            "token kept where asked for"
        );
        let sc = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["NET_RAW".to_string(), "ALL".to_string()][..]),
            "ALL is added to the user's drops, which stay"
        );
        assert_eq!(
            spec.security_context.as_ref().unwrap().run_as_user,
            None,
            "the container's UID stands"
        );
        let limits = spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert_eq!(limits["cpu"], Quantity("2".into()));
        assert_eq!(limits["memory"], Quantity("256Mi".into()));
    }

    #[test]
    fn writable_paths_get_an_empty_dir() {
        let yaml = FACTORY.replace(
            "      upnp: true\n",
            "      upnp: true\n      writablePaths: [/tmp, /var/lib/mosquitto]\n",
        );
        let system = validated(&yaml);
        let h = harden_pod(&bare(), &system, &system.components[1]);
        let spec = h.pod.spec.as_ref().unwrap();
        let volumes: Vec<_> = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["iotposture-writable-0", "iotposture-writable-1"]);
        let mounts: Vec<_> = spec.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/tmp", "/var/lib/mosquitto"]);
        assert!(
            harden_pod(&h.pod, &system, &system.components[1])
                .changes
                .is_empty()
        );
    }
}
