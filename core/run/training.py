"""The training loop: optimise one model on one task, evaluate each epoch and at the end.

It knows nothing about MLflow; the runner passes ``log_metric`` and ``on_step`` callbacks.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..config.experiment import TrainConfig
from ..phases import EVAL, TRAIN as TRAIN_PHASE, phase
from ..tasks import Evaluation, Task
from .record import TEST, TRAIN, VAL


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run is marked FAILED."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def select_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from ..errors import BadInputError

            raise BadInputError("train.device: 'cuda' requested but torch sees no CUDA device; valid here: auto, cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_for(device: torch.device, amp: str):
    """bf16 autocast on CUDA (amp: auto|bf16); full precision on the CPU."""
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def current_rss_mib() -> float:
    """Resident memory of this process now (Linux /proc), else the process's peak so far."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LossReadback:
    """Training losses, read back from the device once per logged step instead of every step.

    On CUDA each ``.item()`` makes the CPU wait for the GPU, so the loop loses its lead over
    the kernels; reading a stack of pending losses at once costs one wait. Every loss is still
    checked: the first non-finite one fails the run with its own step number."""

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []
        self.last = math.nan  # the latest loss read back (for the progress line)

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach())

    def read(self, step: int, epoch: int) -> float:
        """The loss of ``step`` (the latest added); raises on any non-finite pending loss."""
        if not self.pending:
            return self.last
        values = torch.stack(self.pending).float().tolist()
        first_step = step - len(values) + 1
        self.pending.clear()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(f"train/loss became {value} at step {first_step + offset} (epoch {epoch}); "
                                         "try a lower train.lr")
        self.last = values[-1]
        return self.last


@dataclass
class FitResult:
    steps: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0
    peak_mem_mib: float = 0.0
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    test: Evaluation | None = None


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def planned_steps(task: Task, cfg: TrainConfig) -> int:
    per_epoch = task.num_batches("train", cfg.batch_size)
    total = per_epoch * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def evaluate_split(task: Task, model: torch.nn.Module, split: str, cfg: TrainConfig, device: torch.device) -> Evaluation:
    """Evaluate ``model`` on a whole split, in eval mode and without gradients; the model's
    mode is restored afterwards. The only place that switches modes around ``Task.evaluate``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_for(device, cfg.amp):
            return task.evaluate(model, split, batch_size=cfg.eval_batch_size or 2 * cfg.batch_size, device=device)
    finally:
        model.train(was_training)


def fit(
    task: Task,
    model: torch.nn.Module,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    log_metric: Callable[[str, float, int], None],
    on_step: Callable[[int, float], None] = lambda step, loss: None,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> FitResult:
    """Train ``model`` on ``task`` under ``cfg``; return timings and the test evaluation."""
    generator = seed_everything(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model.to(device)
    # foreach: one call per step over all parameters instead of a Python loop over them; the
    # same arithmetic op for op (identical weights), ~40% less optimizer time on the CPU, where
    # torch does not pick it by default (benchmarks/bench_overhead.py checks the weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    )
    result = FitResult()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result.peak_mem_mib = current_rss_mib()

    def record(name: str, value: float, step: int) -> None:
        result.history.setdefault(name, []).append((step, value))
        log_metric(name, value, step)

    def evaluate(split: str, step: int, epoch: int | None) -> Evaluation:
        on_phase(f"evaluating {split}")
        with phase(EVAL):
            evaluation = evaluate_split(task, model, split, cfg, device)
        prefix = VAL if split == "validation" else TEST
        for name, value in evaluation.metrics.items():
            record(prefix + name, float(value), epoch if epoch is not None else step)
        return evaluation

    step = 0
    losses = LossReadback()
    for epoch in range(1, cfg.epochs + 1):
        on_phase(f"epoch {epoch}/{cfg.epochs}")
        model.train()
        started = time.perf_counter()
        with phase(TRAIN_PHASE):
            # the flag is passed only when set, so tasks written before it keep working
            grouping = {"group_by_length": True} if cfg.group_by_length else {}
            for batch in task.batches("train", cfg.batch_size, shuffle=True, generator=generator, **grouping):
                batch = batch.to(device)
                with autocast_for(device, cfg.amp):
                    loss = task.loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                schedule.step()
                step += 1
                losses.add(loss)
                result.train_tokens += batch.n_tokens
                if step % cfg.log_every == 0 or step == 1:
                    record(TRAIN + "loss", losses.read(step, epoch), step)
                    result.peak_mem_mib = max(result.peak_mem_mib, current_rss_mib())
                on_step(step, losses.last)
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            losses.read(step, epoch)  # a non-finite loss after the last logged step still fails the run
        result.train_seconds += time.perf_counter() - started
        evaluate("validation", step, epoch)
        if cfg.max_steps and step >= cfg.max_steps:
            break
    result.steps = step
    result.test = evaluate("test", step, None)
    if device.type == "cuda":
        result.peak_mem_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        result.peak_mem_mib = max(result.peak_mem_mib, current_rss_mib())
    return result
