//! Whether the controller may bind the subjects of `spec.access`. Only the
//! admission webhook knows who asked for them (see `webhook::access`); a
//! controller running without its webhooks cannot tell a cluster
//! administrator from anyone who may write IoTSystems, so it binds nobody
//! unless told that only administrators can write them.

use super::validate::{ValidatedSystem, ValidationError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessReview {
    /// This operator's IoTSystem webhook reviews every request that adds a subject.
    AtAdmission,
    /// No review, by the installer's choice (`--trust-unreviewed-access`).
    Trusted,
    /// No review: subjects are not bound.
    Unavailable,
}

impl AccessReview {
    pub fn permits(self, system: &ValidatedSystem) -> Result<(), ValidationError> {
        let access = &system.access;
        let named = access.admins.len() + access.operators.len() + access.viewers.len();
        if self == AccessReview::Unavailable && named > 0 {
            return Err(ValidationError::AccessNotReviewed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{FACTORY, validated};

    #[test]
    fn subjects_are_bound_only_when_someone_reviewed_who_named_them() {
        let system = validated(FACTORY);
        assert_eq!(AccessReview::AtAdmission.permits(&system), Ok(()));
        assert_eq!(AccessReview::Trusted.permits(&system), Ok(()));
        let refused = AccessReview::Unavailable.permits(&system).unwrap_err();
        assert_eq!(refused.reason(), "AccessNotReviewed");
        let mut nobody = system.clone();
        nobody.access = Default::default();
        assert_eq!(AccessReview::Unavailable.permits(&nobody), Ok(()));
    }
}
