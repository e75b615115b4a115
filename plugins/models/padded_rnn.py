"""Run an ``nn.LSTM``/``nn.GRU`` on a right-padded batch as if every sequence were alone.

Returns what ``pack_padded_sequence`` -> rnn -> ``pad_packed_sequence`` returns (zeros at
padding, final states at each sequence's last real token), without packing: on CPU the
packed path is ~4-5x slower in backward at a few hundred tokens
(``benchmarks/bench_rnn_encoder.py``). Each layer and direction is one ``torch.lstm`` /
``torch.gru`` call with the module's own parameters on the padded tensor:

- forward direction: real tokens come first, so their outputs are exact; pads run after them.
- backward direction: the input is reversed within each sequence's length (pads stay at the
  end), so it starts at the last real token; its outputs are reversed back.
- final ``h``: the output at the last real token (a gather). An LSTM's final cell ``c`` is
  not among the outputs, so pad steps get one extra input, a flag whose fixed weights
  saturate the input gate to exactly 0 and the forget gate to exactly 1 there:
  ``c = 1 * c + 0 * g`` holds the last real token's cell to the end, with zero gradient
  through the saturated gates.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Pre-activation the pad flag adds: sigmoid(+-1e4) is exactly 1 / 0 in float32, bfloat16
# and float16, and no trained gate comes near 1e4 from its real inputs.
_SATURATE = 1e4


def _reverse_index(lengths: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, L) source positions reversing each row's first ``length`` positions, pads in place."""
    t = torch.arange(real.shape[1], device=real.device)
    return torch.where(real, lengths[:, None] - 1 - t, t)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, t], :] for (B, L, D) x and (B, T) index."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _weights(rnn: nn.RNNBase, layer: int, reverse: bool) -> list[torch.Tensor]:
    suffix = f"_l{layer}{'_reverse' if reverse else ''}"
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
    return [getattr(rnn, name + suffix) for name in names]


def _hold_column(weight_ih: torch.Tensor, hidden: int) -> torch.Tensor:
    """(4H, 1) weights of the pad flag; LSTM gate order is input, forget, cell, output."""
    column = weight_ih.new_zeros(4 * hidden, 1)
    column[:hidden] = -_SATURATE
    column[hidden:2 * hidden] = _SATURATE
    return column


def _direction(rnn: nn.RNNBase, layer: int, reverse: bool, x, pad_flag, last):
    """One layer, one direction over x with real tokens first: outputs (B, L, H) and final
    states [h] or [h, c], each (1, B, H)."""
    weights = _weights(rnn, layer, reverse)
    h0 = x.new_zeros(1, x.shape[0], rnn.hidden_size)
    if rnn.mode == "LSTM":
        weights[0] = torch.cat([weights[0], _hold_column(weights[0], rnn.hidden_size)], dim=1)
        out, _, c_n = torch.lstm(torch.cat([x, pad_flag], dim=-1), (h0, h0), weights, rnn.bias,
                                 1, 0.0, False, False, True)
        return out, [_take(out, last).transpose(0, 1), c_n]
    out, _ = torch.gru(x, h0, weights, rnn.bias, 1, 0.0, False, False, True)
    return out, [_take(out, last).transpose(0, 1)]


def run_padded(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor):
    """``rnn`` (batch_first LSTM/GRU) over x (B, L, D) whose row b holds ``lengths[b] >= 1`` real
    tokens then padding. Returns outputs (B, L, dirs*H), zero at padding, and the final state
    (layers*dirs, B, H) as the module returns it (a tuple (h, c) for an LSTM)."""
    if rnn.mode not in ("LSTM", "GRU") or not rnn.batch_first or getattr(rnn, "proj_size", 0):
        raise ValueError(f"run_padded: needs a batch_first nn.LSTM/nn.GRU without projections, got {rnn!r}")
    total = x.shape[1]
    x = x[:, :int(lengths.max())]  # steps past the longest sequence change nothing
    real = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
    pad_flag = (~real).to(x.dtype)[..., None]
    reverse = _reverse_index(lengths, real) if rnn.bidirectional else None
    last = (lengths - 1)[:, None]
    finals = []  # per layer and direction, in nn.LSTM's order (l0, l0_reverse, l1, ...)
    for layer in range(rnn.num_layers):
        out, state = _direction(rnn, layer, False, x, pad_flag, last)
        finals.append(state)
        if reverse is not None:
            back, state = _direction(rnn, layer, True, _take(x, reverse), pad_flag, last)
            finals.append(state)
            out = torch.cat([out, _take(back, reverse)], dim=-1)
        x = out
        if layer < rnn.num_layers - 1:  # nn.LSTM's dropout between layers, not after the last
            x = F.dropout(x, rnn.dropout, rnn.training)
    out = F.pad(out.masked_fill(~real[..., None], 0.0), (0, 0, 0, total - out.shape[1]))
    h_n, *c_n = (torch.cat(parts, dim=0) for parts in zip(*finals))
    return out, ((h_n, c_n[0]) if c_n else h_n)
