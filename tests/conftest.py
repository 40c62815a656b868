"""Shared test settings: Hugging Face hub offline, ``glip_d2`` imported first (its compat shims apply to every test),
and the per-stage report of tests/test_reference_fidelity.py printed in the terminal summary.

Where the official reference data comes from (and how to point the tests at a copy): tests/reference_data.py.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import glip_d2  # noqa: E402,F401


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The maximum difference of every stage checked against the official run, whatever order the tests ran in."""
    from reference_data import FIDELITY_REPORT_KEY

    report = config.stash.get(FIDELITY_REPORT_KEY, None)
    if not report:
        return
    terminalreporter.section("glip_d2 vs the official GLIP-T(C) reference run")
    terminalreporter.write_line(f"{'stage':<40} max|diff| tolerance")
    for stage, (diff, tol) in report.items():
        terminalreporter.write_line(f"{stage:<40} {diff:.3e}  {tol:.0e}")
