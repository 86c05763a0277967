"""The CI switch that turns a missing-fixture skip into a failure."""

import pathlib

CONFTEST = (pathlib.Path(__file__).parent / "conftest.py").read_text()
TEST = """
import pytest

def test_parity():
    pytest.skip("MotionBERT fixtures not found at /nowhere")

@pytest.mark.skipif(True, reason="MS-G3D golden fixtures not found in /nowhere")
def test_marked_parity():
    pass

def test_other_skip():
    pytest.skip("needs a GPU")
"""


def test_missing_fixtures_skip_without_the_switch_and_fail_with_it(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST.replace("pytest_plugins = [\"pytester\"]", ""))
    pytester.makepyfile(test_fixture_skip=TEST)
    monkeypatch.delenv("STROKEVISION_REQUIRE_FIXTURES", raising=False)
    pytester.runpytest_inprocess("-p", "no:xdist").assert_outcomes(skipped=3)
    monkeypatch.setenv("STROKEVISION_REQUIRE_FIXTURES", "1")
    result = pytester.runpytest_inprocess("-p", "no:xdist")
    result.assert_outcomes(skipped=1, failed=1, errors=1)  # call / setup skips
    result.stdout.fnmatch_lines(["*STROKEVISION_REQUIRE_FIXTURES is set (CI)*"])
