"""pytest's assertion-rewritten bytecode for every test module, written once per change.

pytest rewrites each test module's asserts when it imports it, and caches the result in
__pycache__ unless bytecode writing is off, as it is on the machines we run on
(PYTHONDONTWRITEBYTECODE=1). Each pytest-xdist worker collects every module, so each
rewrote all of them: 5 of its 9 s of collection CPU; the 6 workers of `make test`
spent their first 34 s collecting on 2 cores. The controller writes the cache here, on
every core, before the workers start; pytest reads such a cache even when it may not
write one (hash-checked: an edited module is rewritten again). If pytest changes the
internals used here, `warm` does nothing and says so; tests/unit/test_rewrite_cache.py
fails so that it is noticed.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

_config: pytest.Config | None = None  # the controller's, inherited by the forked helpers


def modules_to_rewrite(root: Path) -> list[Path]:
    """What pytest rewrites on import: the test modules and the conftest files."""
    found = [*root.rglob("test_*.py"), *root.rglob("*_test.py"), *root.rglob("conftest.py")]
    return sorted(path for path in found if "__pycache__" not in path.parts)


def cached_pyc(module: Path) -> Path:
    from _pytest.assertion.rewrite import PYC_TAIL, get_cache_dir

    return get_cache_dir(module) / (module.name[:-3] + PYC_TAIL)


def _write_one(module: str) -> bool:
    from _pytest.assertion import rewrite

    assert _config is not None
    path = Path(module)
    pyc = cached_pyc(path)
    if rewrite._read_pyc(path, pyc) is not None:
        return False
    pyc.parent.mkdir(exist_ok=True)
    source_hash, code = rewrite._rewrite_test(path, _config)
    state = _config.stash[rewrite.assertstate_key]
    return rewrite._write_pyc(state, code, source_hash, pyc)


def warm(config: pytest.Config, root: Path, processes: int | None = None) -> int:
    """Writes the missing or stale cached modules under `root`; returns how many.

    On `processes` forked helpers (all cores by default), or in this process if 1."""
    global _config
    _config = config
    modules = [str(path) for path in modules_to_rewrite(root)]
    processes = processes or os.cpu_count() or 1
    try:
        if processes == 1:
            return sum(map(_write_one, modules))
        with ProcessPoolExecutor(processes) as pool:
            return sum(pool.map(_write_one, modules, chunksize=4))
    except Exception as err:  # a cold cache only costs time
        print(f"tests/rewrite_cache.py: not warmed ({err!r}); each worker rewrites")
        return 0
    finally:
        _config = None
