"""Batched greedy and beam search for any model with the ``seq2seq`` interface.

Only ``encode``, ``decode`` and ``reorder_memory`` are used (see attnbench.models), so the
search works the same for Transformers and RNN encoder-decoders. ``decode`` is re-run on
the whole prefix at every step: simple, and cheap at the lengths this project uses.

Both searches return, per example, the generated token ids without BOS/EOS/padding.
Beam search with ``beam_size=1`` makes exactly the choices greedy search makes.
"""

from __future__ import annotations

import torch


def _next_log_probs(model, memory, src_mask, prefix, *, pad_id: int, bos_id: int) -> torch.Tensor:
    """Log-probabilities of the next token (N, V); padding and BOS can never be generated."""
    logits = model.decode(memory, src_mask, prefix)[:, -1].float()
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
def greedy_search(model, src, src_mask, max_lens: torch.Tensor, *, bos_id: int, eos_id: int, pad_id: int) -> list[list[int]]:
    """Pick the most likely token at every step; example i stops at EOS or after ``max_lens[i]`` tokens."""
    memory = model.encode(src, src_mask)
    batch = src.shape[0]
    prefix = torch.full((batch, 1), bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    max_lens = max_lens.to(src.device)
    for step in range(int(max_lens.max())):
        log_probs = _next_log_probs(model, memory, src_mask, prefix, pad_id=pad_id, bos_id=bos_id)
        _force(log_probs, step >= max_lens, eos_id)  # out of length budget: end the sentence
        _force(log_probs, finished, pad_id)
        token = log_probs.argmax(-1)
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        finished |= token == eos_id
        if finished.all():
            break
    return [_strip(row[1:], eos_id) for row in prefix.tolist()]


@torch.no_grad()
def beam_search(model, src, src_mask, max_lens: torch.Tensor, *, beam_size: int, bos_id: int, eos_id: int,
                pad_id: int, length_penalty: float = 1.0) -> list[list[int]]:
    """Keep the ``beam_size`` best prefixes per example; finished hypotheses keep their score.

    The final choice divides each hypothesis's log-probability by ``length ** length_penalty``
    (length counts the EOS), so longer translations are not penalised just for being long.
    """
    batch, k = src.shape[0], beam_size
    device = src.device
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # beams of one example are adjacent
    memory = model.reorder_memory(model.encode(src, src_mask), expand)
    src_mask = src_mask.index_select(0, expand)
    max_lens = max_lens.to(device).index_select(0, expand)

    prefix = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep only one alive at first
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * k, device=device)
    for step in range(int(max_lens.max())):
        log_probs = _next_log_probs(model, memory, src_mask, prefix, pad_id=pad_id, bos_id=bos_id)
        _force(log_probs, step >= max_lens, eos_id)
        _force(log_probs, finished, pad_id)
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        scores, flat = candidates.topk(k, dim=-1)
        source_beam = (flat // vocab + torch.arange(batch, device=device)[:, None] * k).view(-1)
        token = (flat % vocab).view(-1)
        prefix = torch.cat([prefix.index_select(0, source_beam), token[:, None]], dim=1)
        was_finished = finished.index_select(0, source_beam)
        lengths = lengths.index_select(0, source_beam) + (~was_finished).float()
        finished = was_finished | (token == eos_id)
        if finished.all():
            break
    normalised = (scores.view(-1) / lengths.clamp(min=1.0) ** length_penalty).view(batch, k)
    best = normalised.argmax(-1) + torch.arange(batch, device=device) * k
    return [_strip(prefix[i, 1:].tolist(), eos_id) for i in best.tolist()]
