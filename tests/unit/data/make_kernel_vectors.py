#!/usr/bin/env python3
"""Write kernel_vectors.bin: random GGUF blocks of every weight type lmd
computes with, and gguf-py's numpy dequantization of them.

gguf-py (gguf.quants) is an implementation of the block formats that is
independent of lmd's C code, so kernels_test.c checks kern_dequant_row
against it byte for byte. Run from the repository root with the venv:

    .venv/bin/python tests/unit/data/make_kernel_vectors.py

File format (little-endian): the 8 bytes "LMDKV001", a u32 record count,
then per record: u32 ggml type id, u32 elements, u32 data bytes, the data
bytes, and `elements` f32 values.
"""
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize

# Byte offsets of the fp16 scale fields inside one block of each type.
FP16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
BLOCKS = 6


def blocks(rng, qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        # Sane scales, so no inf or NaN: magnitude in [1e-3, 1e-1], either sign.
        v = rng.uniform(1e-3, 1e-1, size=BLOCKS) * rng.choice([-1.0, 1.0], size=BLOCKS)
        raw[:, off:off + 2] = v.astype(np.float16).view(np.uint8).reshape(BLOCKS, 2)
    return raw.reshape(-1), BLOCKS * block


def main():
    rng = np.random.default_rng(20261124)
    out = bytearray(b"LMDKV001")
    records = []
    for qtype in FP16_FIELDS:
        data, n = blocks(rng, qtype)
        records.append((qtype, n, data))
    # Float types: random values, including a few special ones.
    f16 = rng.standard_normal(96).astype(np.float16)
    f16[:4] = [0.0, -0.0, 6.1e-5, 65504.0]
    records.append((Q.F16, 96, f16.view(np.uint8)))
    bf16 = (rng.standard_normal(96).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    records.append((Q.BF16, 96, bf16.view(np.uint8)))
    out += struct.pack("<I", len(records))
    for qtype, n, data in records:
        ref = dequantize(np.asarray(data, dtype=np.uint8), qtype).astype(np.float32).reshape(-1)
        assert ref.size == n, (qtype, ref.size, n)
        out += struct.pack("<III", int(qtype), n, data.size) + data.tobytes() + ref.tobytes()
    path = Path(__file__).with_name("kernel_vectors.bin")
    path.write_bytes(bytes(out))
    print(f"wrote {path} ({len(out)} bytes, {len(records)} records)", file=sys.stderr)


if __name__ == "__main__":
    main()
