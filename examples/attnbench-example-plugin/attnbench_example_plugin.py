"""An example attnbench plugin: non-causal linear attention (Katharopoulos et al. 2020).

softmax(q k^T) is replaced by the kernel phi(q) phi(k)^T with phi = elu + 1, so the
(keys x values) summary is computed once and attention costs O(n) instead of O(n^2).
It cannot return an n x n weight map cheaply and we do not implement its causal form,
so the capability flags say so and attnbench falls back or skips where needed. The base
class refuses calls the flags deny (``causal=True`` here) before ``forward`` runs, and its
``add_projections`` / ``project_qkv`` / ``project_out`` give the usual projections.
"""

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from attnbench import Attention, hookimpl


class LinearOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eps: float = Field(1e-6, gt=0, description="added to the normaliser to avoid division by zero")


class LinearAttention(Attention):
    supports_causal = False
    supports_cross = True
    supports_padding_mask = True
    returns_weights = False
    Options = LinearOptions

    def __init__(self, d_model, n_heads, dropout=0.0, options=None):
        super().__init__(d_model, n_heads, dropout, options)
        self.add_projections()  # q_proj, k_proj, v_proj, out_proj

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        # causal is always False here: the base class refuses causal=True (supports_causal=False).
        q, k, v = self.project_qkv(x, context)  # (B, H, L, head_dim) each
        q, k = F.elu(q) + 1, F.elu(k) + 1
        if key_padding_mask is not None:  # padded keys contribute nothing to the summary
            k = k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        summary = k.transpose(-2, -1) @ v  # (B, H, D, D): the O(n) trick
        normaliser = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + self.options.eps
        out = (q @ summary) / normaliser
        out = F.dropout(out, self.dropout, self.training)
        return self.project_out(out), None


@hookimpl
def register_attention(register):
    register("linear", LinearAttention)
