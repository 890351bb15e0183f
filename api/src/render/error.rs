//! Why an InferenceDeployment cannot be rendered.

use crate::reason::Reason;
use crate::rules::Violation;

/// Why an InferenceDeployment cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The resource breaks the rules the API server enforces (see
    /// [`crate::rules`]); only a resource that did not come from the API
    /// server can.
    #[error("the InferenceDeployment is invalid:{}", bullet_list(.0))]
    Invalid(Vec<Violation>),
    /// The resource is valid, but what quiesce must inject cannot coexist
    /// with it (a container or volume with quiesce's name, a port or mount
    /// path quiesce needs): no valid pod could be made.
    #[error("quiesce cannot render the InferenceDeployment:{}", bullet_list(.0))]
    Unrenderable(Vec<Violation>),
}

impl RenderError {
    /// Every violation, with the field to fix.
    pub fn violations(&self) -> &[Violation] {
        match self {
            Self::Invalid(violations) | Self::Unrenderable(violations) => violations,
        }
    }

    /// A bounded PascalCase reason, for a condition or a metric label.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Invalid(_) => Reason::InvalidSpec,
            Self::Unrenderable(_) => Reason::Unrenderable,
        }
    }
}

fn bullet_list(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("\n  - {v}")).collect()
}
