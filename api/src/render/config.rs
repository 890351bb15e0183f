//! Operator-wide settings that shape the rendered objects.

/// The sidecar image of this operator release, the default of its
/// `--sidecar-image` flag.
pub const DEFAULT_SIDECAR_IMAGE: &str = concat!(
    "ghcr.io/quiesce-dev/quiesce-sidecar:",
    env!("CARGO_PKG_VERSION")
);

/// Operator-wide settings that shape the rendered objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderConfig {
    /// Sidecar image for resources that do not set `spec.sidecar.image`.
    pub sidecar_image: String,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self {
            sidecar_image: DEFAULT_SIDECAR_IMAGE.to_owned(),
        }
    }
}
