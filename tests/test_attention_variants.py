"""Correctness pins for the built-in variants (issue 3): equalities with dense references,
exact causality, padding invariance, option validation and the sparse work skipping."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnbench.errors import BadInputError
from attnbench.plugins.attention.lsh import SELF_SCORE, LSHAttention, LSHOptions, _exp_, _logsumexp, lsh_attention
from attnbench.plugins.attention.multihead import MultiHeadAttention
from attnbench.plugins.attention.sparse import SparseAttention, SparseOptions, blocked_sparse_attention
from attnbench.plugins.attention.vanilla import VanillaAttention

torch.set_num_threads(1)
D, HEADS, N = 32, 4, 40


def x_and_mask(batch=2, n=N, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, D, generator=gen)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask[1, n - 9:] = True
    return x, mask


def reference_pattern(q, k, v, allowed):
    """Dense softmax attention restricted to a bool (n, n) pattern: the definition, not the code."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_sparse_with_covering_window_equals_multihead(causal):
    x, mask = x_and_mask()
    dense = MultiHeadAttention(D, HEADS).eval()
    sparse = SparseAttention(D, HEADS, options=SparseOptions(window=N)).eval()
    sparse.load_state_dict(dense.state_dict())
    want, _ = dense(x, key_padding_mask=mask, causal=causal)
    got, _ = sparse(x, key_padding_mask=mask, causal=causal)
    keep = ~mask
    assert (got[keep] - want[keep]).abs().max() < 1e-5


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("options, pattern", [
    (SparseOptions(pattern="local", window=5), lambda i, j: (i - j).abs() < 5),
    (SparseOptions(pattern="strided", window=4, stride=6), lambda i, j: ((i - j).abs() < 4) | ((i - j) % 6 == 0)),
    (SparseOptions(pattern="block", block_size=8, summary=3), lambda i, j: (i // 8 == j // 8) | (j % 8 >= 5)),
])
def test_sparse_patterns_match_their_definition(options, pattern, causal, need_weights):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 37, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    i, j = torch.arange(37)[:, None], torch.arange(37)[None, :]
    allowed = pattern(i, j) & ((j <= i) if causal else True)
    got, weights = blocked_sparse_attention(q, k, v, options, causal=causal, need_weights=need_weights)
    assert (got - reference_pattern(q, k, v, allowed)).abs().max() < 1e-10
    if need_weights:
        assert weights.masked_select(~allowed).abs().max() == 0


def test_sparse_never_builds_an_n_by_n_score_matrix(monkeypatch):
    """Every matmul and SDPA call on the sparse path has a key axis far shorter than n."""
    n, window = 512, 16
    seen = []
    real_matmul, real_sdpa = torch.Tensor.__matmul__, F.scaled_dot_product_attention

    def spy_matmul(a, b):
        out = real_matmul(a, b)
        seen.append(out.shape[-1] * out.shape[-2])
        return out

    def spy_sdpa(q, k, v, **kw):
        seen.append(q.shape[-2] * k.shape[-2])
        return real_sdpa(q, k, v, **kw)

    import attnbench.plugins.attention.sparse as sparse_module

    real_kernel = sparse_module.cpu_flash_ops()[0]

    def spy_kernel(q, k, v, *args, **kw):  # the fused CPU kernel the local pattern calls directly
        seen.append(q.shape[-2] * k.shape[-2])
        return real_kernel(q, k, v, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy_matmul)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(sparse_module, "cpu_flash_ops", lambda: (spy_kernel, None))
    q, k, v = (torch.randn(1, 2, n, 8) for _ in range(3))
    for pattern in ("local", "strided", "block"):
        blocked_sparse_attention(q, k, v, SparseOptions(pattern=pattern, window=window, block_size=window, summary=2))
        assert seen and max(seen) <= n * n // 8, pattern
        seen.clear()


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_with_one_bucket_equals_dense_shared_qk_with_self_mask(causal):
    x, mask = x_and_mask()
    module = LSHAttention(D, HEADS, options=LSHOptions(n_buckets=1, n_hashes=3)).eval()
    got, _ = module(x, key_padding_mask=mask, causal=causal)
    # The reference: one dense softmax over all keys, keys = normalised shared vectors,
    # a token's own score -5e4 (so it only sees itself when nothing else is visible).
    qk = module.qk_proj(x).view(2, N, HEADS, -1).transpose(1, 2)
    v = module.v_proj(x).view(2, N, HEADS, -1).transpose(1, 2)
    scores = qk @ F.normalize(qk, dim=-1).transpose(-1, -2) / math.sqrt(qk.shape[-1])
    i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    hidden = mask[:, None, None, :] | ((j > i) if causal else False)
    scores = scores.masked_fill(hidden, float("-inf")).masked_fill(i == j, -5e4)
    want = module.out_proj((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, N, D))
    assert (got[~mask] - want[~mask]).abs().max() < 1e-5


def test_lsh_weights_are_a_distribution_in_token_order_and_explain_the_output():
    gen = torch.Generator().manual_seed(2)
    qk, v = (torch.randn(1, 2, 50, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    out, weights = lsh_attention(qk, v, LSHOptions(bucket_size=5, n_hashes=3), need_weights=True)
    assert weights.shape == (1, 2, 50, 50)
    assert (weights.sum(-1) - 1).abs().max() < 1e-12
    assert (weights @ v - out).abs().max() < 1e-12
    assert (weights > 0).sum(-1).max() <= 3 * 10  # each round sees at most 2 chunks of 5
    assert weights.diagonal(dim1=-2, dim2=-1).max() < 1e-6  # self only as a last resort


def test_lsh_hashing_is_seeded_and_n_hashes_can_change_after_training():
    x, _ = x_and_mask()
    torch.manual_seed(0)
    module = LSHAttention(D, HEADS, options=LSHOptions(bucket_size=4, seed=3)).eval()
    first, second = module(x)[0], module(x)[0]
    assert torch.equal(first, second)
    module.options.seed = 4
    assert not torch.allclose(module(x)[0], first)
    module.options.n_hashes = 8  # evaluation-time override
    assert module(x)[0].shape == first.shape
    with pytest.raises(ValueError):
        module.options.n_hashes = 0


@pytest.mark.parametrize("cls, options", [
    (SparseAttention, SparseOptions(window=4)),
    (SparseAttention, SparseOptions(pattern="strided", window=3, stride=5)),
    (SparseAttention, SparseOptions(pattern="block", block_size=6, summary=2)),
    (LSHAttention, LSHOptions(bucket_size=4, n_hashes=2)),
    (VanillaAttention, None),
    (MultiHeadAttention, None),
])
def test_causal_gradient_from_future_is_exactly_zero(cls, options):
    module = cls(D, HEADS, options=options).double().eval()
    x = torch.randn(1, 24, D, dtype=torch.float64, requires_grad=True)
    out, _ = module(x, causal=True)
    jac = torch.stack([torch.autograd.grad(out[0, i].sum(), x, retain_graph=True)[0][0] for i in range(24)])
    future = torch.ones(24, 24, dtype=torch.bool).triu(1)
    assert jac.abs().sum(-1)[future].max() == 0.0
    assert jac.abs().sum(-1).diagonal().min() > 0.0  # and each output does depend on its own input


@pytest.mark.parametrize("cls, options", [
    (SparseAttention, SparseOptions(window=4)),
    (SparseAttention, SparseOptions(pattern="strided", window=3, stride=5)),
    (SparseAttention, SparseOptions(pattern="block", block_size=6, summary=2)),
    (LSHAttention, LSHOptions(bucket_size=4, n_hashes=2)),
    (VanillaAttention, None),
])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_inputs_do_not_change_real_outputs(cls, options, causal):
    module = cls(D, HEADS, options=options).eval()
    x, mask = x_and_mask()
    noisy = x + 50 * torch.randn_like(x) * mask[..., None]
    a, _ = module(x, key_padding_mask=mask, causal=causal)
    b, _ = module(noisy, key_padding_mask=mask, causal=causal)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a[~mask] - b[~mask]).abs().max() < 1e-6


def test_vanilla_is_one_head_whatever_n_heads_says():
    module = VanillaAttention(D, 8)
    x, _ = x_and_mask()
    _, weights = module(x, need_weights=True)
    assert module.n_heads == 1 and weights.shape == (2, 1, N, N)


@pytest.mark.parametrize("cls, raw, field", [
    (SparseAttention, {"pattern": "diagonal"}, "attention_options.pattern"),
    (SparseAttention, {"window": 0}, "attention_options.window"),
    (SparseAttention, {"pattern": "block", "block_size": 4, "summary": 5}, "summary (5) must be <= block_size"),
    (SparseAttention, {"windw": 3}, "attention_options.windw: unknown field"),
    (LSHAttention, {"bucket_size": 8, "n_buckets": 4}, "not both"),
    (LSHAttention, {"n_buckets": 3}, "1 or even"),
    (LSHAttention, {"n_hashes": 0}, "attention_options.n_hashes"),
])
def test_bad_options_name_the_field(cls, raw, field):
    with pytest.raises(BadInputError) as info:
        cls.parse_options(raw)
    assert field in str(info.value)


@pytest.mark.parametrize("cls", [SparseAttention, LSHAttention])
def test_self_only_variants_refuse_cross_attention_clearly(cls):
    x, _ = x_and_mask()
    with pytest.raises(BadInputError, match="context: cross-attention is not supported.*multihead"):
        cls(D, HEADS)(x, x[:, :5])


# --- dense-equivalent settings dispatch to SDPA ---------------------------------------------


@pytest.mark.parametrize("options", [SparseOptions(window=N), SparseOptions(pattern="strided", window=N + 5),
                                     SparseOptions(pattern="block", block_size=64)])
@pytest.mark.parametrize("causal", [False, True])
def test_sparse_covering_the_sequence_is_multihead_exactly(options, causal, monkeypatch):
    """A pattern that covers every pair runs multihead's dense path: identical outputs, no blocked work."""
    import attnbench.plugins.attention.sparse as sparse_module

    monkeypatch.setattr(sparse_module, "blocked_sparse_attention", lambda *a, **k: pytest.fail("blocked path taken"))
    x, mask = x_and_mask()
    dense = MultiHeadAttention(D, HEADS).eval()
    sparse = SparseAttention(D, HEADS, options=options).eval()
    sparse.load_state_dict(dense.state_dict())
    assert sparse.dense_equivalent(N) and not SparseAttention(D, HEADS, options=SparseOptions(window=N - 1)).dense_equivalent(N)
    for need_weights in (False, True):
        want = dense(x, key_padding_mask=mask, causal=causal, need_weights=need_weights)
        got = sparse(x, key_padding_mask=mask, causal=causal, need_weights=need_weights)
        assert torch.equal(got[0], want[0]) and (not need_weights or torch.equal(got[1], want[1]))


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_single_bucket_dispatch_matches_the_chunked_path(causal):
    """One bucket runs one SDPA call; it agrees with the hashed, chunked computation it replaces."""
    x, mask = x_and_mask()
    module = LSHAttention(D, HEADS, options=LSHOptions(n_buckets=1, n_hashes=2)).eval()
    assert module.dense_equivalent(N) and not LSHAttention(D, HEADS, options=LSHOptions(bucket_size=8)).dense_equivalent(N)
    assert LSHAttention(D, HEADS, options=LSHOptions(bucket_size=N)).dense_equivalent(N)
    got, _ = module(x, key_padding_mask=mask, causal=causal)
    qk, _, v = module.project_qkv(x)
    chunked, _ = lsh_attention(qk, v, module.options, key_padding_mask=mask, causal=causal)
    want = module.project_out(chunked)
    assert (got[~mask] - want[~mask]).abs().max() < 1e-6


# --- the FlexAttention block mask (built on the CPU here; run on CUDA by the module) ----------


def dense_pattern(pattern, window, stride, block_size, summary, causal, n):
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    if pattern == "block":
        keep = (i // block_size == j // block_size) | (j % block_size >= block_size - summary)
    else:
        keep = (i - j).abs() < window
        if pattern == "strided":
            keep |= (i - j) % stride == 0
    return keep & (j <= i) if causal else keep


@pytest.mark.parametrize("pattern, window, stride, block_size, summary", [
    ("local", 5, None, 8, 2), ("local", 16, None, 8, 2), ("strided", 4, 7, 8, 2),
    ("block", 4, None, 12, 3), ("block", 4, None, 5, 5), ("block", 4, None, 32, 4),
])
@pytest.mark.parametrize("causal", [False, True])
def test_flex_tiles_cover_the_pattern_without_an_n_by_n_mask(pattern, window, stride, block_size, summary, causal):
    """Every tile with a visible pair is listed, and a tile called full has only visible pairs."""
    from attnbench.plugins.attention.sparse import pattern_tiles

    n, tile = 70, 8  # 9 tiles, the last one cut by n
    any_tile, full = pattern_tiles(pattern, window, stride, block_size, summary, causal, n, tile=tile)
    keep = F.pad(dense_pattern(pattern, window, stride, block_size, summary, causal, n), (0, 2, 0, 2)).view(9, tile, 9, tile)
    inside = F.pad(torch.ones(n, n, dtype=torch.bool), (0, 2, 0, 2)).view(9, tile, 9, tile)
    want_any = keep.any(3).any(1)
    want_full = (keep | ~inside).all(3).all(1) & inside.all(3).all(1)
    assert torch.equal(any_tile | want_any, any_tile)  # nothing visible is skipped
    assert torch.equal(full & want_full, full)  # nothing invisible is treated as full
    if pattern != "block":
        assert torch.equal(any_tile, want_any) and torch.equal(full, want_full)
    assert full.any() or pattern == "strided" or window < tile


@pytest.mark.parametrize("options", [SparseOptions(window=50), SparseOptions(pattern="strided", window=20, stride=45),
                                     SparseOptions(pattern="block", block_size=96, summary=8)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_gives_the_pattern(options, causal):
    """FlexAttention (eager, on the CPU) with the built block mask equals the pattern's definition."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from attnbench.plugins.attention.sparse import flex_block_mask

    n = 300  # three 128-token tiles, the last one partial
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen) for _ in range(3))
    block_mask = flex_block_mask(options.pattern, options.window, options.stride, options.block_size,
                                 options.summary, causal, n, "cpu")
    got = flex.flex_attention(q, k, v, block_mask=block_mask)  # eager: warns once that it is unfused
    allowed = dense_pattern(options.pattern, options.window, options.stride, options.block_size, options.summary, causal, n)
    assert (got - reference_pattern(q, k, v, allowed)).abs().max() < 1e-5


def test_flex_tiles_at_65k_tokens_stay_small():
    """At n = 65536 the tile map is 512 x 512 and a local window of 128 visits 3 tiles per row."""
    from attnbench.plugins.attention.sparse import pattern_tiles

    any_tile, full = pattern_tiles("local", 128, None, 64, 8, False, 2**16)
    assert any_tile.shape == (512, 512)
    assert any_tile.sum(-1).max() == 3 and torch.equal(full, torch.eye(512, dtype=torch.bool))


@pytest.mark.parametrize("cls, options", [
    (MultiHeadAttention, None), (VanillaAttention, None), (SparseAttention, SparseOptions(window=4)),
    (SparseAttention, SparseOptions(pattern="block", block_size=6, summary=2)),
    (LSHAttention, LSHOptions(bucket_size=4, n_hashes=2)), (LSHAttention, LSHOptions(n_buckets=1)),
])
def test_bf16_autocast_training_step(cls, options, monkeypatch):
    """Forward and backward under bf16 autocast (what train.amp does on CUDA), here on the CPU.

    CUDA's autocast runs ``F.normalize`` in float32 while CPU autocast does not; we make it so
    here, which is what broke lsh's backward on CUDA."""
    real_normalize = F.normalize
    monkeypatch.setattr(F, "normalize", lambda t, *a, **k: real_normalize(t.float(), *a, **k))
    module = cls(D, HEADS, dropout=0.1, options=options).train()
    x, mask = x_and_mask()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = module(x, key_padding_mask=mask, causal=True)
    out.float().square().mean().backward()
    assert torch.isfinite(out[~mask].float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lsh_exp_and_logsumexp_are_torch_s_bit_for_bit(dtype):
    """lsh's chunk attention exponentiates masked scores without the CPU's slow underflow path;
    the bits must be torch's own: hidden (finfo.min) and self (-5e4) scores, fully hidden rows,
    scores in the subnormal band just above the floor, and -inf, +inf and NaN."""
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(3, 4, 5, 8, 16, generator=gen, dtype=dtype) * 20
    scores.masked_fill_(torch.rand(scores.shape, generator=gen) < 0.3, torch.finfo(dtype).min)
    scores.masked_fill_(torch.rand(scores.shape, generator=gen) < 0.1, SELF_SCORE)
    near_floor = math.log(torch.finfo(dtype).tiny)  # exp is subnormal here, or rounds to 0 just below
    scores[0, 0, 0, :, :4] = near_floor + torch.linspace(-30, 2, 4, dtype=dtype)
    scores[0, 0, 1] = torch.finfo(dtype).min  # every key hidden
    scores[0, 0, 2, 0, 3], scores[0, 0, 2, 1, 3], scores[0, 0, 2, 2, 3] = -math.inf, math.inf, math.nan

    def same_bits(ours, theirs):
        assert torch.equal(ours.isnan(), theirs.isnan())
        assert torch.equal(ours.nan_to_num().view(-1).abs(), theirs.nan_to_num().view(-1).abs())
        assert torch.equal(torch.signbit(ours[~ours.isnan()]), torch.signbit(theirs[~theirs.isnan()]))

    lse = scores.logsumexp(dim=-1, keepdim=True)
    same_bits(_logsumexp(scores), lse)
    shifted = scores - lse
    same_bits(_exp_(shifted.clone()), shifted.exp())
    assert (shifted.exp() > 0).any() and (shifted.exp()[shifted > -1e30] == 0).any()  # both cases were met


def test_lsh_exp_benchmark_runs_and_finds_both_implementations_identical():
    """benchmarks/bench_lsh_exp.py (the figures in docs/attention.md) still runs, on the real
    lsh_attention path with dropout, and still finds torch's bits in both settings."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lsh_exp.py"
    done = subprocess.run([sys.executable, str(script), "--rounds", "1", "--calls", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "ratio" in line]
    assert len(rows) == 2 and all(row.endswith("identical: True") for row in rows), done.stdout


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_rounds_at_once_equals_the_round_loop(causal):
    """The batched-rounds path (CUDA's default) computes what the round loop computes, gradients too."""
    gen = torch.Generator().manual_seed(4)
    qk, v = (torch.randn(2, 2, 45, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = torch.zeros(2, 45, dtype=torch.bool)
    mask[1, 37:] = True
    options = LSHOptions(bucket_size=4, n_hashes=3)
    grads = []
    for at_once in (False, True):
        out, _ = lsh_attention(qk, v, options, key_padding_mask=mask, causal=causal, rounds_at_once=at_once)
        real = out.transpose(1, 2)[~mask]  # outputs at non-padded positions
        grads.append((real.detach(), *torch.autograd.grad(real.square().sum(), (qk, v))))
    for loop, batched in zip(*grads):
        assert (loop - batched).abs().max() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("call_rows", [4096, 24])  # one kernel call; many head groups and chunk slices
def test_lsh_fused_cpu_path_equals_the_round_loop(causal, call_rows, monkeypatch):
    """The CPU default (all rounds through the fused kernel, its backward given the combined
    output) computes what the hand-written round loop computes, gradients too."""
    import attnbench.plugins.attention.lsh as lsh_module

    monkeypatch.setattr(lsh_module, "CALL_ROWS", call_rows)
    gen = torch.Generator().manual_seed(5)
    qk, v = (torch.randn(2, 3, 45, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = torch.zeros(2, 45, dtype=torch.bool)
    mask[1, 37:] = True
    options = LSHOptions(bucket_size=4, n_hashes=3)
    assert lsh_module.fused_available(qk, 0.0, False) and not lsh_module.fused_available(qk, 0.1, False)
    grads = []
    for rounds_at_once in (False, None):  # None: the default, the fused path on the CPU
        out, _ = lsh_attention(qk, v, options, key_padding_mask=mask, causal=causal, rounds_at_once=rounds_at_once)
        real = out.transpose(1, 2)[~mask]
        grads.append((real.detach(), *torch.autograd.grad(real.square().sum(), (qk, v))))
    for loop, fused in zip(*grads):
        assert (loop - fused).abs().max() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("call_elements", [2**19, 100])  # one kernel call per example; one block per call
def test_sparse_local_fused_cpu_path_equals_the_sdpa_path(causal, call_elements, monkeypatch):
    """The CPU default for ``local`` (the fused kernel over slices of blocks, window gradients
    added back by hand) computes what the single SDPA call over unfolded windows computes."""
    import attnbench.plugins.attention.sparse as sparse_module

    monkeypatch.setattr(sparse_module, "CALL_ELEMENTS", call_elements)
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 3, 45, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 45, dtype=torch.bool)
    mask[1, 38:] = True
    assert sparse_module.local_fused_available(q, 0.0) and not sparse_module.local_fused_available(q, 0.1)
    results = []
    for out in (sparse_module._local_sdpa(q, k, v, mask, window=7, causal=causal, dropout_p=0.0),
                blocked_sparse_attention(q, k, v, SparseOptions(window=7), key_padding_mask=mask, causal=causal)[0]):
        real = out.transpose(1, 2)[~mask]
        results.append((real.detach(), *torch.autograd.grad(real.square().sum(), (q, k, v))))
    for sdpa, fused in zip(*results):
        assert (sdpa - fused).abs().max() < 1e-12


@pytest.mark.parametrize("variant", ["lsh", "sparse"])
def test_without_the_private_cpu_kernel_the_modules_fall_back_to_the_same_result(variant, monkeypatch):
    """A torch without ``_scaled_dot_product_flash_attention_for_cpu`` (it is a private op):
    the fused CPU paths are not taken, and the whole module, forward and backward, computes what
    it computes with them."""
    import attnbench.attention as core_attention
    import attnbench.plugins.attention.lsh as lsh_module
    import attnbench.plugins.attention.sparse as sparse_module

    module_of = {"lsh": lsh_module, "sparse": sparse_module}
    torch.manual_seed(0)
    attention = (LSHAttention(16, 2, 0.0, LSHOptions(bucket_size=4, n_hashes=2)) if variant == "lsh"
                 else SparseAttention(16, 2, 0.0, SparseOptions(window=4))).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 23, dtype=torch.bool)
    mask[1, 17:] = True

    def run():
        out = attention(x, key_padding_mask=mask)
        out = out[0] if isinstance(out, tuple) else out
        real = out[~mask]
        return (real.detach(), *torch.autograd.grad(real.square().sum(), (x, *attention.parameters())))

    calls = []
    real_ops = core_attention.cpu_flash_ops
    monkeypatch.setattr(module_of[variant], "cpu_flash_ops", lambda: calls.append(1) or real_ops())
    fused = run()
    assert calls, "the fused path was not taken with the kernel present"
    monkeypatch.setattr(module_of[variant], "cpu_flash_ops", lambda: None)
    fallback = run()
    for a, b in zip(fused, fallback):
        assert (a - b).abs().max() < 1e-10
