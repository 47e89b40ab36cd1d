"""User code on the command line: ``hvi --import MODULE`` and the ``hvi.plugins`` entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
from cli_checks import invoke
import torch

import hvi.plugins as plugins_mod
import hvi.builders as registry_mod
import hvi.priors.base as priors_base
from hvi.run_dir import CONFIG_FILE

PRIOR_MODULE = '''
from hvi.priors import GaussianPrior, register_prior


@register_prior("{name}")
class {cls}(GaussianPrior):
    """{doc}"""
'''


def _module(folder: Path, module: str, name: str, doc: str) -> None:
    cls = "".join(part.title() for part in name.split("_"))
    (folder / f"{module}.py").write_text(PRIOR_MODULE.format(name=name, cls=cls, doc=doc))


def _distribution(folder: Path, dist: str, entry_points: str) -> None:
    """An installed-looking distribution (a .dist-info folder) that declares ``entry_points``."""
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


#: The modules the tests write (removed from sys.modules after each test).
USER_MODULES = ("mymod", "myplugin", "fitmod", "first", "second", "boom", "needs_dep", "twice", "badplugin", "callplugin")
BUILTIN_PRIORS = {"gaussian", "gaussian-layer", "horseshoe", "laplace", "normal-gamma"}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """Registrations and loaded plugins of a test do not outlive it."""
    threads = torch.get_num_threads()
    pyro.clear_param_store()
    before = set(priors_base.PRIORS.names())
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("HVI_DEBUG", raising=False)
    yield
    for name in set(priors_base.PRIORS.names()) - before:
        priors_base.PRIORS.unregister(name)
    for name in USER_MODULES:
        sys.modules.pop(name, None)
    pyro.clear_param_store()
    torch.set_num_threads(threads)


def listing(stdout: str) -> dict[str, str]:
    """``hvi priors`` output as {name: description}."""
    return {line.split()[0]: line.split(maxsplit=1)[1] for line in stdout.splitlines()}


def error_line(res):
    assert res.exit_code == 1, res.output
    assert res.stdout == "" and "Traceback" not in res.stderr
    (line,) = res.stderr.splitlines()
    return line


def test_the_installed_hvi_lists_priors_of_import_and_of_plugins(tmp_path):
    _module(tmp_path, "mymod", "mine", "My own prior, from --import.")
    _module(tmp_path, "myplugin", "plugged", "A prior from an hvi.plugins entry point.")
    _distribution(tmp_path, "myplugin", "[hvi.plugins]\nplugged = myplugin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    hvi = Path(sys.executable).parent / "hvi"
    res = subprocess.run([str(hvi), "--import", "mymod", "priors"], cwd=tmp_path.parent, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = listing(res.stdout)
    assert lines["mine"] == "My own prior, from --import."
    assert lines["plugged"] == "A prior from an hvi.plugins entry point."
    assert set(lines) >= BUILTIN_PRIORS | {"mine", "plugged"}


def test_a_prior_of_an_imported_module_trains(tmp_path, monkeypatch):
    _module(tmp_path, "fitmod", "fit_prior", "A prior to train with.")
    monkeypatch.chdir(tmp_path)  # the current directory is searched too
    out = tmp_path / "run"
    res = invoke(["--import", "fitmod", "fit", "--model", "mlp", "--prior", "fit_prior", "--steps", "1",
                  "--task-batch", "2", "--inner-steps", "1", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / CONFIG_FILE).read_text())["prior"] == "fit_prior"


def test_import_is_repeatable_and_in_order(tmp_path, monkeypatch):
    _module(tmp_path, "first", "one", "First.")
    (tmp_path / "second.py").write_text("import sys\nassert 'first' in sys.modules\nfrom first import One\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = invoke(["--import", "first", "--import", "second", "priors"])
    assert res.exit_code == 0, res.output
    assert listing(res.stdout)["one"] == "First."


@pytest.mark.parametrize(
    "name, message",
    [
        ("nosuchmod_xyz", "Error: --import nosuchmod_xyz: no module named 'nosuchmod_xyz'; put its folder on "
                          "PYTHONPATH or run hvi from that folder."),
        ("nosuchpkg_xyz.priors", "Error: --import nosuchpkg_xyz.priors: no module named 'nosuchpkg_xyz'; put its "
                                 "folder on PYTHONPATH or run hvi from that folder."),
        ("mymod.py", "Error: --import 'mymod.py' is not a module name; pass the module's import name, e.g. "
                     "--import mymod (its folder on PYTHONPATH or the current directory)."),
        ("pkg/mod.py", "Error: --import 'pkg/mod.py' is not a module name; pass the module's import name, e.g. "
                       "--import pkg.mod (its folder on PYTHONPATH or the current directory)."),
        ("my-mod", "Error: --import 'my-mod' is not a module name; pass the module's import name, e.g. "
                   "--import mymod (its folder on PYTHONPATH or the current directory)."),
        ("boom", "Error: --import boom failed: RuntimeError: boom at import"),
        ("needs_dep", "Error: --import needs_dep failed: ModuleNotFoundError: No module named 'missing_dep_xyz'"),
        ("twice", "Error: --import twice failed: ValueError: prior 'gaussian' is already registered; pick another "
                  "name."),
    ],
)
def test_import_errors_are_one_line(tmp_path, monkeypatch, name, message):
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "needs_dep.py").write_text("import missing_dep_xyz\n")
    _module(tmp_path, "twice", "gaussian", "Again.")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert error_line(invoke(["--import", name, "priors"])) == message


def test_debug_shows_the_traceback_of_a_failing_import(tmp_path, monkeypatch):
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = invoke(["--debug", "--import", "boom", "priors"])
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "RuntimeError: boom at import" in lines
    assert lines[-1] == "Error: --import boom failed: RuntimeError: boom at import"


def test_a_failing_plugin_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "badplugin.py").write_text("def register():\n    raise RuntimeError('plugin broke')\n")
    _distribution(tmp_path, "badplugin", "[hvi.plugins]\nbad = badplugin:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_mod, "_loaded", False)
    monkeypatch.setattr(plugins_mod, "_loaded_entry_points", False)
    assert error_line(invoke(["priors"])) == (
        "Error: plugin 'bad' (badplugin:register) of the package badplugin in the entry-point group hvi.plugins "
        "failed: RuntimeError: plugin broke; fix or uninstall it."
    )


def test_a_plugin_function_is_called_once(tmp_path, monkeypatch):
    (tmp_path / "callplugin.py").write_text(
        "CALLS = []\n\ndef register():\n    CALLS.append(1)\n"
        "    from hvi.priors import GaussianPrior, register_prior\n"
        "    register_prior('called')(GaussianPrior)\n"
    )
    _distribution(tmp_path, "callplugin", "[hvi.plugins]\ncalled = callplugin:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_mod, "_loaded", False)
    monkeypatch.setattr(plugins_mod, "_loaded_entry_points", False)
    for _ in range(2):
        res = invoke(["priors"])
        assert res.exit_code == 0, res.output
        assert "called" in [line.split()[0] for line in res.stdout.splitlines()]
    assert sys.modules["callplugin"].CALLS == [1]
