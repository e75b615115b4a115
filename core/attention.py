"""The contract every attention variant implements, and helpers the models use to build them.

An attention plugin is an ``nn.Module`` subclass of :class:`Attention`. It owns its
projections, takes ``d_model``, ``n_heads``, ``dropout`` and its own pydantic ``Options``,
and declares what it can do through class-level capability flags. Callers read the flags
instead of special-casing names. The base class checks every call against the flags
(:meth:`Attention.validate_call`) before ``forward`` runs, and offers the usual q/k/v/out
projections (:meth:`Attention.add_projections`), so a variant writes only its attention.
"""

from __future__ import annotations

import contextlib
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from .errors import BadInputError
from .options import parse_options


# --- tensor helpers variants share (plugins import these from here, never from each other) ---
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D), a view."""
    b, l, _ = x.shape
    return x.view(b, l, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, H*D)"""
    b, h, l, d = x.shape
    return x.transpose(1, 2).reshape(b, l, h * d)


def attention_mask(key_padding_mask, causal, q_len, k_len, device) -> torch.Tensor | None:
    """Bool mask (True = may attend) broadcastable to (B, H, Lq, Lk), or None when unmasked."""
    mask = None
    if key_padding_mask is not None:
        mask = (~key_padding_mask)[:, None, None, :]
    if causal:
        tri = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        mask = tri if mask is None else mask & tri
    return mask


def cpu_flash_ops():
    """The CPU's fused attention kernel and its backward, or None where this torch lacks them.

    ``F.scaled_dot_product_attention`` runs this kernel on the CPU, but returns neither its
    log-sum-exp nor a way to call the backward on chosen slices: variants that work on many
    small blocks (``sparse``'s windows, ``lsh``'s rounds) call it directly. Signatures:
    ``forward(q, k, v, dropout_p, is_causal, *, attn_mask, scale) -> (out, lse)`` and
    ``backward(grad_out, q, k, v, out, lse, dropout_p, is_causal, *, attn_mask, scale) ->
    (grad_q, grad_k, grad_v)`` on (B, H, L, D) tensors (any strides, last one 1).
    """
    try:
        return (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    except (AttributeError, RuntimeError):
        return None


def dense_attention(q, k, v, *, key_padding_mask=None, causal=False, dropout_p=0.0, need_weights=False):
    """Scaled dot-product attention on (B, H, L, D) tensors; returns (out, weights or None).

    Without weights this is one SDPA call. With weights we compute the softmax explicitly
    (SDPA does not return it) and apply the same dropout to what is returned and used.
    """
    if not need_weights and causal and key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None
    mask = attention_mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q.device)
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights


class NoOptions(BaseModel):
    """Options model for variants that take none (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")


# The capability flags every variant declares (class attributes of :class:`Attention`).
CAPABILITY_FLAGS = ("supports_causal", "supports_cross", "supports_padding_mask", "returns_weights",
                    "supports_incremental")


class Attention(nn.Module):
    """Base class of attention variants.

    ``forward(x, context=None, *, key_padding_mask=None, causal=False, need_weights=False)``

    - ``x``: queries, float tensor ``(batch, q_len, d_model)``.
    - ``context``: keys/values source ``(batch, k_len, d_model)`` for cross-attention;
      ``None`` means self-attention over ``x``.
    - ``key_padding_mask``: bool ``(batch, k_len)``, ``True`` marks padding keys to ignore.
    - ``causal``: position i may attend only to positions <= i (self-attention only).
    - ``need_weights``: also return the attention map.

    Returns ``(output, weights)``: output ``(batch, q_len, d_model)``; weights
    ``(batch, n_heads, q_len, k_len)`` when requested and ``returns_weights`` is set,
    else ``None``.

    Incremental decoding (only when ``supports_incremental`` is set): a decoder attends
    from one new position at a time without recomputing the past, as fairseq's
    incremental state does. ``start_cache`` gives the state, ``forward_step`` consumes one
    query and returns the updated state, ``reorder_cache`` follows beam search. Stepping
    through a sequence must give what ``forward`` gives on the whole of it (causal for
    self-attention); the conformance suite checks this. Variants whose output at a
    position depends on how long the sequence is (e.g. hashing into buckets) leave the
    flag False, and models then recompute the whole prefix instead.

    Calling the module checks the arguments first (:meth:`validate_call`), so ``forward``
    only ever sees calls its capability flags allow; a variant does not check them itself.
    """

    supports_causal: ClassVar[bool] = False
    supports_cross: ClassVar[bool] = False
    supports_padding_mask: ClassVar[bool] = False
    returns_weights: ClassVar[bool] = False
    supports_incremental: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, options: BaseModel | None = None):
        super().__init__()
        if d_model % n_heads:
            raise BadInputError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.options = options if options is not None else self.Options()

    @classmethod
    def parse_options(cls, raw: dict | None, where: str = "attention_options") -> BaseModel:
        """Validate a variant's options (see :func:`attnbench.options.parse_options`)."""
        return parse_options(cls.Options, raw, where)

    def start_cache(self, context: torch.Tensor | None = None, *, key_padding_mask=None) -> dict:
        """State for :meth:`forward_step`: empty for causal self-attention (``context`` None);
        for cross-attention, whatever of ``context`` (batch, k_len, d_model) and its padding
        mask can be computed once (projected keys and values)."""
        raise NotImplementedError(f"{type(self).__name__} cannot attend incrementally (supports_incremental=False)")

    def forward_step(self, x: torch.Tensor, cache: dict) -> tuple[torch.Tensor, dict]:
        """Attend from one new position ``x`` (batch, 1, d_model); returns (output (batch, 1,
        d_model), new cache). Self-attention adds ``x`` to the keys first, so the query sees
        every earlier position and itself, which is ``causal=True``."""
        raise NotImplementedError(f"{type(self).__name__} cannot attend incrementally (supports_incremental=False)")

    @staticmethod
    def reorder_cache(cache: dict, index: torch.Tensor) -> dict:
        """Pick batch rows ``index`` (N,) of a cache; every tensor in it is batch-first."""
        return {key: value.index_select(0, index) if torch.is_tensor(value) else value for key, value in cache.items()}

    def __call__(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        # One cheap check per call, for every variant, before nn.Module's hooks and forward.
        self.validate_call(x, context, key_padding_mask, causal)
        return super().__call__(x, context, key_padding_mask=key_padding_mask, causal=causal, need_weights=need_weights)

    def validate_call(self, x, context=None, key_padding_mask=None, causal=False) -> None:
        """Raise BadInputError for inputs this variant cannot honour, so the capability flags stay honest.

        The message names the argument, what is wrong and what would be valid (for example:
        use ``multihead`` where cross-attention is needed).
        """
        name = type(self).__name__
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise BadInputError(f"{name}.forward: x must have shape (batch, length, {self.d_model}), got {tuple(x.shape)}")
        if context is not None and not self.supports_cross:
            raise BadInputError(
                f"{name}.forward: context: cross-attention is not supported (supports_cross=False); "
                "pass context=None or use a variant with supports_cross=True, e.g. multihead"
            )
        if causal and not self.supports_causal:
            raise BadInputError(f"{name}.forward: causal=True is not supported (supports_causal=False); use causal=False")
        if key_padding_mask is not None:
            if not self.supports_padding_mask:
                raise BadInputError(f"{name}.forward: key_padding_mask is not supported (supports_padding_mask=False); pass None")
            k_len = (x if context is None else context).shape[1]
            if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (x.shape[0], k_len):
                raise BadInputError(
                    f"{name}.forward: key_padding_mask must be a bool tensor of shape ({x.shape[0]}, {k_len}), "
                    f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
                )

    # --- the usual projections, for variants that want them ------------------------------

    def add_projections(self, *, shared_qk: bool = False) -> None:
        """Create ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` (each ``d_model -> d_model``).

        ``shared_qk=True`` makes one ``qk_proj`` serve as queries and keys (the Reformer's
        shared-QK attention) instead of ``q_proj`` and ``k_proj``. The layers are created in
        that order with PyTorch's default initialisation, and are plain attributes of the
        variant, so state dicts keep the names ``q_proj.weight``, ... .
        """
        self.shared_qk = shared_qk
        if shared_qk:
            self.qk_proj = nn.Linear(self.d_model, self.d_model)
        else:
            self.q_proj = nn.Linear(self.d_model, self.d_model)
            self.k_proj = nn.Linear(self.d_model, self.d_model)
        self.v_proj = nn.Linear(self.d_model, self.d_model)
        self.out_proj = nn.Linear(self.d_model, self.d_model)

    def project_qkv(self, x, context=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries from ``x``, keys and values from ``context`` (or ``x``), each ``(B, H, L, head_dim)``.

        With ``shared_qk`` the queries and keys are the same tensor.
        """
        kv = x if context is None else context
        if self.shared_qk:
            q = k = split_heads(self.qk_proj(x), self.n_heads)
        else:
            q = split_heads(self.q_proj(x), self.n_heads)
            k = split_heads(self.k_proj(kv), self.n_heads)
        return q, k, split_heads(self.v_proj(kv), self.n_heads)

    def project_out(self, heads: torch.Tensor) -> torch.Tensor:
        """Merge ``(B, H, L, head_dim)`` heads into ``(B, L, d_model)`` and apply ``out_proj``."""
        return self.out_proj(merge_heads(heads))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, options={self.options!r}"


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
        return self.project_out(out), cache

    def attend_cached(self, q, keys, values, key_padding_mask):
        """One query block (B, H, 1, D) against the cached keys/values; variants with another
        scoring rule override this."""
        out, _ = dense_attention(q, keys, values, key_padding_mask=key_padding_mask,
                                 dropout_p=self.dropout if self.training else 0.0)
        return out


class AttentionMaps(list):
    """What :func:`capture_attention_maps` yields: ``(module name, weights)`` pairs in call
    order, and in ``roles`` (same order) how each module was called: ``"self"``, ``"causal"``
    (self-attention under a causal mask: a decoder's) or ``"cross"`` (queries from one
    sequence, keys from another: a decoder's queries over the encoder's output)."""

    def __init__(self):
        super().__init__()
        self.roles: list[str] = []


def call_role(args, kwargs) -> str:
    """``self``, ``causal`` or ``cross``, from the arguments of one :class:`Attention` call."""
    context = args[1] if len(args) > 1 else kwargs.get("context")
    if context is not None:
        return "cross"
    return "causal" if kwargs.get("causal", False) else "self"


@contextlib.contextmanager
def capture_attention_maps(model: nn.Module):
    """Record the attention map of every :class:`Attention` inside ``model`` during forward.

    Yields an :class:`AttentionMaps` list that fills with ``(module_name, weights)`` in call
    order (and each call's role in ``.roles``). Variants whose ``returns_weights`` is False
    are skipped. Works without the model's cooperation by forcing ``need_weights=True``
    through a forward pre-hook.
    """
    maps = AttentionMaps()
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, Attention) or not module.returns_weights:
            continue

        def pre(mod, args, kwargs):
            kwargs = dict(kwargs)
            kwargs["need_weights"] = True
            return args, kwargs

        def post(mod, args, kwargs, output, _name=name):
            weights = output[1] if isinstance(output, tuple) else None
            if weights is not None:
                maps.append((_name, weights.detach().float().cpu()))
                maps.roles.append(call_role(args, kwargs))

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
