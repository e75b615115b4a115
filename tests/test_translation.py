"""Translation task: generator, decoding, sacrebleu metrics, length buckets, attention fallbacks."""

import gzip
import json

import pytest
import sacrebleu
import torch

from attnbench import Attention, ModelDims
from attnbench.attention import capture_attention_maps
from attnbench.errors import BadInputError
from attnbench.plugin_host import discover
from attnbench.plugins.attention.multihead import MultiHeadAttention
from attnbench.plugins.tasks import synthetic_translation
from attnbench.plugins.tasks.seq2seq_decoding import beam_search, greedy_search
from attnbench.plugins.tasks.translation import TranslationTask, bucket_names

torch.set_num_threads(1)
DIMS = ModelDims(d_model=32, n_layers=1, n_heads=4, dropout=0.0)
CPU = torch.device("cpu")


def make_task(tmp_path, **raw):
    raw.setdefault("data", {"n_train": 200, "n_validation": 20, "n_test": 40})
    return TranslationTask(TranslationTask.parse_options(raw, "tasks.translation"), cache_dir=tmp_path)


def build(task, family_name="transformer", raw=None, host=None):
    host = host or discover()
    cls = host.model.get(family_name).factory
    family = cls(cls.parse_options(raw or {}))
    torch.manual_seed(0)
    return family, family.build(task.prepare(), DIMS, host)


def train_steps(task, model, steps, lr=3e-3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    batch = next(task.batches("train", 32, shuffle=True, generator=torch.Generator().manual_seed(0)))
    losses = []
    model.train()
    for _ in range(steps):
        loss = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------ generator


def test_generator_is_deterministic_and_moves_the_verb_to_the_end():
    rows = synthetic_translation.generate(300, seed=5, split="train")
    assert rows == synthetic_translation.generate(300, seed=5, split="train")
    assert rows != synthetic_translation.generate(300, seed=6, split="train")
    back = {v: k for k, v in synthetic_translation.LEXICON.items()}
    assert len(back) == len(synthetic_translation.LEXICON), "the dictionary must be one-to-one"
    for row in rows:
        source, target = row["source"].split(), [back[w] for w in row["target"].split()]
        assert source[0] in synthetic_translation.VERBS
        assert target == source[1:] + source[:1]
    lengths = [len(r["source"].split()) for r in rows]
    for name, low, high in bucket_names([10, 20, 30]):
        assert sum(low <= n <= high for n in lengths) >= 30, f"too few sources in {name}"


def test_bucket_names_follow_the_edges():
    assert [n for n, *_ in bucket_names([10, 20, 30])] == ["bleu_len_1_10", "bleu_len_11_20", "bleu_len_21_30", "bleu_len_31_inf"]
    with pytest.raises(BadInputError, match=r"tasks\.translation\.length_buckets: .*strictly increasing"):
        TranslationTask.parse_options({"length_buckets": [20, 10]}, "tasks.translation")
    with pytest.raises(BadInputError, match=r"tasks\.translation\.decode\.strategy"):
        TranslationTask.parse_options({"decode": {"strategy": "sampling"}}, "tasks.translation")


# ------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_beam_of_size_one_equals_greedy(tmp_path, family):
    task = make_task(tmp_path)
    _, model = build(task, family)
    train_steps(task, model, 10)
    model.eval()
    batch = next(task.batches("test", 40, shuffle=False))
    src, mask = batch["src"], batch["src_padding_mask"]
    max_lens = (~mask).sum(1) + 5
    ids = dict(bos_id=task.io.bos_id, eos_id=task.io.eos_id, pad_id=task.io.pad_id)
    greedy = greedy_search(model, src, mask, max_lens, **ids)
    assert greedy_search(model, src, mask, max_lens, **ids) == greedy
    assert beam_search(model, src, mask, max_lens, beam_size=1, **ids) == greedy
    assert all(len(out) <= int(limit) for out, limit in zip(greedy, max_lens))
    wide = beam_search(model, src, mask, max_lens, beam_size=4, **ids)
    assert len(wide) == 40 and all(len(out) <= int(limit) for out, limit in zip(wide, max_lens))
    assert not any(t in (task.io.bos_id, task.io.pad_id, task.io.eos_id) for out in wide for t in out)


def test_beam_search_output_does_not_depend_on_batch_neighbours(tmp_path):
    task = make_task(tmp_path)
    _, model = build(task)
    train_steps(task, model, 10)
    model.eval()
    batch = next(task.batches("test", 8, shuffle=False))
    src, mask = batch["src"], batch["src_padding_mask"]
    max_lens = (~mask).sum(1) + 5
    ids = dict(bos_id=task.io.bos_id, eos_id=task.io.eos_id, pad_id=task.io.pad_id, beam_size=3)
    together = beam_search(model, src, mask, max_lens, **ids)
    width = int((~mask[2]).sum())
    alone = beam_search(model, src[2:3, :width], mask[2:3, :width], max_lens[2:3], **ids)
    assert alone[0] == together[2]


def test_length_sorted_decoding_returns_translations_in_split_order(tmp_path):
    task = make_task(tmp_path)
    _, model = build(task, "rnn", {"attention": "additive"})
    train_steps(task, model, 10)
    batched = task.translate(model, "test", batch_size=7, device=CPU)
    one_by_one = task.translate(model, "test", batch_size=1, device=CPU)
    assert batched == one_by_one
    assert task.translate(model, "test", batch_size=7, device=CPU, use_cache=False) == batched


# -------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_logged_bleu_is_recomputable_from_predictions(tmp_path, strategy):
    task = make_task(tmp_path, decode={"strategy": strategy, "beam_size": 2})
    _, model = build(task)
    train_steps(task, model, 15)
    ev = task.evaluate(model, "test", batch_size=16, device=CPU)
    hyps = [p["prediction"] for p in ev.predictions]
    refs = [p["reference"] for p in ev.predictions]
    assert len(ev.predictions) == 40 and {"id", "input", "prediction", "reference"} <= set(ev.predictions[0])
    assert ev.metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert ev.metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert ev.metrics["bleu_lc"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score)
    assert "|case:lc|" in ev.tags["sacrebleu.bleu_lc_signature"]
    for name, low, high in bucket_names([10, 20, 30]):
        picked = [p for p in ev.predictions if low <= len(p["input"].split()) <= high]
        assert picked, f"test split should cover {name}"
        expected = sacrebleu.corpus_bleu([p["prediction"] for p in picked], [[p["reference"] for p in picked]]).score
        assert ev.metrics[name] == pytest.approx(expected)
    assert ev.tags["sacrebleu.signature"].startswith("nrefs:1|")
    assert sum(b["examples"] for b in json.loads(ev.artifacts["length_buckets.json"]).values()) == 40


def test_references_are_the_raw_target_text(tmp_path):
    task = make_task(tmp_path)
    task.prepare()
    assert task.tokenizer.decode(task.targets["test"][0], skip_special_tokens=True) == task.examples["test"][0]["target"]


def test_attention_examples_name_the_source_and_the_decoders_input(tmp_path):
    task = make_task(tmp_path)
    (tokens, batch), = task.attention_examples(1)
    src, tgt_in = batch["src"][0], batch["tgt_in"][0]
    assert tokens.source == [task.tokenizer.id_to_token(int(t)) for t in src]
    assert tokens.target == [task.tokenizer.id_to_token(int(t)) for t in tgt_in]
    assert tokens.target[0] == "[BOS]" and tokens.target[-1] != "[EOS]"  # tgt_in: what the decoder reads


def test_attention_modules_are_named_by_the_side_they_sit_on(tmp_path):
    # maps, heads/* metrics and state dicts name each module; decoder ones must not read as encoder-less "blocks.N"
    task = make_task(tmp_path)
    _, model = build(task)
    (_, batch), = task.attention_examples(1)
    model.eval()
    with torch.no_grad(), capture_attention_maps(model) as maps:
        model(batch["src"], batch["src_padding_mask"], batch["tgt_in"])
    named = dict(zip([name for name, _ in maps], maps.roles))
    assert named == {"encoder.blocks.0.self_attn": "self", "decoder.blocks.0.self_attn": "causal",
                     "decoder.blocks.0.cross_attn": "cross"}


def test_a_few_training_steps_lower_the_loss(tmp_path):
    task = make_task(tmp_path)
    for family, raw in (("transformer", {}), ("rnn", {}), ("rnn", {"attention": "additive"})):
        _, model = build(task, family, raw)
        losses = train_steps(task, model, 15)
        assert losses[-1] < 0.8 * losses[0], (family, raw)


# ------------------------------------------------------------------------ models and tags


def test_rnn_seq2seq_has_no_attention(tmp_path):
    family, model = build(make_task(tmp_path), "rnn")
    assert not [m for m in model.modules() if isinstance(m, Attention)]
    assert family.tags()["attention"] == "none"


class NoCrossAttention(MultiHeadAttention):
    """Test-only variant that claims it cannot attend to another sequence."""

    supports_cross = False


class NoCausalAttention(MultiHeadAttention):
    """Test-only variant that claims it cannot mask the future."""

    supports_causal = False


def test_fallbacks_are_used_and_recorded(tmp_path):
    host = discover()
    host.attention.register("nocross", NoCrossAttention, plugin="tests")
    host.attention.register("nocausal", NoCausalAttention, plugin="tests")
    task = make_task(tmp_path)

    family, model = build(task, raw={"attention": "nocross"}, host=host)
    assert family.tags()["attention_fallback"] == "cross->multihead"
    block = model.decoder.blocks[0]
    assert type(block.cross_attn) is MultiHeadAttention
    assert type(block.self_attn) is NoCrossAttention
    assert type(model.encoder.blocks[0].self_attn) is NoCrossAttention

    family, model = build(task, raw={"attention": "nocausal"}, host=host)
    assert family.tags()["attention_fallback"] == "decoder_self->multihead"
    assert type(model.decoder.blocks[0].self_attn) is MultiHeadAttention

    family, _ = build(task, raw={"attention": "multihead"}, host=host)
    assert "attention_fallback" not in family.tags()


# ------------------------------------------------------------------------------------ data


def test_loads_local_files_with_column_mapping(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        with gzip.open(data / f"{split}.jsonl.gz", "wt") as f:
            for i in range(12):
                f.write(json.dumps({"de": f"ein hund {i}", "en": f"a dog {i}"}) + "\n")
    task = make_task(tmp_path, data={"source": "datasets", "path": str(data), "columns": {"source": "de", "target": "en"}})
    task.prepare()
    assert task.examples["test"][3] == {"id": "test-3", "source": "ein hund 3", "target": "a dog 3"}
    missing = make_task(tmp_path, data={"source": "datasets", "path": str(data)})
    with pytest.raises(BadInputError, match=r"columns: dataset has no column\(s\) \['source', 'target'\]"):
        missing.prepare()
