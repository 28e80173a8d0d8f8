#!/usr/bin/env python3
"""Generates the reference tables the codec tests check against (run once; output committed).

Produced with: ml_dtypes 0.6.0, numpy 2.4.6 (Python 3.11.7).
Regenerate:    pip install ml_dtypes==0.6.0 numpy==2.4.6 && python3 gen_tables.py
The script refuses other versions unless --any-version is given, so that a regenerated table is
never silently produced by a library with different conversion rules.

Outputs (next to this script, little-endian throughout):

ml_dtypes_cases.bin -- 8-byte records, one per distinct f32 input:
    u32  f32 bit pattern of the input
    u8   x.astype(float8_e4m3fn)                       (ml_dtypes: RNE, overflow -> NaN)
    u8   np.clip(x, -448, 448).astype(float8_e4m3fn)   (the ModelOpt/TRT-LLM saturating recipe)
    u8   x.astype(float4_e2m1fn)                       (in the low nibble)
    u8   x.astype(float8_e8m0fnu)

exhaustive_digests.bin -- a digest of the four conversions above over every f32 bit pattern of
selected 2^22-pattern chunks (chunk c = bit patterns [c << 22, (c + 1) << 22), half a binade):
    u32  number of chunks N
    N x (u32 chunk index, u64 digest e4m3, u64 digest e4m3 clip, u64 digest e2m1, u64 digest e8m0)
  digest = sum over patterns b of (out(b) + 1) * ((b * 0x9E3779B97F4A7C15) | 1), wrapping mod 2^64.
  A single wrong byte always changes it (the multiplier is odd); the Rust test recomputes it.
  `--all-chunks PATH` writes the digests of all 1024 chunks (every f32) to PATH instead, for a
  one-off full check; when these tables were made, all 2^32 patterns matched the Rust encoders.
"""

import struct
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

EXPECTED = {"ml_dtypes": "0.6.0", "numpy": "2.4.6"}
HERE = Path(__file__).resolve().parent
F8 = ml_dtypes.float8_e4m3fn
F4 = ml_dtypes.float4_e2m1fn
E8 = ml_dtypes.float8_e8m0fnu
CHUNK_BITS = 22
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def convert(x):
    """The four reference conversions of a float32 array, as uint8 arrays."""
    with np.errstate(all="ignore"):
        return (
            x.astype(F8).view(np.uint8),
            np.clip(x, np.float32(-448.0), np.float32(448.0)).astype(F8).view(np.uint8),
            x.astype(F4).view(np.uint8) & np.uint8(0x0F),
            x.astype(E8).view(np.uint8),
        )


def code_values(dtype, count):
    """Every non-NaN value of a small format, from its bit patterns, as float64."""
    v = np.arange(count, dtype=np.uint8).view(dtype).astype(np.float64)
    return v[~np.isnan(v)]


def around(values):
    """Each float32 value with its two float32 neighbours."""
    v = np.asarray(values, dtype=np.float32)
    return [v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))]


def case_inputs():
    rng = np.random.default_rng(20240607)
    parts = []
    # e4m3 and e2m1: every value, every midpoint between neighbours (round-to-even ties), one
    # step past the largest value (448 -> 480, 6 -> 8) so the overflow midpoint is covered, and
    # the float32 neighbours of all of those, both signs.
    for dtype, count, beyond in ((F8, 256, 480.0), (F4, 16, 8.0)):
        v = np.unique(np.abs(code_values(dtype, count)))
        v = np.append(v, beyond)
        mids = (v[:-1] + v[1:]) / 2
        for s in (1.0, -1.0):
            parts += around(s * v) + around(s * mids)
    # e8m0: every power of two it holds and the points where round-to-nearest switches
    # (1.5 * 2^e for the normal range, 2^-127 and its neighbours in the subnormal range).
    e = np.arange(-149, 128, dtype=np.float64)
    parts += around(2.0**e) + around(1.5 * 2.0**e) + around(-(2.0**e))
    # A dense sweep and random points over [-500, 500] (the e4m3 range and past it).
    parts.append(np.linspace(-500.0, 500.0, 3001, dtype=np.float32))
    parts.append(rng.uniform(-500.0, 500.0, 1000).astype(np.float32))
    # Random values spanning the exponent range, with random signs.
    mags = 2.0 ** rng.uniform(-150.0, 128.0, 1500)
    parts.append((mags * rng.choice([-1.0, 1.0], 1500)).astype(np.float32))
    # Random bit patterns: every class of float32 including NaN payloads and subnormals.
    parts.append(rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32).view(np.float32))
    # Specials: zeros, infinities, NaNs (quiet, signalling, both signs), subnormal extremes.
    specials = [
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
        0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FA00000, 0x00000001, 0x80000001, 0x007FFFFF,
        0x807FFFFF, 0x00400000, 0x00400001, 0x003FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,
    ]
    parts.append(np.array(specials, dtype=np.uint32).view(np.float32))
    bits = np.concatenate([np.asarray(p, dtype=np.float32).view(np.uint32) for p in parts])
    # Neighbours of huge values can be NaN-free infinities; uniqueness is on bit patterns.
    return np.unique(bits).view(np.float32)


def write_cases():
    x = case_inputs()
    f8, f8c, f4, e8 = convert(x)
    out = bytearray()
    for b, a, c, d, e in zip(x.view(np.uint32).tolist(), f8.tolist(), f8c.tolist(), f4.tolist(), e8.tolist()):
        out += struct.pack("<IBBBB", b, a, c, d, e)
    (HERE / "ml_dtypes_cases.bin").write_bytes(bytes(out))
    return len(x)


def digest(out, first):
    idx = np.arange(first, first + out.size, dtype=np.uint64)
    mult = (idx * GOLDEN) | np.uint64(1)
    return int(np.sum((out.astype(np.uint64) + np.uint64(1)) * mult, dtype=np.uint64))


def selected_chunks():
    """Chunks whose f32 exponents matter to some format.

    Chunk c holds half of one binade: f32 exponent field (c >> 1) & 0xFF, sign c >> 9.
    """
    field = lambda e: {2 * e, 2 * e + 1}
    pos = set()
    for e in range(116, 138):  # 2^-11 .. 2^10: every e4m3 and e2m1 value and midpoint, with margin
        pos |= field(e)
    pos |= field(0) | field(254) | field(255)  # f32 subnormals (e8m0's floor), e8m0's top, Inf/NaN
    neg = set()
    for e in (0, 117, 121, 126, 135, 255):  # the sign is independent: spot checks
        neg |= field(e)
    return sorted(pos | {c + 512 for c in neg})


def write_digests(chunks):
    out = bytearray(struct.pack("<I", len(chunks)))
    for c in chunks:
        first = c << CHUNK_BITS
        x = np.arange(first, first + (1 << CHUNK_BITS), dtype=np.uint64).astype(np.uint32).view(np.float32)
        out += struct.pack("<I", c)
        for o in convert(x):
            out += struct.pack("<Q", digest(o, first))
    return bytes(out)


def main():
    have = {"ml_dtypes": ml_dtypes.__version__, "numpy": np.__version__}
    if have != EXPECTED and "--any-version" not in sys.argv:
        sys.exit(f"expected {EXPECTED}, found {have}; pass --any-version to regenerate anyway")
    n = write_cases()
    if "--all-chunks" in sys.argv:
        # Every chunk: for a one-off full check during development (not committed: 37 KB, minutes).
        path, chunks = Path(sys.argv[sys.argv.index("--all-chunks") + 1]), list(range(1 << (32 - CHUNK_BITS)))
    else:
        path, chunks = HERE / "exhaustive_digests.bin", selected_chunks()
    path.write_bytes(write_digests(chunks))
    print(f"{n} cases, {len(chunks)} digest chunks -> {path}")


if __name__ == "__main__":
    main()
