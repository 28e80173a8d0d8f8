//! Rust errors as Python exceptions, and the guard that keeps panics on the Rust side.
//!
//! Every [`MoeError`] becomes a `moe_rs.MoeError` (or the subclass for its kind) carrying the
//! Rust message verbatim, so a Python caller reads what a Rust caller would. Calls into the
//! layer run under [`guard`]: a panic there (a bug) is caught and raised as
//! `moe_rs.InternalError` instead of unwinding through the interpreter.

use std::panic::{AssertUnwindSafe, catch_unwind};

use moe_core::MoeError as RustError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    moe_rs,
    MoeError,
    PyException,
    "An error of the MoE layer runtime (the Rust error's message)."
);
create_exception!(moe_rs, ShapeError, MoeError, "A tensor has the wrong shape.");
create_exception!(moe_rs, DTypeError, MoeError, "A tensor has the wrong element type.");
create_exception!(
    moe_rs,
    DeviceError,
    MoeError,
    "A tensor is on a device this layer does not take."
);
create_exception!(
    moe_rs,
    ConfigError,
    MoeError,
    "A config, checkpoint or model cannot be used as given."
);
create_exception!(
    moe_rs,
    InternalError,
    MoeError,
    "A bug: the Rust side panicked (caught before it reached Python)."
);

/// The Python exception of a Rust error, with its `Display` message.
pub fn to_py(e: RustError) -> PyErr {
    let msg = e.to_string();
    match e {
        RustError::ShapeMismatch { .. } => ShapeError::new_err(msg),
        RustError::DTypeMismatch { .. } => DTypeError::new_err(msg),
        RustError::InvalidConfig { .. }
        | RustError::UnsupportedModel { .. }
        | RustError::MissingTensor { .. }
        | RustError::BadCheckpoint { .. }
        | RustError::Io { .. } => ConfigError::new_err(msg),
        _ => MoeError::new_err(msg),
    }
}

/// A `DeviceError` with `msg`.
pub fn device_error(msg: String) -> PyErr {
    DeviceError::new_err(msg)
}

/// Runs `f`, turning its error into the Python exception and a panic into `InternalError`.
pub fn guard<T>(f: impl FnOnce() -> Result<T, RustError>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(to_py),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            Err(InternalError::new_err(format!("the MoE runtime panicked: {what}")))
        }
    }
}

/// Registers the exception classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("MoeError", py.get_type::<MoeError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("DTypeError", py.get_type::<DTypeError>())?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}
