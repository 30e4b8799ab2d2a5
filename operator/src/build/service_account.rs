//! One ServiceAccount per component (checklist items I-5, I-6): no component
//! runs as `default`, and none shares an identity with another. The token is not
//! mounted unless the component declares it needs the API (I-10).

use k8s_openapi::api::core::v1::ServiceAccount;

use super::meta::{child_meta, child_name};
use crate::controller::validate::{ValidComponent, ValidatedSystem};

pub fn service_account_name(system: &ValidatedSystem, component: &ValidComponent) -> String {
    child_name(&system.name, &[&component.name])
}

pub fn build_service_accounts(system: &ValidatedSystem) -> Vec<ServiceAccount> {
    system
        .components
        .iter()
        .map(|c| ServiceAccount {
            metadata: child_meta(system, service_account_name(system, c), Some(&c.name)),
            automount_service_account_token: Some(c.automount_service_account_token),
            ..ServiceAccount::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::validated;

    #[test]
    fn one_account_per_component_without_token_by_default() {
        let system = validated(crate::build::fixtures::FACTORY);
        let accounts = build_service_accounts(&system);
        let names: Vec<_> = accounts
            .iter()
            .map(|a| a.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "factory-line-sensor",
                "factory-gateway",
                "factory-dashboard"
            ]
        );
        assert_eq!(accounts[0].automount_service_account_token, Some(false));
        // The dashboard declares that it talks to the API.
        assert_eq!(accounts[2].automount_service_account_token, Some(true));
        let labels = accounts[1].metadata.labels.as_ref().unwrap();
        assert_eq!(labels["iotposture.dev/component"], "gateway");
        assert_eq!(
            accounts[1].metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-factory"
        );
    }
}
