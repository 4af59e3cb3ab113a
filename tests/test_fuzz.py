# SPDX-License-Identifier: MIT
"""The libFuzzer targets of tests/fuzz/ (built by `make fuzz-build`, part of `make test`):
each replays its committed seed corpus (every seed must pass, including the regression
seeds of bugs found earlier), then fuzzes for 30 s (EBSIM_FUZZ_SECONDS overrides; 300 s
under EBSIM_STRESS=1) and must end with exit 0: no crash, sanitizer report, leak, timeout
or broken invariant. New inputs go to a scratch corpus that is thrown away; a crash leaves
its input in the scratch directory named in the failure, to be added to
tests/fuzz/corpus/<target>/ as a regression seed once understood.

The targets run two at a time (or one per CPU, if fewer), so the four cost about a minute
of wall time."""
import concurrent.futures
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT, STRESS

FUZZ_B = os.path.join(ROOT, os.environ.get("FUZZ_B", "build-fuzz"))
TARGETS = ["ctl", "manifest", "volhdr", "cli", "bundle"]
SECONDS = int(os.environ.get("EBSIM_FUZZ_SECONDS", "300" if STRESS else "30"))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
# room for a volume header (4 KiB) plus a map and an I/O script (see fuzz_volhdr.c)
EXTRA = {"volhdr": ["-max_len=16384"]}


def libfuzzer_missing():
    """Why the targets cannot exist on this machine, or None."""
    cc = os.environ.get("FUZZ_CC", "clang")
    if not shutil.which(cc):
        return f"{cc} is not installed (make deps installs clang)"
    p = subprocess.run([cc, "-x", "c", "-fsanitize=fuzzer", "-o", "/dev/null", "-"],
                       input="int LLVMFuzzerTestOneInput(const char *d, unsigned long n)"
                             "{ (void)d; (void)n; return 0; }",
                       capture_output=True, text=True)
    if p.returncode != 0:
        return f"{cc} cannot link -fsanitize=fuzzer: libFuzzer is missing ({p.stderr.strip()[-200:]})"
    return None


def run_target(name, scratch):
    binary = os.path.join(FUZZ_B, f"fuzz_{name}")
    seeds = os.path.join(CORPUS, name)
    work = os.path.join(scratch, name)
    os.makedirs(os.path.join(work, "corpus"))
    # the targets' scratch homes: on a RAM file system when there is one (the catalog and
    # volume files are fsynced on every change, which a disk makes 10x slower)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    scratch_tmp = tempfile.mkdtemp(prefix=f"ebsim-fuzz-{name}-", dir=shm or work)
    try:
        return _run_target(name, binary, seeds, work, scratch_tmp)
    finally:
        shutil.rmtree(scratch_tmp, ignore_errors=True)


def _run_target(name, binary, seeds, work, scratch_tmp):
    env = dict(os.environ, EBSIM_FUZZ_TMP=scratch_tmp,
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    common = ["-close_fd_mask=3", "-rss_limit_mb=4096", "-timeout=60",
              f"-artifact_prefix={work}/"]
    files = sorted(os.path.join(seeds, f) for f in os.listdir(seeds))
    replay = subprocess.run([binary, *common, *files], capture_output=True, text=True, env=env,
                            timeout=600)
    if replay.returncode != 0:
        return {"phase": "replay", "rc": replay.returncode, "log": replay.stderr, "work": work}
    dictfile = os.path.join(ROOT, "tests", "fuzz", f"{name}.dict")
    fuzz = subprocess.run([binary, *common, *EXTRA.get(name, []),
                           f"-max_total_time={SECONDS}", "-print_final_stats=1",
                           f"-dict={dictfile}", os.path.join(work, "corpus"), seeds],
                          capture_output=True, text=True, env=env, timeout=SECONDS + 600)
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", fuzz.stderr)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", fuzz.stderr)
    return {"phase": "fuzz", "rc": fuzz.returncode, "log": fuzz.stderr, "work": work,
            "seeds": len(files), "execs": int(m.group(1)) if m else None,
            "cov": cov[-1] if cov else None,
            "crashes": [f for f in os.listdir(work) if f.startswith(("crash-", "leak-", "timeout-", "oom-"))]}


@pytest.fixture(scope="module")
def fuzz_results():
    why = libfuzzer_missing()
    if why:
        pytest.skip(why)
    missing = [t for t in TARGETS if not os.path.exists(os.path.join(FUZZ_B, f"fuzz_{t}"))]
    if missing:
        pytest.fail(f"fuzz targets not built ({', '.join(missing)}): run 'make fuzz-build'")
    scratch = tempfile.mkdtemp(prefix="ebsim-fuzz-", dir="/tmp")
    workers = max(1, min(2, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
        futures = {t: ex.submit(run_target, t, scratch) for t in TARGETS}
        results = {t: f.result() for t, f in futures.items()}
    yield results
    if all(r["rc"] == 0 for r in results.values()):
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(fuzz_results, target, capsys):
    r = fuzz_results[target]
    tail = "\n".join(r["log"].splitlines()[-60:])
    assert r["rc"] == 0, (f"fuzz_{target} failed in its {r['phase']} phase (exit {r['rc']}); "
                          f"inputs and logs in {r['work']}:\n{tail}")
    assert not r["crashes"], f"fuzz_{target} left {r['crashes']} in {r['work']}"
    assert r["execs"], f"fuzz_{target} printed no final stats:\n{tail}"
    with capsys.disabled():
        cov = f", cov {r['cov'][0]} ft {r['cov'][1]}" if r["cov"] else ""
        print(f"\nfuzz_{target}: {r['seeds']} seeds replayed; {r['execs']} executions in "
              f"{SECONDS} s{cov}; 0 crashes")
