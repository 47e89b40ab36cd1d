"""hvi models / sources with defaults and arguments, fit --help values, --print-config, --*-arg."""

from __future__ import annotations

import cli_checks
import pytest

from cli_checks import assert_error
from hvi.run_dir import CONFIG_FILE


@pytest.fixture(autouse=True)
def _fresh_store(fresh_store):
    """Every test here starts from an empty param store (tests/conftest.py)."""


def invoke(runner, args):
    return cli_checks.invoke(args, runner)


# --------------------------------------------------------------------------- listings


def test_models_show_fit_defaults_and_builder_arguments(runner):
    res = invoke(runner, ["models"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())  # undo the wrapping
    mlp = text[text.index("mlp Sinusoid"):text.index("siren SIREN")]
    assert 'fit defaults: data="sinusoid" model_args={"hidden":[40,40]} prior_args={"init_scale":0.03}' in mlp
    assert "inner_steps=5 learn_lr=true steps=5000 task_batch=8 lr=0.003 eval_tasks=200" in mlp
    assert 'on sinusoid: likelihood_args={"noise":0.1}' in mlp  # hvi.defaults.DATA_DEFAULTS
    assert 'model_args: in_features=1 out_features=1 hidden=[40,40] activation="relu"' in mlp
    assert 'model_args: in_channels=3 out_channels=1 base=16 depth=3 upsample="bilinear"' in text  # bayes_unet's builder
    assert max(map(len, res.output.splitlines())) <= 100


def test_brief_listings_are_one_line_each(runner):
    models = invoke(runner, ["models", "--brief"]).output.splitlines()
    assert [line.split()[0] for line in models] == ["bayes_unet", "conv4", "mlp", "siren"]
    assert models[2].endswith("[default data: sinusoid]")
    sources = invoke(runner, ["sources", "--brief"]).output.splitlines()
    assert {line.split()[0] for line in sources} >= {"sinusoid", "clouds", "solar", "file"}
    assert not any(line.startswith(" ") for line in sources)


def test_sources_show_constructor_arguments_and_mark_required_ones(runner):
    res = invoke(runner, ["sources"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "data_args: path (required) k_shot=null split_fractions=[0.8,0.1,0.1] seed=0" in text
    assert "data_args: k_shot=10 k_query=10 num_tasks=[20000,1000,1000] seed=0" in text  # sinusoid


def test_fit_help_shows_default_values(runner):
    text = " ".join(invoke(runner, ["fit", "--help"]).output.split())
    assert "Total SVI steps (default 1000; mlp 5000, siren 300, conv4 500, bayes_unet 600)." in text
    assert "Tasks per step (default 8; siren 4, conv4 4, bayes_unet 4)." in text  # mlp keeps the common 8
    assert '(default "natural").' in text  # every zoo row takes the natural step
    assert "docs/inner_loop.md) (default false; conv4 true)." in text  # --inner-line-search
    assert '(mlp "sinusoid", siren "faces", conv4 "glyphs", bayes_unet "solar")' in text
    assert "'hvi models' lists each one's defaults row" in text


# --------------------------------------------------------------------------- the TOML writer


def test_dump_toml_reads_back_every_value_type():
    import math
    import tomllib

    from hvi.cli.config import dump_toml

    cfg = {
        "model": "mlp",
        "unset": None,
        "small": 1e-05,
        "whole": 3.0,
        "big": 1e300,
        "n": -7,
        "flag": False,
        "text": 'a"b\\c\n\t\x7f\x01é ✓',
        "list": [1, 2.5, "x", [True, False], []],
        "rows": [{"a": 1, "b": None, "c": [1]}],
        "table": {"a": 1, "gone": None, "w x": 2, "sub": {"z": "q", "deeper": {}}},
        "empty": {},
        "weird key.": 1,
    }
    text = dump_toml(cfg, header="two\nlines")
    assert text.startswith("# two\n# lines\nmodel = \"mlp\"\n")
    assert "unset" not in text and "gone" not in text
    back = tomllib.loads(text)
    want = {k: v for k, v in cfg.items() if k != "unset"}
    want["rows"] = [{"a": 1, "c": [1]}]
    want["table"] = {"a": 1, "w x": 2, "sub": {"z": "q", "deeper": {}}}
    assert back == want
    special = tomllib.loads(dump_toml({"a": math.inf, "b": -math.inf, "c": math.nan}))
    assert special["a"] == math.inf and special["b"] == -math.inf and math.isnan(special["c"])


def test_dump_toml_refuses_what_toml_cannot_hold():
    from hvi.cli.config import dump_toml

    with pytest.raises(ValueError, match=r"TOML cannot hold None \(NoneType\)"):
        dump_toml({"a": [1, None]})
    with pytest.raises(ValueError, match=r"TOML cannot hold b'x' \(bytes\)"):
        dump_toml({"a": b"x"})


# --------------------------------------------------------------------------- --print-config


def test_print_config_reads_back_to_the_same_configuration(runner, tmp_path):
    from hvi.cli.config import load_toml
    from hvi.cli.run import resolved_config

    toml = tmp_path / "in.toml"
    toml.write_text('steps = 40\nlr = 0.01\n[model_args]\nactivation = "tanh"\n[prior_args]\ninit_scale = 0.2\n')
    args = ["--model", "mlp", "--config", str(toml), "--steps", "60", "--kl-weight", "0.5",
            "--model-arg", "hidden=[16,8]", "--data-arg", "k_shot=4", "--out", str(tmp_path / "run")]
    res = invoke(runner, ["fit", *args, "--print-config"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "run").exists() and list(tmp_path.glob("run.tmp-*")) == []  # nothing trained
    text = res.stdout
    assert text.startswith("# hvi fit configuration: defaults < the model's row < --config < options.\n")
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body[:3] == ['model = "mlp"', 'data = "sinusoid"', 'prior = "gaussian"']
    for line in ("steps = 60", "lr = 0.01", "kl_weight = 0.5", "inner_steps = 5", "val_every = 6",
                 "checkpoint_every = 6", "eval_tasks = 200"):
        assert line in body, line
    assert "likelihood = " not in text and "clip_norm" not in text  # unset: left out
    tables = text[text.index("[model_args]"):]
    assert tables == (
        "[model_args]\nhidden = [16, 8]\nactivation = \"tanh\"\n\n[data_args]\nk_shot = 4\n\n"
        "[prior_args]\ninit_scale = 0.2\n\n[likelihood_args]\nnoise = 0.1\n"
    )
    printed = tmp_path / "printed.toml"
    printed.write_text(text)
    again = invoke(runner, ["fit", "--config", str(printed), "--print-config"])
    assert again.exit_code == 0 and again.stdout == text
    opts = {"model": "mlp", "steps": 60, "kl_weight": 0.5, "model_args": {"hidden": [16, 8]},
            "data_args": {"k_shot": 4}}
    first = resolved_config(opts, config_path=str(toml))
    assert resolved_config({}, config_path=str(printed)) == first
    assert load_toml(printed)["model_args"] == {"hidden": [16, 8], "activation": "tanh"}


def test_print_config_of_a_file_source_and_of_a_resumed_run(runner, tmp_path):
    from tests.test_cli import TINY, tasks_file

    data = tasks_file(tmp_path / "tasks.nc")
    res = invoke(runner, ["fit", "--model", "mlp", "--data", str(data), "--data-arg", "k_shot=3", "--print-config"])
    assert res.exit_code == 0, res.output
    assert f'data = "{data.resolve()}"' in res.stdout and "[data_args]\nk_shot = 3\n" in res.stdout
    out = tmp_path / "run"
    assert invoke(runner, ["fit", *TINY, "--out", str(out)]).exit_code == 0
    res = invoke(runner, ["fit", "--out", str(out), "--resume", "--steps", "9", "--print-config"])
    assert res.exit_code == 0, res.output
    assert "steps = 9" in res.stdout and "inner_steps = 1" in res.stdout and 'likelihood = "gaussian"' in res.stdout
    assert "in_features = 1" in res.stdout  # the saved run's completed model_args


# --------------------------------------------------------------------------- --data-arg and friends


def test_key_value_options_parse_json_or_strings_and_merge_over_the_toml_tables(runner, tmp_path):
    toml = tmp_path / "in.toml"
    toml.write_text("[data_args]\nk_shot = 2\nk_query = 7\n")
    res = invoke(runner, [
        "fit", "--model", "mlp", "--config", str(toml), "--data-arg", "k_shot=5", "--data-arg", "num_tasks=[40,8,8]",
        "--model-arg", "activation=tanh", "--model-arg", 'hidden=[4]', "--prior-arg", "init_scale=0.05",
        "--likelihood-arg", "init_scale=1", "--likelihood-arg", "noise=learned", "--print-config",
    ])
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "[data_args]\nk_shot = 5\nk_query = 7\nnum_tasks = [40, 8, 8]\n" in text
    assert '[model_args]\nhidden = [4]\nactivation = "tanh"\n' in text
    assert "[prior_args]\ninit_scale = 0.05\n" in text and "[likelihood_args]\nnoise = \"learned\"\ninit_scale = 1\n" in text


def test_key_value_parser():
    import click

    from hvi.cli.main import _key_values, fit_cmd

    param = next(p for p in fit_cmd.params if p.name == "data_args")
    ctx = click.Context(fit_cmd)
    got = _key_values(ctx, param, ("a=5", "b=0.5", "c=true", "d=null", "e=[1,2]", 'f="5"', "g=text", "h=NaN",
                                   "i=", "j=x=y", " k =1"))
    assert got == {"a": 5, "b": 0.5, "c": True, "d": None, "e": [1, 2], "f": "5", "g": "text", "h": "NaN",
                   "i": "", "j": "x=y", "k": 1}
    assert _key_values(ctx, param, ()) is None


@pytest.mark.parametrize(
    "args, line",
    [
        (["--data-arg", "k_shot"],
         "Error: Invalid value for '--data-arg': 'k_shot' is not KEY=VALUE, e.g. --data-arg k_shot=5. "
         "(see 'hvi fit --help')"),
        (["--model-arg", "=3"],
         "Error: Invalid value for '--model-arg': '=3' is not KEY=VALUE, e.g. --model-arg k_shot=5. "
         "(see 'hvi fit --help')"),
        (["--data-arg", "k_sht=3"],
         "Error: unknown data_args key 'k_sht' for data source 'sinusoid' (from --data-arg or [data_args] of "
         "--config); accepted keys: k_shot, k_query, num_tasks, seed (see 'hvi sources')."),
        (["--model-arg", "width=3"],
         "Error: unknown model_args key 'width' for model 'mlp' (from --model-arg or [model_args] of --config); "
         "accepted keys: in_features, out_features, hidden, activation (see 'hvi models')."),
        (["--prior-arg", "foo=1"],
         "Error: unknown prior_args key 'foo' for prior 'gaussian' (from --prior-arg or [prior_args] of "
         "--config); accepted keys: init_scale, hyperprior, loc_scale, learn_scale."),
    ],
)
@pytest.mark.parametrize("print_config", [False, True])
def test_key_value_errors(runner, tmp_path, args, line, print_config):
    out = tmp_path / "run"
    res = invoke(runner, ["fit", "--model", "mlp", "--out", str(out), *args, *(["--print-config"] * print_config)])
    assert_error(res)
    assert res.stderr.strip() == line
    assert res.exit_code == (2 if "Invalid value" in line else 1)
    assert list(tmp_path.iterdir()) == []


def test_fit_on_a_file_without_a_toml_file(runner, tmp_path, monkeypatch):
    import json

    from tests.test_cli import TINY, tasks_file

    data = tasks_file(tmp_path / "tasks.nc")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # a relative path is stored absolute
    res = invoke(runner, ["fit", *TINY, "--data", "file", "--data-arg", "path=tasks.nc", "--data-arg", "k_shot=5",
                          "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved["data"] == "file" and saved["data_args"] == {"path": str(data), "k_shot": 5}


def test_a_built_in_source_other_than_the_rows_applies_its_data_defaults():
    from hvi.cli.config import resolve

    solar, _ = resolve({"model": "bayes_unet"}, {})
    clouds, _ = resolve({"model": "bayes_unet", "data": "clouds"}, {})
    assert (solar["inner_lr"], clouds["inner_lr"]) == (0.3, 0.1)
    assert resolve({"model": "bayes_unet", "data": "clouds", "inner_lr": 0.2}, {})[0]["inner_lr"] == 0.2
    assert resolve({"model": "bayes_unet"}, {"data": "clouds", "inner_lr": 0.05})[0]["inner_lr"] == 0.05
    assert resolve({"model": "bayes_unet", "data": "clouds", "method": "maml"}, {})[0]["inner_lr"] == 0.01
