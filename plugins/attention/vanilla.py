"""Vanilla attention: one scaled dot-product head over the full model width.

This is the single head of "Attention Is All You Need" (Vaswani et al. 2017), kept as the
simplest point of comparison. ``n_heads`` is accepted for interface compatibility and
ignored: the module always has one head of width ``d_model``, so ``need_weights`` returns
``(batch, 1, q_len, k_len)``. The dense path is SDPA; incremental decoding keeps a
key/value cache (``attnbench.attention.KeyValueCache``, as ``multihead``).
"""

from __future__ import annotations

from attnbench import Attention, hookimpl
from attnbench.attention import KeyValueCache, dense_attention


class VanillaAttention(KeyValueCache, Attention):
    """Single-head attention over the full width; ``n_heads`` is ignored (always 1)."""

    supports_causal = True
    supports_cross = True
    supports_padding_mask = True
    returns_weights = True

    def __init__(self, d_model, n_heads=1, dropout=0.0, options=None):
        super().__init__(d_model, 1, dropout, options)
        self.add_projections()

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        q, k, v = self.project_qkv(x, context)
        out, weights = dense_attention(
            q, k, v, key_padding_mask=key_padding_mask, causal=causal,
            dropout_p=self.dropout if self.training else 0.0, need_weights=need_weights,
        )
        return self.project_out(out), weights


@hookimpl
def register_attention(register):
    register("vanilla", VanillaAttention)
