#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/demo.sh - a volume's life, step by step, for a person to read (`make demo`).
#
# Runs as root on the default home (/var/lib/ebsim) unless EBSIM_HOME is set: starts ebsimd
# if it is not running, creates a 2 GiB volume, attaches it with losetup, makes ext4, mounts
# it, writes files and records their SHA-256, unmounts, detaches, restarts the daemon,
# attaches and mounts again and checks every file. It removes what it made (mount, loop
# device, volume, and the daemon if it started it) on success, failure or Ctrl-C, and exits
# non-zero if any check fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EBSIM="$ROOT/build/ebsim"
EBSIMD="$ROOT/build/ebsimd"
HOME_DIR="${EBSIM_HOME:-/var/lib/ebsim}"
export EBSIM_HOME="$HOME_DIR"

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'; else B="" G="" R="" N=""; fi
n=0
say() { n=$((n + 1)); printf '\n%s%2d. %s%s\n' "$B" "$n" "$*" "$N"; }
show() { printf '   $ %s\n' "$*"; "$@"; }
die() { printf '%sFAILED: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: ebsimd mounts FUSE and the demo uses losetup and mount"
[ -x "$EBSIM" ] && [ -x "$EBSIMD" ] || die "build first: make"

started_daemon=0 restarting=0 vol="" dev="" mnt="" workdir="" creating=0 ids_before=""

volume_ids() { "$EBSIM" describe-volumes | sed -n 's/.*"VolumeId": *"\([^"]*\)".*/\1/p'; }

daemon_running() { "$EBSIM" describe-volumes >/dev/null 2>&1; }

# Bring the daemon back (after an interrupted restart), waiting out one that is starting.
ensure_running() {
	for _ in $(seq 50); do
		daemon_running && return 0
		"$EBSIMD" --home "$HOME_DIR" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

# Stop the daemon; --stop fails while a starting daemon has not written its pid yet.
ensure_stopped() {
	for _ in $(seq 50); do
		"$EBSIMD" --home "$HOME_DIR" --stop 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	if [ -n "$mnt" ] && mountpoint -q "$mnt"; then
		umount "$mnt" 2>/dev/null || umount -l "$mnt"
	fi
	[ -n "$dev" ] && losetup -d "$dev" 2>/dev/null
	if [ "$restarting" = 1 ] ||
		{ [ "$started_daemon" = 1 ] && { [ -n "$vol" ] || [ "$creating" = 1 ]; }; }; then
		ensure_running || echo "could not restart ebsimd on $HOME_DIR" >&2
	fi
	if [ -z "$vol" ] && [ "$creating" = 1 ]; then
		# interrupted inside create-volume: the volume may exist without our knowing its ID
		for id in $(volume_ids); do
			grep -qx "$id" <<<"$ids_before" && continue
			if [ "$started_daemon" = 1 ]; then
				vol="$vol $id" # our own daemon: a new volume can only be ours
			else
				echo "note: $id appeared during the interrupted create; it may be the demo's" >&2
			fi
		done
	fi
	for id in $vol; do
		"$EBSIM" delete-volume --volume-id "$id" >/dev/null 2>&1 ||
			echo "could not delete $id; remove it with: $EBSIM delete-volume --volume-id $id" >&2
	done
	if [ "$started_daemon" = 1 ]; then
		ensure_stopped || echo "could not stop ebsimd on $HOME_DIR" >&2
	fi
	[ -n "$workdir" ] && rm -rf "$workdir"
	if [ "$rc" -eq 0 ]; then
		printf '\n%sDemo finished: every file came back intact.%s\n' "$G" "$N"
	else
		printf '\n%sDemo failed (exit %d); cleaned up what it made.%s\n' "$R" "$rc" "$N" >&2
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_daemon() { show "$EBSIMD" --home "$HOME_DIR"; }
stop_daemon() { show "$EBSIMD" --home "$HOME_DIR" --stop; }

attach_and_mount() {
	dev=$(losetup -f --show --direct-io=on "$path")
	printf '   $ losetup -f --show --direct-io=on %s\n   %s\n' "$path" "$dev"
	show mount "$dev" "$mnt"
	mountpoint -q "$mnt" || die "$mnt is not mounted"
}

unmount_and_detach() {
	show umount "$mnt"
	show losetup -d "$dev"
	dev=""
}

say "ebsimd on $HOME_DIR"
if daemon_running; then
	echo "   already running (pid $(cat "$HOME_DIR/ebsimd.pid")); the demo restarts it in step 6 and leaves it running"
else
	started_daemon=1 # before starting: an interrupted start may still leave it running
	start_daemon
	echo "   started: pid $(cat "$HOME_DIR/ebsimd.pid"), FUSE at $HOME_DIR/mnt"
fi

say "Create a 2 GiB gp3 volume"
echo "   \$ ebsim create-volume --size 2 --volume-type gp3"
ids_before=$(volume_ids)
creating=1
out=$("$EBSIM" create-volume --size 2 --volume-type gp3)
echo "$out" | sed 's/^/   /'
vol=$(sed -n 's/.*"VolumeId": *"\([^"]*\)".*/\1/p' <<<"$out")
path=$(sed -n 's/.*"LocalPath": *"\([^"]*\)".*/\1/p' <<<"$out")
creating=0
[ -n "$vol" ] && [ -f "$path" ] || die "no volume file at '$path'"
echo "   the volume is the file $path ($(stat -c %s "$path") bytes, sparse)"

workdir=$(mktemp -d /tmp/ebsim-demo.XXXXXX)
mnt="$workdir/mnt"
mkdir "$mnt"

say "Attach it to a loop device, make ext4, mount it at $mnt"
dev=$(losetup -f --show --direct-io=on "$path")
printf '   $ losetup -f --show --direct-io=on %s\n   %s\n' "$path" "$dev"
show mkfs.ext4 -q "$dev"
show mount "$dev" "$mnt"
mountpoint -q "$mnt" || die "$mnt is not mounted"

say "Write a few files and record their SHA-256"
mkdir "$mnt/docs"
head -c $((24 << 20)) /dev/urandom >"$mnt/random-24MiB.bin"
head -c $((3 << 20)) /dev/urandom >"$mnt/docs/random-3MiB.bin"
printf 'hello from %s\n' "$vol" >"$mnt/docs/hello.txt"
(cd "$mnt" && find . -type f | sort | xargs sha256sum) >"$workdir/SHA256SUMS"
sed 's/^/   /' "$workdir/SHA256SUMS"
show sync

say "Unmount and detach"
unmount_and_detach

say "Restart the daemon: every volume is flushed, FUSE unmounted, then served again"
if [ "$started_daemon" = 0 ] &&
	"$EBSIM" describe-volumes --filters Name=status,Values=in-use | grep -q VolumeId; then
	die "the daemon was running before the demo and has volumes in use: not restarting it"
fi
restarting=1
stop_daemon
start_daemon
restarting=0
echo "   \$ ebsim describe-volumes --volume-ids $vol"
"$EBSIM" describe-volumes --volume-ids "$vol" | sed 's/^/   /'

say "Attach and mount again, then check every file"
attach_and_mount
fail=0
while read -r sum name; do
	if [ "$(sha256sum <"$mnt/$name" | cut -d' ' -f1)" = "$sum" ]; then
		printf '   %sOK%s   %s\n' "$G" "$N" "$name"
	else
		printf '   %sBAD%s  %s\n' "$R" "$N" "$name"
		fail=1
	fi
done <"$workdir/SHA256SUMS"
[ "$fail" = 0 ] || die "some files did not come back intact"

say "Clean up: unmount, detach, delete the volume"
unmount_and_detach
show "$EBSIM" delete-volume --volume-id "$vol"
vol=""
[ ! -e "$path" ] || die "$path still exists after delete-volume"
echo "   $path is gone"
if [ "$started_daemon" = 1 ]; then
	stop_daemon
	started_daemon=0
fi
