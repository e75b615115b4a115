"""Model families: shapes per task kind, padding invariance, causality, labels/tags, errors."""

import pytest
import torch

from attnbench import Attention, ModelDims, TaskIO
from attnbench.errors import BadInputError
from attnbench.plugin_host import discover

torch.set_num_threads(1)

DIMS = ModelDims(d_model=32, n_layers=2, n_heads=4, dropout=0.0)
FAMILIES = [("transformer", {}), ("transformer", {"positions": "learned"}), ("rnn", {}),
            ("rnn", {"cell": "gru", "bidirectional": False})]
IDS = ["transformer", "transformer-learned", "rnn-lstm", "rnn-gru-uni"]


@pytest.fixture(scope="module")
def host():
    return discover()


def build(host, name, raw, kind, **io_kwargs):
    cls = host.model.get(name).factory
    family = cls(cls.parse_options(raw))
    io = TaskIO(kind=kind, vocab_size=40, max_len=24, n_classes=3, max_tgt_len=24, **io_kwargs)
    torch.manual_seed(0)
    return family, family.build(io, DIMS, host).eval()


def tokens_and_mask(lengths, width):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(6, 40, (len(lengths), width), generator=g)
    mask = torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]
    return tokens.masked_fill(mask, 0), mask


def pad_more(tokens, mask, extra):
    """The same batch with ``extra`` more padding columns on the right."""
    return (torch.cat([tokens, torch.zeros(len(tokens), extra, dtype=torch.long)], 1),
            torch.cat([mask, torch.ones(len(mask), extra, dtype=torch.bool)], 1))


@pytest.mark.parametrize("name,raw", FAMILIES, ids=IDS)
def test_output_shapes_per_kind(host, name, raw):
    tokens, mask = tokens_and_mask([7, 4, 9], 9)
    _, clf = build(host, name, raw, "classification")
    assert clf(tokens, mask).shape == (3, 3)
    _, span = build(host, name, raw, "span")
    start, end = span(tokens, mask)
    assert start.shape == end.shape == (3, 9)
    assert torch.all(start[mask] < -1e30), "padding positions must never win a span"
    _, s2s = build(host, name, raw, "seq2seq")
    assert s2s(tokens, mask, tokens[:, :5]).shape == (3, 5, 40)
    _, lm = build(host, name, raw, "lm")
    assert lm(tokens, mask).shape == (3, 9, 40)


@pytest.mark.parametrize("name,raw", FAMILIES, ids=IDS)
def test_padding_does_not_change_outputs(host, name, raw):
    tokens, mask = tokens_and_mask([7, 4, 9], 9)
    wide_tokens, wide_mask = pad_more(tokens, mask, 5)
    _, clf = build(host, name, raw, "classification")
    torch.testing.assert_close(clf(tokens, mask), clf(wide_tokens, wide_mask), atol=1e-5, rtol=1e-4)
    _, span = build(host, name, raw, "span")
    narrow, wide = span(tokens, mask)[0], span(wide_tokens, wide_mask)[0][:, :9]
    torch.testing.assert_close(narrow[~mask], wide[~mask], atol=1e-5, rtol=1e-4)
    _, s2s = build(host, name, raw, "seq2seq")
    tgt = tokens[:, :4]
    torch.testing.assert_close(s2s(tokens, mask, tgt), s2s(wide_tokens, wide_mask, tgt), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,raw", FAMILIES, ids=IDS)
def test_decoders_are_causal(host, name, raw):
    tokens, mask = tokens_and_mask([8, 8], 8)
    changed = tokens.clone()
    changed[:, 5] = 7 if changed[0, 5] != 7 else 8
    _, lm = build(host, name, raw, "lm")
    torch.testing.assert_close(lm(tokens, mask)[:, :5], lm(changed, mask)[:, :5])
    assert not torch.allclose(lm(tokens, mask)[:, 5:], lm(changed, mask)[:, 5:])
    _, s2s = build(host, name, raw, "seq2seq")
    memory = s2s.encode(tokens, mask)
    torch.testing.assert_close(s2s.decode(memory, mask, tokens)[:, :5], s2s.decode(memory, mask, changed)[:, :5])


@pytest.mark.parametrize("name,raw", FAMILIES, ids=IDS)
def test_reorder_memory_selects_examples(host, name, raw):
    tokens, mask = tokens_and_mask([7, 4, 9], 9)
    _, s2s = build(host, name, raw, "seq2seq")
    memory = s2s.encode(tokens, mask)
    index = torch.tensor([2, 2, 0])
    reordered = s2s.reorder_memory(memory, index)
    tgt = tokens[:, :3]
    torch.testing.assert_close(s2s.decode(reordered, mask[index], tgt[index]), s2s.decode(memory, mask, tgt)[index])


def test_labels_and_tags(host):
    family, _ = build(host, "transformer", {}, "classification")
    assert family.label() == "transformer-multihead"
    assert family.tags() == {"attention": "multihead"}
    family, model = build(host, "rnn", {"cell": "gru"}, "seq2seq")
    assert family.label() == "rnn-gru"
    assert family.tags() == {"attention": "none"}


@pytest.mark.parametrize("kind", ["classification", "span", "seq2seq", "lm"])
def test_rnn_contains_no_attention(host, kind):
    _, model = build(host, "rnn", {}, kind)
    assert not [m for m in model.modules() if isinstance(m, Attention) or "attention" in type(m).__name__.lower()]


def token_std(model) -> float:
    table = model.encoder.embed.tokens.weight.detach()[1:]  # row 0 is padding, kept at zero
    return float(table.std())


def test_embedding_init_sets_the_scale_of_untied_token_tables(host):
    vaswani = DIMS.d_model ** -0.5
    for kind in ("classification", "span"):
        _, default = build(host, "transformer", {}, kind)
        _, gpt2 = build(host, "transformer", {"embedding_init": "gpt2"}, kind)
        _, unit = build(host, "transformer", {"embedding_init": "vaswani"}, kind)
        assert all(torch.equal(a, b) for a, b in zip(default.parameters(), gpt2.parameters()))  # default unchanged
        assert token_std(gpt2) == pytest.approx(0.02, rel=0.1)
        assert token_std(unit) == pytest.approx(vaswani, rel=0.1)
        scaled = unit.encoder.embed.tokens.weight.detach()[1:] * unit.encoder.embed.token_scale
        assert float(scaled.std()) == pytest.approx(1.0, rel=0.1)  # the sinusoids' scale
    _, span = build(host, "transformer", {"embedding_init": "vaswani"}, "span")
    assert float(span.question_match.vector.detach().std()) == pytest.approx(vaswani, rel=0.35)  # 32 values
    # seq2seq ties its table to the output layer, whose init wins: the option changes nothing there
    _, tied_gpt2 = build(host, "transformer", {}, "seq2seq")
    _, tied_unit = build(host, "transformer", {"embedding_init": "vaswani"}, "seq2seq")
    assert all(torch.equal(a, b) for a, b in zip(tied_gpt2.parameters(), tied_unit.parameters()))


def test_transformer_builds_every_slot_from_the_chosen_attention(host):
    _, model = build(host, "transformer", {}, "seq2seq")
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    # 2 encoder self + 2 decoder self + 2 cross
    assert len(attention) == 3 * DIMS.n_layers
    assert {type(m).__name__ for m in attention} == {"MultiHeadAttention"}


def test_unknown_attention_is_a_clear_error(host):
    cls = host.model.get("transformer").factory
    family = cls(cls.parse_options({"attention": "mutlihead"}))
    with pytest.raises(BadInputError, match="did you mean 'multihead'"):
        family.validate(host)


def test_unknown_option_keys_are_rejected(host):
    for name in ("transformer", "rnn"):
        cls = host.model.get(name).factory
        with pytest.raises(BadInputError, match=r"model\.colour: unknown field"):
            cls.parse_options({"colour": "red"})
    with pytest.raises(BadInputError, match="cell"):
        host.model.get("rnn").factory.parse_options({"cell": "transformer"})


def test_bad_attention_options_name_the_field(host):
    cls = host.model.get("transformer").factory
    family = cls(cls.parse_options({"attention_options": {"window": 3}}))
    with pytest.raises(BadInputError, match=r"^attention_options\.window: unknown field; nothing is valid here"):
        family.validate(host)


def test_unknown_task_kind_is_rejected(host):
    cls = host.model.get("rnn").factory
    with pytest.raises(BadInputError, match="valid: classification"):
        cls(cls.parse_options({})).build(TaskIO(kind="ranking", vocab_size=10), DIMS, host)


# ------------------------------------------------------------------ rnn with an attention plugin


def test_rnn_with_attention_is_labelled_and_tagged_apart_from_the_baseline(host):
    baseline, _ = build(host, "rnn", {}, "seq2seq")
    family, model = build(host, "rnn", {"attention": "additive"}, "seq2seq")
    assert (baseline.label(), family.label()) == ("rnn-lstm", "rnn-lstm+additive")
    assert baseline.tags() == {"attention": "none"} and not baseline.uses_attention
    assert family.tags() == {"attention": "additive"} and family.uses_attention
    assert baseline.is_baseline and not family.is_baseline  # compare measures rnn+attention against rnn
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    assert [type(m).__name__ for m in attention] == ["AdditiveAttention"]


def test_rnn_attention_sees_individual_encoder_states(host):
    """Without attention the decoder sees only the final summary; with it, changing an early
    source token changes the output even when the summary path is cut."""
    tokens, mask = tokens_and_mask([9, 9], 9)
    changed = tokens.clone()
    changed[:, 0] = 7 if changed[0, 0] != 7 else 8
    _, model = build(host, "rnn", {"attention": "additive"}, "seq2seq")
    tgt = tokens[:, :4]
    memory, other = model.encode(tokens, mask), model.encode(changed, mask)
    mixed = memory._replace(states=other.states)  # same summary and initial state, other encoder states
    assert not torch.allclose(model.decode(memory, mask, tgt), model.decode(mixed, mask, tgt))


def test_rnn_attention_errors_name_the_field_and_the_valid_choices(host):
    cls = host.model.get("rnn").factory
    family = cls(cls.parse_options({"attention": "lsh"}))
    cross_capable = sorted(r.name for r in host.attention if r.factory.supports_cross and r.factory.supports_padding_mask)
    with pytest.raises(BadInputError, match=r"model\.attention: 'lsh' cannot attend .*valid: " + ", ".join(cross_capable)):
        family.validate(host)
    with pytest.raises(BadInputError, match=r"model\.attention_options: set only together with model\.attention"):
        cls(cls.parse_options({"attention_options": {"window": 3}})).validate(host)
    family = cls(cls.parse_options({"attention": "additive"}))
    assert family.kinds == ("seq2seq",)
    with pytest.raises(BadInputError, match="model.attention is set"):
        family.build(TaskIO(kind="classification", vocab_size=10, n_classes=2), DIMS, host)


def test_grid_skips_rnn_attention_on_a_classification_task(host, tmp_path):
    from attnbench.config import load_experiment, plan_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\ngrid:\n  task: [translation, sentiment]\n  model:\n"
                    "    - {family: rnn, cell: lstm, attention: additive}\n")
    experiment, _ = load_experiment(grid)
    plan = plan_grid(experiment, host)
    assert [spec.run_name for spec in plan.specs] == ["translation/lstm+additive/s0"]
    (skipped,) = plan.skipped
    assert (skipped.task, skipped.model_label) == ("sentiment", "rnn-lstm+additive")
    assert skipped.reason == "family 'rnn' builds seq2seq models, not 'classification'"
    grid.write_text(grid.read_text().replace("translation, sentiment", "sentiment"))
    with pytest.raises(BadInputError, match=r"nothing to run: every pairing is skipped"):
        plan_grid(load_experiment(grid)[0], host)
