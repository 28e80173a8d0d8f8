"""A drop-in for transformers' sparse MoE blocks: :func:`patch_model` replaces the sparse
MoE block of every MoE decoder layer of a loaded model with :class:`MoeRsBlock`, which keeps
the model's router (``block.gate``) and shared experts and runs the routed experts through
the moe layer.

Families (transformers 5 module layout: ``experts.gate_up_proj`` ``[E, 2I, H]`` with the
gate half first, ``experts.down_proj`` ``[E, H, I]``, ``gate(x)`` returning the router
logits first): Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3. GPT-OSS and Llama 4 keep
their experts in other layouts and are refused with ``NotImplementedError`` for now.

Weights: the layer reads the model's expert tensors in place (DLPack views of each expert's
rows, no staging copy) and lays them out in its own format; the patched block then drops its
reference to the model's ``experts`` module, so the experts are held once, by the layer.
The routing math is the family's, as ``moe-hf`` maps the model's config (the layer routes
from the gate's logits), and the router and shared experts run in torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import Layer, moe_config_from_hf

_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def _expert_weights(experts: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical per-expert views of the fused tensors (no copies: each is a row range of one
    expert's contiguous slice)."""
    gate_up = getattr(experts, "gate_up_proj", None)
    down = getattr(experts, "down_proj", None)
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor):
        raise NotImplementedError(
            f"{type(experts).__name__}: the drop-in needs fused `gate_up_proj` and `down_proj` tensors"
        )
    e, two_i, h = gate_up.shape
    i = two_i // 2
    if two_i != 2 * i or tuple(down.shape) != (e, h, i) or getattr(experts, "has_bias", False):
        raise NotImplementedError(
            f"{type(experts).__name__}: experts laid out as gate_up {tuple(gate_up.shape)}, down "
            f"{tuple(down.shape)}; the drop-in takes [E, 2I, H] (gate half first) and [E, H, I] without biases"
        )
    gate_up, down = gate_up.detach(), down.detach()
    w = {}
    for x in range(e):
        w[f"{x}.w1.weight"] = gate_up[x, :i]
        w[f"{x}.w3.weight"] = gate_up[x, i:]
        w[f"{x}.w2.weight"] = down[x]
    return w


class MoeRsBlock(nn.Module):
    """A transformers sparse MoE block whose routed experts run in the moe layer.

    ``block`` is the model's block (its ``gate`` and shared experts are kept as submodules);
    ``hf_config`` the model's config as a dict; ``layer_idx`` the decoder layer's index.
    """

    def __init__(self, block: nn.Module, hf_config: dict, layer_idx: int, backend: str | None = None) -> None:
        super().__init__()
        experts = block.experts
        dtype = experts.gate_up_proj.dtype
        if dtype not in _DTYPES:
            raise NotImplementedError(f"experts in {dtype}: the drop-in takes float32, bfloat16 or float16")
        config = moe_config_from_hf(hf_config, layer_idx, _DTYPES[dtype])
        bias = getattr(block.gate, "e_score_correction_bias", None)
        if bias is not None and config["routing"].get("method") == "deep_seek_v3":
            config["routing"]["e_score_correction_bias"] = bias.detach().float().tolist()
        if backend is not None:
            config["backend"] = backend
        self.layer = Layer(config)
        self.layer.load_weights(_expert_weights(experts))
        self.hidden_size = config["hidden_size"]
        self.gate = block.gate
        self.shared_expert = getattr(block, "shared_expert", None)
        self.shared_expert_gate = getattr(block, "shared_expert_gate", None)
        self.shared_experts = getattr(block, "shared_experts", None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, self.hidden_size).contiguous()
        logits = self.gate(x)[0]
        y = self.layer.forward(x, logits.float().contiguous())
        if self.shared_expert is not None:
            s = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                s = torch.sigmoid(self.shared_expert_gate(x)) * s
            y = y + s
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y.reshape(shape)


def _decoder_layers(model: nn.Module) -> Any:
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers", "layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise ValueError(f"{type(model).__name__}: no decoder layers found")


def patch_model(model: nn.Module, *, backend: str | None = None) -> list[int]:
    """Replaces the sparse MoE block (``layer.mlp`` with ``gate`` and ``experts``) of every
    decoder layer of ``model`` by a :class:`MoeRsBlock`; returns the patched layer indices."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hf = text.to_dict()
    hf.setdefault("model_type", getattr(text, "model_type", None))
    patched = []
    for idx, layer in enumerate(_decoder_layers(model)):
        block = getattr(layer, "mlp", None)
        if block is None or not hasattr(block, "experts") or not hasattr(block, "gate"):
            continue
        layer.mlp = MoeRsBlock(block, hf, idx, backend)
        patched.append(idx)
    return patched
