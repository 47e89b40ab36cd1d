"""Meta-training by SVI: :func:`fit` (with :class:`hvi.svi.SVI`) and its immutable :class:`FitResult`."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import pyro
import torch
from pyro.optim import PyroOptim
from torch import Tensor

from hvi.data.base import TaskSource
from hvi.meta import MetaModel
from hvi.methods import outer_loss
from hvi.settings import FitSettings, check_setting
from hvi.svi import SVI
from hvi.tasks import TaskBatch
from hvi.validation import validate_for_model

__all__ = ["FitResult", "default_optimizer", "fit", "make_elbo", "subsample", "TaskSampler"]

#: Anything that yields a training batch: a source, a fixed batch, or ``f(generator) -> TaskBatch``.
TaskSampler = TaskSource | TaskBatch | Callable[[torch.Generator], TaskBatch]


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        params: Constrained values of every Pyro param after training (detached copies).
        losses: The SVI loss per step: an estimate of −ELBO (with M/B and β applied);
            for MAML, first-order MAML and Reptile the mean query negative
            log-likelihood after adapting (:mod:`hvi.methods`).
        config: The model's and the fit's settings.
        seconds: Wall-clock training time.
        skipped: Steps not applied because their loss or a gradient was not
            finite (their ``losses`` entry is ``nan``).
    """

    params: Mapping[str, Tensor]
    losses: tuple[float, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: tuple[int, ...] = ()

    @property
    def elbo(self) -> tuple[float, ...]:
        """ELBO estimate per step (the negated losses)."""
        return tuple(-v for v in self.losses)


def make_elbo(kind: Literal["trace", "meanfield"] = "trace", num_particles: int = 1):
    """The Pyro ELBO: ``Trace_ELBO`` or ``TraceMeanField_ELBO`` (analytic KL where known).

    After each step its ``last_parts`` holds the estimate's expected
    log-likelihood and local and global KL (:mod:`hvi.elbo_parts`).

    Particles are vectorized: the guide's inner loop runs once per θ particle,
    batched with vmap, and once in total when q(θ) is a point mass.
    """
    if not (isinstance(num_particles, int) and num_particles >= 1):
        raise ValueError(f"num_particles={num_particles!r} must be an integer >= 1.")
    from hvi.elbo_parts import PartsMeanFieldELBO, PartsTraceELBO

    # Trace_ELBO / TraceMeanField_ELBO that also keep their estimate's parts (hvi.elbo_parts).
    kinds = {"trace": PartsTraceELBO, "meanfield": PartsMeanFieldELBO}
    if kind not in kinds:
        raise ValueError(f"elbo={kind!r} is not understood; use 'trace' or 'meanfield'.")
    return kinds[kind](
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=2,
    )


def subsample(batch: TaskBatch, size: int, generator: torch.Generator) -> TaskBatch:
    """``size`` tasks of ``batch`` drawn uniformly without replacement (keeps ``num_tasks``)."""
    B = batch.batch_size
    if not 1 <= size <= B:
        raise ValueError(f"task_batch={size} must be between 1 and the {B} tasks given.")
    pick = torch.randperm(B, generator=generator)[:size].to(batch.support_x.device)

    def take(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.index_select(0, pick)

    return dataclasses.replace(
        batch, **{f.name: take(getattr(batch, f.name)) for f in dataclasses.fields(batch) if f.name != "num_tasks"}
    )


def _sampler(data: TaskSampler, task_batch: int | None) -> Callable[[torch.Generator], TaskBatch]:
    if isinstance(data, TaskSource):
        b = 8 if task_batch is None else task_batch
        return lambda g: data.sample("train", b, g)
    if isinstance(data, TaskBatch):
        if task_batch is None or task_batch == data.batch_size:
            return lambda g: data
        return lambda g: subsample(data, task_batch, g)
    if callable(data):
        return data
    raise TypeError(
        f"data must be a TaskSource, a TaskBatch or a callable(generator) -> TaskBatch, "
        f"got {type(data).__name__}."
    )


class _ShardSampler:
    """This rank's share of each global batch; ``global_size`` is the last global batch's size."""

    def __init__(self, data: TaskSampler, task_batch: int | None, world) -> None:
        self.world, self.global_size = world, 0
        # A source with the stock sampler loads only this rank's tasks; anything else is sliced.
        self.source = data if isinstance(data, TaskSource) and type(data).sample is TaskSource.sample else None
        self.batch = 8 if task_batch is None else task_batch
        self.full = None if self.source is not None else _sampler(data, task_batch)

    def __call__(self, generator: torch.Generator) -> TaskBatch:
        if self.source is None:
            full = self.full(generator)
            self.global_size = full.batch_size
            return full.tasks(self.world.share(full.batch_size))
        m = self.source.num_tasks("train")
        if not 1 <= self.batch <= m:  # as TaskSource.sample
            raise ValueError(
                f"batch_size={self.batch} must be between 1 and the {m} tasks of split 'train'; "
                f"lower the task batch (--task-batch)."
            )
        index = torch.randperm(m, generator=generator)[: self.batch]  # the same draw as TaskSource.sample
        self.global_size = self.batch
        return self.source.get_tasks("train", index[self.world.share(self.batch)])


@contextlib.contextmanager
def _seeded(seed: int | None):
    """With a seed: Pyro's RNGs (torch, random, numpy) seeded inside, restored to the caller's after.

    ``fit(seed=...)`` is then a pure function of its seed and leaves the
    caller's random streams where they were; ``seed=None`` uses and advances
    the caller's global RNGs (as ``hvi fit`` does when it resumes from a
    checkpoint's RNG state).
    """
    if seed is None:
        yield
        return
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    # Every initialized CUDA device: pyro.set_rng_seed seeds them all, whatever ``device`` says.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            pyro.set_rng_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _own_param_store(resume: bool):
    """A new fit's param store: empty inside; afterwards the caller's params with the fitted ones set over them.

    Inside, Pyro's global store holds only what the fit creates (every param
    starts from the model's init, as in an empty store). On the way out, also
    after an error or an interrupt, the caller's params are back (the same
    tensors, unchanged) and the fitted params are set over them (the same
    tensors the optimizer stepped; a caller's param of the same name is
    replaced). ``resume=True`` trains the global store's params as they are.
    """
    if resume:
        yield
        return
    store = pyro.get_param_store()
    caller = store.get_state()
    store.clear()
    try:
        yield
    finally:
        fitted = store.get_state()
        store.clear()
        store.set_state({k: {**caller[k], **fitted[k]} for k in ("params", "constraints")})


def default_optimizer(method: str = "abml", lr: float = 1e-3, clip_norm: float | None = None) -> PyroOptim:
    """The optimizer :func:`fit` and ``hvi fit`` train with unless given one.

    Args:
        method: The model's method (``MetaModel.method``). ``"reptile"`` gets
            ``pyro.optim.SGD({"lr": lr})``: its outer update θ + ε·(φ̄_K − θ)
            is plain SGD at ε = lr on its pseudo-gradient. Every other method
            gets ``pyro.optim.Adam({"lr": lr})`` (torch's defaults, β = (0.9, 0.999)).
        lr: The learning rate (Reptile's ε), positive and finite.
        clip_norm: None (default): no clipping. A positive number c: before
            each step, every parameter's gradient g (each param-store tensor on
            its own) is scaled to norm c when its L2 norm is larger,
            g ← g · min(1, c / ‖g‖₂), keeping its direction
            (``torch.nn.utils.clip_grad_norm_`` per tensor, Pyro's ``clip_args``).
            Not an element-wise clamp (``pyro.optim.ClippedAdam``'s) and not one
            norm over all parameters.

    Raises:
        ValueError: As :class:`hvi.FitSettings` for a bad ``lr`` or ``clip_norm``.
    """
    lr, clip_norm = check_setting("lr", lr), check_setting("clip_norm", clip_norm)
    clip = {} if clip_norm is None else {"clip_norm": clip_norm}
    return (pyro.optim.SGD if method == "reptile" else pyro.optim.Adam)({"lr": lr}, clip)


def fit(
    meta: MetaModel,
    data: TaskSampler,
    *,
    steps: int = 1000,
    task_batch: int | None = None,
    optimizer: PyroOptim | None = None,
    lr: float = 1e-3,
    clip_norm: float | None = None,
    elbo: Literal["trace", "meanfield"] | pyro.infer.ELBO = "trace",
    num_particles: int = 1,
    seed: int | None = 0,
    device: torch.device | str | None = None,
    resume: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable[[int, float, TaskBatch], None] | None = None,
    progress: bool = False,
    max_skips: int = 10,
    distributed: bool | None = None,
    chunk: int | None = None,
) -> FitResult:
    """Meta-trains ``meta`` by SVI on the ELBO (or on its method's outer loss, see :mod:`hvi.methods`).

    Args:
        meta: The model.
        data: A :class:`~hvi.data.TaskSource` (its ``train`` split is sampled),
            a :class:`~hvi.TaskBatch` (all of it each step, or ``task_batch``
            tasks of it drawn without replacement), or ``f(generator) -> TaskBatch``.
        steps: Number of SVI steps (default 1000).
        task_batch: Tasks per step B (default: 8 for a source, all for a batch).
        optimizer: Any Pyro optimizer; default :func:`default_optimizer`:
            ``pyro.optim.Adam({"lr": lr})`` (``pyro.optim.SGD`` for
            ``meta.method == "reptile"``: ``lr`` is Reptile's ε), the one ``hvi fit`` uses.
        lr: Learning rate of the default optimizer (default 1e-3).
        clip_norm: The default optimizer's gradient clipping (default None: none).
            Before each step, each parameter's gradient (each param-store
            tensor on its own, not one norm over all of them) whose L2 norm
            exceeds ``clip_norm`` is scaled down to that norm, direction kept:
            g ← g · min(1, clip_norm / ‖g‖₂). Not an element-wise clamp.
            Ignored when ``optimizer`` is given.
        elbo: ``"trace"`` (``Trace_ELBO``, default) or ``"meanfield"``, or an
            ELBO instance (e.g. ``make_elbo()``, whose ``last_parts`` a
            callback can read); ``num_particles`` is then the instance's.
        num_particles: ELBO particles, vectorized (default 1).
        seed: Seeds Pyro's RNGs (torch, random, numpy) and the task sampler
            for this call (default 0), then restores the caller's RNG states;
            None draws from (and advances) the caller's global RNGs instead.
        device: Moves each batch there (default: leave as is).
        resume: False (default): train from the model's initial values in a
            param store of the fit's own; afterwards Pyro's global store holds
            the caller's params, unchanged, and the fitted params over them
            (a same-named param is replaced), where :func:`hvi.predict` and
            the checkpoints read them. True: continue training the params in
            the global store as they are (e.g. loaded from a checkpoint).
        generator: Task-sampling generator (default: a new one seeded with ``seed``).
        callback: Called as ``callback(step, loss, batch)`` after every step.
        progress: Show a tqdm progress bar.
        max_skips: Stop after this many steps in a row with a non-finite loss
            or gradient (default 10). Such steps are not applied (see
            :class:`hvi.SVI`); their loss is recorded as ``nan`` and their
            indices in :attr:`FitResult.skipped`.
        distributed: Data-parallel over the ranks of the initialized
            ``torch.distributed`` process group (:mod:`hvi.distributed`;
            ``hvi.distributed.init()`` joins torchrun's). None (default): when
            one of more than one rank is initialized; False: never; True:
            require one. ``task_batch`` is then the global batch, split across
            the ranks; ``callback`` gets this rank's share; the result equals a
            single-process fit on the global batches. Every rank must pass the
            same ``seed`` and data (a differing global RNG is refused).
        chunk: Process each task batch in chunks of this many tasks, one
            backward pass each, accumulating the gradient
            (:meth:`hvi.SVI.step_chunked`): peak memory is set by the chunk,
            and the step equals the unchunked one. None (default): one pass.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: If a setting is out of range: ``steps``, ``task_batch``,
            ``lr``, ``clip_norm``, ``seed``, ``device``, ``max_skips`` and
            ``chunk`` are checked by :class:`hvi.FitSettings` (as ``hvi fit``'s are).
        FloatingPointError: After ``max_skips`` non-finite steps in a row.

    On CPU under Linux, call :func:`hvi.tune_allocator` once before training
    (``hvi fit`` does): otherwise every inner step refaults its activations'
    memory from the kernel.
    """
    s = FitSettings(steps=steps, task_batch=task_batch, lr=lr, clip_norm=clip_norm, seed=seed, device=device,
                    max_skips=max_skips, chunk=chunk)
    device = None if s.device is None else torch.device(s.device)
    if chunk is not None and meta.method != "abml":
        raise ValueError(f"chunk={chunk} works with method='abml' only; method={meta.method!r} steps on its own loss.")
    with _seeded(s.seed), _own_param_store(resume):
        return _train(meta, data, s.steps, s.task_batch, optimizer, s.lr, s.clip_norm, elbo, num_particles, s.seed,
                      device, callback, progress, s.max_skips, generator, distributed, s.chunk)


def _train(meta, data, steps, task_batch, optimizer, lr, clip_norm, elbo, num_particles, seed, device, callback,
           progress, max_skips, generator, distributed, chunk=None) -> FitResult:
    """The body of :func:`fit`, after its arguments are checked and under its RNG scope."""
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(0 if seed is None else seed)
    from hvi import distributed as _dist

    world = _dist.current() if distributed is not False else None
    if distributed and world is None:
        raise ValueError(
            "distributed=True but no torch.distributed process group of more than one rank is initialized; "
            "launch with torchrun and call hvi.distributed.init() first."
        )
    if world is not None and chunk is not None:
        raise ValueError("chunk and data-parallel training cannot be combined yet; use one of them.")
    sample = _sampler(data, task_batch) if world is None else _ShardSampler(data, task_batch, world)
    if world is not None:
        _dist.check_same_rng(device)
    if optimizer is None:
        optimizer = default_optimizer(meta.method, lr, clip_norm)
    loss_fn = elbo if isinstance(elbo, pyro.infer.ELBO) else make_elbo(elbo, num_particles)
    # meta.method other than "abml": the same loop on that method's outer loss (hvi.methods).
    svi = SVI(meta.model, meta.guide, optimizer, loss=loss_fn if meta.method == "abml" else outer_loss(meta))
    if world is not None:
        svi.reduce_grads = _dist.GradAllReduce(
            elbo=loss_fn if meta.method == "abml" and hasattr(loss_fn, "last_parts") else None
        )
    losses: list[float] = []
    skipped: list[int] = []
    in_a_row = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="meta-train", unit="step")
    start = time.perf_counter()
    for step in range(steps):
        batch = sample(generator)
        if device is not None:
            batch = batch.to(device)
        validate_for_model(batch, meta)
        if world is None:
            loss = svi.step(batch) if chunk is None else svi.step_chunked(batch, chunk)
        else:  # this rank's share of the global batch; gradients all-reduced in svi.step
            total = sample.global_size
            svi.reduce_grads.weight = batch.batch_size / total
            with _dist.task_shard(world, total):
                loss = svi.step(batch)
        if math.isfinite(loss):
            in_a_row = 0
        else:  # not applied by hvi.SVI: the parameters are as before this step
            skipped.append(step)
            in_a_row += 1
            if in_a_row >= max_skips:
                raise FloatingPointError(
                    f"{in_a_row} steps in a row (the last at step {step}) had a non-finite loss or "
                    "gradient and were skipped; lower the inner lr (InnerConfig.lr) or the learning "
                    "rate, or clip gradients (clip_norm)."
                )
        losses.append(loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(elbo=f"{-loss:.4g}")
        if callback is not None:
            callback(step, loss, batch)
    if bar is not None:
        bar.close()
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    config = {
        **meta.config(),
        "fit": {
            "steps": steps,
            "task_batch": task_batch,
            "lr": lr,
            "clip_norm": clip_norm,
            "elbo": elbo if isinstance(elbo, str) else type(elbo).__name__,
            "num_particles": loss_fn.num_particles,
            "seed": seed,
            "max_skips": max_skips,
            "world_size": 1 if world is None else world.world_size,
            "chunk": chunk,
        },
    }
    return FitResult(
        MappingProxyType(params), tuple(losses), MappingProxyType(config), time.perf_counter() - start,
        tuple(skipped),
    )
