"""Smoke tests on the real corpora in ../shared/data (Multi30k, SQuAD v1.1, SST-2, IMDB).

Each case loads a few hundred rows through the task's own loading path (``source: datasets``
with a local folder), trains a tiny model a few steps, and evaluates on a few dozen rows.
Skipped when the data folder is absent or the task plugin is not registered.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
import torch

from attnbench import ModelDims
from attnbench.plugin_host import get_host
from attnbench.config import TrainConfig
from attnbench.run.training import evaluate_split

pytestmark = pytest.mark.realdata
torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = {"n_train": 300, "n_validation": 24, "n_test": 24}
TOKENIZER = {"vocab_size": 1000}

CASES = {
    "squad": ("qa", "squad_v1", {
        # Only the dev split exists locally: the task carves it into article-aligned slices.
        "data": {"splits": {"train": "validation", "validation": "validation", "test": "validation"}},
        "max_len": 192, "doc_stride": 96,
    }),
    "sst2": ("sentiment", "sst2", {"data": {"columns": {"text": "sentence"}, "splits": {"test": "validation"}}, "max_len": 64}),
    # IMDB files are sorted by label: see balanced_imdb_folder.
    "imdb": ("sentiment", "imdb", {"data": {"columns": {"text": "text"}, "splits": {"validation": "test"}}, "max_len": 128}),
    "multi30k": ("translation", "multi30k", {
        "data": {"columns": {"source": "de", "target": "en"}}, "max_len": 40, "decode": {"strategy": "greedy"},
    }),
}


def balanced_imdb_folder(out: Path) -> Path:
    """IMDB rows run all-negative then all-positive, so ``n_train`` first rows hold one class.

    Copy the first and last rows of each real file (both classes) into a temporary folder of
    the same layout; the task still loads it through ``source: datasets, path: <folder>``."""
    out.mkdir()
    for split in ("train", "test"):
        with gzip.open(DATA / "imdb" / f"{split}.jsonl.gz", "rt", encoding="utf-8") as fh:
            lines = fh.readlines()
        half = SMALL["n_train"] // 2
        mixed = [line for pair in zip(lines[:half], lines[-half:]) for line in pair]
        with gzip.open(out / f"{split}.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(mixed)
    return out


def build_task(task_name: str, folder: str, options: dict, cache_dir: Path):
    if not (DATA / folder).is_dir():
        pytest.skip(f"real data not found: {DATA / folder} (needs the shared/ folder next to the repository)")
    path = balanced_imdb_folder(cache_dir / "imdb") if folder == "imdb" else DATA / folder
    host = get_host()
    assert task_name in host.task, f"built-in task {task_name!r} is not registered"
    task_cls = host.task.get(task_name).factory
    raw = {**options, "tokenizer": TOKENIZER,
           "data": {"source": "datasets", "path": str(path), **SMALL, **options.get("data", {})}}
    return task_cls(task_cls.parse_options(raw, f"tasks.{task_name}"), cache_dir=cache_dir), host


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_corpus_trains_a_few_steps(case, tmp_path):
    task_name, folder, options = CASES[case]
    task, host = build_task(task_name, folder, options, tmp_path)
    io = task.prepare()
    assert io.vocab_size > 100

    family_cls = host.model.get("rnn").factory
    family = family_cls(family_cls.parse_options({"cell": "gru"}))
    torch.manual_seed(0)
    model = family.build(io, ModelDims(d_model=32, n_layers=1, n_heads=2, dropout=0.0), host)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

    batches = list(task.batches("train", 16, shuffle=True, generator=torch.Generator().manual_seed(0)))[:2]
    assert batches and all(b.n_tokens > 0 for b in batches)
    before = [task.loss(model, b).item() for b in batches]
    for _ in range(4):
        for batch in batches:
            loss = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = [task.loss(model, b).item() for b in batches]
    assert all(math.isfinite(x) for x in before + after)
    assert sum(after) < sum(before), f"{case}: loss did not drop ({before} -> {after})"

    result = evaluate_split(task, model, "test", TrainConfig(eval_batch_size=16), torch.device("cpu"))
    assert math.isfinite(result.metrics[task.primary_metric])
    assert result.predictions and {"id", "input", "prediction"} <= set(result.predictions[0])
