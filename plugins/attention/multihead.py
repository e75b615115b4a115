"""Multi-head attention: h heads with their own Q/K/V projections, concatenated and projected.

The dense path is ``torch.nn.functional.scaled_dot_product_attention`` so CUDA picks its
fused flash / memory-efficient kernels. Weights are materialised only when asked for.
"""

from __future__ import annotations

from attnbench import Attention, hookimpl
from attnbench.attention import KeyValueCache, dense_attention


class MultiHeadAttention(KeyValueCache, Attention):
    """Standard multi-head attention (Vaswani et al. 2017) over SDPA."""

    supports_causal = True
    supports_cross = True
    supports_padding_mask = True
    returns_weights = True

    def __init__(self, d_model, n_heads, dropout=0.0, options=None):
        super().__init__(d_model, n_heads, dropout, options)
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
    register("multihead", MultiHeadAttention)
