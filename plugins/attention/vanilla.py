"""Vanilla attention: one scaled dot-product head over the full model width.

This is the single head of "Attention Is All You Need" (Vaswani et al. 2017), kept as the
simplest point of comparison. ``n_heads`` is accepted for interface compatibility and
ignored: the module always has one head of width ``d_model``, so ``need_weights`` returns
``(batch, 1, q_len, k_len)``. The dense path is SDPA; incremental decoding keeps a
key/value cache (shared with ``multihead``).
"""

from __future__ import annotations

from torch import nn

from attnbench import Attention, hookimpl
from attnbench.plugins.attention.multihead import (KeyValueCache, dense_attention, merge_heads, split_heads,
                                                   validate_attention_call)


class VanillaAttention(KeyValueCache, Attention):
    """Single-head attention over the full width; ``n_heads`` is ignored (always 1)."""

    supports_causal = True
    supports_cross = True
    supports_padding_mask = True
    returns_weights = True

    def __init__(self, d_model, n_heads=1, dropout=0.0, options=None):
        super().__init__(d_model, 1, dropout, options)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        validate_attention_call(self, x, context, key_padding_mask, causal)
        kv = x if context is None else context
        q, k, v = (split_heads(proj(src), 1) for proj, src in ((self.q_proj, x), (self.k_proj, kv), (self.v_proj, kv)))
        out, weights = dense_attention(
            q, k, v, key_padding_mask=key_padding_mask, causal=causal,
            dropout_p=self.dropout if self.training else 0.0, need_weights=need_weights,
        )
        return self.out_proj(merge_heads(out)), weights


@hookimpl
def register_attention(register):
    register("vanilla", VanillaAttention)
