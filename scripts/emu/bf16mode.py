"""Switches emu to T = bf16 (for the decode-state precision estimate only)."""
import numpy as np
import emu
from emu import F32, U16, U32

def f16bits(x):
    x = np.asarray(x, dtype=F32)
    b = x.view(U32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint64)
    r = np.where(np.isnan(x), 0x7FC0, r)
    return r.astype(U16)

def bits2f32(b):
    return (np.asarray(b, dtype=U16).astype(U32) << U32(16)).view(F32)

def relu2(x):
    def r(h):
        f = bits2f32(h)
        out = np.where(np.isnan(f), F32(0), np.maximum(f, F32(0)))
        return f16bits(out).astype(U32)
    return r(emu.lo16(x)) | (r(emu.hi16(x)) << U32(16))

emu.f16bits = f16bits
emu.bits2f32 = bits2f32
emu.relu2 = relu2
emu.ones2 = lambda: np.full(32, 0x3F803F80, dtype=U32)
emu.EXPM = 0x7F80
