"""float16 and bfloat16 on the wire for compressed exchange (mpinn_strategies.compression),
by numba: one pass per call, fused with the error feedback. NumPy's own float16 cast takes
about 5 ns an element here (3.5 ms for W1's gradient); these run at memory speed. The
bits are NumPy's: IEEE round to nearest even, subnormals, Inf and NaN (a quiet NaN)."""

import numba
import numpy as np
from numba import prange

from .numba_threads import threaded

F32_INFINITY = np.uint32(255 << 23)
F16_OVERFLOW = np.uint32((127 + 16) << 23)  # from here on, Inf
F16_NORMAL = np.uint32(113 << 23)  # below: a float16 subnormal or zero
DENORMAL_MAGIC = np.uint32(((127 - 15) + (23 - 10) + 1) << 23)
DENORMAL_MAGIC_VALUE = np.float32(DENORMAL_MAGIC.view(np.float32))
REBIAS = np.uint32((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)


@numba.njit(inline="always", cache=True)
def _float16_bits(value):
    """The float16 nearest a float32 (ties to even), as bits (F. Giesen's method). numba
    widens uint32 arithmetic: every step is cast back."""
    bits = np.float32(value).view(np.uint32)
    sign = np.uint32(bits & 0x80000000)
    bits = np.uint32(bits ^ sign)
    if bits >= F16_OVERFLOW:
        half = np.uint32(0x7E00) if bits > F32_INFINITY else np.uint32(0x7C00)
    elif bits < F16_NORMAL:  # the float add rounds the mantissa where it is cut
        total = np.float32(bits.view(np.float32) + DENORMAL_MAGIC_VALUE)
        half = np.uint32(total.view(np.uint32) - DENORMAL_MAGIC)
    else:
        odd = np.uint32((bits >> 13) & 1)
        half = np.uint32(np.uint32(bits + REBIAS + odd) >> 13)
    return np.uint16(half | (sign >> 16))


@numba.njit(inline="always", cache=True)
def _bfloat16_bits(value):
    scaled = np.float32(value)
    if scaled != scaled:
        return np.uint16(0x7FC0)
    bits = scaled.view(np.uint32)
    return np.uint16(np.uint32(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


@numba.njit(inline="always", cache=True)
def _bfloat16_value(bits):
    return np.uint32(np.uint32(bits) << 16).view(np.float32)


@threaded
def _encode_float16(values, scale, wire, residual, table):
    for i in prange(values.size):
        bits = _float16_bits(values[i] * scale)
        wire[i] = bits
        residual[i] = values[i] - table[bits] / scale


@threaded
def _encode_bfloat16(values, scale, wire, residual):
    for i in prange(values.size):
        bits = _bfloat16_bits(values[i] * scale)
        wire[i] = bits
        residual[i] = values[i] - _bfloat16_value(bits) / scale


@threaded
def _sum_float16(rows, out, table):
    for i in prange(out.size):
        total = out.dtype.type(table[rows[0, i]])
        for row in range(1, rows.shape[0]):
            total += table[rows[row, i]]
        out[i] = total


@threaded
def _sum_bfloat16(rows, out):
    for i in prange(out.size):
        total = out.dtype.type(_bfloat16_value(rows[0, i]))
        for row in range(1, rows.shape[0]):
            total += _bfloat16_value(rows[row, i])
        out[i] = total


@threaded
def _decode_float16(wire, scale, out, table):
    for i in prange(out.size):
        out[i] = table[wire[i]] / scale


@threaded
def _decode_bfloat16(wire, scale, out):
    for i in prange(out.size):
        out[i] = _bfloat16_value(wire[i]) / scale


class HalfCodec:
    """The codec's three passes (see mpinn_strategies.compression.ArrayHalfCodec), on
    host arrays; the wire holds the half-precision bits as uint16."""

    def __init__(self, kind: str):
        self.kind = kind
        # every float16 by its bits: decoding is a lookup
        self.table = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)

    def encode(self, values, scale: float, wire, residual) -> None:
        """wire = values * scale in half precision; residual = values - wire / scale
        (residual may be values itself)."""
        scale = values.dtype.type(scale)
        if self.kind == "float16":
            _encode_float16(values, scale, wire, residual, self.table)
        else:
            _encode_bfloat16(values, scale, wire, residual)

    def sum_rows(self, rows, out) -> None:
        """out = the rows (of wire bits) decoded and summed in row order."""
        if self.kind == "float16":
            _sum_float16(rows, out, self.table)
        else:
            _sum_bfloat16(rows, out)

    def decode(self, wire, scale: float, out) -> None:
        """out = wire / scale."""
        scale = out.dtype.type(scale)
        if self.kind == "float16":
            _decode_float16(wire, scale, out, self.table)
        else:
            _decode_bfloat16(wire, scale, out)
