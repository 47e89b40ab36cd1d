"""The ``hvi`` command line: fit, evaluate, predict, diagnose, models, priors, sources.

Every bad input ends in one line ``Error: ...`` on stderr and a non-zero exit
status (1 for errors, 2 for usage errors, 130 when training was interrupted).
An exception of an unexpected type (a bug) is one line too, which says so and
how to see the traceback: the global option ``--debug`` (or the environment
variable ``HVI_DEBUG=1``) prints the traceback of any error before its line.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from hvi import choices

__all__ = ["cli", "main"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _one_line(msg: str, limit: int = 600) -> str:
    lines = [line.strip() for line in str(msg).strip().splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Appended to the one-line message of an exception of an unexpected type.
UNEXPECTED = "(unexpected error; please report it; rerun with --debug or HVI_DEBUG=1 for the traceback)"

#: Exception types that are the user's input or environment, not a bug: one line, no "please report".
EXPECTED = (ValueError, OSError, FloatingPointError)


def _debug_env() -> bool:
    return os.environ.get("HVI_DEBUG", "").strip().lower() not in {"", "0", "false", "no", "off"}


class HviGroup(click.Group):
    """A click group whose every error is one ``Error: ...`` line (usage errors included).

    Exceptions that escape a command are reported here: click's own errors
    with their message, the :data:`EXPECTED` types (and ``click.ClickException``
    raised from them by :func:`_errors`) with theirs, anything else with its
    type, its message and :data:`UNEXPECTED`. With ``--debug`` or
    ``HVI_DEBUG=1`` the traceback is printed first.
    """

    debug = False

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        HviGroup.debug = _debug_env()
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"Error: {_one_line(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            self._traceback(e.__cause__)
            click.echo(f"Error: {_one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except BrokenPipeError:  # the reader went away (`hvi models | head`): nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's recipe: no flush error at exit
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Aborted!", err=True)
            sys.exit(130)
        except EXPECTED as e:
            self._traceback(e)
            click.echo(f"Error: {_message(e)}", err=True)
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback only on request
            self._traceback(e)
            click.echo(f"Error: {type(e).__name__}: {_one_line(str(e), 400)} {UNEXPECTED}", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    @staticmethod
    def _traceback(e: BaseException | None) -> None:
        if HviGroup.debug and e is not None:
            traceback.print_exception(e, file=sys.stderr)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Bare ``hvi`` prints the full help (the command list) and exits 0."""
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return super().parse_args(ctx, args)


def _message(e: BaseException) -> str:
    """The one-line message of an :data:`EXPECTED` exception."""
    if isinstance(e, PermissionError):
        return _one_line(f"permission denied: {e}")
    return _one_line(str(e) or type(e).__name__)


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Maps the library's error types to one-line click errors (no tracebacks).

    Exceptions of other types propagate to :meth:`HviGroup.main`, which
    reports them as unexpected.
    """

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from hvi.cli.run import Interrupted

        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise  # HviGroup.main ends quietly: the reader went away
        except EXPECTED as e:
            raise click.ClickException(_message(e)) from e
        except Interrupted as e:
            click.echo(
                f"Interrupted after step {e.step}; the run is kept at {e.where}. "
                "Continue it with the same command and --resume.",
                err=True,
            )
            raise click.exceptions.Exit(130) from None
        except KeyboardInterrupt:
            click.echo("Aborted; an interrupted run can be continued from its last checkpoint with --resume.", err=True)
            raise click.exceptions.Exit(130) from None

    return wrapper


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        HviGroup.debug = True
    return value


def _version() -> str:
    from hvi import __version__

    return __version__


@click.group(cls=HviGroup, context_settings=CONTEXT)
@click.version_option(_version(), "--version", "-V", prog_name="hvi", message="%(prog)s %(version)s")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Print the traceback of an error (also: environment variable HVI_DEBUG=1).",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Import this Python module first (repeatable), e.g. one that registers priors, models or data sources; "
    "found on PYTHONPATH or in the current directory. Installed packages can use the entry-point group hvi.plugins.",
)
@click.option("-v", "--verbose", count=True, help="Say more on stderr: -v what each step does (data, resume point, checkpoints), -vv also the resolved configuration.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr: no warnings, progress bars or status lines (results still go to stdout).")
def cli(imports: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Bayesian meta-learning by hierarchical variational inference (θ → φ_i → D_i).

    \b
    Examples:
      hvi fit --model bayes_unet                 # solar maps, defaults tuned for 2 CPU cores
      hvi fit --model mlp --steps 500 --out runs/sine
      hvi evaluate runs/sine
      hvi predict runs/sine --support s.nc --query q.nc --out pred.nc
      hvi diagnose runs/sine --plots runs/sine/plots
      hvi models; hvi priors; hvi sources
      hvi --import mypriors fit --model mlp --prior mine
      hvi -v fit --model mlp --steps 50; hvi -q evaluate runs/sine --json
    """
    from hvi.cli.log import setup
    from hvi.plugins import import_modules

    setup(verbose, quiet)
    import_modules(imports)


# --------------------------------------------------------------------------- fit

_FIT_HELP = """Meta-train a model by SVI and write a run directory.

Options override --config run.toml, which overrides the model's defaults:
each option shows its common default and the models that change it;
'hvi models' shows every model's row and model_args, 'hvi sources' every
source's data_args. The run is built in OUT.tmp-XXXXXXXX and renamed to OUT
when it finishes; bad input leaves nothing behind. Ctrl-C stops after the
current step and keeps a resumable checkpoint.

\b
Run directory:
  config.json     resolved configuration
  metrics.jsonl   one JSON object per step (loss, elbo, loss_per_task, tasks_per_s, val)
  checkpoint/     latest training state (resume from here)
  model/          final model (read by evaluate / predict)
  evaluation.json the last 'hvi evaluate' result, with per-task values

\b
Examples:
  hvi fit --model bayes_unet
  hvi fit --model mlp --steps 300 --inner-steps 3 --out runs/sine
  hvi fit --model mlp --data tasks.nc --config run.toml --out runs/mine
  hvi fit --out runs/sine --resume --steps 600     # continue / extend a run
  hvi fit --model mlp --data file --data-arg path=tasks.nc --data-arg k_shot=5
  hvi fit --model mlp --steps 500 --print-config > run.toml   # then: hvi fit --config run.toml
"""



def _d(text: str, key: str) -> str:
    """Option help with the ``hvi fit`` defaults of ``key`` (common value; the model rows that change it)."""
    from hvi.cli.describe import default_help

    values = default_help(key)
    return f"{text} ({values})." if values else f"{text}."


#: The comment on top of ``hvi fit --print-config``.
PRINT_CONFIG_HEADER = """hvi fit configuration: defaults < the model's row < --config < options.
Read back by 'hvi fit --config FILE'. Keys that are unset are left out (TOML has no
null): likelihood unset = the data source's; the likelihood and the model_args that
follow from the data's shapes (channels, features, classes) are filled in from the data."""


def _key_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any] | None:
    """``KEY=VALUE`` strings as a dict; VALUE as JSON when it parses (no NaN/Infinity), else the string."""
    if not values:
        return None
    out: dict[str, Any] = {}
    for item in values:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE, e.g. {param.opts[0]} k_shot=5.", ctx, param)

        def no_constant(name: str) -> Any:
            raise ValueError(name)

        try:
            out[key] = json.loads(raw, parse_constant=no_constant)
        except ValueError:
            out[key] = raw
    return out


@cli.command("fit", help=_FIT_HELP, context_settings=CONTEXT)
@click.option("--model", "model", metavar="NAME", help="Zoo model: mlp, siren, conv4, bayes_unet, or a registered one; 'hvi models' lists each one's defaults row (the values in parentheses below) and its model_args.")
@click.option("--data", "data", metavar="SOURCE_OR_PATH", help=_d("Registered source (see 'hvi sources' for each one's data_args) or a .nc/.zarr file", "data"))
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="TOML file with any of these options (and model_args, data_args, prior_args, likelihood_args tables).")
@click.option("--out", "out", metavar="RUN_DIR", help="Run directory (default: runs/MODEL).")
@click.option("--steps", type=int, metavar="N", help=_d("Total SVI steps", "steps"))
@click.option("--task-batch", "task_batch", type=int, metavar="B", help=_d("Tasks per step", "task_batch"))
@click.option("--method", "method", metavar="|".join(choices.METHODS), help=_d("Meta-learning method: ABML (Bayesian), or the deterministic MAML, first-order MAML or Reptile on the same inner loop (docs/methods.md)", "method"))
@click.option("--inner-steps", "inner_steps", type=int, metavar="K", help=_d("Inner steps on each support set", "inner_steps"))
@click.option("--chunk", "chunk", type=int, metavar="C", help=_d("Tasks per backward pass: each task batch in chunks of C with the gradient accumulated (same step, peak memory of a chunk)", "chunk"))
@click.option("--memory-mode", "memory_mode", type=click.Choice(choices.MEMORY_MODES), help=_d("Second-order memory: keep every inner step's graph (none), recompute each step in the backward pass (checkpoint: same gradients, memory of one step), or take the meta-gradient at the loop's end point by the implicit function theorem (implicit: memory of one step, exact only where the inner loop has converged; docs/scaling.md)", "memory_mode"))
@click.option("--inner-update", "inner_update", type=click.Choice(choices.INNER_UPDATES), help=_d("Inner update: natural-gradient (Bayesian learning rule) or plain gradient ascent", "inner_update"))
@click.option("--inner-curvature", "inner_curvature", type=click.Choice(choices.INNER_CURVATURES), help=_d("Natural update: measure g and h at antithetic sign pairs m ± σ·r (pair: 2 network evaluations per sample, exact on conjugate models) or at m + σ·r alone (one_sided: 1 evaluation, Monte Carlo noise in h; docs/inner_loop.md)", "inner_curvature"))
@click.option("--inner-line-search/--no-inner-line-search", "inner_line_search", default=None, help=_d("Natural update: scale each task's mean step by the fraction its curvature along the step allows (3 more forward points per step; wins where the diagonal step overshoots, e.g. 5-shot glyphs; docs/inner_loop.md)", "inner_line_search"))
@click.option("--inner-lr", "inner_lr", type=float, metavar="A", help=_d("Inner step size: a fraction of a full natural step in (0, 1], or per support example for gradient ascent", "inner_lr"))
@click.option("--learn-lr/--no-learn-lr", "learn_lr", default=None, help=_d("Learn the inner step sizes (Meta-SGD style)", "learn_lr"))
@click.option("--first-order/--second-order", "first_order", default=None, help=_d("Do not differentiate through the inner gradients", "first_order"))
@click.option("--prior", metavar="NAME", help=_d("Hierarchical prior (see 'hvi priors')", "prior"))
@click.option("--q-theta", "q_theta", type=click.Choice(choices.Q_THETAS), help=_d("q(θ) of latent global sites: point mass (empirical Bayes), diagonal Normal, or a spline flow", "q_theta"))
@click.option("--kl-weight", "kl_weight", type=float, metavar="β", help=_d("Weight of KL(q(φ_i) ‖ p(φ_i | θ))", "kl_weight"))
@click.option("--lr", type=float, metavar="LR", help=_d("Adam learning rate of θ", "lr"))
@click.option("--seed", type=int, metavar="S", help=_d("Seed of initialisation, sampling and task order", "seed"))
@click.option("--device", metavar="cpu|cuda", help=_d("Where to train (cpu, cuda, cuda:N)", "device"))
@click.option("--nproc", "nproc", type=int, metavar="N", help="Train on N local processes: re-runs this command under torchrun (python -m torch.distributed.run --standalone --nproc-per-node N; docs/distributed.md).")
@click.option("--threads", type=int, metavar="N", help=_d("CPU threads: N task workers, each adapting a chunk of the task batch with single-threaded torch kernels; "
                    "more than 1 costs more CPU than it saves time in the default bayes_unet and mlp runs (docs/performance.md)", "threads"))
@click.option("--resume", is_flag=True, help="Continue the interrupted or finished run at --out.")
@click.option("--val-every", "val_every", type=int, metavar="N", help="Validate on held-out val tasks every N steps (default steps/10).")
@click.option("--checkpoint-every", "checkpoint_every", type=int, metavar="N", help="Write checkpoint/ every N steps (default steps/10).")
@click.option("--keep-checkpoints", "keep_checkpoints", type=int, metavar="N", help=_d("Keep the newest N checkpoints in checkpoint/; resuming falls back to the newest good one if the last is damaged", "keep_checkpoints"))
@click.option("--data-arg", "data_args", multiple=True, callback=_key_values, metavar="KEY=VALUE", help="Argument of the data source (repeatable; see 'hvi sources'), over [data_args] of --config; VALUE is read as JSON if it parses (5, 0.1, true, null, [1,2], \"text\"), else as a string.")
@click.option("--model-arg", "model_args", multiple=True, callback=_key_values, metavar="KEY=VALUE", help="Argument of the model builder (repeatable; see 'hvi models'), e.g. --model-arg hidden=[64,64].")
@click.option("--prior-arg", "prior_args", multiple=True, callback=_key_values, metavar="KEY=VALUE", help="Argument of the prior (repeatable), e.g. --prior-arg init_scale=0.05.")
@click.option("--likelihood-arg", "likelihood_args", multiple=True, callback=_key_values, metavar="KEY=VALUE", help="Argument of the likelihood (repeatable), e.g. --likelihood-arg init_scale=0.3.")
@click.option("--print-config", "print_config", is_flag=True, help="Print the resolved configuration as TOML (which --config reads back) and exit without training.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar (stderr).")
@_errors
def fit_cmd(config_path, out, resume, progress, print_config, **opts) -> None:
    from hvi.cli.run import run_fit

    nproc = opts.pop("nproc", None)
    if nproc is not None and not print_config:  # data-parallel: the same command on N processes (hvi.distributed)
        import sys

        from hvi.distributed import relaunch, strip_option

        sys.exit(relaunch(nproc, strip_option(sys.argv[1:], "--nproc")))

    if print_config:
        from hvi.cli.config import dump_toml
        from hvi.cli.run import resolved_config

        cfg = resolved_config(opts, config_path=config_path, out=out, resume=resume)
        click.echo(dump_toml(cfg, header=PRINT_CONFIG_HEADER), nl=False)
        return
    from hvi.cli.log import is_quiet

    summary = run_fit(
        opts, config_path=config_path, out=out, resume=resume, progress=progress and not is_quiet(), echo=click.echo
    )
    if is_quiet():
        return
    val = ""
    if summary.val:
        val = " val " + " ".join(f"{k}={v:.4g}" for k, v in summary.val.items())
    click.echo(
        f"trained {summary.steps} steps ({summary.steps - summary.start_step} now) in {summary.seconds:.1f}s; "
        f"final loss {summary.final_loss:.4g};{val}"
    )
    click.echo(f"run directory: {summary.run_dir}")


# --------------------------------------------------------------------------- evaluate

_EVAL_HELP = """Meta-test metrics of a run on held-out tasks, with baselines.

Regression: RMSE, MAE, Gaussian NLL, CRPS, coverage of the 50/80/90/95%
predictive intervals; classification: accuracy, NLL, ECE; each the mean over
tasks with a 95% CI. Baselines: the un-adapted prior (0 inner steps), a
non-meta-learned network trained per task from scratch with the same inner
steps, and the source's persistence/climatology forecasts where it has them
(with the skill score 1 - RMSE/RMSE_persistence).

The result, with each task's values (per_task, keyed by the task's index in
the split), is also written to RUN_DIR/evaluation.json (atomically; the last
evaluation); --json prints the same object.

\b
Examples:
  hvi evaluate runs/bayes_unet
  hvi evaluate runs/sine --json --num-samples 50 --inner-steps 10
  hvi evaluate runs/mine --data other_tasks.nc --split val
"""


@cli.command("evaluate", help=_EVAL_HELP, context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--data", metavar="SOURCE_OR_PATH", help="Evaluate on other data of the same shape (default: the run's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one strict JSON object (NaN as null; per-task values under per_task) instead of the table.")
@click.option("--num-samples", "num_samples", type=click.IntRange(min=1), help="Predictive weight samples per task (default: the run's eval_samples, 100 for most models).")
@click.option("--inner-steps", "inner_steps", type=click.IntRange(min=0), help="Adaptation steps at test time (default: the training value).")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True, help="Which tasks.")
@click.option("--max-tasks", "max_tasks", type=int, help="Evaluate at most this many tasks (default: the run's eval_tasks; all for most models).")
@click.option("--device", metavar="cpu|cuda", help="Where to run (default cpu).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Seed of the predictive samples.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (stderr).")
@_errors
def evaluate_cmd(run_dir, data, as_json, num_samples, inner_steps, split, max_tasks, device, seed, progress) -> None:
    from hvi.cli.evaluate import evaluate_run, format_table
    from hvi.cli.log import is_quiet

    res = evaluate_run(
        run_dir,
        data=data,
        num_samples=num_samples,
        inner_steps=inner_steps,
        split=split,
        max_tasks=max_tasks,
        device=device,
        seed=seed,
        progress=progress and not as_json and not is_quiet(),
    )
    if as_json:
        from hvi.run_dir import finite_json

        click.echo(json.dumps(finite_json(res), allow_nan=False))
    else:
        click.echo(format_table(res))
    import logging

    from hvi.run_dir import EVALUATION_FILE, write_evaluation

    try:
        logging.getLogger("hvi.cli").info("wrote %s", write_evaluation(run_dir, res))
    except OSError as e:  # the result is printed; a read-only run directory only loses the copy
        logging.getLogger("hvi.cli").warning(f"could not write {run_dir}/{EVALUATION_FILE}: {e}")


# --------------------------------------------------------------------------- predict

_PREDICT_HELP = """Adapt a run to new tasks and write its posterior predictive (netCDF).

The support file holds x and y of every task (all samples are support); the
query file holds x (y optional) of the same tasks; see hvi.data.files for the
layout. The output keeps the query's task/sample coordinates and y's other
dims, with long_name and units (y's own) attributes: mean and std
(regression) or label and probs (classification), plus samples (dim draw)
with --samples and quantiles (dim quantile) with --quantiles. It is written
atomically; an error leaves no file.

\b
Examples:
  hvi predict runs/sine --support support.nc --query query.nc --out pred.nc
  hvi predict runs/bayes_unet --support s.nc --query q.nc --out p.nc --inner-steps 5
  hvi predict runs/sine --support s.nc --query q.nc --out p.nc --samples 20 --quantiles 0.05,0.5,0.95
"""


@cli.command("predict", help=_PREDICT_HELP, context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--support", required=True, metavar="FILE", help="Support set (.nc/.zarr).")
@click.option("--query", required=True, metavar="FILE", help="Query inputs (.nc/.zarr).")
@click.option("--out", "out", required=True, metavar="FILE", help="Output .nc file.")
@click.option("--num-samples", "num_samples", type=click.IntRange(min=1), default=100, show_default=True, help="Predictive weight samples.")
@click.option("--inner-steps", "inner_steps", type=click.IntRange(min=0), help="Adaptation steps (default: the training value).")
@click.option("--device", metavar="cpu|cuda", help="Where to run (default cpu).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Seed of the predictive samples.")
@click.option("--samples", "draws", type=click.IntRange(min=1), metavar="N", help="Also write N posterior predictive draws of y (variable samples, dim draw).")
@click.option("--quantiles", metavar="Q,Q,...", help="Also write these predictive quantiles (regression; variable quantiles, dim quantile), e.g. 0.05,0.5,0.95.")
@_errors
def predict_cmd(run_dir, support, query, out, num_samples, inner_steps, device, seed, draws, quantiles) -> None:
    from hvi.cli.evaluate import predict_files

    path = predict_files(
        run_dir, support, query, out, inner_steps=inner_steps, num_samples=num_samples, device=device, seed=seed,
        draws=draws, quantiles=quantiles,
    )
    from hvi.cli.log import is_quiet

    if not is_quiet():
        click.echo(f"wrote {path}")


# --------------------------------------------------------------------------- diagnose

_DIAGNOSE_HELP = """ArviZ diagnostics of a run on held-out tasks: InferenceData (netCDF), VI checks, plots.

Adapts to every held-out task's support set and draws its query targets
from the posterior predictive. Writes an arviz.InferenceData (posterior,
posterior_predictive, observed_data, log_likelihood, sample_stats with the
ELBO trace from metrics.jsonl) to --out, and with --plots the PNGs ppc,
loo_pit / pit / reliability, pareto_k and elbo. Prints the Pareto k̂ of each
task's q(φ_i) (good < 0.5, ok < 0.7, bad: q misses the posterior; see
docs/diagnostics.md), predictive interval coverage and PIT (regression) or
ECE (classification). Outputs are written atomically; errors leave none.

\b
Examples:
  hvi diagnose runs/sine --plots runs/sine/plots
  hvi diagnose runs/bayes_unet --out idata.nc --num-samples 50 --max-tasks 20
  hvi diagnose runs/mine --data other_tasks.nc --plots plots
"""


@cli.command("diagnose", help=_DIAGNOSE_HELP, context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", "out", metavar="FILE.nc", help="InferenceData netCDF file (default: RUN_DIR/idata.nc).")
@click.option("--plots", "plots", metavar="DIR", help="Write PNG plots into this directory (created if missing).")
@click.option("--data", metavar="SOURCE_OR_PATH", help="Diagnose on other data of the run's shapes: a source or a .nc/.zarr file (default: the run's).")
@click.option("--num-samples", "num_samples", type=click.IntRange(min=1), help="Predictive draws per task (default: the run's eval_samples, at most 100).")
@click.option("--max-tasks", "max_tasks", type=click.IntRange(min=1), help="Diagnose at most this many tasks (default: the run's eval_tasks; all for most models).")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True, help="Which tasks.")
@click.option("--inner-steps", "inner_steps", type=click.IntRange(min=0), help="Adaptation steps (default: the training value).")
@click.option("--k-samples", "k_samples", type=click.IntRange(min=100), default=300, show_default=True, help="Draws per task for Pareto k̂; its time grows in proportion (more: slower, less noisy k̂).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws.")
@click.option("--device", metavar="cpu|cuda", help="Where to run (default cpu).")
@_errors
def diagnose_cmd(run_dir, out, plots, data, num_samples, max_tasks, split, inner_steps, k_samples, seed, device) -> None:
    from hvi.cli.diagnose import diagnose_run, format_report

    res = diagnose_run(
        run_dir, out=out, plots=plots, num_samples=num_samples, max_tasks=max_tasks, split=split,
        inner_steps=inner_steps, k_samples=k_samples, seed=seed, device=device, data=data,
    )
    click.echo(format_report(res))


# --------------------------------------------------------------------------- listings


@cli.command("models", context_settings=CONTEXT)
@click.option("--brief", is_flag=True, help="One line per model (name, description, default data).")
@_errors
def models_cmd(brief) -> None:
    """List the zoo models: description, 'hvi fit' defaults row, model_args.

    Each model's 'fit defaults' are the values of its row in hvi/cli/defaults.py
    (over the common defaults that 'hvi fit --help' shows); 'model_args' are
    the keyword arguments of its builder with their defaults, which
    --model-arg KEY=VALUE or the [model_args] table of --config set (shapes
    that follow from the data, such as in/out features, are filled in).

    \b
    Example:
      hvi models
      hvi models --brief
    """
    from hvi.defaults import MODEL_DEFAULTS
    from hvi.cli.describe import model_lines
    from hvi.builders import load_registries
    from hvi.models import describe_model, list_models

    load_registries()
    names = list_models()
    w = max(map(len, names), default=0)
    for name in names:
        if brief:
            data = MODEL_DEFAULTS.get(name, {}).get("data")
            where = f" [default data: {data}]" if data else ""
            click.echo(f"{name.ljust(w)}  {describe_model(name)}{where}")
        else:
            click.echo("\n".join(model_lines(name, w)))


@cli.command("priors", context_settings=CONTEXT)
@_errors
def priors_cmd() -> None:
    """List the hierarchical priors, one per line (name, description).

    \b
    Example:
      hvi priors
    """
    from hvi.builders import load_registries
    from hvi.priors.base import describe_prior, list_priors

    load_registries()
    names = list_priors()
    w = max(map(len, names), default=0)
    for name in names:
        click.echo(f"{name.ljust(w)}  {describe_prior(name)}")


@cli.command("sources", context_settings=CONTEXT)
@click.option("--brief", is_flag=True, help="One line per source (name, description).")
@_errors
def sources_cmd(brief) -> None:
    """List the registered data sources for --data and their data_args.

    'data_args' are the keyword arguments of each source with their defaults
    ('(required)' when there is none), set by --data-arg KEY=VALUE or the
    [data_args] table of --config.

    \b
    Example:
      hvi sources
      hvi fit --model mlp --data file --data-arg path=tasks.nc --data-arg k_shot=5
    """
    from hvi.cli.describe import source_lines
    from hvi.builders import load_registries, source_description
    from hvi.data.base import list_sources

    load_registries()
    names = list_sources()
    w = max(map(len, names), default=0)
    for name in names:
        if brief:
            click.echo(f"{name.ljust(w)}  {source_description(name)}")
        else:
            click.echo("\n".join(source_lines(name, w)))


# hvi analyze ntk ...: cli/analyze.py (its imports are light; torch loads when a command runs).
from hvi.cli.analyze import analyze_group  # noqa: E402

cli.add_command(analyze_group(CONTEXT, _errors))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hvi")


if __name__ == "__main__":
    main()
