"""Greedy decoding of the Multi30k test set (1000 sentences) with and without the decoder cache.

The model is the transformer of experiments/multi30k.yaml (its dims, tokenizer and decode
settings), with untrained weights: speed does not depend on what the weights say, as long
as both runs do the same work. So EOS is made impossible (its logit is -inf) and every
sentence is decoded to its full length budget, ``max_len_a * source_tokens + max_len_b``
tokens, in both runs; the benchmark checks that both produce the same translations.

The reference, full recomputation (``use_cache=False``: the decoder re-runs over the whole
prefix at every step, as before incremental decoding), is measured in the same run.
Target: the cache is at least 5x faster and decodes the test set in at most 30 s. Run:

    python benchmarks/bench_decoding.py --data ../shared/data/multi30k [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from attnbench.config import load_experiment
from attnbench.data import EOS
from attnbench.plugin_host import discover

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO, TARGET_CACHED_S = 5.0, 30.0


def load_task_and_model(data: Path, cache_dir: str):
    """The multi30k.yaml translation task on the local copy, and its transformer (seed 0)."""
    experiment, _ = load_experiment(REPO / "experiments" / "multi30k.yaml",
                                    [f"tasks.translation.data.path={data}"])
    host = discover()
    task_cls = host.task.get("translation").factory
    task = task_cls(task_cls.parse_options(experiment.tasks["translation"], where="tasks.translation"), cache_dir=cache_dir)
    entry = next(m for m in experiment.grid.model if m["family"] == "transformer")
    family_cls = host.model.get("transformer").factory
    family = family_cls(family_cls.parse_options({k: v for k, v in entry.items() if k != "family"}))
    torch.manual_seed(0)
    model = family.build(task.prepare(), experiment.model, host).eval()
    batch_size = experiment.train.eval_batch_size or 2 * experiment.train.batch_size
    return task, model, batch_size


def never_end(module, args, output):
    """Forward hook on the output layer: EOS is never the best token, so lengths are fixed."""
    output = output.clone()
    output[..., EOS] = float("-inf")
    return output


def timed_translate(task, model, batch_size: int, use_cache: bool) -> tuple[list[str], float]:
    start = time.perf_counter()
    out = task.translate(model, "test", batch_size=batch_size, device=torch.device("cpu"), use_cache=use_cache)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "multi30k",
                        help="folder with Multi30k {train,validation,test}.jsonl.gz (default: ../shared/data/multi30k)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    if not (args.data / "test.jsonl.gz").exists():
        parser.exit(2, f"--data: {args.data} has no test.jsonl.gz; point it at the Multi30k folder of ../shared/data\n")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        task, model, batch_size = load_task_and_model(args.data, tmp)
        load_s = time.perf_counter() - start
        model.lm_head.register_forward_hook(never_end)
        n_sentences = len(task.sources["test"])
        decode = task.options.decode
        n_tokens = sum(min(int(decode.max_len_a * len(s) + decode.max_len_b), task.io.max_tgt_len - 1)
                       for s in task.sources["test"])
        load_before = os.getloadavg()
        cached, cached_s = timed_translate(task, model, batch_size, use_cache=True)
        recomputed, recomputed_s = timed_translate(task, model, batch_size, use_cache=False)
        load_after = os.getloadavg()

    same = sum(a == b for a, b in zip(cached, recomputed))
    ratio = recomputed_s / cached_s
    print(f"Multi30k test: {n_sentences} sentences, {n_tokens} tokens generated per run (EOS disabled: every "
          f"sentence decoded to max_len_a*n+max_len_b), batch {batch_size}, {args.threads} thread(s)")
    print(f"model: multi30k.yaml transformer, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"vocab {task.io.vocab_size} (data, tokenizer and model built in {load_s:.1f} s)")
    print(f"with cache:           {cached_s:7.2f} s  ({n_tokens / cached_s:8.0f} tokens/s)")
    print(f"recomputation (ref):  {recomputed_s:7.2f} s  ({n_tokens / recomputed_s:8.0f} tokens/s)")
    print(f"speed-up with cache:  {ratio:7.1f}x   (target >= {TARGET_RATIO:.0f}x; cached target <= {TARGET_CACHED_S:.0f} s)")
    print(f"identical translations: {same}/{n_sentences}")
    print(f"load average (1, 5, 15 min): before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
