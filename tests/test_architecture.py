"""Architecture (issue 14): the import contracts of pyproject.toml hold, and they would catch the old circles.

The contracts ([tool.importlinter] in pyproject.toml, described in docs/architecture.md) are checked with
import-linter (``lint-imports``), so the README's test command checks them. The tests below also show that the
contracts are not vacuous: the same linter, run on a copy of the package with one of the old imports put back,
fails and names the contract.
"""
from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import importlinter  # noqa: F401  (in the test extra: pip install -e '.[test]'; its absence is an error, not a skip)
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "survey_infer"


def _lint(cwd: Path, pythonpath: Path | None = None, contract: str | None = None) -> subprocess.CompletedProcess:
    """``lint-imports`` (import-linter's command) in ``cwd`` (it reads pyproject.toml there), without a cache;
    only the contract with this id when given."""
    env = dict(os.environ, COLUMNS="200")
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    args = ["--no-cache", "--no-logo"] + (["--contract", contract] if contract else [])
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_hold():
    """Every contract is kept on the package as it is (the same check as `lint-imports` in the repo root)."""
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """The package's Python files and pyproject.toml copied to a temporary folder (no data files)."""
    dst = tmp_path_factory.mktemp("arch")
    shutil.copytree(PACKAGE, dst / "survey_infer", ignore=lambda d, names: [
        n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n in ("data", "__pycache__")])
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


OLD_IMPORTS = [
    # (module file, import put back, id of the contract that must break)
    ("train/stores.py", "import survey_infer.cli.train  # argparse back in the library", "no-cli"),
    ("pipeline/clusters/slurm.py", "from survey_infer.pipeline import execute  # cluster -> runner",
     "clusters-know-no-run"),
    ("pipeline/clusters/slurm.py", "from survey_infer.pipeline.clusters import local  # slurm -> cluster",
     "cluster-kinds-independent"),
    ("pipeline/worker.py", "from survey_infer.pipeline import plan  # worker -> runner", "worker-knows-no-driver"),
    ("screening.py", "from survey_infer.pipeline import resume  # science -> run room", "layers"),
    ("pipeline/faults.py", "from survey_infer.pipeline import lock  # lock -> faults: a cycle", "no-cycles"),
]


@pytest.mark.parametrize("module, line, contract", OLD_IMPORTS, ids=[c for _, _, c in OLD_IMPORTS])
def test_contracts_catch_the_old_imports(package_copy, module, line, contract):
    """One old import put back into a copy of the package breaks the named contract (which holds without it)."""
    path = package_copy / "survey_infer" / module
    original = path.read_text()
    try:
        path.write_text(original + "\n" + line + "\n")
        r = _lint(package_copy, pythonpath=package_copy, contract=contract)
    finally:
        path.write_text(original)
    assert r.returncode != 0 and "BROKEN" in r.stdout, r.stdout + r.stderr
    assert "1 broken" in r.stdout, r.stdout


def _commands() -> dict[str, str]:
    from survey_infer.cli import COMMANDS

    return COMMANDS


def test_every_command_is_defined_in_its_cli_module():
    """Each subcommand's options and args->call function live in survey_infer/cli/<command>.py, not in the library
    (before issue 14 the cli modules only re-exported the library modules' ``register``)."""
    for name, modname in _commands().items():
        mod = importlib.import_module(modname)
        assert mod.register.__module__ == modname, f"{name}: register comes from {mod.register.__module__}"


def test_library_modules_hold_no_subcommand():
    """No module outside survey_infer/cli defines a ``register(subparsers)`` or calls ``add_parser``."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "register" and any(
                    a.arg == "subparsers" for a in node.args.args):
                offenders.append(f"{rel}:{node.lineno} register(subparsers)")
            if isinstance(node, ast.Attribute) and node.attr == "add_parser":
                offenders.append(f"{rel}:{node.lineno} add_parser")
    assert not offenders, offenders
