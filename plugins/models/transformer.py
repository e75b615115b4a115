"""Model family ``transformer``: pre-LN Transformer networks built around any attention plugin.

Every attention slot (encoder self-attention, decoder causal self-attention, decoder
cross-attention) is an instance of the chosen attention class. Where the class's capability
flags say it cannot fill a slot (``supports_causal`` / ``supports_cross``), that slot uses
``multihead`` instead and the family records the fallback, reported by :meth:`tags`.

Read top to bottom: options, building blocks, the four networks (one per task kind), the
family that picks one, and the plugin hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from attnbench import Attention, ModelDims, ModelFamily, TaskIO, hookimpl
from attnbench.errors import BadInputError

from .span_head import QuestionMatch, SpanHead

FALLBACK_ATTENTION = "multihead"


class TransformerOptions(BaseModel):
    """Options of a ``{family: transformer, ...}`` grid entry."""

    model_config = ConfigDict(extra="forbid")
    attention: str = Field("multihead", description="registered attention variant used in every slot")
    attention_options: dict = Field(default_factory=dict, description="options of that variant")
    # Sinusoids (Vaswani et al.) by default: a fixed offset between two positions is the same
    # linear map everywhere, so tiny models learn position-based alignment (translation) in a
    # few hundred steps; separate learned tables for encoder and decoder take far longer.
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    question_match: bool = Field(True, description="span models: mark context tokens that occur in the question (span_head.py)")
    # gpt2: N(0, 0.02), which with sinusoids (x sqrt(d_model)) leaves token content ~6x smaller than
    # the position codes at d_model 64, so attention by content (same token elsewhere) is learned late;
    # vaswani: N(0, d_model^-0.5), unit scale after the sqrt(d_model) factor, as the LSTM's embeddings.
    embedding_init: Literal["gpt2", "vaswani"] = Field(
        "gpt2", description="token embedding init: gpt2 N(0, 0.02) or vaswani N(0, d_model^-0.5) (docs/models.md)")
    pooling: Literal["mean", "max", "first"] = Field(
        "mean", description="classification: how the encoder outputs become one vector (docs/tasks.md, sentiment)")


# ---------------------------------------------------------------------------- building blocks


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc_out(F.gelu(self.fc_in(x))))


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine position codes (Vaswani et al. 2017); no length limit."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def forward(self, length: int, device, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + length, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, self.d_model, 2, device=device, dtype=torch.float32)
                         * (-math.log(10000.0) / self.d_model))
        table = torch.zeros(length, self.d_model, device=device)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)[:, : self.d_model // 2]
        return table


class LearnedPositions(nn.Module):
    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)

    def forward(self, length: int, device, start: int = 0) -> torch.Tensor:
        if start + length > self.table.num_embeddings:
            raise ValueError(f"sequence of {start + length} tokens is longer than the model's position table "
                             f"({self.table.num_embeddings}); raise the task's max_len")
        return self.table(torch.arange(start, start + length, device=device))


class Embedder(nn.Module):
    """Token embedding plus position codes, then dropout.

    Learned positions start at the same small scale as token embeddings (nanoGPT); fixed
    sinusoids have unit amplitude, so tokens are scaled up by sqrt(d_model) to match them
    (Vaswani et al.)."""

    def __init__(self, tokens: nn.Embedding, positions: nn.Module, dropout: float):
        super().__init__()
        self.tokens = tokens
        self.positions = positions
        self.dropout = nn.Dropout(dropout)
        self.token_scale = math.sqrt(tokens.embedding_dim) if isinstance(positions, SinusoidalPositions) else 1.0

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``start``: position of the first of ``ids`` (non-zero when decoding one step at a time)."""
        x = self.tokens(ids) * self.token_scale
        return self.dropout(x + self.positions(ids.shape[1], ids.device, start))


def call_attention(attn: nn.Module, x, context=None, *, key_padding_mask=None, causal=False):
    """Run one attention module, passing the padding mask only to variants that accept one."""
    if key_padding_mask is not None and not attn.supports_padding_mask:
        key_padding_mask = None
    out, _ = attn(x, context, key_padding_mask=key_padding_mask, causal=causal)
    return out


class EncoderBlock(nn.Module):
    """Pre-LN block: x + SelfAttn(LN(x)), then x + FF(LN(x)). ``causal`` makes it a decoder-only block."""

    def __init__(self, self_attn: nn.Module, d_model: int, d_ff: int, dropout: float, causal: bool = False):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.self_attn = self_attn
        self.ln_ff = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)
        self.causal = causal

    def forward(self, x, padding_mask=None):
        x = x + self.dropout(call_attention(self.self_attn, self.ln_attn(x), key_padding_mask=padding_mask, causal=self.causal))
        return x + self.ff(self.ln_ff(x))


class DecoderBlock(nn.Module):
    """Pre-LN block: causal self-attention, cross-attention over the encoder memory, feed-forward."""

    def __init__(self, self_attn: nn.Module, cross_attn: nn.Module, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.ln_self = nn.LayerNorm(d_model)
        self.self_attn = self_attn
        self.ln_cross = nn.LayerNorm(d_model)
        self.cross_attn = cross_attn
        self.ln_ff = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y, memory, memory_padding_mask):
        # Targets are right-padded, so the causal mask alone keeps real positions off padding.
        y = y + self.dropout(call_attention(self.self_attn, self.ln_self(y), causal=True))
        y = y + self.dropout(call_attention(self.cross_attn, self.ln_cross(y), memory, key_padding_mask=memory_padding_mask))
        return y + self.ff(self.ln_ff(y))

    def start_caches(self, memory, memory_padding_mask) -> tuple[dict, dict]:
        """Caches for :meth:`step`: an empty self-attention cache, cross-attention K/V of ``memory``."""
        if not self.cross_attn.supports_padding_mask:
            memory_padding_mask = None
        return self.self_attn.start_cache(), self.cross_attn.start_cache(memory, key_padding_mask=memory_padding_mask)

    def step(self, y, caches: tuple[dict, dict]):
        """:meth:`forward` for one new position y (B, 1, d_model), attending through the caches."""
        self_cache, cross_cache = caches
        attended, self_cache = self.self_attn.forward_step(self.ln_self(y), self_cache)
        y = y + self.dropout(attended)
        attended, cross_cache = self.cross_attn.forward_step(self.ln_cross(y), cross_cache)
        y = y + self.dropout(attended)
        return y + self.ff(self.ln_ff(y)), (self_cache, cross_cache)

    def reorder_caches(self, caches: tuple[dict, dict], index) -> tuple[dict, dict]:
        return self.self_attn.reorder_cache(caches[0], index), self.cross_attn.reorder_cache(caches[1], index)


class Encoder(nn.Module):
    """Embedding, a stack of encoder blocks and a final LayerNorm: (B, L) -> (B, L, d_model)."""

    def __init__(self, embed: Embedder, blocks: list[nn.Module], d_model: int):
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.ln_final = nn.LayerNorm(d_model)

    def forward(self, tokens, padding_mask, input_features=None):
        x = self.embed(tokens)
        if input_features is not None:  # (B, L, d_model) added to the embeddings, e.g. QuestionMatch
            x = x + input_features
        return self.contextualise(x, padding_mask)

    def contextualise(self, x, padding_mask):
        """The blocks and the final LayerNorm over already embedded inputs (B, L, d_model)."""
        for block in self.blocks:
            x = block(x, padding_mask)
        x = self.ln_final(x)
        return x.masked_fill(padding_mask[..., None], 0.0) if padding_mask is not None else x


def masked_mean(x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the non-padding positions: (B, L, D), (B, L) -> (B, D)."""
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Feature-wise max over the non-padding positions: (B, L, D), (B, L) -> (B, D).

    Padding outputs are zeros, which would win every max over negative features, so they
    are pushed to the dtype's minimum first."""
    return x.masked_fill(padding_mask[..., None], torch.finfo(x.dtype).min).amax(1)


# ------------------------------------------------------------------------- one network per kind


class TransformerClassifier(nn.Module):
    """Encoder, pooling, linear head: (B, L), (B, L) -> (B, n_classes).

    ``pooling``: ``mean`` or ``max`` over the non-padding positions, or ``first``: a learned
    summary vector (BERT's [CLS], but not a vocabulary entry, so it works with any task's
    vocabulary) is put before the tokens, attends to them in every layer, and its output
    alone feeds the head. It gets no position code; the tokens keep positions 0..L-1."""

    def __init__(self, encoder: Encoder, d_model: int, n_classes: int, dropout: float, pooling: str = "mean"):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        # Same small scale as token embeddings; an all-zero vector would sit at LayerNorm's singular point.
        self.summary = nn.Parameter(torch.randn(1, 1, d_model) * 0.02) if pooling == "first" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, tokens, padding_mask):
        x = self.encoder.embed(tokens)
        if self.summary is not None:
            x = torch.cat([self.summary.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            padding_mask = F.pad(padding_mask, (1, 0), value=False)
        states = self.encoder.contextualise(x, padding_mask)
        if self.pooling == "first":
            pooled = states[:, 0]
        elif self.pooling == "max":
            pooled = masked_max(states, padding_mask)
        else:
            pooled = masked_mean(states, padding_mask)
        return self.head(self.dropout(pooled))


class TransformerSpanExtractor(nn.Module):
    """Encoder with the question-aware span head (span_head.py): -> (start_logits (B, L), end_logits (B, L))."""

    def __init__(self, encoder: Encoder, d_model: int, sep_id: int | None, question_match: bool,
                 embedding_std: float = 0.02):
        super().__init__()
        self.encoder = encoder
        # init_std as the token embeddings' (init_weights); scaled like the tokens in forward
        self.question_match = QuestionMatch(d_model, sep_id, init_std=embedding_std) if question_match else None
        self.span_head = SpanHead(d_model, sep_id)

    def forward(self, tokens, padding_mask):
        match = None
        if self.question_match is not None:
            match = self.question_match(tokens, padding_mask) * self.encoder.embed.token_scale
        return self.span_head(self.encoder(tokens, padding_mask, match), tokens, padding_mask)


@dataclass
class DecoderState:
    """Incremental decoding state: how many target tokens were consumed, and each block's caches."""

    position: int
    caches: list[tuple[dict, dict]]


class Decoder(nn.Module):
    """Target embedding, a stack of decoder blocks and a final LayerNorm: (B, T) -> (B, T, d_model).

    Its own module so that its parts are named ``decoder.*`` (``decoder.blocks.0.cross_attn``),
    as the encoder's are ``encoder.*``, in attention maps, head metrics and state dicts."""

    def __init__(self, embed: Embedder, blocks: list[DecoderBlock], d_model: int):
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.ln_final = nn.LayerNorm(d_model)

    def forward(self, memory, src_padding_mask, tgt_in):
        y = self.embed(tgt_in)
        for block in self.blocks:
            y = block(y, memory, src_padding_mask)
        return self.ln_final(y)

    def start(self, memory, src_padding_mask) -> DecoderState:
        return DecoderState(0, [block.start_caches(memory, src_padding_mask) for block in self.blocks])

    def step(self, state: DecoderState, tokens):
        """Output (B, 1, d_model) for ``tokens`` (B,), which sit at ``state.position``."""
        y = self.embed(tokens[:, None], start=state.position)
        caches = []
        for block, block_caches in zip(self.blocks, state.caches):
            y, block_caches = block.step(y, block_caches)
            caches.append(block_caches)
        return self.ln_final(y), DecoderState(state.position + 1, caches)

    def reorder(self, state: DecoderState, index) -> DecoderState:
        return DecoderState(state.position, [block.reorder_caches(c, index) for block, c in zip(self.blocks, state.caches)])


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder (Vaswani et al. 2017) with the seq2seq interface of attnbench.models.

    Decodes incrementally (KV cache for self-attention, cross-attention K/V computed once)
    when every decoder attention module has ``supports_incremental``; otherwise
    ``supports_incremental`` is False and searches recompute the prefix with :meth:`decode`.
    """

    def __init__(self, encoder: Encoder, decoder: Decoder, tgt_vocab: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        tokens = decoder.embed.tokens
        self.lm_head = nn.Linear(tokens.embedding_dim, tgt_vocab, bias=False)
        self.lm_head.weight = tokens.weight  # tied output embedding (Press & Wolf 2017)

    def encode(self, src, src_padding_mask):
        return self.encoder(src, src_padding_mask)

    def decode(self, memory, src_padding_mask, tgt_in):
        return self.lm_head(self.decoder(memory, src_padding_mask, tgt_in))

    def reorder_memory(self, memory, index):
        return memory.index_select(0, index)

    @property
    def supports_incremental(self) -> bool:
        return all(block.self_attn.supports_incremental and block.cross_attn.supports_incremental
                   for block in self.decoder.blocks)

    def start_decoding(self, memory, src_padding_mask) -> DecoderState:
        return self.decoder.start(memory, src_padding_mask)

    def decode_step(self, state: DecoderState, tokens):
        """Next-token logits (B, V) after ``tokens`` (B,), which sit at ``state.position``."""
        out, state = self.decoder.step(state, tokens)
        return self.lm_head(out)[:, 0], state

    def reorder_decoder_state(self, state: DecoderState, index) -> DecoderState:
        return self.decoder.reorder(state, index)

    def forward(self, src, src_padding_mask, tgt_in):
        return self.decode(self.encode(src, src_padding_mask), src_padding_mask, tgt_in)


class TransformerLM(nn.Module):
    """Decoder-only causal stack: (B, L), (B, L) -> next-token logits (B, L, V)."""

    def __init__(self, embed: Embedder, blocks: list[EncoderBlock], d_model: int, vocab: int):
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.ln_final = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = embed.tokens.weight

    def forward(self, tokens, padding_mask=None):
        x = self.embed(tokens)
        for block in self.blocks:
            # Right padding: the causal mask already keeps real positions away from it.
            x = block(x)
        return self.lm_head(self.ln_final(x))


# ---------------------------------------------------------------------------------- the family


class TransformerFamily(ModelFamily):
    """``transformer``: the attention variant under test inside a standard pre-LN Transformer."""

    kinds = ("classification", "span", "seq2seq", "lm")
    Options = TransformerOptions

    def __init__(self, options: TransformerOptions):
        super().__init__(options)
        self.fallbacks: dict[str, str] = {}  # slot -> variant used instead (filled by build)
        self._attention_cls = None
        self._attention_opts = None

    def label(self) -> str:
        return f"transformer-{self.options.attention}"

    def validate(self, host) -> None:
        cls = host.attention.get(self.options.attention).factory
        self._attention_cls = cls
        self._attention_opts = cls.parse_options(self.options.attention_options, where="attention_options")

    def tags(self) -> dict[str, str]:
        tags = {"attention": self.options.attention}
        if self.fallbacks:
            tags["attention_fallback"] = ",".join(f"{slot}->{used}" for slot, used in self.fallbacks.items())
        return tags

    def _attention(self, slot: str, dims: ModelDims, host, *, causal=False, cross=False) -> nn.Module:
        """One attention module for ``slot``, or multihead when the variant lacks a needed capability."""
        cls, opts = self._attention_cls, self._attention_opts
        if (causal and not cls.supports_causal) or (cross and not cls.supports_cross):
            cls = host.attention.get(FALLBACK_ATTENTION).factory
            opts = cls.parse_options({})
            self.fallbacks[slot] = FALLBACK_ATTENTION
        return cls(dims.d_model, dims.n_heads, dims.dropout, opts)

    def _embedder(self, tokens: nn.Embedding, max_len: int, dims: ModelDims) -> Embedder:
        if self.options.positions == "sinusoidal":
            positions = SinusoidalPositions(dims.d_model)
        else:
            positions = LearnedPositions(max_len, dims.d_model)
        return Embedder(tokens, positions, dims.dropout)

    def _encoder(self, io: TaskIO, dims: ModelDims, host, tokens: nn.Embedding, d_ff: int) -> Encoder:
        blocks = [EncoderBlock(self._attention("encoder", dims, host), dims.d_model, d_ff, dims.dropout)
                  for _ in range(dims.n_layers)]
        return Encoder(self._embedder(tokens, io.max_len, dims), blocks, dims.d_model)

    def build(self, io: TaskIO, dims: ModelDims, host) -> nn.Module:
        if io.kind not in self.kinds:
            raise BadInputError(f"model.family: transformer cannot build task kind {io.kind!r}; valid: {', '.join(self.kinds)}")
        self.validate(host)
        self.fallbacks = {}
        d, d_ff = dims.d_model, dims.d_ff or 4 * dims.d_model
        src_tokens = nn.Embedding(io.vocab_size, d, padding_idx=io.pad_id)

        if io.kind == "classification":
            if not io.n_classes:
                raise BadInputError("task: a classification task must set TaskIO.n_classes")
            model = TransformerClassifier(self._encoder(io, dims, host, src_tokens, d_ff), d, io.n_classes, dims.dropout,
                                          self.options.pooling)
        elif io.kind == "span":
            model = TransformerSpanExtractor(self._encoder(io, dims, host, src_tokens, d_ff), d, io.extra.get("sep_id"),
                                             self.options.question_match, self._embedding_std(d))
        elif io.kind == "seq2seq":
            encoder = self._encoder(io, dims, host, src_tokens, d_ff)
            tgt_vocab = io.tgt_vocab_size or io.vocab_size
            tgt_tokens = src_tokens if io.tgt_vocab_size is None else nn.Embedding(tgt_vocab, d, padding_idx=io.pad_id)
            blocks = [DecoderBlock(self._attention("decoder_self", dims, host, causal=True),
                                   self._attention("cross", dims, host, cross=True), d, d_ff, dims.dropout)
                      for _ in range(dims.n_layers)]
            decoder = Decoder(self._embedder(tgt_tokens, io.max_tgt_len or io.max_len, dims), blocks, d)
            model = TransformerSeq2Seq(encoder, decoder, tgt_vocab)
        else:  # lm
            blocks = [EncoderBlock(self._attention("decoder_self", dims, host, causal=True), d, d_ff, dims.dropout, causal=True)
                      for _ in range(dims.n_layers)]
            model = TransformerLM(self._embedder(src_tokens, io.max_len, dims), blocks, d, io.vocab_size)
        init_weights(model, embedding_std=self._embedding_std(d))
        return model

    def _embedding_std(self, d_model: int) -> float:
        return d_model ** -0.5 if self.options.embedding_init == "vaswani" else 0.02


def init_weights(model: nn.Module, embedding_std: float = 0.02) -> None:
    """Small normal init for linear and embedding weights (GPT-2 style); keeps tiny models stable.
    ``embedding_std``: the std of the embedding tables (``embedding_init``).

    Attention plugins keep their own initialisation: it may be part of the variant."""
    inside_attention = {id(sub) for module in model.modules() if isinstance(module, Attention)
                        for sub in module.modules()}
    for module in model.modules():
        if id(module) in inside_attention:
            continue
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=embedding_std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()


@hookimpl
def register_models(register):
    register("transformer", TransformerFamily)
