//! The one error type of the workspace: every failure a user can cause is a typed variant
//! that names the offending item (tensor, field, expert, rank), never a panic.

use crate::problem::RejectReason;

/// Result alias used across the workspace.
pub type Result<T, E = MoeError> = std::result::Result<T, E>;

/// Errors of the MoE runtime, grouped by where they arise.
#[derive(Debug, thiserror::Error)]
pub enum MoeError {
    // --- configuration --------------------------------------------------------------------
    /// A config field holds a value the layer cannot be built with.
    #[error("invalid config `{field}`: {detail}")]
    InvalidConfig { field: String, detail: String },

    /// A checkpoint family or layer cannot be loaded as an MoE layer.
    #[error("unsupported model: {detail}")]
    UnsupportedModel { detail: String },

    // --- shapes and dtypes ----------------------------------------------------------------
    /// A tensor has the wrong shape.
    #[error("shape mismatch for `{what}`: expected {expected}, got {actual:?}")]
    ShapeMismatch {
        what: String,
        expected: String,
        actual: Vec<usize>,
    },

    /// A tensor has the wrong element type.
    #[error("dtype mismatch for `{what}`: expected {expected}, got {actual}")]
    DTypeMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// A value is not finite where the layer needs it to be (router logits, weights).
    #[error("non-finite value in `{what}` at {location}")]
    NonFinite { what: String, location: String },

    // --- weights and files ----------------------------------------------------------------
    /// A tensor the layer needs is not in the checkpoint.
    #[error("missing tensor `{name}`")]
    MissingTensor { name: String },

    /// A checkpoint file is unreadable, truncated or inconsistent.
    #[error("bad checkpoint `{path}`: {detail}")]
    BadCheckpoint { path: String, detail: String },

    /// An I/O failure on a named file.
    #[error("i/o error on `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    // --- capabilities and selection -------------------------------------------------------
    /// The chosen backend cannot run this problem.
    #[error("backend `{backend}` cannot implement this layer ({reason}): {detail}")]
    Unsupported {
        backend: String,
        reason: RejectReason,
        detail: String,
    },

    /// No backend is eligible; the detail lists every candidate's rejection.
    #[error("no eligible MoE backend: {detail}")]
    NoEligibleBackend { detail: String },

    /// A CUDA type was used in a build without the `cuda` feature.
    #[error("this build of the MoE runtime was compiled without CUDA support (feature `cuda`)")]
    NotCompiledWithCuda,

    /// A lifecycle step ran out of order (forward before weights were loaded, ...).
    #[error("lifecycle error: {detail}")]
    Lifecycle { detail: String },

    // --- communication --------------------------------------------------------------------
    /// A collective failed or a peer did not answer before the deadline.
    #[error("communication error{}: {detail}", peer.map(|p| format!(" with rank {p}")).unwrap_or_default())]
    Comm { peer: Option<usize>, detail: String },

    // --- backends -------------------------------------------------------------------------
    /// An error raised inside a backend (device runtime, compiler), kept opaque here so GPU
    /// types never leak into the contracts.
    #[error("backend error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),

    /// Work queued while capturing a CUDA graph of `what` could not be captured (a host
    /// synchronisation, a pageable host copy, a download): the capture was ended and
    /// discarded, and the device stays usable.
    #[error("CUDA graph capture of {what} failed: {detail}")]
    GraphCapture { what: String, detail: String },
}

impl MoeError {
    /// Shorthand for [`MoeError::InvalidConfig`].
    pub fn config(field: impl Into<String>, detail: impl Into<String>) -> Self {
        MoeError::InvalidConfig {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// Shorthand for [`MoeError::ShapeMismatch`].
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, actual: &[usize]) -> Self {
        MoeError::ShapeMismatch {
            what: what.into(),
            expected: expected.into(),
            actual: actual.to_vec(),
        }
    }

    /// Shorthand for [`MoeError::Lifecycle`].
    pub fn lifecycle(detail: impl Into<String>) -> Self {
        MoeError::Lifecycle { detail: detail.into() }
    }
}
