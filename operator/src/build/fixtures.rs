//! YAML fixtures for the builders' unit tests.
use crate::{
    api::IoTSystem,
    controller::validate::{Neighbourhood, ValidatedSystem, validate},
};

pub const FACTORY: &str = include_str!("../../tests/fixtures/factory.yaml");

pub fn validated(yaml: &str) -> ValidatedSystem {
    let system: IoTSystem = serde_saphyr::from_str(yaml).expect("fixture parses");
    validate(
        &system,
        &Neighbourhood {
            pods: &[],
            systems: &[],
        },
    )
    .expect("fixture is valid")
}
