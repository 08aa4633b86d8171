"""Session-wide test setup. Runs before any test module imports JAX.

8 fake CPU devices for the whole session (sharding tests build `data×fsdp×tensor` meshes on them); single-device
code is unaffected, since arrays default to device 0. The flag only works if set before JAX is first imported.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

# One persistent compilation cache for every `merg-jax` / `python -m merg_jax.cli` subprocess of the session
# (merg_jax.compile_cache is what the command does by default, into ~/.cache): the CLI tests run the same programs
# in several processes (kill and resume, the paper recipe's two runs, two hosts), and each is compiled once. A
# fresh folder per session, so no run depends on an earlier one. The test processes themselves do not use it:
# the compile-count and first-call-timing tests measure compilation in-process.
_SESSION_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # unset in the first process; xdist's workers inherit it
    import tempfile

    _SESSION_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="merg-jax-test-xla-cache-")

import jax  # noqa: E402 - after the XLA flag, which must be set before anything imports JAX
import pytest  # noqa: E402

jax.config.update("jax_enable_compilation_cache", False)


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory):
    """8 AvaMERG-mini conversations (half of them neutral-text), shared by the trainer, eval and respond tests."""
    from tests.trainer_testing import make_mini

    return make_mini(tmp_path_factory.mktemp("mini") / "data")


@pytest.fixture(scope="session")
def trained_run(mini_root, tmp_path_factory):
    """Every stage of the shrunk tiny recipe, a few steps each, on one device: (output dir, TrainResult)."""
    from merg_jax.sharding import single_device_mesh
    from merg_jax.train.trainer import train_stages
    from tests.trainer_testing import trainer_config

    out = tmp_path_factory.mktemp("run") / "tiny"
    result = train_stages(trainer_config(mini_root, out), mesh=single_device_mesh(), emit=lambda line: None)
    return out, result


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`): one worker per test module, and every test
    that reads the session's `trained_run` on the same worker, so the fixtures that take minutes are built once.
    On 2 cores two workers still gain: much of the suite is single-threaded XLA compilation and Python."""
    for item in items:
        group = "trained_run" if "trained_run" in getattr(item, "fixturenames", ()) else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_sessionfinish(session, exitstatus):
    """The process that made the session's compilation cache removes it."""
    if _SESSION_CACHE is not None:
        import shutil

        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
