"""Shared fixtures: an isolated MLflow store per test and helpers to fake plugin distributions."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from attnbench import plugin_host

# Tiny models gain nothing from intra-op threads, and spinning threads on a busy machine
# slow them down by an order of magnitude.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_to_the_checkout():
    """Tests write to temp dirs only: no store or artifact folder appears in the repository."""
    watched = [REPO / name for name in ("mlruns", "mlartifacts", "mlflow.db", ".attnbench_cache")]
    before = {p for p in watched if p.exists()}
    yield
    appeared = sorted(str(p.relative_to(REPO)) for p in watched if p.exists() and p not in before)
    assert not appeared, f"the test suite wrote {appeared} into the checkout; use tmp_path / the workdir fixture"


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Discovery results are cached per process; every test starts from a clean discovery."""
    plugin_host.reset_cache()
    yield
    plugin_host.reset_cache()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder with its own SQLite store and cache, like a fresh user checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ATTNBENCH_PLUGINS", raising=False)
    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, migrated once per session (migrations take ~10 s)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(workdir, migrated_store):
    """A real SQLite tracking store of this test's own (a copy of the migrated template)."""
    shutil.copyfile(migrated_store, workdir / "mlflow.db")
    return f"sqlite:///{workdir / 'mlflow.db'}"


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """Install a throwaway plugin distribution (module + dist-info with entry points) on sys.path.

    ``plugin_dist("my-dist", {"my_mod": "source"}, {"ep_name": "my_mod"})`` makes
    ``importlib.metadata`` see a real ``attnbench`` entry point, the path pip-installed
    third-party plugins take."""
    root = tmp_path / "site"
    root.mkdir(exist_ok=True)
    monkeypatch.syspath_prepend(str(root))

    def make(dist_name: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
        for module, source in modules.items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist_name.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
        eps = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[attnbench]\n{eps}\n")
        return root

    return make


def write_grid(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path
