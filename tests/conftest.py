"""Settings every test process shares, set before JAX is imported.

- Four simulated CPU devices (``XLA_FLAGS``), whose collectives may wait longer than
  XLA:CPU's default 40 s (``run_files.CPU_COLLECTIVE_TIMEOUT_FLAG``).
- One persistent compilation cache for the whole test session, in a fresh temporary
  directory: the pytest workers (pytest-xdist), the in-process runs and every
  ``python -m meta_semi_jax.main`` subprocess inherit it through the environment, so a
  program that several tests compile (the digits step, its evaluation) is compiled once
  per session. The directory is new for every session, so no result depends on an
  earlier one, and it is removed when the session ends.

And how the tests are spread over pytest-xdist's workers (``--dist loadgroup``): a test
file is one unit, run whole by one worker, so the programs its tests share are compiled
once (two workers compiling the same program at the same time both pay for it; the
persistent cache only helps the later one), and session-scoped fixtures are computed
once. Files that share a program name a group of their own
(``pytest.mark.xdist_group("quick_run")``). And the fixtures of the shared quick run
(``finished_quick_run``) and of float64 tests (``float64``).
"""
import atexit
import dataclasses
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

# Neither imports JAX, so the environment below is still set before it is imported.
from tests.run_files import (
    CPU_COLLECTIVE_TIMEOUT_FLAG,
    QUICK_RUN,
    QUICK_RUN_DEVICES,
    QUICK_RUN_DIAGNOSTICS,
    run_program,
)

DEVICES_FLAG = "--xla_force_host_platform_device_count=4"
for _flag in (DEVICES_FLAG, CPU_COLLECTIVE_TIMEOUT_FLAG):
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the session
    _cache_dir = tempfile.mkdtemp(prefix="meta_semi_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    # Cache every program, also those that compile fast (most test programs are small).
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Puts each test without an ``xdist_group`` into its file's group."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture
def float64():
    """The test runs with JAX in float64 (``pytest.mark.usefixtures("float64")``), so that
    equations can be compared tightly."""
    import jax  # here: the settings above come first

    with jax.enable_x64(True):
        yield


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    workdir: pathlib.Path
    process: subprocess.CompletedProcess
    seconds: float  # the process's wall-clock time, start-up included


@pytest.fixture(scope="session")
def finished_quick_run(tmp_path_factory) -> FinishedRun:
    """The quick run with its diagnostics, trained once per worker: the run whose files
    ``test_main`` checks and the uninterrupted reference of ``test_resume``."""
    workdir = tmp_path_factory.mktemp("quick_run")
    started = time.time()
    proc = run_program("meta_semi_jax.main", *QUICK_RUN, *QUICK_RUN_DIAGNOSTICS,
                       f"--workdir={workdir}", devices=QUICK_RUN_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return FinishedRun(workdir, proc, time.time() - started)
