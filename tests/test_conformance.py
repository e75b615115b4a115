"""The public conformance suite, run over every registered attention variant.

Variants are enrolled by iterating the registry, so a new built-in (or a plugin loaded via
entry points) is checked without editing this file. EXTRA_OPTIONS adds small-window cases
so the sparse patterns and LSH hashing are really exercised on 12-token inputs.
"""

import pytest
import torch

from attnbench import Attention
from attnbench.errors import BadInputError
from attnbench.plugin_host import get_host
from attnbench.plugins.attention.multihead import MultiHeadAttention
from attnbench.testing import ConformanceError, check_attention, conformance_cases, run_check

torch.set_num_threads(1)

EXTRA_OPTIONS = {
    "sparse": [
        {"pattern": "local", "window": 3},
        {"pattern": "strided", "window": 2, "stride": 3},
        {"pattern": "block", "block_size": 4, "summary": 1},
    ],
    "lsh": [{"bucket_size": 2, "n_hashes": 2}, {"n_buckets": 1, "n_hashes": 1}],
}


@pytest.mark.parametrize("cls, options, check", conformance_cases(options=EXTRA_OPTIONS))
def test_registered_attention_conforms(cls, options, check):
    result = run_check(cls, check, options)
    assert result.status in ("passed", "skipped"), result.detail


def test_every_builtin_is_enrolled():
    ids = {p.id.split("-")[0] for p in conformance_cases()}
    assert {"vanilla", "multihead", "sparse", "lsh", "additive"} <= ids


# --- the suite must catch broken variants, with readable messages -------------------------


class IgnoresCausal(MultiHeadAttention):
    """Claims causal support but attends to the future."""

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        return super().forward(x, context, key_padding_mask=key_padding_mask, causal=False, need_weights=need_weights)


class SilentlyNoCross(MultiHeadAttention):
    """Says it cannot do cross-attention but quietly accepts a context (it switches off the base check)."""

    supports_cross = False

    def validate_call(self, *args, **kwargs):
        pass


class LeaksPadding(MultiHeadAttention):
    """Drops the padding mask on the floor."""

    def forward(self, x, context=None, *, key_padding_mask=None, causal=False, need_weights=False):
        return super().forward(x, context, key_padding_mask=None, causal=causal, need_weights=need_weights)


class NoDropout(MultiHeadAttention):
    def forward(self, x, context=None, **kwargs):
        was = self.dropout
        self.dropout = 0.0
        try:
            return super().forward(x, context, **kwargs)
        finally:
            self.dropout = was


class ForgetsThePast(MultiHeadAttention):
    """Claims incremental decoding but attends only to the newest position."""

    def forward_step(self, x, cache):
        return super().forward_step(x, {})


@pytest.mark.parametrize("cls, check, words", [
    (IgnoresCausal, "causal", "later position"),
    (ForgetsThePast, "incremental", "one step at a time vs forward(causal=True)"),
    (SilentlyNoCross, "cross", "supports_cross=False but the call succeeded"),
    (LeaksPadding, "padding", "non-padded outputs after changing padded inputs"),
    (NoDropout, "dropout", "changed nothing"),
])
def test_suite_reports_broken_variants(cls, check, words):
    result = run_check(cls, check)
    assert result.status == "failed"
    assert result.detail.startswith(f"[{check}]") and words in result.detail


def test_check_attention_raises_one_error_listing_failures():
    with pytest.raises(ConformanceError) as info:
        check_attention(IgnoresCausal)
    message = str(info.value)
    assert "IgnoresCausal failed" in message and "[causal]" in message and "[weights]" in message


def test_check_attention_returns_results_for_a_good_variant():
    results = check_attention(MultiHeadAttention)
    assert {r.check for r in results} >= {"shapes", "causal", "gradients", "batch"}
    assert all(r.status == "passed" for r in results)


def test_third_party_plugin_is_enrolled(monkeypatch, tmp_path):
    """A --plugin module's attention appears in the cases and is checked like a built-in."""
    from attnbench import plugin_host

    module = tmp_path / "my_attention_plugin.py"
    module.write_text(
        "from attnbench import hookimpl\n"
        "from attnbench.plugins.attention.multihead import MultiHeadAttention\n"
        "class Mine(MultiHeadAttention):\n    pass\n"
        "@hookimpl\ndef register_attention(register):\n    register('mine', Mine)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    host = plugin_host.discover(["my_attention_plugin"])
    cases = conformance_cases(host)
    mine = [c for c in cases if c.id.startswith("mine-")]
    assert len(mine) == len(conformance_cases(host)) // len(host.attention)
    cls, options, check = mine[0].values
    assert issubclass(cls, Attention) and run_check(cls, check, options).status == "passed"


# --- tasks and model families: every registered one, through the public helpers --------------

from attnbench.plugin_host import get_host  # noqa: E402
from attnbench.testing import check_model_family, check_task  # noqa: E402

# Lengths chosen per family by its author: long enough to reach bucketed/chunked paths.
FAMILY_LENGTHS = {"transformer": (5, 40), "rnn": (5, 40)}


def _small(cls) -> dict:
    """Small data for tasks that take a ``data`` section (sizes only; everything else default)."""
    return {"data": {"n_train": 48, "n_validation": 8, "n_test": 8}} if "data" in cls.Options.model_fields else {}


@pytest.mark.parametrize("name", [r.name for r in sorted(get_host().task, key=lambda r: r.name)])
def test_registered_task_conforms(name, tmp_path):
    cls = get_host().task.get(name).factory
    check_task(cls, _small(cls), cache_dir=tmp_path)


@pytest.mark.parametrize("name", [r.name for r in sorted(get_host().model, key=lambda r: r.name)])
def test_registered_model_family_conforms(name):
    check_model_family(get_host().model.get(name).factory, lengths=FAMILY_LENGTHS.get(name, (12,)))


def test_task_and_family_checks_catch_broken_plugins(tmp_path):
    reverse = get_host().task.get("reverse").factory

    class LossWithoutGradient(reverse):
        def loss(self, model, batch):
            return torch.tensor(1.0, requires_grad=True)

    with pytest.raises(ConformanceError, match=r"\[loss\] the loss does not reach any model parameter"):
        check_task(LossWithoutGradient, _small(reverse), cache_dir=tmp_path)

    family = get_host().model.get("rnn").factory

    class WrongShape(family):
        kinds = ("classification",)

        def build(self, io, dims, host):
            model = super().build(io, dims, host)
            return lambda tokens, pad: model(tokens, pad)[:, :1]

    with pytest.raises(ConformanceError, match=r"\[classification@5\] logits: expected shape \(2, 3\), got \(2, 1\)"):
        check_model_family(WrongShape, lengths=(5,))


# --- the call contract lives on the base class ------------------------------------------------


@pytest.mark.parametrize("cls", [pytest.param(reg.factory, id=reg.name) for reg in get_host().attention])
def test_base_class_checks_every_call_of_every_variant(cls):
    """Every registered variant refuses a wrong input width and every capability its flags deny."""
    module = cls(16, 2).eval()
    x = torch.randn(2, 5, 16)
    with pytest.raises(BadInputError, match=rf"{cls.__name__}\.forward: x must have shape \(batch, length, 16\)"):
        module(torch.randn(2, 5, 8))
    if cls.supports_padding_mask:
        with pytest.raises(BadInputError, match="key_padding_mask must be a bool tensor of shape \\(2, 5\\)"):
            module(x, key_padding_mask=torch.zeros(2, 5))
    for flag, kwargs in (("supports_cross", {"context": torch.randn(2, 3, 16)}), ("supports_causal", {"causal": True}),
                         ("supports_padding_mask", {"key_padding_mask": torch.zeros(2, 5, dtype=torch.bool)})):
        if not getattr(cls, flag):
            with pytest.raises(BadInputError, match=f"{flag}=False"):
                module(x, **kwargs)


def test_a_flag_denies_what_forward_never_sees():
    """A subclass that only flips a flag is refused by the base before its forward runs."""

    class NoCross(MultiHeadAttention):
        supports_cross = False

    with pytest.raises(BadInputError, match="NoCross.forward: context: cross-attention is not supported"):
        NoCross(16, 2)(torch.randn(1, 4, 16), torch.randn(1, 3, 16))
    assert run_check(NoCross, "cross").status == "skipped"


def test_example_plugin_conforms():
    """The example third-party plugin, written on the base-class helpers, passes the whole suite."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "attnbench-example-plugin" / "attnbench_example_plugin.py"
    spec = importlib.util.spec_from_file_location("attnbench_example_plugin_under_test", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = check_attention(example.LinearAttention)
    assert {r.check: r.status for r in results}["causal"] == "skipped"
    assert all(r.status in ("passed", "skipped") for r in results)
