"""The rnn family runs its RNNs on padded batches (plugins/models/padded_rnn.py): it must compute
exactly what the packed path computes (pack_padded_sequence -> rnn -> pad_packed_sequence),
outputs, final states and gradients, for LSTM and GRU, 1-2 layers, uni- and bidirectional."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnbench.plugins.models.padded_rnn import run_padded
from attnbench.plugins.models.rnn import RNNEncoder, make_embedding, make_rnn


def packed_reference(rnn, x, lengths):
    """What the encoder computed before: the packed path."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, state = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, state


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def outputs_and_grads(fn, rnn, x, lengths):
    """Outputs, final states, and gradients of a loss using both, w.r.t. inputs and parameters."""
    rnn.zero_grad()
    x = x.clone().requires_grad_()
    out, state = fn(rnn, x, lengths)
    state = as_tuple(state)
    out_weights = torch.linspace(-1.0, 1.0, out.shape[-1])
    loss = (out * out_weights).mean() + sum((s * s).mean() for s in state)
    loss.backward()
    return out, state, x.grad, {name: p.grad.clone() for name, p in rnn.named_parameters()}


# 9 steps: a full-length row, a length-1 row; the second batch ends before the last step.
LENGTHS = [[9, 1, 4, 6, 2], [3, 1, 5, 2, 5]]


@pytest.mark.parametrize("lengths", LENGTHS, ids=["full-row", "all-short"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padded_run_equals_the_packed_path(cell, n_layers, bidirectional, lengths):
    torch.manual_seed(0)
    rnn = make_rnn(cell, 6, 8, n_layers, dropout=0.3, bidirectional=bidirectional).eval()
    x = torch.randn(len(lengths), 9, 6)
    lengths = torch.tensor(lengths)
    ref_out, ref_state, ref_dx, ref_dparams = outputs_and_grads(packed_reference, rnn, x, lengths)
    out, state, dx, dparams = outputs_and_grads(run_padded, rnn, x, lengths)
    pads = torch.arange(9) >= lengths[:, None]
    assert out.shape == ref_out.shape and torch.all(out[pads] == 0)
    torch.testing.assert_close(out, ref_out)
    assert len(state) == (2 if cell == "lstm" else 1)
    torch.testing.assert_close(state, ref_state)
    torch.testing.assert_close(dx, ref_dx)
    torch.testing.assert_close(dparams, ref_dparams)


def test_encoder_matches_the_packed_path_including_an_all_padding_row():
    torch.manual_seed(0)
    encoder = RNNEncoder(make_embedding(20, 6, pad_id=0), "lstm", 8, 2, dropout=0.3, bidirectional=True).eval()
    tokens = torch.randint(1, 20, (4, 7))
    padding_mask = torch.arange(7) >= torch.tensor([7, 3, 1, 0])[:, None]  # the last row is all padding
    tokens[padding_mask] = 0
    out, (h_n, c_n) = encoder(tokens, padding_mask)
    lengths = (~padding_mask).sum(1).clamp(min=1)  # the packed path needs >= 1 step, so did the old encoder
    ref_out, (ref_h, ref_c) = packed_reference(encoder.rnn, encoder.embed(tokens), lengths)
    torch.testing.assert_close((out, h_n, c_n), (ref_out, ref_h, ref_c))


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    rnn = make_rnn("gru", 6, 8, 2, dropout=0.5, bidirectional=True)
    x, lengths = torch.randn(3, 5, 6), torch.tensor([5, 2, 4])
    train_a, _ = run_padded(rnn.train(), x, lengths)
    train_b, _ = run_padded(rnn, x, lengths)
    eval_a, _ = run_padded(rnn.eval(), x, lengths)
    eval_b, _ = run_padded(rnn, x, lengths)
    assert not torch.allclose(train_a, train_b)  # a fresh dropout mask per call
    assert torch.equal(eval_a, eval_b)
    assert torch.all(train_a[1, 2:] == 0)  # padding stays zero in training too


def test_rejects_modules_it_cannot_run():
    with pytest.raises(ValueError, match="batch_first"):
        run_padded(nn.LSTM(4, 4), torch.randn(2, 3, 4), torch.tensor([3, 2]))
