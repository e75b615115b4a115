"""The span head shared by the model families: start/end logits for extractive QA.

Input layout (the ``span`` task kind): ``[CLS] question [SEP] context [SEP]``. The head gets the
encoder's states ``h`` (B, L, D) and scores every position:

- **start** ``= w_s . h_i + h_i . W_s q``: ``q`` is the mean of the question's states (every
  position before the first ``[SEP]``, ``[CLS]`` excluded). The bilinear term lets a position
  score high because it *matches the question*, so the encoder only has to put "what this
  position is about" into ``h_i``; a linear head alone needs the encoder to compute the match
  itself, a second hop small models learn slowly (docs/tasks.md, qa).
- **end** ``= w_e . h_i + h_i . W_e [q; s]``: ``s`` is the start states weighted by the start
  distribution, so the end is predicted knowing where the answer starts (Wang & Jiang 2017's
  answer pointer; BiDAF and R-Net do the same).

The head relates positions only through ``q`` (a plain mean) and ``s`` (pooled by the start
distribution, the head's own output): no learned attention between positions, so a family
without attention stays without it.

``QuestionMatch`` is the optional input feature that marks context tokens repeating a question
word; each family decides whether its span model uses it (docs/tasks.md, qa).
"""

from __future__ import annotations

import torch
from torch import nn


def question_mask(tokens: torch.Tensor, padding_mask: torch.Tensor, sep_id: int | None) -> torch.Tensor:
    """(B, L) True on question positions: after position 0 ([CLS]) and before the first ``sep_id``.

    Rows without ``sep_id`` (or a task that declares none) use every non-padding position."""
    everything = ~padding_mask
    if sep_id is None:
        return everything
    is_sep = tokens == sep_id
    before_sep = is_sep.long().cumsum(1) == 0
    before_sep[:, 0] = False
    has_sep = is_sep.any(1, keepdim=True) & before_sep.any(1, keepdim=True)
    return torch.where(has_sep, before_sep & everything, everything)


def pooled(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h`` (B, L, D) over ``mask`` (B, L) -> (B, D)."""
    keep = mask.unsqueeze(-1).to(h.dtype)
    return (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def in_question(tokens: torch.Tensor, padding_mask: torch.Tensor, sep_id: int | None) -> torch.Tensor:
    """(B, L) True on non-question, non-padding positions whose token also occurs in the question."""
    question = question_mask(tokens, padding_mask, sep_id)
    same = (tokens[:, :, None] == tokens[:, None, :]) & question[:, None, :]
    return same.any(-1) & ~question & ~padding_mask


class QuestionMatch(nn.Module):
    """A learned vector added to the input of every context token that occurs in the question.

    DrQA's exact-match feature (Chen et al. 2017): it tells each context position, before any
    layer, whether it repeats a question word, the cheapest interaction between the two."""

    def __init__(self, d_model: int, sep_id: int | None, init_std: float):
        super().__init__()
        self.sep_id = sep_id
        self.vector = nn.Parameter(torch.randn(d_model) * init_std)  # the scale of the family's token embeddings

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return in_question(tokens, padding_mask, self.sep_id)[..., None].to(self.vector.dtype) * self.vector


class SpanHead(nn.Module):
    """``(h (B,L,D), tokens, padding_mask) -> (start_logits, end_logits)``, each (B, L); padding gets the minimum."""

    def __init__(self, d_in: int, sep_id: int | None):
        super().__init__()
        self.sep_id = sep_id
        self.start_linear = nn.Linear(d_in, 1)
        self.start_question = nn.Linear(d_in, d_in, bias=False)
        self.end_linear = nn.Linear(d_in, 1)
        self.end_question = nn.Linear(2 * d_in, d_in, bias=False)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, padding_mask: torch.Tensor):
        fill = torch.finfo(h.dtype).min
        q = pooled(h, question_mask(tokens, padding_mask, self.sep_id))
        start = self.start_linear(h).squeeze(-1) + torch.einsum("bld,bd->bl", h, self.start_question(q))
        start = start.masked_fill(padding_mask, fill)
        s = torch.einsum("bl,bld->bd", start.float().softmax(-1).to(h.dtype), h)
        end = self.end_linear(h).squeeze(-1) + torch.einsum("bld,bd->bl", h, self.end_question(torch.cat([q, s], -1)))
        return start, end.masked_fill(padding_mask, fill)
