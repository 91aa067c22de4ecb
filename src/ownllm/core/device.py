"""Where training runs and in which precision, detected rather than assumed, and the MFU denominator.

  CUDA with bf16 support: bf16 autocast over fp32 master weights (no loss scaling needed)
  CUDA without bf16:      fp16 autocast with a gradient scaler (fp16 overflows without one)
  CPU:                    fp32; bf16 autocast only when asked for (--set dtype=bf16).

Why fp32 on every CPU: the same command must train in the same precision on every machine of
a kind and whatever else is running. The old automatic choice timed 128 x 128 products at
start-up and flipped with the load (a 2-core AMD EPYC with AVX-512 bf16 measured bf16 at 1.9x
fp32 once and chose it, though the demo's model there ran at 0.85x). bf16 does pay on CPUs
with AMX: an Intel Xeon of this machine kind trains the cpu preset's model 1.8x faster in bf16
autocast (bench/cpu_precision.py, docs/benchmarks.md), so `--set dtype=bf16` is worth asking
for there; it stays a choice, made by the person who knows their CPU.

MFU (model FLOPs utilisation) = achieved model FLOP/s / peak FLOP/s. On CUDA the peak is
the GPU's published dense bf16 rate (or a measurement for unknown GPUs); on CPU it is a
matrix-product rate measured at start, the honest ceiling of this particular machine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ownllm.core.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s. Checked in order.
GPU_BF16_PEAK = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


@dataclass
class Precision:
    device: torch.device
    dtype: torch.dtype  # the dtype matrix products run in; fp32 means no autocast
    peak_flops: float  # FLOP/s of one device, the MFU denominator
    peak_source: str
    chosen_by: str = ""  # why this dtype: detected, or set by the user

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype of autocast regions, None for fp32 (no autocast): what another thread needs to run alike."""
        return None if self.dtype == torch.float32 else self.dtype

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def describe(self) -> str:
        name = {torch.float32: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.dtype]
        why = f" ({self.chosen_by})" if self.chosen_by else ""
        return f"{self.device.type}, {name}{why}, peak {self.peak_flops / 1e12:.2f} TFLOP/s ({self.peak_source})"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but PyTorch sees no CUDA GPU; use --set device=cpu (or auto)")
    return torch.device(name)


def choose_precision(
    device: torch.device, requested: str = "auto", agree: Callable[[str], str] = lambda name: name
) -> Precision:
    """The training precision for `device`; "auto" detects it, any other value is the user's choice.

    `agree` turns this process's automatic choice into the one every process uses (several
    processes under torchrun must not train in different precisions because their measurements differed).
    """
    chosen_by = f"set by dtype={requested}"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 products on tensor cores where fp32 is used
        torch.backends.cudnn.allow_tf32 = True
        if requested == "auto":
            requested = agree("bf16" if torch.cuda.is_bf16_supported() else "fp16")
            chosen_by = "detected: this GPU " + ("supports bf16" if requested == "bf16" else "has no bf16")
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("this GPU does not support bf16; use --set dtype=fp16 (or auto)")
        peak, source = gpu_peak_flops(device)
        return Precision(device, DTYPES[requested], peak, source, chosen_by)
    if requested == "fp16":
        raise UserError("fp16 training needs a CUDA GPU; on CPU use dtype=fp32 or bf16")
    if requested == "auto":
        requested, chosen_by = "fp32", "the CPU default; --set dtype=bf16 asks for bf16 autocast"
    rate = cpu_peak_flops(DTYPES[requested])
    source = f"measured {requested} matmul, one core x {torch.get_num_threads()}"
    return Precision(device, DTYPES[requested], rate, source, chosen_by)


def cpu_peak_flops(dtype: torch.dtype) -> float:
    """One core's best matrix-product rate times the threads PyTorch uses.

    Measured on one thread because a multi-threaded product waits for its slowest thread:
    on a machine shared with other processes that measures the neighbours, not the ceiling.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return threads * measure_matmul_flops(torch.device("cpu"), dtype)
    finally:
        torch.set_num_threads(threads)


def gpu_peak_flops(device: torch.device) -> tuple[float, str]:
    name = torch.cuda.get_device_name(device)
    for key, flops in GPU_BF16_PEAK:
        if key in name:
            return flops, f"{name} bf16 data sheet"
    return measure_matmul_flops(device, torch.bfloat16, size=4096), f"measured bf16 matmul on {name}"


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 256, seconds: float = 0.3) -> float:
    """The best FLOP/s of repeated (size x size) @ (size x size) products within about `seconds`.

    The best, not the mean: other processes sharing the machine only ever slow a product down.
    The default size fits in a CPU core's cache, so this is close to the arithmetic ceiling.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):  # wake the thread pool, warm the caches
        torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
