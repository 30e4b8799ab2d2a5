//! Fixtures and helpers shared by the control-plane tests.
use iotposture::api::IoTSystem;
use iotposture_e2e::{TestNamespace, wait_until};
use k8s_openapi::api::core::v1::Event;
use kube::{Api, api::ListParams};

/// The factory of the unit tests, without cluster-assigned metadata.
pub fn factory(name: &str) -> IoTSystem {
    let yaml = include_str!("../../../operator/tests/fixtures/factory.yaml");
    let mut system: IoTSystem = serde_saphyr::from_str(yaml).unwrap();
    system.metadata = Default::default();
    system.metadata.name = Some(name.into());
    system
}

/// Waits for the Ready condition to have `status` and returns the system.
pub async fn wait_ready(ns: &TestNamespace, name: &str, status: &str) -> IoTSystem {
    let api: Api<IoTSystem> = ns.api();
    wait_until(&format!("{name} Ready={status}"), || async {
        let s = api.get(name).await.ok()?;
        let st = s.status.as_ref()?;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == status && st.observed_generation == s.metadata.generation).then_some(s)
    })
    .await
}

pub fn ready_condition(
    system: &IoTSystem,
) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    system
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready condition")
}

/// Waits for an Event with `reason` on the named IoTSystem and returns its message.
pub async fn wait_event(ns: &TestNamespace, system: &str, reason: &str) -> String {
    let events: Api<Event> = ns.api();
    wait_until(&format!("Event {reason} on {system}"), || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some(system)
                    && e.reason.as_deref() == Some(reason)
            })
            .and_then(|e| e.message)
    })
    .await
}

/// A TLS Secret as cert-manager would write it for the port: the CA, and a
/// certificate for the Service's names signed by it. Returns the CA (PEM).
pub async fn tls_secret(ns: &TestNamespace, name: &str, service: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "e2e-factory-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let names = vec![
        service.to_string(),
        format!("{service}.{}", ns.name),
        format!("{service}.{}.svc", ns.name),
        format!("{service}.{}.svc.cluster.local", ns.name),
    ];
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"ca.crt": ca_pem, "tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
    }))
    .unwrap();
    ns.api::<k8s_openapi::api::core::v1::Secret>()
        .create(&kube::api::PostParams::default(), &secret)
        .await
        .unwrap();
    ca_pem
}
