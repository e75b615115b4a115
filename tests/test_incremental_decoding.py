"""Incremental decoding: cached steps give what full recomputation gives, for every family and
every attention variant a decoder can use (enrolled from the registry by capability flags)."""

import pytest
import torch

from attnbench import ModelDims, TaskIO
from attnbench.plugin_host import discover
from attnbench.plugins.tasks.seq2seq_decoding import (RecomputingDecoder, beam_search, greedy_search,
                                                      length_sorted_batches)

torch.set_num_threads(1)

DIMS = ModelDims(d_model=32, n_layers=2, n_heads=4, dropout=0.0)
IO = TaskIO(kind="seq2seq", vocab_size=40, max_len=24, max_tgt_len=24, bos_id=1, eos_id=2, pad_id=0)
HOST = discover()


def _model_cases():
    """(family, options) for every built-in family setting and every decoder-capable variant."""
    cases = [pytest.param("transformer", {}, id="transformer"),
             pytest.param("transformer", {"positions": "learned"}, id="transformer-learned"),
             pytest.param("rnn", {}, id="rnn-lstm"),
             pytest.param("rnn", {"cell": "gru", "bidirectional": False}, id="rnn-gru-uni")]
    for reg in sorted(HOST.attention, key=lambda r: r.name):
        flags = reg.factory
        if flags.supports_causal:  # fills the transformer decoder's self-attention slot
            cases.append(pytest.param("transformer", {"attention": reg.name}, id=f"transformer-{reg.name}"))
        if flags.supports_cross and flags.supports_padding_mask:  # rnn decoder -> encoder states
            cases.append(pytest.param("rnn", {"attention": reg.name}, id=f"rnn-lstm+{reg.name}"))
    return cases


CASES = _model_cases()


def build(family_name, raw):
    cls = HOST.model.get(family_name).factory
    family = cls(cls.parse_options(raw))
    torch.manual_seed(0)
    # float64: argmax ties from rounding noise would make equal computations look different
    return family.build(IO, DIMS, HOST).double().eval()


def source_batch():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 3, 7, 5, 1])
    mask = torch.arange(9)[None, :] >= lengths[:, None]
    return torch.randint(4, 40, (5, 9), generator=g).masked_fill(mask, 0), mask


def test_every_decoder_capable_variant_is_enrolled():
    names = {p.id for p in CASES}
    for reg in HOST.attention:
        if reg.factory.supports_causal:
            assert f"transformer-{reg.name}" in names
    assert "rnn-lstm+additive" in names and "rnn-lstm+lsh" not in names  # lsh cannot cross-attend


@pytest.mark.parametrize("family_name,raw", CASES)
def test_steps_give_the_logits_of_full_decoding(family_name, raw):
    model = build(family_name, raw)
    src, mask = source_batch()
    tgt = torch.randint(3, 40, (5, 6), generator=torch.Generator().manual_seed(2))
    tgt[:, 0] = IO.bos_id
    memory = model.encode(src, mask)
    full = model.decode(memory, mask, tgt)
    for decoder in (model, RecomputingDecoder(model)) if getattr(model, "supports_incremental", False) else (RecomputingDecoder(model),):
        state = decoder.start_decoding(memory, mask)
        steps = []
        for t in range(tgt.shape[1]):
            logits, state = decoder.decode_step(state, tgt[:, t])
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("family_name,raw", CASES)
def test_cached_and_recomputed_searches_agree(family_name, raw):
    model = build(family_name, raw)
    src, mask = source_batch()
    max_lens = torch.tensor([3, 12, 7, 1, 9])  # sentences leave the batch at different steps
    ids = dict(bos_id=IO.bos_id, eos_id=IO.eos_id, pad_id=IO.pad_id)
    greedy = greedy_search(model, src, mask, max_lens, **ids)
    assert greedy == greedy_search(model, src, mask, max_lens, use_cache=False, **ids)
    assert all(len(out) <= limit for out, limit in zip(greedy, max_lens.tolist()))
    beam = beam_search(model, src, mask, max_lens, beam_size=3, **ids)
    assert beam == beam_search(model, src, mask, max_lens, beam_size=3, use_cache=False, **ids)
    assert beam_search(model, src, mask, max_lens, beam_size=1, **ids) == greedy


def test_capability_flags_decide_whether_the_cache_is_used():
    for reg in HOST.attention:
        if reg.factory.supports_causal:
            model = build("transformer", {"attention": reg.name})
            assert model.supports_incremental == reg.factory.supports_incremental, reg.name
    assert build("rnn", {}).supports_incremental


class StepCounter:
    """Counts the target positions the decoder computes, to tell caching from recomputation."""

    def __init__(self, model):
        self.positions = 0
        self.handle = model.lm_head.register_forward_hook(self._count)

    def _count(self, module, args, output):
        self.positions += output.shape[0] * (output.shape[1] if output.dim() == 3 else 1)


def test_the_cache_computes_each_position_once():
    model = build("transformer", {})
    src, mask = source_batch()
    max_lens = torch.full((5,), 8)
    ids = dict(bos_id=IO.bos_id, eos_id=IO.eos_id, pad_id=IO.pad_id)
    cached = StepCounter(model)
    greedy_search(model, src, mask, max_lens, **ids)
    cached.handle.remove()
    recomputed = StepCounter(model)
    greedy_search(model, src, mask, max_lens, use_cache=False, **ids)
    recomputed.handle.remove()
    assert cached.positions <= 5 * 9  # at most one position per example and step
    assert recomputed.positions > 3 * cached.positions


class ThirdPartySeq2Seq(torch.nn.Module):
    """A family's model with only encode/decode/reorder_memory (no step API)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def encode(self, src, mask):
        return self.inner.encode(src, mask)

    def decode(self, memory, mask, tgt_in):
        return self.inner.decode(memory, mask, tgt_in)

    def reorder_memory(self, memory, index):
        return self.inner.reorder_memory(memory, index)


def test_a_model_without_the_step_api_still_decodes():
    inner = build("transformer", {})
    model = ThirdPartySeq2Seq(inner)
    src, mask = source_batch()
    max_lens = torch.tensor([3, 12, 7, 1, 9])
    ids = dict(bos_id=IO.bos_id, eos_id=IO.eos_id, pad_id=IO.pad_id)
    assert greedy_search(model, src, mask, max_lens, **ids) == greedy_search(inner, src, mask, max_lens, **ids)
    assert (beam_search(model, src, mask, max_lens, beam_size=2, **ids)
            == beam_search(inner, src, mask, max_lens, beam_size=2, **ids))


def test_length_sorted_batches_cover_every_index_once_longest_first():
    lengths = [3, 9, 1, 9, 4, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
