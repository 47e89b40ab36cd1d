"""The wheel built from the checkout works without the checkout.

The wheel is built from a copy of the checkout's sources (``pip wheel
--no-deps --no-build-isolation``, so no network and no build files in the
checkout) and installed with ``--no-deps`` into a fresh virtual environment.
That environment reaches torch, pyro and the other dependencies through a
``.pth`` file naming the running environment's site-packages: a path line in a
``.pth`` file only extends ``sys.path`` (the ``.pth`` files *in* that directory,
such as the editable install's finder, are not executed), so ``hvi`` itself can
only come from the wheel, which the tests check. Everything runs with a working
directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_MODELS = {"mlp", "siren", "conv4", "bayes_unet"}

#: Run inside the new environment: imports every module of the installed package.
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
import hvi

names = ["hvi"]
for info in pkgutil.walk_packages(hvi.__path__, "hvi.", onerror=lambda name: sys.exit(f"cannot import {name}")):
    names.append(info.name)
files = {name: importlib.import_module(name).__file__ for name in names}
from hvi.builders import load_registries
from hvi.models import list_models

load_registries()
print(json.dumps({"files": files, "models": list_models(), "version": hvi.__version__}))
"""


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_modules() -> set[str]:
    """Every module in the checkout's package folders (``package-dir`` of pyproject.toml)."""
    out: set[str] = set()
    for pkg, folder in _setuptools()["package-dir"].items():
        for py in (ROOT / folder).rglob("*.py"):
            parts = py.relative_to(ROOT / folder).with_suffix("").parts
            if all((ROOT / folder / Path(*parts[:i]) / "__init__.py").is_file() for i in range(len(parts))):
                out.add(".".join((pkg, *parts)).removesuffix(".__init__"))
    return out


def _source_dirs() -> set[str]:
    return {d.split("/")[0] for d in _setuptools()["package-dir"].values()}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel installed; returns its root and the environment to run it with."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in _source_dirs():
        shutil.copytree(ROOT / d, src / d, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(base / "dist"), str(src)], base)
    (wheel,) = (base / "dist").glob("hvi-*.whl")

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "_hvi_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))
    _run([*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)], base)

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    work = base / "elsewhere"
    work.mkdir()
    return venv, env


def test_wheel_installs_every_module(installed):
    venv, env = installed
    res = _run([str(venv / "bin" / "python"), "-c", IMPORT_ALL], venv.parent / "elsewhere", env)
    out = json.loads(res.stdout)
    assert set(out["files"]) == _source_modules()
    outside = {name: f for name, f in out["files"].items() if not Path(f).is_relative_to(venv)}
    assert outside == {}  # every module comes from the wheel, none from the checkout
    data = Path(out["files"]["hvi.data"]).parent
    assert (data / "solar.nc").stat().st_size == (ROOT / "hvi" / "data" / "solar.nc").stat().st_size
    assert out["models"] == sorted(BUILTIN_MODELS)
    import hvi

    assert out["version"] == hvi.__version__


def test_installed_console_script(installed):
    venv, env = installed
    cwd = venv.parent / "elsewhere"
    script = venv / "bin" / "hvi"
    shebang = script.read_text().splitlines()[0]
    assert shebang == f"#!{venv / 'bin' / 'python'}"
    res = _run([str(script), "models"], cwd, env)
    assert res.stderr == ""
    # One entry per model: its name and description on an unindented line, details indented below.
    heads = [line for line in res.stdout.splitlines() if line and not line[0].isspace()]
    assert [line.split()[0] for line in heads] == sorted(BUILTIN_MODELS)
    assert all(len(line.split(maxsplit=1)) == 2 for line in heads)
    res = _run([str(script), "--version"], cwd, env)
    import hvi

    assert res.stdout == f"hvi {hvi.__version__}\n"


def test_public_names_are_imported_on_first_use():
    import importlib

    import hvi

    assert sorted(hvi._EXPORTS) == sorted(hvi.__all__)
    for name, module in hvi._EXPORTS.items():
        assert getattr(hvi, name) is getattr(importlib.import_module(module), name), name
    assert set(hvi.__all__) <= set(dir(hvi))
    with pytest.raises(AttributeError, match="^module 'hvi' has no attribute 'nope'$"):
        hvi.nope  # noqa: B018


#: Imports the submodules named like functions before the package's attributes are used.
_SHADOWED = """
import sys
import hvi.fit, hvi.predict
import hvi
from hvi import fit
assert hvi.fit is fit is sys.modules["hvi.fit"].fit, hvi.fit
assert hvi.predict is sys.modules["hvi.predict"].predict, hvi.predict
assert hvi.checkpoint is sys.modules["hvi.checkpoint"]
print("ok")
"""


def test_fit_and_predict_stay_functions_when_their_modules_are_imported_first(tmp_path):
    res = _run([sys.executable, "-c", _SHADOWED], tmp_path, {**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.stdout == "ok\n"


def test_the_library_does_not_import_the_cli():
    """No module of the library (hvi/, hvi/data, hvi/priors, the model zoo) imports hvi.cli; the CLI builds on it."""
    import ast

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted([*root.glob("hvi/**/*.py"), *root.glob("models/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n == "hvi.cli" or n.startswith("hvi.cli.")]
    assert offenders == []


def test_only_the_cli_sets_process_wide_threads_and_allocator():
    """The library calls neither torch.set_num_threads (but hvi.parallel's scoped one, restored on exit, and its
    workers' own), hvi.parallel.set_task_workers nor hvi.tune_allocator: those are the program's (hvi.cli.process.configure_process)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    setters = {"set_num_threads", "set_num_interop_threads", "tune_allocator", "set_task_workers"}
    calls = []
    for path in sorted([*root.glob("hvi/**/*.py"), *root.glob("models/**/*.py"), *root.glob("cli/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name in setters:
                    calls.append(f"{path.relative_to(root)}: {name}")
    assert sorted(set(calls)) == ["cli/process.py: set_num_threads", "cli/process.py: set_task_workers",
                                  "cli/process.py: tune_allocator", "hvi/parallel.py: set_num_threads"]


def _project_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of hvi/, models/ (hvi.models) and cli/ (hvi.cli)."""
    out = {}
    for top, package in (("hvi", "hvi"), ("models", "hvi.models"), ("cli", "hvi.cli")):
        for path in sorted((root / top).glob("**/*.py")):
            parts = path.relative_to(root / top).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package, *parts))] = path
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(source: str, name: str, is_package: bool, modules) -> list[str]:
    """``line: what`` for each private name of a project module that the module ``name``'s ``source`` uses."""
    import ast

    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(source)
    found, aliases = [], set()  # aliases: local names bound to a project module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not (base == "hvi" or base.startswith("hvi.")):
                continue
            for a in node.names:
                if _private(a.name) or any(_private(p) for p in base.split(".")):
                    found.append(f"{node.lineno}: from {base} import {a.name}")
                elif f"{base}.{a.name}" in modules:
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "hvi" or a.name.startswith("hvi."):
                    if any(_private(p) for p in a.name.split(".")):
                        found.append(f"{node.lineno}: import {a.name}")
                    aliases.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner, dotted = node.value, []
            while isinstance(owner, ast.Attribute):
                dotted.insert(0, owner.attr)
                owner = owner.value
            if isinstance(owner, ast.Name) and owner.id in aliases:
                found.append(f"{node.lineno}: {'.'.join([owner.id, *dotted, node.attr])}")
    return found


def test_no_module_imports_a_private_name_of_another():
    """hvi/, models/ and cli/ use each other's public names only: no ``from hvi.x import _y``, no ``import
    hvi._x``, no ``x._y`` on an imported project module (benchmarks/ and tests/ may reach inside)."""
    root = Path(__file__).resolve().parents[1]
    modules = _project_modules(root)
    offenders = [
        f"{path.relative_to(root)}:{line}"
        for name, path in modules.items()
        for line in _private_uses(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", modules)
    ]
    assert offenders == []
    # ... and the check finds each kind (dunders such as __version__ are public)
    probe = (
        "from hvi.adapt import InnerLoop, _learned\n"
        "from hvi import __version__, recompute\n"
        "import hvi.parallel as par\n"
        "from .registry import _MODELS\n"
        "x = recompute._SLOT, par._POOL, recompute.split_tensors\n"
    )
    assert _private_uses(probe, "hvi.models.mlp", False, modules) == [
        "1: from hvi.adapt import _learned", "4: from hvi.models.registry import _MODELS",
        "5: recompute._SLOT", "5: par._POOL",
    ]
