"""train.group_by_length: shuffled batches of similar length, for every built-in task, and a
clear refusal for a task that cannot tell its examples' lengths."""

from __future__ import annotations

import math
import random

import pytest
import torch

from attnbench import SplitTask
from attnbench.config import expand_grid, load_experiment
from attnbench.data import length_grouped_batches
from attnbench.options import OptionsError
from attnbench.plugin_host import discover, get_host
from attnbench.run.preflight import preflight

from conftest import write_grid


def padded_share(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of a batch's padded positions that hold a real token, over all batches."""
    real = sum(lengths[i] for b in batches for i in b)
    return real / sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_grouped_batches_hold_every_example_once_and_pad_little():
    rng = random.Random(0)
    lengths = [rng.randint(5, 50) for _ in range(1000)]
    grouped = length_grouped_batches(lengths, 32, generator=torch.Generator().manual_seed(1))
    assert sorted(i for b in grouped for i in b) == list(range(1000))
    assert len(grouped) == math.ceil(1000 / 32) and sum(len(b) < 32 for b in grouped) == 1
    again = length_grouped_batches(lengths, 32, generator=torch.Generator().manual_seed(1))
    other = length_grouped_batches(lengths, 32, generator=torch.Generator().manual_seed(2))
    assert grouped == again and grouped != other
    random_batches = [list(range(i, min(i + 32, 1000))) for i in range(0, 1000, 32)]
    assert padded_share(grouped, lengths) > 0.95 > 0.7 > padded_share(random_batches, lengths)
    # the order of batches stays random: not shortest first
    means = [sum(lengths[i] for i in b) / len(b) for b in grouped]
    assert means != sorted(means) and means != sorted(means, reverse=True)


TASKS = [
    ("translation", {"data": {"n_train": 96, "n_validation": 4, "n_test": 4}}, "src_padding_mask"),
    ("sentiment", {"data": {"n_train": 96, "n_validation": 4, "n_test": 4}, "tokenizer": {"vocab_size": 120}},
     "padding_mask"),
    ("qa", {"data": {"n_train": 96, "n_validation": 4, "n_test": 4}}, "padding_mask"),
    ("reverse", {"min_len": 2, "max_len": 20, "n_train": 96, "n_validation": 4, "n_test": 4}, "src_padding_mask"),
    ("listops", {"min_length": 8, "max_length": 60, "max_depth": 3, "n_train": 96, "n_validation": 4, "n_test": 4},
     "padding_mask"),
]


@pytest.mark.parametrize("name, options, mask", TASKS, ids=[t[0] for t in TASKS])
def test_built_in_tasks_group_by_length(tmp_path, name, options, mask):
    task_cls = discover().task.get(name).factory
    task = task_cls(task_cls.parse_options(options, f"tasks.{name}"), cache_dir=tmp_path)
    task.prepare()
    assert isinstance(task, SplitTask)

    def epoch(group: bool):
        g = torch.Generator().manual_seed(0)
        batches = list(task.batches("train", 8, shuffle=True, generator=g, **({"group_by_length": True} if group else {})))
        padding = sum(int(b[mask].sum()) for b in batches)
        return sorted(i for b in batches for i in b.ids), len(batches), padding

    grouped_ids, grouped_n, grouped_padding = epoch(True)
    random_ids, random_n, random_padding = epoch(False)
    # the same examples (for qa: the windows that hold their answer) and as many steps
    assert grouped_ids == random_ids and grouped_n == random_n == task.num_batches("train", 8)
    assert len(task.example_lengths("train")) == len(grouped_ids)
    if name == "listops":  # always grouped: its lengths span 10x
        assert grouped_padding == random_padding
    else:
        assert grouped_padding < 0.5 * random_padding


GRID = """
name: grouping
grid:
  task: [toy]
  model: [{family: rnn, cell: gru}]
model: {d_model: 8, n_layers: 1, n_heads: 2, dropout: 0.0}
train: {epochs: 1, batch_size: 16, save_checkpoint: false}
tasks:
  toy: {n_train: 32}
"""


def test_group_by_length_is_refused_before_training_for_a_task_without_lengths(workdir, monkeypatch):
    monkeypatch.setenv("ATTNBENCH_CACHE", str(workdir / "cache"))
    host = get_host(["attnbench_test_plugins"])
    path = write_grid(workdir / "g.yaml", GRID)
    specs = expand_grid(load_experiment(path)[0], host)
    assert preflight(specs, host).steps  # off (the default): the toy task trains as before
    grouped = expand_grid(load_experiment(path, ["train.group_by_length=true"])[0], host)
    with pytest.raises(OptionsError) as caught:
        preflight(grouped, host)
    message = str(caught.value)
    assert "train.group_by_length" in message and "'toy'" in message and "set it to false" in message
    # a result-changing setting: in the run_key when on, absent at its default (old keys stay valid)
    explicit_off = expand_grid(load_experiment(path, ["train.group_by_length=false"])[0], host)
    assert explicit_off[0].run_key == specs[0].run_key != grouped[0].run_key
