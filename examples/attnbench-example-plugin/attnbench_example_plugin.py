"""An example attnbench plugin: non-causal linear attention (Katharopoulos et al. 2020).

softmax(q k^T) is replaced by the kernel phi(q) phi(k)^T with phi = elu + 1, so the
(keys x values) summary is computed once and attention costs O(n) instead of O(n^2).
It cannot return an n x n weight map cheaply and we do not implement its causal form,
so the capability flags say so and attnbench falls back or skips where needed.
"""

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

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
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        if causal:
            raise NotImplementedError("linear attention here is non-causal (supports_causal=False)")
        kv = x if context is None else context
        b, lq, _ = x.shape
        heads = lambda t: t.view(b, t.shape[1], self.n_heads, self.head_dim).transpose(1, 2)
        q = F.elu(heads(self.q_proj(x))) + 1
        k = F.elu(heads(self.k_proj(kv))) + 1
        v = heads(self.v_proj(kv))
        if key_padding_mask is not None:  # padded keys contribute nothing to the summary
            k = k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        summary = k.transpose(-2, -1) @ v  # (B, H, D, D): the O(n) trick
        normaliser = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + self.options.eps
        out = (q @ summary) / normaliser
        out = F.dropout(out, self.dropout, self.training)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, self.d_model)), None


@hookimpl
def register_attention(register):
    register("linear", LinearAttention)
