"""How the benchmark measures: bytes saved for backward (saved-tensor hooks), peak memory (CUDA allocator or
process RSS), device-busy time, wall-clock medians over interleaved rounds."""

from __future__ import annotations

import argparse
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from bench_parts.settings import BenchError, synchronize


def storage_key(t: Tensor) -> tuple:
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


class _Held:
    """What the pack hook returns: the graph holds this wrapper exactly as long as it holds the saved tensor."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


class SavedTensorMeter:
    """Bytes held by the autograd graph for backward, deduplicated by storage, parameters and buffers excluded.

    Use around the forward pass; call `live_bytes` while the graph (the loss) is alive, before ``backward``.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {storage_key(t) for t in exclude}
        self._held: list[weakref.ref] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: Tensor) -> _Held:
        # detached: a saved output would otherwise hold its own grad_fn through the wrapper (a reference cycle that
        # keeps a dropped graph alive until the garbage collector runs); backward only needs the values
        held = _Held(tensor.detach())
        self._held.append(weakref.ref(held))
        return held

    @staticmethod
    def _unpack(held: _Held) -> Tensor:
        return held.tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def live_bytes(self) -> int:
        storages: dict[tuple, int] = {}
        for ref in self._held:
            held = ref()
            if held is None:
                continue
            key = storage_key(held.tensor)
            if key not in self._excluded:
                storages[key] = held.tensor.untyped_storage().nbytes()
        return sum(storages.values())


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak CPU bytes allocated by torch while ``fn`` runs, above what was allocated when it started.

    torch keeps no CPU allocator statistics; the profiler with ``profile_memory=True`` records every allocation and
    free of torch's CPU allocator (with its size), which are replayed here in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        raw = prof.profiler.kineto_results.events()
    except AttributeError as err:  # a private profiler API: fail loudly if a torch release renames it
        raise BenchError(f"torch {torch.__version__}: the profiler's raw memory events are not reachable: {err}")
    events = sorted(((e.start_ns(), e.nbytes()) for e in raw
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda item: item[0])
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def peak_bytes(fn: Callable[[], object], args: argparse.Namespace) -> int:
    """The most bytes allocated while ``fn`` runs above those allocated when it starts: the CUDA allocator's peak
    on a GPU, :func:`cpu_peak_bytes` on a CPU."""
    if torch.device(args.device).type != "cuda":
        return cpu_peak_bytes(fn)
    synchronize(args)
    torch.cuda.reset_peak_memory_stats(args.device)
    before = torch.cuda.memory_allocated(args.device)
    fn()
    synchronize(args)
    return torch.cuda.max_memory_allocated(args.device) - before


def static_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Parameters and buffers (by storage) plus optimizer state: the memory a variant holds between steps."""
    storages: dict[tuple, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        storages[storage_key(t)] = t.untyped_storage().nbytes()
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, Tensor):
                    storages[storage_key(value)] = value.untyped_storage().nbytes()
    return sum(storages.values())


def eager() -> AbstractContextManager:
    """Run compiled modules eagerly inside the block: saved-tensor hooks and the CPU profiler need eager ops."""
    return torch.compiler.set_stance("force_eager")


def device_busy_seconds(fn: Callable[[], object]) -> float:
    """Seconds the GPU spent in kernels and copies while ``fn`` ran (torch.profiler's self device time, summed):
    against the step's wall time it says how far the step is bound by the host launching work."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    # device-side events only (kernels, copies, memsets): the host ops that launched them carry the same time again
    device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in device) / 1e6


def timed(fn: Callable[[], object], args: argparse.Namespace) -> float:
    synchronize(args)
    start = time.perf_counter()
    fn()
    synchronize(args)
    return time.perf_counter() - start


def round_robin(names: list[str], rounds: int, run: Callable[[str], None]) -> None:
    """``rounds`` passes over ``names``, the order rotated by one each pass (no variant always runs first)."""
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            run(name)


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()
