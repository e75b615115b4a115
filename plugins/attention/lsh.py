"""LSH attention in the style of the Reformer (Kitaev et al. 2020).

Queries and keys share one projection. Each of ``n_hashes`` rounds hashes the shared vectors
with a random rotation (angular LSH: ``argmax([xR; -xR])``) into ``n_buckets`` buckets,
sorts the tokens by (bucket, position), cuts the sorted sequence into chunks of
``bucket_size`` and lets every chunk attend to itself and the previous chunk. Keys are the
L2-normalised shared vectors. A token does not attend to itself unless nothing else is
visible (its score is replaced by -5e4, as in the Reformer). The rounds are combined with
weights ``softmax`` of their log-sum-exp normalisers (a key met in several rounds counts once
per round, as in reformer-pytorch's default). Peak memory grows as
``n * n_hashes * bucket_size``, never ``n x n``.

Rotations come from a generator seeded with ``seed``, so hashing is deterministic and a
trained model is evaluated with the rotations it saw. ``n_hashes`` is a plain attribute of
the validated options and can be raised after training
(``module.options.n_hashes = 8``), which the Reformer reports as improving accuracy.

``need_weights=True`` returns the combined attention probabilities scattered back to the
original token order, a dense ``(batch, heads, n, n)`` map whose rows sum to 1 (for
visualisation; it costs ``n x n`` memory only when asked for).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attnbench import Attention, hookimpl
from attnbench.attention import cpu_flash_ops

SELF_SCORE = -5e4  # a token sees itself only when every other key is masked


class LSHOptions(BaseModel):
    """Options of ``lsh``. Give ``bucket_size`` (default 64) or ``n_buckets``, not both."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    n_hashes: int = Field(4, ge=1, description="hashing rounds; may be raised at evaluation time")
    bucket_size: int | None = Field(None, ge=1, description="chunk length; n_buckets = n / bucket_size")
    n_buckets: int | None = Field(None, ge=1, description="fixed number of buckets (1 or even); chunk = n / n_buckets")
    seed: int = Field(0, description="seed of the random rotations")

    @model_validator(mode="after")
    def _one_bucket_rule(self):
        if self.bucket_size is not None and self.n_buckets is not None:
            raise ValueError("give bucket_size or n_buckets, not both")
        if self.n_buckets is not None and self.n_buckets > 1 and self.n_buckets % 2:
            raise ValueError(f"n_buckets must be 1 or even (angular LSH uses +/- rotations), got {self.n_buckets}")
        return self

    def buckets_and_chunk(self, n: int) -> tuple[int, int]:
        """(n_buckets, chunk length) for a sequence of length ``n``."""
        if self.n_buckets is not None:
            return self.n_buckets, math.ceil(n / self.n_buckets)
        chunk = self.bucket_size or 64
        n_buckets = math.ceil(n / chunk)
        return (n_buckets + n_buckets % 2 if n_buckets > 1 else 1), chunk


def hash_buckets(x: torch.Tensor, n_buckets: int, n_hashes: int, seed: int) -> torch.Tensor:
    """Angular LSH of (B, H, n, D) vectors -> bucket ids (B, H, n_hashes, n)."""
    b, h, n, d = x.shape
    if n_buckets == 1:
        return torch.zeros(b, h, n_hashes, n, dtype=torch.long, device=x.device)
    gen = torch.Generator().manual_seed(seed)
    rotations = torch.randn(d, n_hashes, n_buckets // 2, generator=gen).to(x.device, x.dtype)
    rotated = torch.einsum("bhnd,drk->bhrnk", x, rotations)
    # argmax over [xR; -xR] without building it: the largest of max(xR) and -min(xR), the
    # first index on a tie, as argmax over the concatenation would pick.
    top, top_index = rotated.max(dim=-1)
    bottom, bottom_index = rotated.min(dim=-1)
    return torch.where(top >= -bottom, top_index, bottom_index + n_buckets // 2)


def _exp_(x: torch.Tensor) -> torch.Tensor:
    """``x.exp_()``, bit for bit, without the CPU's slow path for results that underflow to 0.

    torch's CPU exp (MKL's vector math) handles every element whose exp underflows on a slow
    path: on scores with a third of them masked it took 6x as long as on unmasked ones
    (measured, 82k elements). Here those elements are exponentiated as 0 and zeroed afterwards,
    by multiplying with a 0/1 mask (arithmetic: ``masked_fill`` is a scalar loop on the CPU).
    Elements between the floor and the smallest normal result still take the slow path, as they
    must to be exact; scores that far below their row's maximum are rare.
    """
    if x.device.type != "cpu":
        return x.exp_()
    info = torch.finfo(x.dtype)
    floor = math.log(info.tiny * info.eps) - 8.0  # exp is exactly 0 below: under half the smallest subnormal
    keep = (x - floor).sign_().clamp_min_(0)  # 1 where exp(x) may be nonzero, 0 where it is 0; NaN stays NaN
    return x.clamp_min_(info.min).mul_(keep).exp_().mul_(keep)  # clamp: -inf * 0 would be NaN


def _logsumexp(scores: torch.Tensor) -> torch.Tensor:
    """``scores.logsumexp(dim=-1, keepdim=True)``, bit for bit: the same steps as torch's
    (shift by the finite row maximum, exp, sum, log, shift back), with :func:`_exp_`'s exp."""
    top = scores.amax(dim=-1, keepdim=True)
    top.masked_fill_(top.abs() == math.inf, 0)
    return _exp_(scores - top).sum(dim=-1, keepdim=True).log_().add_(top)


def _look_one_back(t: torch.Tensor) -> torch.Tensor:
    """(..., n_chunks, c, X) -> (..., n_chunks, 2c, X): each chunk with the previous (cyclically)."""
    if t.shape[-3] == 1:
        return t
    return torch.cat([t.roll(1, dims=-3), t], dim=-2)


class _PermuteRows(torch.autograd.Function):
    """``t.index_select(0, index)`` for a permutation ``index`` whose inverse is ``inverse``.

    The backward is the inverse permutation: much cheaper on the CPU than index_select's
    scatter-add backward.
    """

    @staticmethod
    def forward(ctx, t, index, inverse):
        ctx.save_for_backward(inverse)
        return t.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def _fold_back(grad: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`_look_one_back`: (.., n_chunks, 2c, X) -> (.., n_chunks, c, X)."""
    if grad.shape[-3] == 1:
        return grad
    c = grad.shape[-2] // 2
    return grad[..., c:, :] + grad[..., :c, :].roll(-1, dims=-3)


def _self_mask(chunk: int, m: int, device) -> torch.Tensor:
    """(chunk, m) bool: each query's own key, on the diagonal of the own-chunk columns (the last ``chunk``)."""
    return torch.arange(m, device=device)[None, :] == torch.arange(chunk, device=device)[:, None] + (m - chunk)


class _ChunkAttention(torch.autograd.Function):
    """Each sorted chunk attends to itself and the previous chunk; returns (out, lse, probs).

    Written out by hand for memory: autograd would keep the doubled (look-back) keys and
    values and the scores beside the probabilities. Here only the chunked queries, keys,
    values and the probabilities are kept, and the look-back copies are rebuilt in backward.
    Softmax and log-sum-exp share one gradient: ``ds = p * (dp - sum(dp * p) + dlse)``.
    """

    @staticmethod
    def forward(ctx, sq, sk, sv, hidden, dropout_p):
        scores = sq @ _look_one_back(sk).transpose(-1, -2)  # (.., n_chunks, chunk, m)
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()
        if hidden is not None:
            scores.masked_fill_(hidden, torch.finfo(scores.dtype).min)
        self_mask = _self_mask(scores.shape[-2], scores.shape[-1], sq.device)
        scores.masked_fill_(self_mask, SELF_SCORE)
        lse = _logsumexp(scores)
        probs = _exp_(scores.sub_(lse))
        keep = torch.rand_like(probs) >= dropout_p if dropout_p > 0 else None
        dropped = probs if keep is None else probs * keep / (1 - dropout_p)
        out = dropped.to(sv.dtype) @ _look_one_back(sv)
        ctx.save_for_backward(sq, sk, sv, probs, keep)
        ctx.dropout_p = dropout_p
        ctx.mark_non_differentiable(probs)
        return out, lse, probs

    @staticmethod
    def backward(ctx, grad_out, grad_lse, _grad_probs):
        sq, sk, sv, probs, keep = ctx.saved_tensors
        p = ctx.dropout_p
        dropped = probs if keep is None else probs * keep / (1 - p)
        grad_sv = _fold_back(dropped.to(sv.dtype).transpose(-1, -2) @ grad_out)
        del dropped
        grad_scores = (grad_out @ _look_one_back(sv).transpose(-1, -2)).to(probs.dtype)  # d(dropped)
        if keep is not None:
            grad_scores.mul_(keep).div_(1 - p)
        shift = -(grad_scores * probs).sum(dim=-1, keepdim=True)
        if grad_lse is not None:
            shift += grad_lse
        grad_scores.add_(shift).mul_(probs)
        grad_scores.masked_fill_(_self_mask(probs.shape[-2], probs.shape[-1], probs.device), 0.0)
        grad_scores = grad_scores.to(sq.dtype)
        grad_sq = grad_scores @ _look_one_back(sk)
        grad_sk = _fold_back(grad_scores.transpose(-1, -2) @ sq)
        return grad_sq, grad_sk, grad_sv, None, None


def lsh_attention(qk, v, options: LSHOptions, *, key_padding_mask=None, causal=False, dropout_p=0.0,
                  need_weights=False, rounds_at_once: bool | None = None):
    """Reformer LSH attention on shared query/key vectors ``qk`` and values ``v`` (B, H, n, D).

    Returns ``(out, weights)``; weights as described in the module docstring, or None.
    Three ways to compute the same thing. By default, on the CPU without dropout or weights,
    every round goes through the CPU's fused attention kernel (:func:`_fused_rounds`).
    ``rounds_at_once`` (default: on CUDA, without weights) batches the hand-written chunk
    attention over the rounds, trading ``n_hashes`` times the temporaries for a fraction of the
    kernel launches; otherwise the rounds run one after another. Passing ``rounds_at_once``
    (True or False) picks one of the hand-written paths.
    """
    b, h, n, d = qk.shape
    rounds = options.n_hashes
    n_buckets, chunk = options.buckets_and_chunk(n)
    n_chunks = math.ceil(n / chunk)
    n_pad = n_chunks * chunk
    if n_pad > n:
        qk, v = (F.pad(t, (0, 0, 0, n_pad - n)) for t in (qk, v))
    valid = torch.ones(b, n_pad, dtype=torch.bool, device=qk.device)
    valid[:, n:] = False
    if key_padding_mask is not None:
        valid[:, :n] = ~key_padding_mask
    padded = key_padding_mask is not None or n_pad > n  # known here: no device sync for valid.all()

    # Sort each round by (bucket, position). Padding goes to an extra last bucket, so its
    # contents can never change where real tokens land.
    buckets = hash_buckets(qk.detach(), n_buckets, rounds, options.seed)
    if padded:
        buckets = buckets.masked_fill(~valid[:, None, None, :], n_buckets)
    pos = torch.arange(n_pad, device=qk.device)
    order = (buckets * n_pad + pos).argsort(dim=-1)  # (B, H, R, n_pad): sorted slot -> position
    undo = torch.empty_like(order).scatter_(-1, order, pos.expand_as(order))  # position -> sorted slot
    if rounds_at_once is None and fused_available(qk, dropout_p, need_weights):
        # Unscaled rows: the kernel scales the scores, and the keys are normalised anyway.
        rows = (t.reshape(b * h * n_pad, d) for t in (qk, v))
        return _fused_rounds(*rows, order, undo, valid if padded else None, causal, chunk,
                             scale=1.0 / math.sqrt(d))[:, :, :n], None
    head_offset = (torch.arange(b * h, device=qk.device) * n_pad).view(b, h, 1)
    q_pos = order.view(b, h, rounds, n_chunks, chunk)
    k_pos = _look_one_back(q_pos[..., None]).squeeze(-1)
    k_valid = None
    if padded:
        k_valid = valid.gather(1, order.view(b, -1)).view(b, h, rounds, n_chunks, chunk, 1)
        k_valid = _look_one_back(k_valid).squeeze(-1)
    qk_rows = (qk * (1.0 / math.sqrt(d))).reshape(b * h * n_pad, d)
    v_rows = v.reshape(b * h * n_pad, d)
    if (qk.is_cuda if rounds_at_once is None else rounds_at_once) and not need_weights:
        return _all_rounds_at_once(qk_rows, v_rows, order, undo, q_pos, k_pos, k_valid, causal, dropout_p)[:, :, :n], None

    # One round at a time: the n x 2*chunk temporaries of a round are freed before the next.
    outs, lses, probs_kept = [], [], []
    for r in range(rounds):
        to_sorted = (order[:, :, r] + head_offset).flatten()  # sorted slot -> row
        to_position = (undo[:, :, r] + head_offset).flatten()  # position -> sorted slot
        hidden = None if k_valid is None else ~k_valid[:, :, r, :, None, :]
        if causal:
            future = k_pos[:, :, r, :, None, :] > q_pos[:, :, r, :, :, None]
            hidden = future if hidden is None else hidden | future
        out_r, lse_r, probs_r = _attend_round(
            _PermuteRows.apply(qk_rows, to_sorted, to_position).view(b, h, n_chunks, chunk, d),
            _PermuteRows.apply(v_rows, to_sorted, to_position).view(b, h, n_chunks, chunk, d),
            hidden, dropout_p,
        )
        unsort = lambda t: _PermuteRows.apply(t.reshape(b * h * n_pad, -1), to_position, to_sorted).view(b, h, n_pad, -1)
        outs.append(unsort(out_r))
        lses.append(unsort(lse_r))
        if need_weights:
            probs_kept.append(probs_r)

    # Each round was normalised on its own (exact even when only the -5e4 self score is
    # visible); the rounds are mixed with weights softmax(their log-sum-exps).
    round_weight = torch.softmax(torch.stack(lses), dim=0)  # (R, B, H, n_pad, 1)
    out = sum(o * w.to(v.dtype) for o, w in zip(outs, round_weight.unbind(0)))[:, :, :n]
    weights = None
    if need_weights:
        probs = torch.stack(probs_kept, dim=2)  # (B, H, R, n_chunks, chunk, m)
        flat_index = (q_pos[..., :, None] * n_pad + k_pos[..., None, :]).reshape(b, h, -1)
        sorted_weight = round_weight.squeeze(-1).permute(1, 2, 0, 3).gather(3, order)  # weight at each sorted slot
        dense = probs.new_zeros(b, h, n_pad * n_pad)
        dense.scatter_add_(-1, flat_index, (probs * sorted_weight.reshape(b, h, rounds, n_chunks, chunk, 1)).reshape(b, h, -1))
        weights = dense.view(b, h, n_pad, n_pad)[:, :, :n, :n].to(v.dtype)
    return out, weights


def _all_rounds_at_once(qk_rows, v_rows, order, undo, q_pos, k_pos, k_valid, causal, dropout_p):
    """Every hashing round in one batch; the same computation as the round loop. Returns (B, H, n_pad, D).

    On CUDA the loop was launch-bound (about 8 ms at any length on an H100): batching the
    rounds divides the launches by ``n_hashes``. Gathers use ``index_select``, whose
    backward is a scatter-add, since a row now appears once per round.
    """
    b, h, rounds, n_chunks, chunk = q_pos.shape
    n_pad, d = n_chunks * chunk, qk_rows.shape[-1]
    head_offset = (torch.arange(b * h, device=qk_rows.device) * n_pad).view(b, h, 1, 1)
    to_sorted = (order + head_offset).flatten()
    sq = qk_rows.index_select(0, to_sorted).view(b, h, rounds, n_chunks, chunk, d)
    sv = v_rows.index_select(0, to_sorted).view(b, h, rounds, n_chunks, chunk, d)
    hidden = None if k_valid is None else ~k_valid[..., None, :]
    if causal:
        future = k_pos[..., None, :] > q_pos[..., :, None]
        hidden = future if hidden is None else hidden | future
    out, lse, _ = _attend_round(sq, sv, hidden, dropout_p)
    round_offset = (torch.arange(b * h * rounds, device=qk_rows.device) * n_pad).view(b, h, rounds, 1)
    to_position = (undo + round_offset).flatten()

    def unsort(t):  # (B, H, R, n_chunks, chunk, X) in sorted order -> (B, H, R, n_pad, X) by position
        return t.reshape(b * h * rounds * n_pad, -1).index_select(0, to_position).view(b, h, rounds, n_pad, -1)

    out, lse = unsort(out), unsort(lse)
    return (out * torch.softmax(lse, dim=2).to(out.dtype)).sum(dim=2)


# --- the fused CPU path ---------------------------------------------------------------------

# Sorted rows (tokens x rounds) per call of the fused kernel. Its backward zero-fills key and
# value gradients of twice that many rows: ~2 MB at 4096 rows stays in the allocator's reuse
# range and in cache, where one call over everything page-faults on fresh buffers (profiled:
# the kernel ran about a third slower at n=1024 and n=4096 in one call).
CALL_ROWS = 4096


def fused_available(qk: torch.Tensor, dropout_p: float, need_weights: bool) -> bool:
    """The fused path runs on the CPU without dropout (its backward would need the same
    dropout mask again) and without a weights request (the kernel keeps no probabilities)."""
    return qk.device.type == "cpu" and dropout_p == 0 and not need_weights and cpu_flash_ops() is not None


def _look_back_buffer(t: torch.Tensor) -> torch.Tensor:
    """(G, n_chunks, c, ...) -> (G, n_chunks + 1, c, ...): the last chunk, then every chunk.

    :func:`_windows` views it as each chunk after the previous one (cyclically): one copy,
    not the two of a concatenation. With one chunk there is nothing to look back to.
    """
    return t if t.shape[1] == 1 else torch.cat([t[:, -1:], t], dim=1)


def _windows(buffer: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """(G, n_chunks + 1, c, ...) -> (G, n_chunks, 2c, ...), overlapping windows of a
    :func:`_look_back_buffer` (no copy)."""
    if buffer.shape[1] == n_chunks:
        return buffer
    c = buffer.shape[2]
    return buffer.flatten(1, 2).unfold(1, 2 * c, c).movedim(-1, 2)


class _HeadGroup:
    """Heads ``[start, stop)`` of the flattened (B*H) heads with all their rounds, whose outputs
    are combined together; the kernel runs over slices of their chunks of at most ``CALL_ROWS``
    rows. Holds the index maps; row indices are into the group's token rows."""

    def __init__(self, order, undo, start, stop, chunk):
        heads, rounds, n_pad = stop - start, order.shape[1], order.shape[2]
        device = order.device
        self.rows = slice(start * n_pad, stop * n_pad)  # the group's token rows
        self.n_chunks, self.chunk = n_pad // chunk, chunk
        # sorted row (head, round, slot) -> token row within the group
        self.to_sorted = (order[start:stop] + (torch.arange(heads, device=device) * n_pad).view(heads, 1, 1)).flatten()
        # (head, round, position) -> sorted row
        self.to_position = (undo[start:stop] + (torch.arange(heads * rounds, device=device) * n_pad).view(heads, rounds, 1)).flatten()
        chunks = (self.to_sorted + start * n_pad).view(heads * rounds, self.n_chunks, chunk)
        self.gather = _look_back_buffer(chunks).flatten()  # token rows of the key/value buffers
        self.positions = order[start:stop].reshape(heads * rounds, self.n_chunks, chunk)
        step = max(1, CALL_ROWS // (heads * rounds * chunk))
        self.slices = [(j, min(j + step, self.n_chunks)) for j in range(0, self.n_chunks, step)]
        by_chunk = self.to_sorted.view(heads * rounds, self.n_chunks, chunk)
        self.slice_rows = [by_chunk[:, j0:j1].flatten() for j0, j1 in self.slices]

    def inputs(self, qk_rows, v_rows):
        """Sorted queries, their norms and normalised keys (own chunk), key and value windows."""
        d = qk_rows.shape[-1]
        q_buffer = qk_rows.index_select(0, self.gather).view(-1, self.n_chunks + (self.n_chunks > 1), self.chunk, d)
        norm = torch.linalg.vector_norm(q_buffer, dim=-1, keepdim=True).clamp_min_(1e-12)  # as F.normalize
        k_buffer = q_buffer / norm
        v_buffer = v_rows.index_select(0, self.gather).view(q_buffer.shape)
        own = slice(1, None) if self.n_chunks > 1 else slice(None)
        return (q_buffer[:, own], norm[:, own], k_buffer[:, own],
                _windows(k_buffer, self.n_chunks), _windows(v_buffer, self.n_chunks))

    def mask(self, valid_heads, causal, dtype):
        """Additive mask: hidden keys get the dtype's minimum, a token's own key -5e4 (hidden or
        not, as in :class:`_ChunkAttention`). (1, 1, c, m) when the same for every chunk."""
        c = self.chunk
        m = c if self.n_chunks == 1 else 2 * c
        if valid_heads is None and not causal:
            mask = torch.zeros(1, 1, c, m, dtype=dtype, device=self.positions.device)
        else:
            k_pos = _windows(_look_back_buffer(self.positions), self.n_chunks)  # (G, n_chunks, m)
            hidden = torch.zeros(k_pos.shape[:2] + (c, m), dtype=torch.bool, device=k_pos.device)
            if valid_heads is not None:
                heads = valid_heads.shape[0]
                hidden |= ~valid_heads.gather(1, k_pos.reshape(heads, -1)).view(k_pos.shape)[:, :, None, :]
            if causal:
                hidden |= k_pos[:, :, None, :] > self.positions[..., None]
            mask = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device).masked_fill_(hidden, torch.finfo(dtype).min)
        mask.diagonal(offset=m - c, dim1=-2, dim2=-1).fill_(SELF_SCORE)
        return mask


def _fold_into(total: torch.Tensor, grad: torch.Tensor, j0: int, j1: int) -> None:
    """Add the gradient of windows ``j0..j1-1`` (G, j1-j0, m, D) to the chunks' (G, n_chunks, c, D)."""
    c = total.shape[2]
    total[:, j0:j1] += grad[:, :, -c:]  # own halves (the whole window when there is one chunk)
    if grad.shape[2] == c:
        return
    previous = grad[:, :, :c]  # window j looks back at chunk j - 1, cyclically
    if j0 == 0:
        total[:, -1] += previous[:, 0]
        total[:, :j1 - 1] += previous[:, 1:]
    else:
        total[:, j0 - 1:j1 - 1] += previous


class _FusedRounds(torch.autograd.Function):
    """Every round's chunk attention through the CPU's fused kernel, rounds combined.

    Takes the token rows (B*H*n_pad, D) of the shared vectors (unscaled: the kernel multiplies
    the scores by ``scale``) and of the values; returns the combined output rows.

    The rounds' weights ``softmax(lse_r)`` make the result one softmax over every round's keys
    together, so its gradient with respect to a round's scores is ``w_r * p * (g.v - g.out)``
    with ``out`` the *combined* output. The kernel's backward computes ``p * (g'.v - g'.o)``
    with ``g' = w_r * g`` and the ``o`` it is given: given the combined output, it returns the
    exact gradient, the part through the log-sum-exps included. Nothing per round is kept but
    the log-sum-exps; the sorted copies are gathered again in backward.
    """

    @staticmethod
    def forward(ctx, qk_rows, v_rows, groups, masks, rounds, scale):
        forward_kernel, _ = cpu_flash_ops()
        d = qk_rows.shape[-1]
        combined = qk_rows.new_zeros(qk_rows.shape)
        kept = []
        for group, mask in zip(groups, masks):
            sq, _, _, keys, values = group.inputs(qk_rows, v_rows)
            outs, lses = [], []
            for j0, j1 in group.slices:
                out, lse = forward_kernel(sq[:, j0:j1], keys[:, j0:j1], values[:, j0:j1], 0.0, False,
                                          attn_mask=mask if mask.shape[1] == 1 else mask[:, j0:j1], scale=scale)
                outs.append(out)
                lses.append(lse)
            lse = torch.cat(lses, dim=1).flatten()  # per sorted row; float32 for half precisions
            # Round weights softmax(lse_r) in token order (not exp(lse - logsumexp): at lse ~ -5e4,
            # a token that only sees itself, that difference loses float32 digits), then sorted.
            by_position = lse.index_select(0, group.to_position).view(-1, rounds, group.n_chunks * group.chunk)
            weight = torch.empty_like(lse).index_copy_(0, group.to_position, torch.softmax(by_position, dim=1).view(-1))
            weight = weight.view(sq.shape[:-1]).to(qk_rows.dtype)
            for (j0, j1), rows, out in zip(group.slices, group.slice_rows, outs):
                combined[group.rows].index_add_(0, rows, out.mul_(weight[:, j0:j1, :, None]).reshape(-1, d))
            kept.append((lse.view(sq.shape[:-1]), weight))
        ctx.save_for_backward(qk_rows, v_rows, combined)
        ctx.groups, ctx.masks, ctx.kept, ctx.scale = groups, masks, kept, scale
        return combined

    @staticmethod
    def backward(ctx, grad):
        _, backward_kernel = cpu_flash_ops()
        qk_rows, v_rows, combined = ctx.saved_tensors
        d = qk_rows.shape[-1]
        grad_qk, grad_v = torch.zeros_like(qk_rows), torch.zeros_like(v_rows)
        for group, mask, (lse, weight) in zip(ctx.groups, ctx.masks, ctx.kept):
            sq, norm, sk, keys, values = group.inputs(qk_rows, v_rows)
            grad_sk, grad_sv = torch.zeros_like(sk), torch.zeros_like(sk)
            for (j0, j1), rows in zip(group.slices, group.slice_rows):
                shape = (sq.shape[0], j1 - j0) + sq.shape[2:]
                grad_q, grad_keys, grad_values = backward_kernel(
                    grad[group.rows].index_select(0, rows).view(shape).mul_(weight[:, j0:j1, :, None]),
                    sq[:, j0:j1], keys[:, j0:j1], values[:, j0:j1],
                    combined[group.rows].index_select(0, rows).view(shape), lse[:, j0:j1],
                    0.0, False, attn_mask=mask if mask.shape[1] == 1 else mask[:, j0:j1], scale=ctx.scale,
                )
                grad_qk[group.rows].index_add_(0, rows, grad_q.reshape(-1, d))
                _fold_into(grad_sk, grad_keys, j0, j1)
                _fold_into(grad_sv, grad_values, j0, j1)
            # keys = q / |q|: d/dq = (grad_k - k (k . grad_k)) / |q|
            grad_sk.sub_(sk * (sk * grad_sk).sum(-1, keepdim=True)).div_(norm)
            grad_qk[group.rows].index_add_(0, group.to_sorted, grad_sk.view(-1, d))
            grad_v[group.rows].index_add_(0, group.to_sorted, grad_sv.view(-1, d))
        return grad_qk, grad_v, None, None, None, None


def _fused_rounds(qk_rows, v_rows, order, undo, valid, causal, chunk, scale):
    """Every hashing round through the CPU's fused attention kernel (see :class:`_FusedRounds`).

    The same computation as the round loop, except that a token's own score is its dot product
    plus -5e4 instead of -5e4 (its weight is 0 next to any visible key either way, and 1 alone).
    ``valid`` (B, n_pad) bool or None when nothing is padded. Returns (B, H, n_pad, D).
    """
    b, h, rounds, n_pad = order.shape
    order, undo = order.reshape(b * h, rounds, n_pad), undo.reshape(b * h, rounds, n_pad)
    valid_heads = None if valid is None else valid.repeat_interleave(h, dim=0)  # (B*H, n_pad)
    per_group = max(1, CALL_ROWS // (rounds * n_pad))
    groups, masks = [], []
    for start in range(0, b * h, per_group):
        stop = min(start + per_group, b * h)
        groups.append(_HeadGroup(order, undo, start, stop, chunk))
        masks.append(groups[-1].mask(None if valid_heads is None else valid_heads[start:stop], causal, qk_rows.dtype))
    return _FusedRounds.apply(qk_rows, v_rows, groups, masks, rounds, scale).view(b, h, n_pad, -1)


def shared_qk_dense_attention(qk, v, *, key_padding_mask=None, causal=False, dropout_p=0.0):
    """LSH attention with a single bucket, as one SDPA call on (B, H, n, D) tensors.

    Keys are the normalised shared vectors; hidden keys get the dtype's minimum and a
    token's own score -5e4 (added to its tiny dot product instead of replacing it: either
    way its weight is exactly 0 next to any visible key, and 1 when nothing else is visible).
    """
    b, h, n, d = qk.shape
    mask = torch.zeros(n, n, dtype=qk.dtype, device=qk.device)
    hidden = None
    if causal:
        hidden = torch.ones(n, n, dtype=torch.bool, device=qk.device).triu(1)
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]
        hidden = pad if hidden is None else hidden | pad
    if hidden is not None:
        mask = mask.masked_fill(hidden, torch.finfo(qk.dtype).min)
    mask.diagonal(dim1=-2, dim2=-1).fill_(SELF_SCORE)
    keys = F.normalize(qk, dim=-1).to(qk.dtype)  # float32 under autocast otherwise
    return F.scaled_dot_product_attention(qk, keys, v, attn_mask=mask, dropout_p=dropout_p)


def _attend_round(sq, sv, hidden, dropout_p):
    """One hashing round on sorted (B, H, n_chunks, chunk, D) queries and values.

    Returns (out (.., chunk, D), lse (.., chunk, 1), probs (.., chunk, m)).
    """
    # Keys are the normalised shared vectors (this also undoes the scale). Under autocast
    # normalize runs in float32; keep the queries' dtype so backward's matmuls agree.
    sk = F.normalize(sq, dim=-1).to(sq.dtype)
    return _ChunkAttention.apply(sq, sk, sv, hidden, dropout_p)


class LSHAttention(Attention):
    """Multi-head Reformer attention with a shared query/key projection (self-attention only)."""

    supports_causal = True
    supports_cross = False
    supports_padding_mask = True
    returns_weights = True
    Options = LSHOptions

    def __init__(self, d_model, n_heads, dropout=0.0, options=None):
        super().__init__(d_model, n_heads, dropout, options)
        self.add_projections(shared_qk=True)

    def dense_equivalent(self, n: int) -> bool:
        """True when hashing puts all ``n`` tokens into one bucket (one chunk, every round alike).

        Then LSH attention is dense shared-QK attention with the self-mask, and ``forward``
        computes it with one SDPA call (:func:`shared_qk_dense_attention`) unless weights are
        requested.
        """
        return self.options.buckets_and_chunk(n)[0] == 1

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        qk, _, v = self.project_qkv(x)
        dropout_p = self.dropout if self.training else 0.0
        if self.dense_equivalent(x.shape[1]) and not need_weights:
            out, weights = shared_qk_dense_attention(qk, v, key_padding_mask=key_padding_mask, causal=causal,
                                                     dropout_p=dropout_p), None
        else:
            out, weights = lsh_attention(qk, v, self.options, key_padding_mask=key_padding_mask, causal=causal,
                                         dropout_p=dropout_p, need_weights=need_weights)
        return self.project_out(out), weights


@hookimpl
def register_attention(register):
    register("lsh", LSHAttention)
