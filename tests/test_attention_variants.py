"""Correctness pins for the built-in variants (issue 3): equalities with dense references,
exact causality, padding invariance, option validation and the sparse work skipping."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnbench.errors import BadInputError
from attnbench.plugins.attention.lsh import LSHAttention, LSHOptions, lsh_attention
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

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy_matmul)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
    q, k, v = (torch.randn(1, 2, n, 8) for _ in range(3))
    for pattern in ("local", "strided", "block"):
        blocked_sparse_attention(q, k, v, SparseOptions(pattern=pattern, window=window, block_size=window, summary=2))
    assert seen and max(seen) <= n * n // 8


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
