"""Shared fixtures: one `synthetic_small` build per test session (per xdist worker).

The skeleton and heatmap parity tests compare with reference outputs in ../shared/fixtures,
beside the repository. A checkout without them skips those tests, saying why; with
STROKEVISION_REQUIRE_FIXTURES=1 (set by .ci/run) such a skip is an error instead, so CI cannot
pass without the parity checks.
"""

import os

import pytest

# The test session owns its process: models initialise without XLA's optimisations (bit-identical
# random draws, a fraction of the compile time; see strokevision_jax.models.fast_init).
os.environ.setdefault("STROKEVISION_FAST_INIT", "1")

from strokevision_jax import dataset as dataset_lib

pytest_plugins = ["pytester"]
REQUIRE_FIXTURES = "STROKEVISION_REQUIRE_FIXTURES"
MISSING_FIXTURES = "fixtures not found"  # every parity test's skip reason says this


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    dataset_lib.ensure_built("synthetic_small", path)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get(REQUIRE_FIXTURES, "") not in ("", "0")
            and MISSING_FIXTURES in str(report.longrepr)):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: skipped because reference {MISSING_FIXTURES}, but "
                           f"{REQUIRE_FIXTURES} is set (CI): ../shared/fixtures must be present beside the "
                           f"repository. Reason given: {report.longrepr}")
