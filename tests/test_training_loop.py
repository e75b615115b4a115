"""The training loop reads losses back in stacks, and still fails on the first non-finite one."""

import math

import pytest
import torch

from attnbench.run.training import LossReadback, NonFiniteLossError


def test_losses_are_read_back_at_logged_steps_with_their_own_values():
    losses = LossReadback()
    assert math.isnan(losses.last)
    for value in (3.0, 2.5, 2.0):
        losses.add(torch.tensor(value, requires_grad=True) * 1.0)
    assert losses.read(step=3, epoch=1) == 2.0 and losses.last == 2.0
    assert losses.pending == []
    assert losses.read(step=3, epoch=1) == 2.0  # nothing pending: the last value again


def test_a_non_finite_loss_between_logged_steps_fails_with_its_step_number():
    losses = LossReadback()
    for value in (1.0, float("nan"), float("inf"), 0.5):  # steps 11..14
        losses.add(torch.tensor(value))
    with pytest.raises(NonFiniteLossError, match="became nan at step 12 \\(epoch 2\\)"):
        losses.read(step=14, epoch=2)
