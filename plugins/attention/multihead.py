"""Multi-head attention: h heads with their own Q/K/V projections, concatenated and projected.

The dense path is ``torch.nn.functional.scaled_dot_product_attention`` so CUDA picks its
fused flash / memory-efficient kernels. Weights are materialised only when asked for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnbench import Attention, hookimpl
from attnbench.errors import BadInputError


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D)"""
    b, l, _ = x.shape
    return x.view(b, l, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, H*D)"""
    b, h, l, d = x.shape
    return x.transpose(1, 2).reshape(b, l, h * d)


def build_additive_mask(key_padding_mask, causal, q_len, k_len, device, dtype):
    """Bool mask (True = may attend) broadcastable to (B, H, Lq, Lk), or None when unmasked."""
    mask = None
    if key_padding_mask is not None:
        mask = (~key_padding_mask)[:, None, None, :]
    if causal:
        tri = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        mask = tri if mask is None else mask & tri
    return mask


def dense_attention(q, k, v, *, key_padding_mask=None, causal=False, dropout_p=0.0, need_weights=False):
    """Scaled dot-product attention on (B, H, L, D) tensors; returns (out, weights or None).

    Without weights this is one SDPA call. With weights we compute the softmax explicitly
    (SDPA does not return it) and apply the same dropout to what is returned and used.
    """
    mask = build_additive_mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q.device, q.dtype)
    if not need_weights:
        if mask is not None and causal and key_padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights


class KeyValueCache:
    """Incremental decoding for variants with ``q_proj``/``k_proj``/``v_proj``/``out_proj``
    and dense attention: self-attention appends each new key/value to the cache, and
    cross-attention projects the context's keys/values once (fairseq's ``static_kv``).

    Mixed in before :class:`Attention`, so its methods replace the base's refusals. Keys and
    values are cached after projection, so a variant with another scoring rule reuses this
    by overriding :meth:`attend_cached`."""

    supports_incremental = True

    def start_cache(self, context=None, *, key_padding_mask=None) -> dict:
        if context is None:
            return {}
        return {"keys": split_heads(self.k_proj(context), self.n_heads),
                "values": split_heads(self.v_proj(context), self.n_heads),
                "key_padding_mask": key_padding_mask, "cross": True}

    def forward_step(self, x, cache):
        q = split_heads(self.q_proj(x), self.n_heads)
        if not cache.get("cross"):
            keys, values = split_heads(self.k_proj(x), self.n_heads), split_heads(self.v_proj(x), self.n_heads)
            if cache:
                keys, values = torch.cat([cache["keys"], keys], dim=2), torch.cat([cache["values"], values], dim=2)
            cache = {"keys": keys, "values": values}
        out = self.attend_cached(q, cache["keys"], cache["values"], cache.get("key_padding_mask"))
        return self.out_proj(merge_heads(out)), cache

    def attend_cached(self, q, keys, values, key_padding_mask):
        """One query block (B, H, 1, D) against the cached keys/values; variants with another
        scoring rule override this."""
        out, _ = dense_attention(q, keys, values, key_padding_mask=key_padding_mask,
                                 dropout_p=self.dropout if self.training else 0.0)
        return out


class MultiHeadAttention(KeyValueCache, Attention):
    """Standard multi-head attention (Vaswani et al. 2017) over SDPA."""

    supports_causal = True
    supports_cross = True
    supports_padding_mask = True
    returns_weights = True

    def __init__(self, d_model, n_heads, dropout=0.0, options=None):
        super().__init__(d_model, n_heads, dropout, options)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        kv = x if context is None else context
        q = split_heads(self.q_proj(x), self.n_heads)
        k = split_heads(self.k_proj(kv), self.n_heads)
        v = split_heads(self.v_proj(kv), self.n_heads)
        out, weights = dense_attention(
            q, k, v, key_padding_mask=key_padding_mask, causal=causal,
            dropout_p=self.dropout if self.training else 0.0, need_weights=need_weights,
        )
        return self.out_proj(merge_heads(out)), weights


@hookimpl
def register_attention(register):
    register("multihead", MultiHeadAttention)


def validate_attention_call(module: Attention, x, context=None, key_padding_mask=None, causal=False) -> None:
    """Raise BadInputError for inputs a variant cannot honour, so capability flags stay honest.

    Variants call this first in ``forward``; it names the argument, what is wrong and what
    would be valid (for example: use ``multihead`` where cross-attention is needed).
    """
    name = type(module).__name__
    if x.dim() != 3 or x.shape[-1] != module.d_model:
        raise BadInputError(f"{name}.forward: x must have shape (batch, length, {module.d_model}), got {tuple(x.shape)}")
    if context is not None and not module.supports_cross:
        raise BadInputError(
            f"{name}.forward: context: cross-attention is not supported (supports_cross=False); "
            "pass context=None or use a variant with supports_cross=True, e.g. multihead"
        )
    if causal and not module.supports_causal:
        raise BadInputError(f"{name}.forward: causal=True is not supported (supports_causal=False); use causal=False")
    if key_padding_mask is not None:
        if not module.supports_padding_mask:
            raise BadInputError(f"{name}.forward: key_padding_mask is not supported (supports_padding_mask=False); pass None")
        k_len = (x if context is None else context).shape[1]
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (x.shape[0], k_len):
            raise BadInputError(
                f"{name}.forward: key_padding_mask must be a bool tensor of shape ({x.shape[0]}, {k_len}), "
                f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
