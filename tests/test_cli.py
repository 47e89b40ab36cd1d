"""The hvi command line, driven through click's CliRunner with tiny settings."""

from __future__ import annotations

import json
import signal

import numpy as np
import pyro
import cli_checks
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

import hvi.cli.run as run_mod
from hvi.checkpoint import read_checkpoint
from cli_checks import assert_error
from hvi.cli.main import cli
from hvi.data.files import write_tasks
from hvi.run_dir import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, MODEL_DIR

TINY = ["--model", "mlp", "--steps", "3", "--task-batch", "2", "--inner-steps", "1", "--no-progress"]
VAL = ["--val-every", "2"]


@pytest.fixture(autouse=True)
def _fresh_store(fresh_store):
    """Every test here starts from an empty param store (tests/conftest.py)."""


def invoke(runner, args):
    return cli_checks.invoke(args, runner)


def entries(path):
    return sorted(p.name for p in path.iterdir())


def tasks_file(path, n_tasks=12, n=8, nan=False, features=1):
    g = np.random.default_rng(0)
    x = g.uniform(-5, 5, size=(n_tasks, n, features)).astype("float32")
    y = (np.sin(x[..., :1]) * g.uniform(0.5, 2, size=(n_tasks, 1, 1))).astype("float32")
    if nan:
        y[3, 2, 0] = np.nan
    return write_tasks(path, {"x": x, "y": y}, split=["train"] * 8 + ["val"] * 2 + ["test"] * 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished run shared by the read-only tests."""
    pyro.clear_param_store()
    out = tmp_path_factory.mktemp("runs") / "sine"
    res = CliRunner().invoke(cli, ["fit", *TINY, *VAL, "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


# --------------------------------------------------------------------------- help, listings


def test_help_version_and_listings(runner):
    res = invoke(runner, ["--help"])
    assert res.exit_code == 0 and "Examples" in res.output
    for cmd in ("fit", "evaluate", "predict", "diagnose", "models", "priors", "sources"):
        res = invoke(runner, [cmd, "--help"])
        assert res.exit_code == 0, cmd
        assert "Example" in res.output, cmd
    res = invoke(runner, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("hvi ")
    models = invoke(runner, ["models", "--brief"]).output.splitlines()
    assert {line.split()[0] for line in models} >= {"mlp", "siren", "conv4", "bayes_unet"}
    assert all(len(line.split(maxsplit=1)) == 2 for line in models)
    priors = invoke(runner, ["priors"]).output.splitlines()
    assert "gaussian" in {line.split()[0] for line in priors}
    sources = invoke(runner, ["sources"]).output.splitlines()
    assert {line.split()[0] for line in sources} >= {"sinusoid", "clouds", "solar", "file"}


def test_bare_hvi_prints_the_full_help(runner):
    res = invoke(runner, [])
    assert res.exit_code == 0 and res.stderr == ""
    assert res.stdout == invoke(runner, ["--help"]).stdout
    commands = res.stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in commands] == [
        "analyze", "diagnose", "evaluate", "fit", "models", "predict", "priors", "sources"
    ]


#: Runs the CLI's entry point with ARGS and prints its exit status and the heavy modules it imported.
_STARTUP = """
import sys
from hvi.cli.main import main
sys.argv = ["hvi", *ARGS]
try:
    main()
except SystemExit as e:
    code = e.code
print(code, sorted(m for m in ("torch", "pyro", "numpy") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"], ["--version"], ["fit", "--help"], ["models", "--help"]])
def test_help_and_version_do_not_import_torch(args):
    import subprocess
    import sys

    script = _STARTUP.replace("ARGS", repr(args))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "0 []\n"
    from hvi import __version__

    assert res.stdout.startswith("Usage: hvi" if args != ["--version"] else f"hvi {__version__}\n")


# --------------------------------------------------------------------------- fit / evaluate / predict


def test_fit_writes_a_complete_run_dir(trained):
    assert entries(trained) == ["checkpoint", "config.json", "metrics.jsonl", "model"]
    assert not list(trained.parent.glob("*.tmp-*"))
    cfg = json.loads((trained / CONFIG_FILE).read_text())
    assert cfg["model"] == "mlp" and cfg["data"] == "sinusoid" and cfg["steps"] == 3
    assert cfg["inner_steps"] == 1 and cfg["model_args"]["in_features"] == 1
    lines = [json.loads(line) for line in (trained / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert {"loss", "elbo", "loss_per_task", "tasks_per_s"} <= lines[0].keys()
    assert "val" in lines[1] and {"rmse", "nll", "crps", "coverage_90"} <= lines[1]["val"].keys()
    assert read_checkpoint(trained / CHECKPOINT_DIR).step == 3
    model = read_checkpoint(trained / MODEL_DIR)
    assert model.step == 3 and model.optimizer_state is None
    assert model.extra["x_shape"] == [1]


def test_fit_and_evaluate_on_cpu_tune_the_allocator(runner, trained, tmp_path, monkeypatch):
    import hvi.allocator

    calls = []
    monkeypatch.setattr(hvi.allocator, "tune_allocator", lambda: calls.append(1) or True)
    res = invoke(runner, ["fit", *TINY, "--steps", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert calls == [1]
    res = invoke(runner, ["evaluate", str(trained), "--json", "--max-tasks", "2", "--num-samples", "2"])
    assert res.exit_code == 0, res.output
    assert calls == [1, 1]


def test_evaluate_json_and_table(runner, trained):
    res = invoke(runner, ["evaluate", str(trained), "--json", "--max-tasks", "4", "--num-samples", "5"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["num_tasks"] == 4 and out["inner_steps"] == 1
    for key in ("rmse", "nll", "crps", "coverage_50", "coverage_80", "coverage_90", "coverage_95"):
        m = out["metrics"][key]
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert set(out["baselines"]) == {"prior", "scratch"}
    assert "rmse" in out["baselines"]["scratch"]["metrics"]
    # the scratch baseline did not clobber the trained params
    res2 = invoke(runner, ["evaluate", str(trained), "--json", "--max-tasks", "4", "--num-samples", "5"])
    assert json.loads(res2.stdout)["metrics"] == out["metrics"]
    table = invoke(runner, ["evaluate", str(trained), "--max-tasks", "4", "--num-samples", "5", "--no-progress"])
    assert table.exit_code == 0
    assert "rmse" in table.stdout and "prior (0 steps)" in table.stdout and "scratch" in table.stdout


@pytest.mark.parametrize("upsample", ["bilinear", "nearest_1x1"])
def test_evaluate_persistence_skill_on_clouds(runner, tmp_path, upsample):
    out = tmp_path / "c"
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'data = "clouds"\n[data_args]\nsize = 8\nk_shot = 2\nk_query = 2\nnum_tasks = [8, 2, 3]\n'
        f'[model_args]\nbase = 2\ndepth = 2\nupsample = "{upsample}"\n'
    )
    res = invoke(
        runner,
        ["fit", "--model", "bayes_unet", "--config", str(cfg), "--steps", "2", "--task-batch", "2",
         "--inner-steps", "1", "--out", str(out), "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    res = invoke(runner, ["evaluate", str(out), "--json", "--num-samples", "3"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert "persistence" in data["baselines"]
    s = data["skill"]["persistence"]
    assert s["ci_low"] <= s["value"] <= s["ci_high"]


def _strict_json(text):
    """``json.loads`` that refuses the non-standard tokens NaN, Infinity and -Infinity."""

    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


def test_metrics_jsonl_is_strict_json(runner, tmp_path, monkeypatch):
    nan, inf = float("nan"), float("inf")
    monkeypatch.setattr(
        run_mod, "validation_metrics", lambda *a, **k: {"rmse": nan, "nll": inf, "crps": -inf, "coverage_90": 0.5}
    )
    out = tmp_path / "r"
    res = invoke(runner, ["fit", *TINY, "--val-every", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].endswith(" val rmse=nan nll=inf crps=-inf coverage_90=0.5")
    lines = [_strict_json(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    val = {"rmse": None, "nll": None, "crps": None, "coverage_90": 0.5}
    assert [r["val"] for r in lines] == [val, val, val]
    assert read_checkpoint(out / MODEL_DIR).extra["val"] == val
    assert read_checkpoint(out / CHECKPOINT_DIR).extra["val"] == val


def test_metrics_jsonl_flags_skipped_steps(runner, tmp_path, monkeypatch):
    import hvi.svi

    original, calls = hvi.svi.SVI.step, []

    def second_step_not_finite(self, *args, **kwargs):
        calls.append(1)
        loss = original(self, *args, **kwargs)
        return float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(hvi.svi.SVI, "step", second_step_not_finite)
    out = tmp_path / "r"
    res = invoke(runner, ["fit", *TINY, "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = [_strict_json(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [r["skipped"] for r in lines] == [0, 1, 0]
    assert lines[1]["loss"] is None


def test_evaluate_json_is_strict_and_names_seed_and_version(runner, trained, monkeypatch):
    from hvi import __version__

    res = invoke(runner, ["evaluate", str(trained), "--json", "--max-tasks", "2", "--num-samples", "2", "--seed", "7"])
    assert res.exit_code == 0, res.output
    out = _strict_json(res.stdout)
    assert (out["seed"], out["hvi_version"]) == (7, __version__)
    import hvi.cli.evaluate

    nan, inf = float("nan"), float("inf")
    fake = {"metrics": {"nll": {"value": inf, "ci_low": nan, "ci_high": -inf}}, "seed": 0, "values": [1.5, nan]}
    monkeypatch.setattr(hvi.cli.evaluate, "evaluate_run", lambda *a, **k: fake)
    res = invoke(runner, ["evaluate", str(trained), "--json"])
    assert res.exit_code == 0, res.output
    assert res.stdout == (
        '{"metrics": {"nll": {"value": null, "ci_low": null, "ci_high": null}}, "seed": 0, "values": [1.5, null]}\n'
    )


def test_predict_writes_netcdf(runner, trained, tmp_path):
    g = np.random.default_rng(1)
    xs = g.uniform(-5, 5, size=(3, 5, 1)).astype("float32")
    write_tasks(tmp_path / "s.nc", (xs, np.sin(xs)))
    xq = g.uniform(-5, 5, size=(3, 7, 1)).astype("float32")
    xr.Dataset({"x": (("task", "sample", "x_dim_0"), xq)}).to_netcdf(tmp_path / "q.nc", engine="h5netcdf")
    out = tmp_path / "pred.nc"
    res = invoke(
        runner,
        ["predict", str(trained), "--support", str(tmp_path / "s.nc"), "--query", str(tmp_path / "q.nc"),
         "--out", str(out), "--num-samples", "4"],
    )
    assert res.exit_code == 0, res.output
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds["mean"].shape == (3, 7, 1) and ds["std"].shape == (3, 7, 1)
        assert bool((ds["std"] > 0).all())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_fit_on_a_file_source(runner, tmp_path):
    data = tasks_file(tmp_path / "tasks.nc", features=2)
    cfg = tmp_path / "run.toml"
    cfg.write_text("[data_args]\nk_shot = 4\n")
    out = tmp_path / "f"
    res = invoke(runner, ["fit", *TINY, "--data", str(data), "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved["data"] == str(data) and saved["model_args"]["in_features"] == 2


# --------------------------------------------------------------------------- resume


def _params(run):
    return read_checkpoint(run / MODEL_DIR).params


def test_resume_is_bit_identical(runner, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--model", "mlp", "--task-batch", "2", "--inner-steps", "1", "--no-progress", "--val-every", "1"]
    assert invoke(runner, ["fit", *common, "--steps", "4", "--out", str(a)]).exit_code == 0
    assert invoke(runner, ["fit", *common, "--steps", "2", "--out", str(b)]).exit_code == 0
    res = invoke(runner, ["fit", "--out", str(b), "--resume", "--steps", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    la = [json.loads(x) for x in (a / METRICS_FILE).read_text().splitlines()]
    lb = [json.loads(x) for x in (b / METRICS_FILE).read_text().splitlines()]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["val"] for r in la] == [r["val"] for r in lb]
    assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob("*.old-*"))


def test_interrupted_run_resumes(runner, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--model", "mlp", "--task-batch", "2", "--inner-steps", "1", "--no-progress", "--steps", "4",
              "--val-every", "2", "--checkpoint-every", "3"]
    assert invoke(runner, ["fit", *common, "--out", str(a)]).exit_code == 0

    real = run_mod.validation_metrics
    calls = []

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during step 2
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "validation_metrics", interrupting)
    res = invoke(runner, ["fit", *common, "--out", str(b)])
    assert res.exit_code == 130, res.output
    assert "Traceback" not in res.output and "--resume" in res.stderr
    assert not b.exists()
    (tmp,) = tmp_path.glob("b.tmp-*")
    assert read_checkpoint(tmp / CHECKPOINT_DIR).step == 2
    monkeypatch.setattr(run_mod, "validation_metrics", real)
    # a new run at the same --out is refused while the interrupted one exists
    assert_error(invoke(runner, ["fit", *common, "--out", str(b)]), "--resume")
    res = invoke(runner, ["fit", "--out", str(b), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert not list(tmp_path.glob("b.tmp-*"))
    pa, pb = _params(a), _params(b)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def test_resume_with_a_different_model_config_fails(runner, trained, tmp_path):
    before = entries(trained.parent)
    res = invoke(runner, ["fit", "--out", str(trained), "--resume", "--steps", "5", "--inner-lr", "0.5"])
    assert_error(res, "inner_lr")
    res = invoke(runner, ["fit", "--out", str(trained), "--resume", "--steps", "5", "--model", "siren"])
    assert_error(res, "model")
    assert entries(trained.parent) == before
    res = invoke(runner, ["fit", "--out", str(trained), "--resume", "--steps", "3"])
    assert_error(res, "already has 3 steps")
    assert entries(trained.parent) == before


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "mlp", "--prior", "nope"], "unknown prior 'nope'"),
        (["--model", "mlp", "--data", "nope"], "unknown data source 'nope'"),
        (["--model", "mlp", "--steps", "0"], "steps=0"),
        (["--model", "mlp", "--device", "tpu"], "device"),
        (["--model", "mlp", "--task-batch", "50000"], "task"),
        (["--model", "mlp", "--steps", "abc"], "abc"),
        (["--model", "mlp", "--q-theta", "wide"], "wide"),
        (["--steps", "3"], "no model given"),
    ],
)
def test_bad_fit_input_leaves_nothing(runner, tmp_path, extra, fragment):
    res = invoke(runner, ["fit", *extra, "--out", str(tmp_path / "r"), "--no-progress"])
    assert_error(res, fragment)
    assert entries(tmp_path) == []


def test_bad_data_files_leave_nothing(runner, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    garbage = data / "garbage.nc"
    garbage.write_bytes(b"this is not netCDF")
    xr.Dataset({"x": (("task", "sample"), np.zeros((4, 3), "float32"))}).to_netcdf(
        data / "noy.nc", engine="h5netcdf"
    )
    nan = tasks_file(data / "nan.nc", nan=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    cases = [
        (data / "missing.nc", "does not exist"),
        (garbage, "cannot read"),
        (data / "noy.nc", "no variable 'y'"),
        (nan, "NaN"),
    ]
    for path, fragment in cases:
        res = invoke(runner, ["fit", *TINY, "--data", str(path), "--out", str(runs / "r")])
        assert_error(res, fragment)
        assert entries(runs) == []
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("steps = \n")
    assert_error(invoke(runner, ["fit", *TINY, "--config", str(bad_toml), "--out", str(runs / "r")]), "TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("stepz = 3\n")
    assert_error(invoke(runner, ["fit", *TINY, "--config", str(unknown), "--out", str(runs / "r")]), "stepz")
    assert entries(runs) == []


def test_existing_run_dir_is_not_overwritten(runner, trained):
    before = entries(trained)
    assert_error(invoke(runner, ["fit", *TINY, "--out", str(trained)]), "already exists")
    assert entries(trained) == before


def test_missing_or_broken_run_dir(runner, trained, tmp_path):
    assert_error(invoke(runner, ["evaluate", str(tmp_path / "none")]), "does not exist")
    assert_error(
        invoke(runner, ["predict", str(tmp_path / "none"), "--support", "s.nc", "--query", "q.nc", "--out", "p.nc"]),
        "does not exist",
    )
    assert_error(invoke(runner, ["evaluate", str(trained), "--data", "nope"]), "unknown data source")
    # a corrupted model checkpoint (checksum mismatch) is one clear error
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(trained, broken)
    tfile = next((broken / MODEL_DIR).glob("*.safetensors"))
    raw = bytearray(tfile.read_bytes())
    raw[-3] ^= 0xFF
    tfile.write_bytes(bytes(raw))
    assert_error(invoke(runner, ["evaluate", str(broken)]), "corrupted")


def test_a_closed_pipe_ends_the_listing_quietly():
    """`hvi models | head -1`: the reader leaves early; no 'Error: Broken pipe' line."""
    import subprocess
    import sys

    proc = subprocess.run(
        ["bash", "-c", f"'{sys.executable}' -m hvi.cli.main models | head -c 1 > /dev/null"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.stderr == "", proc.stderr
