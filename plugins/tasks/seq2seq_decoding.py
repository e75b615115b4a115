"""Batched greedy and beam search for any model with the ``seq2seq`` interface.

The searches drive a decoder one token at a time through the step API of attnbench.models
(``start_decoding``, ``decode_step``, ``reorder_decoder_state``). Models that declare
``supports_incremental`` provide it themselves and keep a cache (transformer: keys and
values; rnn: the recurrent state), so a step costs one position. For any other model
:class:`RecomputingDecoder` provides the same API by re-running ``decode`` on the whole
prefix, O(T^2) per sentence but correct for every family; ``use_cache=False`` forces it
(the reference in tests and benchmarks/bench_decoding.py).

Both searches return, per example, the generated token ids without BOS/EOS/padding.
Beam search with ``beam_size=1`` makes exactly the choices greedy search makes.
"""

from __future__ import annotations

from typing import Sequence

import torch


class RecomputingDecoder:
    """The step API over ``encode``/``decode``/``reorder_memory`` alone: the state is the
    memory, its padding mask and the prefix so far, and every step decodes the whole prefix."""

    def __init__(self, model):
        self.model = model

    def start_decoding(self, memory, src_padding_mask):
        return memory, src_padding_mask, None

    def decode_step(self, state, tokens):
        memory, src_padding_mask, prefix = state
        prefix = tokens[:, None] if prefix is None else torch.cat([prefix, tokens[:, None]], dim=1)
        return self.model.decode(memory, src_padding_mask, prefix)[:, -1], (memory, src_padding_mask, prefix)

    def reorder_decoder_state(self, state, index):
        memory, src_padding_mask, prefix = state
        return (self.model.reorder_memory(memory, index), src_padding_mask.index_select(0, index),
                None if prefix is None else prefix.index_select(0, index))


def step_decoder(model, use_cache: bool = True):
    """The model itself when it decodes incrementally (and ``use_cache``), else a recomputing wrapper."""
    if use_cache and getattr(model, "supports_incremental", False):
        return model
    return RecomputingDecoder(model)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Example indices in batches of similar length, longest first.

    Sentences of one batch then end at about the same step, and the first batch is the
    largest, so running out of memory shows at once. Callers put outputs back by index."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _next_log_probs(logits: torch.Tensor, *, pad_id: int, bos_id: int) -> torch.Tensor:
    """Log-probabilities of the next token (N, V); padding and BOS can never be generated."""
    logits = logits.float()
    logits[:, pad_id] = float("-inf")
    logits[:, bos_id] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def _force(log_probs: torch.Tensor, rows: torch.Tensor, token: int) -> None:
    """Make ``token`` the only possible next token (log-prob 0) in the selected rows."""
    log_probs[rows] = float("-inf")
    log_probs[rows, token] = 0.0


def _strip(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def greedy_search(model, src, src_mask, max_lens: torch.Tensor, *, bos_id: int, eos_id: int, pad_id: int,
                  use_cache: bool = True) -> list[list[int]]:
    """Pick the most likely token at every step; example i stops at EOS or after ``max_lens[i]`` tokens.

    Finished sentences leave the batch (the state is reordered to the rest), so a batch
    costs what its unfinished sentences cost."""
    decoder = step_decoder(model, use_cache)
    batch, device = src.shape[0], src.device
    max_lens = max_lens.to(device)
    state = decoder.start_decoding(model.encode(src, src_mask), src_mask)
    generated = torch.full((batch, int(max_lens.max()) + 1), pad_id, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)  # rows of the batch still decoding
    tokens = torch.full((batch,), bos_id, dtype=torch.long, device=device)
    for step in range(generated.shape[1]):
        logits, state = decoder.decode_step(state, tokens)
        log_probs = _next_log_probs(logits, pad_id=pad_id, bos_id=bos_id)
        _force(log_probs, step >= max_lens.index_select(0, active), eos_id)  # out of length budget: end it
        tokens = log_probs.argmax(-1)
        generated[active, step] = tokens
        done = tokens == eos_id
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            state = decoder.reorder_decoder_state(state, keep)
            active, tokens = active.index_select(0, keep), tokens.index_select(0, keep)
    return [_strip(row, eos_id) for row in generated.tolist()]


@torch.no_grad()
def beam_search(model, src, src_mask, max_lens: torch.Tensor, *, beam_size: int, bos_id: int, eos_id: int,
                pad_id: int, length_penalty: float = 1.0, use_cache: bool = True) -> list[list[int]]:
    """Keep the ``beam_size`` best prefixes per example; finished hypotheses keep their score.

    The final choice divides each hypothesis's log-probability by ``length ** length_penalty``
    (length counts the EOS), so longer translations are not penalised just for being long.
    """
    decoder = step_decoder(model, use_cache)
    batch, k = src.shape[0], beam_size
    device = src.device
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # beams of one example are adjacent
    state = decoder.start_decoding(model.encode(src, src_mask), src_mask)
    state = decoder.reorder_decoder_state(state, expand)  # per-source work (cross K/V) done once, then copied
    max_lens = max_lens.to(device).index_select(0, expand)

    prefix = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep only one alive at first
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * k, device=device)
    for step in range(int(max_lens.max())):
        logits, state = decoder.decode_step(state, prefix[:, -1])
        log_probs = _next_log_probs(logits, pad_id=pad_id, bos_id=bos_id)
        _force(log_probs, step >= max_lens, eos_id)
        _force(log_probs, finished, pad_id)
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        scores, flat = candidates.topk(k, dim=-1)
        source_beam = (flat // vocab + torch.arange(batch, device=device)[:, None] * k).view(-1)
        token = (flat % vocab).view(-1)
        prefix = torch.cat([prefix.index_select(0, source_beam), token[:, None]], dim=1)
        state = decoder.reorder_decoder_state(state, source_beam)
        was_finished = finished.index_select(0, source_beam)
        lengths = lengths.index_select(0, source_beam) + (~was_finished).float()
        finished = was_finished | (token == eos_id)
        if finished.all():
            break
    normalised = (scores.view(-1) / lengths.clamp(min=1.0) ** length_penalty).view(batch, k)
    best = normalised.argmax(-1) + torch.arange(batch, device=device) * k
    return [_strip(prefix[i, 1:].tolist(), eos_id) for i in best.tolist()]
