"""The contract every attention variant implements, and helpers the models use to build them.

An attention plugin is an ``nn.Module`` subclass of :class:`Attention`. It owns its
projections, takes ``d_model``, ``n_heads``, ``dropout`` and its own pydantic ``Options``,
and declares what it can do through class-level capability flags. Callers read the flags
instead of special-casing names.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from .errors import BadInputError
from .options import parse_options


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

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, options={self.options!r}"


@contextlib.contextmanager
def capture_attention_maps(model: nn.Module):
    """Record the attention map of every :class:`Attention` inside ``model`` during forward.

    Yields a list that fills with ``(module_name, weights)`` in call order. Variants whose
    ``returns_weights`` is False are skipped. Works without the model's cooperation by
    forcing ``need_weights=True`` through a forward pre-hook.
    """
    maps: list[tuple[str, torch.Tensor]] = []
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

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
