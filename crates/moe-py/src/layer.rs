//! The layer objects of the Python API: [`Layer`] (a `moe::ConfigurableMoe` built from a
//! config, weights loaded from tensors) and [`HfBlock`] (a `moe_hf::MoeBlock`: router, routed
//! experts and shared experts of one checkpoint layer, as `moe run --model` runs it).
//!
//! Configs and reports cross as JSON text (the serde forms of `MoeConfig` and
//! `ResolutionReport`); the Python package turns them into dicts. Tensors cross by DLPack
//! ([`crate::dlpack`]). The GIL is released while the layer computes.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use moe::ConfigurableMoe;
use moe_core::{BorrowedWeights, DType, MoeConfig, MoeError, Tensor};
use moe_hf::{BlockOptions, HfConfig, MoeBlock};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::dlpack::{DlpackTensor, import};
use crate::errors::guard;

fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, MoeError> {
    serde_json::to_string(v).map_err(|e| MoeError::config(what, format!("cannot serialise: {e}")))
}

/// The lock of a layer object. A layer whose call panicked (caught by [`guard`], leaving the
/// mutex poisoned) may hold half-updated state, so it refuses further calls.
fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, MoeError> {
    m.lock().map_err(|_| MoeError::Lifecycle {
        detail: "an earlier call on this layer panicked; build a new layer".into(),
    })
}

fn parse_dtype(name: &str) -> Result<DType, MoeError> {
    name.parse::<DType>()
}

/// Host tensor of `obj`: borrowed by DLPack, then copied once into the owned storage the
/// layer's `forward` takes (see the crate docs: the kernels read owned vectors).
fn input(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    let b = import(obj, what)?;
    guard(|| b.to_tensor(what))
}

/// One routed MoE layer (`moe::create_moe`), weights by canonical name.
#[pyclass(module = "moe_rs._native", name = "Layer")]
pub struct Layer {
    // A mutex because Python objects may be shared between threads (pyclass needs `Sync`)
    // and the layer's calls mutate it; the GIL is released while a call holds the lock.
    inner: Mutex<ConfigurableMoe>,
}

#[pymethods]
impl Layer {
    /// Builds the layer of `config_json` (the JSON form of `moe_core::MoeConfig`).
    #[new]
    fn new(py: Python<'_>, config_json: &str) -> PyResult<Layer> {
        let inner = py.detach(|| {
            guard(|| {
                let config: MoeConfig = serde_json::from_str(config_json)
                    .map_err(|e| MoeError::config("config", format!("not a MoeConfig: {e}")))?;
                moe::create_moe(config)
            })
        })?;
        Ok(Layer {
            inner: Mutex::new(inner),
        })
    }

    /// Loads every expert from `weights` (name -> tensor, canonical names such as
    /// `"0.w1.weight"`); the tensors are read in place (DLPack borrows, no staging copy).
    fn load_weights(&self, py: Python<'_>, weights: &Bound<'_, PyDict>) -> PyResult<()> {
        let mut src = BorrowedWeights::new();
        for (k, v) in weights.iter() {
            let name: String = k.extract()?;
            let t = import(&v, &name)?;
            src.insert(name, t);
        }
        let inner = &self.inner;
        py.detach(move || guard(|| lock(inner)?.load_weights(&src)))
    }

    /// `[T, H]` output of `x` `[T, H]` and `router_logits` `[T, E]`.
    fn forward(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        router_logits: &Bound<'_, PyAny>,
    ) -> PyResult<DlpackTensor> {
        let x = input(x, "x")?;
        let logits = input(router_logits, "router_logits")?;
        let inner = &self.inner;
        let out = py.detach(move || guard(|| lock(inner)?.forward(&x, &logits)))?;
        DlpackTensor::owned(out)
    }

    /// The resolution report (which backend and communication ran, and why), as JSON.
    fn report_json(&self) -> PyResult<String> {
        guard(|| to_json("report", lock(&self.inner)?.report()))
    }

    /// The layer's config, as JSON.
    fn config_json(&self) -> PyResult<String> {
        guard(|| to_json("config", lock(&self.inner)?.config()))
    }

    #[getter]
    fn backend_name(&self) -> PyResult<String> {
        guard(|| Ok(lock(&self.inner)?.backend_name().to_string()))
    }
}

/// The MoE block of layer `layer` of a Hugging Face checkpoint directory (`moe-hf`).
#[pyclass(module = "moe_rs._native", name = "HfBlock")]
pub struct HfBlock {
    inner: Mutex<MoeBlock>,
}

#[pymethods]
impl HfBlock {
    /// Loads the block; `backend` pins a backend, `dtype` runs in another float dtype,
    /// `dequantize` decodes quantized experts to float at load.
    #[new]
    #[pyo3(signature = (path, layer, *, backend=None, dtype=None, dequantize=false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        layer: usize,
        backend: Option<String>,
        dtype: Option<String>,
        dequantize: bool,
    ) -> PyResult<HfBlock> {
        let inner = py.detach(move || {
            guard(|| {
                let opts = BlockOptions {
                    backend,
                    dtype: dtype.as_deref().map(parse_dtype).transpose()?,
                    dequantize,
                    ..BlockOptions::default()
                };
                MoeBlock::load(&path, layer, opts)
            })
        })?;
        Ok(HfBlock {
            inner: Mutex::new(inner),
        })
    }

    /// The block's output `[T, H]` for `x` `[T, H]` (router, routed and shared experts).
    fn forward(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<DlpackTensor> {
        let x = input(x, "x")?;
        let inner = &self.inner;
        let out = py.detach(move || guard(|| lock(inner)?.forward(&x)))?;
        DlpackTensor::owned(out)
    }

    /// The router's logits `[T, E]` for `x`.
    fn router_logits(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<DlpackTensor> {
        let x = input(x, "x")?;
        let inner = &self.inner;
        let out = py.detach(move || guard(|| lock(inner)?.router_logits(&x)))?;
        DlpackTensor::owned(out)
    }

    fn report_json(&self) -> PyResult<String> {
        guard(|| to_json("report", lock(&self.inner)?.report()))
    }

    /// The routed layer's config, as JSON.
    fn config_json(&self) -> PyResult<String> {
        guard(|| to_json("config", lock(&self.inner)?.config()))
    }

    #[getter]
    fn family(&self) -> PyResult<&'static str> {
        guard(|| Ok(lock(&self.inner)?.family().name()))
    }

    #[getter]
    fn backend_name(&self) -> PyResult<String> {
        guard(|| Ok(lock(&self.inner)?.backend_name().to_string()))
    }

    #[getter]
    fn dtype(&self) -> PyResult<&'static str> {
        guard(|| Ok(lock(&self.inner)?.dtype().as_str()))
    }
}

/// The routed layer's config (JSON) of layer `layer` of a Hugging Face `config.json` text:
/// the same mapping `moe-hf` applies to a checkpoint, so a transformers model's own config
/// yields the layer that matches its block.
#[pyfunction]
#[pyo3(signature = (config_json, layer, dtype=None))]
pub fn moe_config_from_hf(config_json: &str, layer: usize, dtype: Option<&str>) -> PyResult<String> {
    guard(|| {
        let hf = HfConfig::from_json_str(config_json, "config.json")?;
        hf.check_layer(layer)?;
        let dtype = dtype.map(parse_dtype).transpose()?;
        let config = hf.moe_config(layer, dtype)?;
        to_json("config", &config)
    })
}
