"""Task parallelism on CPU: chunks of tasks in worker threads, differentiably.

The per-task kernels of meta-learning are small (a 5-shot support set, a
few dozen channels), and PyTorch's intra-op threads split each of them across
cores with more synchronisation than work. Tasks are independent, so on CPU
it is faster to give each core its own chunk of tasks and run every kernel
single-threaded: :func:`map_task_chunks` runs ``fn`` on every chunk in a
worker thread (PyTorch releases the GIL inside its kernels) and joins the
results along the task dim. It is a ``torch.autograd.Function``: the
backward pass runs each chunk's vector-Jacobian product in the same worker
threads, so the expensive backward through a second-order inner loop is
parallel too. On other devices, or with one thread, nothing changes.

How many workers: one per intra-op thread (``torch.get_num_threads()``) unless
the program fixes the count with :func:`set_task_workers`. ``hvi fit
--threads N`` does that and keeps the main thread's kernels single-threaded
(``cli/process.py``): with torch's intra-op threads > 1 every small kernel of
the main thread's share of a step (Pyro's sites, the query likelihood, Adam)
becomes an OpenMP region whose idle thread spin-waits: more CPU time for no
gain in wall time (measured in docs/performance.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["map_task_chunks", "num_task_chunks", "set_task_workers", "task_workers"]

# fn(inputs, chunk) -> outputs, each with the task dim at ``task_dim``.
ChunkFn = Callable[[Sequence[Tensor], slice], tuple[Tensor, ...]]

_WORKER_PREFIX = "hvi-tasks"
_POOL: ThreadPoolExecutor | None = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()
_TASK_WORKERS: int | None = None  # None: one per intra-op thread


def set_task_workers(workers: int | None) -> None:
    """Fixes how many worker threads split a task batch on CPU, process-wide.

    A program's setting, like ``torch.set_num_threads`` (``hvi fit --threads``
    calls it; the library never does): with ``workers`` fixed, the intra-op
    thread count no longer decides the chunks, so the main thread can run its
    kernels single-threaded while ``workers`` threads adapt the chunks.

    Args:
        workers: Worker threads (>= 1), or None for one per intra-op thread
            (``torch.get_num_threads()``, the default).

    Raises:
        ValueError: ``workers`` is not None or an integer >= 1.
    """
    global _TASK_WORKERS
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"task workers must be None or an integer >= 1, got {workers!r}; pass e.g. 2 (one per core).")
    _TASK_WORKERS = workers


def task_workers() -> int:
    """The worker threads a task batch is split over on CPU: :func:`set_task_workers`'s count, else
    ``torch.get_num_threads()``."""
    return _TASK_WORKERS if _TASK_WORKERS is not None else torch.get_num_threads()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or _POOL_WORKERS < workers:
            if _POOL is not None:  # a bigger one replaces it: let its idle threads exit
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=_WORKER_PREFIX)
            _POOL_WORKERS = workers
        return _POOL


@contextmanager
def _single_threaded_kernels():
    """Intra-op threads = 1 while the workers run (the cores go to the chunks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def num_task_chunks(num_tasks: int, device: torch.device, enabled: bool = True) -> int:
    """How many chunks :func:`map_task_chunks` should split ``num_tasks`` tasks into.

    One per worker (:func:`task_workers`: one per intra-op thread unless
    :func:`set_task_workers` fixed the count) on CPU, never more than there are tasks; 1 (no threads) on other devices, when disabled,
    inside a worker, and under thread-local state a worker would not see: a
    ``torch.func`` transform or a ``TorchDispatchMode`` (e.g. ``FlopCounterMode``).
    """
    if not enabled or device.type != "cpu" or threading.current_thread().name.startswith(_WORKER_PREFIX):
        return 1
    if _thread_local_state_active():
        return 1
    return max(1, min(num_tasks, task_workers()))


def _thread_local_state_active() -> bool:
    """A ``torch.func`` transform or a dispatch mode is active in this thread."""
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
    if level is None or modes is None:  # a torch without these probes: stay in this thread
        return True
    return level() is not None or modes() > 0


def _bounds(num_tasks: int, chunks: int) -> list[slice]:
    sizes = [num_tasks // chunks + (i < num_tasks % chunks) for i in range(chunks)]
    starts = [sum(sizes[:i]) for i in range(chunks)]
    return [slice(s, s + n) for s, n in zip(starts, sizes)]


def _single_threaded(work: Callable[[int], object]) -> Callable[[int], object]:
    def run(i: int) -> object:
        # OpenMP's thread count is per calling thread: set it in the worker too.
        torch.set_num_threads(1)
        return work(i)

    return run


def _run_chunks(work: Callable[[int], object], chunks: int) -> list:
    with _single_threaded_kernels():
        futures = [_pool(chunks).submit(_single_threaded(work), i) for i in range(chunks)]
        return [f.result() for f in futures]


class _TaskChunks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn: ChunkFn, num_tasks: int, chunks: int, task_dim: int, *inputs: Tensor):
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
        bounds = _bounds(num_tasks, chunks)

        def work(i: int) -> tuple[Tensor, ...]:
            with torch.enable_grad():
                return tuple(fn(leaves, bounds[i]))

        results = _run_chunks(work, chunks)
        ctx.results, ctx.leaves, ctx.bounds, ctx.task_dim = results, leaves, bounds, task_dim
        return tuple(torch.cat([r[j] for r in results], task_dim).detach() for j in range(len(results[0])))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        wanted = [i for i, t in enumerate(ctx.leaves) if t.requires_grad]
        inputs = [ctx.leaves[i] for i in wanted]

        def work(c: int) -> list[Tensor | None]:
            outs, grad_outs = [], []
            for out, g in zip(ctx.results[c], grads):
                if out.requires_grad and g is not None:
                    outs.append(out)
                    grad_outs.append(g.narrow(ctx.task_dim, ctx.bounds[c].start, out.shape[ctx.task_dim]))
            if not outs or not inputs:
                return [None] * len(inputs)
            return list(torch.autograd.grad(outs, inputs, grad_outs, allow_unused=True))

        parts = _run_chunks(work, len(ctx.results))
        ctx.results = None  # free every chunk's graph
        total: list[Tensor | None] = [None] * len(ctx.leaves)
        for j, i in enumerate(wanted):
            gs = [p[j] for p in parts if p[j] is not None]
            total[i] = sum(gs[1:], gs[0]) if gs else None
        return (None, None, None, None, *total)


def map_task_chunks(
    fn: ChunkFn, inputs: Sequence[Tensor], num_tasks: int, chunks: int, task_dim: int = 0
) -> tuple[Tensor, ...]:
    """Runs ``fn(inputs, chunk)`` for ``chunks`` slices of the tasks in parallel.

    Args:
        fn: A pure function of ``inputs`` (the shared tensors, e.g. θ) and a
            ``slice`` of the task indices; returns tensors whose dim
            ``task_dim`` has the chunk's length. It must only read the
            ``inputs`` it is given (not the caller's tensors) for gradients to
            reach them.
        inputs: Tensors shared by every chunk; gradients flow back to them.
        num_tasks: Number of tasks.
        chunks: Number of chunks (and worker threads), see :func:`num_task_chunks`.
        task_dim: The task dim of ``fn``'s outputs (default 0).

    Returns:
        ``fn``'s outputs for all tasks, joined along ``task_dim``.
    """
    if chunks <= 1:
        return tuple(fn(inputs, slice(0, num_tasks)))
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _TaskChunks.apply(fn, num_tasks, chunks, task_dim, *inputs)
    bounds = _bounds(num_tasks, chunks)
    results = _run_chunks(lambda i: tuple(fn(inputs, bounds[i])), chunks)
    return tuple(torch.cat([r[j] for r in results], task_dim) for j in range(len(results[0])))
