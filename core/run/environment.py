"""What computed a run's figures: the torch build and the processor (tags ``attnbench.env.*``).

A grid's figures repeat digit for digit on the same torch build and the same kind of
processor, and need not elsewhere: torch, MKL and oneDNN pick their CPU kernels by
instruction set (AVX2, AVX-512), and on Intel processors torch's dropout masks come from MKL's
random stream instead of torch's own generator, so the same seed draws other masks there.
Environment variables can cap those instruction sets (README, "What the default grid shows":
an AVX-512 machine reproduces the AVX2 table under three of them), so they are recorded too.
Every run records what it ran on, and ``attnbench compare`` says when a table mixes runs
from different ones.
"""

from __future__ import annotations

import functools
import os
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


# Variables that change which kernels torch (ATEN_*), MKL and oneDNN (ONEDNN_*, formerly DNNL_*)
# run on the CPU, and so the digits: with them the same processor gives another table.
KERNEL_SWITCHES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def kernel_switches() -> str:
    """The :data:`KERNEL_SWITCHES` this process runs under, ``NAME=value`` joined by spaces; "" for none."""
    return " ".join(f"{name}={os.environ[name]}" for name in KERNEL_SWITCHES if os.environ.get(name))


def environment(device: torch.device) -> dict[str, str]:
    """Short names -> values: torch's version, the processor, the kernels torch chose for it
    (``cpu_capability``), any kernel switches set (``kernel_switches``), and the GPU where the
    run trained on one."""
    env = {"torch": torch.__version__, "cpu": cpu_model(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if switches := kernel_switches():
        env["kernel_switches"] = switches
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
