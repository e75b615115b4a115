"""What a new user hits on a first run: compare with no argument, the closing hint, ``ui``
shutdown and options, help text, the plugins listing, plugin loading and clashes, skipped
pairings, short run names, one precision per table column."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnbench.cli import app
from attnbench.plugin_host import discover

from conftest import REPO, write_grid

GRID = """
name: firstrun
grid:
  task: [toy]
  model:
    - {family: rnn, cell: gru}
    - {family: transformer, attention: multihead}
  seed: [0, 1]
model: {d_model: 16, n_layers: 1, n_heads: 2, dropout: 0.0}
train: {epochs: 1, batch_size: 16, save_checkpoint: false}
tasks:
  toy: {n_train: 32}
"""


# ---------------------------------------------------------------- compare, closing hint


def test_compare_without_arguments_uses_the_default_grid(workdir):
    (workdir / "experiments").mkdir()
    shutil.copy(REPO / "experiments" / "quick.yaml", workdir / "experiments" / "quick.yaml")
    result = CliRunner().invoke(app, ["compare"])
    # it read experiments/quick.yaml (name: quick) and looked for that experiment
    assert result.exit_code == 2 and "no MLflow experiment named 'quick'" in result.output
    assert "--experiment" not in result.output.split("existing")[0]


def test_closing_hint_repeats_the_tracking_uri():
    from attnbench.cli.run import closing_hint
    from attnbench.run.tracking import TrackingConfig

    hint = closing_hint(Path("experiments/quick.yaml"), "sqlite:////tmp/my store.db", TrackingConfig())
    assert "attnbench ui --tracking-uri 'sqlite:////tmp/my store.db'" in hint
    assert "attnbench compare experiments/quick.yaml --tracking-uri 'sqlite:////tmp/my store.db'" in hint
    assert "--tracking-uri" not in closing_hint(Path("g.yaml"), None, TrackingConfig())


# ---------------------------------------------------------------- ui


SERVER = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # like a uvicorn worker
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(300)
"""


def test_ui_stops_its_whole_process_group_quietly_on_sigterm(tmp_path):
    pids = tmp_path / "pids"
    wrapper = textwrap.dedent(f"""
        import sys
        from attnbench.cli.ui import serve
        sys.exit(serve([sys.executable, "-c", {SERVER!r}, {str(pids)!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", wrapper], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    server, worker = map(int, pids.read_text().split())
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "MLflow UI stopped" in out
    assert "Traceback" not in err
    for pid in (server, worker):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_ui_port_0_picks_a_free_port_and_a_public_host_warns(workdir, monkeypatch):
    from attnbench.cli import ui as ui_cmd

    started = []
    monkeypatch.setattr(ui_cmd, "serve", lambda cmd: started.append(cmd) or 0)
    result = CliRunner().invoke(app, ["ui", "--port", "0", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    port = int(started[0][started[0].index("--port") + 1])
    assert port > 0 and f"http://0.0.0.0:{port}" in result.output
    assert "no authentication" in " ".join(result.output.split())
    quiet = CliRunner().invoke(app, ["ui"])
    assert quiet.exit_code == 0 and "authentication" not in quiet.output
    assert started[1][started[1].index("--port") + 1] == "5000"


# ---------------------------------------------------------------- help and plugins listing


@pytest.mark.parametrize("command", ["run", "compare", "plugins", "bench", "ui"])
def test_help_shows_no_bool_placeholder(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "<bool>" not in result.output and "--help" in result.output


def test_plugins_at_80_columns_keeps_module_names_whole_and_json_has_details():
    result = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["plugins"])
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for module in ("attnbench.plugins.attention.multihead", "attnbench.plugins.models.transformer",
                   "attnbench.plugins.tasks.translation"):
        assert module in result.output
    data = json.loads(CliRunner().invoke(app, ["plugins", "--json"]).output)
    multihead = next(a for a in data["attention"] if a["name"] == "multihead")
    assert "causal" in multihead["details"]
    assert "primary metric" in next(t for t in data["task"] if t["name"] == "sentiment")["details"]


# ---------------------------------------------------------------- plugin loading and clashes

CLASH = """
    from attnbench import hookimpl
    from attnbench.plugins.attention.multihead import MultiHeadAttention
    @hookimpl
    def register_attention(register):
        register("mine_first", MultiHeadAttention)
        register("multihead", MultiHeadAttention)   # clashes with the built-in
        register("mine_after", MultiHeadAttention)
"""


def test_a_clashing_plugin_registers_nothing_and_run_and_plugins_show_it(plugin_dist, workdir):
    plugin_dist("clash-dist", {"clash_mod": CLASH}, {"clash": "clash_mod"})
    host = discover()
    assert "mine_first" not in host.attention and "mine_after" not in host.attention
    failure = next(f for f in host.failures if f.plugin.startswith("clash-dist"))
    assert "nothing from clash-dist (clash_mod) was registered" in failure.error
    assert "the first one loaded keeps it" in failure.error
    listing = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["plugins"])
    assert "duplicate attention name 'multihead'" in listing.output and "--verbose" in listing.output
    verbose = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["plugins", "--verbose"])
    assert "Traceback" in verbose.output and "PluginError" in verbose.output
    write_grid(workdir / "g.yaml", GRID)
    dry = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["run", "g.yaml", "--dry-run", "--plugin", "attnbench_test_plugins"])
    assert dry.exit_code == 0 and "duplicate attention name 'multihead'" in " ".join(dry.output.split())


def test_allow_list_is_normalised_and_unmatched_entries_are_warned(plugin_dist, monkeypatch):
    source = """
        from attnbench import hookimpl
        from attnbench.plugins.attention.multihead import MultiHeadAttention
        @hookimpl
        def register_attention(register):
            register("allowed_attn", MultiHeadAttention)
    """
    plugin_dist("My_Fancy.Plugin", {"fancy_mod": source}, {"fancy_ep": "fancy_mod"})
    monkeypatch.setenv("ATTNBENCH_PLUGINS", "my-fancy-plugin, no-such-thing")
    host = discover()
    assert "allowed_attn" in host.attention
    assert host.warnings == ["ATTNBENCH_PLUGINS: 'no-such-thing' matches no installed plugin distribution or "
                             "entry point of group 'attnbench'"]
    monkeypatch.setenv("ATTNBENCH_PLUGINS", "FANCY_EP")  # the entry-point name works too
    assert "allowed_attn" in discover().attention


def test_plugin_flag_finds_modules_in_the_current_directory(workdir, monkeypatch):
    (workdir / "local_attn_plugin.py").write_text(textwrap.dedent("""
        from attnbench import hookimpl
        from attnbench.plugins.attention.multihead import MultiHeadAttention
        @hookimpl
        def register_attention(register):
            register("local_attn", MultiHeadAttention)
    """))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(workdir))])
    result = CliRunner().invoke(app, ["plugins", "--json", "--plugin", "local_attn_plugin"])
    assert result.exit_code == 0, result.output
    assert "local_attn" in [a["name"] for a in json.loads(result.output)["attention"]]
    sys.modules.pop("local_attn_plugin", None)


# ---------------------------------------------------------------- grids: exclude, skipped pairings, names


def test_exclude_and_unbuildable_pairings_are_skipped_with_a_reason(workdir, monkeypatch):
    from attnbench.plugins.models.rnn import RNNFamily

    monkeypatch.setattr(RNNFamily, "kinds", ("seq2seq",))  # an rnn that cannot classify
    text = GRID.replace("seed: [0, 1]", "seed: [0, 1]\n  exclude: [{model: transformer-multihead, seed: 1}]")
    write_grid(workdir / "g.yaml", text)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["run", "g.yaml", "--dry-run", "--plugin", "attnbench_test_plugins"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "1 runs" in out and "toy/multihead/s0" in out
    assert "2 pairings skipped" in out
    assert "family 'rnn' builds seq2seq models, not 'classification'" in out
    assert "transformer-multihead seed 1" in out and "grid.exclude" in out


def test_run_names_are_short_and_the_description_is_a_tag(tmp_path):
    from attnbench.config import expand_grid, load_experiment
    from attnbench.run.record import Tag, child_tags

    specs = expand_grid(load_experiment(write_grid(tmp_path / "g.yaml", GRID))[0], discover(["attnbench_test_plugins"]))
    assert [s.run_name for s in specs] == ["toy/gru/s0", "toy/gru/s1", "toy/multihead/s0", "toy/multihead/s1"]
    assert specs[2].description == "task toy, model transformer-multihead (family transformer), seed 0"
    tags = child_tags(parent_run_id="p", grid="g", task="toy", kind="classification", family="transformer",
                      model="transformer-multihead", seed=0, run_key="k", primary_metric="accuracy",
                      greater_is_better=True, description=specs[2].description)
    assert tags[Tag.DESCRIPTION] == specs[2].description


# ---------------------------------------------------------------- compare rendering


def test_markdown_columns_keep_one_precision():
    from attnbench.compare.render import to_markdown
    from attnbench.compare.summary import summarize
    from attnbench.run.record import RunRecord

    def record(model, value):
        return RunRecord(run_id=model, name=model, status="FINISHED", task="t", kind="classification",
                         family=model.split("-")[0], attention="none", model=model, seed=0, run_key=model,
                         primary_metric="accuracy", greater_is_better=True,
                         metrics={"test/accuracy": value, "perf/train_tokens_per_s": 10.0}, artifact_uri="/x",
                         parent_run_id=None)

    text = to_markdown(summarize([record("a-x", 1.0), record("b-y", 0.97)], experiment="e", with_significance=False))
    assert "1.00 " in text and "0.97 " in text and "0.9700" not in text
