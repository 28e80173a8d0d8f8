"""Shared pieces of the moe_rs tests: the vendored Hugging Face fixtures, the `moe` binary
the fixture comparisons run, and a torch reference of a routed MoE layer."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss", "llama4"]
DTYPES = ["float32", "bfloat16"]


def fixtures_dir() -> pathlib.Path:
    """`$MOE_FIXTURES_DIR` when set (as moe-testkit reads it), else the vendored folder."""
    env = os.environ.get("MOE_FIXTURES_DIR")
    return pathlib.Path(env) if env else REPO / "crates" / "moe-testkit" / "fixtures"


@pytest.fixture(scope="session")
def moe_bin() -> pathlib.Path:
    """The `moe` command: `$MOE_BIN`, else built here with cargo (the test profile, which
    `cargo xtask test` has already built, so this is normally a no-op)."""
    env = os.environ.get("MOE_BIN")
    if env:
        return pathlib.Path(env)
    subprocess.run(
        ["cargo", "build", "--quiet", "--profile", "test", "-p", "moe-cli", "--bin", "moe"],
        cwd=REPO,
        check=True,
    )
    return REPO / "target" / "debug" / "moe"
