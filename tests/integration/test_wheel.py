"""The production wheel, built as a user would (`pip wheel . --no-deps`), holds the
production code and its data files and nothing of devstack/, bench/ or tests/; unpacked
on its own it imports (devstack unreachable) and finds the Vault policies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = ("workflows", "activities", "runtime", "deploy")
PRODUCTION_MODULES = ("worker.py", "starter.py", "codec_server.py")
# Never in the wheel: the stand-ins, the benchmark, the tests, the TypeScript client.
DEVELOPMENT = ("devstack", "bench", "tests", "clients")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the tree, so the build's own build/ and *.egg-info stay out
    of the working tree (and out of other test runs' way)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".state", "node_modules", "build", "*.egg-info", "__pycache__",
            ".*_cache", "bench-results.json",
        ),
    )  # fmt: skip
    out = base / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [path] = out.glob("mail_provisioning-*.whl")
    return path


def source_files(package: str, pattern: str) -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for path in (ROOT / package).rglob(pattern)
        if "__pycache__" not in path.parts
    }


def test_the_wheel_holds_production_code_only(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }
    assert top_level == {*PRODUCTION_PACKAGES, *PRODUCTION_MODULES}
    assert not [name for name in names if name.split("/")[0] in DEVELOPMENT]
    for package in PRODUCTION_PACKAGES:
        assert source_files(package, "*.py") <= names, package
    # The data files production reads at run time.
    assert source_files("activities", "data/*.asc") <= names
    policies = source_files("deploy", "vault/policies/*.hcl")
    assert policies and policies <= names


def test_the_unpacked_wheel_runs_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = f"""
import importlib, importlib.util, pkgutil, sys
import codec_server, starter, worker
from deploy import vault_bootstrap
for package in {PRODUCTION_PACKAGES!r}:
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(package + "." + module.name)
for name in {DEVELOPMENT!r}:
    assert importlib.util.find_spec(name) is None, name + " is importable"
loaded = [m for m in sys.modules.values() if getattr(m, "__file__", None)]
ours = [m.__name__ for m in loaded if m.__name__.split(".")[0] in
        {{"worker", "starter", "codec_server", *{PRODUCTION_PACKAGES!r}}}]
outside = [m.__name__ for m in loaded if m.__name__ in ours
           and not m.__file__.startswith({str(site)!r})]
assert not outside, outside
print(len(ours), sorted(p.name for p in vault_bootstrap.POLICY_DIR.glob("*.hcl")))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    count, policies = result.stdout.split(" ", 1)
    assert int(count) > len(PRODUCTION_MODULES)
    assert policies.strip() == str(
        sorted(p.name for p in (ROOT / "deploy" / "vault" / "policies").glob("*.hcl"))
    )
