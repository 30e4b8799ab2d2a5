//! One cert-manager Certificate per TLS port (checklist items III-9, VI-4):
//! the Service's names in short, namespaced and cluster-local forms, the
//! issuer from `spec.tls`, renewal before expiry, and a fresh key at each
//! renewal.

use crate::{
    api::{
        IssuerKind, KeyAlgorithm,
        certmanager::certificate::{
            Certificate, CertificateIssuerRef, CertificatePrivateKey,
            CertificatePrivateKeyAlgorithm, CertificatePrivateKeyRotationPolicy, CertificateSpec,
        },
    },
    controller::validate::{ValidComponent, ValidatedSystem},
};

use super::meta::{child_meta, child_name};

/// `<system>-<component>-<port>`; also the name of the Secret cert-manager writes.
pub fn certificate_name(
    system: &ValidatedSystem,
    component: &ValidComponent,
    port: &str,
) -> String {
    child_name(&system.name, &[&component.name, port])
}

/// The names clients use for the component's Service.
pub fn service_names(system: &ValidatedSystem, component: &ValidComponent) -> Vec<String> {
    let (svc, ns) = (&component.service, &system.namespace);
    vec![
        svc.clone(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
    ]
}

/// No Certificates without `spec.tls`: there is no issuer to ask.
pub fn build_certificates(system: &ValidatedSystem) -> Vec<Certificate> {
    let Some(tls) = &system.tls else {
        return Vec::new();
    };
    let (algorithm, size) = match tls.key_algorithm {
        KeyAlgorithm::ECDSA => (CertificatePrivateKeyAlgorithm::Ecdsa, 256),
        KeyAlgorithm::RSA => (CertificatePrivateKeyAlgorithm::Rsa, 3072),
    };
    let kind = match tls.issuer_ref.kind {
        IssuerKind::Issuer => "Issuer",
        IssuerKind::ClusterIssuer => "ClusterIssuer",
    };
    system
        .components
        .iter()
        .flat_map(|c| c.ports.iter().filter(|p| p.tls).map(move |p| (c, p)))
        .map(|(component, port)| {
            let name = certificate_name(system, component, &port.name);
            Certificate {
                metadata: child_meta(system, name.clone(), Some(&component.name)),
                spec: CertificateSpec {
                    secret_name: name,
                    dns_names: Some(service_names(system, component)),
                    issuer_ref: CertificateIssuerRef {
                        group: Some("cert-manager.io".into()),
                        kind: Some(kind.into()),
                        name: tls.issuer_ref.name.clone(),
                    },
                    duration: Some(tls.duration.clone()),
                    renew_before: Some(tls.renew_before.clone()),
                    private_key: Some(CertificatePrivateKey {
                        algorithm: Some(algorithm.clone()),
                        size: Some(size),
                        rotation_policy: Some(CertificatePrivateKeyRotationPolicy::Always),
                        encoding: None,
                    }),
                    ..CertificateSpec::default()
                },
                status: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{FACTORY, validated};

    const TLS: &str = "  tls: {issuerRef: {kind: ClusterIssuer, name: factory-ca}}\n  access:";

    #[test]
    fn one_certificate_per_tls_port() {
        let system = validated(&FACTORY.replacen("  access:", TLS, 1));
        let certs = build_certificates(&system);
        let names: Vec<_> = certs
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["factory-gateway-mqtts", "factory-dashboard-https"]);
        let gw = &certs[0].spec;
        assert_eq!(gw.secret_name, "factory-gateway-mqtts");
        assert_eq!(
            gw.dns_names.as_deref().unwrap(),
            [
                "gateway",
                "gateway.plant",
                "gateway.plant.svc",
                "gateway.plant.svc.cluster.local"
            ]
        );
        assert_eq!(gw.issuer_ref.kind.as_deref(), Some("ClusterIssuer"));
        assert_eq!(gw.renew_before.as_deref(), Some("720h"));
        let key = gw.private_key.as_ref().unwrap();
        assert_eq!(
            (key.algorithm.clone(), key.size),
            (Some(CertificatePrivateKeyAlgorithm::Ecdsa), Some(256))
        );
        assert_eq!(
            key.rotation_policy,
            Some(CertificatePrivateKeyRotationPolicy::Always)
        );
        assert_eq!(
            certs[0].metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-factory"
        );
    }

    #[test]
    fn rsa_keys_are_3072_bits_and_no_issuer_means_no_certificates() {
        let rsa = TLS.replace("factory-ca}", "factory-ca}, keyAlgorithm: RSA");
        let system = validated(&FACTORY.replacen("  access:", &rsa, 1));
        assert_eq!(
            build_certificates(&system)[0]
                .spec
                .private_key
                .as_ref()
                .unwrap()
                .size,
            Some(3072)
        );
        assert!(build_certificates(&validated(FACTORY)).is_empty());
    }
}
