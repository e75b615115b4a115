"""The contract of a model family: build a network for a task kind from an attention factory.

Task kinds and the forward interface each model must offer (masks are bool, True = padding):

- ``classification``: ``model(tokens (B,L), padding_mask (B,L)) -> logits (B, n_classes)``
- ``span``: ``model(tokens, padding_mask) -> (start_logits (B,L), end_logits (B,L))``
- ``seq2seq``: ``model.encode(src, src_padding_mask) -> memory``;
  ``model.decode(memory, src_padding_mask, tgt_in (B,T)) -> logits (B,T,V)``;
  ``model.reorder_memory(memory, index (N,)) -> memory`` (for beam search);
  ``model(src, src_padding_mask, tgt_in)`` is ``decode(encode(...))``.
  Optional incremental decoding (fairseq's incremental state), used by the searches when
  ``model.supports_incremental`` is True; without it they recompute ``decode`` on the whole
  prefix at every step, so a family that skips this part still works, only slower:

  - ``model.start_decoding(memory, src_padding_mask) -> state``: nothing consumed yet;
    computes once what every step needs (e.g. cross-attention keys/values).
  - ``model.decode_step(state, tokens (B,)) -> (logits (B,V), state)``: consume one token
    per example (BOS first) and score the next; equals ``decode(...)[:, -1]`` on the prefix.
  - ``model.reorder_decoder_state(state, index (N,)) -> state``: keep/duplicate examples
    (beam search, dropping finished sentences).
- ``lm`` (decoder-only, causal): ``model(tokens, padding_mask) -> logits (B,L,V)``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .options import parse_options

TASK_KINDS = ("classification", "span", "seq2seq", "lm")


class ModelDims(BaseModel):
    """Sizes shared by every family (the grid file's ``model:`` section)."""

    model_config = ConfigDict(extra="forbid")
    d_model: int = Field(64, gt=0)
    n_layers: int = Field(2, gt=0)
    n_heads: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    d_ff: int | None = Field(None, gt=0, description="feed-forward width; default 4 * d_model")


@dataclass
class TaskIO:
    """What a task tells a model family about its inputs and outputs."""

    kind: str
    vocab_size: int
    pad_id: int = 0
    max_len: int = 512  # longest input the model must accept (positional tables)
    n_classes: int | None = None  # classification
    tgt_vocab_size: int | None = None  # seq2seq (None: shared vocabulary)
    bos_id: int | None = None
    eos_id: int | None = None
    max_tgt_len: int | None = None
    extra: dict = field(default_factory=dict)


class ModelFamily:
    """Base class of model families. Subclasses set ``Options`` and implement ``build``.

    ``options`` come from the grid's model entry minus ``family`` and the ``ModelDims`` keys,
    e.g. ``{family: rnn, cell: gru}`` gives ``Options(cell="gru")``.
    """

    kinds: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BaseModel]]
    # True for a family that uses no attention: compare measures every other model of a task
    # against it. A subclass whose options decide (an optional attention) makes it a property.
    is_baseline: bool = False

    def __init__(self, options: BaseModel):
        self.options = options

    @classmethod
    def parse_options(cls, raw: dict, where: str = "model") -> BaseModel:
        """Validate this class's options (see :func:`attnbench.options.parse_options`)."""
        return parse_options(cls.Options, raw, where)

    def label(self) -> str:
        """Short name used in run names, e.g. ``transformer-multihead`` or ``rnn-lstm``."""
        raise NotImplementedError

    def validate(self, host) -> None:
        """Check names the options refer to (e.g. the attention variant) against the host."""

    def tags(self) -> dict[str, str]:
        """Extra MLflow tags for runs of this model, by short name: ``{"attention": "multihead"}``
        is logged as ``attnbench.attention`` (fallbacks, ... likewise)."""
        return {}

    def build(self, io: TaskIO, dims: ModelDims, host) -> nn.Module:
        """Build the network for ``io.kind``; ``host`` is the PluginHost (attention registry)."""
        raise NotImplementedError
