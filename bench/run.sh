#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# run.sh - entry point of `make bench`: checks tools and privileges, makes a scratch
# directory, runs the driver (bench/bench.py) and always cleans up, even when interrupted.
#
# Design notes: the driver runs in the background and this shell waits for it, so a
# SIGTERM/SIGINT/SIGHUP reaches the trap at once (bash defers traps while a foreground
# child runs). The trap forwards SIGTERM to the driver (identified by PID and checked by
# its command line), waits for its own cleanup, then runs `bench.py --cleanup` as a
# backstop, which removes what the ledger in the scratch directory names: loop devices
# whose backing file is in the scratch directory, qemu-storage-daemon and ebsimd by PID,
# mounts under the scratch directory, and finally the directory itself.
set -u
cd "$(dirname "$0")/.." || exit 1

usage() {
	cat <<'EOF'
usage: bash bench/run.sh [--quick] [bench.py options]

Runs the fio matrix (ebsim vs raw disk vs qemu-storage-daemon) and writes
bench/results/latest.{json,md,png}. --quick: a short run (< 3 min).
Other options go to bench/bench.py (see `python3 bench/bench.py --help`), e.g.
--targets raw,ebsim-uring-loop --jobs rr4k-qd32 --seed 42 --out DIR --keep.
Environment: EBSIM_BENCH_DIR (scratch parent, default /var/tmp), EBSIM_BUILD (binaries,
default build/), PYTHON (default /usr/bin/python3).
EOF
}

for a in "$@"; do
	case $a in
	-h | --help) usage; exit 0 ;;
	esac
done

py=${PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=python3
missing=()
for c in fio qemu-storage-daemon qemu-img gnuplot losetup fincore "$py"; do
	command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if ((${#missing[@]})); then
	echo "bench: missing ${missing[*]}: run 'make deps' first" >&2
	exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "bench: needs root (loop devices and FUSE mounts)" >&2
	exit 1
fi
if [ ! -c /dev/fuse ]; then
	echo "bench: /dev/fuse is missing" >&2
	exit 1
fi
build=${EBSIM_BUILD:-build}
for b in ebsimd ebsim; do
	if [ ! -x "$build/$b" ]; then
		echo "bench: $build/$b is missing: run 'make' first" >&2
		exit 1
	fi
done

base=${EBSIM_BENCH_DIR:-/var/tmp}
scratch=$(mktemp -d "$base/ebsim-bench.XXXXXX") || exit 1
echo "bench: scratch directory $scratch"

pid=
driver_alive() {
	[ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
		grep -qF -- "bench/bench.py --scratch $scratch"
}
finish() {
	trap '' INT TERM HUP
	if driver_alive; then
		kill -TERM "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	fi
	pid=
	"$py" bench/bench.py --cleanup --scratch "$scratch"
}
on_signal() {
	echo "bench: $1, cleaning up" >&2
	finish
	trap - EXIT
	exit "$2"
}
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM
trap 'on_signal SIGHUP 129' HUP
trap finish EXIT

start=$(date +%s)
"$py" bench/bench.py --scratch "$scratch" "$@" &
pid=$!
wait "$pid"
rc=$?
pid=
echo "bench: finished in $(($(date +%s) - start)) s (exit $rc)"
exit "$rc"
