"""Data-parallel meta-training over tasks with ``torch.distributed``.

Each of the ``W`` processes (ranks) adapts and evaluates its own share of every
step's global task batch, the ranks all-reduce the gradients of the Pyro
params, and every rank applies the same optimizer step. The result equals one
process training on the whole batch (up to the order of floating-point sums):

* **Shards.** Every rank draws the same global batch of ``B`` task indices
  (the task sampler is seeded alike on all ranks) and loads only its contiguous
  share, ``B // W`` tasks, one more on the first ``B % W`` ranks
  (:func:`shard_slice`): no task is on two ranks.
* **Gradients.** The tasks plate scales rank ``r``'s local terms by ``M/B_r``
  while the global terms (the KL of q(θ), hyperpriors) enter every rank's loss
  once. The weighted sum ``Σ_r (B_r/B)·∇L_r`` is ``(M/B)·Σ_tasks ∇ℓ_i + ∇KL``:
  the single-process gradient, with the global KL counted once
  (:class:`GradAllReduce`; the same weights give the batch mean of MAML's loss).
* **Noise.** The global RNG is seeded identically on every rank (the θ draw of a
  Normal or flow q(θ) must be the same everywhere). What a task draws is keyed
  by its position in the global batch: its inner-loop noise stream
  (:data:`hvi.noise.TASK_SHARD`) and its q(φ_i) sample (every rank draws the
  global batch's standard-normal tensor and keeps its slice). So each task gets
  the noise it gets in a single-process run, distinct tasks get distinct noise,
  and every rank's randomness is a deterministic function of the seed.
* **Failures.** The process group has a timeout, a step whose loss or gradient
  is not finite on any rank is skipped on all, and a rank that raises ends its
  process: ``torchrun`` then stops the other ranks and exits non-zero with the
  failing rank's error.

Launch with the standard launcher (see ``docs/distributed.md``)::

    torchrun --standalone --nproc-per-node 2 -m hvi.cli.main fit --out runs/x ...

:func:`hvi.fit` shards by itself when a process group of more than one rank is
initialized (:func:`init` does it from torchrun's environment).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pyro
import torch
import torch.distributed as dist
from pyro.infer.util import torch_item

from hvi.elbo_parts import PARTS
from hvi import shards
from hvi.tasks import TaskBatch

__all__ = [
    "World",
    "env_world_size",
    "init",
    "current",
    "shard_sizes",
    "shard_slice",
    "GradAllReduce",
    "check_same_rng",
    "task_shard",
    "DEFAULT_TIMEOUT_S",
]

#: Seconds a collective waits for the other ranks before it fails (``HVI_DIST_TIMEOUT`` overrides).
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job.

    Attributes:
        rank: This process's rank, ``0 .. world_size - 1``.
        world_size: Number of processes.
        local_rank: Rank on this node (picks the GPU).
    """

    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files."""
        return self.rank == 0

    def sizes(self, batch: int) -> list[int]:
        """Tasks of each rank for a global batch of ``batch`` (:func:`shard_sizes`)."""
        return shard_sizes(batch, self.world_size)

    def share(self, batch: int) -> slice:
        """This rank's tasks of a global batch of ``batch`` (:func:`shard_slice`)."""
        return shard_slice(batch, self.rank, self.world_size)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (as torchrun sets it).") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    return _env_int("WORLD_SIZE") or 1


def init(backend: str | None = None, device: torch.device | str | None = None,
         timeout_s: float | None = None) -> World | None:
    """Joins the process group that torchrun's environment describes, once.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` /
    ``MASTER_PORT``, read by ``torch.distributed``). Does nothing and returns
    None when ``WORLD_SIZE`` is unset or 1.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default nccl for a CUDA ``device``, else gloo.
        device: The training device; ``cuda`` means ``cuda:LOCAL_RANK`` (made
            the current device; another index is refused).
        timeout_s: Collective timeout (default ``HVI_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`).

    Returns:
        This process's :class:`World`, or None for a single process.

    Raises:
        ValueError: If the environment is inconsistent (a rank outside the world).
    """
    size = env_world_size()
    if size <= 1:
        return None
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} must be set to 0..{size - 1} with WORLD_SIZE={size}; launch with torchrun.")
    local = rank if local is None else local
    if dist.is_initialized():
        return current()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        if dev.index is not None and dev.index != local:
            raise ValueError(
                f"device {dev} would put rank {rank} (LOCAL_RANK {local}) on another rank's GPU; pass device "
                f"'cuda' (--device cuda): each rank then uses cuda:LOCAL_RANK."
            )
        torch.cuda.set_device(local)
    if timeout_s is None:
        timeout_s = float(os.environ.get("HVI_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    dist.init_process_group(backend=backend, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s))
    return World(rank, size, local)


def current() -> World | None:
    """The :class:`World` of the initialized default process group, or None (none, or one rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    if size <= 1:
        return None
    rank = dist.get_rank()
    return World(rank, size, _env_int("LOCAL_RANK") or 0)


def shard_sizes(batch: int, world_size: int) -> list[int]:
    """Tasks per rank: ``batch // world_size``, one more on the first ``batch % world_size`` ranks.

    Raises:
        ValueError: If a rank would get no task.
    """
    if batch < world_size:
        raise ValueError(
            f"task_batch={batch} is smaller than the {world_size} processes; every process needs a task: "
            f"use --task-batch >= {world_size} or fewer processes."
        )
    return [batch // world_size + (r < batch % world_size) for r in range(world_size)]


def shard_slice(batch: int, rank: int, world_size: int) -> slice:
    """The contiguous positions of rank ``rank``'s tasks in a global batch of ``batch`` tasks."""
    sizes = shard_sizes(batch, world_size)
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


class GradAllReduce:
    """``hvi.SVI.reduce_grads`` for data parallelism: the global gradient and loss on every rank.

    One all-reduce of ``[weight·loss, has-gradient flags, weight·gradients]``
    over every param of the param store (sorted by name), with ``weight =
    B_r / B`` (see the module docstring). A param that no rank has a gradient
    for keeps ``grad = None``; params first seen in a step are broadcast from
    rank 0 before the step, so all ranks start from the same values.

    The ELBO's ``last_parts`` (:mod:`hvi.elbo_parts`) are combined with the
    same weights, so they too are the global batch's.

    Args:
        weight: This rank's ``B_r / B`` (updated per step by :func:`hvi.fit`).
        elbo: The loss whose ``last_parts`` to combine (None: none).
    """

    def __init__(self, weight: float = 1.0, elbo: object | None = None) -> None:
        self.weight = weight
        self.elbo = elbo
        self._seen: set[str] = set()

    def __call__(self, params: set[torch.Tensor], loss) -> tuple[set[torch.Tensor], float]:
        if isinstance(loss, tuple):
            raise TypeError("data-parallel training needs a scalar loss, not a tuple of losses.")
        named = sorted(pyro.get_param_store().named_parameters())
        if not named:
            return params, loss
        device = named[0][1].device
        count = torch.tensor([len(named), -len(named)], dtype=torch.float64, device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        if count[0] != -count[1]:
            raise RuntimeError(
                f"rank {dist.get_rank()} has {len(named)} Pyro params but another rank has a different number; "
                "every rank must build the same model (same config and code)."
            )
        new = [p for n, p in named if n not in self._seen]
        if new:  # identical starting values everywhere (they are, with equal seeds; this makes sure)
            flat = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in new])
            dist.broadcast(flat, src=0)
            with torch.no_grad():
                for p, v in zip(new, flat.split([p.numel() for p in new])):
                    p.copy_(v.view_as(p))
            self._seen.update(n for n, _ in named)
        w = self.weight
        names = PARTS if self.elbo is not None else ()
        known = getattr(self.elbo, "last_parts", None) or {}
        nan = float("nan")  # a rank without parts (diverged) makes the global parts unknown
        parts = [torch.tensor([w * float(torch_item(loss))] + [w * known.get(n, nan) for n in names],
                              dtype=torch.float64, device=device)]
        parts.append(torch.tensor([float(p.grad is not None) for _, p in named], dtype=torch.float64, device=device))
        parts += [
            (p.grad.detach().reshape(-1).to(torch.float64) * w) if p.grad is not None
            else torch.zeros(p.numel(), dtype=torch.float64, device=device)
            for _, p in named
        ]
        buf = torch.cat(parts)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        k, j = len(named), 1 + len(names)
        if names:
            values = buf[1:j].tolist()
            self.elbo.last_parts = (
                None if any(math.isnan(v) for v in values) else dict(zip(names, values))
            )
        flags = buf[j:j + k].tolist()
        grads = buf[j + k:].split([p.numel() for _, p in named])
        out = set()
        for (_, p), flag, g in zip(named, flags, grads):
            if flag > 0:
                p.grad = g.view_as(p).to(p.dtype)
                out.add(p)
            else:
                p.grad = None
        return out, float(buf[0])


def check_same_rng(device: torch.device | None = None) -> None:
    """Raises unless every rank's global RNG is in the same state (what exact data parallelism needs).

    Compares a digest of PyTorch's CPU RNG state (and the CUDA one of
    ``device``) across the ranks with two small all-reduces.

    Raises:
        ValueError: If the ranks' states differ.
    """
    import hashlib

    states = [torch.get_rng_state()]
    if device is not None and torch.device(device).type == "cuda":
        states.append(torch.cuda.get_rng_state(torch.device(device)))
    digest = hashlib.sha256(b"".join(bytes(t.numpy()) for t in states)).digest()
    value = float(int.from_bytes(digest[:6], "little"))  # exact in float64
    on = torch.device(device) if device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
    both = torch.tensor([value, -value], dtype=torch.float64, device=on)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    if both[0] != -both[1]:
        raise ValueError(
            f"rank {dist.get_rank()}: the global RNG differs between the ranks; pass the same seed on every rank "
            "(hvi.fit(seed=...)), since a θ draw and the task noise must agree across ranks."
        )


@contextlib.contextmanager
def task_shard(world: World, total: int) -> Iterator[None]:
    """Within: this rank's tasks of a global batch of ``total`` draw their global-batch noise."""
    part = world.share(total)
    with shards.task_shard(part.start, part.stop - part.start, total):
        yield


def shard_batch(batch: TaskBatch, world: World) -> TaskBatch:
    """This rank's tasks of a global ``batch``."""
    return batch.tasks(world.share(batch.batch_size))


def relaunch(nproc: int, argv: list[str]) -> int:
    """Runs ``python -m hvi.cli.main ARGV`` under ``torch.distributed.run`` with ``nproc`` local processes.

    What ``hvi fit --nproc N`` does: ``argv`` is the process's command line
    (``sys.argv[1:]``) without ``--nproc``. Returns torchrun's exit status
    (non-zero when any rank failed).

    Raises:
        ValueError: If ``nproc`` is not 1 .. the CPU count, or this process already runs under torchrun.
    """
    import subprocess
    import sys

    cpus = os.cpu_count() or 1
    if not (isinstance(nproc, int) and 1 <= nproc <= cpus):
        raise ValueError(
            f"--nproc {nproc!r} must be an integer from 1 to the {cpus} CPU cores of this machine; "
            "for more processes or several machines run torchrun yourself (docs/distributed.md)."
        )
    if env_world_size() > 1:
        raise ValueError("--nproc cannot be used under torchrun (WORLD_SIZE is set); drop --nproc or torchrun.")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "hvi.cli.main", *argv]
    return subprocess.call(cmd, env=env)


def strip_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (e.g. ``--nproc 2``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out
