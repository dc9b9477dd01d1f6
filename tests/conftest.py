"""Settings every test process shares, set before JAX is imported.

- Four simulated CPU devices (``XLA_FLAGS``).
- One persistent compilation cache for the whole test session, in a fresh temporary
  directory: the pytest workers (pytest-xdist), the in-process runs and every
  ``python -m meta_semi_jax.main`` subprocess inherit it through the environment, so a
  program that several tests compile (the digits step, its evaluation) is compiled once
  per session. The directory is new for every session, so no result depends on an
  earlier one, and it is removed when the session ends.
"""
import atexit
import os
import shutil
import tempfile

DEVICES_FLAG = "--xla_force_host_platform_device_count=4"
if DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICES_FLAG}".strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the session
    _cache_dir = tempfile.mkdtemp(prefix="meta_semi_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    # Cache every program, also those that compile fast (most test programs are small).
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
