"""Head statistics on hand-built attention maps, their tables and picture, and a tiny run that logs them."""

import csv
import io
import math

import pytest
import torch

from attnbench.run import head_stats, record
from attnbench.run.head_stats import HeadStatsAccumulator, row_statistics


def means(weights):
    acc = HeadStatsAccumulator()
    acc.add("attn", weights)
    return acc.result()


def test_uniform_attention_looks_everywhere():
    n = 4
    (s,) = means(torch.full((1, 1, n, n), 1.0 / n))
    # mean |i - j| over a 4 x 4 grid: 2 * (3*1 + 2*2 + 1*3) / 16
    assert s.distance == pytest.approx(20 / 16)
    assert s.entropy == pytest.approx(math.log(n))
    assert s.first_token == pytest.approx(1.0 / n)
    assert s.queries == n


def test_diagonal_attention_looks_at_itself():
    n = 5
    (s,) = means(torch.eye(n).expand(1, 1, n, n))
    assert s.distance == pytest.approx(0.0)
    assert s.entropy == pytest.approx(0.0, abs=1e-6)  # no NaN from 0 * log 0
    assert s.first_token == pytest.approx(1.0 / n)  # only query 0 puts its weight on key 0


def test_attention_on_the_first_token_is_a_sink():
    n = 6
    w = torch.zeros(1, 1, n, n)
    w[..., 0] = 1.0
    (s,) = means(w)
    assert s.first_token == pytest.approx(1.0)
    assert s.entropy == pytest.approx(0.0, abs=1e-6)
    assert s.distance == pytest.approx(sum(range(n)) / n)  # query i is i tokens away from key 0


def test_heads_are_kept_apart_and_maps_of_different_lengths_pool_by_rows():
    uniform, sink = torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2)
    sink[..., 0] = 1.0
    acc = HeadStatsAccumulator()
    acc.add("enc", torch.cat([uniform, sink], dim=1))  # head 0 uniform, head 1 sink
    long_sink = torch.zeros(1, 2, 6, 6)
    long_sink[..., 0] = 1.0
    acc.add("enc", long_sink)  # 6 more rows per head, all on the first token
    acc.add("dec", torch.eye(3).expand(2, 2, 3, 3))  # a second module: the next layer row
    stats = {(s.module, s.head): s for s in acc.result()}
    assert [s.layer for s in acc.result()] == [0, 0, 1, 1]
    assert stats[("enc", 0)].first_token == pytest.approx((2 * 0.5 + 6 * 1.0) / 8)
    assert stats[("enc", 1)].first_token == pytest.approx(1.0)
    assert stats[("enc", 0)].queries == 8 and stats[("dec", 1)].queries == 6
    with pytest.raises(ValueError, match="3 heads now, 2 before"):
        acc.add("enc", torch.full((1, 3, 2, 2), 0.5))
    with pytest.raises(ValueError, match="batch, heads, q_len, k_len"):
        row_statistics(torch.ones(2, 2))


def test_metrics_table_and_picture_name_every_head():
    acc = HeadStatsAccumulator()
    acc.add("encoder.layers.0.self_attn", torch.full((1, 2, 3, 3), 1 / 3))
    stats = acc.result()
    metrics = head_stats.as_metrics(stats)
    assert metrics[record.head_metric("encoder.layers.0.self_attn", 1, "entropy")] == pytest.approx(math.log(3))
    assert len(metrics) == 2 * len(record.HEAD_STATISTICS)
    rows = list(csv.DictReader(io.StringIO(head_stats.as_csv(stats))))
    assert [(r["module"], r["head"]) for r in rows] == [("encoder.layers.0.self_attn", "0"), ("encoder.layers.0.self_attn", "1")]
    assert float(rows[0]["first_token"]) == pytest.approx(1 / 3, abs=1e-4)
    fig = head_stats.head_stats_figure(stats)
    assert len(fig.axes) == len(record.HEAD_STATISTICS)
