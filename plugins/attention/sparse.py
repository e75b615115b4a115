"""Sparse attention with the fixed patterns of the Sparse Transformer (Child et al. 2019).

Patterns (``pattern`` option):

- ``local``: query i attends key j when ``|i - j| < window`` (and ``j <= i`` when causal).
- ``strided``: ``local`` plus every ``stride``-th position, i.e. keys j with
  ``(i - j) % stride == 0``; ``stride`` defaults to ``round(sqrt(n))``.
- ``block``: fixed blocks of ``block_size``: a query attends its own block plus the last
  ``summary`` positions of every block (the "fixed" pattern of the paper).

On the CPU (and on CUDA without FlexAttention) the work is blocked: the sequence is cut into
blocks, each query block is scored only against the key blocks its pattern can reach, and all
parts of a pattern share one softmax. No ``n x n`` score matrix is built, except the dense map
returned for ``need_weights=True``, which is meant for visualisation. On CUDA, when
``torch.nn.attention.flex_attention`` exists and the call has no padding mask, no dropout and
no weights request, the same pattern runs as a FlexAttention block mask (cached per shape).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attnbench import Attention, hookimpl
from attnbench.attention import cpu_flash_ops, dense_attention


class SparseOptions(BaseModel):
    """Options of ``sparse``; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    pattern: Literal["local", "strided", "block"] = Field("local", description="which Sparse Transformer pattern")
    window: int = Field(128, ge=1, description="local/strided: query i sees keys with |i - j| < window")
    stride: int | None = Field(None, ge=2, description="strided: period l of the strided part; default round(sqrt(n))")
    block_size: int = Field(64, ge=1, description="block: size of the fixed blocks")
    summary: int = Field(8, ge=1, description="block: the last `summary` positions of each block are visible to all")

    @model_validator(mode="after")
    def _summary_fits_block(self):
        if self.pattern == "block" and self.summary > self.block_size:
            raise ValueError(f"summary ({self.summary}) must be <= block_size ({self.block_size})")
        return self


# --- the blocked CPU path ---------------------------------------------------------------


def _pad_seq(t: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim -2 of (B, H, n, D) with zeros up to ``length``."""
    return F.pad(t, (0, 0, 0, length - t.shape[-2])) if length > t.shape[-2] else t


def _neighbour_blocks(t: torch.Tensor, back: int, forward: int) -> torch.Tensor:
    """(B, H, nb, blk, D) -> (B, H, nb, (back+1+forward)*blk, D): each block with its neighbours.

    Missing neighbours at the edges are zero blocks; their keys are masked as invalid.
    """
    nb = t.shape[2]
    padded = F.pad(t, (0, 0, 0, 0, back, forward))
    return torch.cat([padded[:, :, s:s + nb] for s in range(back + 1 + forward)], dim=3)


@dataclass
class _Part:
    """One group of keys the queries can see.

    ``scores`` (B, H, n, m) with ``allowed`` (B, 1, n, m); ``apply`` turns probabilities of the
    same shape into outputs (B, H, n, D); ``key_pos`` (n, m) is each score's key position.
    """

    scores: torch.Tensor
    allowed: torch.Tensor
    apply: Callable[[torch.Tensor], torch.Tensor]
    key_pos: torch.Tensor


@dataclass
class _BlockLayout:
    """Query blocks and the keys each block may see: the shared shape of ``local`` and ``block``.

    ``qb`` (B, H, nb, blk, D); ``kb``/``vb`` (B, H, nb, m, D); ``allowed`` (B, nb, blk, m);
    ``key_pos`` (nb, m) the position of each key (out-of-range ones are never allowed).
    """

    qb: torch.Tensor
    kb: torch.Tensor
    vb: torch.Tensor
    allowed: torch.Tensor
    key_pos: torch.Tensor
    n: int

    def as_part(self) -> _Part:
        b, h, nb, blk, d = self.qb.shape
        m, n, n_pad = self.kb.shape[3], self.n, nb * blk
        scores = self.qb @ self.kb.transpose(-1, -2)

        def apply(probs):
            out = _pad_seq(probs, n_pad).view(b, h, nb, blk, m) @ self.vb
            return out.view(b, h, n_pad, d)[:, :, :n]

        key_pos = self.key_pos[:, None, :].expand(nb, blk, m).reshape(n_pad, m)[:n]
        return _Part(scores.view(b, h, n_pad, m)[:, :, :n], self.allowed.view(b, 1, n_pad, m)[:, :, :n], apply, key_pos)

    def sdpa(self, dropout_p: float) -> torch.Tensor:
        """Dense SDPA inside every block (the fused kernel), then back to (B, H, n, D).

        Queries arrive pre-scaled, hence ``scale=1.0``.
        """
        b, h, nb, blk, d = self.qb.shape
        m = self.kb.shape[3]
        mask = self.allowed[:, None].expand(b, h, nb, blk, m).reshape(b, h * nb, blk, m)
        out = F.scaled_dot_product_attention(
            self.qb.reshape(b, h * nb, blk, d), self.kb.reshape(b, h * nb, m, d),
            self.vb.reshape(b, h * nb, m, d), attn_mask=mask, dropout_p=dropout_p, scale=1.0,
        )
        return out.reshape(b, h, nb * blk, d)[:, :, :self.n]  # CUDA kernels may return a transposed layout


def _local_layout(q, k, v, valid, *, window, causal) -> _BlockLayout:
    """Blocks of ``window`` queries; each sees its own, the previous and (unless causal) the next block.

    That covers every key with ``|i - j| < window``; the band mask removes the rest.
    """
    b, h, n, d = q.shape
    blk = min(window, n)
    nb = math.ceil(n / blk)
    n_pad = nb * blk
    forward = 0 if causal else 1
    kb = _neighbour_blocks(_pad_seq(k, n_pad).view(b, h, nb, blk, d), 1, forward)
    vb = _neighbour_blocks(_pad_seq(v, n_pad).view(b, h, nb, blk, d), 1, forward)
    m = kb.shape[3]
    key_pos = (torch.arange(nb, device=q.device)[:, None] - 1) * blk + torch.arange(m, device=q.device)
    query_pos = torch.arange(n_pad, device=q.device).view(nb, blk)
    return _BlockLayout(_pad_seq(q, n_pad).view(b, h, nb, blk, d), kb, vb,
                        _allowed(query_pos, key_pos, valid, causal, window=window), key_pos, n)


def _local_sdpa(q, k, v, key_padding_mask, *, window, causal, dropout_p) -> torch.Tensor:
    """The ``local`` pattern as one SDPA call over query blocks, with no copy of the keys.

    Same blocks as :func:`_local_layout` (``window`` queries, each seeing its own, the previous
    and unless causal the next block), built as strided views: ``q``, ``k``, ``v`` from
    ``split_heads`` are (B, H, n, D) views of (B, n, H, D) rows, so the query blocks are a
    reshape of them and each block's keys an ``unfold`` window over the padded rows. The
    band mask is additive, one (blk, m) plane per block shared by every head. Profiling
    showed the old copies (pad, cat of neighbours, a per-head bool mask that SDPA converted
    to float) costing as much as a fifth of the module. Returns (B, H, n, D).
    """
    b, h, n, d = q.shape
    blk = min(window, n)
    nb = math.ceil(n / blk)
    n_pad = nb * blk
    forward = 0 if causal else 1
    m = (2 + forward) * blk
    rows = q.transpose(1, 2) * (1.0 / math.sqrt(d))  # scale the n x D queries, not the scores
    if n_pad > n:
        rows = F.pad(rows, (0, 0, 0, 0, 0, n_pad - n))
    qb = rows.reshape(b, nb, blk, h, d).transpose(2, 3).reshape(b * nb, h, blk, d)

    def key_windows(t):  # (B, H, n, D) -> (B*nb, H, m, D): a view when B == 1
        padded = F.pad(t.transpose(1, 2), (0, 0, 0, 0, blk, n_pad - n + forward * blk))
        return padded.unfold(1, m, blk).transpose(-1, -2).reshape(b * nb, h, m, d)

    mask = _band_mask(n, blk, m, window, causal, key_padding_mask, q.dtype, q.device)
    mask = mask.expand(b, nb, blk, m).reshape(b * nb, 1, blk, m)
    out = F.scaled_dot_product_attention(qb, key_windows(k), key_windows(v), attn_mask=mask,
                                         dropout_p=dropout_p, scale=1.0)
    return out.reshape(b, nb, h, blk, d).transpose(2, 3).reshape(b, n_pad, h, d)[:, :n].transpose(1, 2)


def _band_mask(n, blk, m, window, causal, key_padding_mask, dtype, device) -> torch.Tensor:
    """Additive (B or 1, nb, blk, m) mask of the local blocks: 0 where query i of a block may see
    key j of its window (``|i - j| < window``, in range, not padding, not in the future), the
    dtype's minimum elsewhere. One plane per block, shared by every head."""
    nb = math.ceil(n / blk)
    query_pos = torch.arange(nb * blk, device=device).view(nb, blk, 1)
    key_pos = ((torch.arange(nb, device=device)[:, None] - 1) * blk + torch.arange(m, device=device))[:, None, :]
    ok = (key_pos >= 0) & (key_pos < n) & ((query_pos - key_pos).abs() < window)  # (nb, blk, m)
    if causal:
        ok = ok & (key_pos <= query_pos)
    ok = ok[None] if key_padding_mask is None else ok & ~key_padding_mask[:, key_pos.clamp(0, n - 1)]
    # A finite minimum (not -inf): a padding query whose keys are all padding stays finite.
    return torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill_(~ok, torch.finfo(dtype).min)


# Key-window elements (blocks x heads x keys x head_dim) per call of the fused CPU kernel: its
# backward zero-fills key and value gradients that large, ~2 MB in float32, which stays in
# cache and in the allocator's reuse range; one call over all blocks page-faults on fresh
# buffers (profiled: the zero fills and unfold's backward were ~8% of the module at n=4096).
CALL_ELEMENTS = 2**19


def local_fused_available(q: torch.Tensor, dropout_p: float) -> bool:
    """The fused path runs on the CPU without dropout (its backward would need the same mask)."""
    return q.device.type == "cpu" and dropout_p == 0 and cpu_flash_ops() is not None


class _LocalWindows(torch.autograd.Function):
    """The ``local`` pattern through the CPU's fused kernel, a few blocks per call.

    Same blocks as :func:`_local_sdpa`: ``blk`` queries, each block seeing the ``m`` keys of its
    window (previous, own and unless causal next block) of the zero-padded keys. Queries are
    views of the (B, n, H, D) rows, key windows views of the padded rows; the backward adds the
    window gradients back onto the rows slice by slice instead of unfold's full-size backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, blk, m, scale):
        forward_kernel, _ = cpu_flash_ops()
        b, h, n, d = q.shape
        nb = math.ceil(n / blk)
        rows = _rows(q, nb * blk)
        keys, values = (_rows(t, nb * blk, before=blk, after=m - 2 * blk) for t in (k, v))
        out = rows.new_empty(rows.shape)
        lse = rows.new_empty((b, nb, h, blk), dtype=torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype)
        for i, j0, j1 in _slices(b, nb, h * m * d):
            out_blocks, lse[i, j0:j1] = forward_kernel(
                _blocks(rows[i], j0, j1, blk), _windows_of(keys[i], j0, j1, blk, m), _windows_of(values[i], j0, j1, blk, m),
                0.0, False, attn_mask=mask[i if mask.shape[0] > 1 else 0, j0:j1, None], scale=scale)
            _blocks(out[i], j0, j1, blk).copy_(out_blocks)
        ctx.save_for_backward(rows, keys, values, mask, out, lse)
        ctx.blk, ctx.m, ctx.scale, ctx.n = blk, m, scale, n
        return out[:, :n].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        _, backward_kernel = cpu_flash_ops()
        rows, keys, values, mask, out, lse = ctx.saved_tensors
        blk, m, n = ctx.blk, ctx.m, ctx.n
        b, n_pad, h, d = rows.shape
        grad_rows = _rows(grad, n_pad)
        grad_q = torch.empty_like(rows)
        grad_k, grad_v = torch.zeros_like(keys), torch.zeros_like(values)
        for i, j0, j1 in _slices(b, n_pad // blk, h * m * d):
            gq, gk, gv = backward_kernel(
                _blocks(grad_rows[i], j0, j1, blk), _blocks(rows[i], j0, j1, blk),
                _windows_of(keys[i], j0, j1, blk, m), _windows_of(values[i], j0, j1, blk, m),
                _blocks(out[i], j0, j1, blk), lse[i, j0:j1], 0.0, False,
                attn_mask=mask[i if mask.shape[0] > 1 else 0, j0:j1, None], scale=ctx.scale)
            _blocks(grad_q[i], j0, j1, blk).copy_(gq)
            for part in range(m // blk):  # window j's part p holds the padded rows of block j + p
                _blocks(grad_k[i], j0 + part, j1 + part, blk).add_(gk[:, :, part * blk:(part + 1) * blk])
                _blocks(grad_v[i], j0 + part, j1 + part, blk).add_(gv[:, :, part * blk:(part + 1) * blk])
        heads = lambda t, start: t[:, start:start + n].transpose(1, 2)  # noqa: E731  (B, H, n, D) views
        return heads(grad_q, 0), heads(grad_k, blk), heads(grad_v, blk), None, None, None, None


def _rows(t, length, before=0, after=0):
    """(B, H, n, D) -> (B, before + length + after, H, D) rows, zero-padded; a view when nothing is added."""
    rows = t.transpose(1, 2)
    extra = before + length - rows.shape[1] + after
    return F.pad(rows, (0, 0, 0, 0, before, extra - before)) if extra else rows


def _blocks(rows, j0, j1, blk):
    """Blocks j0..j1-1 of one example's (L, H, D) rows as (j1 - j0, H, blk, D), a view."""
    h, d = rows.shape[1:]
    return rows[j0 * blk:j1 * blk].view(j1 - j0, blk, h, d).transpose(1, 2)


def _windows_of(rows, j0, j1, blk, m):
    """Windows j0..j1-1 (m rows from row j * blk) of one example's padded rows: (j1 - j0, H, m, D), a view."""
    return rows[j0 * blk:(j1 - 1) * blk + m].unfold(0, m, blk).permute(0, 1, 3, 2)


def _slices(b, nb, window_elements):
    """(example, first block, end block) of each kernel call: about ``CALL_ELEMENTS`` window elements."""
    step = max(1, CALL_ELEMENTS // window_elements)
    return [(i, j, min(j + step, nb)) for i in range(b) for j in range(0, nb, step)]


def _local_fused(q, k, v, key_padding_mask, *, window, causal) -> torch.Tensor:
    """The ``local`` pattern on the CPU through :class:`_LocalWindows`. Returns (B, H, n, D)."""
    n, d = q.shape[-2:]
    blk = min(window, n)
    m = (3 - causal) * blk
    mask = _band_mask(n, blk, m, window, causal, key_padding_mask, q.dtype, q.device)
    return _LocalWindows.apply(q, k, v, mask, blk, m, 1.0 / math.sqrt(d))


def _fixed_layout(q, k, v, valid, *, block_size, summary, causal) -> _BlockLayout:
    """Blocks of ``block_size``; each sees itself plus the last ``summary`` keys of every other block."""
    b, h, n, d = q.shape
    blk = min(block_size, n)
    nb = math.ceil(n / blk)
    n_pad = nb * blk
    qb, kb, vb = (_pad_seq(t, n_pad).view(b, h, nb, blk, d) for t in (q, k, v))
    summary_pos = (torch.arange(nb, device=q.device)[:, None] * blk
                   + torch.arange(blk - min(summary, blk), blk, device=q.device)).flatten()
    ks, vs = (t.view(b, h, n_pad, d)[:, :, None, summary_pos].expand(b, h, nb, -1, d) for t in (kb, vb))
    own_pos = torch.arange(n_pad, device=q.device).view(nb, blk)
    key_pos = torch.cat([own_pos, summary_pos.expand(nb, -1)], dim=1)
    allowed = _allowed(own_pos, key_pos, valid, causal)
    # A summary key inside the query's own block is already among its own-block keys.
    allowed[:, :, :, blk:] &= (summary_pos // blk)[None, :] != torch.arange(nb, device=q.device)[:, None, None]
    return _BlockLayout(qb, torch.cat([kb, ks], dim=3), torch.cat([vb, vs], dim=3), allowed, key_pos, n)


def _allowed(query_pos, key_pos, valid, causal, window=None):
    """(B, nb, blk, m) bool: key in range, not padding, inside the window, not in the future."""
    n = valid.shape[1]
    kp = key_pos[:, None, :]  # (nb, 1, m)
    qp = query_pos[:, :, None]  # (nb, blk, 1)
    ok = (kp >= 0) & (kp < n) & (qp >= 0)  # the last term only broadcasts to (nb, blk, m)
    if window is not None:
        ok = ok & ((qp - kp).abs() < window)
    if causal:
        ok = ok & (kp <= qp)
    key_valid = valid[:, key_pos.clamp(0, n - 1)]  # (B, nb, m)
    return ok[None] & key_valid[:, :, None, :]


def _strided_part(q, k, v, valid, *, stride, window, causal) -> _Part:
    """Keys j with ``(i - j) % stride == 0`` that the local window does not already cover.

    Laying the sequence out as rows of ``stride`` makes those keys one column: scoring costs
    ``n * n / stride`` instead of ``n * n``.
    """
    b, h, n, d = q.shape
    rows = math.ceil(n / stride)
    n_pad = rows * stride

    def columns(t):  # (B, H, n, D) -> (B, H, stride, rows, D)
        return _pad_seq(t, n_pad).view(b, h, rows, stride, d).transpose(2, 3)

    scores = columns(q) @ columns(k).transpose(-1, -2)  # (B, H, stride, rows, rows)
    row = torch.arange(rows, device=q.device)
    diff = (row[:, None] - row[None, :]) * stride  # query row minus key row, in positions
    band = diff.abs() >= window
    if causal:
        band &= diff >= 0
    key_ok = F.pad(valid, (0, n_pad - valid.shape[1]), value=False).view(b, rows, stride).transpose(1, 2)
    allowed = band[None, None] & key_ok[:, :, None, :]  # (B, stride, rows, rows)
    vc = columns(v)

    def to_query_order(t):  # (.., stride, rows, rows) -> (.., n, rows)
        return t.transpose(-3, -2).reshape(*t.shape[:-3], n_pad, rows)[..., :n, :]

    def apply(probs):  # (B, H, n, rows) -> (B, H, n, D)
        p = _pad_seq(probs, n_pad).view(b, h, rows, stride, rows).transpose(2, 3)
        return (p @ vc).transpose(2, 3).reshape(b, h, n_pad, d)[:, :, :n]

    pos = torch.arange(n, device=q.device)
    key_pos = (pos % stride)[:, None] + row[None, :] * stride
    return _Part(to_query_order(scores), to_query_order(allowed[:, None]), apply, key_pos)


def blocked_sparse_attention(q, k, v, options: SparseOptions, *, key_padding_mask=None, causal=False,
                             dropout_p=0.0, need_weights=False):
    """Sparse attention on (B, H, n, D) tensors without an n x n score matrix.

    Returns ``(out, weights)``; weights is a dense ``(B, H, n, n)`` map (pre-dropout) when
    ``need_weights``, else None. A query with no visible key (only a padding query can have
    none) gets an arbitrary finite output.
    """
    b, h, n, d = q.shape
    if options.pattern == "local" and not need_weights and local_fused_available(q, dropout_p):
        return _local_fused(q, k, v, key_padding_mask, window=options.window, causal=causal), None
    if options.pattern == "local" and not need_weights:
        return _local_sdpa(q, k, v, key_padding_mask, window=options.window, causal=causal, dropout_p=dropout_p), None
    q = q * (1.0 / math.sqrt(d))  # scale the n x D queries, not the n x m scores
    valid = torch.ones(b, n, dtype=torch.bool, device=q.device) if key_padding_mask is None else ~key_padding_mask
    if options.pattern == "block":
        layout = _fixed_layout(q, k, v, valid, block_size=options.block_size, summary=options.summary, causal=causal)
    else:
        layout = _local_layout(q, k, v, valid, window=options.window, causal=causal)
    if options.pattern != "strided" and not need_weights:
        # Every query of a block sees the same keys: the fused SDPA kernel does the work.
        return layout.sdpa(dropout_p), None
    parts = [layout.as_part()]
    if options.pattern == "strided":
        stride = options.stride or max(2, round(math.sqrt(n)))
        parts.append(_strided_part(q, k, v, valid, stride=stride, window=options.window, causal=causal))
    # One softmax over every part: fill masked keys with the dtype's minimum (finite, so a
    # query with no visible key gives no NaN) and normalise in float32 for half precisions.
    softmax_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    for p in parts:
        p.scores.masked_fill_(~p.allowed, torch.finfo(p.scores.dtype).min)
    scores = parts[0].scores if len(parts) == 1 else torch.cat([p.scores for p in parts], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(q.dtype)
    dropped = F.dropout(probs, p=dropout_p) if dropout_p > 0 else probs
    chunks = [dropped] if len(parts) == 1 else dropped.split([p.scores.shape[-1] for p in parts], dim=-1)
    out = sum(p.apply(chunk) for p, chunk in zip(parts, chunks))
    weights = _dense_weights(parts, probs, n) if need_weights else None
    return out, weights


def _dense_weights(parts, probs, n):
    """Scatter the per-part probabilities into a dense (B, H, n, n) map for visualisation."""
    b, h = probs.shape[:2]
    allowed = torch.cat([p.allowed.expand(b, 1, n, -1) for p in parts], dim=-1)
    key_pos = torch.cat([p.key_pos for p in parts], dim=-1).clamp(0, n - 1)
    dense = probs.new_zeros(b, h, n, n)
    return dense.scatter_add_(-1, key_pos.expand(b, h, n, -1), probs * allowed)


# --- the CUDA FlexAttention path ---------------------------------------------------------


FLEX_BLOCK = 128  # FlexAttention's tile: the block mask says which 128 x 128 tiles to visit


@functools.cache
def _flex_attention_fn():
    """FlexAttention's compiled entry point, or None where this torch lacks it."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return torch.compile(flex_attention)


def _pattern_mask_mod(pattern, window, stride, block_size, summary, causal):
    """The pattern as FlexAttention's ``mask_mod(b, h, q_idx, kv_idx) -> keep``, applied inside partial tiles."""

    def mask_mod(b, h, q_idx, kv_idx):
        diff = q_idx - kv_idx
        if pattern == "block":
            keep = (q_idx // block_size == kv_idx // block_size) | (kv_idx % block_size >= block_size - summary)
        else:
            keep = diff.abs() < window
            if pattern == "strided":
                keep = keep | (diff % stride == 0)
        return keep & (diff >= 0) if causal else keep

    return mask_mod


def pattern_tiles(pattern, window, stride, block_size, summary, causal, n, tile=FLEX_BLOCK, device="cpu"):
    """Which ``tile x tile`` tiles of the n x n pattern hold a visible pair, and which hold only visible pairs.

    Returns bool ``(any, full)`` of shape (n_tiles, n_tiles), computed per tile from the ranges
    of ``q - k`` (and of positions modulo ``block_size``) inside it, so memory grows with
    ``(n / tile)^2``, never ``n^2``: this is what lets FlexAttention run at 65k tokens.
    ``any`` is exact for local and strided and may include a few empty tiles for block;
    ``full`` may leave out full tiles (they are then visited as partial ones). Both errors
    only cost time, never correctness. Tiles that cross ``n`` are never full.
    """
    nt = math.ceil(n / tile)
    start = torch.arange(nt, device=device) * tile
    end = torch.clamp(start + tile, max=n) - 1
    q_lo, q_hi, k_lo, k_hi = start[:, None], end[:, None], start[None, :], end[None, :]
    d_min, d_max = q_lo - k_hi, q_hi - k_lo  # every q - k in between occurs in the tile
    if causal:
        d_min = d_min.clamp(min=0)
    reachable = d_min <= d_max  # with causal: some key not after its query
    if pattern == "block":
        span = k_hi - k_lo
        first = k_lo % block_size
        shares_block = (q_lo // block_size <= k_hi // block_size) & (k_lo // block_size <= q_hi // block_size)
        has_summary = (span + 1 >= block_size) | (first + span >= block_size - summary)
        one_block = (q_lo // block_size == q_hi // block_size) & (q_lo // block_size == k_lo // block_size) & (
            k_lo // block_size == k_hi // block_size)
        only_summary = (first >= block_size - summary) & (first + span <= block_size - 1)
        any_tile = reachable & (shares_block | has_summary)
        full = one_block | only_summary
    else:
        any_tile = reachable & (d_min <= window - 1) & (d_max >= -(window - 1))
        if pattern == "strided":
            any_tile |= reachable & (torch.div(d_max, stride, rounding_mode="floor") * stride >= d_min)
        full = (d_min >= -(window - 1)) & (d_max <= window - 1)
    if causal:
        full &= k_hi <= q_lo
    full &= (q_hi - q_lo + 1 == tile) & (k_hi - k_lo + 1 == tile)
    return any_tile, full & any_tile


def _kv_block_lists(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_tiles, n_tiles) bool -> FlexAttention's (1, 1, n_tiles) counts and (1, 1, n_tiles, n_tiles) indices."""
    counts = tiles.sum(-1, dtype=torch.int32)
    indices = torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True).to(torch.int32)  # listed tiles first
    return counts[None, None], indices[None, None]


@functools.lru_cache(maxsize=32)
def flex_block_mask(pattern, window, stride, block_size, summary, causal, n, device):
    """FlexAttention BlockMask of one pattern and length, from :func:`pattern_tiles` (no n x n mask).

    Cached per (options, n, device): building it is a few small kernels, reused every step.
    """
    from torch.nn.attention.flex_attention import BlockMask

    any_tile, full = pattern_tiles(pattern, window, stride, block_size, summary, causal, n, device=device)
    partial_counts, partial_indices = _kv_block_lists(any_tile & ~full)
    full_counts, full_indices = _kv_block_lists(full)
    mask_mod = _pattern_mask_mod(pattern, window, stride, block_size, summary, causal)
    try:
        return BlockMask.from_kv_blocks(partial_counts, partial_indices, full_counts, full_indices,
                                        BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(n, n))
    except TypeError:  # older torch: no seq_lengths argument
        return BlockMask.from_kv_blocks(partial_counts, partial_indices, full_counts, full_indices,
                                        BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod)


FLEX_MIN_LENGTH = 1024  # shorter sequences: the blocked SDPA path (cheaper than compiling per length)


def flex_available(q: torch.Tensor) -> bool:
    """FlexAttention on CUDA for long sequences; short ones vary per batch and would recompile it."""
    return q.is_cuda and q.shape[-2] >= FLEX_MIN_LENGTH and _flex_attention_fn() is not None


def flex_sparse_attention(q, k, v, options: SparseOptions, *, causal=False):
    """The same pattern through FlexAttention (CUDA only; no padding mask, dropout or weights)."""
    n = q.shape[-2]
    stride = options.stride or max(2, round(math.sqrt(n)))
    block_mask = flex_block_mask(options.pattern, options.window, stride, options.block_size,
                                 options.summary, causal, n, str(q.device))
    return _flex_attention_fn()(q, k, v, block_mask=block_mask)


# --- the module ------------------------------------------------------------------------------


class SparseAttention(Attention):
    """Multi-head attention restricted to a Sparse Transformer pattern (self-attention only)."""

    supports_causal = True
    supports_cross = False
    supports_padding_mask = True
    returns_weights = True
    Options = SparseOptions

    def __init__(self, d_model, n_heads, dropout=0.0, options=None):
        super().__init__(d_model, n_heads, dropout, options)
        self.add_projections()

    def dense_equivalent(self, n: int) -> bool:
        """True when the pattern lets every query see every key at length ``n``.

        Then the module is exactly multi-head attention and ``forward`` runs the dense SDPA
        path (:func:`attnbench.attention.dense_attention`) instead of the blocked one:
        a ``window`` (local, strided) or ``block_size`` (block) of at least ``n``.
        """
        reach = self.options.block_size if self.options.pattern == "block" else self.options.window
        return reach >= n

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        q, k, v = self.project_qkv(x)
        dropout_p = self.dropout if self.training else 0.0
        if self.dense_equivalent(x.shape[1]):
            out, weights = dense_attention(q, k, v, key_padding_mask=key_padding_mask, causal=causal,
                                           dropout_p=dropout_p, need_weights=need_weights)
        elif key_padding_mask is None and dropout_p == 0.0 and not need_weights and flex_available(q):
            out, weights = flex_sparse_attention(q, k, v, self.options, causal=causal), None
        else:
            out, weights = blocked_sparse_attention(
                q, k, v, self.options, key_padding_mask=key_padding_mask, causal=causal,
                dropout_p=dropout_p, need_weights=need_weights,
            )
        return self.project_out(out), weights


@hookimpl
def register_attention(register):
    register("sparse", SparseAttention)
