"""Model family ``rnn``: LSTM/GRU baselines that use no attention anywhere.

- classification: (bi)LSTM/GRU encoder, masked mean pooling over its outputs, linear head.
- span: (bi)LSTM/GRU encoder with start/end heads.
- seq2seq: encoder-decoder in the style of Sutskever et al. 2014 / Cho et al. 2014. The
  decoder's initial state is computed from the encoder's final state, and that same summary
  vector is fed to every decoder step next to the previous token (Cho et al.). The decoder
  never looks at individual encoder states: the whole source must fit into one vector,
  which is exactly the bottleneck attention was introduced to remove.
- lm: unidirectional LSTM/GRU language model.

Padding never influences results: sequences are packed with ``pack_padded_sequence``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnbench import ModelDims, ModelFamily, TaskIO, hookimpl
from attnbench.errors import BadInputError


class RNNOptions(BaseModel):
    """Options of a ``{family: rnn, ...}`` grid entry."""

    model_config = ConfigDict(extra="forbid")
    cell: Literal["lstm", "gru"] = "lstm"
    bidirectional: bool = Field(True, description="bidirectional encoders (classification, span, seq2seq source)")
    hidden_size: int | None = Field(None, gt=0, description="units per direction; default model.d_model")


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
    """Embedding + packed (bi)RNN: returns outputs (B, L, dirs*H) and the final state(s)."""

    def __init__(self, embed: nn.Embedding, cell: str, hidden: int, n_layers: int, dropout: float, bidirectional: bool):
        super().__init__()
        self.embed = embed
        self.dropout = nn.Dropout(dropout)
        self.rnn = make_rnn(cell, embed.embedding_dim, hidden, n_layers, dropout, bidirectional)
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, tokens, padding_mask):
        lengths = (~padding_mask).sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.dropout(self.embed(tokens)), lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return out, state


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
    def __init__(self, encoder: RNNEncoder):
        super().__init__()
        self.encoder = encoder
        self.span_head = nn.Linear(encoder.out_dim, 2)

    def forward(self, tokens, padding_mask):
        out, _ = self.encoder(tokens, padding_mask)
        logits = self.span_head(out).masked_fill(padding_mask[..., None], torch.finfo(out.dtype).min)
        start, end = logits.unbind(-1)
        return start, end


class RNNMemory(NamedTuple):
    """What the decoder gets from the encoder: initial states (layers, B, H) and a summary (B, H)."""

    hidden: torch.Tensor
    cell: torch.Tensor | None
    summary: torch.Tensor


class RNNSeq2Seq(nn.Module):
    """Encoder-decoder without attention; the interface of attnbench.models' ``seq2seq`` kind."""

    def __init__(self, encoder: RNNEncoder, tgt_embed: nn.Embedding, cell: str, hidden: int, n_layers: int,
                 dropout: float, tgt_vocab: int):
        super().__init__()
        self.encoder = encoder
        self.cell = cell
        self.n_layers = n_layers
        self.bridge_hidden = nn.Linear(encoder.out_dim, hidden)
        self.bridge_cell = nn.Linear(encoder.out_dim, hidden) if cell == "lstm" else None
        self.tgt_embed = tgt_embed
        self.dropout = nn.Dropout(dropout)
        self.decoder = make_rnn(cell, tgt_embed.embedding_dim + hidden, hidden, n_layers, dropout, bidirectional=False)
        self.lm_head = nn.Linear(hidden, tgt_vocab, bias=False)
        if hidden == tgt_embed.embedding_dim:
            self.lm_head.weight = tgt_embed.weight  # tied output embedding, as in the transformer

    def _per_layer(self, state: torch.Tensor) -> torch.Tensor:
        """(layers*dirs, B, H) -> (layers, B, dirs*H): both directions' final states side by side."""
        layers_dirs, batch, hidden = state.shape
        dirs = layers_dirs // self.n_layers
        return state.view(self.n_layers, dirs, batch, hidden).permute(0, 2, 1, 3).reshape(self.n_layers, batch, dirs * hidden)

    def encode(self, src, src_padding_mask) -> RNNMemory:
        _, state = self.encoder(src, src_padding_mask)
        h_n, c_n = state if self.cell == "lstm" else (state, None)
        hidden = torch.tanh(self.bridge_hidden(self._per_layer(h_n)))
        cell = self.bridge_cell(self._per_layer(c_n)) if c_n is not None else None
        return RNNMemory(hidden.contiguous(), None if cell is None else cell.contiguous(), hidden[-1])

    def decode(self, memory: RNNMemory, src_padding_mask, tgt_in):
        emb = self.dropout(self.tgt_embed(tgt_in))
        summary = memory.summary[:, None, :].expand(-1, tgt_in.shape[1], -1)
        state = (memory.hidden, memory.cell) if self.cell == "lstm" else memory.hidden
        out, _ = self.decoder(torch.cat([emb, summary], dim=-1), state)
        return self.lm_head(self.dropout(out))

    def reorder_memory(self, memory: RNNMemory, index) -> RNNMemory:
        return RNNMemory(memory.hidden.index_select(1, index),
                         None if memory.cell is None else memory.cell.index_select(1, index),
                         memory.summary.index_select(0, index))

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
    """``rnn``: attention-free LSTM/GRU baselines for every task kind."""

    kinds = ("classification", "span", "seq2seq", "lm")
    Options = RNNOptions

    def label(self) -> str:
        return f"rnn-{self.options.cell}"

    def tags(self) -> dict[str, str]:
        return {"attnbench.attention": "none"}

    def build(self, io: TaskIO, dims: ModelDims, host) -> nn.Module:
        if io.kind not in self.kinds:
            raise BadInputError(f"model.family: rnn cannot build task kind {io.kind!r}; valid: {', '.join(self.kinds)}")
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
            return RNNSpanExtractor(encoder())
        if io.kind == "seq2seq":
            tgt_vocab = io.tgt_vocab_size or io.vocab_size
            tgt_embed = src_embed if io.tgt_vocab_size is None else make_embedding(tgt_vocab, dims.d_model, io.pad_id)
            return RNNSeq2Seq(encoder(), tgt_embed, opts.cell, hidden, dims.n_layers, dims.dropout, tgt_vocab)
        return RNNLM(src_embed, opts.cell, hidden, dims.n_layers, dims.dropout, io.vocab_size)


@hookimpl
def register_models(register):
    register("rnn", RNNFamily)
