"""What a run costs: energy (kWh) and an estimated CO₂ figure, from hardware counters where they can be read.

Sources, first that works:

nvml      a CUDA device's own energy counter (``nvmlDeviceGetTotalEnergyConsumption``, with the ``nvidia-ml-py``
          package); the GPU only, not the host
rapl      Linux's RAPL counters of the CPU packages (``/sys/class/powercap/intel-rapl:N/energy_uj``, readable
          where the kernel exposes them); the whole package, whatever else runs on it
estimate  a stated power figure × wall time: ``--train.power-watts``, or when it is 0 a default of
          ``WATTS_PER_THREAD`` per CPU thread the run uses (or ``GPU_WATTS`` per GPU); the log says which

CO₂ = energy × ``--train.carbon-intensity`` (grams per kWh; default the world's average electricity, IEA 2023:
about 480 g/kWh). The trainer keeps the total in its checkpoint, so a resumed run goes on counting.
(``codecarbon`` is not used: it looks up a location's carbon intensity online, and this meter must work offline.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

WATTS_PER_THREAD = 10.0  # a server CPU core at full load: about a tenth of a ~100-200 W package of 10-20 cores
GPU_WATTS = 300.0  # a data-center GPU training at full load
RAPL = Path("/sys/class/powercap")


class EnergyMeter:
    """Joules used since it started (``joules()``), by the first source that works (``source``, ``describe()``)."""

    def __init__(self, device_type: str, threads: int, watts: float = 0.0, *, device_index: int = 0,
                 clock: Callable[[], float] = time.monotonic, rapl_root: Path = RAPL) -> None:  # fmt: skip
        self.clock = clock
        self._read: Callable[[], float] | None = None
        self.watts = watts
        if watts > 0:
            self.source, self.note = "estimate", f"{watts:g} W as given (--train.power-watts)"
            self.reset()
            return
        if device_type == "cuda":
            self._read = _nvml_reader(device_index)
            self.source = "nvml"
            self.note = "the GPU's energy counter (NVML)"
        else:
            self._read = _rapl_reader(rapl_root)
            self.source = "rapl"
            self.note = "the CPU packages' RAPL counters"
        if self._read is None:
            per = GPU_WATTS if device_type == "cuda" else WATTS_PER_THREAD
            units = 1 if device_type == "cuda" else threads
            self.watts = per * units
            self.source = "estimate"
            what = "GPU" if device_type == "cuda" else f"{threads} CPU thread{'s' if threads > 1 else ''}"
            self.note = (f"an estimate: {self.watts:g} W for {what} × wall time (no counter readable; "
                         "--train.power-watts sets the figure)")  # fmt: skip
        self.reset()

    def reset(self) -> None:
        """Count from now (the trainer calls it when its loop starts, as wall time is counted from then)."""
        self.start = self.clock()
        self.base = self._read() if self._read is not None else 0.0

    def joules(self) -> float:
        if self._read is None:
            return self.watts * (self.clock() - self.start)
        return max(0.0, self._read() - self.base)

    def describe(self) -> str:
        return f"energy from {self.note}"


def kwh(joules: float) -> float:
    return joules / 3.6e6


def _rapl_reader(root: Path) -> Callable[[], float] | None:
    """Total joules of every CPU package's RAPL counter, with wrap-around handled; None where none is readable."""
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1) if root.is_dir() else []
    readable = []
    for z in zones:
        try:
            int((z / "energy_uj").read_text())
            limit = int((z / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        readable.append((z / "energy_uj", limit))
    if not readable:
        return None
    last = {path: int(path.read_text()) for path, _ in readable}
    total = {"uj": 0}

    def read() -> float:
        for path, limit in readable:
            now = int(path.read_text())
            total["uj"] += (now - last[path]) % (limit + 1)  # the counter wraps at its range
            last[path] = now
        return total["uj"] / 1e6

    return read


def _nvml_reader(index: int) -> Callable[[], float] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:  # no package, no driver, or a GPU without the counter: estimate instead
        return None
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0  # millijoules
