"""The checkpoint block from Python equals `moe run --model` on every vendored Hugging Face
fixture (seven families, f32 and bf16), and both match the transformers outputs stored with
the fixture within its tolerances."""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load_file

import moe_rs
from conftest import DTYPES, FAMILIES, fixtures_dir

TOL = {"float32": 1e-5, "bfloat16": 3e-2}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_block_from_python_equals_moe_run(family, dtype, moe_bin, tmp_path):
    d = fixtures_dir() / "hf" / f"{family}-{dtype}"
    io = load_file(str(d / "io.safetensors"))
    block = moe_rs.HfBlock(d, 0)
    assert block.family == {"llama4": "llama4_text"}.get(family, family)
    for t in (1, 7, 130):
        x = io[f"x_{t}"]
        y = block(x)
        assert y.dtype == x.dtype and y.shape == x.shape
        out = tmp_path / f"y_{t}.safetensors"
        subprocess.run(
            [str(moe_bin), "run", "--model", str(d), "--input", str(d / "io.safetensors"),
             "--input-key", f"x_{t}", "--output", str(out)],
            check=True, capture_output=True,
        )
        y_cli = load_file(str(out))["y"]
        # Same loader, same backend selection, same kernels: the same bits.
        assert torch.equal(y, y_cli), f"{family}-{dtype} T={t}: rel L2 {rel_l2(y, y_cli):.3e}"
        assert rel_l2(y, io[f"y_{t}"]) <= TOL[dtype]
    assert isinstance(block.report(), dict)


def test_block_errors():
    d = fixtures_dir() / "hf" / "mixtral-float32"
    with pytest.raises(moe_rs.ConfigError):
        moe_rs.HfBlock(d, 5)
    with pytest.raises(moe_rs.ConfigError, match="i/o error|config.json"):
        moe_rs.HfBlock(d / "missing", 0)
    block = moe_rs.HfBlock(d, 0, backend="reference")
    assert block.backend_name == "reference"
    with pytest.raises(moe_rs.ShapeError, match=r"`x`"):
        block(torch.zeros(3, 65))
