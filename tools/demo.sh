#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/demo.sh - the story of an instance's storage and its AMIs, step by step, for a
# person to read (`make demo`).
#
# Design notes
# ------------
# - Runs as root on the default home (/var/lib/ebsim) unless EBSIM_HOME is set. Starts
#   ebsimd only if it is not running (with its defaults: base AMIs on, cache
#   /var/cache/ebsim) and stops it only if it started it; it never signals a process.
# - It acts as its own accounts (OWNER, OTHER, THIRD below) in us-east-1 (and us-west-2 for
#   the copy), so it never touches what other accounts of the home hold. Every command is
#   shown with `$` as a person would type it after `export EBSIM_ACCOUNT=$OWNER
#   EBSIM_REGION=us-east-1`; replies are cut down to the fields that matter (python3's
#   json, through jf below), never printed whole.
# - Steps: 1 launch the base HVM AMI (m5d.large: NVMe instance store) with a data EBS
#   volume (DeleteOnTermination false); 2 ext4 on the data volume and the instance store,
#   files on all three, sha256 recorded; 3 reboot, then stop+start, a table each (EBS kept
#   byte for byte, instance store gone after stop); 4 create-image; 5 launch it, same
#   sha256; 6 share it with OTHER, who launches it, THIRD cannot; 7 copy-image to
#   us-west-2; 8 an ext4 image file of the root's files (bundle-vol of the whole 1 GiB
#   root takes ~27 s each way through FUSE on a shared 2-core host), bundle-image,
#   upload-bundle, register-image --image-location, launch, launch time against the
#   EBS-backed launch; 9 clean up. Each step ends with one line "=> ..." (its
#   success marker, which tests/test_demo.py looks for) or "=> skipped: <why>" when the
#   ebsim it runs lacks the feature the step needs.
# - What it makes is recorded as it is made, by exact ID (instances, kept volumes, images
#   with their snapshots, the bucket directory, signing certificate and region key pair
#   the AMI tools created for it when absent, its mounts, its temp dir), and cleanup() removes exactly that on success, failure or
#   Ctrl-C (EXIT trap). A create that is interrupted before its ID is known is resolved
#   by listing the demo account's IDs before and after. Loop devices are the daemon's
#   (LocalDevices): terminating the instances detaches them; the demo makes none itself.
# - Any failed check counts; the exit status is non-zero if one did.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD="${EBSIM_BUILD:-$ROOT/build}"
EBSIM="$BUILD/ebsim"
EBSIMD="$BUILD/ebsimd"
EBSIM_AMI="$BUILD/ebsim-ami"
HOME_DIR="${EBSIM_HOME:-/var/lib/ebsim}"
export EBSIM_HOME="$HOME_DIR"

OWNER=111122223333 # the demo's accounts
OTHER=444455556666
THIRD=777788889999
REGION=us-east-1
REGION2=us-west-2
ITYPE=m5d.large # x86_64, HVM, one 75 GiB NVMe instance-store volume
export EBSIM_ACCOUNT=$OWNER EBSIM_REGION=$REGION

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' Y=$'\e[33m' N=$'\e[0m'; else B="" G="" R="" Y="" N=""; fi
n=0
T0=$(date +%s.%N)
STEP_T0=$T0
say() { n=$((n + 1)); STEP_T0=$(now); printf '\n%s%d. %s%s\n' "$B" "$n" "$*" "$N"; }
done_() { printf '   %s=> %s%s   (%s s)\n' "$G" "$*" "$N" "$(secs "$STEP_T0" "$(now)")"; }
skip() { printf '   %s=> skipped: %s%s\n' "$Y" "$*" "$N"; }
die() { printf '   %sFAILED: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }
fails=0
bad() { fails=$((fails + 1)); }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "run as root: ebsimd mounts FUSE and the demo uses mount and mkfs"
[ -x "$EBSIM" ] && [ -x "$EBSIMD" ] && [ -x "$EBSIM_AMI" ] || die "build first: make"

# Quote words for display only where a shell needs it.
q() {
	local out="" w
	for w in "$@"; do
		if [[ "$w" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=" $w"; else out+=" '$w'"; fi
	done
	printf '%s' "${out# }"
}

# jf EXPR: evaluate EXPR over the JSON on stdin (d; inst(d) = the first instance) and print
# it: a list one item a line, a tuple tab-separated, nothing for None or for no input (a
# failed describe).
JF='import json, sys
raw = sys.stdin.read()
if not raw.strip():
    sys.exit(0)
d = json.loads(raw)
def inst(d):
    return (d["Reservations"][0] if "Reservations" in d else d)["Instances"][0]
def fmt(x):
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (list, tuple)):
        return "\t".join(fmt(y) for y in x)
    return "" if x is None else str(x)
v = eval(sys.argv[1])
for x in (v if isinstance(v, list) else [] if v is None else [v]):
    print(fmt(x))'
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3 # the system one: no shim to start
jf() { "$PY" -S -c "$JF" "$1"; }

# ec2 ARGS: run `ebsim ARGS` as $ACCT in $REG (default: the demo's owner in us-east-1),
# showing the command unless QUIET=1; the reply is in $OUT. A failure ends the demo.
OUT=""
ec2() {
	local a=()
	[ "${ACCT:-$OWNER}" = "$OWNER" ] || a+=(--account "$ACCT")
	[ "${REG:-$REGION}" = "$REGION" ] || a+=(--region "$REG")
	[ "${QUIET:-0}" = 1 ] || printf '   $ %s\n' "$(q ebsim "${a[@]}" "$@")"
	if ! OUT=$("$EBSIM" "${a[@]}" "$@" 2>"$workdir/err"); then
		sed 's/^/   /' "$workdir/err" >&2
		die "ebsim $1 failed"
	fi
}

# What the demo made, removed by cleanup(): "account region id" per entry.
INSTS=() VOLS=() AMIS=() MOUNTS=()
bucket_dir="" signing_cert="" workdir="" started_daemon=0
made_files=() made_dirs=() # by step 8 in the home: region keys, buckets/, accounts/ (if new)
creating="" before_ids="" # an interrupted create: "instance|image account region"

ids_of() { # KIND ACCOUNT REGION: the IDs of the account's instances or images
	if [ "$1" = instance ]; then
		"$EBSIM" --account "$2" --region "$3" describe-instances 2>/dev/null |
			jf '[i["InstanceId"] for r in d["Reservations"] for i in r["Instances"]]'
	else
		"$EBSIM" --account "$2" --region "$3" describe-images --owners self 2>/dev/null |
			jf '[i["ImageId"] for i in d["Images"]]'
	fi
}
begin_create() { before_ids=$(ids_of "$@" || true); creating="$*"; }
end_create() { creating=""; }

daemon_running() { "$EBSIM" describe-volumes --max-results 5 >/dev/null 2>&1; }

ensure_stopped() { # --stop fails while a starting daemon has not written its pid yet
	for _ in $(seq 50); do
		"$EBSIMD" --home "$HOME_DIR" --stop >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

# inst_state ACCOUNT REGION ID
inst_state() {
	"$EBSIM" --account "$1" --region "$2" describe-instances --instance-ids "$3" 2>/dev/null |
		jf 'inst(d)["State"]["Name"]'
}

# wait_state ID STATE [ACCOUNT [REGION]]: up to 60 s
wait_state() {
	local s=""
	for _ in $(seq 600); do
		s=$(inst_state "${3:-$OWNER}" "${4:-$REGION}" "$1" || true)
		[ "$s" = "$2" ] && return 0
		sleep 0.1
	done
	echo "   $1 is '$s', not $2, after 60 s" >&2
	return 1
}

# The snapshots of an image, one a line.
image_snaps() {
	"$EBSIM" --account "$1" --region "$2" describe-images --image-ids "$3" 2>/dev/null |
		jf '[e["Ebs"]["SnapshotId"] for e in d["Images"][0]["BlockDeviceMappings"] if e.get("Ebs", {}).get("SnapshotId")]'
}
image_state() {
	"$EBSIM" --account "$1" --region "$2" describe-images --image-ids "$3" 2>/dev/null |
		jf 'd["Images"][0]["State"]'
}

cleanup() {
	local rc=$? e acct reg id kind m st snaps s
	# a second Ctrl-C must not cut the clean-up short: it and its commands ignore INT/TERM
	trap - EXIT
	trap '' INT TERM
	set +e
	[ "$rc" -ne 0 ] && printf '\n%sCleaning up after the failure%s\n' "$B" "$N"
	for m in "${MOUNTS[@]}"; do
		if mountpoint -q "$m"; then
			umount "$m" 2>/dev/null || umount -l "$m"
		fi
	done
	if [ -n "$creating" ] && daemon_running; then
		# interrupted inside a create: what appeared in the demo's account since is its own
		read -r kind acct reg <<<"$creating"
		for id in $(ids_of "$kind" "$acct" "$reg"); do
			grep -qx -- "$id" <<<"$before_ids" && continue
			if [ "$kind" = instance ]; then INSTS+=("$acct $reg $id"); else AMIS+=("$acct $reg $id"); fi
		done
	fi
	# terminate each, then wait for each; their volumes first join VOLS (an instance found
	# after an interrupted launch has volumes the demo has not seen)
	for e in "${INSTS[@]}"; do
		read -r acct reg id <<<"$e"
		for s in $("$EBSIM" --account "$acct" --region "$reg" describe-instances --instance-ids "$id" 2>/dev/null |
			jf '[m["Ebs"]["VolumeId"] for m in inst(d)["BlockDeviceMappings"] if "Ebs" in m]'); do
			[[ " ${VOLS[*]} " == *" $acct $reg $s "* ]] || VOLS+=("$acct $reg $s")
		done
		st=$(inst_state "$acct" "$reg" "$id")
		[ -z "$st" ] || [ "$st" = terminated ] && continue
		ACCT=$acct REG=$reg QUIET=0 ec2_soft terminate-instances --instance-ids "$id"
	done
	for e in "${INSTS[@]}"; do
		read -r acct reg id <<<"$e"
		st=$(inst_state "$acct" "$reg" "$id")
		[ -z "$st" ] || wait_state "$id" terminated "$acct" "$reg" || bad
	done
	for e in "${AMIS[@]}"; do
		read -r acct reg id <<<"$e"
		for _ in $(seq 300); do # a pending image keeps its snapshots: let it finish
			st=$(image_state "$acct" "$reg" "$id")
			[ "$st" = pending ] || break
			sleep 0.2
		done
		[ -z "$st" ] && continue
		snaps=$(image_snaps "$acct" "$reg" "$id")
		if [ -n "$snaps" ] && "$EBSIM" deregister-image --help 2>/dev/null | grep -q -- --delete-associated-snapshots; then
			ACCT=$acct REG=$reg ec2_soft deregister-image --image-id "$id" --delete-associated-snapshots
		else
			ACCT=$acct REG=$reg ec2_soft deregister-image --image-id "$id"
		fi
		for s in $snaps; do
			"$EBSIM" --account "$acct" --region "$reg" describe-snapshots --snapshot-ids "$s" >/dev/null 2>&1 &&
				ACCT=$acct REG=$reg ec2_soft delete-snapshot --snapshot-id "$s"
		done
	done
	for e in "${VOLS[@]}"; do # the volumes kept at terminate (DeleteOnTermination false), after
		# the images: a pending image's snapshot of a volume keeps that volume in use
		read -r acct reg id <<<"$e"
		"$EBSIM" --account "$acct" --region "$reg" describe-volumes --volume-ids "$id" >/dev/null 2>&1 || continue
		ACCT=$acct REG=$reg ec2_soft delete-volume --volume-id "$id"
	done
	if [ -n "$bucket_dir" ] && [ -d "$bucket_dir" ]; then
		printf '   $ rm -r %s\n' "$bucket_dir"
		rm -r "$bucket_dir"
	fi
	if [ -n "$signing_cert" ] && [ -f "$signing_cert" ]; then
		printf '   $ rm %s\n' "$signing_cert"
		rm "$signing_cert" && rmdir "$(dirname "$signing_cert")" 2>/dev/null
	fi
	for m in "${made_files[@]}"; do
		[ -f "$m" ] && printf '   $ rm %s\n' "$m" && rm "$m"
	done
	for m in "${made_dirs[@]}"; do
		[ -d "$m" ] && rmdir "$m" 2>/dev/null && printf '   $ rmdir %s\n' "$m"
	done
	# check: nothing the demo recorded is left
	local left=""
	for e in "${VOLS[@]}"; do
		read -r acct reg id <<<"$e"
		"$EBSIM" --account "$acct" --region "$reg" describe-volumes --volume-ids "$id" >/dev/null 2>&1 && left+=" $id"
	done
	for e in "${AMIS[@]}"; do
		read -r acct reg id <<<"$e"
		[ -n "$(image_state "$acct" "$reg" "$id")" ] && left+=" $id"
	done
	for e in "${INSTS[@]}"; do
		read -r acct reg id <<<"$e"
		st=$(inst_state "$acct" "$reg" "$id")
		[ -z "$st" ] || [ "$st" = terminated ] || left+=" $id($st)"
	done
	if [ -n "$left" ]; then
		printf '   %sFAIL%s still there:%s\n' "$R" "$N" "$left" >&2
		bad
	fi
	if [ "$started_daemon" = 1 ]; then
		printf '   $ ebsimd --home %s --stop\n' "$HOME_DIR"
		ensure_stopped || { echo "   could not stop ebsimd on $HOME_DIR" >&2; bad; }
	fi
	if [ -n "$workdir" ]; then
		local busy=0
		for m in "${MOUNTS[@]}"; do mountpoint -q "$m" && busy=1; done
		if [ "$busy" = 0 ]; then rm -rf "$workdir"; else echo "   $workdir still has a mount: kept" >&2; fi
	fi
	[ "$rc" -eq 0 ] && [ "$fails" -gt 0 ] && rc=1
	if [ "$rc" -eq 0 ]; then
		printf '   %s=> cleaned up: every instance terminated, everything the demo made removed%s\n' "$G" "$N"
		printf '\n%sDemo finished in %s s: every check passed.%s\n' "$G" "$(secs "$T0" "$(now)")" "$N"
	else
		printf '\n%sDemo failed (exit %d, %d failed checks); cleaned up what it made.%s\n' \
			"$R" "$rc" "$fails" "$N" >&2
	fi
	exit "$rc"
}

# ec2_soft ARGS: like ec2 in cleanup, where a failure is counted and reported, not fatal.
ec2_soft() {
	local a=()
	[ "${ACCT:-$OWNER}" = "$OWNER" ] || a+=(--account "$ACCT")
	[ "${REG:-$REGION}" = "$REGION" ] || a+=(--region "$REG")
	printf '   $ %s\n' "$(q ebsim "${a[@]}" "$@")"
	"$EBSIM" "${a[@]}" "$@" >/dev/null 2>"$workdir/err" || {
		sed 's/^/   /' "$workdir/err" >&2
		bad
	}
}

workdir=$(mktemp -d /tmp/ebsim-demo.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers for the files and the tables -------------------------------------------------

# mount_dev DEV DIR: mount, recorded for cleanup; refuses to go on if it did not mount.
mount_dev() {
	mkdir -p "$2"
	printf '   $ mount %s %s\n' "$1" "$2"
	MOUNTS+=("$2")
	mount "$1" "$2"
	mountpoint -q "$2" || die "$2 is not mounted"
}
umount_dir() {
	if mountpoint -q "$1"; then
		printf '   $ umount %s\n' "$1"
		umount "$1"
	fi
}

# write_files DIR SUMS LABEL SIZE_MIB: a text file and a random file, their sha256 in SUMS
# (relative to DIR).
write_files() {
	local dir=$1 sums=$2 label=$3 mib=$4
	mountpoint -q "${5:-$dir}" || die "$dir is not on a mounted file system"
	mkdir -p "$dir"
	printf 'written by the ebsim demo on the %s at %s\n' "$label" "$(date -u +%FT%TZ)" >"$dir/hello.txt"
	head -c $((mib << 20)) /dev/urandom >"$dir/random-${mib}MiB.bin"
	(cd "$dir" && sha256sum hello.txt "random-${mib}MiB.bin") >"$sums"
}

# row WHERE FILE EXPECT RESULT
row() { printf '   %-16s %-34s %-8s %s\n' "$1" "$2" "$3" "$4"; }

# check_files WHERE DIR SUMS EXPECT(kept|gone) [SHOWN_PREFIX]: one row per file.
check_files() {
	local where=$1 dir=$2 sums=$3 expect=$4 prefix=${5:-} sum name got
	while read -r sum name; do
		got=""
		[ -n "$dir" ] && [ -f "$dir/$name" ] && got=$(sha256sum <"$dir/$name" | cut -d' ' -f1)
		if [ "$expect" = kept ]; then
			if [ "$got" = "$sum" ]; then
				row "$where" "$prefix$name" kept "${G}OK${N}   same sha256 ${sum:0:12}…"
			else
				row "$where" "$prefix$name" kept "${R}FAIL${N} ${got:+sha256 ${got:0:12}… differs}${got:-missing}"
				bad
			fi
		else
			if [ -z "$got" ]; then
				row "$where" "$prefix$name" gone "${G}GONE${N} as expected${6:+ ($6)}"
			else
				row "$where" "$prefix$name" gone "${R}FAIL${N} still there"
				bad
			fi
		fi
	done <"$sums"
}

have_fs() { [ -n "$(blkid -p -s TYPE -o value "$1" 2>/dev/null)" ]; }

# local_dev ID DEVICE: the loop device behind one of the instance's devices
local_dev() {
	QUIET=1 ec2 describe-instances --instance-ids "$1"
	jf "inst(d)[\"LocalDevices\"][\"$2\"]" <<<"$OUT"
}

# ---- 0. the daemon ------------------------------------------------------------------------

printf '%sebsim demo%s: home %s, accounts %s (owner), %s, %s; regions %s, %s\n' \
	"$B" "$N" "$HOME_DIR" "$OWNER" "$OTHER" "$THIRD" "$REGION" "$REGION2"
printf '   (every command below runs with EBSIM_ACCOUNT=%s EBSIM_REGION=%s)\n' "$OWNER" "$REGION"
if daemon_running; then
	echo "   ebsimd is already running (pid $(cat "$HOME_DIR/ebsimd.pid" 2>/dev/null || echo '?')): the demo uses it and leaves it running"
else
	started_daemon=1 # before starting: an interrupted start may still leave it running
	printf '   $ ebsimd --home %s\n' "$HOME_DIR"
	"$EBSIMD" --home "$HOME_DIR"
	echo "   started ebsimd: pid $(cat "$HOME_DIR/ebsimd.pid"), FUSE at $HOME_DIR/mnt; the demo stops it at the end"
fi

# ---- 1. launch ----------------------------------------------------------------------------

say "Launch an instance of the base AMI with a data EBS volume and an instance store"
ec2 describe-images --owners amazon
jf '[(i["ImageId"], i["VirtualizationType"], i["Architecture"], i["RootDeviceType"], i["Name"]) for i in d["Images"]]' <<<"$OUT" |
	while IFS=$'\t' read -r id virt arch rdt name; do
		printf '   %-22s %-12s %-7s %-4s %s\n' "$id" "$virt" "$arch" "$rdt" "$name"
	done
BASE=$(jf '[i["ImageId"] for i in d["Images"] if i["VirtualizationType"] == "hvm" and i["Architecture"] == "x86_64" and i["State"] == "available"][:1]' <<<"$OUT")
[ -n "$BASE" ] || die "no amazon HVM x86_64 base AMI (is ebsimd running with --no-base-images?)"
echo "   the HVM one: $BASE"

DATA_BDM='[{"DeviceName":"/dev/sdf","Ebs":{"VolumeSize":1,"VolumeType":"gp3","DeleteOnTermination":false}}]'
# launch ACCOUNT VARNAME ARGS...: run-instances, recording the instance and its volumes;
# the instance ID in VARNAME, the launch time in LAUNCH_S.
LAUNCH_S=""
launch() {
	local acct=$1 var=$2 t1 id
	shift 2
	begin_create instance "$acct" "$REGION"
	t1=$(now)
	ACCT=$acct ec2 run-instances "$@"
	LAUNCH_S=$(secs "$t1" "$(now)")
	id=$(jf 'inst(d)["InstanceId"]' <<<"$OUT")
	INSTS+=("$acct $REGION $id")
	end_create
	for v in $(jf '[m["Ebs"]["VolumeId"] for m in inst(d)["BlockDeviceMappings"] if "Ebs" in m]' <<<"$OUT"); do
		VOLS+=("$acct $REGION $v")
	done
	printf -v "$var" '%s' "$id"
}
# show_devices: the devices of the instance in $OUT
show_devices() {
	jf '[(k, v, next((("EBS " + m["Ebs"]["VolumeId"] + ", DeleteOnTermination " + str(m["Ebs"]["DeleteOnTermination"]).lower()) for m in inst(d)["BlockDeviceMappings"] if m["DeviceName"] == k), "instance store (encrypted, key in memory only)")) for k, v in inst(d).get("LocalDevices", {}).items()]' <<<"$OUT" |
		while IFS=$'\t' read -r devname loop what; do
			printf '   %-14s %-12s %s\n' "$devname" "$loop" "$what"
		done
}

launch "$OWNER" I1 --image-id "$BASE" --instance-type "$ITYPE" --block-device-mappings "$DATA_BDM"
EBS_BASE_LAUNCH=$LAUNCH_S
wait_state "$I1" running || die "$I1 did not reach running"
QUIET=1 ec2 describe-instances --instance-ids "$I1"
printf '   %s  %s  %s, launched in %s s\n' "$I1" "$ITYPE" "$(jf 'inst(d)["State"]["Name"]' <<<"$OUT")" "$EBS_BASE_LAUNCH"
show_devices
ROOT1=$(jf 'inst(d).get("RootMount")' <<<"$OUT")
DATA_DEV=$(jf 'inst(d)["LocalDevices"].get("/dev/sdf")' <<<"$OUT")
EPH_NAME=$(jf '[k for k in inst(d)["LocalDevices"] if k not in [m["DeviceName"] for m in inst(d)["BlockDeviceMappings"]]][:1]' <<<"$OUT")
EPH_DEV=$(jf "inst(d)[\"LocalDevices\"].get(\"$EPH_NAME\")" <<<"$OUT")
[ -n "$ROOT1" ] && mountpoint -q "$ROOT1" || die "the root volume is not mounted at '$ROOT1'"
[ -n "$DATA_DEV" ] && [ -n "$EPH_DEV" ] || die "no data volume or instance store device"
echo "   root file system mounted at $ROOT1"
done_ "launched $I1 ($ITYPE): root + data EBS volumes and an instance store"

# ---- 2. files -----------------------------------------------------------------------------

say "Write files to the root, the data volume and the instance store; record their sha256"
MNT_DATA="$workdir/data" MNT_EPH="$workdir/instance-store"
printf '   $ mkfs.ext4 -q %s    # data volume (/dev/sdf)\n' "$DATA_DEV"
mkfs.ext4 -q "$DATA_DEV"
printf '   $ mkfs.ext4 -q -E nodiscard %s    # instance store (%s)\n' "$EPH_DEV" "$EPH_NAME"
mkfs.ext4 -q -E nodiscard "$EPH_DEV"
mount_dev "$DATA_DEV" "$MNT_DATA"
mount_dev "$EPH_DEV" "$MNT_EPH"
write_files "$ROOT1/opt/ebsim-demo" "$workdir/sums.root" "root volume" 4 "$ROOT1"
write_files "$MNT_DATA" "$workdir/sums.data" "data volume" 8
write_files "$MNT_EPH" "$workdir/sums.eph" "instance store" 8
# syncfs of the demo's own file systems only: a global sync(1) would also wait on every
# other FUSE mount of the host, and one whose daemon is stopped would hang it
printf '   $ sync -f %s %s %s\n' "$ROOT1" "$MNT_DATA" "$MNT_EPH"
sync -f "$ROOT1" "$MNT_DATA" "$MNT_EPH"
row "where" "file" "" "sha256"
while read -r s f; do row "root (EBS)" "/opt/ebsim-demo/$f" "" "${s:0:16}…"; done <"$workdir/sums.root"
while read -r s f; do row "data (EBS)" "$f" "" "${s:0:16}…"; done <"$workdir/sums.data"
while read -r s f; do row "instance store" "$f" "" "${s:0:16}…"; done <"$workdir/sums.eph"
done_ "6 files written and their sha256 recorded"

# ---- 3. reboot, stop/start ----------------------------------------------------------------

# after_table TITLE EPH_EXPECT: remount the data volume and the instance store of I1 and
# print what survived.
after_table() {
	local data_dev eph_dev fails_before=$fails
	data_dev=$(local_dev "$I1" /dev/sdf)
	eph_dev=$(local_dev "$I1" "$EPH_NAME")
	mount_dev "$data_dev" "$MNT_DATA"
	local eph_dir=""
	if have_fs "$eph_dev"; then
		mount_dev "$eph_dev" "$MNT_EPH"
		eph_dir=$MNT_EPH
	else
		echo "   $EPH_NAME ($eph_dev): no file system: a blank device"
	fi
	printf '   %s%s%s\n' "$B" "$1" "$N"
	row "where" "file" "expected" "result"
	check_files "root (EBS)" "$ROOT1/opt/ebsim-demo" "$workdir/sums.root" kept /opt/ebsim-demo/
	check_files "data (EBS)" "$MNT_DATA" "$workdir/sums.data" kept
	check_files "instance store" "$eph_dir" "$workdir/sums.eph" "$2" "" "wiped on stop"
	[ "$fails" = "$fails_before" ]
}

say "Reboot, then stop and start: what survives"
umount_dir "$MNT_DATA"
umount_dir "$MNT_EPH"
ec2 reboot-instances --instance-ids "$I1"
wait_state "$I1" running || die "$I1 did not come back running"
after_table "after reboot-instances:" kept && done_ "reboot: EBS and instance store kept" ||
	echo "   ${R}reboot: a check failed${N}"
umount_dir "$MNT_DATA"
umount_dir "$MNT_EPH"
ec2 stop-instances --instance-ids "$I1"
wait_state "$I1" stopped || die "$I1 did not stop"
echo "   $I1 is stopped: its devices are detached, the instance store destroyed"
ec2 start-instances --instance-ids "$I1"
wait_state "$I1" running || die "$I1 did not start"
after_table "after stop-instances + start-instances:" gone &&
	done_ "stop/start: EBS kept byte for byte, instance store gone as expected" ||
	echo "   ${R}stop/start: a check failed${N}"
umount_dir "$MNT_DATA"
umount_dir "$MNT_EPH"

# ---- 4. create-image ----------------------------------------------------------------------

# wait_image ACCOUNT REGION AMI: poll until available, showing the snapshots' progress.
wait_image() {
	local t1 line last="" st snaps prog
	t1=$(now)
	for _ in $(seq 600); do
		st=$(image_state "$1" "$2" "$3")
		snaps=$(image_snaps "$1" "$2" "$3" | tr '\n' ' ')
		prog=""
		if [ -n "$snaps" ]; then
			# shellcheck disable=SC2086
			prog=$("$EBSIM" --account "$1" --region "$2" describe-snapshots --snapshot-ids $snaps 2>/dev/null |
				jf '", ".join(s["SnapshotId"] + " " + s["Progress"] for s in d["Snapshots"])')
		fi
		line="$st${prog:+   snapshots: $prog}"
		if [ "$line" != "$last" ]; then
			printf '   %6ss  %s\n' "$(secs "$t1" "$(now)")" "$line"
			last=$line
		fi
		case $st in
		available) return 0 ;;
		failed | "") return 1 ;;
		esac
		sleep 0.2
	done
	return 1
}

AMI="" AMI_NAME="ebsim-demo-$(date -u +%Y%m%d-%H%M%S)-$$"
say "Create an image (AMI) of the instance"
if ! "$EBSIM" create-image --help >/dev/null 2>&1; then
	skip "this ebsim has no create-image"
else
	begin_create image "$OWNER" "$REGION"
	ec2 create-image --instance-id "$I1" --name "$AMI_NAME" --description "ebsim demo: $I1 with its data volume"
	AMI=$(jf 'd["ImageId"]' <<<"$OUT")
	AMIS+=("$OWNER $REGION $AMI")
	end_create
	t1=$(now)
	wait_image "$OWNER" "$REGION" "$AMI" || die "$AMI did not become available"
	QUIET=1 ec2 describe-images --image-ids "$AMI"
	jf '[(e["DeviceName"], e["Ebs"]["SnapshotId"] if "Ebs" in e else e.get("VirtualName", ""), str(e["Ebs"]["VolumeSize"]) + " GiB" if "Ebs" in e else "instance store") for e in d["Images"][0]["BlockDeviceMappings"]]' <<<"$OUT" |
		while IFS=$'\t' read -r dev what size; do printf '   %-14s %-24s %s\n' "$dev" "$what" "$size"; done
	done_ "$AMI ($AMI_NAME) available in $(secs "$t1" "$(now)") s"
fi

# ---- 5. launch the image ------------------------------------------------------------------

say "Launch a second instance from the new image: the same files"
I2="" EBS_LAUNCH=""
if [ -z "$AMI" ]; then
	skip "no image from step 4"
else
	launch "$OWNER" I2 --image-id "$AMI" --instance-type t3.micro
	EBS_LAUNCH=$LAUNCH_S
	wait_state "$I2" running || die "$I2 did not reach running"
	QUIET=1 ec2 describe-instances --instance-ids "$I2"
	ROOT2=$(jf 'inst(d).get("RootMount")' <<<"$OUT")
	DATA2=$(jf 'inst(d)["LocalDevices"].get("/dev/sdf")' <<<"$OUT")
	printf '   %s  t3.micro  running, launched in %s s (root restored lazily from the snapshot)\n' "$I2" "$EBS_LAUNCH"
	[ -n "$ROOT2" ] && mountpoint -q "$ROOT2" || die "$I2's root is not mounted"
	f0=$fails
	[ -n "$DATA2" ] && mount_dev "$DATA2" "$workdir/data2"
	row "where" "file" "expected" "result"
	check_files "root (new)" "$ROOT2/opt/ebsim-demo" "$workdir/sums.root" kept /opt/ebsim-demo/
	[ -n "$DATA2" ] && check_files "data (new)" "$workdir/data2" "$workdir/sums.data" kept
	umount_dir "$workdir/data2"
	[ "$fails" = "$f0" ] && done_ "$I2 from $AMI: root and data files have the same sha256" ||
		echo "   ${R}launch from the image: a check failed${N}"
fi

# ---- 6. launch permissions ----------------------------------------------------------------

say "Share the image with account $OTHER; account $THIRD cannot see it"
if [ -z "$AMI" ]; then
	skip "no image from step 4"
elif ! "$EBSIM" modify-image-attribute --help >/dev/null 2>&1; then
	skip "this ebsim has no modify-image-attribute"
else
	f0=$fails
	ec2 modify-image-attribute --image-id "$AMI" --launch-permission "{\"Add\":[{\"UserId\":\"$OTHER\"}]}"
	ec2 describe-image-attribute --image-id "$AMI" --attribute launchPermission
	echo "   launch permissions: $(jf '", ".join(p.get("UserId", p.get("Group", "")) for p in d["LaunchPermissions"])' <<<"$OUT")"
	launch "$OTHER" I3 --image-id "$AMI" --instance-type t3.micro
	wait_state "$I3" running "$OTHER" || die "$I3 did not reach running"
	printf '   %-14s %-8s %s\n' "$OTHER" "OK" "launched $I3 from the shared $AMI"
	printf '   $ %s\n' "$(q ebsim --account "$THIRD" run-instances --image-id "$AMI" --instance-type t3.micro)"
	begin_create instance "$THIRD" "$REGION"
	if out=$("$EBSIM" --account "$THIRD" run-instances --image-id "$AMI" --instance-type t3.micro 2>"$workdir/err"); then
		id=$(jf 'inst(d)["InstanceId"]' <<<"$out")
		INSTS+=("$THIRD $REGION $id")
		printf '   %-14s %s%-8s%s %s\n' "$THIRD" "$R" "FAIL" "$N" "launched $id: the image is not shared with it"
		bad
	else
		rc=$?
		err=$(grep -o 'An error occurred ([A-Za-z.]*)' "$workdir/err" || true)
		if [ "$rc" = 254 ] && [ "$err" = "An error occurred (InvalidAMIID.NotFound)" ]; then
			printf '   %-14s %-8s %s\n' "$THIRD" "refused" "InvalidAMIID.NotFound (exit 254): the image does not exist for it"
		else
			printf '   %-14s %s%-8s%s exit %s: %s\n' "$THIRD" "$R" "FAIL" "$N" "$rc" "$(head -1 "$workdir/err")"
			bad
		fi
	fi
	end_create
	[ "$fails" = "$f0" ] && done_ "$OTHER launched the shared image; $THIRD got InvalidAMIID.NotFound" ||
		echo "   ${R}launch permissions: a check failed${N}"
fi

# ---- 7. copy to another region ------------------------------------------------------------

say "Copy the image to $REGION2"
if [ -z "$AMI" ]; then
	skip "no image from step 4"
elif ! "$EBSIM" copy-image --help >/dev/null 2>&1; then
	skip "this ebsim has no copy-image"
else
	begin_create image "$OWNER" "$REGION2"
	REG=$REGION2 ec2 copy-image --source-region "$REGION" --source-image-id "$AMI" --name "$AMI_NAME"
	AMI_W=$(jf 'd["ImageId"]' <<<"$OUT")
	AMIS+=("$OWNER $REGION2 $AMI_W")
	end_create
	t1=$(now)
	wait_image "$OWNER" "$REGION2" "$AMI_W" || die "$AMI_W did not become available"
	REG=$REGION2 ec2 describe-images --image-ids "$AMI_W"
	jf '[(k, str(d["Images"][0].get(k, ""))) for k in ("ImageId", "Name", "State", "RootDeviceType", "VirtualizationType")] + [("snapshots", " ".join(e["Ebs"]["SnapshotId"] for e in d["Images"][0]["BlockDeviceMappings"] if "Ebs" in e))]' <<<"$OUT" |
		while IFS=$'\t' read -r k v; do printf '   %-20s %s\n' "$k" "$v"; done
	if "$EBSIM" --region "$REGION2" describe-images --image-ids "$AMI" >/dev/null 2>&1; then
		echo "   ${R}FAIL${N} $AMI (the source) is visible in $REGION2"
		bad
	else
		echo "   the source $AMI is not visible in $REGION2: the copy has its own ID and snapshots"
	fi
	done_ "copied to $REGION2 as $AMI_W, available in $(secs "$t1" "$(now)") s"
fi

# ---- 8. an instance-store AMI -------------------------------------------------------------

# register_probe: does the daemon register instance-store images? A location that cannot
# exist is refused either way; UnsupportedOperation says the feature is missing.
register_probe() {
	local err
	err=$("$EBSIM" register-image --name ebsim-demo-probe --image-location \
		"ebsim-demo-probe-$$/none.manifest.xml" 2>&1 >/dev/null || true)
	[[ "$err" != *"(UnsupportedOperation)"* ]]
}

say "Bundle the root's files into an instance-store AMI, register it and launch it"
if ! "$EBSIM_AMI" bundle-image --help >/dev/null 2>&1; then
	skip "this build has no ebsim-ami bundle-image"
elif ! register_probe; then
	skip "this ebsimd cannot register instance-store images (register-image --image-location: UnsupportedOperation)"
elif [ -e "$HOME_DIR/accounts/$OWNER/signing-cert.pem" ]; then
	skip "account $OWNER already has a signing certificate ($HOME_DIR/accounts/$OWNER/signing-cert.pem, left by an interrupted demo?)"
else
	# what the AMI tools create in the home, if it is not there yet, is the demo's to remove
	for m in "$HOME_DIR/regions/$REGION/ec2-key.pem" "$HOME_DIR/regions/$REGION/ec2-cert.pem"; do
		[ -e "$m" ] || made_files+=("$m")
	done
	for m in "$HOME_DIR/regions/$REGION/buckets" "$HOME_DIR/accounts"; do
		[ -e "$m" ] || made_dirs+=("$m")
	done
	BUCKET="ebsim-demo-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
	PREFIX=demo-root
	keys="$workdir/keys" bdir="$workdir/bundle" img="$workdir/root.img"
	mkdir -p "$keys" "$bdir"
	# an image file of the root's files: the whole 1 GiB volume (bundle-vol) would take
	# half a minute each way through FUSE; a small image tells the same story
	used=$(df -m --output=used "$ROOT1" | tail -1 | tr -d ' ')
	size=$((used * 2 + 16 > 64 ? used * 2 + 16 : 64))
	printf '   $ mkfs.ext4 -q -F -b 4096 -L demo-root -d %s %s %sM    # the root files of %s\n' "$ROOT1" "$img" "$size" "$I1"
	mkfs.ext4 -q -F -b 4096 -L demo-root -d "$ROOT1" "$img" "${size}M" >/dev/null
	printf '   $ openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/pk.pem -out %s/cert.pem -days 1 -subj /CN=ebsim-demo\n' "$keys" "$keys"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$keys/pk.pem" -out "$keys/cert.pem" \
		-days 1 -subj /CN=ebsim-demo 2>/dev/null
	t1=$(now)
	printf '   $ %s\n' "$(q ebsim-ami bundle-image -i "$img" -k "$keys/pk.pem" -c "$keys/cert.pem" -u "$OWNER" -r x86_64 -p "$PREFIX" -d "$bdir")"
	"$EBSIM_AMI" bundle-image -i "$img" -k "$keys/pk.pem" -c "$keys/cert.pem" \
		-u "$OWNER" -r x86_64 -p "$PREFIX" -d "$bdir" >"$workdir/out" 2>&1 ||
		{ sed 's/^/   /' "$workdir/out"; die "bundle-image failed"; }
	echo "   bundled in $(secs "$t1" "$(now)") s: $PREFIX.manifest.xml + $(find "$bdir" -name "$PREFIX.part.*" | wc -l) part(s), $(du -sh "$bdir" | cut -f1) in all (signed, AES-128 encrypted)"
	bucket_dir="$HOME_DIR/regions/$REGION/buckets/$BUCKET"
	signing_cert="$HOME_DIR/accounts/$OWNER/signing-cert.pem"
	printf '   $ %s\n' "$(q ebsim-ami upload-bundle -b "$BUCKET" -m "$bdir/$PREFIX.manifest.xml" -c "$keys/cert.pem")"
	"$EBSIM_AMI" upload-bundle -b "$BUCKET" -m "$bdir/$PREFIX.manifest.xml" -c "$keys/cert.pem" >"$workdir/out" 2>&1 ||
		{ sed 's/^/   /' "$workdir/out"; die "upload-bundle failed"; }
	begin_create image "$OWNER" "$REGION"
	ec2 register-image --name "$AMI_NAME-s3" --image-location "$BUCKET/$PREFIX.manifest.xml"
	AMI_S=$(jf 'd["ImageId"]' <<<"$OUT")
	AMIS+=("$OWNER $REGION $AMI_S")
	end_create
	launch "$OWNER" I4 --image-id "$AMI_S" --instance-type "$ITYPE"
	IS_LAUNCH=$LAUNCH_S
	wait_state "$I4" running || die "$I4 did not reach running"
	QUIET=1 ec2 describe-instances --instance-ids "$I4"
	ROOT4=$(jf 'inst(d).get("RootMount")' <<<"$OUT")
	printf '   %s  %s  running, root device type %s, root mounted at %s\n' "$I4" "$ITYPE" \
		"$(jf 'inst(d)["RootDeviceType"]' <<<"$OUT")" "${ROOT4:-(none)}"
	f0=$fails
	row "where" "file" "expected" "result"
	check_files "root (bundle)" "${ROOT4:+$ROOT4/opt/ebsim-demo}" "$workdir/sums.root" kept /opt/ebsim-demo/
	printf '   %-16s %-56s %s\n' "launch" "root" "run-instances" \
		"EBS-backed" "1 GiB volume, restored lazily from its snapshot" "${EBS_LAUNCH:-$EBS_BASE_LAUNCH} s" \
		"instance-store" "$size MiB image, unbundled: verified, decrypted, copied" "$IS_LAUNCH s"
	[ "$fails" = "$f0" ] && done_ "$AMI_S (instance-store) launched as $I4 in $IS_LAUNCH s against ${EBS_LAUNCH:-$EBS_BASE_LAUNCH} s EBS-backed" ||
		echo "   ${R}instance-store AMI: a check failed${N}"
fi

# ---- 9. clean up --------------------------------------------------------------------------

say "Terminate everything and remove what the demo made"
# cleanup() (the EXIT trap) does it, on success as on failure
