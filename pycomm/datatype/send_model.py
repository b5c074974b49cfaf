"""How to send a GPU datatype: the three send methods and the performance model that picks one.

Methods (what happens before the MPI library sees the bytes):

- ``"device"``: the pack kernel writes into device memory and a CUDA-aware MPI sends from there;
- ``"one_shot"``: the pack kernel writes straight into mapped pinned host memory (its stores cross
  the bus, no copy follows) and MPI sends from host memory;
- ``"staged"``: the pack kernel writes into device memory, one device-to-host copy moves the packed
  bytes to pinned host memory, and MPI sends from there.

The model predicts the seconds each method takes for a packed size and the layout's smallest block
(what decides how fast a pack kernel runs), interpolating measured tables in log space, and picks the
fastest method available: ``"device"`` only when the MPI library is CUDA-aware. ``pycomm tune``
measures the tables on this GPU and caches them as JSON, keyed by device name and driver version, in
``$PYCOMM_CACHE_DIR/send_model.json`` (default ``~/.cache/pycomm/send_model.json``).

What a measured time covers: for the host methods, until the packed bytes are in host memory; for
``"device"``, the pack kernel plus a modelled cost of the MPI reading device memory
(``DEVICE_SEND_LATENCY_S + bytes / DEVICE_SEND_BYTES_PER_S``), which ``pycomm tune`` cannot measure
without a peer; the network transfer, the same for every method, is left out. Edit the
``device_send`` entry of the cache file to describe a particular MPI and network.

When nothing was measured the model is built from the constants below, typical of a PCIe 4/5 GPU:
small messages go one-shot (one kernel, no copy), large ones with small blocks too, and large ones
with large blocks go through a CUDA-aware MPI when there is one.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycomm.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_BLOCKS",
    "DEFAULT_SIZES",
    "METHODS",
    "SendModel",
    "available_methods",
    "cache_path",
    "choose_method",
    "cuda_aware_mpi",
    "default_model",
    "device_key",
    "load_model",
    "save_model",
]

METHODS = ("device", "one_shot", "staged")
CACHE_VERSION = 1

# Defaults when nothing was measured (seconds, bytes per second).
KERNEL_LAUNCH_S = 6e-6  # launch a kernel and wait for it
DEVICE_PACK_BYTES_PER_S = 500e9  # pack kernel, blocks of PACK_FULL_SPEED_BLOCK bytes or more
PACK_FULL_SPEED_BLOCK = 64  # smaller blocks waste most of each 32-byte memory sector
HOST_LINK_BYTES_PER_S = 20e9  # GPU to host over PCIe, by copy engine or by kernel stores
COPY_LATENCY_S = 8e-6  # one cudaMemcpyAsync and its synchronisation
DEVICE_SEND_LATENCY_S = 10e-6  # a CUDA-aware MPI's extra per-message work for device memory
DEVICE_SEND_BYTES_PER_S = 22e9  # what it moves out of device memory (GPUDirect or its own pipeline)

DEFAULT_SIZES = tuple(1 << k for k in range(6, 29, 2))  # 64 B .. 256 MiB of packed bytes
DEFAULT_BLOCKS = (1, 4, 16, 64, 256, 1024, 4096)


def _default_seconds(method: str, packed_bytes: int, block_bytes: int) -> float:
    pack_rate = DEVICE_PACK_BYTES_PER_S * min(1.0, block_bytes / PACK_FULL_SPEED_BLOCK)
    pack = KERNEL_LAUNCH_S + packed_bytes / pack_rate
    if method == "one_shot":
        # The kernel's stores go straight over the bus: the slower of the two rates bounds it.
        return KERNEL_LAUNCH_S + packed_bytes / min(pack_rate, HOST_LINK_BYTES_PER_S)
    if method == "staged":
        return pack + COPY_LATENCY_S + packed_bytes / HOST_LINK_BYTES_PER_S
    return pack + DEVICE_SEND_LATENCY_S + packed_bytes / DEVICE_SEND_BYTES_PER_S


def _log_interpolate(points: list[float], values: list[float], x: float) -> float:
    """Piecewise-linear interpolation of log(value) over log(x); ends are held flat."""
    if x <= points[0]:
        return values[0]
    if x >= points[-1]:
        return values[-1]
    k = bisect.bisect_right(points, x) - 1
    t = (math.log(x) - math.log(points[k])) / (math.log(points[k + 1]) - math.log(points[k]))
    return math.exp((1 - t) * math.log(values[k]) + t * math.log(values[k + 1]))


@dataclass
class SendModel:
    """Seconds per method on a grid: ``seconds[method][b][s]`` for ``blocks[b]`` and ``sizes[s]``.

    ``source`` is ``"measured"`` or ``"defaults"``; ``device`` the key of the GPU it was measured on.
    ``device_send`` holds the modelled cost of a CUDA-aware MPI reading device memory (added to the
    measured pack time of ``"device"``; ``latency_s`` and ``bytes_per_s``).
    """

    sizes: list[int]
    blocks: list[int]
    seconds: dict[str, list[list[float]]]
    source: str = "defaults"
    device: str = ""
    device_send: dict[str, float] = field(
        default_factory=lambda: {"latency_s": DEVICE_SEND_LATENCY_S, "bytes_per_s": DEVICE_SEND_BYTES_PER_S}
    )

    def __post_init__(self) -> None:
        if not self.sizes or not self.blocks:
            raise InvalidArgumentError("a send model needs at least one size and one block size")
        if sorted(self.sizes) != list(self.sizes) or sorted(self.blocks) != list(self.blocks):
            raise InvalidArgumentError("a send model's sizes and blocks must be ascending")
        for method, grid in self.seconds.items():
            if method not in METHODS:
                raise InvalidArgumentError(f"unknown send method '{method}'; methods: {', '.join(METHODS)}")
            if len(grid) != len(self.blocks) or any(len(row) != len(self.sizes) for row in grid):
                raise InvalidArgumentError(
                    f"send model '{method}': expected {len(self.blocks)} rows of {len(self.sizes)} times"
                )
            if any(not (value > 0 and math.isfinite(value)) for row in grid for value in row):
                raise InvalidArgumentError(f"send model '{method}': times must be positive and finite")

    def predict(self, method: str, packed_bytes: int, block_bytes: int) -> float:
        """Predicted seconds of ``method`` for ``packed_bytes`` bytes whose smallest block is
        ``block_bytes``. Past the largest measured size, time grows in proportion to the bytes."""
        if method not in self.seconds:
            raise InvalidArgumentError(f"the send model has no times for method '{method}'")
        size = max(float(packed_bytes), 1.0)
        block = max(float(block_bytes), 1.0)
        grid = self.seconds[method]
        scale = 1.0
        if size > self.sizes[-1]:
            scale, size = size / self.sizes[-1], float(self.sizes[-1])
        per_block = [_log_interpolate([float(s) for s in self.sizes], row, size) * scale for row in grid]
        seconds = _log_interpolate([float(b) for b in self.blocks], per_block, block)
        if method == "device" and self.source == "measured":
            seconds += self.device_send["latency_s"] + packed_bytes / self.device_send["bytes_per_s"]
        return seconds

    def choose(self, packed_bytes: int, block_bytes: int, methods: tuple[str, ...] | list[str]) -> str:
        """The fastest of ``methods`` by this model (ties go to the earlier one)."""
        candidates = [m for m in methods if m in self.seconds]
        if not candidates:
            raise InvalidArgumentError(f"none of the methods {list(methods)} is in the send model")
        return min(candidates, key=lambda m: self.predict(m, packed_bytes, block_bytes))

    def to_json(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "blocks": list(self.blocks),
            "seconds": self.seconds,
            "source": self.source,
            "device": self.device,
            "device_send": dict(self.device_send),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SendModel:
        try:
            return cls(
                sizes=[int(s) for s in data["sizes"]],
                blocks=[int(b) for b in data["blocks"]],
                seconds={m: [[float(v) for v in row] for row in grid] for m, grid in data["seconds"].items()},
                source=str(data.get("source", "measured")),
                device=str(data.get("device", "")),
                device_send={k: float(v) for k, v in data.get("device_send", {}).items()}
                or {"latency_s": DEVICE_SEND_LATENCY_S, "bytes_per_s": DEVICE_SEND_BYTES_PER_S},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidArgumentError(f"not a send model: {error}") from error


def default_model() -> SendModel:
    """The model built from this module's constants (what is used until ``pycomm tune`` ran)."""
    return SendModel(
        sizes=list(DEFAULT_SIZES),
        blocks=list(DEFAULT_BLOCKS),
        seconds={
            method: [
                [_default_seconds(method, size, block) for size in DEFAULT_SIZES] for block in DEFAULT_BLOCKS
            ]
            for method in METHODS
        },
    )


def cache_path() -> Path:
    """Where measured models are cached: ``$PYCOMM_CACHE_DIR/send_model.json``, else
    ``~/.cache/pycomm/send_model.json``."""
    directory = os.environ.get("PYCOMM_CACHE_DIR")
    base = Path(directory) if directory else Path.home() / ".cache" / "pycomm"
    return base / "send_model.json"


def device_key(device_name: str | None = None, driver_version: int | None = None) -> str:
    """The cache key of a GPU: its name and the driver version (a new driver may change the timings).
    Without arguments, those of device 0 as the CUDA runtime sees them."""
    if device_name is None or driver_version is None:
        from pycomm import _cuda

        status = _cuda.runtime_status()
        device_name = device_name if device_name is not None else (status.get("device_name") or "no device")
        driver_version = (
            driver_version if driver_version is not None else int(status.get("driver_version", 0))
        )
    return f"{device_name} | driver {driver_version}"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # an unreadable cache is the same as none: the defaults apply until the next tune
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    models = data.get("models")
    return models if isinstance(models, dict) else {}


def save_model(model: SendModel, key: str, path: Path | None = None) -> Path:
    """Stores ``model`` under ``key`` in the cache file (other devices' entries are kept); the file is
    replaced atomically so a concurrent reader never sees half of it."""
    path = cache_path() if path is None else Path(path)
    models = _read_cache(path)
    models[key] = model.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"version": CACHE_VERSION, "models": models}, indent=1))
    os.replace(temporary, path)
    return path


def load_model(key: str | None = None, path: Path | None = None) -> SendModel:
    """The cached model of ``key`` (default: this machine's GPU), or :func:`default_model` when none
    was measured or the cache cannot be read."""
    path = cache_path() if path is None else Path(path)
    models = _read_cache(path)
    if not models:
        return default_model()
    if key is None:
        try:
            key = device_key()
        except ImportError:
            return default_model()
    entry = models.get(key)
    if entry is None:
        return default_model()
    try:
        return SendModel.from_json(entry)
    except InvalidArgumentError:
        return default_model()


def cuda_aware_mpi() -> bool:
    """Whether the MPI library in use can send from device memory (``MPIX_Query_cuda_support``).

    Only asked when mpi4py's MPI module is already loaded (importing it would initialise MPI); False
    otherwise, and False when the library has no such query. ``PYCOMM_CUDA_AWARE_MPI=1`` or ``0``
    overrides the answer (for an MPI that is CUDA-aware without saying so).
    """
    override = os.environ.get("PYCOMM_CUDA_AWARE_MPI")
    if override in ("0", "1"):
        return override == "1"
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None:
        return False
    query = getattr(mpi, "Query_cuda_support", None)
    if query is not None:
        try:
            return bool(query())
        except Exception:  # the binding exists but the library lacks the symbol
            return False
    import ctypes

    try:
        function = ctypes.CDLL(mpi.__file__).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return False
    function.restype = ctypes.c_int
    return bool(function())


def available_methods(cuda_aware: bool | None = None) -> tuple[str, ...]:
    """The send methods this process can use: all three with a CUDA-aware MPI, else the host ones."""
    aware = cuda_aware_mpi() if cuda_aware is None else cuda_aware
    return METHODS if aware else ("one_shot", "staged")


_loaded: dict[str, SendModel] = {}


def choose_method(packed_bytes: int, block_bytes: int, cuda_aware: bool | None = None) -> str:
    """The method to send ``packed_bytes`` (smallest block ``block_bytes``) with, by this GPU's cached
    model (loaded once per process) or the defaults. ``PYCOMM_SEND_METHOD`` forces one."""
    forced = os.environ.get("PYCOMM_SEND_METHOD")
    methods = available_methods(cuda_aware)
    if forced:
        if forced not in methods:
            raise InvalidArgumentError(
                f"PYCOMM_SEND_METHOD={forced} is not available here; available: {', '.join(methods)}"
            )
        return forced
    model = _loaded.get("model")
    if model is None:
        model = _loaded["model"] = load_model()
    return model.choose(packed_bytes, block_bytes, methods)
