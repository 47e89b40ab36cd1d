"""Every error of the hvi command line is one line ``Error: ...`` on stderr (tracebacks only with --debug)."""

from __future__ import annotations

import json
import shutil

import pyro
import pytest
from cli_checks import invoke
import torch
from click.testing import CliRunner

import hvi.cli.run as run_mod
from hvi.cli.main import UNEXPECTED, cli
from hvi.run_dir import CONFIG_FILE

TINY = ["--model", "mlp", "--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _fresh_store(fresh_store):
    """Every test here starts from an empty param store (tests/conftest.py)."""


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("HVI_DEBUG", raising=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny finished run (copied before it is edited)."""
    pyro.clear_param_store()
    out = tmp_path_factory.mktemp("runs") / "sine"
    res = CliRunner().invoke(cli, ["fit", *TINY, "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def error_line(res, code=1):
    """The one stderr line of a failed command (asserting that it is exactly one, without a traceback)."""
    assert res.exit_code == code, (res.exit_code, res.output)
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def listing(path):
    return sorted(p.name for p in path.iterdir())


# --------------------------------------------------------------------------- unexpected errors, --debug


def _boom(*args, **kwargs):
    raise KeyError("boom")


BOOM = f"Error: KeyError: 'boom' {UNEXPECTED}"


def test_an_unexpected_error_is_one_line_that_asks_for_a_report(monkeypatch, tmp_path):
    monkeypatch.setattr(run_mod, "run_fit", _boom)
    res = invoke(["fit", *TINY, "--out", str(tmp_path / "r")])
    assert error_line(res) == BOOM
    assert UNEXPECTED == "(unexpected error; please report it; rerun with --debug or HVI_DEBUG=1 for the traceback)"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback_before_the_line(monkeypatch, tmp_path, how):
    monkeypatch.setattr(run_mod, "run_fit", _boom)
    args = ["fit", *TINY, "--out", str(tmp_path / "r")]
    if how == "flag":
        res = invoke(["--debug", *args])
    else:
        res = invoke(args, env={"HVI_DEBUG": "1"})
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-2:] == ["KeyError: 'boom'", BOOM]
    assert "in _boom" in res.stderr


def test_debug_shows_the_traceback_of_an_expected_error_too(tmp_path):
    args = ["fit", *TINY, "--device", "gpu", "--out", str(tmp_path / "r")]
    line = "Error: device='gpu' is not understood; use cpu, cuda or cuda:N (N = 0, 1, ...)."
    assert error_line(invoke(args)) == line
    assert error_line(invoke(args, env={"HVI_DEBUG": "0"})) == line
    res = invoke(["--debug", *args])
    lines = res.stderr.splitlines()
    assert res.exit_code == 1 and lines[0] == "Traceback (most recent call last):"
    assert lines[-2:] == [f"ValueError: {line.removeprefix('Error: ')}", line]
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- wrong-typed arguments


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--steps", "1.5"], 2, "Error: Invalid value for '--steps': '1.5' is not a valid integer. (see 'hvi fit --help')"),
        (["--lr", "abc"], 2, "Error: Invalid value for '--lr': 'abc' is not a valid float. (see 'hvi fit --help')"),
        (["--seed", "-1"], 1, "Error: seed=-1 must be an integer >= 0."),
        (["--threads", "0"], 1, "Error: threads=0 must be an integer >= 1."),
        (["--inner-lr", "nan"], 1,
         "Error: config key 'inner_lr' in the command line must be a finite number, got nan (float)."),
        # the inner loop's settings: hvi.InnerConfig's checks (hvi.settings.check_inner), named by the key
        (["--inner-steps", "-1"], 1, "Error: inner_steps=-1 must be an integer >= 0."),
        (["--inner-lr", "1.5"], 1,
         "Error: inner_lr=1.5 is outside (0, 1) (a learned α starts strictly inside it): under "
         "inner_update='natural' α is the fraction of a full "
         "natural-gradient step; use e.g. inner_lr=0.5, or inner_update='gradient'."),
        (["--kl-weight", "0"], 1,
         "Error: kl_weight=0.0 leaves the natural-gradient step without a prior precision; use kl_weight > 0 "
         "(e.g. 1e-3) or inner_update='gradient'."),
        # what the method cannot run with (hvi.settings.check_method_inner), named by the key
        (["--inner-update", "gradient", "--kl-weight", "0"], 1,
         "Error: kl_weight=0.0 must be > 0 for the variational objective of method='abml'; use a small value such "
         "as 1e-3 to down-weight the KL."),
        (["--method", "maml", "--inner-update", "natural"], 1,
         "Error: method='maml' takes plain gradient steps on a point mass, but inner_update='natural'; use "
         "inner_update='gradient' with a small step such as inner_lr=0.01."),
        (["--method", "maml", "--first-order"], 1,
         "Error: method='maml' is second order but first_order=True; use method='fomaml' (or first_order=False)."),
    ],
)
def test_wrong_typed_fit_options(tmp_path, extra, code, message):
    res = invoke(["fit", *TINY, *extra, "--out", str(tmp_path / "r")])
    assert error_line(res, code) == message
    assert listing(tmp_path) == []


def test_the_method_rules_are_checked_before_the_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "build_source", _boom)
    res = invoke(["fit", *TINY, "--method", "maml", "--memory-mode", "implicit", "--no-learn-lr",
                  "--out", str(tmp_path / "r")])
    assert error_line(res) == ("Error: method='maml' adapts a point mass without a KL term, which "
                               "memory_mode='implicit' needs; use memory_mode='checkpoint' (or 'none').")
    assert listing(tmp_path) == []
    res = invoke(["fit", *TINY, "--method", "reptile", "--q-theta", "normal", "--out", str(tmp_path / "r")])
    assert error_line(res) == "Error: method='reptile' learns a point θ; use q_theta='delta' (or method='abml')."
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "toml, message",
    [
        ('steps = "3"\n', "Error: config key 'steps' in {cfg} must be an integer, got '3' (str)."),
        ("learn_lr = 1\n", "Error: config key 'learn_lr' in {cfg} must be true or false, got 1 (int)."),
        ("model_args = 3\n", "Error: config key 'model_args' in {cfg} must be a table, got 3 (int)."),
        (
            '[prior_args]\ninit_scale = "x"\n',
            "Error: prior 'gaussian' rejected prior_args {{'init_scale': 'x'}}: '>' not supported between "
            "instances of 'str' and 'int'; check the types of these values.",
        ),
        (
            '[likelihood_args]\nnoise = "learned"\ninit_scale = "x"\n',
            "Error: likelihood 'gaussian' rejected likelihood_args {{'noise': 'learned', 'init_scale': 'x'}}: '>' "
            "not supported between instances of 'str' and 'int'; check the types of these values.",
        ),
        (  # the sinusoid's default fixes σ (hvi.defaults.DATA_DEFAULTS): an initial σ alone would go unused
            "[likelihood_args]\ninit_scale = 0.5\n",
            "Error: Gaussian likelihood: init_scale=0.5 is the initial value of a learned σ, but noise=0.1 is "
            "not learned; drop init_scale, or set noise='learned' as well.",
        ),
    ],
)
def test_wrong_typed_config_values(tmp_path, toml, message):
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    runs = tmp_path / "runs"
    runs.mkdir()
    res = invoke(["fit", *TINY, "--config", str(cfg), "--out", str(runs / "r")])
    assert error_line(res) == message.format(cfg=cfg)
    assert listing(runs) == []


def test_a_source_without_its_required_argument(tmp_path):
    res = invoke(["fit", "--model", "mlp", "--data", "file", "--out", str(tmp_path / "r")])
    assert error_line(res) == (
        "Error: data source 'file' cannot be built from data_args {}: missing a required argument: 'path'; "
        "set it in the [data_args] table of --config or with --data-arg KEY=VALUE."
    )
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--max-tasks", "x"], 2,
         "Error: Invalid value for '--max-tasks': 'x' is not a valid integer. (see 'hvi evaluate --help')"),
        (["--num-samples", "0"], 2,
         "Error: Invalid value for '--num-samples': 0 is not in the range x>=1. (see 'hvi evaluate --help')"),
        (["--max-tasks", "1"], 1, "Error: --max-tasks 1 must be >= 2 (a CI needs two tasks)."),
        (["--max-tasks", "-3"], 1, "Error: --max-tasks -3 must be >= 2 (a CI needs two tasks)."),
    ],
)
def test_wrong_typed_evaluate_options(run_dir, extra, code, message):
    assert error_line(invoke(["evaluate", str(run_dir), *extra]), code) == message


@pytest.mark.parametrize(
    "command, kwargs, message",
    [
        ("evaluate", {"num_samples": 0}, "--num-samples 0 must be >= 1."),
        ("predict", {"num_samples": 0}, "--num-samples 0 must be >= 1."),
        ("diagnose", {"num_samples": 0}, "--num-samples 0 must be >= 1."),
        ("evaluate", {"inner_steps": -1}, "--inner-steps -1 must be >= 0."),
        ("predict", {"inner_steps": -1}, "--inner-steps -1 must be >= 0."),
        ("diagnose", {"inner_steps": -1}, "--inner-steps -1 must be >= 0."),
        ("evaluate", {"max_tasks": 1}, "--max-tasks 1 must be >= 2 (a CI needs two tasks)."),
        ("diagnose", {"max_tasks": 0}, "--max-tasks 0 must be >= 1."),
        ("predict", {"draws": 0}, "--samples 0 must be >= 1."),
        ("evaluate", {"num_samples": 2.5}, "--num-samples 2.5 must be an integer >= 1."),
    ],
)
def test_run_commands_check_their_flags_in_one_wording_before_reading_the_run(tmp_path, command, kwargs, message):
    """hvi.cli.config.check_flag: evaluate_run, predict_files and diagnose_run (called from Python, where click's
    ranges do not apply) refuse a bad option with the same line, before opening the (here missing) run."""
    from hvi.cli.diagnose import diagnose_run
    from hvi.cli.evaluate import evaluate_run, predict_files

    missing = tmp_path / "no_run"
    call = {
        "evaluate": lambda: evaluate_run(missing, **kwargs),
        "predict": lambda: predict_files(missing, tmp_path / "s.nc", tmp_path / "q.nc", tmp_path / "p.nc",
                                         **{"num_samples": 100, **kwargs}),
        "diagnose": lambda: diagnose_run(missing, **kwargs),
    }[command]
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- --device


@pytest.mark.parametrize("device", ["cuda:x", "gpu", "cuda:", "CUDA", "cuda:0:1", " cpu"])
def test_malformed_device_strings(run_dir, tmp_path, device):
    fit = invoke(["fit", *TINY, "--device", device, "--out", str(tmp_path / "r")])
    line = f"Error: device={device!r} is not understood; use cpu, cuda or cuda:N (N = 0, 1, ...)."
    assert error_line(fit) == line  # one check (hvi.settings.check_device), one wording for every command
    assert error_line(invoke(["evaluate", str(run_dir), "--device", device])) == line
    predict = ["predict", str(run_dir), "--support", "s.nc", "--query", "q.nc", "--out", str(tmp_path / "p.nc")]
    assert error_line(invoke([*predict, "--device", device])) == line
    assert listing(tmp_path) == []


def test_a_missing_cuda_device(run_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert error_line(invoke(["evaluate", str(run_dir), "--device", "cuda:0"])) == (
        "Error: --device cuda:0: CUDA is not available on this machine; use --device cpu."
    )


# --------------------------------------------------------------------------- edited or older config.json


def _edited(run_dir, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = json.loads((run / CONFIG_FILE).read_text())
    edit(cfg)
    (run / CONFIG_FILE).write_text(json.dumps(cfg))
    return run


EDITS = {
    "missing model key": (
        lambda c: c.pop("prior"),
        "Error: {path} lacks the key 'prior' (written by an older hvi, or edited by hand); add it, e.g. "
        '"prior": "gaussian" if the run used the default, or train a new run.',
    ),
    "missing inner_steps": (
        lambda c: c.pop("inner_steps"),
        "Error: {path} lacks the key 'inner_steps' (written by an older hvi, or edited by hand); add it, e.g. "
        '"inner_steps": 5 if the run used the default, or train a new run.',
    ),
    "wrong type": (
        lambda c: c.update(steps="x"),
        "Error: config key 'steps' in {path} must be an integer, got 'x' (str).",
    ),
    "table as list": (
        lambda c: c.update(model_args=[1]),
        "Error: config key 'model_args' in {path} must be a table, got [1] (list).",
    ),
    "model not a string": (
        lambda c: c.update(model=3),
        "Error: config key 'model' in {path} must be a string, got 3; the run directory is damaged.",
    ),
    "unknown key": (
        lambda c: c.update(stepz=3),
        "Error: {path} has the unknown key 'stepz' (written by a newer hvi, or edited by hand); remove it.",
    ),
    "null likelihood": (
        lambda c: c.update(likelihood=None),
        "Error: config key 'likelihood' in {path} must name the likelihood the run was trained with, "
        'e.g. "gaussian".',
    ),
    "bad device": (
        lambda c: c.update(device="gpu"),
        "Error: device='gpu' is not understood; use cpu, cuda or cuda:N (N = 0, 1, ...).",
    ),
    "wrong model_args": (
        lambda c: c["model_args"].update(hidden="x"),
        "Error: mlp: hidden must be a list of layer widths such as [40, 40], got 'x'.",
    ),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_edited_config_json(run_dir, tmp_path, case):
    edit, message = EDITS[case]
    run = _edited(run_dir, tmp_path, edit)
    expected = message.format(path=run / CONFIG_FILE)
    before = listing(tmp_path)
    assert error_line(invoke(["evaluate", str(run), "--max-tasks", "2", "--num-samples", "2"])) == expected
    predict = ["predict", str(run), "--support", "s.nc", "--query", "q.nc", "--out", str(tmp_path / "p.nc")]
    assert error_line(invoke(predict)) == expected
    assert error_line(invoke(["fit", "--out", str(run), "--resume", "--steps", "4", "--no-progress"])) == expected
    assert listing(tmp_path) == before


def test_an_older_config_json_gets_the_evaluation_defaults(run_dir, tmp_path):
    run = _edited(run_dir, tmp_path, lambda c: [c.pop(k) for k in ("eval_samples", "val_tasks", "checkpoint_every")])
    res = invoke(["evaluate", str(run), "--json", "--max-tasks", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["num_samples"] == 100
    res = invoke(["fit", "--out", str(run), "--resume", "--steps", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    saved = json.loads((run / CONFIG_FILE).read_text())
    assert (saved["eval_samples"], saved["val_tasks"], saved["checkpoint_every"]) == (100, 32, 1)


def test_a_config_json_that_is_not_an_object(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / CONFIG_FILE).write_text("[1, 2]")
    assert error_line(invoke(["evaluate", str(run)])) == (
        f"Error: {run / CONFIG_FILE} is not an hvi run config (no 'model')."
    )
