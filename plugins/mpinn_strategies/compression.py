"""Compressed gradient exchange for the allreduce strategy, with error feedback: what a
rank's compressed gradient leaves out (its residual) is added to its next gradient, so
nothing is lost, only delayed (Seide et al. 2014; Karimireddy et al. 2019).

Two compressors: HalfPrecision (float16, bfloat16) and PowerSGD (low rank).
A compressor's `exchange(grad)` replaces the Allreduce: every rank's `grad` becomes the
(approximate) sum of all ranks' gradients. At every epoch's end the ranks' residuals are
summed onto rank 0 (one float Allreduce), which changes no future sum, so that an
epoch-end checkpoint keeps one residual, rank 0's; a mid-epoch one keeps every rank's
(gathered on rank 0). Resumed on the same number of ranks the run continues exactly; on
another, rank 0 takes their sum.
"""

import math

import numpy as np

from mpinn.optim.base import FUSED_FROM

HALF_ROOM = 2.0**15  # fp16 sums stay below this (the largest fp16 is 65504)
POWERSGD_STREAM = 4  # the model seed's spawn key for PowerSGD's first Q


class ErrorFeedback:
    """A compressor's residual (this rank's gradient not yet sent) and its life cycle."""

    apart = False  # whether ranks other than 0 hold residuals (since the epoch began)

    def setup(self, strategy, model) -> None:
        self.comm, self.arrays, self.xp = strategy.comm, strategy.arrays, model.backend.xp
        self.rank, self.size = strategy.rank, strategy.size
        self.residual = self.xp.zeros_like(model.params.grad)
        self.apart = False

    def end_epoch(self) -> None:
        """The ranks' residuals summed onto rank 0 (see the module's docstring)."""
        self.arrays.allreduce_sum(self.residual)
        if self.rank:
            self.residual[...] = 0
        self.apart = False

    def rank_state(self) -> dict:
        return {"residual": self.residual} if self.apart else {}

    def shared_state(self) -> dict:
        return {"residual": self.residual}  # rank 0's: after an epoch, all of them

    def expected_shapes(self, model) -> dict:
        """The shapes restore reads, one rank's (see Checkpoint.check_strategy_shapes)."""
        return {"residual": model.params.grad.shape, "residual_by_rank": model.params.grad.shape}

    def restore(self, found) -> None:
        """See residual_from (rank 0 takes the sum); an epoch-end checkpoint's residual
        is rank 0's."""
        value = residual_from(found, self.rank, self.size, taker=0)
        names = found.shapes.get("strategy", {})
        self.apart = value is not None and found.attrs["world_size"] == self.size
        if value is None and self.rank == 0 and "residual" in names:
            value = found.strategy_tensor("residual")
        if value is not None:
            self.residual[...] = self.xp.asarray(value, dtype=self.residual.dtype)


def residual_from(found, rank: int, size: int, taker: int):
    """A rank's residual from the rows `residual_by_rank` of the checkpoint `found`: its
    own row on as many ranks (the run continues exactly), else the rows' sum for `taker`
    alone (the same pending gradient); None where it takes none."""
    if "residual_by_rank" not in found.shapes.get("strategy", {}):
        return None
    if found.attrs["world_size"] == size:
        return found.strategy_tensor("residual_by_rank", row=rank)
    return found.strategy_tensor("residual_by_rank").sum(axis=0) if rank == taker else None


class HalfPrecision(ErrorFeedback):
    """float16 or bfloat16 on the wire, sums in the model's dtype: half the bytes of a
    float32 Allreduce (HalfExchange), over all ranks. The conversions are the backend's
    `half_codec` where it has one (NumPy: numba) and the model is large enough to gain
    from it (FUSED_FROM parameters, as fused optimizer steps), else ArrayHalfCodec."""

    def __init__(self, kind: str):
        self.kind = kind

    def setup(self, strategy, model) -> None:
        super().setup(strategy, model)
        self.codec = half_codec(model, self.kind)
        self.wire = None  # made at the first exchange: by_node exchanges slices its own way

    def exchange(self, grad) -> None:
        if self.wire is None:
            self.wire = HalfExchange(self.kind, self.codec, self.comm, self.arrays, grad)
        self.wire.exchange(grad, self.residual)
        self.apart = True


class HalfExchange:
    """The sum over `comm`'s ranks of each rank's `values` plus residual, in half
    precision. MPI has no half-precision sum everywhere, so the exchange is a
    reduce-scatter by Alltoall (rank r sums chunk r in rank order) and an Allgather of
    the summed chunks. float16 is scaled by a power of two (agreed by a 1-number
    Allreduce of the largest magnitude) so that the sums neither overflow nor lose small
    gradients to underflow; bfloat16 has float32's range. Both roundings, of each rank's
    values and of each summed chunk (its owner's), go into the residual. `like`: an
    array of the length and dtype exchanged."""

    def __init__(self, kind: str, codec, comm, arrays, like):
        xp = arrays.backend.xp
        self.kind, self.codec, self.comm, self.arrays = kind, codec, comm, arrays
        self.rank, self.size = comm.rank, comm.size
        self.chunk = -(-like.size // self.size)
        self.outgoing = xp.zeros(self.size * self.chunk, xp.uint16)  # the wire: half's bits
        self.incoming = xp.empty((self.size, self.chunk), xp.uint16)
        self.summed = xp.empty(self.chunk, like.dtype)
        self.gathered = xp.empty(self.size * self.chunk, xp.uint16)

    def exchange(self, values, residual) -> None:
        n, chunk, codec = values.size, self.chunk, self.codec
        values += residual
        largest = np.array([float(max(values.max(), -values.min())) if n else 0.0])
        self.comm.allreduce_max(largest)
        finite = math.isfinite(largest[0])
        scale = half_scale(self.kind, largest[0] * self.size) if finite else 1.0
        codec.encode(values, scale, self.outgoing[:n], residual)
        self.arrays.alltoall(self.outgoing, self.incoming)
        summed = self.summed
        codec.sum_rows(self.incoming, summed)  # in rank order: the same sum on every run
        mine = self.gathered[self.rank * chunk:(self.rank + 1) * chunk]
        codec.encode(summed, 1.0, mine, summed)  # the sum's own rounding, fed back by its owner
        start, stop = min(self.rank * chunk, n), min((self.rank + 1) * chunk, n)
        residual[start:stop] += summed[:stop - start] / scale
        self.arrays.allgather(self.gathered)
        codec.decode(self.gathered[:n], scale, values)
        if not finite:  # the step is skipped or the run stops: keep no NaN for later
            residual[...] = 0


def half_scale(kind: str, largest: float) -> float:
    """The power of two that puts `largest` (a sum's largest magnitude) just below
    HALF_ROOM in float16 (1 for bfloat16, which has float32's range)."""
    if kind == "bfloat16" or largest == 0:
        return 1.0
    scale = 2.0 ** math.floor(math.log2(HALF_ROOM / largest))
    while largest * scale > HALF_ROOM:
        scale /= 2
    return scale


def half_codec(model, kind: str):
    """The backend's `half_codec` where it has one (NumPy: numba) and the model is large
    enough to gain from it (FUSED_FROM parameters, as fused optimizer steps), else
    ArrayHalfCodec."""
    make = getattr(model.backend, "half_codec", None)
    codec = make(kind) if make is not None and model.params.size >= FUSED_FROM else None
    return codec or ArrayHalfCodec(model.backend.xp, kind)


class CompressedPushes:
    """A parameter-server worker's pushes in half precision with error feedback: each
    push carries gradient + residual in float16 (scaled by a power of two of the worker's
    own, sent in the push's header) or bfloat16, and what rounding left out is the
    residual of the next. The servers decode into the model's dtype before their step."""

    def __init__(self, kind: str):
        self.kind = kind

    def setup(self, model) -> None:
        self.xp = xp = model.backend.xp
        self.codec = half_codec(model, self.kind)
        self.residual = xp.zeros_like(model.params.grad)
        self.wire = xp.zeros(model.params.size, xp.uint16)  # in flight until the next push

    def encode(self, gradient) -> float:
        """gradient + residual, in `wire` (gradient keeps the sum); returns the scale."""
        gradient += self.residual
        largest = float(max(gradient.max(), -gradient.min())) if gradient.size else 0.0
        scale = half_scale(self.kind, largest) if math.isfinite(largest) else 1.0
        self.codec.encode(gradient, scale, self.wire, self.residual)
        if not math.isfinite(largest):  # the step is skipped or the run stops
            self.residual[...] = 0
        return scale

    def restore(self, found, rank: int, first_worker: int, size: int) -> None:
        """See residual_from (the first worker takes the sum)."""
        value = residual_from(found, rank, size, taker=first_worker)
        if value is not None:
            self.residual[...] = self.xp.asarray(value, dtype=self.residual.dtype)


class ArrayHalfCodec:
    """float16 and bfloat16 by the array library's own operations (CuPy; NumPy without
    numba); the wire holds the half-precision bits as uint16."""

    def __init__(self, xp, kind: str):
        self.xp, self.kind = xp, kind

    def encode(self, values, scale: float, wire, residual) -> None:
        """wire = values * scale in half precision; residual = values - wire / scale
        (residual may be values itself)."""
        xp = self.xp
        if self.kind == "float16":
            wire[...] = (values * scale).astype(xp.float16).view(xp.uint16)
        else:
            scaled = xp.asarray(values * scale, dtype=xp.float32)
            bits = scaled.view(xp.uint32)
            # round to nearest even on the upper 16 bits; NaN stays a (quiet) NaN
            rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
            wire[...] = xp.where(xp.isnan(scaled), 0x7FC0, rounded).astype(xp.uint16)
        xp.subtract(values, self._decoded(wire, values.dtype) / scale, out=residual)

    def sum_rows(self, rows, out) -> None:
        """out = the rows (of wire bits) decoded and summed in row order."""
        out[...] = self._decoded(rows[0], out.dtype)
        for row in rows[1:]:
            out += self._decoded(row, out.dtype)

    def decode(self, wire, scale: float, out) -> None:
        """out = wire / scale."""
        out[...] = self._decoded(wire, out.dtype) / scale

    def _decoded(self, wire, dtype):
        xp = self.xp
        if self.kind == "float16":
            return wire.view(xp.float16).astype(dtype)
        return (wire.astype(xp.uint32) << 16).view(xp.float32).astype(dtype)


class PowerSGD(ErrorFeedback):
    """Dense kernels as rank-r products (PowerSGD, Vogels et al. 2019): per kernel M (n x
    m), P = M Q is summed over the ranks, orthonormalized, and Q = M^T P summed again;
    every rank takes P Q^T, the rank-r approximation of the summed kernel gradient. The
    bytes: r (n + m) instead of n m per kernel, 1/170 of W2's at rank 4. Q starts the
    next step (a warm start: one power iteration per step), from a seeded random draw.
    Biases and kernels too small to gain (r (n + m) >= n m) are summed exactly, in the
    same Allreduce as P. A rank's residual is its kernel gradient minus its own part of
    the approximation, P P^T M."""

    def __init__(self, rank: int):
        self.rank_r = rank

    def setup(self, strategy, model) -> None:
        super().setup(strategy, model)
        xp, r, dtype = self.xp, self.rank_r, model.params.grad.dtype
        self.kernels, self.exact = [], []  # (offset, shape); (offset, size)
        for slot in model.params.slots:
            if len(slot.shape) == 2 and r * sum(slot.shape) < slot.size:
                self.kernels.append((slot.offset, slot.shape))
            else:
                self.exact.append((slot.offset, slot.size))
        p_size = sum(n * r for _, (n, _) in self.kernels)
        exact_size = sum(size for _, size in self.exact)
        self.p = xp.empty(p_size + exact_size, dtype)
        self.q = xp.empty(sum(m * r for _, (_, m) in self.kernels), dtype)
        draw = np.random.default_rng(np.random.SeedSequence(model.seed,
                                                            spawn_key=(POWERSGD_STREAM,)))
        self.q[...] = xp.asarray(draw.standard_normal(self.q.size), dtype=dtype)

    def _matrices(self, grad):
        """(M, P, Q) views per kernel: the gradient's, and the exchange buffers'."""
        r, p_at, q_at = self.rank_r, 0, 0
        for offset, (n, m) in self.kernels:
            yield (grad[offset:offset + n * m].reshape(n, m),
                   self.p[p_at:p_at + n * r].reshape(n, r),
                   self.q[q_at:q_at + m * r].reshape(m, r))
            p_at, q_at = p_at + n * r, q_at + m * r

    def _exact_parts(self, grad):
        at = self.p.size - sum(size for _, size in self.exact)
        for offset, size in self.exact:
            yield grad[offset:offset + size], self.p[at:at + size]
            at += size

    def exchange(self, grad) -> None:
        xp = self.xp
        grad += self.residual
        for values, part in self._exact_parts(grad):
            part[...] = values
        matrices = list(self._matrices(grad))
        for m, p, q in matrices:
            xp.matmul(m, q, out=p)
        self.arrays.allreduce_sum(self.p)
        if not bool(xp.isfinite(self.p).all()):  # the same on every rank: no step
            grad[...] = math.nan  # (skipped, or the run stops); residual and Q kept
            return
        for values, part in self._exact_parts(grad):
            values[...] = part
        self.residual[...] = 0  # the exact parts leave none
        for m, p, q in matrices:
            p[...] = xp.linalg.qr(p)[0]
            xp.matmul(m.T, p, out=q)  # this rank's part of Q
        for (m, p, q), (offset, (n, width)) in zip(matrices, self.kernels, strict=True):
            mine = self.residual[offset:offset + n * width].reshape(n, width)
            xp.matmul(p, q.T, out=mine)  # what the exchange carries of this rank's M
            xp.subtract(m, mine, out=mine)
        self.arrays.allreduce_sum(self.q)
        for m, p, q in matrices:
            xp.matmul(p, q.T, out=m)
        self.apart = True

    def shared_state(self) -> dict:
        return {**super().shared_state(), "powersgd_q": self.q}

    def restore(self, found) -> None:
        super().restore(found)
        if found.shapes.get("strategy", {}).get("powersgd_q") == self.q.shape:
            self.q[...] = self.xp.asarray(found.strategy_tensor("powersgd_q"), dtype=self.q.dtype)
