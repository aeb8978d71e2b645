"""The code must run on Python 3.10 (Ubuntu 22.04) although only 3.11 is installed here:
vermin checks that no syntax or standard library of a newer Python is used."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(120)
def test_sources_need_at_most_python_3_10():
    pytest.importorskip("vermin", reason="vermin is in the test extra")
    res = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
         "-q", "-t=3.10-", "--violations", "--eval-annotations", "--no-tips", "mesh", "bench", "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert res.returncode == 0, res.stdout + res.stderr
