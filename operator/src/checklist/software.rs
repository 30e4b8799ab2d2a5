//! Chapter II, software and firewalls: II-2, II-3, II-5.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Pod, PodSpec},
    networking::v1::NetworkPolicy,
};
use kube::core::{Selector, SelectorExt};

use super::{Scope, evidence::Check, evidence::Offences, pod_name, user_management::containers};
use crate::api::ImagePolicy;

fn policy_types(p: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = p.spec.as_ref() else {
        return (true, false);
    };
    match &spec.policy_types {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        // Without policyTypes a policy isolates ingress, and egress only if it has egress rules.
        None => (true, spec.egress.is_some()),
    }
}

/// A policy's pod selector, None if it cannot select anything.
fn pod_selector(policy: &NetworkPolicy) -> Option<Selector> {
    let selector = policy
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.clone())
        .unwrap_or_default();
    Selector::try_from(selector).ok()
}

fn selects(selector: &Option<Selector>, pod: &Pod) -> bool {
    let empty = BTreeMap::new();
    selector
        .as_ref()
        .is_some_and(|sel| sel.matches(pod.metadata.labels.as_ref().unwrap_or(&empty)))
}

/// Rules that let everything through: no peers and no ports.
fn allows_everything(p: &NetworkPolicy) -> Vec<&'static str> {
    let Some(spec) = p.spec.as_ref() else {
        return Vec::new();
    };
    let (ingress_isolated, egress_isolated) = policy_types(p);
    let mut open = Vec::new();
    if ingress_isolated
        && spec.ingress.iter().flatten().any(|r| {
            r.from.as_ref().is_none_or(Vec::is_empty) && r.ports.as_ref().is_none_or(Vec::is_empty)
        })
    {
        open.push("ingress");
    }
    if egress_isolated
        && spec.egress.iter().flatten().any(|r| {
            r.to.as_ref().is_none_or(Vec::is_empty) && r.ports.as_ref().is_none_or(Vec::is_empty)
        })
    {
        open.push("egress");
    }
    open
}

fn policy_name(p: &NetworkPolicy) -> &str {
    p.metadata.name.as_deref().unwrap_or("<unnamed>")
}

/// II-2: every component pod is isolated for ingress and egress by some
/// policy, and no policy that selects it lets everything through.
pub fn check_firewall(s: &Scope<'_>) -> Check {
    let mut offences = Offences::default();
    let policies = &s.snapshot.network_policies;
    // Once per policy, not once per pod and policy: a namespace may hold
    // thousands of policies.
    let selectors: Vec<Option<Selector>> = policies.iter().map(|p| pod_selector(p)).collect();
    let mut checked = 0;
    for c in &s.targets {
        if c.pods.is_empty() {
            for p in policies.iter().filter(|p| {
                p.spec.as_ref().and_then(|s| s.pod_selector.as_ref()) == Some(&c.component.selector)
            }) {
                for dir in allows_everything(p) {
                    offences.add(format!(
                        "NetworkPolicy {} allows all {dir} of component {}",
                        policy_name(p),
                        c.component.name
                    ));
                }
            }
            // Judge the selector: a policy must select exactly the component's pods.
            let covered = |want_ingress: bool| {
                policies.iter().any(|p| {
                    let (ingress, egress) = policy_types(p);
                    p.spec.as_ref().and_then(|s| s.pod_selector.as_ref())
                        == Some(&c.component.selector)
                        && if want_ingress { ingress } else { egress }
                })
            };
            checked += 1;
            for (dir, ok) in [("ingress", covered(true)), ("egress", covered(false))] {
                if !ok {
                    offences.add(format!(
                        "no NetworkPolicy isolates {dir} of component {}",
                        c.component.name
                    ));
                }
            }
            continue;
        }
        for pod in &c.pods {
            checked += 1;
            let applying: Vec<_> = policies
                .iter()
                .zip(&selectors)
                .filter(|(_, selector)| selects(selector, pod))
                .map(|(p, _)| p)
                .collect();
            for p in &applying {
                for dir in allows_everything(p) {
                    offences.add(format!(
                        "NetworkPolicy {} allows all {dir} of pod {}",
                        policy_name(p),
                        pod_name(pod)
                    ));
                }
            }
            let ingress = applying.iter().any(|p| policy_types(p).0);
            let egress = applying.iter().any(|p| policy_types(p).1);
            if !ingress {
                offences.add(format!(
                    "pod {} accepts any ingress: no NetworkPolicy selects it for Ingress",
                    pod_name(pod)
                ));
            }
            if !egress {
                offences.add(format!(
                    "pod {} may send anywhere: no NetworkPolicy selects it for Egress",
                    pod_name(pod)
                ));
            }
        }
    }
    // Only this system's figures: counts of the namespace's policies would
    // change this system's evidence whenever a neighbour changes.
    offences.verdict(format!(
        "{checked} pods or components are isolated for ingress and egress by NetworkPolicies"
    ))
}

/// An image reference taken apart: `[registry/]path[:tag][@digest]`.
#[derive(Debug, PartialEq)]
pub struct ImageRef<'a> {
    pub registry: &'a str,
    /// Everything before the tag and digest, as written.
    pub name: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

pub fn parse_image(image: &str) -> ImageRef<'_> {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    let registry = match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    };
    ImageRef {
        registry,
        name,
        tag,
        digest,
    }
}

/// Dotted numbers of a version tag (`v2.0.18-alpine` → [2, 0, 18]).
fn version_numbers(tag: &str) -> Option<Vec<u64>> {
    let numeric: String = tag
        .trim_start_matches('v')
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let parts: Option<Vec<u64>> = numeric
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().ok())
        .collect();
    parts.filter(|p| !p.is_empty())
}

/// The reasons one image breaks the policy.
pub fn image_offences(image: &str, policy: &ImagePolicy) -> Vec<String> {
    let r = parse_image(image);
    let mut out = Vec::new();
    let effective_tag = r.tag.or(if r.digest.is_none() {
        Some("latest")
    } else {
        None
    });
    if let Some(tag) = effective_tag
        && policy.forbid_tags.iter().any(|t| t == tag)
    {
        out.push(format!("image {image} uses the tag {tag}"));
    }
    if policy.require_digest && r.digest.is_none() {
        out.push(format!("image {image} is not pinned by digest"));
    }
    if !policy.allowed_registries.is_empty()
        && !policy.allowed_registries.iter().any(|a| a == r.registry)
    {
        out.push(format!(
            "image {image} comes from {}, which is not an allowed registry",
            r.registry
        ));
    }
    for min in policy.minimum_versions.iter().filter(|m| m.image == r.name) {
        let want = version_numbers(&min.version).unwrap_or_default();
        match r.tag.and_then(version_numbers) {
            Some(have) if have >= want => {}
            Some(_) => out.push(format!(
                "image {image} is older than the minimum version {}",
                min.version
            )),
            None => out.push(format!(
                "image {image} has no version tag to compare with the minimum {}",
                min.version
            )),
        }
    }
    out
}

/// II-3 for the containers of one pod; also the admission rule.
pub fn image_policy_offences(
    policy: &ImagePolicy,
    name: &str,
    spec: &PodSpec,
    offences: &mut Offences,
) {
    use crate::webhook::gateway::{EXPORTER_CONTAINER, GATEWAY_CONTAINER};
    for c in containers(spec) {
        // The operator injected these: say which flag picks another image.
        let flag = match c.name.as_str() {
            GATEWAY_CONTAINER => Some("--gateway-image"),
            EXPORTER_CONTAINER => Some("--exporter-image"),
            _ => None,
        };
        for o in image_offences(c.image.as_deref().unwrap_or_default(), policy) {
            match flag {
                Some(flag) => offences.add(format!(
                    "pod {name}: {o} (injected by the operator: run it with {flag} naming an image spec.images allows, e.g. your registry's mirror pinned by digest)"
                )),
                None => offences.add(format!("pod {name}: {o}")),
            }
        }
    }
}

/// II-3: images pinned, from allowed registries, never a forbidden tag, new enough.
pub fn check_image_versions(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let mut offences = Offences::default();
    let mut images = std::collections::BTreeSet::new();
    for (_, pod, spec) in &pods {
        images.extend(containers(spec).map(|c| c.image.clone().unwrap_or_default()));
        image_policy_offences(&s.system.images, pod_name(pod), spec, &mut offences);
    }
    offences.verdict(format!(
        "{} images meet the image policy: {}",
        images.len(),
        images.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// II-5: CPU and memory limits on every container.
pub fn check_resource_limits(s: &Scope<'_>) -> Check {
    let pods = pods_or_unknown!(s);
    let mut offences = Offences::default();
    let mut checked = 0;
    for (_, pod, spec) in &pods {
        for c in containers(spec) {
            checked += 1;
            let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
            for resource in ["cpu", "memory"] {
                if !limits.is_some_and(|l| l.contains_key(resource)) {
                    offences.add(format!(
                        "pod {} container {} has no {resource} limit",
                        pod_name(pod),
                        c.name
                    ));
                }
            }
        }
    }
    offences.verdict(format!("{checked} containers have CPU and memory limits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_are_taken_apart() {
        let r = parse_image("registry.example.com:5000/factory/broker:2.0.18@sha256:abc");
        assert_eq!(r.registry, "registry.example.com:5000");
        assert_eq!(r.name, "registry.example.com:5000/factory/broker");
        assert_eq!(r.tag, Some("2.0.18"));
        assert_eq!(r.digest, Some("sha256:abc"));
        let r = parse_image("nginx");
        assert_eq!((r.registry, r.name, r.tag), ("docker.io", "nginx", None));
    }

    #[test]
    fn image_policy() {
        let policy: ImagePolicy = serde_saphyr::from_str(
            "{allowedRegistries: [registry.example.com], minimumVersions: [{image: registry.example.com/broker, version: 2.0.18}]}",
        )
        .unwrap();
        assert!(image_offences("registry.example.com/broker:2.0.18", &policy).is_empty());
        assert!(image_offences("registry.example.com/broker:v2.1.0-alpine", &policy).is_empty());
        assert_eq!(
            image_offences("registry.example.com/broker:2.0.9", &policy).len(),
            1
        );
        assert_eq!(
            image_offences("registry.example.com/broker", &policy).len(),
            2,
            "implicit latest, no version"
        );
        assert_eq!(
            image_offences("docker.io/library/nginx:latest", &policy).len(),
            2
        );
        assert!(image_offences("registry.example.com/x@sha256:00", &policy).is_empty());
    }
}
