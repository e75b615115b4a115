"""Model family ``rnn``: LSTM/GRU baselines that use no attention, and the same seq2seq model with it.

- classification: (bi)LSTM/GRU encoder, masked mean pooling over its outputs, linear head.
- span: (bi)LSTM/GRU encoder with the question-aware span head shared with the transformer
  (span_head.py) and the question-match input, as the transformer has (``question_match: false``
  turns it off for both).
- seq2seq: encoder-decoder in the style of Sutskever et al. 2014 / Cho et al. 2014. The
  decoder's initial state is computed from the encoder's final state, and that same summary
  vector is fed to every decoder step next to the previous token (Cho et al.). The decoder
  never looks at individual encoder states: the whole source must fit into one vector,
  which is exactly the bottleneck attention was introduced to remove.
  With ``attention: <variant>`` (e.g. ``additive``, Bahdanau et al. 2015) the same model
  also attends from each decoder output to the encoder states and reads out
  ``tanh(W [output; context])`` (Luong et al. 2015's placement, without input feeding, so
  training still runs the decoder RNN over the whole target at once). That is the classic
  ablation: one change, attention, on an otherwise identical encoder-decoder. The label
  becomes ``rnn-lstm+additive`` and the tag ``attnbench.attention`` names the variant;
  without the option the model is the no-attention baseline (tag ``none``).
- lm: unidirectional LSTM/GRU language model.

Padding never influences results: encoders run their RNN on the padded batch the way a packed
sequence would run (padded_rnn.py: zeros at padding, final states at each sequence's last token),
which is several times faster than ``pack_padded_sequence`` on CPU.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from attnbench import ModelDims, ModelFamily, TaskIO, hookimpl
from attnbench.errors import BadInputError

from .padded_rnn import run_padded
from .span_head import QuestionMatch, SpanHead


class RNNOptions(BaseModel):
    """Options of a ``{family: rnn, ...}`` grid entry."""

    model_config = ConfigDict(extra="forbid")
    cell: Literal["lstm", "gru"] = "lstm"
    bidirectional: bool = Field(True, description="bidirectional encoders (classification, span, seq2seq source)")
    hidden_size: int | None = Field(None, gt=0, description="units per direction; default model.d_model")
    attention: str | None = Field(None, description="seq2seq only: attention variant from decoder outputs to encoder "
                                                    "states (needs supports_cross); none = the no-attention baseline")
    attention_options: dict = Field(default_factory=dict, description="options of that variant")
    # Off by default: the baseline aligns nothing between question and context; it must carry
    # the question in its state (the Deep LSTM Reader of Hermann et al. 2015). On: the ablation.
    question_match: bool = Field(True, description="span models: mark context tokens that occur in the question (span_head.py); the same default as the transformer, so the comparison changes one thing")


def make_rnn(cell: str, input_size: int, hidden: int, n_layers: int, dropout: float, bidirectional: bool) -> nn.RNNBase:
    rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
    return rnn_cls(input_size, hidden, num_layers=n_layers, batch_first=True, bidirectional=bidirectional,
                   dropout=dropout if n_layers > 1 else 0.0)


def make_embedding(vocab: int, d_model: int, pad_id: int) -> nn.Embedding:
    emb = nn.Embedding(vocab, d_model, padding_idx=pad_id)
    nn.init.normal_(emb.weight, std=1.0)
    with torch.no_grad():
        emb.weight[pad_id].zero_()
    return emb


def masked_mean(x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the non-padding positions: (B, L, D), (B, L) -> (B, D)."""
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class RNNEncoder(nn.Module):
    """Embedding + (bi)RNN over the real tokens only: returns outputs (B, L, dirs*H), zero at
    padding, and the final state(s) at each sequence's last token."""

    def __init__(self, embed: nn.Embedding, cell: str, hidden: int, n_layers: int, dropout: float, bidirectional: bool):
        super().__init__()
        self.embed = embed
        self.dropout = nn.Dropout(dropout)
        self.rnn = make_rnn(cell, embed.embedding_dim, hidden, n_layers, dropout, bidirectional)
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, tokens, padding_mask, input_features=None):
        lengths = (~padding_mask).sum(1).clamp(min=1)  # an all-padding row runs one step, as packing did
        x = self.embed(tokens)
        if input_features is not None:  # (B, L, d_model) added to the embeddings, e.g. QuestionMatch
            x = x + input_features
        return run_padded(self.rnn, self.dropout(x), lengths)


class RNNClassifier(nn.Module):
    def __init__(self, encoder: RNNEncoder, n_classes: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, n_classes)

    def forward(self, tokens, padding_mask):
        out, _ = self.encoder(tokens, padding_mask)
        return self.head(self.dropout(masked_mean(out, padding_mask)))


class RNNSpanExtractor(nn.Module):
    """Encoder with the question-aware span head (span_head.py), the same head as the transformer's."""

    def __init__(self, encoder: RNNEncoder, sep_id: int | None, question_match: bool):
        super().__init__()
        self.encoder = encoder
        dim = encoder.embed.embedding_dim
        self.question_match = QuestionMatch(dim, sep_id, init_std=1.0) if question_match else None  # std as make_embedding
        self.span_head = SpanHead(encoder.out_dim, sep_id)

    def forward(self, tokens, padding_mask):
        match = self.question_match(tokens, padding_mask) if self.question_match is not None else None
        out, _ = self.encoder(tokens, padding_mask, match)
        return self.span_head(out, tokens, padding_mask)


class RNNMemory(NamedTuple):
    """What the decoder gets from the encoder: initial states (layers, B, H), a summary (B, H)
    and, for attention, every encoder state projected to the decoder's width (B, S, H)."""

    hidden: torch.Tensor
    cell: torch.Tensor | None
    summary: torch.Tensor
    states: torch.Tensor | None = None


class RNNDecoderState(NamedTuple):
    """Incremental decoding state: the recurrent state (layers, B, H) (+ LSTM cell), the
    summary fed to every step, and the attention's cache (None without attention)."""

    hidden: torch.Tensor
    cell: torch.Tensor | None
    summary: torch.Tensor
    attention_cache: dict | None


class RNNSeq2Seq(nn.Module):
    """Encoder-decoder, without attention unless one is given; the interface of attnbench.models'
    ``seq2seq`` kind, including incremental decoding (the recurrent state is the cache)."""

    def __init__(self, encoder: RNNEncoder, tgt_embed: nn.Embedding, cell: str, hidden: int, n_layers: int,
                 dropout: float, tgt_vocab: int, attention: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.cell = cell
        self.n_layers = n_layers
        self.bridge_hidden = nn.Linear(encoder.out_dim, hidden)
        self.bridge_cell = nn.Linear(encoder.out_dim, hidden) if cell == "lstm" else None
        self.tgt_embed = tgt_embed
        self.dropout = nn.Dropout(dropout)
        self.decoder = make_rnn(cell, tgt_embed.embedding_dim + hidden, hidden, n_layers, dropout, bidirectional=False)
        self.attention = attention
        if attention is not None:
            self.memory_proj = nn.Linear(encoder.out_dim, hidden)  # encoder states to the attention's width
            self.combine = nn.Linear(2 * hidden, hidden)
        self.lm_head = nn.Linear(hidden, tgt_vocab, bias=False)
        if hidden == tgt_embed.embedding_dim:
            self.lm_head.weight = tgt_embed.weight  # tied output embedding, as in the transformer

    def _per_layer(self, state: torch.Tensor) -> torch.Tensor:
        """(layers*dirs, B, H) -> (layers, B, dirs*H): both directions' final states side by side."""
        layers_dirs, batch, hidden = state.shape
        dirs = layers_dirs // self.n_layers
        return state.view(self.n_layers, dirs, batch, hidden).permute(0, 2, 1, 3).reshape(self.n_layers, batch, dirs * hidden)

    def encode(self, src, src_padding_mask) -> RNNMemory:
        outputs, state = self.encoder(src, src_padding_mask)
        h_n, c_n = state if self.cell == "lstm" else (state, None)
        hidden = torch.tanh(self.bridge_hidden(self._per_layer(h_n)))
        cell = self.bridge_cell(self._per_layer(c_n)) if c_n is not None else None
        states = self.memory_proj(outputs) if self.attention is not None else None
        return RNNMemory(hidden.contiguous(), None if cell is None else cell.contiguous(), hidden[-1], states)

    def _recurrent_state(self, hidden, cell):
        return (hidden, cell) if self.cell == "lstm" else hidden

    def _inputs(self, tokens, summary):
        """Decoder RNN input: previous token's embedding next to the source summary (Cho et al.)."""
        emb = self.dropout(self.tgt_embed(tokens))
        return torch.cat([emb, summary[:, None, :].expand(-1, tokens.shape[1], -1)], dim=-1)

    def _attend(self, out, context):
        """Attention readout: tanh(W [decoder output; attended encoder states])."""
        return torch.tanh(self.combine(torch.cat([out, context], dim=-1)))

    def decode(self, memory: RNNMemory, src_padding_mask, tgt_in):
        out, _ = self.decoder(self._inputs(tgt_in, memory.summary), self._recurrent_state(memory.hidden, memory.cell))
        if self.attention is not None:
            context, _ = self.attention(out, memory.states, key_padding_mask=src_padding_mask)
            out = self._attend(out, context)
        return self.lm_head(self.dropout(out))

    def reorder_memory(self, memory: RNNMemory, index) -> RNNMemory:
        return RNNMemory(memory.hidden.index_select(1, index),
                         None if memory.cell is None else memory.cell.index_select(1, index),
                         memory.summary.index_select(0, index),
                         None if memory.states is None else memory.states.index_select(0, index))

    @property
    def supports_incremental(self) -> bool:
        return self.attention is None or self.attention.supports_incremental

    def start_decoding(self, memory: RNNMemory, src_padding_mask) -> RNNDecoderState:
        cache = None if self.attention is None else self.attention.start_cache(memory.states, key_padding_mask=src_padding_mask)
        return RNNDecoderState(memory.hidden, memory.cell, memory.summary, cache)

    def decode_step(self, state: RNNDecoderState, tokens):
        out, recurrent = self.decoder(self._inputs(tokens[:, None], state.summary),
                                      self._recurrent_state(state.hidden, state.cell))
        hidden, cell = recurrent if self.cell == "lstm" else (recurrent, None)
        cache = state.attention_cache
        if self.attention is not None:
            context, cache = self.attention.forward_step(out, cache)
            out = self._attend(out, context)
        return self.lm_head(self.dropout(out))[:, 0], RNNDecoderState(hidden, cell, state.summary, cache)

    def reorder_decoder_state(self, state: RNNDecoderState, index) -> RNNDecoderState:
        return RNNDecoderState(state.hidden.index_select(1, index),
                               None if state.cell is None else state.cell.index_select(1, index),
                               state.summary.index_select(0, index),
                               None if state.attention_cache is None else self.attention.reorder_cache(state.attention_cache, index))

    def forward(self, src, src_padding_mask, tgt_in):
        return self.decode(self.encode(src, src_padding_mask), src_padding_mask, tgt_in)


class RNNLM(nn.Module):
    """Unidirectional RNN language model: (B, L) -> next-token logits (B, L, V)."""

    def __init__(self, embed: nn.Embedding, cell: str, hidden: int, n_layers: int, dropout: float, vocab: int):
        super().__init__()
        self.embed = embed
        self.dropout = nn.Dropout(dropout)
        self.rnn = make_rnn(cell, embed.embedding_dim, hidden, n_layers, dropout, bidirectional=False)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        if hidden == embed.embedding_dim:
            self.lm_head.weight = embed.weight

    def forward(self, tokens, padding_mask=None):
        # Right padding never reaches earlier positions of a left-to-right RNN, so no packing needed.
        out, _ = self.rnn(self.dropout(self.embed(tokens)))
        return self.lm_head(self.dropout(out))


class RNNFamily(ModelFamily):
    """``rnn``: attention-free LSTM/GRU baselines for every task kind; with ``attention``, the
    seq2seq encoder-decoder that attends (the same model plus one attention module)."""

    kinds = ("classification", "span", "seq2seq", "lm")
    Options = RNNOptions

    def __init__(self, options: RNNOptions):
        super().__init__(options)
        if options.attention is not None:
            self.kinds = ("seq2seq",)  # attention sits between decoder and encoder states
        self._attention_cls = None
        self._attention_opts = None

    @property
    def uses_attention(self) -> bool:
        """False: the no-attention baseline; True: ``rnn-<cell>+<variant>``, not a baseline."""
        return self.options.attention is not None

    def label(self) -> str:
        suffix = f"+{self.options.attention}" if self.uses_attention else ""
        return f"rnn-{self.options.cell}{suffix}"

    @property
    def is_baseline(self) -> bool:
        """Without ``attention`` the rnn is the baseline compare measures attention against."""
        return not self.uses_attention

    def tags(self) -> dict[str, str]:
        return {"attention": self.options.attention or "none"}

    def validate(self, host) -> None:
        if not self.uses_attention:
            if self.options.attention_options:
                raise BadInputError("model.attention_options: set only together with model.attention "
                                    "(e.g. attention: additive); without it the rnn uses no attention")
            return
        cls = host.attention.get(self.options.attention).factory
        if not (cls.supports_cross and cls.supports_padding_mask):
            usable = sorted(r.name for r in host.attention if r.factory.supports_cross and r.factory.supports_padding_mask)
            raise BadInputError(f"model.attention: {self.options.attention!r} cannot attend from decoder to encoder states "
                                f"(needs supports_cross and supports_padding_mask); valid: {', '.join(usable)}")
        self._attention_cls = cls
        self._attention_opts = cls.parse_options(self.options.attention_options, where="attention_options")

    def build(self, io: TaskIO, dims: ModelDims, host) -> nn.Module:
        if io.kind not in self.kinds:
            why = " (model.attention is set, which needs an encoder-decoder)" if self.uses_attention else ""
            raise BadInputError(f"model.family: rnn cannot build task kind {io.kind!r}{why}; valid: {', '.join(self.kinds)}")
        self.validate(host)
        opts = self.options
        hidden = opts.hidden_size or dims.d_model
        src_embed = make_embedding(io.vocab_size, dims.d_model, io.pad_id)

        def encoder(bidirectional=opts.bidirectional):
            return RNNEncoder(src_embed, opts.cell, hidden, dims.n_layers, dims.dropout, bidirectional)

        if io.kind == "classification":
            if not io.n_classes:
                raise BadInputError("task: a classification task must set TaskIO.n_classes")
            return RNNClassifier(encoder(), io.n_classes, dims.dropout)
        if io.kind == "span":
            return RNNSpanExtractor(encoder(), io.extra.get("sep_id"), opts.question_match)
        if io.kind == "seq2seq":
            tgt_vocab = io.tgt_vocab_size or io.vocab_size
            tgt_embed = src_embed if io.tgt_vocab_size is None else make_embedding(tgt_vocab, dims.d_model, io.pad_id)
            attention = None
            if self.uses_attention:
                attention = self._attention_cls(hidden, dims.n_heads, dims.dropout, self._attention_opts)
            return RNNSeq2Seq(encoder(), tgt_embed, opts.cell, hidden, dims.n_layers, dims.dropout, tgt_vocab, attention)
        return RNNLM(src_embed, opts.cell, hidden, dims.n_layers, dims.dropout, io.vocab_size)


@hookimpl
def register_models(register):
    register("rnn", RNNFamily)
