"""Device, dtype, seeding and distributed setup: decided once, here, and reported once."""

from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16: the autocast dtype of the forward pass
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """The forward-pass context: autocast to bf16/fp16 where asked, else nothing."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def describe(self) -> str:
        where = f"{self.device}"
        if self.device.type == "cuda":
            where += f" ({torch.cuda.get_device_name(self.device)})"
        elif self.device.type == "cpu":
            where += f" ({torch.get_num_threads()} threads)"
        dist = f", {self.world_size} processes" if self.distributed else ""
        return f"{where}, {self.precision}{dist}"


def pick_device(spec: str = "auto", option: str = "--device") -> torch.device:
    """The torch device for ``spec`` (auto, cpu, cuda, cuda:N, mps); ``option`` names where it came from, for the
    message when the machine has no such device."""
    if not isinstance(spec, str):
        raise LmlabError(f"{option} must be a device name (auto, cpu, cuda, cuda:N or mps), got {spec!r}")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise LmlabError(f"{option}: unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LmlabError(f"{option} {spec}: CUDA is not available on this machine; use {option} cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LmlabError(f"{option} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LmlabError(f"{option} mps: Apple's MPS is not available on this machine; use {option} cpu (or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise LmlabError(f"{option}: unsupported device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_precision(spec: str, device: torch.device) -> str:
    """auto: bf16 on CUDA devices that support it, fp32 elsewhere (CPU bf16 is opt-in: it changes numerics)."""
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if spec == "fp16" and device.type == "cpu":
        raise LmlabError("--train.precision fp16 needs a GPU; on CPU use fp32 or bf16")
    if spec not in ("fp32", "bf16", "fp16"):
        raise LmlabError(f"unknown precision {spec!r}; use auto, fp32, bf16 or fp16")
    return spec


def setup(device: str = "auto", precision: str = "auto", option: str = "--device") -> Runtime:
    """Choose device and precision; join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, option)
    if world_size > 1:
        import torch.distributed as dist

        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if dev.type == "cpu":
        # values below 1.2e-38 (subnormals) take a slow path on x86: a model whose softmax saturates made SGD
        # run at 0.6x speed for most of its run (benchmark: `lmlab experiment optimizers`); as zeros they cost
        # nothing and change no result that matters.
        torch.set_flush_denormal(True)
    return Runtime(dev, pick_precision(precision, dev), rank, world_size, local_rank)


def teardown(rt: Runtime) -> None:
    if rt.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, for exact resume (saved with torch.save, loaded with weights_only=True)."""
    state = {
        "python": _python_state_to_tensor(random.getstate()),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_python_state_from_tensor(state["python"]))
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# The RNG states are turned into tensors and plain containers so trainer.pt loads with weights_only=True.
def _python_state_to_tensor(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_tensor(d: dict) -> tuple:
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"])


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "has_gauss": has_gauss,
        "cached": cached,
    }


def _set_numpy_state(d: dict) -> None:
    keys = d["keys"].numpy().astype(np.uint32)
    np.random.set_state((d["name"], keys, d["pos"], d["has_gauss"], d["cached"]))


@cache
def peak_flops(device_type: str = "cpu", dtype: str = "fp32") -> float:
    """Measured matmul FLOP/s of this machine (the denominator of MFU): best of a few square matmuls."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    n = 4096 if device_type == "cuda" else 1024
    gen = torch.Generator(device=device_type).manual_seed(0)  # never draw from the global RNG (exact resume)
    a = torch.randn(n, n, device=device_type, dtype=torch_dtype, generator=gen)
    b = torch.randn(n, n, device=device_type, dtype=torch_dtype, generator=gen)
    best = float("inf")
    for _ in range(5):
        if device_type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best
