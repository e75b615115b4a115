"""What computed a run's figures: the torch build and the processor (tags ``attnbench.env.*``).

A grid's figures repeat digit for digit on the same torch build and the same kind of
processor, and need not elsewhere: torch picks its CPU kernels by instruction set (AVX2,
AVX-512), and on Intel processors its dropout masks come from MKL's random stream instead of
torch's own generator, so the same seed draws other masks there. Every run records what it
ran on, and ``attnbench compare`` says when a table mixes runs from different ones.
"""

from __future__ import annotations

import functools
import platform

import torch


@functools.cache
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment(device: torch.device) -> dict[str, str]:
    """Short names -> values: torch's version, the processor, the kernels torch chose for it
    (``cpu_capability``), and the GPU where the run trained on one."""
    env = {"torch": torch.__version__, "cpu": cpu_model(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
