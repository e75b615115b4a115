"""Conformance suite for attention plugins: ``from attnbench.testing import check_attention``.

Every check builds a tiny module (d_model 16, 2 heads, sequences of 12 tokens) and asserts one
promise of the :class:`attnbench.Attention` contract. Variants are judged by their capability
flags: what a flag claims must work, and what a flag denies must be refused with an error
rather than silently ignored.

Plugin authors run the whole suite on their class::

    from attnbench.testing import check_attention
    check_attention(MyAttention, {"window": 4})   # raises ConformanceError listing failures

or parametrize pytest over a registry with :func:`attention_cases` / :func:`conformance_cases`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from pydantic import BaseModel

from .attention import Attention

D_MODEL, N_HEADS, BATCH, LENGTH, CONTEXT_LENGTH = 16, 2, 3, 12, 7
ATOL = 1e-5


class ConformanceError(AssertionError):
    """A variant broke a promise of the attention contract; the message names the check."""


@dataclass
class CheckResult:
    """Outcome of one check: ``status`` is ``passed``, ``skipped`` (flag says not supported) or ``failed``."""

    check: str
    status: str
    detail: str = ""


class _Skip(Exception):
    pass


def _fail(check: str, message: str) -> None:
    raise ConformanceError(f"[{check}] {message}")


# --- helpers -------------------------------------------------------------------------------


def _options(cls: type[Attention], options) -> BaseModel:
    if isinstance(options, BaseModel):
        return options
    return cls.parse_options(options)


def _build(cls, options, *, dropout=0.0, dtype=torch.float32, seed=0) -> Attention:
    torch.manual_seed(seed)
    module = cls(D_MODEL, N_HEADS, dropout, options=_options(cls, options))
    return module.to(dtype).eval()


def _inputs(batch=BATCH, length=LENGTH, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, D_MODEL, generator=gen).to(dtype)


def _padding(batch=BATCH, length=LENGTH):
    """Row 0 unpadded, the others padded at the end by different amounts."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(1, batch):
        mask[row, length - 2 * row:] = True
    return mask


def _expect_refusal(check: str, flag: str, call: Callable[[], object]) -> None:
    """A capability the flags deny must raise, not be silently ignored."""
    try:
        call()
    except Exception:  # any clear error is acceptable; the flag is honest
        return
    _fail(check, f"{flag}=False but the call succeeded; raise an error (e.g. BadInputError) or set {flag}=True")


def _close(check: str, what: str, got: torch.Tensor, want: torch.Tensor, atol=ATOL) -> None:
    diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    if not diff <= atol:
        _fail(check, f"{what}: max abs difference {diff:.3g} exceeds {atol:g}")


# --- the checks ----------------------------------------------------------------------------


def check_construct(cls, options) -> None:
    """The class builds from (d_model, n_heads, dropout, options) and has parameters."""
    module = _build(cls, options)
    if not isinstance(module, Attention):
        _fail("construct", f"{cls.__name__} is not a subclass of attnbench.Attention")
    if not any(p.requires_grad for p in module.parameters()):
        _fail("construct", "the module has no trainable parameters (it must own its projections)")


def check_shapes(cls, options) -> None:
    """Self-attention returns (B, L, d_model) and no weights unless asked."""
    out, weights = _build(cls, options)(_inputs())
    if tuple(out.shape) != (BATCH, LENGTH, D_MODEL):
        _fail("shapes", f"output shape {tuple(out.shape)}, expected {(BATCH, LENGTH, D_MODEL)}")
    if weights is not None:
        _fail("shapes", "weights returned although need_weights=False; expected None")
    if not torch.isfinite(out).all():
        _fail("shapes", "output has NaN or inf")


def check_dtypes(cls, options) -> None:
    """Output dtype follows the module and input dtype: float32, float64 and bfloat16."""
    reference = None
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        out, _ = _build(cls, options, dtype=dtype)(_inputs(dtype=dtype))
        if out.dtype != dtype:
            _fail("dtypes", f"{dtype} in, {out.dtype} out")
        if not torch.isfinite(out).all():
            _fail("dtypes", f"{dtype}: output has NaN or inf")
        if reference is None:
            reference = out
        elif dtype == torch.float64:
            _close("dtypes", "float64 vs float32 output", out, reference, atol=1e-4)


def check_padding(cls, options) -> None:
    """Changing padded positions' inputs leaves every non-padded output unchanged."""
    module, x, mask = _build(cls, options), _inputs(), _padding()
    if not cls.supports_padding_mask:
        _expect_refusal("padding", "supports_padding_mask", lambda: module(x, key_padding_mask=mask))
        raise _Skip
    for causal in (False, True) if cls.supports_causal else (False,):
        out, _ = module(x, key_padding_mask=mask, causal=causal)
        changed = x.masked_fill(mask[..., None], 0.0) + 100.0 * _inputs(seed=7) * mask[..., None]
        out2, _ = module(changed, key_padding_mask=mask, causal=causal)
        if not torch.isfinite(out[~mask]).all():
            _fail("padding", f"non-padded outputs have NaN or inf (causal={causal})")
        _close("padding", f"non-padded outputs after changing padded inputs (causal={causal})", out2[~mask], out[~mask])


def check_causal(cls, options) -> None:
    """With causal=True the gradient of output i w.r.t. every input j > i is exactly zero."""
    module, x = _build(cls, options, dtype=torch.float64), _inputs(batch=1, dtype=torch.float64)
    if not cls.supports_causal:
        _expect_refusal("causal", "supports_causal", lambda: module(x, causal=True))
        raise _Skip
    for i in range(LENGTH - 1):
        xi = x.clone().requires_grad_(True)
        out, _ = module(xi, causal=True)
        out[0, i].sum().backward()
        leak = xi.grad[0, i + 1:].abs().max().item()
        if leak != 0.0:
            _fail("causal", f"output position {i} has gradient {leak:.3g} from a later position; expected exactly 0")
        if xi.grad[0, : i + 1].abs().max().item() == 0.0:
            _fail("causal", f"output position {i} has no gradient from positions <= {i}")


def check_cross(cls, options) -> None:
    """Cross-attention: queries of one length over a context of another, with its padding."""
    module, x, ctx = _build(cls, options), _inputs(), _inputs(length=CONTEXT_LENGTH, seed=3)
    if not cls.supports_cross:
        _expect_refusal("cross", "supports_cross", lambda: module(x, ctx))
        raise _Skip
    out, _ = module(x, ctx)
    if tuple(out.shape) != (BATCH, LENGTH, D_MODEL):
        _fail("cross", f"output shape {tuple(out.shape)}, expected {(BATCH, LENGTH, D_MODEL)}")
    if cls.supports_padding_mask:
        mask = _padding(length=CONTEXT_LENGTH)
        out, _ = module(x, ctx, key_padding_mask=mask)
        changed = ctx + 100.0 * _inputs(length=CONTEXT_LENGTH, seed=9) * mask[..., None]
        out2, _ = module(x, changed, key_padding_mask=mask)
        _close("cross", "outputs after changing padded context", out2, out)
    if cls.returns_weights:
        _, weights = module(x, ctx, need_weights=True)
        expected = (BATCH, module.n_heads, LENGTH, CONTEXT_LENGTH)
        if weights is None or tuple(weights.shape) != expected:
            _fail("cross", f"weights shape {None if weights is None else tuple(weights.shape)}, expected {expected}")


def check_weights(cls, options) -> None:
    """need_weights=True returns (B, heads, Lq, Lk) rows summing to 1, zero on padding and the future."""
    module, x, mask = _build(cls, options), _inputs(), _padding()
    if not cls.returns_weights:
        _, weights = module(x, need_weights=True)
        if weights is not None:
            _fail("weights", "returns_weights=False but weights were returned; set the flag or return None")
        raise _Skip
    out, weights = module(x, need_weights=True)
    expected = (BATCH, module.n_heads, LENGTH, LENGTH)
    if weights is None or tuple(weights.shape) != expected:
        _fail("weights", f"weights shape {None if weights is None else tuple(weights.shape)}, expected {expected}")
    _close("weights", "row sums", weights.sum(-1), torch.ones_like(weights.sum(-1)))
    out_no_weights, _ = module(x)
    _close("weights", "output with need_weights=True vs False", out, out_no_weights)
    if cls.supports_padding_mask:
        _, weights = module(x, key_padding_mask=mask, need_weights=True)
        on_padding = weights.masked_select(mask[:, None, None, :].expand_as(weights) & ~mask[:, None, :, None])
        if on_padding.numel() and on_padding.abs().max().item() > 0:
            _fail("weights", "non-padded queries put weight on padded keys")
    if cls.supports_causal:
        _, weights = module(x, causal=True, need_weights=True)
        if weights.triu(1).abs().max().item() > 0:
            _fail("weights", "causal weights are non-zero above the diagonal")


def check_gradients(cls, options) -> None:
    """A loss on the output gives every trainable parameter a finite, non-zero gradient."""
    module = _build(cls, options).train()
    x = _inputs().requires_grad_(True)
    out, _ = module(x)
    (out * _inputs(seed=5)).sum().backward()
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            _fail("gradients", f"parameter {name!r} got no gradient")
        if not torch.isfinite(param.grad).all():
            _fail("gradients", f"parameter {name!r} has a NaN or inf gradient")
        if param.grad.abs().max().item() == 0:
            _fail("gradients", f"parameter {name!r} has an all-zero gradient")
    if x.grad is None or x.grad.abs().max().item() == 0:
        _fail("gradients", "no gradient reaches the input")


def check_determinism(cls, options) -> None:
    """Same seed, same module, same input: same output, with dropout active in training mode."""
    x = _inputs()
    outputs = []
    for _ in range(2):
        module = _build(cls, options, dropout=0.3, seed=11).train()
        torch.manual_seed(123)
        outputs.append(module(x)[0])
    _close("determinism", "two seeded training-mode runs", outputs[1], outputs[0], atol=0.0)
    module = _build(cls, options, dropout=0.3, seed=11)
    _close("determinism", "two eval-mode runs", module(x)[0], module(x)[0], atol=0.0)


def check_dropout(cls, options) -> None:
    """Dropout on the attention weights acts in training mode and not in eval mode."""
    x = _inputs()
    module = _build(cls, options, dropout=0.5, seed=11)
    eval_out = module(x)[0]
    torch.manual_seed(0)
    train_out = module.train()(x)[0]
    if (train_out - eval_out).abs().max().item() == 0:
        _fail("dropout", "dropout=0.5 in training mode changed nothing; apply dropout to the attention weights")


def check_batch_independence(cls, options) -> None:
    """Each example's output is the same alone as inside a batch (with padding and causal)."""
    module, x, mask = _build(cls, options), _inputs(), _padding()
    pad = mask if cls.supports_padding_mask else None
    for causal in (False, True) if cls.supports_causal else (False,):
        batched, _ = module(x, key_padding_mask=pad, causal=causal)
        for row in range(BATCH):
            alone, _ = module(x[row:row + 1], key_padding_mask=None if pad is None else pad[row:row + 1], causal=causal)
            keep = slice(None) if pad is None else ~pad[row]
            _close("batch", f"example {row} alone vs in a batch (causal={causal})", alone[0][keep], batched[row][keep])


def check_incremental(cls, options) -> None:
    """supports_incremental: one position at a time through start_cache/forward_step gives what
    forward gives (causal self-attention; cross-attention with padding), and reorder_cache picks rows."""
    module, x = _build(cls, options, dtype=torch.float64), _inputs(dtype=torch.float64)
    if not cls.supports_incremental:
        _expect_refusal("incremental", "supports_incremental", lambda: module.start_cache())
        raise _Skip

    def stepped(cache, inputs):
        outputs = []
        for i in range(inputs.shape[1]):
            out, cache = module.forward_step(inputs[:, i:i + 1], cache)
            outputs.append(out)
        return torch.cat(outputs, dim=1), cache

    index = torch.tensor([2, 0, 0])
    if cls.supports_causal:
        full, _ = module(x, causal=True)
        out, cache = stepped(module.start_cache(), x)
        _close("incremental", "self-attention one step at a time vs forward(causal=True)", out, full)
        _, cache = stepped(module.start_cache(), x[:, :5])
        out, _ = stepped(module.reorder_cache(cache, index), x[index, 5:])
        _close("incremental", "steps after reorder_cache vs forward on the same rows", out, full[index, 5:])
    if cls.supports_cross:
        ctx = _inputs(length=CONTEXT_LENGTH, seed=3, dtype=torch.float64)
        mask = _padding(length=CONTEXT_LENGTH) if cls.supports_padding_mask else None
        full, _ = module(x, ctx, key_padding_mask=mask)
        cache = module.start_cache(ctx, key_padding_mask=mask)
        out, _ = stepped(cache, x)
        _close("incremental", "cross-attention one step at a time vs forward", out, full)
        out, _ = stepped(module.reorder_cache(cache, index), x[index])
        _close("incremental", "cross-attention after reorder_cache vs forward on the same rows", out, full[index])


CHECKS: dict[str, Callable] = {
    "construct": check_construct,
    "shapes": check_shapes,
    "dtypes": check_dtypes,
    "padding": check_padding,
    "causal": check_causal,
    "cross": check_cross,
    "weights": check_weights,
    "gradients": check_gradients,
    "determinism": check_determinism,
    "dropout": check_dropout,
    "batch": check_batch_independence,
    "incremental": check_incremental,
}


def run_check(cls: type[Attention], check: str, options=None) -> CheckResult:
    """Run one named check; failures come back as a result instead of an exception."""
    try:
        CHECKS[check](cls, options)
    except _Skip:
        return CheckResult(check, "skipped", "capability flag is False; the refusal was checked")
    except ConformanceError as exc:
        return CheckResult(check, "failed", str(exc))
    except Exception as exc:  # a crash inside the variant is a failure of that check
        return CheckResult(check, "failed", f"[{check}] raised {type(exc).__name__}: {exc}")
    return CheckResult(check, "passed")


def check_attention(cls: type[Attention], options: dict | BaseModel | None = None) -> list[CheckResult]:
    """Run every check on ``cls`` (with ``options``, a dict or the variant's Options).

    Returns the results when all pass or are skipped; raises :class:`ConformanceError`
    listing every failed check (with what was expected) otherwise.
    """
    results = [run_check(cls, name, options) for name in CHECKS]
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines = "\n".join(f"  - {r.detail}" for r in failed)
        raise ConformanceError(f"{cls.__name__} failed {len(failed)} of {len(results)} conformance checks:\n{lines}")
    return results


def attention_cases(host=None, options: dict[str, list[dict]] | None = None) -> list:
    """``pytest.param(cls, options, id=name)`` for every registered attention variant.

    ``host`` defaults to :func:`attnbench.plugin_host.get_host`; ``options`` maps a variant
    name to extra option dicts to test besides its defaults (ids ``name[i]``).
    """
    import pytest

    from .plugin_host import get_host

    host = host or get_host()
    cases = []
    for reg in sorted(host.attention, key=lambda r: r.name):
        cases.append(pytest.param(reg.factory, None, id=reg.name))
        for i, extra in enumerate((options or {}).get(reg.name, [])):
            cases.append(pytest.param(reg.factory, extra, id=f"{reg.name}[{i}]"))
    return cases


def conformance_cases(host=None, options: dict[str, list[dict]] | None = None) -> list:
    """Like :func:`attention_cases` but one ``pytest.param(cls, options, check)`` per check."""
    import pytest

    return [
        pytest.param(*case.values, check, id=f"{case.id}-{check}")
        for case in attention_cases(host, options)
        for check in CHECKS
    ]


# --- tasks and model families ----------------------------------------------------------------
#
# The same idea for the other two plugin kinds: ``check_task(MyTask, options)`` and
# ``check_model_family(MyFamily, options, lengths=(16, 300))``. Authors pick the lengths: a
# family with a chunked or bucketed path must be checked at lengths that reach it.

TINY_DIMS = {"d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0}


def _finite(check: str, what: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        _fail(check, f"{what} holds NaN or inf")


def _shape(check: str, what: str, tensor, want: tuple) -> None:
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != want:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        _fail(check, f"{what}: expected shape {want}, got {got}")


def check_task(cls, options: dict | BaseModel | None = None, *, cache_dir, family: str | None = None,
               host=None, batch_size: int = 4) -> None:
    """Check a :class:`attnbench.Task` subclass end to end on a tiny model.

    ``prepare()`` returns a :class:`~attnbench.TaskIO` of the task's kind and is idempotent;
    every split yields ``num_batches`` batches with tokens counted; ``loss`` is a finite
    scalar that reaches the model's parameters; ``evaluate`` (in eval mode, without
    gradients, as the runner calls it) reports the primary metric as a finite number and a
    prediction per example with an ``id``. ``family`` names the registered model family to
    train with (default: the first that builds the task's kind). Raises ConformanceError.
    """
    from .models import TASK_KINDS, ModelDims

    name = cls.__name__
    opts = options if isinstance(options, BaseModel) else cls.parse_options(options, f"tasks.{name}")
    task = cls(opts, cache_dir=cache_dir)
    io = task.prepare()
    if cls.kind not in TASK_KINDS or getattr(io, "kind", None) != cls.kind:
        _fail("prepare", f"{name}.kind is {cls.kind!r} and prepare() returned kind {getattr(io, 'kind', io)!r}; "
                         f"both must be one of {TASK_KINDS}")
    if task.prepare() != io:
        _fail("prepare", f"{name}.prepare() is not idempotent: a second call returned another TaskIO")
    for split in ("train", "validation", "test"):
        batches = list(task.batches(split, batch_size, shuffle=False))
        if len(batches) != task.num_batches(split, batch_size) or not batches:
            _fail("batches", f"{split}: num_batches says {task.num_batches(split, batch_size)}, "
                             f"batches yielded {len(batches)} (at least one expected)")
        if any(b.n_tokens <= 0 for b in batches):
            _fail("batches", f"{split}: a batch reports n_tokens <= 0 (tokens/s would be wrong)")

    host = host or _host()
    families = [r for r in sorted(host.model, key=lambda r: r.name)
                if (family is None or r.name == family) and cls.kind in getattr(r.factory, "kinds", ())]
    if not families:
        _fail("model", f"no registered model family builds {cls.kind!r} models" +
                       (f" under the name {family!r}" if family else ""))
    fam_cls = families[0].factory
    fam = fam_cls(fam_cls.parse_options({}))
    fam.validate(host)
    torch.manual_seed(0)
    model = fam.build(io, ModelDims(**TINY_DIMS), host)
    batch = next(iter(task.batches("train", batch_size, shuffle=False)))
    loss = task.loss(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        _fail("loss", f"loss must be a scalar tensor, got {type(loss).__name__} "
                      f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    _finite("loss", "the loss", loss.detach())
    loss.backward()
    if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()):
        _fail("loss", "the loss does not reach any model parameter (no gradient)")

    model.eval()
    with torch.no_grad():
        evaluation = task.evaluate(model, "validation", batch_size=batch_size, device=torch.device("cpu"))
    value = evaluation.metrics.get(cls.primary_metric)
    if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        _fail("evaluate", f"metrics must hold the primary metric {cls.primary_metric!r} as a finite number; "
                          f"got {sorted(evaluation.metrics)}")
    if any("id" not in p for p in evaluation.predictions):
        _fail("evaluate", "every prediction needs an 'id' (paired significance tests match on it)")


def check_model_family(cls, options: dict | BaseModel | None = None, *, lengths: tuple[int, ...] = (12,),
                       host=None, batch: int = 2) -> None:
    """Check a :class:`attnbench.ModelFamily` subclass: for every kind in ``cls.kinds`` and
    every length in ``lengths`` it builds, keeps the forward interface of that kind
    (``attnbench.models``), gives finite outputs, and back-propagates to its parameters.
    ``label()`` must be a valid run-name part. Raises ConformanceError."""
    from .models import TASK_KINDS, ModelDims, TaskIO

    name = cls.__name__
    opts = options if isinstance(options, BaseModel) else cls.parse_options(options or {})
    host = host or _host()
    if not cls.kinds or not set(cls.kinds) <= set(TASK_KINDS):
        _fail("kinds", f"{name}.kinds must list task kinds from {TASK_KINDS}, got {cls.kinds!r}")
    vocab, classes = 32, 3
    for kind in cls.kinds:
        for n in lengths:
            check = f"{kind}@{n}"
            family = cls(opts)
            family.validate(host)
            label = family.label()
            if not isinstance(label, str) or not label or "/" in label or ".." in label:
                _fail("label", f"label() must be a short name without '/' or '..', got {label!r}")
            io = TaskIO(kind=kind, vocab_size=vocab, max_len=n + 2, n_classes=classes, tgt_vocab_size=vocab,
                        bos_id=2, eos_id=3, max_tgt_len=n + 2)
            torch.manual_seed(0)
            model = family.build(io, ModelDims(**TINY_DIMS), host)
            gen = torch.Generator().manual_seed(1)
            tokens = torch.randint(4, vocab, (batch, n), generator=gen)
            pad = torch.zeros(batch, n, dtype=torch.bool)
            pad[-1, n - max(1, n // 4):] = True  # the last sequence is padded at the end
            if kind == "classification":
                out = model(tokens, pad)
                _shape(check, "logits", out, (batch, classes))
            elif kind == "span":
                out = model(tokens, pad)
                if not (isinstance(out, tuple) and len(out) == 2):
                    _fail(check, "span models return (start_logits, end_logits)")
                for part in out:
                    _shape(check, "span logits", part, (batch, n))
                out = out[0] + out[1]
            elif kind == "seq2seq":
                memory = model.encode(tokens, pad)
                out = model.decode(memory, pad, tokens)
                _shape(check, "decode logits", out, (batch, n, vocab))
                model.reorder_memory(memory, torch.tensor([1, 0]))
            else:
                out = model(tokens, pad)
                _shape(check, "logits", out, (batch, n, vocab))
            _finite(check, "the output", out.detach().masked_fill(torch.isneginf(out.detach()), 0))
            out.masked_fill(torch.isneginf(out), 0).float().sum().backward()
            if not any(p.grad is not None for p in model.parameters()):
                _fail(check, "no parameter received a gradient")


def _host():
    from .plugin_host import get_host

    return get_host()
