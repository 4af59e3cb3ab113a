# SPDX-License-Identifier: MIT
"""Run every C unit test program (tests/unit/test_*.c), plain and under ASan+UBSan.

Exit codes follow liburing's convention: 0 pass, 1 fail, 77 skip."""
import glob
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-2] for p in glob.glob(os.path.join(ROOT, "tests/unit/test_*.c")))


@pytest.mark.parametrize("build", ["build", "build-asan"])
@pytest.mark.parametrize("name", NAMES)
def test_unit(build, name):
    path = os.path.join(ROOT, build, "tests", name)
    assert os.path.exists(path), f"{path} not built: run 'make unit' (and 'make asan')"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    p = subprocess.run([path], capture_output=True, text=True, env=env, timeout=900)
    if p.returncode == 77:
        pytest.skip(p.stderr.strip()[-500:])
    assert p.returncode == 0, f"{name} ({build}) exited {p.returncode}\n{p.stderr[-4000:]}"
