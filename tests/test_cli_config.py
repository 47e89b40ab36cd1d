"""hvi models / sources with defaults and arguments, fit --help values, --print-config, --*-arg."""

from __future__ import annotations

import pyro
import pytest
import torch
from click.testing import CliRunner

from hvi.cli.main import cli


@pytest.fixture(autouse=True)
def _fresh_store():
    threads = torch.get_num_threads()
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_num_threads(threads)


@pytest.fixture()
def runner():
    return CliRunner()


def invoke(runner, args):
    return runner.invoke(cli, args, catch_exceptions=False)


def assert_error(res, *fragments):
    """Non-zero exit, exactly one line 'Error: ...' on stderr, no traceback."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


# --------------------------------------------------------------------------- listings


def test_models_show_fit_defaults_and_builder_arguments(runner):
    res = invoke(runner, ["models"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())  # undo the wrapping
    mlp = text[text.index("mlp Sinusoid"):text.index("siren SIREN")]
    assert 'fit defaults: data="sinusoid" model_args={"hidden":[40,40]} prior_args={"init_scale":0.1}' in mlp
    assert "inner_steps=10 steps=5000 task_batch=8 lr=0.003 eval_tasks=200" in mlp
    assert 'model_args: in_features=1 out_features=1 hidden=[40,40] activation="relu"' in mlp
    assert "model_args: in_channels=3 out_channels=1 base=16 depth=3" in text  # bayes_unet's builder
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
    assert "Total SVI steps (default 1000; mlp 5000, siren 300, conv4 500, bayes_unet 300)." in text
    assert "Tasks per step (default 8; siren 4, conv4 4, bayes_unet 4)." in text  # mlp keeps the common 8
    assert '(default "natural"; siren "gradient", conv4 "gradient")' in text
    assert '(mlp "sinusoid", siren "faces", conv4 "glyphs", bayes_unet "solar")' in text
    assert "'hvi models' lists each one's defaults row" in text
