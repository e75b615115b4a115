"""The qa task: SQuAD metric definition, synthetic stories, windowing, decoding, training."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from torch import nn

from attnbench import ModelDims
from attnbench.data import CLS, SEP
from attnbench.errors import BadInputError
from attnbench.plugins.tasks import squad_metric
from attnbench.plugins.tasks.qa import QATask, answer_token_span, best_spans, window_starts
from attnbench.plugins.tasks.synthetic_qa import NAMES, PLACES, StoryOptions, generate
from attnbench.config import TrainConfig
from attnbench.run.training import evaluate_split

torch.set_num_threads(1)


class TinySpanModel(nn.Module):
    """Embedding + one bidirectional GRU + start/end heads: enough to learn something quickly."""

    def __init__(self, vocab_size: int, d_model: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.rnn = nn.GRU(d_model, d_model, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * d_model, 2)

    def forward(self, tokens, padding_mask):
        hidden, _ = self.rnn(self.embed(tokens))
        logits = self.head(hidden)
        return logits[..., 0], logits[..., 1]


def make_task(tmp_path, **overrides) -> QATask:
    raw = {"data": {"n_train": 200, "n_validation": 40, "n_test": 40}, "tokenizer": {"vocab_size": 300}}
    raw.update(overrides)
    return QATask(QATask.parse_options(raw, "tasks.qa"), cache_dir=tmp_path)


# ---- metric ---------------------------------------------------------------------------


def test_normalize_follows_squad_v11():
    assert squad_metric.normalize_answer("  The  Eiffel-Tower, an icon! ") == "eiffeltower icon"
    assert squad_metric.normalize_answer("A theatre") == "theatre"  # articles only as whole words


def test_em_and_f1_take_best_gold_and_average_over_questions():
    preds = ["the Denver Broncos", "Broncos won", "nothing here"]
    golds = [["Denver Broncos", "Broncos"], ["Carolina", "Denver Broncos"], ["Santa Clara"]]
    scores = squad_metric.squad_scores(preds, golds)
    # q1 exact; q2 best gold "Denver Broncos": precision 1/2, recall 1/2 -> 0.5; q3 nothing.
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)


def test_f1_counts_repeated_tokens_once_per_match():
    assert squad_metric.f1("paris paris", "paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert squad_metric.f1("", "") == 0.0  # v1.1: no overlapping token, no credit


# ---- synthetic data -------------------------------------------------------------------


def test_stories_are_deterministic_and_answers_are_spans():
    options = StoryOptions(min_sentences=3, max_sentences=9)
    first, again = generate("train", 50, seed=7, options=options), generate("train", 50, seed=7, options=options)
    assert first == again
    assert first != generate("train", 50, seed=8, options=options)
    assert first != generate("test", 50, seed=7, options=options)
    for row in first:
        text, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        assert row["context"][start:start + len(text)] == text
        assert text in PLACES
        name = row["question"].split()[2].rstrip("?")
        # The supporting fact is the last sentence that moves the person asked about.
        moves = [s for s in row["context"].split(". ") if s.startswith(name) and " to the " in s]
        assert moves[-1].rstrip(".").endswith(text)
        assert 0 <= row["support_distance"] < 9


def test_supporting_fact_distance_spans_the_story():
    rows = generate("train", 300, seed=0, options=StoryOptions(min_sentences=12, max_sentences=12))
    distances = {row["support_distance"] for row in rows}
    assert min(distances) == 0 and max(distances) == 11


def test_story_options_reject_inverted_range(tmp_path):
    with pytest.raises(BadInputError, match="tasks.qa.story"):
        make_task(tmp_path, story={"min_sentences": 9, "max_sentences": 3})


# ---- windows and spans ----------------------------------------------------------------


def test_window_starts_cover_every_token():
    assert window_starts(5, room=10, stride=4) == [0]
    starts = window_starts(23, room=10, stride=4)
    assert starts[0] == 0 and starts[-1] == 13
    covered = {t for s in starts for t in range(s, s + 10)}
    assert covered == set(range(23))


def test_answer_token_span_uses_character_offsets():
    offsets = [(0, 4), (4, 10), (10, 13), (13, 17), (17, 25)]  # "Mary  went to the kitchen"
    assert answer_token_span(offsets, 18, 25) == (4, 4)
    assert answer_token_span(offsets, 5, 13) == (1, 2)
    assert answer_token_span(offsets, 30, 33) is None


def test_best_span_respects_order_length_and_context():
    start = torch.tensor([[9.0, 0.0, 1.0, 0.0, 5.0, 0.0]])
    end = torch.tensor([[9.0, 3.0, 0.0, 0.0, 0.0, 2.0]])
    allowed = torch.tensor([[False, True, True, True, True, True]])  # position 0 plays [CLS]
    score, s, e = best_spans(start, end, allowed, max_answer_len=2)
    assert (int(s), int(e), float(score)) == (4, 5, 7.0)
    score, s, e = best_spans(start, end, allowed, max_answer_len=1)
    assert (int(s), int(e)) == (4, 4)


def test_long_contexts_become_windows_that_keep_the_answer(tmp_path):
    task = make_task(tmp_path, max_len=40, max_question_len=10, doc_stride=8,
                     story={"min_sentences": 10, "max_sentences": 14})
    io = task.prepare()
    assert io.kind == "span" and io.max_len == 40 and io.pad_id == 0
    windows = task.windows["train"]
    assert len(windows) > len(task.examples["train"])  # stories do not fit in 40 tokens
    for w in windows:
        assert len(w.ids) <= 40 and w.ids[0] == CLS and w.ids[w.context_pos - 1] == SEP and w.ids[-1] == SEP
        if w.start is not None:
            ex = task.examples["train"][w.example]
            text = ex.context[w.offsets[w.start - w.context_pos][0]: w.offsets[w.end - w.context_pos][1]].strip()
            assert text == ex.answers[0]
    batch = next(task.batches("train", 16, shuffle=False))
    assert set(batch.tensors) == {"tokens", "padding_mask", "start", "end"}
    assert batch.n_tokens == int((~batch["padding_mask"]).sum())
    assert all(windows[i].start is not None for i in batch.ids)


def test_default_stories_fit_one_window_and_gold_tokens_are_the_answer(tmp_path):
    raw = {"data": {"n_train": 200, "n_validation": 40, "n_test": 40}}  # default tokenizer and story
    task = QATask(QATask.parse_options(raw, "tasks.qa"), cache_dir=tmp_path)
    task.prepare()
    vocab = task.tokenizer.get_vocab()
    for word in PLACES + NAMES:  # one token each, so a span never cuts a word and names bind by id
        assert f"\u2581{word.lower()}" in vocab
    for split in ("train", "test"):
        windows = task.windows[split]
        assert len(windows) == len(task.examples[split])  # one window per story
        for w in windows:
            ex = task.examples[split][w.example]
            assert w.start == w.end
            assert task.tokenizer.decode(w.ids[w.start: w.end + 1]).strip() == ex.answers[0]
            name = ex.question.split()[2].rstrip("?").lower()
            assert task.tokenizer.id_to_token(w.ids[w.start - 4]) == f"\u2581{name}"  # "<name> <verb> to the <place>"
    batch = next(task.batches("train", 8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    for row, i in enumerate(batch.ids):
        w = task.windows["train"][i]
        assert (int(batch["start"][row]), int(batch["end"][row])) == (w.start, w.end)
        assert int((~batch["padding_mask"][row]).sum()) == len(w.ids)
        assert batch["tokens"][row, : len(w.ids)].tolist() == w.ids


def test_loss_is_low_exactly_when_logits_point_at_gold(tmp_path):
    task = make_task(tmp_path)
    task.prepare()
    batch = next(task.batches("train", 16, shuffle=False))
    oracle = OracleSpanModel(task, "train")
    assert task.loss(oracle, batch).item() < 0.01
    shifted = lambda tokens, mask: tuple(x.roll(1, dims=1) for x in oracle(tokens, mask))  # noqa: E731
    assert task.loss(shifted, batch).item() > 5.0


def test_options_reject_stride_that_skips_tokens(tmp_path):
    with pytest.raises(BadInputError, match="doc_stride"):
        make_task(tmp_path, max_len=40, max_question_len=10, doc_stride=30)


# ---- evaluation and training ----------------------------------------------------------


class OracleSpanModel(nn.Module):
    """Puts all logit mass on the gold span of each window (targets looked up by token row)."""

    def __init__(self, task: QATask, split: str):
        super().__init__()
        self.gold = {tuple(w.ids): (w.start, w.end) for w in task.windows[split]}

    def forward(self, tokens, padding_mask):
        start = torch.zeros(tokens.shape, dtype=torch.float)
        end = torch.zeros(tokens.shape, dtype=torch.float)
        for row in range(tokens.shape[0]):
            ids = tuple(tokens[row][~padding_mask[row]].tolist())
            s, e = self.gold[ids]
            if s is not None:
                start[row, s] = end[row, e] = 10.0
        return start, end


def test_oracle_scores_100_across_windows_and_predictions_recompute(tmp_path):
    task = make_task(tmp_path, max_len=40, max_question_len=10, doc_stride=8,
                     story={"min_sentences": 8, "max_sentences": 14})
    task.prepare()
    result = task.evaluate(OracleSpanModel(task, "test"), "test", batch_size=7, device=torch.device("cpu"))
    assert result.metrics["exact_match"] == 100.0 and result.metrics["f1"] == 100.0
    assert len(result.predictions) == len(task.examples["test"])
    row = result.predictions[0]
    assert {"id", "input", "prediction", "references"} <= set(row)
    recomputed = squad_metric.squad_scores([p["prediction"] for p in result.predictions],
                                           [p["references"] for p in result.predictions])
    assert recomputed["f1"] == result.metrics["f1"]
    assert any(name.startswith("f1_dist_") for name in result.metrics)


def test_training_lowers_loss_and_evaluate_runs_without_grad(tmp_path):
    task = make_task(tmp_path)
    io = task.prepare()
    torch.manual_seed(0)
    model = TinySpanModel(io.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        for batch in task.batches("train", 32, shuffle=True, generator=generator):
            loss = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # evaluation as the runner does it: eval mode and no gradients are core's job
    result = evaluate_split(task, model, "validation", TrainConfig(eval_batch_size=16), torch.device("cpu"))
    assert 0.0 <= result.metrics["exact_match"] <= result.metrics["f1"] <= 100.0
    assert all(p["prediction"] for p in result.predictions)  # every question gets a span


def test_prepare_is_idempotent_and_tokenizer_cached(tmp_path):
    task = make_task(tmp_path)
    first = task.prepare()
    assert task.prepare() is first
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 1
    again = make_task(tmp_path)
    assert again.prepare().vocab_size == first.vocab_size


# ---- datasets path: column mapping, shared source split carved by article -------------


def write_squad_like(path, n_articles=4, per_article=5):
    rows = []
    for a in range(n_articles):
        context = f"Article {a} says the capital of land {a} is city{a} and its river is river{a}."
        for q in range(per_article):
            answer = f"city{a}" if q % 2 == 0 else f"river{a}"
            rows.append({"qid": f"a{a}q{q}", "title": f"T{a}", "context": context,
                         "question": f"What is named {q} in land {a}?",
                         "answers": {"text": [answer], "answer_start": [context.index(answer)]}})
    path.mkdir()
    with gzip.open(path / "validation.jsonl.gz", "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def test_shared_source_split_is_carved_by_article_with_column_mapping(tmp_path):
    write_squad_like(tmp_path / "squad")
    data = {"source": "datasets", "path": str(tmp_path / "squad"), "columns": {"id": "qid"},
            "splits": {"train": "validation", "validation": "validation", "test": "validation"},
            "n_train": 7, "n_validation": 3, "n_test": None}
    task = make_task(tmp_path, data=data, tokenizer={"vocab_size": 120, "min_frequency": 1})
    task.prepare()
    titles = {split: {ex.id.split("q")[0] for ex in exs} for split, exs in task.examples.items()}
    # train: 7 rows = article 0 + 2 of article 1; the rest of article 1 is skipped.
    assert [len(task.examples[s]) for s in ("train", "validation", "test")] == [7, 3, 5]
    assert titles == {"train": {"a0", "a1"}, "validation": {"a2"}, "test": {"a3"}}


def test_carving_needs_limits_and_enough_rows(tmp_path):
    write_squad_like(tmp_path / "squad")
    base = {"source": "datasets", "path": str(tmp_path / "squad"), "columns": {"id": "qid"},
            "splits": {"train": "validation", "validation": "validation", "test": "validation"}}
    with pytest.raises(BadInputError, match="n_train"):
        make_task(tmp_path, data=base | {"n_train": None}).prepare()
    with pytest.raises(BadInputError, match="no rows left"):
        make_task(tmp_path, data=base | {"n_train": 20}).prepare()


def test_missing_column_is_named(tmp_path):
    write_squad_like(tmp_path / "squad")
    data = {"source": "datasets", "path": str(tmp_path / "squad"),
            "splits": {"train": "validation", "validation": "validation", "test": "validation"}}
    with pytest.raises(BadInputError, match=r"tasks\.qa\.data\.columns.*'id'"):
        make_task(tmp_path, data=data).prepare()


def test_registered_through_entry_point():
    from attnbench.plugin_host import get_host

    assert get_host().task.get("qa").factory is QATask


def test_trains_with_the_transformer_family(tmp_path):
    from attnbench.plugin_host import get_host

    host = get_host()
    assert "span" in host.model.get("transformer").factory.kinds
    family_cls = host.model.get("transformer").factory
    family = family_cls(family_cls.parse_options({}))
    family.validate(host)
    task = make_task(tmp_path)
    io = task.prepare()
    torch.manual_seed(0)
    model = family.build(io, ModelDims(d_model=32, n_layers=1, n_heads=2, dropout=0.0), host)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = list(task.batches("train", 32, shuffle=False))[:4]
    first = [task.loss(model, b).item() for b in batches]
    for _ in range(4):
        for batch in batches:
            loss = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    last = [task.loss(model, b).item() for b in batches]
    assert sum(last) < sum(first)
    result = evaluate_split(task, model, "validation", TrainConfig(eval_batch_size=32), torch.device("cpu"))
    assert 0.0 <= result.metrics["f1"] <= 100.0


# ---- span models: what they see of the question, and the end conditioned on the start --


def test_question_match_flags_the_asked_name_where_the_answer_follows(tmp_path):
    from attnbench.plugins.models.span_head import in_question, question_mask

    task = make_task(tmp_path, story={"stale_moves": False, "n_people": 3, "min_sentences": 2, "max_sentences": 8})
    task.prepare()
    windows = task.windows["train"][:32]
    batch = collate_for_models(windows)
    tokens, mask = batch["tokens"], batch["padding_mask"]
    question, flagged = question_mask(tokens, mask, SEP), in_question(tokens, mask, SEP)
    for row, w in enumerate(windows):
        assert question[row].nonzero().flatten().tolist() == list(range(1, w.context_pos - 1))
        q_ids = set(w.ids[1: w.context_pos - 1])
        expected = [w.context_pos <= i < len(w.ids) - 1 and t in q_ids for i, t in enumerate(w.ids)]
        expected += [False] * (tokens.shape[1] - len(w.ids))
        assert flagged[row].tolist() == expected
        # The asked person occurs once in the story: the flag marks the supporting fact, whose
        # place (the gold span) sits 4 tokens later, "<name> went to the <place>".
        assert flagged[row].nonzero().flatten().tolist() == [w.start - 4]


def collate_for_models(windows):
    from attnbench.plugins.tasks.qa import collate

    return collate(windows, list(range(len(windows))))


def test_question_match_adds_its_vector_on_flagged_positions_only():
    from attnbench.plugins.models.span_head import QuestionMatch

    match = QuestionMatch(4, sep_id=SEP, init_std=1.0)
    tokens = torch.tensor([[CLS, 7, 8, SEP, 9, 8, 7, SEP, 0]])
    out = match(tokens, tokens == 0)
    flagged = [i for i in range(tokens.shape[1]) if out[0, i].abs().sum() > 0]
    assert flagged == [5, 6]  # context tokens 8 and 7 repeat question tokens; 9, [SEP], padding do not
    torch.testing.assert_close(out[0, 5], match.vector)


def test_end_logits_condition_on_the_start():
    from attnbench.plugins.models.span_head import SpanHead

    torch.manual_seed(0)
    h = torch.randn(1, 8, 6) * 0.1
    h[0, 2, 0] = h[0, 5, 1] = 5.0  # feature 0 marks position 2, feature 1 position 5
    mask = torch.zeros(1, 8, dtype=torch.bool)
    tokens = torch.full((1, 8), 9)
    heads = [SpanHead(6, sep_id=None) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    with torch.no_grad():
        for head, feature in zip(heads, (0, 1)):
            head.start_question.weight.zero_()
            head.start_linear.weight.zero_()
            head.start_linear.weight[0, feature] = 10.0  # start peaks at position 2, resp. 5
    (start_a, end_a), (start_b, end_b) = (head(h, tokens, mask) for head in heads)
    assert int(start_a.argmax()) == 2 and int(start_b.argmax()) == 5
    assert not torch.allclose(end_a, end_b)  # only the start differs, and the end follows it
    with torch.no_grad():
        for head in heads:
            head.end_question.weight[:, 6:].zero_()  # cut the start summary out of the end head
    torch.testing.assert_close(heads[0](h, tokens, mask)[1], heads[1](h, tokens, mask)[1])


@pytest.mark.parametrize("family,raw,has_match", [
    ("transformer", {}, True), ("transformer", {"question_match": False}, False),
    ("rnn", {}, True), ("rnn", {"question_match": False}, False)])
def test_span_models_shapes_and_question_match_option(family, raw, has_match):
    from attnbench import TaskIO
    from attnbench.plugin_host import get_host

    host = get_host()
    cls = host.model.get(family).factory
    fam = cls(cls.parse_options(raw))
    if hasattr(fam, "validate"):
        fam.validate(host)
    io = TaskIO(kind="span", vocab_size=20, max_len=16, extra={"cls_id": CLS, "sep_id": SEP})
    model = fam.build(io, ModelDims(d_model=16, n_layers=1, n_heads=2, dropout=0.0), host).eval()
    assert (getattr(model, "question_match", None) is not None) == has_match
    tokens = torch.tensor([[CLS, 7, 8, SEP, 9, 8, 7, SEP, 0, 0], [CLS, 9, SEP, 10, 11, 9, 12, 13, 14, SEP]])
    mask = tokens == 0
    start, end = model(tokens, mask)
    assert start.shape == end.shape == (2, 10)
    assert torch.all(start[mask] < -1e30) and torch.all(end[mask] < -1e30)
    assert torch.isfinite(start[~mask]).all() and torch.isfinite(end[~mask]).all()
