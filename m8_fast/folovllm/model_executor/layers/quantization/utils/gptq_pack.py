"""The GPTQ checkpoint format: eight 4-bit values per int32, zeros stored as ``zero - 1``.

The format every GPTQ tool writes (AutoGPTQ, GPTQModel, transformers, vLLM read it), for a linear
layer with ``K`` input and ``N`` output features and groups of ``group_size`` input channels::

    qweight  int32   [K // 8, N]   q[8j + i, n] in bits 4i..4i+3 of qweight[j, n]
    qzeros   int32   [G, N // 8]   z[g, 8j + i] in bits 4i..4i+3 of qzeros[g, j]
    scales   float16 [G, N]
    g_idx    int32   [K]           the group of each input channel (act-order permutes it)

    W[k, n] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n])      (W is [K, N], i.e. weight.T)

The historical quirk: format "gptq" (v1) stores ``z - 1`` in qzeros (AutoGPTQ's kernels added the
1 back); "gptq_v2" stores ``z``. A symmetric 4-bit layer has z = 8, so a v1 qzeros word is
0x77777777. Only 4 bits are supported here.
"""

from __future__ import annotations

import torch

BITS = 4
PACK = 32 // BITS  # values per int32
MASK = (1 << BITS) - 1
_SHIFTS = torch.arange(0, 32, BITS, dtype=torch.int32)  # 0, 4, ..., 28
# checkpoint_format -> what is added to a stored zero to get the real one.
ZERO_OFFSET = {"gptq": 1, "gptq_v2": 0}


def _check_values(q: torch.Tensor, what: str) -> None:
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > MASK):
        raise ValueError(f"{what} must hold values in [0, {MASK}] for {BITS}-bit packing")


def pack_rows(q: torch.Tensor) -> torch.Tensor:
    """[K, N] ints in [0, 15] -> int32 [K // 8, N] (eight consecutive rows per word)."""
    k, n = q.shape
    if k % PACK:
        raise ValueError(f"input features ({k}) must be a multiple of {PACK} to pack")
    _check_values(q, "q")
    q = q.to(torch.int64).view(k // PACK, PACK, n)
    words = (q << _SHIFTS.to(q.device, torch.int64).view(1, PACK, 1)).sum(dim=1)
    return _to_int32(words)


def unpack_rows(qweight: torch.Tensor) -> torch.Tensor:
    """int32 [K // 8, N] -> int32 [K, N] in [0, 15]."""
    kp, n = qweight.shape
    shifts = _SHIFTS.to(qweight.device).view(1, PACK, 1)
    return ((qweight.unsqueeze(1) >> shifts) & MASK).reshape(kp * PACK, n)


def pack_cols(z: torch.Tensor) -> torch.Tensor:
    """[G, N] ints in [0, 15] -> int32 [G, N // 8] (eight consecutive columns per word)."""
    g, n = z.shape
    if n % PACK:
        raise ValueError(f"output features ({n}) must be a multiple of {PACK} to pack")
    _check_values(z, "zeros")
    z = z.to(torch.int64).view(g, n // PACK, PACK)
    return _to_int32((z << _SHIFTS.to(z.device, torch.int64)).sum(dim=2))


def unpack_cols(qzeros: torch.Tensor) -> torch.Tensor:
    """int32 [G, N // 8] -> int32 [G, N] in [0, 15]."""
    g, np_ = qzeros.shape
    shifts = _SHIFTS.to(qzeros.device).view(1, 1, PACK)
    return ((qzeros.unsqueeze(2) >> shifts) & MASK).reshape(g, np_ * PACK)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the same bits as int32 (values >= 2^31 wrap negative)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def dequantize(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    zero_offset: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The formula, spelled out: W [K, N] = scales[g_idx] * (q - (stored zeros + offset)[g_idx])."""
    q = unpack_rows(qweight)
    z = unpack_cols(qzeros) + zero_offset
    g = g_idx.long()
    w = scales[g].float() * (q - z[g]).float()
    return w.to(dtype or scales.dtype)


def default_g_idx(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """g_idx without act-order: channel k belongs to group k // group_size (-1: one group)."""
    gs = in_features if group_size == -1 else group_size
    return torch.arange(in_features, dtype=torch.int32, device=device) // gs


# ---- the kernels' layout, made once at load time (gptq.py) from the format above ----
#
# ``qweight`` packs along K inside each column, so a program that owns a few output columns reads
# 4-byte pieces spread over K // 8 rows. The kernels want the opposite: an output channel's
# weights as one contiguous run along K, read in 16-byte vectors, with each vector's nibbles in
# the order the arithmetic consumes them. ``repack_nk`` transposes and interleaves::
#
#     format  qweight [K/8, N]                     repacked [N, Kp/8]   (Kp = K rounded up to 32)
#
#     row j   | n0 | n1 | n2 | ...                 row n   | chunk 0 (16 B)  | chunk 1 (16 B)  | ...
#      word j of column n: channels 8j..8j+7               |w0 |w1 |w2 |w3 | w4 |w5 |w6 |w7 | ...
#
#     chunk c = 4 words = channels 32c .. 32c+31;  word l of the chunk, nibble i  <->  channel 32c + 4i + l
#
#               bits 28-31 ... bits 4-7   bits 0-3
#       w0:     ch 28     ...  ch 4       ch 0          nibble plane i = (word >> 4i) & 0xF
#       w1:     ch 29     ...  ch 5       ch 1          of the chunk's 4 words = channels
#       w2:     ch 30     ...  ch 6       ch 2          32c + 4i .. 32c + 4i + 3: 4 adjacent
#       w3:     ch 31     ...  ch 7       ch 3          activations, one 8-byte load of x
#
# A shift and a mask give eight 4-wide planes of a whole tile at once, each against contiguous
# activations: no gathers, no reshapes. Channels past K (padding to 32) hold 0 and meet x = 0.
# ``qzeros`` and ``scales`` keep the format's layout: a program reads them per group as one short
# contiguous run over its output channels.
CHUNK = 32  # input channels per 16-byte run (4 words)


def repack_nk(q: torch.Tensor) -> torch.Tensor:
    """[K, N] ints in [0, 15] (any K) -> int32 [N, Kp // 8], Kp = K rounded up to ``CHUNK``."""
    k, n = q.shape
    _check_values(q, "q")
    kp = -(-k // CHUNK) * CHUNK
    qt = torch.zeros((n, kp), dtype=torch.int64, device=q.device)
    qt[:, :k] = q.t()
    qt = qt.view(n, kp // CHUNK, PACK, CHUNK // PACK)  # [n, chunk c, nibble i, word l]
    words = torch.zeros((n, kp // CHUNK, CHUNK // PACK), dtype=torch.int64, device=q.device)
    for i in range(PACK):
        words |= qt[:, :, i, :] << (BITS * i)
    return _to_int32(words.view(n, kp // PACK))


def unpack_nk(qweight: torch.Tensor, k: int) -> torch.Tensor:
    """int32 [N, Kp // 8] (``repack_nk``'s layout) -> int32 [K, N] in [0, 15]."""
    n, kw = qweight.shape
    shifts = _SHIFTS.to(qweight.device).view(1, 1, PACK, 1)
    q = (qweight.view(n, kw * PACK // CHUNK, 1, CHUNK // PACK) >> shifts) & MASK
    return q.reshape(n, kw * PACK)[:, :k].t()
