"""Pictures: attention maps, training curves, grid-level plots and the per-run logging hook."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from attnbench import capture_attention_maps
from attnbench.compare import plots
from attnbench.run import pictures
from attnbench.compare.summary import summarize
from attnbench.run.record import RunRecord
from attnbench.plugins.attention.multihead import MultiHeadAttention

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TwoLayers(nn.Module):
    def __init__(self, d_model=16, n_heads=2):
        super().__init__()
        self.layers = nn.ModuleList(MultiHeadAttention(d_model, n_heads) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)[0]
        return x


def captured_maps(length=5):
    torch.manual_seed(0)
    model = TwoLayers().eval()
    with torch.no_grad(), capture_attention_maps(model) as maps:
        model(torch.randn(1, length, 16))
    return maps


def test_attention_map_figure_is_a_layer_by_head_grid_with_tokens(tmp_path):
    tokens = ["the", "cat", "sat", "down", "."]
    fig = pictures.attention_map_figure(captured_maps(len(tokens)), tokens)
    axes = fig.get_axes()
    assert len(axes) == 2 * 2
    assert [t.get_text() for t in axes[0].get_xticklabels()] == tokens
    assert [t.get_text() for t in axes[2].get_yticklabels()] == tokens  # layer 1, head 0
    assert not axes[-1].get_xticklabels() and not axes[-1].get_yticklabels()  # heads share the row's labels
    assert "layers.1" in axes[-1].get_title() and "head 1" in axes[-1].get_title()
    path = pictures.save_png(fig, tmp_path / "maps" / "att.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_attention_map_axes_stay_unlabelled_when_tokens_do_not_fit():
    fig = pictures.attention_map_figure(np.full((1, 2, 3, 4), 0.25), ["a", "b"])
    assert all(not ax.get_xticklabels() or ax.get_xticklabels()[0].get_text() != "a" for ax in fig.get_axes())
    with pytest.raises(ValueError, match="no attention maps"):
        pictures.attention_map_figure([], ["a"])
    with pytest.raises(ValueError, match="layers, heads"):
        pictures.attention_map_figure(np.zeros((2, 2)), ["a"])


def test_training_curves_draw_every_train_and_val_series():
    history = {"train/loss": [(s, 1.0 / (s + 1)) for s in range(10)],
               "val/accuracy": [(0, 0.5), (1, 0.7)], "val/macro_f1": [(0, 0.4), (1, 0.6)],
               "perf/params": [(0, 10.0)]}
    fig = pictures.training_curves_figure(history)
    train_ax, val_ax = fig.get_axes()
    assert len(train_ax.lines) == 1 and len(val_ax.lines) == 2
    assert list(train_ax.lines[0].get_xdata()) == list(range(10))
    with pytest.raises(ValueError, match="no train"):
        pictures.training_curves_figure({"perf/params": [(0, 1.0)]})


def test_pareto_front_keeps_exactly_the_undominated_points():
    rng = np.random.default_rng(1)
    speed, quality = rng.random(30).tolist(), rng.random(30).tolist()
    for better in (True, False):
        front = set(plots.pareto_front(speed, quality, better))
        q = quality if better else [-v for v in quality]

        def dominates(j, i):
            return speed[j] >= speed[i] and q[j] >= q[i] and (speed[j] > speed[i] or q[j] > q[i])

        for i in range(30):
            assert (i in front) == (not any(dominates(j, i) for j in range(30) if j != i))
    assert plots.pareto_front([1, 2, 3], [1, 2, 0]) == [1, 2]


def record(task, kind, model, seed, primary, value, speed, buckets=None):
    metrics = {f"test/{primary}": value, "perf/train_tokens_per_s": speed, "perf/params": 100.0, "perf/wall_s": 1.0}
    metrics.update(buckets or {})
    family = model.split("-")[0]
    return RunRecord(run_id=f"{task}{model}{seed}", name=f"{task}/{model}/seed{seed}", status="FINISHED", task=task,
                     kind=kind, family=family, attention="none" if family == "rnn" else model.split("-")[1],
                     model=model, seed=seed, run_key=f"{task}{model}{seed}", primary_metric=primary,
                     greater_is_better=True, metrics=metrics, artifact_uri="/nonexistent", parent_run_id=None,
                     baseline=family == "rnn")  # as the rnn family declares it (Tag.BASELINE)


@pytest.fixture
def comparison():
    records = []
    for seed in (0, 1):
        for model, quality, speed in (("rnn-lstm", 0.6, 900.0), ("transformer-multihead", 0.8, 500.0),
                                      ("transformer-sparse", 0.7, 300.0)):
            records.append(record("sentiment", "classification", model, seed, "accuracy", quality + seed / 100, speed))
            buckets = {"test/bleu_len_31_inf": 10 * quality, "test/bleu_len_1_10": 40 * quality,
                       "test/bleu_len_11_20": 30 * quality}
            records.append(record("translation", "seq2seq", model, seed, "bleu", 30 * quality, speed, buckets))
    return summarize(records, experiment="grid", with_significance=False)


def test_quality_vs_speed_has_a_panel_per_task_and_marks_the_front(comparison):
    fig = plots.quality_vs_speed_figure(comparison)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["sentiment", "translation"]
    front_line = next(line for line in axes[0].lines if line.get_label() == "Pareto front")
    # sparse is slower and worse than multihead: dominated, so the front joins two points.
    assert len(front_line.get_xdata()) == 2
    # models are named once, in a figure legend, not by labels that can collide or run off the edge
    assert not axes[0].texts
    (legend,) = fig.legends
    assert {t.get_text() for t in legend.get_texts()} == {
        "rnn-lstm (baseline)", "transformer-multihead", "transformer-sparse", "Pareto front"}


def test_quality_vs_speed_keeps_one_colour_per_model_and_an_honest_y_range(comparison):
    from matplotlib.colors import to_hex

    fig = plots.quality_vs_speed_figure(comparison)
    colours = []
    for ax in fig.get_axes():
        points = [c for c in ax.containers]  # one errorbar container per model, in row order
        colours.append({c.get_label().removesuffix(" (baseline)"): to_hex(c.lines[0].get_color()) for c in points})
    assert colours[0] == colours[1] and len(set(colours[0].values())) == 3
    low, high = fig.get_axes()[0].get_ylim()  # accuracies 0.6-0.81: the axis spans >= 20 % of 0.81
    assert high - low >= plots.MIN_Y_SPAN * 0.81
    assert plots.honest_ylim([39.25, 41.0], [0, 0])[1] - plots.honest_ylim([39.25, 41.0], [0, 0])[0] >= 8.2


def test_bleu_by_length_draws_one_line_per_model_over_ordered_buckets(comparison):
    fig = plots.bleu_by_length_figure(comparison)
    (ax,) = fig.get_axes()
    assert ax.get_title() == "translation"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1–10", "11–20", "31+"]
    assert {text.get_text() for text in ax.get_legend().get_texts()} == {
        "rnn-lstm", "transformer-multihead", "transformer-sparse"}
    sentiment_only = summarize([record("s", "classification", "rnn-lstm", 0, "accuracy", 0.5, 1.0)],
                               experiment="g", with_significance=False)
    assert plots.bleu_by_length_figure(sentiment_only) is None


def test_efficiency_figure_plots_stepped_metrics_per_run():
    series = {"bench/ms_per_step": {"multihead": [(128, 1.0), (256, 3.9), (512, 15.0)],
                                   "lsh": [(128, 2.0), (256, 4.1), (512, 8.0)]},
              "bench/empty": {}}
    fig = plots.efficiency_figure(series)
    (ax,) = fig.get_axes()
    assert len(ax.lines) == 2 and ax.get_xscale() == "log"
    assert plots.efficiency_figure({}) is None


def test_log_run_pictures_logs_curves_and_attention_maps(tmp_path, migrated_store):
    from mlflow.tracking import MlflowClient

    from attnbench.models import ModelDims
    from attnbench.plugin_host import get_host

    torch.set_num_threads(1)
    host = get_host()
    assert {"sentiment"} <= set(host.task.names()) and {"transformer"} <= set(host.model.names())
    task_cls, family_cls = host.task.get("sentiment").factory, host.model.get("transformer").factory
    options = task_cls.parse_options({"data": {"n_train": 200, "n_validation": 20, "n_test": 20},
                                      "tokenizer": {"vocab_size": 200}}, "tasks.sentiment")
    task = task_cls(options, cache_dir=tmp_path / "cache")
    io = task.prepare()
    model = family_cls(family_cls.parse_options({"attention": "multihead"})).build(
        io, ModelDims(d_model=16, n_layers=1, n_heads=2), host)

    class Result:
        history = {"train/loss": [(0, 1.0), (1, 0.8)], "val/accuracy": [(0, 0.5)]}

    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("pics", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    logged = pictures.log_run_pictures(client, run_id, task, model, Result())
    stored = {f.path for f in client.list_artifacts(run_id, pictures.PICTURES_DIR)}
    assert "pictures/training_curves.png" in stored and "pictures/attention_example0.png" in stored
    assert set(logged) == stored


def test_decoder_maps_are_labelled_with_the_decoders_own_tokens(tmp_path):
    # source tokens label the encoder's axes; the decoder's input (BOS + target) its own axes and
    # cross-attention's queries, by each map's recorded role, not by matching lengths
    from attnbench import ExampleTokens
    from attnbench.models import ModelDims
    from attnbench.plugin_host import get_host

    torch.manual_seed(0)
    host = get_host()
    task_cls, family_cls = host.task.get("reverse").factory, host.model.get("transformer").factory
    task = task_cls(task_cls.parse_options({"min_len": 5, "max_len": 5, "vocab": 4, "n_train": 8, "n_validation": 4,
                                            "n_test": 4}, "tasks.reverse"), cache_dir=tmp_path)
    model = family_cls(family_cls.parse_options({"attention": "multihead"})).build(
        task.prepare(), ModelDims(d_model=16, n_layers=1, n_heads=2), host)
    (tokens, batch), = task.attention_examples(1)
    assert isinstance(tokens, ExampleTokens) and tokens.target[0] == "[BOS]" and tokens.target[1:] == tokens.source[::-1]
    with torch.no_grad(), capture_attention_maps(model.eval()) as maps:
        task.loss(model, batch)
    assert maps.roles == ["self", "causal", "cross"]  # encoder, decoder self, decoder cross (one layer each)
    fig = pictures.attention_map_figure(maps, tokens)
    first_panels = fig.get_axes()[::2]  # each row's head 0 carries the row's labels
    labels = [([t.get_text() for t in ax.get_yticklabels()], [t.get_text() for t in ax.get_xticklabels()])
              for ax in first_panels]
    source, target = list(tokens.source), list(tokens.target)
    assert labels == [(source, source), (target, target), (target, source)]
