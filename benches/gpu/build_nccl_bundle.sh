#!/usr/bin/env bash
# Builds the NCCL bundle for the GPU machine: the release `nccl-exchange` and `nccl-layer`
# examples (feature `nccl`; cudarc loads CUDA and NCCL at run time, so no toolkit is needed
# here) and tools/gpu/gpu-env.sh, copied into one folder (default target/nccl-bundle).
#
# usage: benches/gpu/build_nccl_bundle.sh [OUT_DIR]
# then, on the GPU machine: bash benches/gpu/nccl_run.sh target/nccl-bundle 2
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUTDIR=${1:-$ROOT/target/nccl-bundle}
cd "$ROOT"
cargo build --release -p moe-comm --features nccl --example nccl-exchange
cargo build --release -p moe --features nccl --example nccl-layer
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$OUTDIR"
cp "$TARGET/release/examples/nccl-exchange" "$TARGET/release/examples/nccl-layer" "$OUTDIR/"
# The release profile keeps debug info; the bundle travels to the GPU machine without it.
if command -v strip >/dev/null; then strip "$OUTDIR/nccl-exchange" "$OUTDIR/nccl-layer"; fi
cp "$ROOT/tools/gpu/gpu-env.sh" "$OUTDIR/"
ls -l "$OUTDIR"
