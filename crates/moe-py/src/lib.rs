//! `moe_rs`: the MoE layer from Python (PyO3, abi3 for CPython >= 3.10).
//!
//! The native module `moe_rs._native` holds [`layer::Layer`] (a routed layer from a config),
//! [`layer::HfBlock`] (a Hugging Face checkpoint's MoE block), [`dlpack::DlpackTensor`] (the
//! layer's outputs, exported by DLPack without copies) and the exception classes of
//! [`errors`], and EPLB placement planning ([`eplb`]). The Python package around it (`python/moe_rs`) turns JSON into dicts, tensors
//! into the caller's kind (torch in, torch out; NumPy in, NumPy out) and holds the
//! transformers drop-in.
//!
//! Tensors come in by DLPack and are borrowed (`moe_core::BorrowedHostTensor`): weights are
//! read in place at load; activations are copied once into the owned storage the layer's
//! `forward` takes, because the kernels read `moe_core::HostStorage` vectors. CUDA tensors are
//! refused with `moe_rs.DeviceError` in this build.

mod dlpack;
mod eplb;
mod errors;
mod layer;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<dlpack::DlpackTensor>()?;
    m.add_class::<layer::Layer>()?;
    m.add_class::<layer::HfBlock>()?;
    m.add_function(wrap_pyfunction!(dlpack::borrow, m)?)?;
    m.add_function(wrap_pyfunction!(layer::moe_config_from_hf, m)?)?;
    m.add_function(wrap_pyfunction!(eplb::eplb_plan, m)?)?;
    m.add_function(wrap_pyfunction!(eplb::eplb_placement_yaml, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
