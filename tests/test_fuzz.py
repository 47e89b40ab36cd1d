"""Fuzz-style checks: generated bad inputs against the public API and the ``hvi`` command line.

Every case is generated from a seeded ``random.Random`` at collection time, so
the set is the same on every run (``pytest tests/test_fuzz.py -q`` prints the
count). Each bad input must end in a clean error:

* the API: ``ValueError`` or ``TypeError`` whose message is one non-empty line;
* the CLI: exit status != 0, exactly one ``Error: ...`` line on stderr, no
  traceback, and nothing written where the output would go;

and none may hang (``pytest-timeout`` per case).

602 generated cases (588 run, 14 are valid inputs and skipped with the reason),
about 16 s of CPU in all.

Families: wrong shapes / dtypes / NaN / inf / wrong types in a
:class:`hvi.TaskBatch` given to :func:`hvi.fit` and :func:`hvi.predict`; bad
:class:`hvi.MetaModel` and :class:`hvi.InnerConfig` arguments; wrong-typed
values of every ``hvi fit`` option and of every key of its TOML config;
truncated and random-byte checkpoints (``load_checkpoint`` and ``hvi evaluate``)
and netCDF files (``hvi fit --data``, ``hvi predict --support/--query``);
edited and hand-broken ``config.json`` of a run for ``hvi evaluate``, ``hvi
predict`` and ``hvi fit --resume``; bad ``--out`` of ``hvi fit`` and wrong values of
every ``hvi evaluate`` / ``hvi predict`` option.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import hvi
from hvi.settings import KEYS
from hvi.cli.main import cli
from hvi.priors.gaussian import GaussianPrior
from hvi.checkpoint import META_FILE, metadata_files
from hvi.run_dir import CHECKPOINT_DIR, CONFIG_FILE

SEED = 1313
TINY = ["--model", "mlp", "--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--no-progress"]
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _fresh(fresh_store, monkeypatch):
    """An empty param store per case (tests/conftest.py), and no HVI_DEBUG from the environment."""
    monkeypatch.delenv("HVI_DEBUG", raising=False)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg.strip(), f"empty message from {type(excinfo.value).__name__}"
    assert "\n" not in msg.strip(), msg
    return msg


def cli_error(args, **kwargs) -> str:
    """Runs ``hvi ARGS`` in-process; asserts one ``Error:`` line on stderr, no traceback, exit != 0."""
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)
    assert res.exit_code != 0, (args, res.output)
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (args, res.stderr)
    assert lines[0].startswith("Error: "), lines[0]
    assert "unexpected error" not in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> list[str]:
    """Every file and directory below ``path`` (relative), with sizes of the files."""
    if not path.exists():
        return []
    return sorted(
        f"{p.relative_to(path)}:{p.stat().st_size if p.is_file() else 'd'}" for p in path.rglob("*")
    )


# =========================================================================== the API

FIELDS = ("support_x", "support_y", "query_x", "query_y")
SHAPE_EDITS = ("drop_dim", "extra_dim", "fewer_tasks", "fewer_examples", "more_features", "scalar", "no_examples")
DTYPE_EDITS = ("int64", "float64", "float16", "bool", "complex64")
VALUE_EDITS = ("nan", "inf", "-inf")
TYPE_EDITS = ("list", "numpy", "none", "str")


def _api_cases(n: int) -> list[tuple]:
    rng = random.Random(SEED)
    cases = []
    while len(cases) < n:
        target = rng.choice(("fit", "predict"))
        field = rng.choice(FIELDS)
        kind = rng.choice(("shape", "dtype", "value", "type"))
        edit = rng.choice({"shape": SHAPE_EDITS, "dtype": DTYPE_EDITS, "value": VALUE_EDITS, "type": TYPE_EDITS}[kind])
        if target == "predict" and field == "query_y" and (kind in ("dtype", "value") or edit == "none"):
            continue  # prediction reads only the query targets' shape: unknown (or no) targets are allowed
        if field in ("query_x", "query_y") and edit == "no_examples":
            continue  # an empty query set is allowed
        if edit == "fewer_examples" and field in ("support_x", "query_x"):
            continue  # fewer x than y: the same as more y, covered by the y fields
        case = (target, field, edit, rng.randrange(10_000))
        if case[:3] not in [c[:3] for c in cases]:
            cases.append(case)
    return cases


def _tiny_meta() -> hvi.MetaModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    return hvi.MetaModel(net, GaussianPrior(init_scale=0.1), hvi.Gaussian(init_scale=0.5), inner=hvi.InnerConfig(steps=1))


def _good_batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "support_x": torch.rand(3, 4, 1, generator=g),
        "support_y": torch.rand(3, 4, 1, generator=g),
        "query_x": torch.rand(3, 2, 1, generator=g),
        "query_y": torch.rand(3, 2, 1, generator=g),
    }


def _edit(t: torch.Tensor, edit: str, seed: int):
    rng = random.Random(seed)
    if edit == "drop_dim":
        return t[..., 0]
    if edit == "extra_dim":
        return t.unsqueeze(-1).expand(*t.shape, rng.randint(2, 3))
    if edit == "fewer_tasks":
        return t[: rng.randint(0, t.shape[0] - 1)]
    if edit == "fewer_examples":
        return t[:, : rng.randint(1, t.shape[1] - 1)] if t.shape[1] > 1 else t[:, :0]
    if edit == "more_features":
        return torch.cat([t] * rng.randint(2, 3), dim=-1)
    if edit == "scalar":
        return t.flatten()[0]
    if edit == "no_examples":
        return t[:, :0]
    if edit in DTYPE_EDITS:
        if edit == "int64":
            return (t * 10).long()
        return t.to(getattr(torch, edit))
    if edit in VALUE_EDITS:
        out = t.clone()
        flat = out.view(-1)
        flat[rng.randrange(flat.numel())] = float(edit)
        return out
    if edit == "list":
        return t.tolist()
    if edit == "numpy":
        return t.numpy()
    if edit == "none":
        return None
    if edit == "str":
        return "tensor"
    raise AssertionError(edit)


API_CASES = _api_cases(60)


@pytest.mark.parametrize("target, field, edit, seed", API_CASES, ids=["-".join(map(str, c)) for c in API_CASES])
def test_api_bad_task_batch(target, field, edit, seed):
    fields = _good_batch(seed)
    fields[field] = _edit(fields[field], edit, seed)
    meta = _tiny_meta()
    with pytest.raises((ValueError, TypeError)) as e:
        batch = hvi.TaskBatch(**fields)
        if target == "fit":
            hvi.fit(meta, batch, steps=1, seed=0)
        else:
            hvi.predict(meta, batch, num_samples=2)
    one_line_error(e)


BATCH_FIELD_CASES = [
    ("task_index", torch.tensor([0.0, 1.0, 2.0])),
    ("task_index", torch.tensor([0, 1, 7])),
    ("task_index", torch.tensor([-1, 0, 1])),
    ("task_index", torch.tensor([0, 1])),
    ("task_index", [0, 1, 2]),
    ("num_tasks", 2),
    ("num_tasks", -1),
    ("num_tasks", "3"),
    ("num_tasks", 3.5),
    ("support_noise", torch.full((3, 4, 1), -1.0)),
    ("support_noise", torch.full((3, 4, 2), 1.0)),
    ("support_noise", torch.full((3, 4, 1), float("nan"))),
    ("support_mask", torch.ones(3, 4, 1)),
    ("support_mask", torch.ones(3, 4, dtype=torch.bool)),
    ("query_mask", torch.ones(3, 3, 1, dtype=torch.bool)),
]


@pytest.mark.parametrize("target", ["fit", "predict"])
@pytest.mark.parametrize("field, value", BATCH_FIELD_CASES, ids=[f"{f}{i}" for i, (f, _) in enumerate(BATCH_FIELD_CASES)])
def test_api_bad_batch_fields(target, field, value):
    meta = _tiny_meta()
    with pytest.raises((ValueError, TypeError)) as e:
        batch = hvi.TaskBatch(**_good_batch(0), **{field: value})
        if target == "fit":
            hvi.fit(meta, batch, steps=1, seed=0)
        else:
            hvi.predict(meta, batch, num_samples=2)
    one_line_error(e)


def test_api_labels_for_a_regression_model_and_floats_for_a_classifier():
    meta = _tiny_meta()
    b = _good_batch(0)
    with pytest.raises(ValueError) as e:
        hvi.fit(meta, hvi.TaskBatch(b["support_x"], b["support_y"].long(), b["query_x"], b["query_y"]), steps=1)
    one_line_error(e)
    torch.manual_seed(0)
    clf = hvi.MetaModel(nn.Linear(1, 3), GaussianPrior(init_scale=0.1), "categorical", inner=hvi.InnerConfig(steps=1))
    with pytest.raises(ValueError) as e:
        hvi.fit(clf, hvi.TaskBatch(**b), steps=1)
    one_line_error(e)
    with pytest.raises(ValueError) as e:  # a label beyond the network's classes
        y = torch.full((3, 4), 5)
        hvi.fit(clf, hvi.TaskBatch(b["support_x"], y, b["query_x"], y[:, :2]), steps=1)
    one_line_error(e)


FIT_ARG_CASES = [
    {"steps": -1}, {"steps": 1.5}, {"steps": "3"}, {"task_batch": 0}, {"task_batch": 4}, {"task_batch": "2"},
    {"lr": -1.0}, {"lr": float("nan")}, {"clip_norm": 0.0}, {"num_particles": 0}, {"elbo": "nope"},
    {"max_skips": 0}, {"device": "gpu"}, {"seed": -5}, {"seed": "x"},
]


@pytest.mark.parametrize("kwargs", FIT_ARG_CASES, ids=[str(k) for k in FIT_ARG_CASES])
def test_api_bad_fit_arguments(kwargs):
    meta = _tiny_meta()
    args = {"steps": 1, **kwargs}
    with pytest.raises((ValueError, TypeError)) as e:
        hvi.fit(meta, hvi.TaskBatch(**_good_batch(0)), **args)
    one_line_error(e)


META_CASES = [
    ("prior", "nope"), ("prior", 3), ("likelihood", "nope"), ("likelihood", None), ("q_theta", "gamma"),
    ("q_theta", "normal"), ("objective", "support"), ("q_theta_init_scale", 0.0),
    ("q_theta_init_scale", float("nan")), ("net", "mlp"), ("net", None),
]
INNER_CASES = [
    {"steps": -1}, {"steps": 1.5}, {"update": "newton"}, {"lr": -0.1}, {"lr": float("nan")}, {"lr": 0.0},
    {"num_samples": 0}, {"kl_weight": 0.0}, {"kl_weight": float("inf")}, {"lr": {"loc": -1.0}},
]


@pytest.mark.parametrize("arg, value", META_CASES, ids=[f"{a}={v!r}" for a, v in META_CASES])
def test_api_bad_meta_model(arg, value):
    torch.manual_seed(0)
    kwargs = {"net": nn.Linear(1, 1), "prior": "gaussian", "likelihood": "gaussian", arg: value}
    with pytest.raises((ValueError, TypeError)) as e:
        hvi.MetaModel(kwargs.pop("net"), **kwargs)
    one_line_error(e)


@pytest.mark.parametrize("kwargs", INNER_CASES, ids=[str(k) for k in INNER_CASES])
def test_api_bad_inner_config(kwargs):
    torch.manual_seed(0)
    with pytest.raises((ValueError, TypeError)) as e:
        hvi.MetaModel(nn.Linear(1, 1), inner=hvi.InnerConfig(**kwargs))
    one_line_error(e)


# =========================================================================== the CLI: hvi fit options

BAD_INT = ["abc", "1.5", "", "1e3", "0x10", "--", "½"]
BAD_FLOAT = ["abc", "nan", "inf", "-inf", "", "1e400", "0,1", "-1", "0"]
FIT_OPTIONS = {
    "--steps": [*BAD_INT, "0", "-3"],
    "--task-batch": [*BAD_INT, "0", "-1", "100000"],
    "--inner-steps": [*BAD_INT, "-1"],
    "--seed": [*BAD_INT, "-1", str(2**64), str(10**30)],
    "--threads": [*BAD_INT, "0", "-2", str(2**40)],
    "--val-every": [*BAD_INT, "0", "-5"],
    "--checkpoint-every": [*BAD_INT, "0", "-5"],
    "--keep-checkpoints": [*BAD_INT, "0", "-1"],
    "--inner-lr": [*BAD_FLOAT, "1.5"],
    "--kl-weight": BAD_FLOAT,
    "--lr": BAD_FLOAT,
    "--inner-update": ["newton", "", "NATURAL", "1"],
    "--q-theta": ["gamma", "", "Delta"],
    "--model": ["nope", "", "MLP", "../mlp", "mlp "],
    "--data": ["nope", "", "/nonexistent/tasks.nc", "tasks.zarr", "file", "solar:x"],
    "--prior": ["nope", "", "Gaussian", "gaussian "],
    "--device": ["gpu", "cuda:-1", "mps", "", "cpu:0", "0", "cuda:99999999999999999999"],
    "--config": ["/nonexistent/run.toml", ".", ""],
    "--data-arg": ["k_shot", "=5", "nope=1", "x y"],
    "--model-arg": ["hidden=x", "hidden=[0]", "nope=1", "hidden=[-4]", "hidden=", "activation=nope"],
    "--prior-arg": ["init_scale=-1", "init_scale=nan", "nope=1", "init_scale=[1]", "init_scale=0"],
    "--likelihood-arg": ["init_scale=0", "noise=abc", "nope=1", "init_scale=-2", "noise=-1"],
}


#: --out values that cannot become a run directory (the file "afile" exists in the working directory).
BAD_OUT = ["", ".", "afile", "afile/run", "/proc/hvi-run", "runs/"]


@pytest.mark.parametrize("out", BAD_OUT)
def test_cli_fit_bad_out(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "runs").mkdir()
    before = tree(tmp_path)
    cli_error(["fit", *TINY, "--out", out])
    assert tree(tmp_path) == before


def _fit_option_cases(per_option: int = 4) -> list[tuple[str, str]]:
    rng = random.Random(SEED + 1)
    cases = []
    for opt, values in FIT_OPTIONS.items():
        for v in rng.sample(values, min(per_option, len(values))):
            cases.append((opt, v))
    return cases


FIT_OPTION_CASES = _fit_option_cases()


@pytest.mark.parametrize("opt, value", FIT_OPTION_CASES, ids=[f"{o}={v!r}" for o, v in FIT_OPTION_CASES])
def test_cli_fit_wrong_option_values(tmp_path, monkeypatch, opt, value):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    before = tree(tmp_path)
    cli_error(["fit", *TINY, opt, value, "--out", runs / "r"])
    assert tree(tmp_path) == before


# =========================================================================== the CLI: TOML keys of hvi fit

_TOML_BAD = {
    "int": ['"3"', "1.5", "true", "[1]", "{ a = 1 }", "-1", "nan"],
    "float": ['"x"', "true", "nan", "inf", "-inf", "[0.1]", "{ a = 1.0 }", "-1.0", "0.0"],
    "bool": ["1", '"yes"', "0.0", "[true]", "{ a = true }"],
    "str": ["3", "true", '["x"]', "{ a = 1 }", '"nope"', '""', "1.5"],
    "table": ["3", '"x"', "[1]", "true", "1.5"],
}
#: Values that are valid for a string key (so "nope" for device, say, is not generated for a free-form one).
_FREE_STRINGS = {"data"}


def _toml_cases(per_key: int = 3) -> list[tuple[str, str]]:
    rng = random.Random(SEED + 2)
    cases = []
    for key, (kind, _nullable) in KEYS.items():
        values = list(_TOML_BAD[kind])
        if key in _FREE_STRINGS:
            values = [v for v in values if v not in ('"nope"',)]
        if kind == "int" and key in ("inner_steps", "seed"):
            values = [v for v in values if v != "-1"] + ["-2"]
        for v in rng.sample(values, min(per_key, len(values))):
            cases.append((key, v))
    cases += [
        ("stepz", "3"),
        ("out", '"runs/x"'),
        ("resume", "true"),
        ("model_args", "{ hidden = [0] }"),
        ("model_args", "{ nope = 1 }"),
        ("data_args", "{ nope = 1 }"),
        ("prior_args", "{ init_scale = -1.0 }"),
        ("likelihood_args", '{ noise = "x" }'),
    ]
    return cases


TOML_CASES = _toml_cases()


@pytest.mark.parametrize("key, value", TOML_CASES, ids=[f"{k}={v}" for k, v in TOML_CASES])
def test_cli_fit_wrong_toml_values(tmp_path, key, value):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"{key} = {value}\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    before = tree(tmp_path)
    cli_error(["fit", *TINY, "--config", cfg, "--out", runs / "r"])
    assert tree(tmp_path) == before


def _random_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


BROKEN_TOML = [
    b"steps = ",
    b"[model_args\nhidden = [1]",
    b"steps = 3\nsteps = 4\n",
    b"\xff\xfe\x00steps = 3",
    b"model = 'mlp'\n[model_args]\nhidden = [1,\n",
    *[_random_bytes(SEED + i, 40 + 13 * i) for i in range(5)],
]


@pytest.mark.parametrize("text", BROKEN_TOML, ids=[f"toml{i}" for i in range(len(BROKEN_TOML))])
def test_cli_fit_broken_toml_files(tmp_path, text):
    cfg = tmp_path / "run.toml"
    cfg.write_bytes(text)
    runs = tmp_path / "runs"
    runs.mkdir()
    cli_error(["fit", *TINY, "--config", cfg, "--out", runs / "r"])
    assert list(runs.iterdir()) == []


# =========================================================================== one tiny run to break


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny finished run, with two kept checkpoints (copied before it is broken)."""
    pyro.clear_param_store()
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("fuzz") / "sine"
    res = CliRunner().invoke(
        cli, ["fit", *TINY, "--steps", "4", "--checkpoint-every", "1", "--out", str(out)], catch_exceptions=False
    )
    torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    return run


def _damage(path: Path, how: str, seed: int) -> None:
    """Breaks one file: truncated at a random point, random bytes, emptied, removed, or bytes flipped."""
    rng = random.Random(seed)
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))])
    elif how == "random":
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "remove":
        path.unlink()
    elif how == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(b))
    else:
        raise AssertionError(how)


CKPT_FILES = (META_FILE, "tensors")
CKPT_DAMAGE = ("truncate", "random", "empty", "remove", "flip")


def _ckpt_cases(n: int) -> list[tuple[str, str, int]]:
    rng = random.Random(SEED + 3)
    cases = [(f, d, rng.randrange(10_000)) for f in CKPT_FILES for d in CKPT_DAMAGE]
    while len(cases) < n:
        cases.append((rng.choice(CKPT_FILES), rng.choice(("truncate", "random", "flip")), rng.randrange(10_000)))
    return cases


CKPT_CASES = _ckpt_cases(16)


def _break_checkpoint_dir(d: Path, file: str, how: str, seed: int) -> None:
    """Damages ``file`` of every checkpoint kept in ``d`` (so no fallback is left)."""
    if file == "tensors":
        targets = sorted(d.glob("tensors-*.safetensors"))
    else:
        targets = metadata_files(d)  # checkpoint.json and the kept history
    for i, t in enumerate(targets):
        if how == "flip" and file == META_FILE:
            # a flipped byte may land in a value that is still valid JSON: rewrite a field instead
            meta = json.loads(t.read_text())
            key = random.Random(seed + i).choice(["step", "params", "tensors", "format"])
            meta[key] = "x"
            t.write_text(json.dumps(meta))
        else:
            _damage(t, how, seed + i)


@pytest.mark.parametrize("file, how, seed", CKPT_CASES, ids=[f"{f}-{h}-{s}" for f, h, s in CKPT_CASES])
def test_api_load_a_broken_checkpoint(run_dir, tmp_path, file, how, seed):
    from hvi.checkpoint import load_checkpoint

    run = _copy(run_dir, tmp_path)
    _break_checkpoint_dir(run / "checkpoint", file, how, seed)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load_checkpoint(run / CHECKPOINT_DIR)
    one_line_error(e)


@pytest.mark.parametrize("file, how, seed", CKPT_CASES, ids=[f"{f}-{h}-{s}" for f, h, s in CKPT_CASES])
def test_cli_evaluate_and_resume_a_broken_checkpoint(run_dir, tmp_path, file, how, seed):
    run = _copy(run_dir, tmp_path)
    _break_checkpoint_dir(run / "model", file, how, seed)
    before = tree(tmp_path)
    cli_error(["evaluate", run, "--max-tasks", "2", "--num-samples", "2", "--no-progress"])
    assert tree(tmp_path) == before
    _break_checkpoint_dir(run / "checkpoint", file, how, seed)
    before = tree(tmp_path)
    cli_error(["fit", "--out", run, "--resume", "--steps", "6", "--no-progress"])
    assert tree(tmp_path) == before


# =========================================================================== netCDF files


def _task_file(path: Path, edit: str | None = None, seed: int = 0) -> Path:
    """A small task file (12 tasks of 6 samples, k_shot 3), optionally broken by ``edit``."""
    import xarray as xr

    g = np.random.default_rng(seed)
    x = g.uniform(-3, 3, size=(12, 6, 1)).astype("float32")
    y = np.sin(x).astype("float32")
    ds = xr.Dataset({"x": (("task", "sample", "feature"), x), "y": (("task", "sample", "feature"), y)})
    if edit == "no_y":
        ds = ds.drop_vars("y")
    elif edit == "no_x":
        ds = ds.drop_vars("x")
    elif edit == "y_nan":
        ds["y"][g.integers(12), g.integers(6), 0] = np.nan
    elif edit == "x_inf":
        ds["x"][g.integers(12), g.integers(6), 0] = np.inf
    elif edit == "y_strings":
        ds["y"] = (("task", "sample"), np.full((12, 6), "a", dtype=object))
    elif edit == "x_1d":
        ds = ds.assign(x=("task", x[:, 0, 0]))
    elif edit == "no_task_dim":
        ds = ds.rename({"task": "site"})
    elif edit == "role_bad":
        ds["role"] = (("task", "sample"), np.full((12, 6), "maybe", dtype=object))
    elif edit == "split_bad":
        ds["split"] = (("task",), np.array(["train"] * 11 + ["later"], dtype=object))
    elif edit == "split_no_test":
        ds["split"] = (("task",), np.array(["train"] * 12, dtype=object))
    elif edit == "labels_negative":
        ds["y"] = (("task", "sample"), -np.ones((12, 6), dtype="int64"))
    elif edit == "noise_negative":
        ds["noise"] = (("task", "sample", "feature"), -np.ones_like(y))
    elif edit == "one_sample":
        ds = ds.isel(sample=slice(0, 1))
    elif edit is not None:
        raise AssertionError(edit)
    ds.to_netcdf(path, engine="h5netcdf")
    return path


NC_CONTENT = (
    "no_y", "no_x", "y_nan", "x_inf", "y_strings", "x_1d", "no_task_dim", "role_bad", "split_bad", "split_no_test",
    "labels_negative", "noise_negative", "one_sample",
)
NC_BYTES = ("truncate", "random", "empty", "flip_header", "netcdf3_junk", "hdf5_junk")


def _break_bytes(path: Path, how: str, seed: int) -> None:
    rng = random.Random(seed)
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: rng.randrange(8, len(data) - 1)])
    elif how == "random":
        path.write_bytes(rng.randbytes(rng.randint(1, 8192)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip_header":
        b = bytearray(data)
        for i in rng.sample(range(8, 512), 16):
            b[i] ^= 0xFF
        path.write_bytes(bytes(b))
    elif how == "netcdf3_junk":
        path.write_bytes(b"CDF\x01" + rng.randbytes(200))
    elif how == "hdf5_junk":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + rng.randbytes(300))
    else:
        raise AssertionError(how)


def _nc_cases() -> list[tuple[str, str, int]]:
    rng = random.Random(SEED + 4)
    cases = [("content", e, 0) for e in NC_CONTENT]
    cases += [("bytes", b, rng.randrange(10_000)) for b in NC_BYTES for _ in range(2)]
    return cases


NC_CASES = _nc_cases()
#: Parts of a task file that hvi predict does not read (role, split: every support sample is support;
#: one sample per task is a valid support or query set).
NOT_READ_BY_PREDICT = ("role_bad", "split_bad", "split_no_test", "one_sample")
#: A query file's y (and its noise) are optional and not used.
QUERY_Y_EDITS = ("no_y", "y_nan", "noise_negative", "labels_negative")


def _bad_nc(tmp_path: Path, kind: str, edit: str, seed: int) -> Path:
    path = tmp_path / "data" / "tasks.nc"
    path.parent.mkdir()
    if kind == "content":
        return _task_file(path, edit, seed)
    _task_file(path, None, seed)
    _break_bytes(path, edit, seed)
    return path


@pytest.mark.parametrize("kind, edit, seed", NC_CASES, ids=[f"{k}-{e}-{s}" for k, e, s in NC_CASES])
def test_cli_fit_on_a_broken_netcdf_file(tmp_path, kind, edit, seed):
    data = _bad_nc(tmp_path, kind, edit, seed)
    runs = tmp_path / "runs"
    runs.mkdir()
    before = tree(tmp_path)
    cli_error(["fit", *TINY, "--data", data, "--data-arg", "k_shot=3", "--out", runs / "r"])
    assert tree(tmp_path) == before


@pytest.mark.parametrize("which", ["support", "query"])
@pytest.mark.parametrize("kind, edit, seed", NC_CASES, ids=[f"{k}-{e}-{s}" for k, e, s in NC_CASES])
def test_cli_predict_from_a_broken_netcdf_file(run_dir, tmp_path, kind, edit, seed, which):
    if kind == "content" and (edit in NOT_READ_BY_PREDICT or (which == "query" and edit in QUERY_Y_EDITS)):
        pytest.skip("hvi predict does not read this part of the file (valid input)")
    bad = _bad_nc(tmp_path, kind, edit, seed)
    good = _task_file(tmp_path / "good.nc")
    files = {"support": good, "query": good, which: bad}
    out = tmp_path / "pred.nc"
    before = tree(tmp_path)
    cli_error(["predict", run_dir, "--support", files["support"], "--query", files["query"], "--out", out,
               "--num-samples", "2"])
    assert tree(tmp_path) == before


# =========================================================================== edited config.json

_WRONG_KIND = {
    "int": ["x", 1.5, True, [], {}, None],
    "float": ["x", True, [], {}, None],
    "bool": ["x", 1, 0.0, [], None],
    "str": [3, True, [], {}, None],
    "table": [3, "x", [1], True, None],
}


def _config_edits(n: int) -> list[tuple[str, str, str]]:
    """(description, kind of edit, argument) of invalid edits of config.json."""
    from hvi.settings import MUTABLE_ON_RESUME

    rng = random.Random(SEED + 5)
    from hvi.run_dir import BEFORE_THE_KEY  # keys older runs lack: a missing one gets its old value

    required = [k for k in KEYS if k not in MUTABLE_ON_RESUME and k not in BEFORE_THE_KEY]
    cases = []
    for key in rng.sample(required, 8):
        cases.append(("delete", key, ""))
    keys = list(KEYS)
    while len(cases) < n - 10:
        key = rng.choice(keys)
        kind, nullable = KEYS[key]
        value = rng.choice([v for v in _WRONG_KIND[kind] if not (v is None and nullable)])
        case = ("set", key, json.dumps(value))
        if case not in cases:
            cases.append(case)
    cases += [
        ("set", "model", '"nope"'), ("set", "prior", '"nope"'), ("set", "data", '"/nonexistent/tasks.nc"'),
        ("set", "model_args", '{"hidden": [0]}'), ("set", "inner_lr", "-1.0"),
    ]
    cases += [("text", "truncate", str(rng.randrange(10_000))) for _ in range(2)]
    cases += [("text", "random", str(rng.randrange(10_000))), ("text", "array", ""), ("text", "empty", "")]
    return cases


CONFIG_CASES = _config_edits(40)


def _edit_config(run: Path, how: str, key: str, arg: str) -> None:
    path = run / CONFIG_FILE
    if how == "text":
        if key == "truncate":
            text = path.read_text()
            path.write_text(text[: random.Random(int(arg)).randrange(1, len(text) - 1)])
        elif key == "random":
            path.write_bytes(random.Random(int(arg)).randbytes(300))
        elif key == "array":
            path.write_text("[1, 2, 3]")
        else:
            path.write_text("")
        return
    cfg = json.loads(path.read_text())
    if how == "delete":
        cfg.pop(key)
    else:
        cfg[key] = json.loads(arg)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume"])
@pytest.mark.parametrize("how, key, arg", CONFIG_CASES, ids=[f"{h}-{k}-{a}" for h, k, a in CONFIG_CASES])
def test_cli_an_edited_config_json(run_dir, tmp_path, command, how, key, arg):
    if command == "predict" and key == "data":
        pytest.skip("hvi predict does not read the run's data")
    run = _copy(run_dir, tmp_path)
    _edit_config(run, how, key, arg)
    before = tree(tmp_path)
    if command == "evaluate":
        cli_error(["evaluate", run, "--max-tasks", "2", "--num-samples", "2", "--no-progress"])
    elif command == "predict":
        good = _task_file(tmp_path / "good.nc")
        before = tree(tmp_path)
        cli_error(["predict", run, "--support", good, "--query", good, "--out", tmp_path / "p.nc"])
    else:
        cli_error(["fit", "--out", run, "--resume", "--steps", "6", "--no-progress"])
    assert tree(tmp_path) == before


# =========================================================================== hvi evaluate / predict options

EVALUATE_OPTIONS = {
    "--num-samples": ["0", "-1", "x", "1.5", ""],
    "--max-tasks": ["1", "0", "-3", "x", ""],
    "--inner-steps": ["-1", "x", "2.5"],
    "--split": ["dev", "", "TEST"],
    "--seed": ["x", "-1", str(2**64)],
    "--device": ["gpu", "cuda:x", ""],
    "--data": ["nope", "/nonexistent.nc", "solar"],
}
PREDICT_OPTIONS = {
    "--num-samples": ["0", "x"],
    "--inner-steps": ["-2", "x"],
    "--samples": ["0", "-1", "x"],
    "--quantiles": ["0", "1", "x", "0.5,,0.9", "1.5", "nan"],
    "--seed": ["x", "-1", str(2**64)],
    "--out": ["nodir/p.nc", "", "."],
    "--support": ["/nonexistent.nc", "", "."],
    "--query": ["/nonexistent.nc", ""],
}


def _option_cases(options: dict, seed: int, per_option: int = 3) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(o, v) for o, values in options.items() for v in rng.sample(values, min(per_option, len(values)))]


EVALUATE_CASES = _option_cases(EVALUATE_OPTIONS, SEED + 6)
PREDICT_CASES = _option_cases(PREDICT_OPTIONS, SEED + 7)


@pytest.mark.parametrize("opt, value", EVALUATE_CASES, ids=[f"{o}={v!r}" for o, v in EVALUATE_CASES])
def test_cli_evaluate_wrong_option_values(run_dir, tmp_path, opt, value):
    run = _copy(run_dir, tmp_path)
    before = tree(tmp_path)
    cli_error(["evaluate", run, "--max-tasks", "2", "--num-samples", "2", "--no-progress", opt, value])
    assert tree(tmp_path) == before


@pytest.mark.parametrize("opt, value", PREDICT_CASES, ids=[f"{o}={v!r}" for o, v in PREDICT_CASES])
def test_cli_predict_wrong_option_values(run_dir, tmp_path, monkeypatch, opt, value):
    monkeypatch.chdir(tmp_path)
    good = _task_file(tmp_path / "good.nc")
    args = {"--support": str(good), "--query": str(good), "--out": str(tmp_path / "p.nc"), "--num-samples": "2",
            opt: value}
    before = tree(tmp_path)
    cli_error(["predict", run_dir, *[x for kv in args.items() for x in kv]])
    assert tree(tmp_path) == before
