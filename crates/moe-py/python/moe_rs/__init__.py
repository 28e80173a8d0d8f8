"""The moe Mixture-of-Experts layer runtime from Python.

Tensors cross by DLPack without copies: NumPy arrays and torch CPU tensors go in (f32, bf16,
f16 activations; weights in the layer's dtype), and outputs come back as the input's kind
(torch in, torch out; NumPy in, NumPy out), sharing the memory the layer wrote.

>>> import moe_rs, torch
>>> layer = moe_rs.Layer({"num_experts": 4, "hidden_size": 8, "intermediate_size": 16,
...                       "activation": {"kind": "swiglu"}, "dtype": "f32",
...                       "routing": {"method": "renormalize", "top_k": 2}})
>>> layer.load_weights(weights)            # {"0.w1.weight": tensor [I, H], ...}
>>> y = layer.forward(x, router_logits)    # torch.Tensor [T, H]
>>> layer.report()["backend"]

Errors of the Rust runtime are raised as :class:`MoeError` (subclasses :class:`ShapeError`,
:class:`DTypeError`, :class:`DeviceError`, :class:`ConfigError`, :class:`InternalError`) with
the Rust error's message.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from . import _native
from ._native import (
    ConfigError,
    DeviceError,
    DlpackTensor,
    DTypeError,
    InternalError,
    MoeError,
    ShapeError,
)

__version__: str = _native.__version__

__all__ = [
    "ConfigError",
    "DTypeError",
    "DeviceError",
    "DlpackTensor",
    "HfBlock",
    "InternalError",
    "Layer",
    "MoeError",
    "ShapeError",
    "borrow",
    "eplb_placement_yaml",
    "eplb_plan",
    "moe_config_from_hf",
]


def _is_torch(t: Any) -> bool:
    return type(t).__module__.startswith("torch")


def _prepare(t: Any) -> Any:
    """A torch tensor that requires grad is exported through a detached view (same memory):
    DLPack refuses tensors in an autograd graph, and the layer never writes them."""
    if _is_torch(t) and getattr(t, "requires_grad", False):
        return t.detach()
    return t


def _like(out: DlpackTensor, like: Any) -> Any:
    """``out`` as the kind of ``like``: a torch tensor or a NumPy array on the same memory."""
    if _is_torch(like):
        import torch

        return torch.from_dlpack(out)
    import numpy

    return numpy.from_dlpack(out)


def borrow(x: Any) -> Any:
    """``x`` as the layer reads it (borrowed by DLPack, no copy), handed back as ``x``'s kind.

    The result shares ``x``'s memory; it exercises the import path, so it raises the same
    errors ``forward`` would for ``x``'s dtype, layout or device.
    """
    return _like(_native.borrow(_prepare(x)), x)


def moe_config_from_hf(hf_config: Mapping[str, Any] | str, layer: int, dtype: str | None = None) -> dict:
    """The routed layer's config for layer ``layer`` of a Hugging Face ``config.json``
    (a dict, or its JSON text), as ``moe-hf`` maps it for a checkpoint."""
    text = hf_config if isinstance(hf_config, str) else json.dumps(hf_config)
    return json.loads(_native.moe_config_from_hf(text, layer, dtype))


def eplb_plan(load: Any, num_slots: int, num_gpus: int, *, num_nodes: int = 1, num_groups: int = 1,
              algorithm: str = "default", max_changed_slots: int | None = None,
              previous: Any = None) -> dict:
    """An expert placement for every layer of ``load`` (``[L][E]`` tokens per expert: nested
    lists, a NumPy array or a torch tensor), as ``moe eplb plan`` computes it.

    ``algorithm`` is ``"default"`` (this runtime's, at most ``max_changed_slots`` changes per
    layer against ``previous``, a ``[L][num_slots]`` expert-per-slot table), ``"deepseek"`` or
    ``"greedy"``. The result has ``phy2log`` (``[L][num_slots]``: the expert of each slot),
    ``log2phy``, ``logcnt``, ``balancedness`` and ``balancedness_before``, ``changed_slots``.
    """
    rows = load.tolist() if hasattr(load, "tolist") else load
    prev = previous.tolist() if hasattr(previous, "tolist") else previous
    return json.loads(_native.eplb_plan([[float(v) for v in r] for r in rows], num_slots, num_gpus,
                                        num_nodes=num_nodes, num_groups=num_groups, algorithm=algorithm,
                                        max_changed_slots=max_changed_slots, previous=prev))


def eplb_placement_yaml(plan: Mapping[str, Any], layer_indices: list[int], layer_updates_per_iter: int = 0) -> str:
    """TensorRT-LLM's static placement file (YAML) of a plan from :func:`eplb_plan`, for the
    model layers ``layer_indices`` (one per planned layer)."""
    return _native.eplb_placement_yaml(json.dumps(dict(plan)), list(layer_indices), layer_updates_per_iter)


class Layer:
    """One routed MoE layer (``moe::create_moe``): router logits in, routed experts, weighted
    combine out. ``config`` is the JSON form of ``moe_core::MoeConfig`` as a dict."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._inner = _native.Layer(json.dumps(dict(config)))

    @classmethod
    def from_hf_config(cls, hf_config: Mapping[str, Any] | str, layer: int, dtype: str | None = None,
                       backend: str | None = None) -> "Layer":
        """The layer of one MoE layer of a Hugging Face model config (weights loaded
        separately, e.g. from the model's own tensors)."""
        config = moe_config_from_hf(hf_config, layer, dtype)
        if backend is not None:
            config["backend"] = backend
        return cls(config)

    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Loads the experts from ``weights``: canonical names (``"{e}.w1.weight"`` gate
        ``[I, H]``, ``"{e}.w3.weight"`` up ``[I, H]``, ``"{e}.w2.weight"`` down ``[H, I]``,
        optional ``.bias``) to tensors, read in place by DLPack."""
        self._inner.load_weights({k: _prepare(v) for k, v in weights.items()})

    def forward(self, x: Any, router_logits: Any) -> Any:
        """The layer's output ``[T, H]`` for ``x`` ``[T, H]`` and ``router_logits``
        ``[T, E]``, as ``x``'s kind (torch or NumPy)."""
        return _like(self._inner.forward(_prepare(x), _prepare(router_logits)), x)

    __call__ = forward

    def report(self) -> dict:
        """The resolution report: the backend and communication chosen and why the other
        candidates were rejected."""
        return json.loads(self._inner.report_json())

    def config(self) -> dict:
        """The layer's config (``moe_core::MoeConfig`` as a dict)."""
        return json.loads(self._inner.config_json())

    @property
    def backend_name(self) -> str:
        return self._inner.backend_name


class HfBlock:
    """The MoE block (router, routed experts, shared experts) of layer ``layer`` of a Hugging
    Face checkpoint directory (``config.json`` + safetensors, float or quantized), as
    ``moe run --model`` runs it."""

    def __init__(self, path: str | os.PathLike, layer: int, *, backend: str | None = None,
                 dtype: str | None = None, dequantize: bool = False) -> None:
        self._inner = _native.HfBlock(os.fspath(path), layer, backend=backend, dtype=dtype,
                                      dequantize=dequantize)

    def forward(self, x: Any) -> Any:
        """The block's output ``[T, H]`` for ``x`` ``[T, H]``, as ``x``'s kind."""
        return _like(self._inner.forward(_prepare(x)), x)

    __call__ = forward

    def router_logits(self, x: Any) -> Any:
        """The router's logits ``[T, E]`` (f32) for ``x``."""
        return _like(self._inner.router_logits(_prepare(x)), x)

    def report(self) -> dict:
        return json.loads(self._inner.report_json())

    def config(self) -> dict:
        """The routed layer's config."""
        return json.loads(self._inner.config_json())

    @property
    def family(self) -> str:
        return self._inner.family

    @property
    def backend_name(self) -> str:
        return self._inner.backend_name

    @property
    def dtype(self) -> str:
        return self._inner.dtype
