"""``hvi fit``: run directories, training loop hooks, validation, checkpoints and resume.

The run directory (``--out RUN_DIR``): its layout and files are :mod:`hvi.run_dir`'s.

Life cycle:

* Every input is checked (config, data, model, one forward pass) before
  anything is written, so bad input leaves nothing on disk.
* The run is built in a sibling ``RUN_DIR.tmp-XXXXXXXX`` and renamed to
  ``RUN_DIR`` only when it finished: ``RUN_DIR`` exists iff the run is complete.
* An error during training removes the temporary directory.
* Ctrl-C / SIGTERM stops after the current step, writes a checkpoint and keeps
  ``RUN_DIR.tmp-XXXXXXXX``; so does a killed process (its last periodic
  checkpoint). ``hvi fit --out RUN_DIR --resume`` continues the newest such
  directory (or extends a complete ``RUN_DIR`` to a larger ``--steps``) with
  the same step count, optimizer state, RNG state and task-sampler state, so
  the result is bit-identical to an uninterrupted run.

Under torchrun (``WORLD_SIZE`` > 1, :mod:`hvi.distributed`) every rank trains
its share of each task batch and only rank 0 writes: the run directory,
``metrics.jsonl`` (tasks/s of the whole job), checkpoints and the model;
``config.json`` then has ``"distributed": {"world_size", "task_batch",
"task_batch_per_rank"}``. The other ranks resume from rank 0's checkpoint
(the run directory must be on a file system they can read). If a rank fails,
rank 0 keeps a temporary directory that has a checkpoint, as a killed process
does, so ``--resume`` continues it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyro
import torch

from hvi.cli.config import finalize, load_toml, resolve, resolve_resume
from hvi.builders import build_meta, build_source, infer_model_args, resolve_device
from hvi.cli.process import configure_process
from hvi.run_dir import (
    DISTRIBUTED_KEY,
    append_metrics,
    checkpoint_dir,
    checkpoint_step,
    find_resumable,
    finite_json,
    has_checkpoint,
    model_dir,
    new_work_dir,
    remove_evaluation,
    saved_info,
    truncate_metrics,
    write_config,
)
from hvi.run_dir import finalize as finalize_dir
from hvi.run_dir import read_config as read_run_config

log = logging.getLogger(__name__)

__all__ = [
    "run_fit",
    "Interrupted",
    "validation_metrics",
    "resolved_config",
    "check_arg_tables",
]


class Interrupted(Exception):
    """Training stopped on request after ``step`` steps; the run directory was kept."""

    def __init__(self, step: int, where: Path) -> None:
        super().__init__(step, where)
        self.step = step
        self.where = where


# --------------------------------------------------------------------------- run configs


# --------------------------------------------------------------------------- stopping


class _StopFlag:
    """First Ctrl-C/SIGTERM asks for a graceful stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        for s in old:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# --------------------------------------------------------------------------- validation


def validation_metrics(meta, batches, num_samples: int, seed: int, device: torch.device) -> dict[str, float]:
    """Mean metrics over fixed held-out tasks; never touches the training RNG stream."""
    from hvi.metrics import classification_metrics, regression_metrics
    from hvi.predict import predict

    devices = [device.index or 0] if device.type == "cuda" else []
    per: dict[str, list[torch.Tensor]] = {}
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
        torch.manual_seed(seed)
        for b in batches:
            pred = predict(meta, b, num_samples=num_samples)
            if meta.likelihood.is_classification:
                m = classification_metrics(pred, b.query_y, mask=b.query_mask)
            else:
                m = regression_metrics(pred, b.query_y, mask=b.query_mask)
                m = {k: m[k] for k in ("rmse", "nll", "crps", "coverage_90")}
            for k, v in m.items():
                per.setdefault(k, []).append(v)
    return {k: float(torch.cat(v).mean().cpu()) for k, v in per.items()}


def _chunks(source, split: str, n: int, chunk: int, device: torch.device) -> list:
    n = min(n, source.num_tasks(split))
    out = []
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n))
        out.append(source.get_tasks(split, idx).to(device))
    return out


def eval_chunk_size(meta, num_samples: int, budget_bytes: float = 2.5e8, query_x: torch.Tensor | None = None) -> int:
    """Tasks per predict call so that the weight draws stay within ``budget_bytes``.

    With ``query_x`` (one task's query inputs, ``(N, *x_shape)``) the network's
    activations on them count too, once per draw: for a conv net they, not the
    weights, set the memory (conv4 on a 25-image query set: about 11 MB of
    activations per draw against 0.1 MB of weights).
    """
    per_draw = max(1, meta.net.num_weights) * 4
    if query_x is not None and query_x.shape[0] > 0:
        per_draw += meta.net.activation_bytes(query_x)
    per_task = per_draw * max(1, num_samples)
    return int(max(1, min(64, budget_bytes // per_task)))


# --------------------------------------------------------------------------- fit


def _complete_with_source(cfg: dict[str, Any], explicit: set[str], source) -> None:
    """Fills the likelihood and the shape-derived model arguments from the data."""
    if cfg.get("likelihood") is None:
        cfg["likelihood"] = source.likelihood
        if source.likelihood != "gaussian" and "likelihood_args" not in explicit:
            cfg["likelihood_args"] = {}
    from hvi.models import model_defaults

    margs = dict(cfg.get("model_args") or {})
    margs.update(infer_model_args(cfg["model"], source, margs))
    cfg["model_args"] = json.loads(json.dumps({**model_defaults(cfg["model"]), **margs}))


def _data_info(source) -> dict[str, Any]:
    return {
        "x_shape": list(source.x_shape),
        "y_shape": list(source.y_shape),
        "likelihood": source.likelihood,
        "num_classes": getattr(source, "num_classes", None),
        "num_tasks": {s: source.num_tasks(s) for s in ("train", "val", "test")},
    }


def _probe(meta, source, cfg: Mapping[str, Any], device: torch.device) -> None:
    """One forward pass on a training batch: catches shape/type mismatches before any file is written."""
    from hvi.predict import predict
    from hvi.validation import validate_batch

    with torch.random.fork_rng(devices=[]), pyro.get_param_store().scope():
        g = torch.Generator().manual_seed(0)
        batch = source.sample("train", min(cfg["task_batch"], source.num_tasks("train")), g)
        if cfg["task_batch"] > source.num_tasks("train"):
            raise ValueError(
                f"task_batch={cfg['task_batch']} exceeds the {source.num_tasks('train')} training tasks of "
                f"{cfg['data']!r}; lower --task-batch."
            )
        batch = batch.to(device)
        validate_batch(batch, meta.likelihood)
        try:
            with pyro.validation_enabled(False):
                predict(meta, batch.tasks(slice(0, 1)), inner_steps=0, num_samples=1)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"model {cfg['model']!r} cannot run on data {cfg['data']!r} (x {tuple(source.x_shape)}, "
                f"y {tuple(source.y_shape)}): {first}; set matching model_args in --config."
            ) from None


@dataclasses.dataclass
class FitSummary:
    """What :func:`run_fit` reports."""

    run_dir: Path
    steps: int
    start_step: int
    seconds: float
    final_loss: float | None
    val: dict[str, float] | None


def check_arg_tables(cfg: Mapping[str, Any]) -> None:
    """Checks every key of data_args, model_args, prior_args and likelihood_args against its builder.

    Raises:
        ValueError: Naming the first key the builder does not accept, and the accepted ones.
    """
    from hvi.settings import is_path
    from hvi.builders import check_kwargs, load_registries
    from hvi.data.base import SOURCES
    from hvi.likelihoods import LIKELIHOODS
    from hvi.models.registry import MODELS
    from hvi.priors.base import PRIORS

    load_registries()
    data = cfg["data"]
    if is_path(data):
        from hvi.data.files import FileSource

        builders = [("data", "file", FileSource)]
    else:
        builders = [("data", data, SOURCES.builder(data) if data in SOURCES else None)]
    builders += [
        (what, name, reg.builder(name) if name in reg else None)
        for what, name, reg in (("model", cfg["model"], MODELS), ("prior", cfg["prior"], PRIORS),
                                ("likelihood", cfg.get("likelihood"), LIKELIHOODS))
    ]
    for what, name, builder in builders:
        if builder is not None:  # unknown names are reported where they are built
            check_kwargs(what, name, builder, cfg.get(f"{what}_args") or {})


def resolved_config(
    cli_opts: Mapping[str, Any], *, config_path: str | None, out: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """The configuration ``hvi fit`` would train with (``--print-config``), without reading the data.

    defaults < the model's row < ``--config`` < options, with the derived
    cadence keys filled in; with ``resume``, the saved run's config with the
    keys that may change overridden. The likelihood and the model arguments
    that follow from the data's shapes are added when the data is read.
    """
    toml = load_toml(config_path) if config_path is not None else {}
    if resume:
        if out is None:
            raise ValueError("--resume needs --out RUN_DIR (the run to continue).")
        out_dir = Path(out).expanduser().resolve()
        tmp, _ = find_resumable(out_dir)
        cfg = resolve_resume(read_run_config(tmp or out_dir), cli_opts, toml)
    else:
        cfg, _ = resolve(cli_opts, toml)
    cfg = finalize(cfg)
    check_arg_tables(cfg)
    from hvi.settings import KEYS

    return {**{k: cfg[k] for k in KEYS if k in cfg}, **cfg}  # in the order of KEYS: model, data, ...


def run_fit(
    cli_opts: Mapping[str, Any],
    *,
    config_path: str | None,
    out: str | None,
    resume: bool,
    progress: bool = True,
    echo=print,
) -> FitSummary:
    """Resolves the config, prepares the run directory and trains (see module doc)."""
    from hvi.checkpoint import expected_params, load_checkpoint, save_checkpoint
    from hvi.fit import default_optimizer, fit

    toml = load_toml(config_path) if config_path is not None else {}
    model_name = cli_opts.get("model") or toml.get("model")
    if out is None:
        if resume:
            raise ValueError("--resume needs --out RUN_DIR (the run to continue).")
        out = os.path.join("runs", str(model_name or "run"))
    out_dir = Path(out).expanduser().resolve()

    # ---- what to resume, and the config -------------------------------------------------
    resume_from: Path | None = None  # existing dir to continue in place (an interrupted tmp dir)
    copy_from: Path | None = None  # complete run to extend (copied first)
    if resume:
        tmp, _ = find_resumable(out_dir)
        if tmp is not None:
            resume_from = tmp
        elif out_dir.is_dir() and has_checkpoint(out_dir):
            copy_from = out_dir
        else:
            raise FileNotFoundError(
                f"nothing to resume at {out_dir}: no run directory and no interrupted {out_dir.name}.tmp-* "
                "with a checkpoint; start a new run without --resume."
            )
        saved = read_run_config(resume_from or out_dir)
        cfg = resolve_resume(saved, cli_opts, toml)
        explicit: set[str] = set(saved)
    else:
        if out_dir.exists():
            raise ValueError(
                f"run directory {out_dir} already exists; pass --resume to continue it (with a larger "
                "--steps) or choose another --out."
            )
        tmp, step = find_resumable(out_dir)
        if tmp is not None:
            raise ValueError(
                f"an interrupted run of {out_dir} is at {tmp} (step {step}); pass --resume to continue it, "
                "or delete it to start over."
            )
        if out_dir.parent.exists() and not out_dir.parent.is_dir():
            raise ValueError(f"cannot create {out_dir}: {out_dir.parent} is not a directory.")
        cfg, explicit = resolve(cli_opts, toml)
    cfg = finalize(cfg)
    if not resume:
        check_arg_tables(cfg)

    # ---- build and check everything before touching the disk -----------------------------
    device = resolve_device(cfg["device"])
    from hvi import distributed as hvi_dist

    world = hvi_dist.init(device=device)  # None unless launched by torchrun with more than one process
    if world is not None:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", world.local_rank)
        hvi_dist.shard_sizes(cfg["task_batch"], world.world_size)  # every rank gets a task
    main = world is None or world.is_main
    if not main:  # rank 0 reports; the others say only their errors
        from hvi.cli.log import setup as _log_setup

        _log_setup(quiet=True)
    configure_process(cfg, device)
    source = build_source(cfg)
    if not resume:
        _complete_with_source(cfg, explicit, source)
    info = _data_info(source)
    if resume:
        _check_same_data(saved_info=saved_info(resume_from or out_dir), info=info, data=cfg["data"])
    meta = build_meta(cfg, device)
    _probe(meta, source, cfg, device)
    expected = expected_params(meta)
    steps = cfg["steps"]
    if resume:
        done = checkpoint_step(resume_from or out_dir)
        if done is not None and done >= steps:
            raise ValueError(
                f"run {out_dir} already has {done} steps (>= --steps {steps}); pass a larger --steps to "
                "train longer."
            )

    # ---- the working directory ------------------------------------------------------------
    if world is not None:  # every rank checked the run directory before rank 0 creates RUN_DIR.tmp-*
        torch.distributed.barrier()
    created: Path | None = None
    if resume_from is not None:
        work = resume_from
    elif not main:  # writes nothing; reads a resumed run's checkpoint from rank 0's directory
        work = copy_from or out_dir
    else:
        work = new_work_dir(out_dir)
        created = work
    ok = False
    try:
        if copy_from is not None and main:
            shutil.copytree(copy_from, work, dirs_exist_ok=True)
            shutil.rmtree(model_dir(work), ignore_errors=True)
            remove_evaluation(work)  # evaluated the shorter run, not this one
        optimizer = default_optimizer(cfg.get("method", "abml"), cfg["lr"], cfg.get("clip_norm"))  # hvi.fit's
        generator = torch.Generator()
        generator.manual_seed(cfg["seed"])
        start = 0
        ckpt = None
        # A program of one run: the store holds exactly this run's params (the checkpoint's when resuming;
        # hvi.fit keeps a caller's other params, and the model/ checkpoint saves the whole store).
        pyro.clear_param_store()
        if resume:
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ckpt = load_checkpoint(
                    checkpoint_dir(work), expected=expected, optimizer=optimizer, generator=generator, device=device
                )
            for w in caught if main else ():  # a damaged newest checkpoint: the fallback is said on stderr, once
                _warn(echo, f"Warning: {w.message}")
            start = ckpt.step
            log.info("resuming %s from its checkpoint at step %d (%s)", out_dir, start, ckpt.path)
            if start >= steps:
                raise ValueError(
                    f"run {out_dir} already has {start} steps (>= --steps {steps}); pass a larger --steps to "
                    "train longer."
                )
            if main:
                truncate_metrics(work, start)
        if world is not None:
            per_rank = hvi_dist.shard_sizes(cfg["task_batch"], world.world_size)
            cfg[DISTRIBUTED_KEY] = {
                "world_size": world.world_size, "task_batch": cfg["task_batch"], "task_batch_per_rank": per_rank,
            }
        if not main:  # the other ranks train their shares; rank 0 writes everything
            result = _train_shard(meta, source, cfg, device, optimizer, generator, start, ckpt, fit)
            summary = FitSummary(out_dir, steps, start, result.seconds, result.losses[-1] if result.losses else None,
                                 None)
            ok = True
            return summary
        write_config(work, cfg)
        log.info(
            "training %s on %s: x %s, y %s, %s likelihood, train/val/test tasks %s; %s, steps %d..%d, in %s",
            cfg["model"], cfg["data"], tuple(info["x_shape"]), tuple(info["y_shape"]), info["likelihood"],
            "/".join(str(info["num_tasks"][k]) for k in ("train", "val", "test")), device, start + 1, steps, work,
        )
        log.debug("configuration: %s", json.dumps(finite_json(cfg), sort_keys=True))
        summary = _train(
            meta, source, cfg, info, work, device, optimizer, generator, start, ckpt, progress, echo, fit,
            save_checkpoint,
        )
        save_checkpoint(
            model_dir(work),
            step=steps,
            config=cfg,
            extra=finite_json(
                {**info, "final_loss": summary.final_loss, "val": summary.val, "fit_seconds": summary.seconds}
            ),
            rng=False,
        )
        finalize_dir(work, out_dir)
        log.info("run complete: %s", out_dir)
        ok = True
        summary.run_dir = out_dir
        return summary
    except Interrupted:
        ok = True  # keep the directory: it is resumable
        raise
    except KeyboardInterrupt:
        ok = True  # a hard abort: the last periodic checkpoint is resumable
        raise
    finally:
        # a distributed run that failed (e.g. another rank died) stays resumable from its last checkpoint
        keep = world is not None and created is not None and checkpoint_step(created) is not None
        if not ok and created is not None and not keep:
            shutil.rmtree(created, ignore_errors=True)


def _warn(echo, text: str) -> None:
    """A warning through the ``hvi`` logger (the CLI's handler prints it as ``Warning: ...``; ``hvi -q`` hides it)."""
    log.warning(text.removeprefix("Warning: "))


def _check_same_data(saved_info: Mapping[str, Any] | None, info: Mapping[str, Any], data: str) -> None:
    if not saved_info:
        return
    for k in ("x_shape", "y_shape", "likelihood"):
        if k in saved_info and saved_info[k] != info[k]:
            raise ValueError(
                f"cannot --resume: the data {data!r} now has {k} {info[k]} but the run was trained on "
                f"{saved_info[k]}; the data changed."
            )


def _train_shard(meta, source, cfg, device, optimizer, generator, start: int, ckpt, fit):
    """A non-zero rank's part of :func:`_train`: the same fit, without files or progress."""
    from hvi.checkpoint import set_rng_state
    from hvi.fit import make_elbo

    with pyro.validation_enabled(False):
        if ckpt is not None:
            set_rng_state(ckpt.rng_state)
        return fit(
            meta, source, steps=cfg["steps"] - start, task_batch=cfg["task_batch"], optimizer=optimizer,
            elbo=make_elbo(), seed=None if start > 0 else cfg["seed"], device=device, resume=start > 0,
            generator=generator,
        )


def _train(
    meta, source, cfg, info, work: Path, device, optimizer, generator, start: int, ckpt, progress: bool, echo,
    fit, save_checkpoint,
) -> FitSummary:
    from hvi.checkpoint import set_rng_state

    steps = cfg["steps"]
    val_every, ckpt_every = cfg["val_every"], cfg["checkpoint_every"]
    chunk = eval_chunk_size(meta, cfg["val_samples"])
    val_batches = _chunks(source, "val", cfg["val_tasks"], chunk, device)
    stop = _StopFlag()
    state: dict[str, Any] = {"last_ckpt": start, "val": None, "loss": None, "t_last": time.perf_counter()}
    t0 = time.perf_counter()
    rate = {"tasks_per_s": None}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="meta-train", unit="step", dynamic_ncols=True, leave=True)
    val_key = "accuracy" if meta.likelihood.is_classification else "rmse"

    def checkpoint(g: int, loss: float) -> None:
        if not math.isfinite(loss):  # a skipped step never replaces a good checkpoint; the next finite one writes
            state["due"] = True
            _warn(
                echo,
                f"Warning: step {g}: the loss is {loss} (step skipped); checkpoint not written, the last one is "
                f"step {state['last_ckpt']}.",
            )
            return
        save_checkpoint(
            checkpoint_dir(work),
            step=g,
            optimizer=optimizer,
            generator=generator,
            config=cfg,
            extra=finite_json({**info, "loss": loss, "val": state["val"]}),
            keep=cfg.get("keep_checkpoints") or 1,
        )
        state["last_ckpt"] = g
        log.info("step %d: checkpoint written (loss %.6g)", g, loss)
        state["due"] = False

    from hvi.elbo_parts import PARTS as ELBO_PARTS
    from hvi.fit import make_elbo

    elbo_fn = make_elbo()  # the default Trace_ELBO, which keeps its estimate's parts

    def callback(step: int, loss: float, batch) -> None:
        g = start + step + 1
        now = time.perf_counter()
        dt = max(now - state["t_last"], 1e-9)
        state["t_last"] = now
        tps = cfg["task_batch"] / dt  # the global batch (this rank's share is batch)
        rate["tasks_per_s"] = tps if rate["tasks_per_s"] is None else 0.9 * rate["tasks_per_s"] + 0.1 * tps
        per_task = loss / batch.num_tasks
        record: dict[str, Any] = {
            "step": g,
            "loss": loss,
            "elbo": -loss,
            # ELBO = ell - local_kl - global_kl, from the step's own traces (hvi.elbo_parts)
            **(elbo_fn.last_parts if elbo_fn.last_parts and math.isfinite(loss) else dict.fromkeys(ELBO_PARTS)),
            "loss_per_task": per_task,
            # 1: not applied, its loss or a gradient was not finite (hvi.SVI); sum for the count
            "skipped": int(not math.isfinite(loss)),
            "tasks_per_s": tps,
            "time_s": now - t0,
        }
        if g % val_every == 0 or g == steps:
            state["val"] = validation_metrics(meta, val_batches, cfg["val_samples"], cfg["seed"] + g, device)
            record["val"] = state["val"]
        append_metrics(work, record)
        state["loss"] = loss
        if g % ckpt_every == 0 or g == steps or stop.requested or state.get("due"):
            checkpoint(g, loss)
        if bar is not None:
            post = {"elbo": f"{-loss:.4g}", "loss/task": f"{per_task:.4g}"}
            if state["val"] is not None:
                post[f"val_{val_key}"] = f"{state['val'][val_key]:.4g}"
            post["tasks/s"] = f"{rate['tasks_per_s']:.1f}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        if stop.requested and g < steps:
            raise Interrupted(g, work)

    try:
        with stop.installed(), pyro.validation_enabled(False):
            if ckpt is not None:
                if ckpt.rng_state is None:
                    raise ValueError(f"checkpoint {ckpt.path} holds no RNG state; it cannot be resumed.")
                set_rng_state(ckpt.rng_state)
            result = fit(
                meta,
                source,
                steps=steps - start,
                task_batch=cfg["task_batch"],
                optimizer=optimizer,
                elbo=elbo_fn,
                seed=None if start > 0 else cfg["seed"],
                device=device,
                resume=start > 0,
                generator=generator,
                callback=callback,
                chunk=cfg.get("chunk"),
            )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    final = result.losses[-1] if result.losses else state["loss"]
    return FitSummary(work, steps, start, seconds, final, state["val"])
