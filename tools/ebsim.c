/* SPDX-License-Identifier: MIT */
/* ebsim.c - the ebsim CLI: awscli-style commands sent to ebsimd as one JSON request each. */
/*
 * Design notes
 * ------------
 * Command line.  `ebsim [global options] <command> [parameters]`, parsed in one pass
 * without getopt.  Global options (--home, --region, --account, --debug, --help, --version)
 * are recognised anywhere, as awscli does; every other `--option` is looked up in the
 * command's option table.  Options take `--opt value` or `--opt=value`; list options take
 * the words up to the next `--option` (argparse's nargs='+'), and repeating them appends.
 * The parser does not stop at the first problem: it keeps the first usage error and the
 * unknown words, so that --help and --version win wherever they appear and all unknown
 * words are reported together.
 *
 * The registry.  cli_verbs[] is the one place a command is described: its kebab-case name,
 * its EC2 action, its help text, its output fields and its options.  An option's type
 * decides how its text becomes JSON:
 *   integer   "8" -> 8; text that is not a decimal int64 goes as the raw string
 *   string    as is
 *   boolean   --x -> true, --no-x -> false
 *   list      words -> ["a", "b"]; a word that starts with '[' is read as a JSON array
 *   json      parsed strictly; text that does not parse goes as the raw string
 *   filters   Name=n,Values=a,b (awscli shorthand) or JSON, one filter per word
 *   tags      Key=k,Value=v (awscli shorthand) or JSON, one tag per word
 *   flag      --x -> true; no value and no --no-x form
 *   value     an EC2 attribute value: "t3.small", Value=t3.small (awscli shorthand) or
 *             {"Value": "t3.small"} all become {"Value": "t3.small"}
 * An option whose param is CLI_LOCAL is ebsim's own (initialize-volume --no-wait): it is
 * parsed and shown in the help like the others but never sent to ebsimd.
 * A verb with a prepare hook rewrites its Params before they are sent, for what one option
 * cannot map: run-instances turns --count N or MIN:MAX into MinCount and MaxCount, as
 * awscli does, and the options that take awscli's file://PATH (--user-data,
 * --block-device-mappings, --placement) are replaced by the file's text (JSON options: its
 * value).
 * The CLI does no semantic checks (ctl_proto.h): ebsimd is the one place where rules live,
 * so bad values travel as strings and come back as InvalidParameterValue.  Only shorthand
 * that cannot be parsed at all is refused here, as awscli refuses it (exit 252).
 *
 * Transport and output.  One connection per call: the request line out, one reply line
 * (at most CLI_REPLY_MAX bytes) back.  Result is printed as awscli prints it, which is
 * Python's json.dumps(indent=4, ensure_ascii=False): keys in the daemon's order, "/" not
 * escaped, and an empty object prints nothing.  Exit codes are awscli's (ctl_proto.h).
 * A verb with a finish hook prints the Result itself and picks the exit code: check exits
 * 0, 2 or 3 as qemu-img check does, and initialize-volume, on a terminal, polls
 * DescribeVolumes and draws a progress bar on stderr until the volume is initialized.
 * bench sends DescribeVolumes for its --volume-id and then works locally: it runs fio on
 * the volume's LocalPath with the profiles of bench/bench.py and prints fio's figures.
 *
 * Hostile input.  Arguments may come from anyone, or from a fuzzer: they are never copied
 * into fixed-size buffers, user text echoed in a message is cut to CLI_ECHO_MAX bytes, JSON
 * nesting is bounded by CLI_JSON_DEPTH on the way in and out (so the recursive printer is
 * bounded too), and every allocation is checked; running out of memory exits 255.
 */
#include "common/common.h"
#include "common/ctl_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EBSIM_VERSION "0.1.0"

#define CLI_ECHO_MAX 200	 /* longest piece of user text quoted in a message */
#define CLI_ERR_MAX 1024	 /* room for one usage error message */
#define CLI_UNKNOWN_MAX 32	 /* unknown words listed in one message */
#define CLI_JSON_DEPTH 64	 /* deepest JSON nesting read from the user or the daemon */
#define CLI_REPLY_MAX (64 << 20) /* longest reply line accepted from ebsimd */
#define CLI_REPLY_MAX_TEXT "64 MiB"
#define CLI_PARAM_MAX 64	     /* longest EC2 parameter name */
#define CLI_HELP_WIDTH 79	     /* help text is wrapped to this many columns */
#define CLI_EXIT_NOMEM EXIT_NODAEMON /* awscli exits 255 on any unexpected failure */
#define CLI_EXIT_CORRUPT 2	     /* check: corrupt or missing data (qemu-img check) */
#define CLI_EXIT_LEAKS 3	     /* check: leaked objects only (qemu-img check) */
#define CLI_EXIT_INTERRUPTED 130     /* SIGINT while initialize-volume waits, as awscli */
#define CLI_POLL_NS 500000000L	     /* initialize-volume: DescribeVolumes every 0.5 s */
#define CLI_BAR_WIDTH 40	     /* initialize-volume: cells in the progress bar */

/* --- the command registry ------------------------------------------------------------ */

enum cli_type {
	CLI_INTEGER,
	CLI_STRING,
	CLI_BOOLEAN,
	CLI_LIST,
	CLI_JSON,
	CLI_FILTERS,
	CLI_TAGS,
	CLI_FLAG,
	CLI_VALUE,
};

/* The param of an option that ebsim handles itself and does not send. */
#define CLI_LOCAL ""

struct cli_opt {
	const char *name; /* kebab-case, without the leading "--" */
	enum cli_type type;
	bool required;
	const char *param; /* EC2 parameter name; NULL: the name in PascalCase; CLI_LOCAL */
	const char *help;
};

/* One field of a command's output, for the OUTPUT section of its help. */
struct cli_field {
	int depth; /* 0 for a top-level key, 1 for a key inside it, ... */
	const char *name;
	const char *type;
	const char *help;
};

struct cli;

struct cli_verb {
	const char *name;   /* kebab-case, as typed */
	const char *action; /* the EC2 API action, PascalCase */
	const char *api;    /* whose action it is, for the help; NULL: "EC2 API" */
	const char *summary;
	const char *description;
	const struct cli_opt *opts;	/* ends with an entry whose name is NULL */
	const struct cli_field *output; /* ends with a NULL name; NULL: prints nothing */
	const char *examples;
	/* Rewrites params (the request's Params, built from the options) before they are
	 * sent; returns 0 or an exit code, after printing why. NULL: send them as they are. */
	int (*prepare)(const struct cli *c, struct json_object *params);
	/* Prints the Result and returns the exit code; NULL: print it, exit 0. res stays
	 * the caller's, but the hook may change it. */
	int (*finish)(const struct cli *c, struct json_object *res);
};

static int cli_finish_init(const struct cli *c, struct json_object *res);
static int cli_finish_check(const struct cli *c, struct json_object *res);
static int cli_finish_bench(const struct cli *c, struct json_object *res);
static int cli_prepare_register(const struct cli *c, struct json_object *params);
static int cli_prepare_run(const struct cli *c, struct json_object *params);
static int cli_prepare_modify(const struct cli *c, struct json_object *params);
static int cli_prepare_create_image(const struct cli *c, struct json_object *params);

/* Help text: blank lines separate paragraphs, which are wrapped; a line that starts with a
 * space is printed as it is, less that space; a line that starts with "* " is a bullet with
 * a hanging indent. */

/* The tables below are laid out by hand: clang-format mangles nested initializers. */
/* clang-format off */
#define TAG_FIELDS(d)                                                                          \
	{d, "Tags", "list",                                                                    \
	 "The tags of the resource, ordered by key; absent when it has none."},                \
	    {d + 1, "Key", "string", "The key of the tag."},                                   \
	    {d + 1, "Value", "string", "The value of the tag."}

#define VOLUME_FIELDS(d)                                                                       \
	{d, "VolumeId", "string", "The ID of the volume: vol- and 17 hexadecimal digits."},    \
	    {d, "Size", "integer", "The size of the volume, in GiB."},                         \
	    {d, "SnapshotId", "string",                                                        \
	     "The snapshot the volume was created from, or an empty string."},                 \
	    {d, "AvailabilityZone", "string", "The Availability Zone of the volume."},         \
	    {d, "State", "string",                                                             \
	     "creating, available, in-use, deleting, deleted or error."},                      \
	    {d, "CreateTime", "timestamp",                                                     \
	     "When the volume was created, ISO 8601 in UTC, e.g. 2026-11-28T17:44:59.000Z."},  \
	    {d, "VolumeType", "string", "gp2, gp3, io1, io2, st1, sc1 or standard."},          \
	    {d, "Iops", "integer",                                                             \
	     "The provisioned IOPS (io1, io2, gp3), or the baseline IOPS of a gp2 volume."},   \
	    {d, "Throughput", "integer", "The provisioned throughput of a gp3 volume, MiB/s."}, \
	    {d, "Encrypted", "boolean", "Whether the volume is encrypted."},                   \
	    {d, "KmsKeyId", "string",                                                          \
	     "The key ID given when the volume was created, if any (encrypted volumes)."},     \
	    {d, "MultiAttachEnabled", "boolean", "Whether Multi-Attach is enabled."},          \
	    {d, "Attachments", "list", "The instances the volume is attached to."},            \
	    {d + 1, "InstanceId", "string", "The ID of the instance."},                        \
	    {d + 1, "Device", "string", "The device name, e.g. /dev/sdf."},                    \
	    {d + 1, "State", "string", "attaching, attached, detaching or detached."},         \
	    {d + 1, "AttachTime", "timestamp", "When the attachment started."},                \
	    {d + 1, "DeleteOnTermination", "boolean",                                          \
	     "Whether the volume is deleted when the instance terminates."},                   \
	    {d + 1, "VolumeId", "string", "The ID of the volume."},                            \
	    {d, "LocalPath", "string",                                                         \
	     "ebsim only: the volume as a file on this host, HOME/mnt/<volume-id> on "         \
	     "ebsimd's FUSE file system. Reads and writes go to the volume: attach it with "   \
	     "losetup --direct-io=on, or hand it to qemu (-drive "                             \
	     "file=...,format=raw,cache=none) or fio."},                                       \
	    {d, "InitializationStatusDetails", "structure",                                    \
	     "Present while a volume restored from a snapshot still reads some of its blocks " \
	     "from the snapshot, and while initialize-volume runs on it."},                    \
	    {d + 1, "InitializationType", "string", "default."},                               \
	    {d + 1, "Progress", "integer",                                                     \
	     "The share of the snapshot's blocks already in the volume, in percent."},         \
	    {d + 1, "State", "string",                                                         \
	     "lazy (blocks are fetched when first touched), initializing (initialize-volume "  \
	     "is fetching the rest) or completed."},                                           \
	    {d + 1, "EstimatedTimeToCompleteInSeconds", "integer",                             \
	     "While initializing: the estimated seconds left."},                               \
	    TAG_FIELDS(d)

#define SNAPSHOT_FIELDS(d)                                                                     \
	{d, "Description", "string", "The description of the snapshot, or an empty string."},  \
	    {d, "Encrypted", "boolean",                                                        \
	     "Whether the snapshot is encrypted: it is when its volume was."},                 \
	    {d, "OwnerId", "string", "The account that owns the snapshot."},                   \
	    {d, "Progress", "string",                                                          \
	     "How much of the data is copied, in percent with a % sign, e.g. \"45%\"; "        \
	     "\"100%\" once completed."},                                                      \
	    {d, "SnapshotId", "string", "The ID of the snapshot: snap- and 17 hexadecimal "    \
	     "digits."},                                                                       \
	    {d, "StartTime", "timestamp",                                                      \
	     "When the snapshot was started, ISO 8601 in UTC. Its data is the volume's data "  \
	     "at that moment."},                                                               \
	    {d, "State", "string",                                                             \
	     "pending (the data is being copied), completed (the snapshot can be used) or "    \
	     "error (see StateMessage)."},                                                     \
	    {d, "StateMessage", "string", "Why the snapshot is in the error state."},          \
	    {d, "VolumeId", "string",                                                          \
	     "The volume the snapshot was taken from (for a copy: the source's volume)."},     \
	    {d, "VolumeSize", "integer", "The size of that volume, in GiB."},                  \
	    {d, "StorageTier", "string", "standard."},                                         \
	    {d, "DataSize", "integer",                                                         \
	     "ebsim only: the bytes of data this snapshot added to the region's store; data "  \
	     "it shares with its parent or with any other snapshot is not counted. For a "     \
	     "copy, the bytes copied into the region. 0 while pending."},                      \
	    {d, "ParentSnapshotId", "string",                                                  \
	     "ebsim only: for an incremental snapshot, the earlier snapshot of the same "      \
	     "volume it builds on; absent for a full snapshot."},                              \
	    {d, "SourceSnapshot", "string",                                                    \
	     "ebsim only: for a copy, where it was copied from, as <region>/<snapshot-id>."},  \
	    TAG_FIELDS(d)

#define DIRECT_API_HELP                                                                        \
	"This is an action of the EBS direct API (in awscli, aws ebs ...). It sees a "         \
	"snapshot as a sequence of 512 KiB blocks: block i holds the bytes from i * 524288 "   \
	"up to (i + 1) * 524288 of the volume, so BlockIndex = offset / 524288. A block "      \
	"never written, or written with zeros only, holds no data: it reads as zeros, and "    \
	"list-snapshot-blocks does not list it."

#define PAGING_OPTS(what)                                                                      \
	{"max-results", CLI_INTEGER, false, NULL,                                              \
	 "The largest number of " what " in one reply, 100 to 10000 (the default). The "       \
	 "reply carries a NextToken when more remain."},                                       \
	    {"next-token", CLI_STRING, false, NULL,                                            \
	     "The NextToken of the previous reply, to get the next page."},                    \
	    {"starting-block-index", CLI_INTEGER, false, NULL,                                 \
	     "The block index to start at: blocks before it are not listed. Default 0."}

#define BLOCKS_TAIL_FIELDS                                                                     \
	{0, "VolumeSize", "integer", "The size of the snapshot's volume, in GiB."},            \
	    {0, "BlockSize", "integer", "The size of a block, in bytes: always 524288."},      \
	    {0, "NextToken", "string",                                                         \
	     "The token to pass to --next-token for the next page; absent on the last page."}

#define TAG_SPEC_HELP                                                                          \
	"A key is 1 to 128 characters and may not start with aws:; a value is 0 to 256 "       \
	"characters; keys are unique and a resource has at most 50 tags. ebsimd checks them "  \
	"before it creates anything."

#define VOLUME_TYPE_HELP                                                                       \
	"The volume type: gp2 (General Purpose SSD), gp3 (General Purpose SSD with "           \
	"provisioned IOPS and throughput), io1 or io2 (Provisioned IOPS SSD), st1 (Throughput "  \
	"Optimized HDD), sc1 (Cold HDD) or standard (Magnetic)."

#define EBS_MAPPING_FIELDS(d)                                                                  \
	{d, "BlockDeviceMappings", "list", "The block device mappings, each as follows."},     \
	    {d + 1, "DeviceName", "string", "The device name, e.g. /dev/xvda."}

#define IMAGE_FIELDS(d)                                                                        \
	{d, "Architecture", "string", "x86_64, arm64 or i386."},                               \
	    {d, "CreationDate", "timestamp", "When the image was registered, ISO 8601 in UTC."}, \
	    {d, "ImageId", "string", "The ID of the image: ami- and 17 hexadecimal digits."},  \
	    {d, "ImageLocation", "string", "<owner account>/<image name>."},                   \
	    {d, "ImageType", "string", "machine."},                                            \
	    {d, "Public", "boolean", "Whether every account may launch the image."},           \
	    {d, "OwnerId", "string", "The account that owns the image."},                      \
	    {d, "PlatformDetails", "string", "Linux/UNIX."},                                   \
	    {d, "UsageOperation", "string", "RunInstances."},                                  \
	    {d, "State", "string", "pending (its snapshots are being made), available or failed."}, \
	    {d, "StateReason", "structure", "When failed: {Code, Message}: why."},            \
	    {d, "ImageOwnerAlias", "string", "amazon, for Amazon's base images."},             \
	    {d, "SourceInstanceId", "string", "create-image: the instance it was made from."}, \
	    {d, "SourceImageId", "string", "copy-image: the image it was copied from."},       \
	    EBS_MAPPING_FIELDS(d),                                                             \
	    {d + 1, "Ebs", "structure", "An EBS volume, created for each instance."},          \
	    {d + 2, "SnapshotId", "string", "The snapshot it is restored from, if any."},      \
	    {d + 2, "VolumeSize", "integer", "Its size, in GiB."},                             \
	    {d + 2, "Encrypted", "boolean", "Whether it is encrypted (as its snapshot)."},     \
	    {d + 2, "DeleteOnTermination", "boolean",                                          \
	     "Whether it is deleted when its instance terminates (default true)."},            \
	    {d + 2, "VolumeType", "string", "Its volume type (default gp2)."},                 \
	    {d + 1, "VirtualName", "string",                                                   \
	     "ephemeralN: the instance type's Nth instance-store volume."},                    \
	    {d + 1, "NoDevice", "string", "Present (empty) when the device is suppressed."},  \
	    {d, "Description", "string", "The description, or an empty string."},              \
	    {d, "Name", "string", "The name of the image."},                                   \
	    {d, "RootDeviceName", "string", "The root device, e.g. /dev/xvda."},               \
	    {d, "RootDeviceType", "string",                                                    \
	     "ebs: the root device is an EBS volume restored from a snapshot."},               \
	    {d, "VirtualizationType", "string", "hvm or paravirtual."},                        \
	    {d, "Hypervisor", "string", "xen."}

#define INSTANCE_FIELDS(d)                                                                     \
	{d, "InstanceId", "string", "The ID of the instance: i- and 17 hexadecimal digits."},  \
	    {d, "ImageId", "string", "The image it was launched from."},                       \
	    {d, "InstanceType", "string", "The instance type, e.g. t3.micro."},                \
	    {d, "LaunchTime", "timestamp", "When it was launched, ISO 8601 in UTC."},          \
	    {d, "Placement", "structure", "Where it runs."},                                   \
	    {d + 1, "AvailabilityZone", "string", "Its Availability Zone, e.g. us-east-1a."},  \
	    {d, "Architecture", "string", "x86_64, arm64 or i386: the image's."},              \
	    {d, "VirtualizationType", "string", "hvm or paravirtual: the image's."},           \
	    {d, "RootDeviceType", "string", "ebs or instance-store."},                         \
	    {d, "RootDeviceName", "string", "The root device, e.g. /dev/xvda."},               \
	    {d, "Hypervisor", "string", "xen."},                                               \
	    {d, "OwnerId", "string", "The account that owns the instance."},                   \
	    EBS_MAPPING_FIELDS(d),                                                             \
	    {d + 1, "Ebs", "structure", "The EBS volume attached there."},                     \
	    {d + 2, "AttachTime", "timestamp", "When it was attached."},                       \
	    {d + 2, "DeleteOnTermination", "boolean",                                          \
	     "Whether it is deleted when the instance terminates."},                           \
	    {d + 2, "Status", "string", "attached."},                                          \
	    {d + 2, "VolumeId", "string", "The ID of the volume."},                            \
	    {d, "State", "structure", "The state of the instance."},                           \
	    {d + 1, "Code", "integer",                                                         \
	     "0 pending, 16 running, 32 shutting-down, 48 terminated, 64 stopping, 80 "        \
	     "stopped."},                                                                      \
	    {d + 1, "Name", "string", "The name of the state."},                               \
	    {d, "StateTransitionReason", "string",                                             \
	     "Why it last changed state, or an empty string."},                                \
	    {d, "StateReason", "structure",                                                    \
	     "For a stopped or terminated instance: why. Code Client.UserInitiatedShutdown "   \
	     "after stop-instances or terminate-instances; Server.InternalError when ebsimd "  \
	     "stopped or restarted while the instance ran (its instance store was lost)."},    \
	    {d + 1, "Code", "string", "The reason code."},                                     \
	    {d + 1, "Message", "string", "The reason, in words."},                             \
	    {d, "KernelId", "string",                                                          \
	     "The kernel (run-instances --kernel-id, else the image's; or as modified)."},    \
	    {d, "RamdiskId", "string",                                                         \
	     "The RAM disk (run-instances --ramdisk-id, else the image's; or as modified)."}, \
	    {d, "LocalDevices", "map",                                                         \
	     "ebsim only, while the instance runs: each device name (/dev/xvda) and the "      \
	     "loop device that is it on this host (/dev/loop3). "                              \
	     "HOME/instances/<id>/dev/<name> links to the same."},                             \
	    {d, "RootMount", "string",                                                         \
	     "ebsim only, while the instance runs: where its root file system is mounted, "    \
	     "HOME/instances/<id>/root; absent when the root volume holds no ext2/3/4 file "   \
	     "system."}

#define STATE_FIELDS(d)                                                                        \
	{d + 1, "Code", "integer",                                                             \
	 "0 pending, 16 running, 32 shutting-down, 48 terminated, 64 stopping, 80 stopped."},  \
	    {d + 1, "Name", "string", "The name of the state."}

#define STATE_CHANGE_FIELDS(d)                                                                 \
	{d, "CurrentState", "structure", "The state the instance moves to."},                  \
	    STATE_FIELDS(d),                                                                   \
	    {d, "InstanceId", "string", "The ID of the instance."},                            \
	    {d, "PreviousState", "structure", "The state it was in."},                         \
	    STATE_FIELDS(d)

#define ATTACHMENT_FIELDS(d)                                                                   \
	{d, "AttachTime", "timestamp", "When the volume was attached."},                       \
	    {d, "Device", "string", "The device name."},                                       \
	    {d, "InstanceId", "string", "The ID of the instance."},                            \
	    {d, "State", "string", "attaching or detaching."},                                 \
	    {d, "VolumeId", "string", "The ID of the volume."}

static const struct cli_verb cli_verbs[] = {
	{
		.name = "create-volume",
		.action = "CreateVolume",
		.summary = "Creates an EBS volume, empty or restored from a snapshot.",
		.description =
			"Creates an EBS volume: a block device that lives until it is deleted, "
			"independently of any instance. ebsimd keeps it as a sparse file under its "
			"home directory, so a new volume uses no space until it is written and "
			"reads as zeros where it was never written.\n"
			"\n"
			"Give --size to create an empty volume, --snapshot-id to restore one from a "
			"snapshot, or both to restore a snapshot into a larger volume. A restored "
			"volume can be used at once: each block is read from the snapshot the first "
			"time it is touched and kept in the volume from then on (EBS calls this lazy "
			"loading).\n"
			"\n"
			"The volume type defaults to gp2. --iops applies to io1, io2 and gp3 and is "
			"required for io1 and io2; --throughput applies to gp3 only. ebsimd checks "
			"the size, IOPS and throughput against the limits EC2 sets for each type and "
			"answers InvalidParameterValue when they do not fit.\n"
			"\n"
			"--encrypted encrypts the volume with AES-256-XTS under a key of its own, "
			"which is stored wrapped by the master key of the ebsim home. A volume "
			"restored from an encrypted snapshot is always encrypted.\n"
			"\n"
			"The volume belongs to the account and region of the request (--account, "
			"--region). Check its State with describe-volumes before using it.",
		.opts = (const struct cli_opt[]){
			{"size", CLI_INTEGER, false, NULL,
			 "The size of the volume, in GiB. Required unless --snapshot-id is given; "
			 "with a snapshot it defaults to the snapshot's size and may not be "
			 "smaller."},
			{"volume-type", CLI_STRING, false, NULL,
			 VOLUME_TYPE_HELP " The default is gp2."},
			{"iops", CLI_INTEGER, false, NULL,
			 "The I/O operations per second to provision. Required for io1 and io2, "
			 "optional for gp3 (EC2's baseline of 3,000 when omitted), refused for the "
			 "other types."},
			{"throughput", CLI_INTEGER, false, NULL,
			 "The throughput to provision, in MiB/s, for gp3 volumes only (EC2's "
			 "baseline of 125 when omitted)."},
			{"encrypted", CLI_BOOLEAN, false, NULL,
			 "Whether to encrypt the volume. A volume restored from an encrypted "
			 "snapshot is encrypted whatever this says."},
			{"availability-zone", CLI_STRING, false, NULL,
			 "The Availability Zone in which to create the volume, for example "
			 "us-east-1a. It must belong to the region of the request; an instance can "
			 "attach only the volumes of its own zone."},
			{"snapshot-id", CLI_STRING, false, NULL,
			 "The snapshot from which to restore the volume."},
			{"kms-key-id", CLI_STRING, false, NULL,
			 "The KMS key to encrypt the volume with. ebsim has no KMS: the value is "
			 "accepted so that awscli scripts run unchanged and is passed to ebsimd as "
			 "KmsKeyId; the volume key is wrapped by the home's master key either way."},
			{"tag-specifications", CLI_JSON, false, NULL,
			 "Tags to put on the new volume, as JSON, for example "
			 "[{\"ResourceType\":\"volume\",\"Tags\":[{\"Key\":\"Name\",\"Value\":\"data\"}]}]. "
			 "awscli's shorthand syntax is not accepted for this option. The ResourceType "
			 "must be volume. " TAG_SPEC_HELP},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			VOLUME_FIELDS(0),
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To create an empty 8 GiB gp3 volume\n"
			"\n"
			"    ebsim create-volume --size 8 --volume-type gp3 \\\n"
			"        --availability-zone us-east-1a\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"VolumeId\": \"vol-0123456789abcdef0\",\n"
			"        \"Size\": 8,\n"
			"        \"SnapshotId\": \"\",\n"
			"        \"AvailabilityZone\": \"us-east-1a\",\n"
			"        \"State\": \"creating\",\n"
			"        \"CreateTime\": \"2026-11-28T17:44:59.000Z\",\n"
			"        \"VolumeType\": \"gp3\",\n"
			"        \"Iops\": 3000,\n"
			"        \"Throughput\": 125,\n"
			"        \"Encrypted\": false,\n"
			"        \"MultiAttachEnabled\": false,\n"
			"        \"LocalPath\": \"/var/lib/ebsim/mnt/vol-0123456789abcdef0\"\n"
			"    }\n"
			"\n"
			"To restore an encrypted snapshot into a larger, tagged volume\n"
			"\n"
			"    ebsim create-volume --snapshot-id snap-0123456789abcdef0 --size 100 \\\n"
			"        --availability-zone us-east-1a --encrypted \\\n"
			"        --tag-specifications '[{\"ResourceType\":\"volume\",\n"
			"            \"Tags\":[{\"Key\":\"Name\",\"Value\":\"restored\"}]}]'\n"
			"\n"
			"To create an io2 volume with 4,000 provisioned IOPS\n"
			"\n"
			"    ebsim create-volume --volume-type io2 --iops 4000 --size 100 \\\n"
			"        --availability-zone us-east-1a\n",
	},
	{
		.name = "describe-volumes",
		.action = "DescribeVolumes",
		.summary = "Describes volumes: all of them, the ones named, or those matching filters.",
		.description =
			"Describes the volumes of the account in the region of the request: all of "
			"them, the ones named by --volume-ids, or the ones that match --filters. If "
			"a volume named by --volume-ids does not exist, the whole call fails with "
			"InvalidVolume.NotFound.\n"
			"\n"
			"A volume is listed when it matches every filter, and it matches a filter "
			"when it matches any of the filter's values. The filter names are EC2's:\n"
			"\n"
			"* attachment.attach-time, attachment.delete-on-termination, "
			"attachment.device, attachment.instance-id, attachment.status (attaching | "
			"attached | detaching)\n"
			"* availability-zone, create-time, encrypted, multi-attach-enabled, size (in "
			"GiB), snapshot-id, volume-id, volume-type\n"
			"* status (creating | available | in-use | deleting | deleted | error)\n"
			"* tag:<key> (the value of the tag <key>), tag-key (the volume has a tag with "
			"this key)\n"
			"\n"
			"Unlike awscli, ebsim does not fetch the pages of a long answer for you. With "
			"--max-results the reply holds at most that many volumes, and a NextToken "
			"when more remain: pass it back with --next-token to get the next page. "
			"--max-results cannot be combined with --volume-ids.",
		.opts = (const struct cli_opt[]){
			{"volume-ids", CLI_LIST, false, NULL,
			 "The IDs of the volumes to describe, separated by spaces."},
			{"filters", CLI_FILTERS, false, NULL,
			 "Filters, each in awscli's shorthand, Name=string,Values=string,string, "
			 "or in JSON, [{\"Name\":\"string\",\"Values\":[\"string\",...]},...]. "
			 "Give several words, or repeat --filters, to combine filters."},
			{"max-results", CLI_INTEGER, false, NULL,
			 "The largest number of volumes in one reply (EC2 accepts 5 to 500). The "
			 "reply carries a NextToken when more volumes remain."},
			{"next-token", CLI_STRING, false, NULL,
			 "The NextToken of the previous reply, to get the next page."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Volumes", "list", "The volumes, each described as follows."},
			VOLUME_FIELDS(1),
			{0, "NextToken", "string",
			 "The token to pass to --next-token for the next page; absent on the last "
			 "page."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To describe every volume\n"
			"\n"
			"    ebsim describe-volumes\n"
			"\n"
			"To describe two volumes\n"
			"\n"
			"    ebsim describe-volumes --volume-ids vol-0123456789abcdef0 \\\n"
			"        vol-0fedcba9876543210\n"
			"\n"
			"To list the volumes that are attached or available, in one zone\n"
			"\n"
			"    ebsim describe-volumes --filters Name=status,Values=in-use,available \\\n"
			"        Name=availability-zone,Values=us-east-1a\n"
			"\n"
			"The same with JSON\n"
			"\n"
			"    ebsim describe-volumes --filters '[{\"Name\":\"status\",\n"
			"        \"Values\":[\"in-use\",\"available\"]},\n"
			"        {\"Name\":\"availability-zone\",\"Values\":[\"us-east-1a\"]}]'\n"
			"\n"
			"To find the volumes tagged Name=data\n"
			"\n"
			"    ebsim describe-volumes --filters Name=tag:Name,Values=data\n",
	},
	{
		.name = "delete-volume",
		.action = "DeleteVolume",
		.summary = "Deletes a volume that is not attached to an instance.",
		.description =
			"Deletes a volume and its data; there is no undo. The volume must be in the "
			"available state, attached to no instance: detach it first, or the call "
			"fails with VolumeInUse. Snapshots taken from the volume are not affected.\n"
			"\n"
			"On success nothing is printed.",
		.opts = (const struct cli_opt[]){
			{"volume-id", CLI_STRING, true, NULL, "The ID of the volume to delete."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = NULL,
		.examples = "To delete a volume\n"
			    "\n"
			    "    ebsim delete-volume --volume-id vol-0123456789abcdef0\n"
			    "\n"
			    "This prints nothing when it succeeds.\n",
	},
	{
		.name = "modify-volume",
		.action = "ModifyVolume",
		.summary = "Changes the size, type, IOPS or throughput of a volume.",
		.description =
			"Changes the size, the type, the IOPS or the throughput of a volume, whether "
			"or not it is attached, without stopping its instance. Give only what should "
			"change; the rest is kept. The new values must fit the limits of the "
			"(new) volume type, as for create-volume.\n"
			"\n"
			"A volume can grow but not shrink. After growing it, grow the partition and "
			"the file system on it to use the new space (for example with growpart and "
			"resize2fs, or xfs_growfs).\n"
			"\n"
			"The reply describes the modification. Its ModificationState goes from "
			"modifying to optimizing to completed, or to failed; the new size can be "
			"used from the optimizing state on.",
		.opts = (const struct cli_opt[]){
			{"volume-id", CLI_STRING, true, NULL, "The ID of the volume to modify."},
			{"size", CLI_INTEGER, false, NULL,
			 "The new size, in GiB; not smaller than the current size."},
			{"volume-type", CLI_STRING, false, NULL, VOLUME_TYPE_HELP},
			{"iops", CLI_INTEGER, false, NULL,
			 "The new provisioned IOPS, for io1, io2 and gp3 volumes."},
			{"throughput", CLI_INTEGER, false, NULL,
			 "The new provisioned throughput, in MiB/s, for gp3 volumes."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "VolumeModification", "structure", "The modification."},
			{1, "VolumeId", "string", "The ID of the volume."},
			{1, "ModificationState", "string",
			 "modifying, optimizing, completed or failed."},
			{1, "StatusMessage", "string", "Why the modification failed, if it did."},
			{1, "TargetSize", "integer", "The size being moved to, in GiB."},
			{1, "TargetIops", "integer", "The IOPS being moved to."},
			{1, "TargetVolumeType", "string", "The volume type being moved to."},
			{1, "TargetThroughput", "integer", "The throughput being moved to, MiB/s."},
			{1, "OriginalSize", "integer", "The size before the modification, in GiB."},
			{1, "OriginalIops", "integer", "The IOPS before the modification."},
			{1, "OriginalVolumeType", "string", "The type before the modification."},
			{1, "OriginalThroughput", "integer",
			 "The throughput before the modification, MiB/s."},
			{1, "Progress", "integer", "How far the modification is, in percent."},
			{1, "StartTime", "timestamp", "When the modification started."},
			{1, "EndTime", "timestamp", "When the modification completed."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To grow a volume to 200 GiB and make it gp3\n"
			"\n"
			"    ebsim modify-volume --volume-id vol-0123456789abcdef0 --size 200 \\\n"
			"        --volume-type gp3\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"VolumeModification\": {\n"
			"            \"VolumeId\": \"vol-0123456789abcdef0\",\n"
			"            \"ModificationState\": \"modifying\",\n"
			"            \"TargetSize\": 200,\n"
			"            \"TargetIops\": 3000,\n"
			"            \"TargetVolumeType\": \"gp3\",\n"
			"            \"TargetThroughput\": 125,\n"
			"            \"OriginalSize\": 100,\n"
			"            \"OriginalIops\": 300,\n"
			"            \"OriginalVolumeType\": \"gp2\",\n"
			"            \"Progress\": 0,\n"
			"            \"StartTime\": \"2026-11-28T17:44:59.000Z\"\n"
			"        }\n"
			"    }\n",
	},
	{
		.name = "initialize-volume",
		.action = "InitializeVolume",
		.summary = "Fetches every block of a restored volume from its snapshot now.",
		.description =
			"A volume restored from a snapshot is usable at once, but each block is read "
			"from the snapshot the first time it is touched (lazy loading), so the first "
			"pass over the volume is slower than the next ones. On EC2 this is avoided by "
			"initializing the volume: reading every block once, e.g. with fio or dd, or "
			"with a provisioned volume initialization rate. initialize-volume asks ebsimd "
			"to do it: ebsimd starts copying, in the background, every chunk that the "
			"volume still reads from its snapshot, and replies at once. The volume stays "
			"usable meanwhile; blocks written in the meantime are not overwritten. Once "
			"completed, the volume no longer depends on the snapshot.\n"
			"\n"
			"The reply has the volume's InitializationStatusDetails, which describe-volumes "
			"shows too until the initialization completes. Calling initialize-volume again "
			"while it runs just reports the progress; for a volume that was not restored "
			"from a snapshot, or is already initialized, the reply says completed, 100.\n"
			"\n"
			"When standard error is a terminal, ebsim then waits: it asks describe-volumes "
			"every 0.5 s and draws a progress bar on standard error,\n"
			"\n"
			" [################........................]  40%  ETA 12s\n"
			"\n"
			"until Progress reaches 100 or the details disappear, then prints the reply "
			"with the last InitializationStatusDetails. It also stops waiting, with a "
			"note, when the initialization stops without completing (State is no longer "
			"initializing). Interrupting the wait (Ctrl-C) exits 130 and does not stop "
			"the initialization. When standard error is not a terminal, or with "
			"--no-wait, ebsim prints the first reply and returns at once: follow the "
			"progress with describe-volumes.",
		.opts = (const struct cli_opt[]){
			{"volume-id", CLI_STRING, true, NULL, "The ID of the volume to initialize."},
			{"no-wait", CLI_FLAG, false, CLI_LOCAL,
			 "Print the first reply and return at once, even on a terminal."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "VolumeId", "string", "The ID of the volume."},
			{0, "InitializationStatusDetails", "structure",
			 "How far the initialization is."},
			{1, "InitializationType", "string", "default."},
			{1, "Progress", "integer",
			 "The share of the snapshot's blocks already in the volume, in percent."},
			{1, "State", "string",
			 "initializing (the copy runs), completed, or lazy (some blocks still "
			 "come from the snapshot and nothing is copying them: the initialization "
			 "stopped, e.g. because ebsimd was restarted; run initialize-volume "
			 "again)."},
			{1, "EstimatedTimeToCompleteInSeconds", "integer",
			 "While initializing, once some progress is made: the estimated seconds "
			 "left."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To initialize a restored volume without waiting\n"
			"\n"
			"    ebsim initialize-volume --volume-id vol-0123456789abcdef0 --no-wait\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"VolumeId\": \"vol-0123456789abcdef0\",\n"
			"        \"InitializationStatusDetails\": {\n"
			"            \"InitializationType\": \"default\",\n"
			"            \"Progress\": 3,\n"
			"            \"State\": \"initializing\"\n"
			"        }\n"
			"    }\n"
			"\n"
			"To follow its progress\n"
			"\n"
			"    ebsim describe-volumes --volume-ids vol-0123456789abcdef0 |\n"
			"        jq .Volumes[0].InitializationStatusDetails\n"
			"\n"
			"To initialize a volume and wait, with a progress bar, in a terminal\n"
			"\n"
			"    ebsim initialize-volume --volume-id vol-0123456789abcdef0\n",
		.finish = cli_finish_init,
	},
	{
		.name = "create-snapshot",
		.action = "CreateSnapshot",
		.summary = "Takes a point-in-time snapshot of a volume.",
		.description =
			"Takes a snapshot of a volume: a copy of its data at the moment of the call, "
			"kept in the snapshot store of the region, from which volumes can be restored "
			"(create-volume --snapshot-id) in any zone of the region, or which can be "
			"copied to another region (copy-snapshot).\n"
			"\n"
			"The reply comes at once, with State pending; ebsimd copies the data in the "
			"background. The volume can be used meanwhile, attached or not: writes made "
			"after the call are not in the snapshot. Poll describe-snapshots until State "
			"is completed before using the snapshot; if the copy fails, State becomes "
			"error. A volume has at most one pending snapshot: another create-snapshot "
			"fails with SnapshotCreationPerVolumeRateExceeded until it completes.\n"
			"\n"
			"The first snapshot of a volume is full; the next ones are incremental: only "
			"the chunks written since the previous snapshot (its ParentSnapshotId) are "
			"copied, and data that any snapshot of the region already holds is stored "
			"once. Chunks that are all zeros are not stored. Every snapshot is complete "
			"by itself, so deleting an older one does not harm the newer ones.\n"
			"\n"
			"A snapshot of an encrypted volume is encrypted, with the volume's key; "
			"volumes restored from it are encrypted too.\n"
			"\n"
			"A snapshot holds what the volume holds at that moment, not what a file "
			"system on it keeps in memory: for a consistent file system, freeze it "
			"(fsfreeze -f) or unmount it while calling create-snapshot.",
		.opts = (const struct cli_opt[]){
			{"volume-id", CLI_STRING, true, NULL, "The ID of the volume to snapshot."},
			{"description", CLI_STRING, false, NULL,
			 "A description of the snapshot, up to 255 characters."},
			{"tag-specifications", CLI_JSON, false, NULL,
			 "Tags to put on the new snapshot, as JSON, for example "
			 "[{\"ResourceType\":\"snapshot\",\"Tags\":[{\"Key\":\"Name\","
			 "\"Value\":\"nightly\"}]}]. awscli's shorthand syntax is not accepted for "
			 "this option. The ResourceType must be snapshot. " TAG_SPEC_HELP},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			SNAPSHOT_FIELDS(0),
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To snapshot a volume\n"
			"\n"
			"    ebsim create-snapshot --volume-id vol-0123456789abcdef0 \\\n"
			"        --description 'before the upgrade'\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"Description\": \"before the upgrade\",\n"
			"        \"Encrypted\": false,\n"
			"        \"OwnerId\": \"123456789012\",\n"
			"        \"Progress\": \"0%\",\n"
			"        \"SnapshotId\": \"snap-0123456789abcdef0\",\n"
			"        \"StartTime\": \"2026-11-28T17:44:59.000Z\",\n"
			"        \"State\": \"pending\",\n"
			"        \"VolumeId\": \"vol-0123456789abcdef0\",\n"
			"        \"VolumeSize\": 8,\n"
			"        \"StorageTier\": \"standard\",\n"
			"        \"DataSize\": 0\n"
			"    }\n"
			"\n"
			"To snapshot a mounted file system consistently\n"
			"\n"
			"    fsfreeze -f /mnt/data\n"
			"    ebsim create-snapshot --volume-id vol-0123456789abcdef0\n"
			"    fsfreeze -u /mnt/data\n",
	},
	{
		.name = "describe-snapshots",
		.action = "DescribeSnapshots",
		.summary = "Describes snapshots: all of them, the ones named, or those matching filters.",
		.description =
			"Describes the snapshots of the account in the region of the request: all of "
			"them, the ones named by --snapshot-ids, or the ones that match --owner-ids, "
			"--restorable-by-user-ids and --filters. If a snapshot named by "
			"--snapshot-ids does not exist, the whole call fails with "
			"InvalidSnapshot.NotFound.\n"
			"\n"
			"ebsim does not share snapshots between accounts: an account sees, and can "
			"restore, its own snapshots only. So --owner-ids self (or the account's own "
			"ID) selects all of them and another account's ID selects none; the same "
			"holds for --restorable-by-user-ids.\n"
			"\n"
			"A snapshot is listed when it matches every filter, and it matches a filter "
			"when it matches any of the filter's values. The filter names are EC2's:\n"
			"\n"
			"* description, encrypted, owner-id, progress, snapshot-id, start-time, "
			"volume-id, volume-size (in GiB), storage-tier\n"
			"* status (pending | completed | error)\n"
			"* tag:<key> (the value of the tag <key>), tag-key (the snapshot has a tag "
			"with this key)\n"
			"\n"
			"As with describe-volumes, ebsim does not fetch the pages of a long answer "
			"for you: with --max-results the reply holds at most that many snapshots, and "
			"a NextToken when more remain. --max-results cannot be combined with "
			"--snapshot-ids.",
		.opts = (const struct cli_opt[]){
			{"snapshot-ids", CLI_LIST, false, NULL,
			 "The IDs of the snapshots to describe, separated by spaces."},
			{"owner-ids", CLI_LIST, false, NULL,
			 "Only the snapshots owned by these accounts: 12-digit account IDs, or self "
			 "for the account of the request."},
			{"restorable-by-user-ids", CLI_LIST, false, NULL,
			 "Only the snapshots that these accounts (12-digit IDs, or self) may restore "
			 "volumes from."},
			{"filters", CLI_FILTERS, false, NULL,
			 "Filters, each in awscli's shorthand, Name=string,Values=string,string, "
			 "or in JSON, [{\"Name\":\"string\",\"Values\":[\"string\",...]},...]. "
			 "Give several words, or repeat --filters, to combine filters."},
			{"max-results", CLI_INTEGER, false, NULL,
			 "The largest number of snapshots in one reply (EC2 accepts 5 to 1000). The "
			 "reply carries a NextToken when more snapshots remain."},
			{"next-token", CLI_STRING, false, NULL,
			 "The NextToken of the previous reply, to get the next page."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Snapshots", "list", "The snapshots, each described as follows."},
			SNAPSHOT_FIELDS(1),
			{0, "NextToken", "string",
			 "The token to pass to --next-token for the next page; absent on the last "
			 "page."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To describe every snapshot of the account\n"
			"\n"
			"    ebsim describe-snapshots --owner-ids self\n"
			"\n"
			"To describe one snapshot\n"
			"\n"
			"    ebsim describe-snapshots --snapshot-ids snap-0123456789abcdef0\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"Snapshots\": [\n"
			"            {\n"
			"                \"Description\": \"before the upgrade\",\n"
			"                \"Encrypted\": false,\n"
			"                \"OwnerId\": \"123456789012\",\n"
			"                \"Progress\": \"100%\",\n"
			"                \"SnapshotId\": \"snap-0123456789abcdef0\",\n"
			"                \"StartTime\": \"2026-11-28T17:44:59.000Z\",\n"
			"                \"State\": \"completed\",\n"
			"                \"VolumeId\": \"vol-0123456789abcdef0\",\n"
			"                \"VolumeSize\": 8,\n"
			"                \"StorageTier\": \"standard\",\n"
			"                \"DataSize\": 1048576\n"
			"            }\n"
			"        ]\n"
			"    }\n"
			"\n"
			"To list the snapshots of one volume that are still pending\n"
			"\n"
			"    ebsim describe-snapshots --filters \\\n"
			"        Name=volume-id,Values=vol-0123456789abcdef0 Name=status,Values=pending\n",
	},
	{
		.name = "delete-snapshot",
		.action = "DeleteSnapshot",
		.summary = "Deletes a snapshot.",
		.description =
			"Deletes a snapshot; there is no undo. Other snapshots are not affected, "
			"including the incremental snapshots taken after it: each snapshot is complete "
			"by itself, and data that several snapshots share stays in the store until "
			"the last of them is deleted. Volumes restored from the snapshot keep working: "
			"the data they still read from it is kept until they no longer need it.\n"
			"\n"
			"A pending snapshot cannot be deleted: the call fails with IncorrectState "
			"until its State is completed or error.\n"
			"\n"
			"On success nothing is printed.",
		.opts = (const struct cli_opt[]){
			{"snapshot-id", CLI_STRING, true, NULL, "The ID of the snapshot to delete."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = NULL,
		.examples = "To delete a snapshot\n"
			    "\n"
			    "    ebsim delete-snapshot --snapshot-id snap-0123456789abcdef0\n"
			    "\n"
			    "This prints nothing when it succeeds.\n",
	},
	{
		.name = "copy-snapshot",
		.action = "CopySnapshot",
		.summary = "Copies a completed snapshot from a region into the region of the request.",
		.description =
			"Copies a snapshot of the account from --source-region into the region of the "
			"request (--region), which may be the same region. The source must be "
			"completed; otherwise the call fails with IncorrectState. The reply comes at "
			"once with the new snapshot's ID; the copy is pending while ebsimd copies the "
			"data, then completed. Follow it with describe-snapshots.\n"
			"\n"
			"Only the data the destination region does not already hold is copied, so "
			"copying again after new snapshots of the same volume moves only what "
			"changed. The copy is nevertheless a snapshot of its own: it starts a lineage "
			"of its own, has no ParentSnapshotId, and list-changed-blocks does not compare "
			"it with the source or the source's neighbours. Its SourceSnapshot names the "
			"source, and its Description is the source's unless --description is given.\n"
			"\n"
			"A copy of an encrypted snapshot is encrypted with the source's data key. "
			"ebsim has no KMS, and it does not encrypt the copy of an unencrypted "
			"snapshot: --encrypted, --kms-key-id and --destination-region are accepted so "
			"that awscli scripts run unchanged.",
		.opts = (const struct cli_opt[]){
			{"source-region", CLI_STRING, true, NULL,
			 "The region that holds the source snapshot, e.g. us-east-1."},
			{"source-snapshot-id", CLI_STRING, true, NULL,
			 "The ID of the snapshot to copy."},
			{"description", CLI_STRING, false, NULL,
			 "A description of the copy, up to 255 characters; default: the source's."},
			{"encrypted", CLI_BOOLEAN, false, NULL,
			 "Whether the copy is encrypted. A copy of an encrypted snapshot is always "
			 "encrypted."},
			{"kms-key-id", CLI_STRING, false, NULL,
			 "The KMS key to encrypt the copy with. ebsim has no KMS: the value is "
			 "passed to ebsimd as KmsKeyId and has no effect."},
			{"destination-region", CLI_STRING, false, NULL,
			 "The region of the copy. In EC2 it must be the region of the request, "
			 "which is where ebsim makes the copy; give --region to choose it."},
			{"tag-specifications", CLI_JSON, false, NULL,
			 "Tags to put on the copy, as JSON, for example "
			 "[{\"ResourceType\":\"snapshot\",\"Tags\":[{\"Key\":\"Name\","
			 "\"Value\":\"dr\"}]}]. The copy does not get the source's tags. "
			 TAG_SPEC_HELP},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "SnapshotId", "string", "The ID of the copy."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To copy a snapshot from us-east-1 to eu-west-1\n"
			"\n"
			"    ebsim --region eu-west-1 copy-snapshot --source-region us-east-1 \\\n"
			"        --source-snapshot-id snap-0123456789abcdef0 --description 'DR copy'\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"SnapshotId\": \"snap-0fedcba9876543210\"\n"
			"    }\n",
	},
	{
		.name = "list-snapshot-blocks",
		.action = "ListSnapshotBlocks",
		.api = "EBS direct API",
		.summary = "Lists the 512 KiB blocks of a snapshot that hold data (EBS direct API).",
		.description =
			DIRECT_API_HELP "\n"
			"\n"
			"list-snapshot-blocks lists the blocks of one completed snapshot that hold "
			"data, in increasing BlockIndex, each with a BlockToken that names its "
			"content. A snapshot that is not completed is refused with "
			"ValidationException.\n"
			"\n"
			"A reply lists at most --max-results blocks; when more remain it carries a "
			"NextToken, to pass back with --next-token. --starting-block-index skips the "
			"blocks before it, e.g. to read one region of the volume: the blocks of bytes "
			"[a, b) are those from a / 524288 to (b - 1) / 524288.",
		.opts = (const struct cli_opt[]){
			{"snapshot-id", CLI_STRING, true, NULL, "The ID of the snapshot."},
			PAGING_OPTS("blocks"),
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Blocks", "list", "The blocks that hold data, by increasing index."},
			{1, "BlockIndex", "integer",
			 "The index of the block: its byte offset in the volume divided by 524288."},
			{1, "BlockToken", "string",
			 "An opaque token that names the block's content in this snapshot."},
			BLOCKS_TAIL_FIELDS,
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To list the blocks of a snapshot\n"
			"\n"
			"    ebsim list-snapshot-blocks --snapshot-id snap-0123456789abcdef0\n"
			"\n"
			"Output (a 1 GiB volume with data at offsets 0 and 1 MiB):\n"
			"\n"
			"    {\n"
			"        \"Blocks\": [\n"
			"            {\n"
			"                \"BlockIndex\": 0,\n"
			"                \"BlockToken\": \"EBSim3f786850e387550fdab836ed7e6dc881de23001b\"\n"
			"            },\n"
			"            {\n"
			"                \"BlockIndex\": 2,\n"
			"                \"BlockToken\": \"EBSim89e6c98d92887913cadf06b2adb97f26cde4849b\"\n"
			"            }\n"
			"        ],\n"
			"        \"VolumeSize\": 1,\n"
			"        \"BlockSize\": 524288\n"
			"    }\n"
			"\n"
			"To page through a large snapshot, 1000 blocks at a time\n"
			"\n"
			"    ebsim list-snapshot-blocks --snapshot-id snap-0123456789abcdef0 \\\n"
			"        --max-results 1000\n"
			"    ebsim list-snapshot-blocks --snapshot-id snap-0123456789abcdef0 \\\n"
			"        --max-results 1000 --next-token <NextToken of the previous reply>\n",
	},
	{
		.name = "list-changed-blocks",
		.action = "ListChangedBlocks",
		.api = "EBS direct API",
		.summary = "Lists the 512 KiB blocks that differ between two snapshots (EBS direct API).",
		.description =
			DIRECT_API_HELP "\n"
			"\n"
			"list-changed-blocks compares two completed snapshots and lists the blocks "
			"whose content differs between them, in increasing BlockIndex, with the "
			"block's token in each snapshot. A block that holds data in one snapshot only "
			"is listed too. Without --first-snapshot-id, the second snapshot is compared "
			"with an empty volume: every block that holds data is listed.\n"
			"\n"
			"Both snapshots must be of the same lineage: snapshots taken one after the "
			"other from one volume, or from volumes restored from a snapshot of that "
			"chain. A snapshot copied with copy-snapshot starts a lineage of its own. "
			"Snapshots of different lineages, or not completed, are refused with "
			"ValidationException. The usual use is incremental backup: the blocks to copy "
			"are the ones that changed since the previous backup's snapshot.\n"
			"\n"
			"Paging is as for list-snapshot-blocks.",
		.opts = (const struct cli_opt[]){
			{"first-snapshot-id", CLI_STRING, false, NULL,
			 "The older snapshot. Omit it to list every block of the second snapshot "
			 "that holds data."},
			{"second-snapshot-id", CLI_STRING, true, NULL,
			 "The newer snapshot, of the same lineage as the first."},
			PAGING_OPTS("changed blocks"),
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "ChangedBlocks", "list", "The blocks that differ, by increasing index."},
			{1, "BlockIndex", "integer",
			 "The index of the block: its byte offset in the volume divided by 524288."},
			{1, "FirstBlockToken", "string",
			 "The block's token in the first snapshot; absent without "
			 "--first-snapshot-id, or when the block holds no data in the first "
			 "snapshot."},
			{1, "SecondBlockToken", "string",
			 "The block's token in the second snapshot; absent when the block holds no "
			 "data there (it was zeroed since the first snapshot)."},
			BLOCKS_TAIL_FIELDS,
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To list what changed between two snapshots of a volume\n"
			"\n"
			"    ebsim list-changed-blocks --first-snapshot-id snap-0123456789abcdef0 \\\n"
			"        --second-snapshot-id snap-0fedcba9876543210\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"ChangedBlocks\": [\n"
			"            {\n"
			"                \"BlockIndex\": 2,\n"
			"                \"FirstBlockToken\": \"EBSim89e6c98d92887913cadf06b2adb97f26cde4849b\",\n"
			"                \"SecondBlockToken\": \"EBSim1c6b8d1b2b7a8f1e0d3ab4f5e6c7d8e9f0a1b2c3\"\n"
			"            }\n"
			"        ],\n"
			"        \"VolumeSize\": 1,\n"
			"        \"BlockSize\": 524288\n"
			"    }\n"
			"\n"
			"To turn the indexes into byte offsets\n"
			"\n"
			"    ebsim list-changed-blocks ... | jq '.ChangedBlocks[].BlockIndex * 524288'\n",
	},
	{
		.name = "create-tags",
		.action = "CreateTags",
		.summary = "Adds or overwrites tags on volumes and snapshots.",
		.description =
			"Adds tags to one or more volumes and snapshots of the account in the region "
			"of the request. A tag is a key and a value; a resource has at most one tag "
			"with a given key, so a tag whose key the resource already has replaces its "
			"value. Other tags of the resources are left as they are.\n"
			"\n"
			"EC2's rules apply:\n"
			"\n"
			"* a key is 1 to 128 characters and may not start with aws: (in any case);\n"
			"* a value is 0 to 256 characters; a tag given without a Value gets an empty "
			"one;\n"
			"* keys and values are case-sensitive, and a key may be given only once;\n"
			"* a resource has at most 50 tags: the call fails with TagLimitExceeded when "
			"one of the resources would have more.\n"
			"\n"
			"A resource ID that is not a volume or snapshot ID fails with InvalidID; one "
			"that does not exist, or belongs to another account or region, fails with "
			"InvalidVolume.NotFound or InvalidSnapshot.NotFound. ebsimd checks every "
			"resource and every tag first: when the call fails, no resource is tagged.\n"
			"\n"
			"Tags show in the Tags of describe-volumes and describe-snapshots, select "
			"resources with their tag:<key> and tag-key filters, and are listed by "
			"describe-tags. They are deleted with their resource.\n"
			"\n"
			"On success nothing is printed.",
		.opts = (const struct cli_opt[]){
			{"resources", CLI_LIST, true, NULL,
			 "The IDs of the volumes and snapshots to tag, separated by spaces (up to "
			 "1000)."},
			{"tags", CLI_TAGS, true, NULL,
			 "The tags, each in awscli's shorthand, Key=string,Value=string, or in JSON, "
			 "[{\"Key\":\"string\",\"Value\":\"string\"},...]. Quote a value that holds a "
			 "comma, and the word in the shell: \"Key=owners,Value='ops,dev'\"."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = NULL,
		.examples =
			"To name a volume and mark it as production data\n"
			"\n"
			"    ebsim create-tags --resources vol-0123456789abcdef0 \\\n"
			"        --tags Key=Name,Value=web Key=env,Value=prod\n"
			"\n"
			"This prints nothing when it succeeds.\n"
			"\n"
			"To tag a volume and its snapshot alike, in JSON\n"
			"\n"
			"    ebsim create-tags \\\n"
			"        --resources vol-0123456789abcdef0 snap-0123456789abcdef0 \\\n"
			"        --tags '[{\"Key\":\"project\",\"Value\":\"atlas\"}]'\n",
	},
	{
		.name = "delete-tags",
		.action = "DeleteTags",
		.summary = "Deletes tags from volumes and snapshots.",
		.description =
			"Deletes tags from one or more volumes and snapshots of the account in the "
			"region of the request.\n"
			"\n"
			"* A tag given with only a Key (Key=env) is deleted whatever its value.\n"
			"* A tag given with a Value (Key=env,Value=prod) is deleted only when its "
			"value is that one; Key=env,Value= deletes it only when its value is empty.\n"
			"* Without --tags, every tag of the resources is deleted.\n"
			"\n"
			"Deleting a tag that the resource does not have is not an error. Keys that "
			"start with aws: cannot be deleted (InvalidParameterValue). The resource IDs "
			"are checked as create-tags checks them, all before anything is deleted.\n"
			"\n"
			"On success nothing is printed.",
		.opts = (const struct cli_opt[]){
			{"resources", CLI_LIST, true, NULL,
			 "The IDs of the volumes and snapshots, separated by spaces (up to 1000)."},
			{"tags", CLI_TAGS, false, NULL,
			 "The tags to delete, each in awscli's shorthand, Key=string or "
			 "Key=string,Value=string, or in JSON, "
			 "[{\"Key\":\"string\",\"Value\":\"string\"},...]. Default: all of them."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = NULL,
		.examples =
			"To delete the tag env of a volume, whatever its value\n"
			"\n"
			"    ebsim delete-tags --resources vol-0123456789abcdef0 --tags Key=env\n"
			"\n"
			"To delete the tag env only where it is env=test\n"
			"\n"
			"    ebsim delete-tags --resources vol-0123456789abcdef0 \\\n"
			"        vol-0fedcba9876543210 --tags Key=env,Value=test\n"
			"\n"
			"To delete every tag of a snapshot\n"
			"\n"
			"    ebsim delete-tags --resources snap-0123456789abcdef0\n",
	},
	{
		.name = "describe-tags",
		.action = "DescribeTags",
		.summary = "Lists the tags of volumes and snapshots, one entry per tag.",
		.description =
			"Lists the tags of the volumes and snapshots of the account in the region of "
			"the request: one entry per tag, with the resource it is on, ordered by "
			"resource ID and then by key.\n"
			"\n"
			"A tag is listed when it matches every filter, and it matches a filter when "
			"it matches any of the filter's values; values may use the wildcards * (any "
			"characters) and ? (one character). The filter names are EC2's:\n"
			"\n"
			"* key, value: the tag's key and value\n"
			"* resource-id: the ID of the volume or snapshot\n"
			"* resource-type: volume or snapshot\n"
			"* tag:<key>: the tags of the resources whose tag <key> has one of the values; "
			"for example Name=tag:env,Values=prod lists every tag of the resources tagged "
			"env=prod\n"
			"\n"
			"As with describe-volumes, ebsim does not fetch the pages of a long answer "
			"for you: with --max-results the reply holds at most that many tags, and a "
			"NextToken when more remain.",
		.opts = (const struct cli_opt[]){
			{"filters", CLI_FILTERS, false, NULL,
			 "Filters, each in awscli's shorthand, Name=string,Values=string,string, "
			 "or in JSON, [{\"Name\":\"string\",\"Values\":[\"string\",...]},...]. "
			 "Give several words, or repeat --filters, to combine filters."},
			{"max-results", CLI_INTEGER, false, NULL,
			 "The largest number of tags in one reply (EC2 accepts 5 to 1000). The reply "
			 "carries a NextToken when more tags remain."},
			{"next-token", CLI_STRING, false, NULL,
			 "The NextToken of the previous reply, to get the next page."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Tags", "list", "The tags, each described as follows."},
			{1, "Key", "string", "The key of the tag."},
			{1, "ResourceId", "string", "The ID of the volume or snapshot."},
			{1, "ResourceType", "string", "volume or snapshot."},
			{1, "Value", "string", "The value of the tag."},
			{0, "NextToken", "string",
			 "The token to pass to --next-token for the next page; absent on the last "
			 "page."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To list the tags of one volume\n"
			"\n"
			"    ebsim describe-tags --filters Name=resource-id,Values=vol-0123456789abcdef0\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"Tags\": [\n"
			"            {\n"
			"                \"Key\": \"Name\",\n"
			"                \"ResourceId\": \"vol-0123456789abcdef0\",\n"
			"                \"ResourceType\": \"volume\",\n"
			"                \"Value\": \"web\"\n"
			"            },\n"
			"            {\n"
			"                \"Key\": \"env\",\n"
			"                \"ResourceId\": \"vol-0123456789abcdef0\",\n"
			"                \"ResourceType\": \"volume\",\n"
			"                \"Value\": \"prod\"\n"
			"            }\n"
			"        ]\n"
			"    }\n"
			"\n"
			"To list every snapshot tag whose key starts with backup\n"
			"\n"
			"    ebsim describe-tags --filters Name=resource-type,Values=snapshot \\\n"
			"        'Name=key,Values=backup*'\n",
	},
	{
		.name = "register-image",
		.action = "RegisterImage",
		.summary = "Registers an EBS-backed AMI from snapshots.",
		.description =
			"Registers an Amazon Machine Image (AMI) whose root device is an EBS volume "
			"restored from a snapshot: the image is the snapshot plus what an instance "
			"needs to know to start from it (root device name, block device mappings, "
			"architecture, virtualization type). Take the snapshot first "
			"(create-snapshot), of a volume that holds the root file system, and wait "
			"until it is completed.\n"
			"\n"
			"--block-device-mappings lists the devices an instance launched from the "
			"image gets, in EC2's JSON (or file://PATH to read it from a file):\n"
			"\n"
			"* {\"DeviceName\": \"/dev/xvda\", \"Ebs\": {\"SnapshotId\": \"snap-...\"}}: an EBS "
			"volume restored from the snapshot (lazily: usable at once, blocks fetched on "
			"first touch). Ebs also takes VolumeSize (GiB, default and minimum: the "
			"snapshot's), VolumeType (default gp2), DeleteOnTermination (default true), "
			"Iops, Throughput and Encrypted. An Ebs entry with a VolumeSize and no "
			"SnapshotId is an empty volume.\n"
			"* {\"DeviceName\": \"/dev/sdb\", \"VirtualName\": \"ephemeral0\"}: the first "
			"instance-store volume of the instance type, if it has one (ephemeral0 to "
			"ephemeral23).\n"
			"* {\"DeviceName\": \"/dev/sdc\", \"NoDevice\": \"\"}: no device (useful in "
			"run-instances, to drop a mapping of the image).\n"
			"\n"
			"For an EBS-backed image, --root-device-name is required, and one mapping "
			"must give that device an EBS snapshot. Device names are /dev/sd[a-z], /dev/xvd[a-z] or /dev/hd[a-z] "
			"with an optional suffix. Every snapshot must be completed and belong to the "
			"account; while an image uses a snapshot, the snapshot cannot be deleted.\n"
			"\n"
			"The architecture (x86_64 by default, arm64 or i386) and the virtualization "
			"type (hvm by default, or paravirtual) decide which instance types can launch "
			"the image: run-instances refuses an arm64 image on an x86_64 type, and a "
			"paravirtual image on a type other than the previous-generation C1, C3, M1, "
			"M2, M3 and T1, with InvalidParameterCombination.\n"
			"\n"
			"Image names are 3 to 128 characters of letters, digits and ( ) [ ] space . / "
			"- ' @ _, unique in the account and region (InvalidAMIName.Duplicate).\n"
			"\n"
			"An instance-store-backed image is registered from a bundle instead: "
			"--image-location BUCKET/PREFIX.manifest.xml names a manifest that "
			"ebsim-ami upload-bundle stored in the region's bucket. ebsimd checks that "
			"the manifest belongs to the account, that its signature verifies with the "
			"account's signing certificate, that the region's EC2 key opens its key, and "
			"every part's SHA-1 (InvalidManifest otherwise); the architecture, kernel "
			"and mappings come from the manifest, and the root device is /dev/sda1. "
			"Launching it unbundles the whole image into an instance-store root, which "
			"is why it is slower than an EBS-backed launch.\n"
			"\n"
			"--kernel-id, --ramdisk-id, --ena-support and --sriov-net-support are "
			"accepted so that awscli scripts run unchanged; they do not change how ebsim "
			"launches the image.",
		.opts = (const struct cli_opt[]){
			{"name", CLI_STRING, true, NULL,
			 "The name of the image: 3 to 128 letters, digits and ( ) [ ] space . / - ' "
			 "@ _, unique in the account and region."},
			{"description", CLI_STRING, false, NULL,
			 "A description of the image, up to 255 characters."},
			{"root-device-name", CLI_STRING, false, NULL,
			 "The device name of the root volume, e.g. /dev/xvda. Required for an "
			 "EBS-backed image: --block-device-mappings must map it to an EBS snapshot."},
			{"block-device-mappings", CLI_JSON, false, NULL,
			 "The block device mappings, as JSON (see DESCRIPTION), or file://PATH to "
			 "read them from a file."},
			{"architecture", CLI_STRING, false, NULL,
			 "x86_64 (the default), arm64 or i386."},
			{"virtualization-type", CLI_STRING, false, NULL,
			 "hvm (the default) or paravirtual."},
			{"image-location", CLI_STRING, false, NULL,
			 "BUCKET/PREFIX.manifest.xml: the manifest of an instance-store-backed "
			 "image, uploaded with ebsim-ami upload-bundle."},
			{"kernel-id", CLI_STRING, false, NULL,
			 "The kernel (aki-...) of a paravirtual image. Accepted and not used."},
			{"ramdisk-id", CLI_STRING, false, NULL,
			 "The RAM disk (ari-...) of a paravirtual image. Accepted and not used."},
			{"ena-support", CLI_BOOLEAN, false, NULL,
			 "Whether the image supports enhanced networking with ENA. Accepted and not "
			 "used: ebsim has no network."},
			{"sriov-net-support", CLI_STRING, false, NULL,
			 "simple, for enhanced networking with the Intel 82599 VF. Accepted and not "
			 "used."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "ImageId", "string", "The ID of the new image: ami- and 17 hexadecimal "
			 "digits."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To make an image from a prepared root volume\n"
			"\n"
			"    ebsim create-snapshot --volume-id vol-0123456789abcdef0\n"
			"    ebsim register-image --name my-server-1.0 \\\n"
			"        --root-device-name /dev/xvda --architecture x86_64 \\\n"
			"        --virtualization-type hvm --block-device-mappings \\\n"
			"        '[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"snap-0123456789abcdef0\"}},\n"
			"          {\"DeviceName\":\"/dev/sdb\",\"VirtualName\":\"ephemeral0\"}]'\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"ImageId\": \"ami-0123456789abcdef0\"\n"
			"    }\n"
			"\n"
			"The same, with the mappings in a file\n"
			"\n"
			"    ebsim register-image --name my-server-1.0 \\\n"
			"        --root-device-name /dev/xvda \\\n"
			"        --block-device-mappings file://mappings.json\n",
		.prepare = cli_prepare_register,
	},
	{
		.name = "describe-images",
		.action = "DescribeImages",
		.summary = "Describes the images the account may launch: its own, shared and public.",
		.description =
			"Describes the images of the region of the request that the account may "
			"launch: its own, those shared with it (an explicit launch permission, see "
			"modify-image-attribute) and the public ones. --image-ids names images (if "
			"one does not exist or cannot be seen, the whole call fails with "
			"InvalidAMIID.NotFound); --owners keeps the images of the given owners: "
			"12-digit account IDs, self for the account of the request, or amazon for "
			"the base images Amazon publishes (they carry ImageOwnerAlias amazon); "
			"--executable-users keeps the images that given accounts have an explicit "
			"launch permission for (self: the account of the request), or, with all, "
			"the public ones.\n"
			"\n"
			"An image is listed when it matches every filter, and it matches a filter "
			"when it matches any of the filter's values (with * and ? as wildcards). The "
			"filter names are EC2's (any other is InvalidParameterValue):\n"
			"\n"
			"* architecture, creation-date, description, hypervisor, image-id, image-type, "
			"is-public (true | false), name, owner-alias (amazon), owner-id, platform "
			"(windows: Linux images have no Platform, so they never match), "
			"platform-details, usage-operation, source-image-id, source-instance-id\n"
			"* root-device-name, root-device-type (ebs | instance-store), state (pending "
			"| available | failed), state-reason-code, virtualization-type (hvm | "
			"paravirtual)\n"
			"* block-device-mapping.device-name, .snapshot-id, .volume-size, "
			".volume-type, .delete-on-termination, .encrypted: some mapping of the image "
			"matches\n"
			"\n"
			"A pending image's state is brought up to date from its snapshots whenever "
			"it is described. --max-results (5 to 1000) and --next-token page through "
			"the list; --max-results cannot be combined with --image-ids.",
		.opts = (const struct cli_opt[]){
			{"image-ids", CLI_LIST, false, NULL,
			 "The IDs of the images to describe, separated by spaces."},
			{"owners", CLI_LIST, false, NULL,
			 "Only the images owned by these accounts: 12-digit account IDs, self or "
			 "amazon."},
			{"executable-users", CLI_LIST, false, NULL,
			 "Only the images these accounts (12-digit IDs, or self) have an explicit "
			 "launch permission for; all: the public images."},
			{"max-results", CLI_INTEGER, false, NULL,
			 "At most this many images (5 to 1000); NextToken gives the next page."},
			{"next-token", CLI_STRING, false, NULL,
			 "The NextToken of the previous page."},
			{"filters", CLI_FILTERS, false, NULL,
			 "Filters, each in awscli's shorthand, Name=string,Values=string,string, "
			 "or in JSON, [{\"Name\":\"string\",\"Values\":[\"string\",...]},...]. "
			 "Give several words, or repeat --filters, to combine filters."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Images", "list", "The images, each described as follows."},
			IMAGE_FIELDS(1),
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To describe the account's own images\n"
			"\n"
			"    ebsim describe-images --owners self\n"
			"\n"
			"To find the account's arm64 images by name\n"
			"\n"
			"    ebsim describe-images --owners self --filters 'Name=name,Values=my-server-*' \\\n"
			"        Name=architecture,Values=arm64\n"
			"\n"
			"To describe one image\n"
			"\n"
			"    ebsim describe-images --image-ids ami-0123456789abcdef0\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"Images\": [\n"
			"            {\n"
			"                \"Architecture\": \"x86_64\",\n"
			"                \"CreationDate\": \"2026-11-28T17:44:59.000Z\",\n"
			"                \"ImageId\": \"ami-0123456789abcdef0\",\n"
			"                \"ImageLocation\": \"123456789012/my-server-1.0\",\n"
			"                \"ImageType\": \"machine\",\n"
			"                \"Public\": false,\n"
			"                \"OwnerId\": \"123456789012\",\n"
			"                \"PlatformDetails\": \"Linux/UNIX\",\n"
			"                \"UsageOperation\": \"RunInstances\",\n"
			"                \"State\": \"available\",\n"
			"                \"BlockDeviceMappings\": [\n"
			"                    {\n"
			"                        \"DeviceName\": \"/dev/xvda\",\n"
			"                        \"Ebs\": {\n"
			"                            \"SnapshotId\": \"snap-0123456789abcdef0\",\n"
			"                            \"VolumeSize\": 8,\n"
			"                            \"Encrypted\": false,\n"
			"                            \"DeleteOnTermination\": true,\n"
			"                            \"VolumeType\": \"gp2\"\n"
			"                        }\n"
			"                    },\n"
			"                    {\n"
			"                        \"DeviceName\": \"/dev/sdb\",\n"
			"                        \"VirtualName\": \"ephemeral0\"\n"
			"                    }\n"
			"                ],\n"
			"                \"Description\": \"\",\n"
			"                \"Name\": \"my-server-1.0\",\n"
			"                \"RootDeviceName\": \"/dev/xvda\",\n"
			"                \"RootDeviceType\": \"ebs\",\n"
			"                \"VirtualizationType\": \"hvm\",\n"
			"                \"Hypervisor\": \"xen\"\n"
			"            }\n"
			"        ]\n"
			"    }\n",
	},
	{
		.name = "deregister-image",
		.action = "DeregisterImage",
		.summary = "Deregisters an image; optionally deletes its snapshots.",
		.description =
			"Deregisters an image of the account: it can no longer be launched or "
			"described. Instances already launched from it are not affected, and neither "
			"are their volumes.\n"
			"\n"
			"The snapshots of the image are kept, unless --delete-associated-snapshots is "
			"given: then each snapshot the image's mappings name is deleted, except those "
			"that another image still uses and another account's. A snapshot still being "
			"made for the image (an image that is pending) is stopped and deleted with "
			"it, so nothing of the image is left behind. Only the owner can deregister an "
			"image: another account that may launch it gets AuthFailure, one that cannot "
			"see it InvalidAMIID.NotFound.",
		.opts = (const struct cli_opt[]){
			{"image-id", CLI_STRING, true, NULL, "The ID of the image to deregister."},
			{"delete-associated-snapshots", CLI_BOOLEAN, false, NULL,
			 "Also delete the snapshots of the image's block device mappings that no "
			 "other image uses, stopping those still pending. Default: keep them."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Return", "boolean", "true when the image was deregistered."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To deregister an image and delete its snapshots\n"
			"\n"
			"    ebsim deregister-image --image-id ami-0123456789abcdef0 \\\n"
			"        --delete-associated-snapshots\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"Return\": true\n"
			"    }\n",
	},
	{
		.name = "create-image",
		.action = "CreateImage",
		.summary = "Creates an EBS-backed AMI from an instance's volumes.",
		.description =
			"Creates an Amazon Machine Image (AMI) from an EBS-backed instance, running "
			"or stopped: ebsimd takes a point-in-time snapshot of every EBS volume "
			"attached to the instance, all at the same moment, and registers an image "
			"whose block device mappings reproduce the instance's: the root and the data "
			"volumes with their sizes, volume types and DeleteOnTermination, and the "
			"instance-store volumes as VirtualName ephemeralN (their contents are not "
			"captured, as on EC2).\n"
			"\n"
			"The call returns the new ImageId at once. The image is pending while its "
			"snapshots are copied, available when every one of them is completed, and "
			"failed if one fails (describe-images shows a StateReason). An image cannot "
			"be launched while it is pending (InvalidAMIID.Unavailable).\n"
			"\n"
			"By default the instance is treated as EC2 treats it: it is \"rebooted\". "
			"Every file system mounted from one of the instance's devices (its root "
			"mount, and any volume you mounted from a device in LocalDevices) is "
			"unmounted, the snapshots are started, and the file systems are mounted "
			"again where they were. With --no-reboot they stay mounted: each is synced "
			"(syncfs) and frozen (FIFREEZE) while the snapshots start, then thawed, so "
			"the image is consistent without unmounting. A file system that is busy "
			"is frozen rather than unmounted.\n"
			"\n"
			"--block-device-mappings changes the image's mappings, by device name, in "
			"the JSON of register-image: an Ebs entry for one of the instance's volumes "
			"changes its VolumeSize (not below the volume's), VolumeType or "
			"DeleteOnTermination; {\"DeviceName\": \"/dev/sdf\", \"NoDevice\": \"\"} "
			"leaves a device out (its volume is not snapshotted); an entry for a device "
			"the instance does not have adds it. The root device cannot be left out.\n"
			"\n"
			"The image name follows register-image's rules (InvalidAMIName.Malformed, "
			"InvalidAMIName.Duplicate). A terminated or pending instance cannot be "
			"imaged (IncorrectInstanceState), nor an instance-store-backed one "
			"(UnsupportedOperation: bundle it with ebsim-ami).",
		.opts = (const struct cli_opt[]){
			{"instance-id", CLI_STRING, true, NULL, "The instance to image."},
			{"name", CLI_STRING, true, NULL,
			 "The name of the image: 3 to 128 letters, digits and ( ) [ ] space . / - ' "
			 "@ _, unique in the account and region."},
			{"description", CLI_STRING, false, NULL,
			 "A description of the image, up to 255 characters."},
			{"reboot", CLI_BOOLEAN, false, CLI_LOCAL,
			 "--reboot (the default) unmounts the instance's file systems while the "
			 "snapshots start and mounts them again; --no-reboot freezes them (FIFREEZE) "
			 "instead. Sent as NoReboot."},
			{"block-device-mappings", CLI_JSON, false, NULL,
			 "Changes to the image's mappings, as JSON or file://PATH (see DESCRIPTION)."},
			{"tag-specifications", CLI_JSON, false, NULL,
			 "Tags for the image: [{\"ResourceType\":\"image\",\"Tags\":[{\"Key\":\"k\","
			 "\"Value\":\"v\"}]}]."},
			{"dry-run", CLI_BOOLEAN, false, NULL,
			 "Check the request and answer DryRunOperation instead of creating the image."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "ImageId", "string", "The ID of the new image (pending until its "
			 "snapshots are completed)."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To image a running instance without unmounting its file systems\n"
			"\n"
			"    ebsim create-image --instance-id i-0123456789abcdef0 \\\n"
			"        --name my-server-1.1 --no-reboot\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"ImageId\": \"ami-0123456789abcdef0\"\n"
			"    }\n"
			"\n"
			"To leave a data volume out of the image\n"
			"\n"
			"    ebsim create-image --instance-id i-0123456789abcdef0 --name my-server-1.1 \\\n"
			"        --block-device-mappings '[{\"DeviceName\":\"/dev/sdf\",\"NoDevice\":\"\"}]'\n",
		.prepare = cli_prepare_create_image,
	},
	{
		.name = "copy-image",
		.action = "CopyImage",
		.summary = "Copies an EBS-backed AMI into the region of the request.",
		.description =
			"Copies an image from --source-region (which may be the region of the "
			"request) into the region of the request, as a new image of the account of "
			"the request: each of the image's snapshots is copied (only the chunks the "
			"destination region's store lacks are transferred), and the new image "
			"starts pending and becomes available when all of its snapshots are "
			"completed (failed if one fails).\n"
			"\n"
			"Any image the account may launch can be copied: its own, one shared with it, "
			"or a public one; the copy belongs to the account. Launch permissions are "
			"not copied: the copy is private. Another account's private image is "
			"InvalidAMIID.NotFound. The source must be available (IncorrectState "
			"otherwise). Instance-store-backed images cannot be copied "
			"(UnsupportedOperation).\n"
			"\n"
			"The new name follows register-image's rules and must be unused in the "
			"destination region.",
		.opts = (const struct cli_opt[]){
			{"source-region", CLI_STRING, true, NULL, "The region of the source image."},
			{"source-image-id", CLI_STRING, true, NULL, "The ID of the source image."},
			{"name", CLI_STRING, true, NULL, "The name of the new image."},
			{"description", CLI_STRING, false, NULL,
			 "A description of the new image. Default: the source's."},
			{"dry-run", CLI_BOOLEAN, false, NULL,
			 "Check the request and answer DryRunOperation instead of copying."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "ImageId", "string", "The ID of the new image, in the region of the "
			 "request."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To copy an image from us-east-1 to eu-west-1\n"
			"\n"
			"    ebsim --region eu-west-1 copy-image --source-region us-east-1 \\\n"
			"        --source-image-id ami-0123456789abcdef0 --name my-server-1.0\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"ImageId\": \"ami-0fedcba9876543210\"\n"
			"    }\n",
	},
	{
		.name = "modify-image-attribute",
		.action = "ModifyImageAttribute",
		.summary = "Changes an image's launch permissions or its description.",
		.description =
			"Changes who may launch an image of the account (its launch permissions), "
			"or its description. An image has three kinds of launch permission: the "
			"owner's (implicit, always), explicit ones for given accounts, and the public "
			"one (the group all). An account that may launch an image sees it in "
			"describe-images, can launch it, copy it, and create volumes from the "
			"snapshots it is made of; to any other account it does not exist.\n"
			"\n"
			"Give the change either as --launch-permission JSON, "
			"{\"Add\": [{\"UserId\": \"111122223333\"}, {\"Group\": \"all\"}], "
			"\"Remove\": [...]} (the additions are applied first), or awscli's way, "
			"--operation-type add|remove with --user-ids and/or --user-groups all. "
			"Or change the description with --description.\n"
			"\n"
			"Only the owner may change an image (AuthFailure for another account that can "
			"see it, InvalidAMIID.NotFound for one that cannot). Account IDs are 12 "
			"digits (InvalidUserID.Malformed); the only group is all; malformed JSON is "
			"InvalidParameterValue.",
		.opts = (const struct cli_opt[]){
			{"image-id", CLI_STRING, true, NULL, "The image to change."},
			{"attribute", CLI_STRING, false, NULL,
			 "launchPermission or description (optional: implied by the other options)."},
			{"launch-permission", CLI_JSON, false, NULL,
			 "{\"Add\": [{\"UserId\": \"...\"} | {\"Group\": \"all\"}, ...], \"Remove\": "
			 "[...]}, as JSON or file://PATH."},
			{"operation-type", CLI_STRING, false, NULL,
			 "add or remove: what to do with --user-ids and --user-groups."},
			{"user-ids", CLI_LIST, false, NULL, "12-digit account IDs, separated by spaces."},
			{"user-groups", CLI_LIST, false, NULL, "all: every account (public)."},
			{"description", CLI_VALUE, false, NULL,
			 "The new description: text, Value=text or {\"Value\":\"text\"}."},
			{"dry-run", CLI_BOOLEAN, false, NULL,
			 "Check the request and answer DryRunOperation instead of changing anything."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = NULL,
		.examples =
			"To share an image with one account\n"
			"\n"
			"    ebsim modify-image-attribute --image-id ami-0123456789abcdef0 \\\n"
			"        --launch-permission '{\"Add\":[{\"UserId\":\"111122223333\"}]}'\n"
			"\n"
			"To make an image public, and private again\n"
			"\n"
			"    ebsim modify-image-attribute --image-id ami-0123456789abcdef0 \\\n"
			"        --operation-type add --user-groups all\n"
			"    ebsim modify-image-attribute --image-id ami-0123456789abcdef0 \\\n"
			"        --launch-permission '{\"Remove\":[{\"Group\":\"all\"}]}'\n"
			"\n"
			"This command prints nothing.\n",
	},
	{
		.name = "describe-image-attribute",
		.action = "DescribeImageAttribute",
		.summary = "Describes one attribute of an image of the account.",
		.description =
			"Describes one attribute of an image the account owns: launchPermission (the "
			"accounts and groups explicitly allowed to launch it; the owner's implicit "
			"permission is not listed), description, blockDeviceMapping, or kernel, "
			"ramdisk, productCodes, sriovNetSupport, bootMode, imdsSupport (which ebsim "
			"keeps empty). Only the owner may read them: AuthFailure for another account "
			"that can see the image, InvalidAMIID.NotFound for one that cannot.",
		.opts = (const struct cli_opt[]){
			{"image-id", CLI_STRING, true, NULL, "The image."},
			{"attribute", CLI_STRING, true, NULL,
			 "launchPermission, description, blockDeviceMapping, kernel, ramdisk, "
			 "productCodes, sriovNetSupport, bootMode or imdsSupport."},
			{"dry-run", CLI_BOOLEAN, false, NULL,
			 "Check the request and answer DryRunOperation."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "ImageId", "string", "The image."},
			{0, "LaunchPermissions", "list",
			 "launchPermission: {\"Group\": \"all\"} when public, then {\"UserId\": "
			 "\"...\"} per account, in the order they were added."},
			{0, "Description", "structure", "description: {\"Value\": \"...\"}."},
			{0, "BlockDeviceMappings", "list",
			 "blockDeviceMapping: the mappings, as describe-images shows them."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To list who may launch an image\n"
			"\n"
			"    ebsim describe-image-attribute --image-id ami-0123456789abcdef0 \\\n"
			"        --attribute launchPermission\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"ImageId\": \"ami-0123456789abcdef0\",\n"
			"        \"LaunchPermissions\": [\n"
			"            {\n"
			"                \"UserId\": \"111122223333\"\n"
			"            }\n"
			"        ]\n"
			"    }\n",
	},
	{
		.name = "reset-image-attribute",
		.action = "ResetImageAttribute",
		.summary = "Resets an image's launch permissions: only its owner may launch it.",
		.description =
			"Removes every explicit and public launch permission of an image of the "
			"account, so that only the owner may launch (and see) it. launchPermission "
			"is the only attribute that can be reset (InvalidParameterValue otherwise). "
			"Only the owner may reset it (AuthFailure, or InvalidAMIID.NotFound for an "
			"account that cannot see the image).",
		.opts = (const struct cli_opt[]){
			{"image-id", CLI_STRING, true, NULL, "The image."},
			{"attribute", CLI_STRING, true, NULL, "launchPermission."},
			{"dry-run", CLI_BOOLEAN, false, NULL,
			 "Check the request and answer DryRunOperation."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Return", "boolean", "true when the permissions were reset."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To make an image private again\n"
			"\n"
			"    ebsim reset-image-attribute --image-id ami-0123456789abcdef0 \\\n"
			"        --attribute launchPermission\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"Return\": true\n"
			"    }\n",
	},
	{
		.name = "run-instances",
		.action = "RunInstances",
		.summary = "Launches instances from an AMI, with their volumes and instance store.",
		.description =
			"Launches one or more instances of an image. ebsim runs no operating system: "
			"an instance is its storage, wired up as EC2 would wire it, so that software "
			"can be tested against what happens to the data. For each instance ebsimd:\n"
			"\n"
			"* creates an EBS volume for each Ebs mapping of the image (merged with "
			"--block-device-mappings), restored lazily from its snapshot, so launching "
			"takes the same time whatever the size of the image;\n"
			"* creates the instance-store volumes that the instance type has and that a "
			"VirtualName mapping asks for (NVMe instance store, e.g. m5d, comes without "
			"asking), empty and encrypted with a key that exists only in ebsimd's memory;\n"
			"* attaches every device as a loop device, links HOME/instances/<id>/dev/<name> "
			"(e.g. dev/xvda) to it, and lists them in LocalDevices;\n"
			"* mounts the root volume at HOME/instances/<id>/root (RootMount) when it holds "
			"an ext2, ext3 or ext4 file system.\n"
			"\n"
			"The reply shows each instance as pending, as EC2 does; ebsimd has done "
			"everything by then, and describe-instances shows it running. If anything "
			"fails, nothing the call created is left behind (no volume, device or "
			"mount).\n"
			"\n"
			"The image must be visible to the account, in the region of the request, and "
			"fit the instance type: the same architecture (InvalidParameterCombination "
			"otherwise), and a virtualization type the type supports (paravirtual only on "
			"the previous-generation C1, C3, M1, M2, M3 and T1). The instance type "
			"defaults to m1.small, as in EC2.\n"
			"\n"
			"What survives what (see stop-instances, start-instances, reboot-instances "
			"and terminate-instances): EBS volumes keep their data across reboot, stop and "
			"start; instance store keeps it across reboot only; the root volume is deleted "
			"on terminate unless its mapping says DeleteOnTermination false.\n"
			"\n"
			"--user-data is kept with the instance (at most 16384 bytes), as text: ebsim "
			"does not base64-encode it. --kernel-id (aki-...) and --ramdisk-id (ari-...) "
			"are checked for form (InvalidParameterValue otherwise) and recorded on the "
			"instance as KernelId and RamdiskId; without them the image's apply (the "
			"paravirtual base AMI names PV-GRUB). ebsim boots nothing, so they are not "
			"looked up.",
		.opts = (const struct cli_opt[]){
			{"image-id", CLI_STRING, true, NULL, "The ID of the image (ami-...) to launch."},
			{"instance-type", CLI_STRING, false, NULL,
			 "The instance type, e.g. t3.micro, m5d.large, m6g.large (arm64) or m3.medium "
			 "(paravirtual or hvm). Default: m1.small."},
			{"count", CLI_STRING, false, CLI_LOCAL,
			 "How many instances to launch: N, or MIN:MAX, as in awscli. It is sent as "
			 "MinCount and MaxCount (N:N for N; 1:1 by default); ebsimd launches MaxCount "
			 "instances, at most 20, or none."},
			{"block-device-mappings", CLI_JSON, false, NULL,
			 "Mappings that override or add to the image's, by device name, as JSON, or "
			 "file://PATH: see register-image. E.g. [{\"DeviceName\":\"/dev/xvda\","
			 "\"Ebs\":{\"DeleteOnTermination\":false}}] keeps the root volume after "
			 "terminate, [{\"DeviceName\":\"/dev/sdf\",\"Ebs\":{\"VolumeSize\":10}}] adds an "
			 "empty 10 GiB volume, [{\"DeviceName\":\"/dev/sdb\",\"NoDevice\":\"\"}] drops a "
			 "mapping of the image."},
			{"user-data", CLI_STRING, false, NULL,
			 "The user data, as text, or file://PATH to read it from a file."},
			{"kernel-id", CLI_STRING, false, NULL,
			 "The kernel ID (aki- and 8 or 17 hex digits), shown as KernelId. Default: "
			 "the image's."},
			{"ramdisk-id", CLI_STRING, false, NULL,
			 "The RAM disk ID (ari- and 8 or 17 hex digits), shown as RamdiskId. "
			 "Default: the image's."},
			{"placement", CLI_JSON, false, NULL,
			 "Where to launch, as JSON (or file://PATH), e.g. "
			 "{\"AvailabilityZone\":\"us-east-1b\"}. Default: zone a of the region. "
			 "attach-volume takes volumes of the instance's zone only."},
			{"dry-run", CLI_BOOLEAN, false, NULL,
			 "Check the request (the image, its launch permission, the instance type, "
			 "the mappings) and answer DryRunOperation instead of launching; nothing is "
			 "created."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Groups", "list", "Security groups: always empty."},
			{0, "Instances", "list", "The instances launched, each as follows."},
			INSTANCE_FIELDS(1),
			{0, "OwnerId", "string", "The account that owns the reservation."},
			{0, "ReservationId", "string",
			 "The ID of the reservation: the instances launched by one call."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To launch an instance\n"
			"\n"
			"    ebsim run-instances --image-id ami-0123456789abcdef0 \\\n"
			"        --instance-type m5d.large\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"Groups\": [],\n"
			"        \"Instances\": [\n"
			"            {\n"
			"                \"InstanceId\": \"i-0123456789abcdef0\",\n"
			"                \"ImageId\": \"ami-0123456789abcdef0\",\n"
			"                \"InstanceType\": \"m5d.large\",\n"
			"                \"LaunchTime\": \"2026-11-28T17:44:59.000Z\",\n"
			"                \"Placement\": {\n"
			"                    \"AvailabilityZone\": \"us-east-1a\"\n"
			"                },\n"
			"                \"Architecture\": \"x86_64\",\n"
			"                \"VirtualizationType\": \"hvm\",\n"
			"                \"RootDeviceType\": \"ebs\",\n"
			"                \"RootDeviceName\": \"/dev/xvda\",\n"
			"                \"Hypervisor\": \"xen\",\n"
			"                \"OwnerId\": \"123456789012\",\n"
			"                \"BlockDeviceMappings\": [\n"
			"                    {\n"
			"                        \"DeviceName\": \"/dev/xvda\",\n"
			"                        \"Ebs\": {\n"
			"                            \"AttachTime\": \"2026-11-28T17:44:59.000Z\",\n"
			"                            \"DeleteOnTermination\": true,\n"
			"                            \"Status\": \"attached\",\n"
			"                            \"VolumeId\": \"vol-0123456789abcdef0\"\n"
			"                        }\n"
			"                    }\n"
			"                ],\n"
			"                \"State\": {\n"
			"                    \"Code\": 0,\n"
			"                    \"Name\": \"pending\"\n"
			"                },\n"
			"                \"StateTransitionReason\": \"\",\n"
			"                \"LocalDevices\": {\n"
			"                    \"/dev/xvda\": \"/dev/loop3\",\n"
			"                    \"/dev/sdb\": \"/dev/loop4\"\n"
			"                },\n"
			"                \"RootMount\": \"/var/lib/ebsim/instances/i-0123456789abcdef0/root\"\n"
			"            }\n"
			"        ],\n"
			"        \"OwnerId\": \"123456789012\",\n"
			"        \"ReservationId\": \"r-0123456789abcdef0\"\n"
			"    }\n"
			"\n"
			"To launch two to four instances, keep their root volumes after terminate and "
			"give them user data from a file\n"
			"\n"
			"    ebsim run-instances --image-id ami-0123456789abcdef0 --count 2:4 \\\n"
			"        --instance-type t3.micro --user-data file://cloud-init.yaml \\\n"
			"        --block-device-mappings \\\n"
			"        '[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"DeleteOnTermination\":false}}]'\n"
			"\n"
			"To read the root file system of the instance\n"
			"\n"
			"    ls /var/lib/ebsim/instances/i-0123456789abcdef0/root\n",
		.prepare = cli_prepare_run,
	},
	{
		.name = "describe-instances",
		.action = "DescribeInstances",
		.summary = "Describes instances, grouped by reservation.",
		.description =
			"Describes the instances of the account in the region of the request, grouped "
			"by reservation (the instances launched by one run-instances call): all of "
			"them, the ones named by --instance-ids, or the ones that match --filters. If "
			"an instance named by --instance-ids does not exist, the whole call fails with "
			"InvalidInstanceID.NotFound. Terminated instances stay visible for an hour, "
			"as in EC2.\n"
			"\n"
			"An instance is listed when it matches every filter, and it matches a filter "
			"when it matches any of the filter's values (with * and ? as wildcards). The "
			"filter names are EC2's:\n"
			"\n"
			"* instance-id, instance-type, image-id, reservation-id, availability-zone\n"
			"* instance-state-name (pending | running | shutting-down | terminated | "
			"stopping | stopped), instance-state-code (0 | 16 | 32 | 48 | 64 | 80)\n"
			"* architecture, root-device-type (ebs | instance-store), root-device-name, "
			"virtualization-type\n"
			"\n"
			"With --max-results N (5 to 1000) a reply holds at most N instances, grouped "
			"in their reservations, and a NextToken when more follow: pass it as "
			"--next-token to get the next page. --max-results cannot be combined with "
			"--instance-ids (InvalidParameterCombination).",
		.opts = (const struct cli_opt[]){
			{"instance-ids", CLI_LIST, false, NULL,
			 "The IDs of the instances to describe, separated by spaces."},
			{"filters", CLI_FILTERS, false, NULL,
			 "Filters, each in awscli's shorthand, Name=string,Values=string,string, "
			 "or in JSON, [{\"Name\":\"string\",\"Values\":[\"string\",...]},...]. "
			 "Give several words, or repeat --filters, to combine filters."},
			{"max-results", CLI_INTEGER, false, NULL,
			 "The largest number of instances in one reply, 5 to 1000 "
			 "(InvalidParameterValue otherwise). Default: all of them."},
			{"next-token", CLI_STRING, false, NULL,
			 "The NextToken of the previous reply: where the next page starts."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "Reservations", "list", "The reservations, each as follows."},
			{1, "Groups", "list", "Security groups: always empty."},
			{1, "Instances", "list", "The instances of the reservation, each as follows."},
			INSTANCE_FIELDS(2),
			{1, "OwnerId", "string", "The account that owns the reservation."},
			{1, "ReservationId", "string", "The ID of the reservation."},
			{0, "NextToken", "string",
			 "The token to pass to --next-token for the next page; absent on the last "
			 "page."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To describe every instance\n"
			"\n"
			"    ebsim describe-instances\n"
			"\n"
			"To list the IDs of the running instances\n"
			"\n"
			"    ebsim describe-instances --filters Name=instance-state-name,Values=running |\n"
			"        jq -r '.Reservations[].Instances[].InstanceId'\n"
			"\n"
			"To find the loop device of an instance's root volume\n"
			"\n"
			"    ebsim describe-instances --instance-ids i-0123456789abcdef0 |\n"
			"        jq -r '.Reservations[0].Instances[0] | .LocalDevices[.RootDeviceName]'\n",
	},
	{
		.name = "stop-instances",
		.action = "StopInstances",
		.summary = "Stops EBS-backed instances: EBS is kept, instance store is destroyed.",
		.description =
			"Stops instances whose root device is an EBS volume. For each, ebsimd unmounts "
			"the root file system, detaches the loop devices, makes every write to the EBS "
			"volumes durable and keeps the volumes attached to the instance; the "
			"instance-store volumes are destroyed: their key is wiped, so their data "
			"cannot be read again by anyone, and their files are removed. start-instances "
			"gives the instance new, empty instance store.\n"
			"\n"
			"Instances with an instance-store root cannot be stopped "
			"(UnsupportedOperation); terminated or shutting-down ones fail with "
			"IncorrectInstanceState. The call changes nothing unless every instance can "
			"stop. Stopping a stopped instance does nothing.\n"
			"\n"
			"The reply shows the state each instance was in and the state it moves to "
			"(stopping), as EC2 does; the instance is stopped by the time ebsim returns.",
		.opts = (const struct cli_opt[]){
			{"instance-ids", CLI_LIST, true, NULL,
			 "The IDs of the instances to stop, separated by spaces."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "StoppingInstances", "list", "One entry per instance."},
			STATE_CHANGE_FIELDS(1),
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To stop an instance\n"
			"\n"
			"    ebsim stop-instances --instance-ids i-0123456789abcdef0\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"StoppingInstances\": [\n"
			"            {\n"
			"                \"CurrentState\": {\n"
			"                    \"Code\": 64,\n"
			"                    \"Name\": \"stopping\"\n"
			"                },\n"
			"                \"InstanceId\": \"i-0123456789abcdef0\",\n"
			"                \"PreviousState\": {\n"
			"                    \"Code\": 16,\n"
			"                    \"Name\": \"running\"\n"
			"                }\n"
			"            }\n"
			"        ]\n"
			"    }\n",
	},
	{
		.name = "start-instances",
		.action = "StartInstances",
		.summary = "Starts stopped instances: EBS comes back as it was, instance store empty.",
		.description =
			"Starts stopped instances: ebsimd attaches their EBS volumes again as loop "
			"devices, creates their instance-store volumes again, empty (they read as "
			"zeros) and under a fresh key, and mounts the root file system. The devices "
			"may get other loop numbers than before: read LocalDevices, or use the "
			"links under HOME/instances/<id>/dev. If the instance type was changed while "
			"the instance was stopped, the instance store is the new type's.\n"
			"\n"
			"Starting a running instance does nothing. Other states fail with "
			"IncorrectInstanceState, and then no instance is started.\n"
			"\n"
			"The reply shows each instance moving to pending; it is running by the time "
			"ebsim returns.",
		.opts = (const struct cli_opt[]){
			{"instance-ids", CLI_LIST, true, NULL,
			 "The IDs of the instances to start, separated by spaces."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "StartingInstances", "list", "One entry per instance."},
			STATE_CHANGE_FIELDS(1),
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To start an instance\n"
			"\n"
			"    ebsim start-instances --instance-ids i-0123456789abcdef0\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"StartingInstances\": [\n"
			"            {\n"
			"                \"CurrentState\": {\n"
			"                    \"Code\": 0,\n"
			"                    \"Name\": \"pending\"\n"
			"                },\n"
			"                \"InstanceId\": \"i-0123456789abcdef0\",\n"
			"                \"PreviousState\": {\n"
			"                    \"Code\": 80,\n"
			"                    \"Name\": \"stopped\"\n"
			"                }\n"
			"            }\n"
			"        ]\n"
			"    }\n",
	},
	{
		.name = "reboot-instances",
		.action = "RebootInstances",
		.summary = "Reboots running instances: every volume, instance store included, is kept.",
		.description =
			"Reboots running instances, as an operating system restart would: the root "
			"file system is unmounted (its writes reach the volume) and mounted again. "
			"Every device stays attached under the same loop device, and all data is "
			"kept, the instance store's included.\n"
			"\n"
			"An instance that is not running fails with IncorrectInstanceState, and then "
			"no instance is rebooted.\n"
			"\n"
			"On success nothing is printed.",
		.opts = (const struct cli_opt[]){
			{"instance-ids", CLI_LIST, true, NULL,
			 "The IDs of the instances to reboot, separated by spaces."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = NULL,
		.examples = "To reboot an instance\n"
			    "\n"
			    "    ebsim reboot-instances --instance-ids i-0123456789abcdef0\n"
			    "\n"
			    "This prints nothing when it succeeds.\n",
	},
	{
		.name = "terminate-instances",
		.action = "TerminateInstances",
		.summary = "Terminates instances: deletes the volumes marked DeleteOnTermination.",
		.description =
			"Terminates instances, in any state. ebsimd unmounts the root file system, "
			"detaches every loop device, destroys the instance store (its key is wiped), "
			"deletes each EBS volume whose mapping has DeleteOnTermination true (by "
			"default the volumes created from the image's mappings) and detaches the "
			"others, which become available (by default the volumes attached with "
			"attach-volume). Their data is kept: attach them to another instance, or "
			"read them through their LocalPath.\n"
			"\n"
			"A terminated instance stays visible in describe-instances for an hour and "
			"can no longer be started, stopped or rebooted (IncorrectInstanceState). "
			"Terminating it again does nothing.\n"
			"\n"
			"The reply shows each instance moving to shutting-down; it is terminated by "
			"the time ebsim returns.",
		.opts = (const struct cli_opt[]){
			{"instance-ids", CLI_LIST, true, NULL,
			 "The IDs of the instances to terminate, separated by spaces."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "TerminatingInstances", "list", "One entry per instance."},
			STATE_CHANGE_FIELDS(1),
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To terminate an instance\n"
			"\n"
			"    ebsim terminate-instances --instance-ids i-0123456789abcdef0\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"TerminatingInstances\": [\n"
			"            {\n"
			"                \"CurrentState\": {\n"
			"                    \"Code\": 32,\n"
			"                    \"Name\": \"shutting-down\"\n"
			"                },\n"
			"                \"InstanceId\": \"i-0123456789abcdef0\",\n"
			"                \"PreviousState\": {\n"
			"                    \"Code\": 16,\n"
			"                    \"Name\": \"running\"\n"
			"                }\n"
			"            }\n"
			"        ]\n"
			"    }\n",
	},
	{
		.name = "modify-instance-attribute",
		.action = "ModifyInstanceAttribute",
		.summary = "Changes the type, user data, kernel or RAM disk of a stopped instance.",
		.description =
			"Changes one attribute of a stopped, EBS-backed instance: its instance type, "
			"user data, kernel or RAM disk, as EC2 allows. A running instance fails with "
			"IncorrectInstanceState (stop it first); an instance-store-backed one with "
			"UnsupportedOperation, since its attributes are fixed for its life.\n"
			"\n"
			"Give exactly one attribute, either as its own option (--instance-type, "
			"--user-data, --kernel, --ramdisk) or as --attribute with --value. The "
			"attribute options take awscli's forms, Value=t3.small and "
			"{\"Value\": \"t3.small\"}, or simply t3.small; ebsim sends {\"Value\": ...}. "
			"--user-data and --value of userData also take file://PATH.\n"
			"\n"
			"A new instance type must suit the instance's image, as for run-instances: "
			"the same architecture and a supported virtualization type "
			"(InvalidParameterCombination otherwise). Its instance store is created at "
			"the next start.\n"
			"\n"
			"On success nothing is printed.",
		.opts = (const struct cli_opt[]){
			{"instance-id", CLI_STRING, true, NULL, "The ID of the instance."},
			{"instance-type", CLI_VALUE, false, NULL,
			 "The new instance type: t3.small, Value=t3.small or "
			 "{\"Value\":\"t3.small\"}."},
			{"user-data", CLI_VALUE, false, NULL,
			 "The new user data (text, at most 16384 bytes), in the same forms, or "
			 "file://PATH."},
			{"kernel", CLI_VALUE, false, NULL,
			 "The new kernel ID (aki-...), in the same forms. Kept as KernelId; not "
			 "used."},
			{"ramdisk", CLI_VALUE, false, NULL,
			 "The new RAM disk ID (ari-...), in the same forms. Kept as RamdiskId; not "
			 "used."},
			{"attribute", CLI_STRING, false, NULL,
			 "The attribute to change, with --value: instanceType, userData, kernel or "
			 "ramdisk."},
			{"value", CLI_STRING, false, NULL, "The new value of --attribute."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = NULL,
		.examples =
			"To change the type of a stopped instance\n"
			"\n"
			"    ebsim stop-instances --instance-ids i-0123456789abcdef0\n"
			"    ebsim modify-instance-attribute --instance-id i-0123456789abcdef0 \\\n"
			"        --instance-type Value=m5.large\n"
			"    ebsim start-instances --instance-ids i-0123456789abcdef0\n"
			"\n"
			"The same with --attribute\n"
			"\n"
			"    ebsim modify-instance-attribute --instance-id i-0123456789abcdef0 \\\n"
			"        --attribute instanceType --value m5.large\n"
			"\n"
			"To replace the user data with a file's\n"
			"\n"
			"    ebsim modify-instance-attribute --instance-id i-0123456789abcdef0 \\\n"
			"        --user-data file://cloud-init.yaml\n"
			"\n"
			"These print nothing when they succeed.\n",
		.prepare = cli_prepare_modify,
	},
	{
		.name = "attach-volume",
		.action = "AttachVolume",
		.summary = "Attaches an available volume to an instance as a device.",
		.description =
			"Attaches an available EBS volume to a running or stopped instance of the "
			"same Availability Zone, under a device name such as /dev/sdf. On a running "
			"instance the volume appears at once as a loop device (the instance's "
			"LocalDevices, and the link HOME/instances/<id>/dev/sdf); on a stopped one, "
			"at the next start. The attachment has DeleteOnTermination false: the volume "
			"outlives the instance.\n"
			"\n"
			"Errors: a volume that is attached, or open by another user of its LocalPath, "
			"fails with VolumeInUse; a device name the instance already uses with "
			"InvalidParameterValue; an instance that is neither running nor stopped with "
			"IncorrectInstanceState; another zone with InvalidVolume.ZoneMismatch.",
		.opts = (const struct cli_opt[]){
			{"volume-id", CLI_STRING, true, NULL, "The ID of the volume to attach."},
			{"instance-id", CLI_STRING, true, NULL, "The ID of the instance."},
			{"device", CLI_STRING, true, NULL,
			 "The device name, e.g. /dev/sdf or /dev/xvdf."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			ATTACHMENT_FIELDS(0),
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To attach a volume as /dev/sdf\n"
			"\n"
			"    ebsim attach-volume --volume-id vol-0123456789abcdef0 \\\n"
			"        --instance-id i-0123456789abcdef0 --device /dev/sdf\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"AttachTime\": \"2026-11-28T17:44:59.000Z\",\n"
			"        \"Device\": \"/dev/sdf\",\n"
			"        \"InstanceId\": \"i-0123456789abcdef0\",\n"
			"        \"State\": \"attaching\",\n"
			"        \"VolumeId\": \"vol-0123456789abcdef0\"\n"
			"    }\n",
	},
	{
		.name = "detach-volume",
		.action = "DetachVolume",
		.summary = "Detaches a volume from its instance.",
		.description =
			"Detaches an EBS volume from the instance it is attached to: its loop device "
			"is removed, every write to it is made durable, and it becomes available, "
			"with its data, to attach elsewhere. As on EC2, unmount any file system on "
			"it first.\n"
			"\n"
			"The root volume of an instance can be detached only while the instance is "
			"stopped (IncorrectState otherwise). A volume that is not attached fails "
			"with IncorrectState; with --instance-id, a volume attached to another "
			"instance fails with InvalidAttachment.NotFound, and so does a --device "
			"other than the one the volume is attached at.",
		.opts = (const struct cli_opt[]){
			{"volume-id", CLI_STRING, true, NULL, "The ID of the volume to detach."},
			{"instance-id", CLI_STRING, false, NULL,
			 "The instance it must be attached to; default: whichever it is."},
			{"device", CLI_STRING, false, NULL,
			 "The device name it must be attached at (/dev/sdf and sdf are the same); "
			 "default: whichever it is."},
			{"force", CLI_BOOLEAN, false, NULL,
			 "Force the detachment. Accepted: ebsim's detachment never waits for the "
			 "instance."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			ATTACHMENT_FIELDS(0),
			{0, "DeleteOnTermination", "boolean",
			 "Whether the volume would have been deleted with the instance."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To detach a volume\n"
			"\n"
			"    ebsim detach-volume --volume-id vol-0123456789abcdef0\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"AttachTime\": \"2026-11-28T17:44:59.000Z\",\n"
			"        \"Device\": \"/dev/sdf\",\n"
			"        \"InstanceId\": \"i-0123456789abcdef0\",\n"
			"        \"State\": \"detaching\",\n"
			"        \"VolumeId\": \"vol-0123456789abcdef0\",\n"
			"        \"DeleteOnTermination\": false\n"
			"    }\n",
	},
	{
		.name = "check",
		.action = "CheckStore",
		.api = "ebsimd (not EC2)",
		.summary = "Verifies the snapshot stores: every chunk against its hash, every manifest.",
		.description =
			"Checks the snapshot stores of every region of the home, whatever --region "
			"and --account say: every stored chunk (object) is read back and compared "
			"with the hash that names it, and every snapshot's manifest is read and each "
			"chunk it lists is looked up in the store. It finds:\n"
			"\n"
			"* corrupt objects, whose data no longer matches their hash (Corrupt);\n"
			"* missing objects, listed by a manifest but absent from the store (Missing);\n"
			"* manifests that cannot be read or parsed (BadManifests);\n"
			"* leaked objects, which no snapshot and no volume refers to (Leaked). They "
			"waste space but harm no data.\n"
			"\n"
			"The check reads all the data of the stores and can take a while. It is "
			"refused with IncorrectState while a snapshot or copy job runs in a region.\n"
			"\n"
			"The JSON is printed whatever the result, and the exit status tells it, as "
			"qemu-img check does:\n"
			"\n"
			"* 0: the stores are clean (Result clean).\n"
			"* 2: the stores are corrupt: Corrupt, Missing or BadManifests is not empty "
			"(Result corrupt).\n"
			"* 3: the data is sound, but there are leaked objects (Result leaks).\n"
			"\n"
			"Otherwise the exit status is ebsim's usual one: 254 when ebsimd refuses, 255 "
			"when it cannot be reached.",
		.opts = (const struct cli_opt[]){
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "ObjectsChecked", "integer", "The number of stored objects checked."},
			{0, "Corrupt", "list", "The objects whose data does not match their hash."},
			{1, "Region", "string", "The region of the store."},
			{1, "ObjectId", "string", "The ID of the object: the hash of its data."},
			{1, "SnapshotId", "string",
			 "A snapshot that uses the object, if any; the snapshot is damaged."},
			{1, "ChunkIndex", "integer",
			 "Where that snapshot uses it: the chunk's offset in the volume divided by "
			 "the chunk size."},
			{0, "Missing", "list",
			 "The objects a snapshot lists that are not in the store; the same fields as "
			 "Corrupt."},
			{0, "BadManifests", "list",
			 "The IDs of the snapshots whose manifest cannot be read or parsed."},
			{0, "LeakedCount", "integer", "The number of leaked objects."},
			{0, "Leaked", "list", "The IDs of the leaked objects; at most 1000 are listed."},
			{0, "Result", "string",
			 "clean, corrupt (Corrupt, Missing or BadManifests is not empty) or leaks "
			 "(only leaked objects were found)."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To check the stores\n"
			"\n"
			"    ebsim check\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"ObjectsChecked\": 4096,\n"
			"        \"Corrupt\": [],\n"
			"        \"Missing\": [],\n"
			"        \"BadManifests\": [],\n"
			"        \"LeakedCount\": 0,\n"
			"        \"Leaked\": [],\n"
			"        \"Result\": \"clean\"\n"
			"    }\n"
			"\n"
			"To check from a script\n"
			"\n"
			"    ebsim check >report.json\n"
			"    case $? in\n"
			"    0) echo clean ;;\n"
			"    2) echo 'corrupt: see report.json' ;;\n"
			"    3) echo 'leaked objects only' ;;\n"
			"    *) echo 'the check did not run' ;;\n"
			"    esac\n",
		.finish = cli_finish_check,
	},
	{
		.name = "bench",
		.action = "DescribeVolumes",
		.api = "ebsim, local (fio); it calls the EC2 API",
		.summary = "Runs fio on a volume's LocalPath with the profiles of make bench.",
		.description =
			"Measures one volume as make bench measures ebsim: it looks the volume up "
			"with describe-volumes, then runs fio on its LocalPath (the FUSE file; "
			"attach it with losetup to measure the loop device instead) once per "
			"profile, and prints what fio measured. fio must be installed (make deps). "
			"Each profile runs for --runtime seconds after a 1 s ramp, with --direct=1, "
			"--ioengine=io_uring, over the whole volume:\n"
			"\n"
			"* rr4k-qd1: 4 KiB random reads, queue depth 1;\n"
			"* rr4k-qd32 (the default): 4 KiB random reads, queue depth 32;\n"
			"* rw4k-qd32: 4 KiB random writes, queue depth 32;\n"
			"* mix4k-qd16: 4 KiB random, 70% reads and 30% writes, queue depth 16;\n"
			"* sr1m-qd8: 1 MiB sequential reads, queue depth 8;\n"
			"* sw1m-qd8: 1 MiB sequential writes, queue depth 8;\n"
			"* all: the six, in that order.\n"
			"\n"
			"The profiles that write destroy the volume's data and run only with "
			"--overwrite. A volume that was never written is sparse and slower to write "
			"the first time (blocks are allocated) and faster to read (holes read as "
			"zeros): write it once, e.g. with sw1m-qd8, before measuring it. Numbers "
			"from one run are noisy; bench/bench.py interleaves repeated runs and "
			"compares against the raw disk and qemu-storage-daemon.",
		.opts = (const struct cli_opt[]){
			{"volume-id", CLI_LIST, true, "VolumeIds", "The ID of the volume to measure."},
			{"profile", CLI_STRING, false, CLI_LOCAL,
			 "rr4k-qd1, rr4k-qd32 (the default), rw4k-qd32, mix4k-qd16, sr1m-qd8, "
			 "sw1m-qd8 or all."},
			{"runtime", CLI_INTEGER, false, CLI_LOCAL,
			 "Seconds each profile is measured, 1 to 3600. Default 10."},
			{"overwrite", CLI_FLAG, false, CLI_LOCAL,
			 "Allow the profiles that write (rw4k-qd32, mix4k-qd16, sw1m-qd8, all): they "
			 "overwrite the volume's data."},
			{NULL, 0, false, NULL, NULL},
		},
		.output = (const struct cli_field[]){
			{0, "VolumeId", "string", "The ID of the volume."},
			{0, "LocalPath", "string", "The file fio ran on."},
			{0, "RuntimeSeconds", "integer", "Seconds each profile was measured."},
			{0, "Results", "list", "One entry per profile, in the order run."},
			{1, "Profile", "string", "The profile's name."},
			{1, "Iops", "integer", "I/O operations per second, reads and writes together."},
			{1, "MBps", "number", "Throughput, in 10^6 bytes per second."},
			{1, "ReadLatencyP50Us", "number",
			 "The median completion latency of reads, in microseconds (profiles that "
			 "read)."},
			{1, "ReadLatencyP99Us", "number", "The 99th percentile of the same."},
			{1, "WriteLatencyP50Us", "number",
			 "The same for writes (profiles that write)."},
			{1, "WriteLatencyP99Us", "number", "The 99th percentile of the same."},
			{0, NULL, NULL, NULL},
		},
		.examples =
			"To measure 4 KiB random reads at queue depth 32 for 5 seconds\n"
			"\n"
			"    ebsim bench --volume-id vol-0123456789abcdef0 --runtime 5\n"
			"\n"
			"Output:\n"
			"\n"
			"    {\n"
			"        \"VolumeId\": \"vol-0123456789abcdef0\",\n"
			"        \"LocalPath\": \"/var/lib/ebsim/mnt/vol-0123456789abcdef0\",\n"
			"        \"RuntimeSeconds\": 5,\n"
			"        \"Results\": [\n"
			"            {\n"
			"                \"Profile\": \"rr4k-qd32\",\n"
			"                \"Iops\": 61234,\n"
			"                \"MBps\": 250.8,\n"
			"                \"ReadLatencyP50Us\": 481.3,\n"
			"                \"ReadLatencyP99Us\": 1056.8\n"
			"            }\n"
			"        ]\n"
			"    }\n"
			"\n"
			"To fill a new volume once, then run every profile\n"
			"\n"
			"    ebsim bench --volume-id vol-0123456789abcdef0 --profile sw1m-qd8 \\\n"
			"        --overwrite --runtime 1\n"
			"    ebsim bench --volume-id vol-0123456789abcdef0 --profile all --overwrite\n",
		.finish = cli_finish_bench,
	},
};

/* clang-format on */

/* Keys whose value is a list even when the shorthand gives one value (Values=a). */
static const char *const cli_filter_list_keys[] = {"Values", NULL};
/* A tag's Key and Value are strings: Key=a,Value=b has no list keys. */
static const char *const cli_tag_list_keys[] = {NULL};

/* --- parse state ---------------------------------------------------------------------- */

struct cli {
	const char *home, *region, *account;
	const char *verb_word;	     /* the command as typed; NULL when none was */
	const struct cli_verb *verb; /* NULL when verb_word names no command */
	bool help, version, debug;
	bool help_word;		   /* `ebsim help [command]` */
	size_t nopts;		   /* options of verb */
	struct json_object **vals; /* per option: its JSON value (NULL is JSON null) */
	bool *given;		   /* per option: it was on the command line */
	char err[CLI_ERR_MAX];	   /* the first usage error, "" when none */
	bool err_bare;		   /* err is printed without the usage lines */
	const char *unknown[CLI_UNKNOWN_MAX];
	size_t nunknown; /* may exceed CLI_UNKNOWN_MAX; the rest are counted */
};

/* Columns of the progress line drawn on stderr (initialize-volume); 0 when none is open. */
static int cli_bar_len;

/* End the progress line, if one is open, so that a message starts on a line of its own. */
static void cli_end_line(void)
{
	if (cli_bar_len)
		fputc('\n', stderr);
	cli_bar_len = 0;
}

static int cli_nomem(void)
{
	cli_end_line();
	fputs("ebsim: out of memory\n", stderr);
	return CLI_EXIT_NOMEM;
}

/* Echo length of user text: at most CLI_ECHO_MAX bytes of it appear in a message. */
static int cli_echo_len(const char *s)
{
	return (int)strnlen(s, CLI_ECHO_MAX);
}

static void cli_set_err(struct cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Keep only the first error: later ones are usually consequences of it. */
static void cli_set_err(struct cli *c, const char *fmt, ...)
{
	va_list ap;

	if (c->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
}

static const struct cli_verb *cli_find_verb(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(cli_verbs); i++)
		if (strcmp(cli_verbs[i].name, name) == 0)
			return &cli_verbs[i];
	return NULL;
}

/* Whether ebsim handles the option itself rather than sending it. */
static bool cli_is_local(const struct cli_opt *o)
{
	return o->param && !o->param[0];
}

/* "volume-ids" -> "VolumeIds". The names are ours (the registry), so they fit. */
static void cli_param_name(const struct cli_opt *o, char out[CLI_PARAM_MAX])
{
	size_t n = 0;
	bool up = true;

	if (o->param) {
		snprintf(out, CLI_PARAM_MAX, "%s", o->param);
		return;
	}
	for (const char *p = o->name; *p && n + 1 < CLI_PARAM_MAX; p++) {
		if (*p == '-') {
			up = true;
			continue;
		}
		out[n++] = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
		up = false;
	}
	out[n] = '\0';
}

/* --- JSON values from text --------------------------------------------------------------- */

/* Parse all of s (NUL-terminated at len) as strict JSON. Returns true and *out (NULL for a
 * JSON null) on success; else false, and *why (if not NULL) says what went wrong. */
static bool cli_json_parse(const char *s, size_t len, struct json_object **out, const char **why)
{
	struct json_tokener *tok;
	struct json_object *o;
	enum json_tokener_error jerr;
	bool ok;

	*out = NULL;
	if (why)
		*why = "too long";
	if (len > INT_MAX - 1)
		return false;
	if (why)
		*why = "out of memory";
	tok = json_tokener_new_ex(CLI_JSON_DEPTH);
	if (!tok)
		return false;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	/* Include the terminating NUL: it tells the tokener that a bare number has ended. */
	o = json_tokener_parse_ex(tok, s, (int)len + 1);
	jerr = json_tokener_get_error(tok);
	ok = jerr == json_tokener_success && json_tokener_get_parse_end(tok) >= len;
	if (why)
		*why = jerr == json_tokener_success ? "text after the JSON value"
						    : json_tokener_error_desc(jerr);
	json_tokener_free(tok);
	if (!ok) {
		json_object_put(o);
		return false;
	}
	*out = o;
	return true;
}

/* Add v to array a; on failure v is released and -ENOMEM returned. */
static int cli_array_add(struct json_object *a, struct json_object *v)
{
	if (json_object_array_add(a, v) < 0) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

/* Add key: v to object o; on failure v is released and -ENOMEM returned. */
static int cli_object_add(struct json_object *o, const char *key, struct json_object *v)
{
	if (json_object_object_add(o, key, v) < 0) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

/* A decimal integer becomes a JSON integer; anything else stays a string. NULL: no memory. */
static struct json_object *cli_integer(const char *s)
{
	const char *p = s;
	long long v;
	char *end;

	if (*p == '+' || *p == '-')
		p++;
	if (!*p)
		return json_object_new_string(s);
	for (const char *q = p; *q; q++)
		if (*q < '0' || *q > '9')
			return json_object_new_string(s);
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end)
		return json_object_new_string(s);
	return json_object_new_int64(v);
}

/* JSON text becomes its value; text that does not parse is sent as a string, and ebsimd
 * answers InvalidParameterValue. Returns 0 or -ENOMEM. */
static int cli_json_value(const char *s, struct json_object **out)
{
	if (cli_json_parse(s, strlen(s), out, NULL))
		return 0;
	*out = json_object_new_string(s);
	return *out ? 0 : -ENOMEM;
}

/* Whether a word (after leading blanks) starts with one of the characters in set. */
static bool cli_starts_with(const char *s, const char *set)
{
	s += strspn(s, " \t\n");
	return *s && strchr(set, *s);
}

/* Append a word of JSON to list a: the elements of an array, or the value itself; a word
 * that does not parse is appended as a string. */
static int cli_append_json(struct json_object *a, const char *s)
{
	struct json_object *v;
	size_t n;
	int ret;

	ret = cli_json_value(s, &v);
	if (ret < 0)
		return ret;
	if (!json_object_is_type(v, json_type_array))
		return cli_array_add(a, v);
	n = json_object_array_length(v);
	for (size_t i = 0; i < n; i++) {
		ret = cli_array_add(a, json_object_get(json_object_array_get_idx(v, i)));
		if (ret < 0)
			break;
	}
	json_object_put(v);
	return ret;
}

/* --- awscli shorthand: Name=status,Values=available,in-use -------------------------------- */

struct cli_sh {
	const char *s;
	size_t len, pos;
	const char *const *list_keys;
	char err[96]; /* what was expected, what was found */
};

static void cli_sh_ws(struct cli_sh *p)
{
	while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t'))
		p->pos++;
}

static int cli_sh_fail(struct cli_sh *p, const char *expected)
{
	if (p->pos < p->len)
		snprintf(p->err, sizeof(p->err), "Expected: '%s', received: '%c'", expected,
			 p->s[p->pos]);
	else
		snprintf(p->err, sizeof(p->err), "Expected: '%s', received: 'EOF'", expected);
	return -EINVAL;
}

static struct json_object *cli_sh_string(const struct cli_sh *p, size_t start, size_t end)
{
	if (end - start > INT_MAX)
		return NULL;
	return json_object_new_string_len(p->s + start, (int)(end - start));
}

/* One value: 'quoted', "quoted", or bare up to ',' (or ']' inside [a,b]). */
static int cli_sh_value(struct cli_sh *p, bool in_brackets, struct json_object **out)
{
	size_t start, end;

	cli_sh_ws(p);
	if (p->pos < p->len && (p->s[p->pos] == '"' || p->s[p->pos] == '\'')) {
		char q = p->s[p->pos++];

		start = p->pos;
		while (p->pos < p->len && p->s[p->pos] != q)
			p->pos++;
		if (p->pos == p->len)
			return cli_sh_fail(p, q == '"' ? "\"" : "'");
		end = p->pos++;
		cli_sh_ws(p);
	} else {
		start = p->pos;
		while (p->pos < p->len && p->s[p->pos] != ',' &&
		       !(in_brackets && p->s[p->pos] == ']'))
			p->pos++;
		end = p->pos;
		while (end > start && (p->s[end - 1] == ' ' || p->s[end - 1] == '\t'))
			end--;
	}
	*out = cli_sh_string(p, start, end);
	return *out ? 0 : -ENOMEM;
}

/* At a ',' after a value: does a new key=value follow, or another value of the list? */
static bool cli_sh_key_follows(const struct cli_sh *p)
{
	size_t q = p->pos + 1;

	while (q < p->len && (p->s[q] == ' ' || p->s[q] == '\t'))
		q++;
	if (q < p->len && (p->s[q] == '"' || p->s[q] == '\''))
		return false;
	for (; q < p->len && p->s[q] != ','; q++)
		if (p->s[q] == '=')
			return true;
	return false;
}

/* [a,b,c] */
static int cli_sh_brackets(struct cli_sh *p, struct json_object *list)
{
	struct json_object *v;
	int ret;

	p->pos++; /* '[' */
	cli_sh_ws(p);
	if (p->pos < p->len && p->s[p->pos] == ']') {
		p->pos++;
		return 0;
	}
	for (;;) {
		ret = cli_sh_value(p, true, &v);
		if (ret < 0)
			return ret;
		ret = cli_array_add(list, v);
		if (ret < 0)
			return ret;
		if (p->pos < p->len && p->s[p->pos] == ',') {
			p->pos++;
			continue;
		}
		if (p->pos < p->len && p->s[p->pos] == ']') {
			p->pos++;
			return 0;
		}
		return cli_sh_fail(p, "]");
	}
}

static bool cli_sh_is_list_key(const struct cli_sh *p, const char *key)
{
	for (const char *const *k = p->list_keys; k && *k; k++)
		if (strcmp(*k, key) == 0)
			return true;
	return false;
}

/* key=value: a value, a,b,c or [a,b,c]. Adds the pair to obj. */
static int cli_sh_pair(struct cli_sh *p, struct json_object *obj)
{
	struct json_object *first = NULL, *list = NULL, *v;
	size_t kstart, kend;
	char *key;
	int ret;

	cli_sh_ws(p);
	kstart = p->pos;
	while (p->pos < p->len && p->s[p->pos] != '=' && p->s[p->pos] != ',')
		p->pos++;
	kend = p->pos;
	while (kend > kstart && (p->s[kend - 1] == ' ' || p->s[kend - 1] == '\t'))
		kend--;
	if (p->pos == p->len || p->s[p->pos] != '=')
		return cli_sh_fail(p, "=");
	if (kend == kstart)
		return cli_sh_fail(p, "a parameter name");
	key = strndup(p->s + kstart, kend - kstart);
	if (!key)
		return -ENOMEM;
	p->pos++; /* '=' */
	cli_sh_ws(p);
	if (p->pos < p->len && p->s[p->pos] == '[') {
		ret = -ENOMEM;
		list = json_object_new_array();
		if (!list)
			goto out_free_key;
		ret = cli_sh_brackets(p, list);
		if (ret < 0)
			goto out_put;
	} else {
		ret = cli_sh_value(p, false, &first);
		if (ret < 0)
			goto out_free_key;
		while (p->pos < p->len && p->s[p->pos] == ',' && !cli_sh_key_follows(p)) {
			p->pos++;
			if (!list) {
				ret = -ENOMEM;
				list = json_object_new_array();
				if (!list)
					goto out_put;
				ret = cli_array_add(list, first);
				first = NULL;
				if (ret < 0)
					goto out_put;
			}
			ret = cli_sh_value(p, false, &v);
			if (ret < 0)
				goto out_put;
			ret = cli_array_add(list, v);
			if (ret < 0)
				goto out_put;
		}
		if (!list && cli_sh_is_list_key(p, key)) {
			ret = -ENOMEM;
			list = json_object_new_array();
			if (!list)
				goto out_put;
			ret = cli_array_add(list, first);
			first = NULL;
			if (ret < 0)
				goto out_put;
		}
	}
	ret = cli_object_add(obj, key, list ? list : first);
	list = first = NULL;
out_put:
	json_object_put(list);
	json_object_put(first);
out_free_key:
	free(key);
	return ret;
}

/* Parse one shorthand word into an object. 0, -EINVAL (p->err says why) or -ENOMEM. */
static int cli_shorthand(struct cli_sh *p, struct json_object **out)
{
	struct json_object *obj = json_object_new_object();
	int ret;

	*out = NULL;
	if (!obj)
		return -ENOMEM;
	for (;;) {
		ret = cli_sh_pair(p, obj);
		if (ret < 0)
			goto out_put;
		cli_sh_ws(p);
		if (p->pos == p->len)
			break;
		if (p->s[p->pos] != ',') {
			ret = cli_sh_fail(p, ",");
			goto out_put;
		}
		p->pos++;
	}
	*out = obj;
	return 0;
out_put:
	json_object_put(obj);
	return ret;
}

/* --- command-line parsing ------------------------------------------------------------ */

static bool cli_is_option(const char *w)
{
	return w[0] == '-' && w[1] == '-';
}

static void cli_add_unknown(struct cli *c, const char *w)
{
	if (c->nunknown < CLI_UNKNOWN_MAX)
		c->unknown[c->nunknown] = w;
	if (c->nunknown < SIZE_MAX)
		c->nunknown++;
}

/* Whether the option word's name (nlen bytes at a) is name. */
static bool cli_name_is(const char *a, size_t nlen, const char *name)
{
	return strlen(name) == nlen && memcmp(a, name, nlen) == 0;
}

/* Record a shorthand word that does not parse, in awscli's format: the input, then a caret
 * under the place where it went wrong. */
static void cli_sh_error(struct cli *c, const struct cli_opt *o, const struct cli_sh *p,
			 const char *w)
{
	int echo = cli_echo_len(w);

	if (!c->err[0])
		c->err_bare = true;
	if (p->pos <= (size_t)echo)
		cli_set_err(c, "Error parsing parameter '--%s': %s for input:\n%.*s\n%*s^", o->name,
			    p->err, echo, w, (int)p->pos, "");
	else
		cli_set_err(c, "Error parsing parameter '--%s': %s for input:\n%.*s...", o->name,
			    p->err, echo, w);
}

/* One value of a filters or tags option: JSON, or a shorthand word (one structure). */
static int cli_add_struct(struct cli *c, const struct cli_opt *o, struct json_object *list,
			  const char *w)
{
	struct cli_sh p = {.s = w,
			   .len = strlen(w),
			   .list_keys = o->type == CLI_TAGS ? cli_tag_list_keys
							    : cli_filter_list_keys};
	struct json_object *f;
	int ret;

	if (cli_starts_with(w, "[{"))
		return cli_append_json(list, w);
	ret = cli_shorthand(&p, &f);
	if (ret == -EINVAL) {
		cli_sh_error(c, o, &p, w);
		return 0;
	}
	if (ret < 0)
		return ret;
	return cli_array_add(list, f);
}

/* One value of an attribute-value option: a JSON object as it is, awscli's shorthand
 * (Value=x) as parsed, anything else x as {"Value": "x"}. 0 (*out is NULL when a usage
 * error was recorded) or -ENOMEM. */
static int cli_attr_value(struct cli *c, const struct cli_opt *o, const char *w,
			  struct json_object **out)
{
	struct cli_sh p = {.s = w, .len = strlen(w)};
	struct json_object *v;
	int ret;

	*out = NULL;
	if (cli_starts_with(w, "{") && cli_json_parse(w, strlen(w), out, NULL))
		return 0;
	if (strncmp(w, "Value=", 6) == 0) {
		ret = cli_shorthand(&p, out);
		if (ret == -EINVAL)
			cli_sh_error(c, o, &p, w);
		return ret == -EINVAL ? 0 : ret;
	}
	*out = json_object_new_object();
	v = json_object_new_string(w);
	if (!*out || !v || cli_object_add(*out, "Value", v) < 0) {
		json_object_put(*out);
		*out = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* Convert one value word of option k and store or append it. 0 or -ENOMEM. */
static int cli_store(struct cli *c, size_t k, const char *w)
{
	const struct cli_opt *o = &c->verb->opts[k];
	struct json_object *v = NULL;
	int ret;

	switch (o->type) {
	case CLI_LIST:
	case CLI_FILTERS:
	case CLI_TAGS:
		if (!c->vals[k]) {
			c->vals[k] = json_object_new_array();
			if (!c->vals[k])
				return -ENOMEM;
		}
		c->given[k] = true;
		if (o->type == CLI_FILTERS || o->type == CLI_TAGS)
			return cli_add_struct(c, o, c->vals[k], w);
		if (cli_starts_with(w, "["))
			return cli_append_json(c->vals[k], w);
		v = json_object_new_string(w);
		return v ? cli_array_add(c->vals[k], v) : -ENOMEM;
	case CLI_INTEGER:
		v = cli_integer(w);
		if (!v)
			return -ENOMEM;
		break;
	case CLI_JSON:
		ret = cli_json_value(w, &v);
		if (ret < 0)
			return ret;
		break;
	case CLI_VALUE:
		ret = cli_attr_value(c, o, w, &v);
		if (ret < 0 || !v)
			return ret;
		break;
	case CLI_STRING:
	case CLI_BOOLEAN: /* not reached: booleans and flags take no value */
	case CLI_FLAG:
		v = json_object_new_string(w);
		if (!v)
			return -ENOMEM;
		break;
	}
	/* A repeated single-valued option: the last one wins, as in argparse. */
	json_object_put(c->vals[k]);
	c->vals[k] = v;
	c->given[k] = true;
	return 0;
}

/* Option k of the command, at argv[i]; inl is the text after '=' or NULL. Returns the index
 * of the last word consumed, or -ENOMEM. */
static int cli_take(struct cli *c, size_t k, bool negated, int argc, char **argv, int i,
		    const char *inl)
{
	const struct cli_opt *o = &c->verb->opts[k];
	int ret, j;

	if (o->type == CLI_BOOLEAN || o->type == CLI_FLAG) {
		if (inl) {
			cli_set_err(c, "argument --%s%s: ignored explicit argument '%.*s'",
				    negated ? "no-" : "", o->name, cli_echo_len(inl), inl);
			return i;
		}
		json_object_put(c->vals[k]);
		c->vals[k] = json_object_new_boolean(!negated);
		if (!c->vals[k])
			return -ENOMEM;
		c->given[k] = true;
		return i;
	}
	if (inl) {
		ret = cli_store(c, k, inl);
		return ret < 0 ? ret : i;
	}
	if (o->type == CLI_LIST || o->type == CLI_FILTERS || o->type == CLI_TAGS) {
		for (j = i + 1; j < argc && !cli_is_option(argv[j]); j++) {
			ret = cli_store(c, k, argv[j]);
			if (ret < 0)
				return ret;
		}
		if (j == i + 1)
			cli_set_err(c, "argument --%s: expected at least one argument", o->name);
		return j - 1;
	}
	if (i + 1 >= argc || cli_is_option(argv[i + 1])) {
		cli_set_err(c, "argument --%s: expected one argument", o->name);
		return i;
	}
	ret = cli_store(c, k, argv[i + 1]);
	return ret < 0 ? ret : i + 1;
}

/* A global option that takes a value: --home, --region, --account. */
static int cli_take_global(struct cli *c, const char **dst, const char *name, int argc, char **argv,
			   int i, const char *inl)
{
	const char *v = inl ? inl : i + 1 < argc ? argv[i + 1] : NULL;

	if (!v || (!inl && cli_is_option(v))) {
		cli_set_err(c, "argument --%s: expected one argument", name);
		return i;
	}
	/* An empty region or account is ebsimd's to refuse; an empty home names no socket. */
	if (!*v && dst == &c->home)
		cli_set_err(c, "argument --home: expected a directory, not an empty string");
	*dst = v;
	return inl ? i : i + 1;
}

/* The option word at argv[i]. Returns the index of the last word consumed, or -ENOMEM. */
static int cli_option(struct cli *c, int argc, char **argv, int i)
{
	const char *a = argv[i] + 2;
	const char *eq = strchr(a, '=');
	size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
	const char *inl = eq ? eq + 1 : NULL;

	if (cli_name_is(a, nlen, "help")) {
		c->help = true;
		return i;
	}
	if (cli_name_is(a, nlen, "version")) {
		c->version = true;
		return i;
	}
	if (cli_name_is(a, nlen, "debug")) {
		c->debug = true;
		return i;
	}
	if (cli_name_is(a, nlen, "home"))
		return cli_take_global(c, &c->home, "home", argc, argv, i, inl);
	if (cli_name_is(a, nlen, "region"))
		return cli_take_global(c, &c->region, "region", argc, argv, i, inl);
	if (cli_name_is(a, nlen, "account"))
		return cli_take_global(c, &c->account, "account", argc, argv, i, inl);
	if (c->verb) {
		for (size_t k = 0; k < c->nopts; k++)
			if (cli_name_is(a, nlen, c->verb->opts[k].name))
				return cli_take(c, k, false, argc, argv, i, inl);
		for (size_t k = 0; k < c->nopts; k++)
			if (c->verb->opts[k].type == CLI_BOOLEAN && nlen > 3 &&
			    memcmp(a, "no-", 3) == 0 &&
			    cli_name_is(a + 3, nlen - 3, c->verb->opts[k].name))
				return cli_take(c, k, true, argc, argv, i, inl);
	}
	cli_add_unknown(c, argv[i]);
	return i;
}

static int cli_set_verb(struct cli *c, const char *w)
{
	c->verb_word = w;
	c->verb = cli_find_verb(w);
	if (!c->verb)
		return 0;
	while (c->verb->opts[c->nopts].name)
		c->nopts++;
	c->vals = calloc(c->nopts + 1, sizeof(*c->vals));
	c->given = calloc(c->nopts + 1, sizeof(*c->given));
	return c->vals && c->given ? 0 : -ENOMEM;
}

/* One pass over argv. 0 or -ENOMEM; usage problems are recorded in c, not returned. */
static int cli_parse(struct cli *c, int argc, char **argv)
{
	int ret;

	for (int i = 1; i < argc; i++) {
		const char *w = argv[i];

		if (cli_is_option(w)) {
			i = cli_option(c, argc, argv, i);
			if (i < 0)
				return i;
		} else if (!c->verb_word) {
			if (!c->help_word && strcmp(w, "help") == 0) {
				c->help_word = c->help = true;
				continue;
			}
			ret = cli_set_verb(c, w);
			if (ret < 0)
				return ret;
		} else if (c->help_word) {
			continue; /* `ebsim help create-volume more words`: ignored */
		} else if (c->verb && strcmp(w, "help") == 0) {
			c->help = true; /* `ebsim create-volume help`, as in awscli */
		} else {
			cli_add_unknown(c, w);
		}
	}
	return 0;
}

static void cli_free(struct cli *c)
{
	if (c->vals)
		for (size_t k = 0; k < c->nopts; k++)
			json_object_put(c->vals[k]);
	free(c->vals);
	free(c->given);
}

/* --- usage errors --------------------------------------------------------------------- */

static int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli_usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("usage: ebsim [options] <command> [parameters]\n"
	      "To see help text, you can run:\n"
	      "\n"
	      "  ebsim help\n"
	      "  ebsim <command> help\n"
	      "  ebsim <command> --help\n"
	      "\n"
	      "ebsim: error: ",
	      stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_USAGE;
}

/* Edit distance, for "maybe you meant"; only called on short words. */
static size_t cli_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t row[64];

	if (lb >= ARRAY_SIZE(row))
		return SIZE_MAX;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];

		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t best = diag + (a[i - 1] != b[j - 1]);

			best = MIN(best, up + 1);
			best = MIN(best, row[j - 1] + 1);
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

static int cli_bad_verb(const char *w)
{
	size_t len = strlen(w);
	bool any = false;
	char list[1024] = "";
	size_t used = 0;

	if (len < 64) {
		for (size_t i = 0; i < ARRAY_SIZE(cli_verbs); i++) {
			const char *name = cli_verbs[i].name;
			size_t d = cli_distance(w, name);
			int n;

			if (d > MAX(len / 4, (size_t)1) && !(len >= 3 && strstr(name, w)))
				continue;
			n = snprintf(list + used, sizeof(list) - used, "\n  * %s", name);
			if (n < 0 || (size_t)n >= sizeof(list) - used)
				break;
			used += (size_t)n;
			any = true;
		}
	}
	if (any)
		return cli_usage_error(
		    "argument command: Invalid choice: '%.*s', maybe you meant:\n%s",
		    cli_echo_len(w), w, list);
	return cli_usage_error("argument command: Invalid choice: '%.*s'. "
			       "Run 'ebsim help' to see the available commands.",
			       cli_echo_len(w), w);
}

/* Everything the parser recorded, in argparse's order. 0 when the command can run. */
static int cli_check(struct cli *c)
{
	char list[CLI_ERR_MAX];
	size_t used = 0;

	if (c->err[0]) {
		if (!c->err_bare)
			return cli_usage_error("%s", c->err);
		fprintf(stderr, "\n%s\n", c->err);
		return EXIT_USAGE;
	}
	if (!c->verb_word)
		return cli_usage_error("the following arguments are required: command");
	if (!c->verb)
		return cli_bad_verb(c->verb_word);
	list[0] = '\0';
	for (size_t k = 0; k < c->nopts; k++) {
		int n;

		if (!c->verb->opts[k].required || c->given[k])
			continue;
		n = snprintf(list + used, sizeof(list) - used, "%s--%s", used ? ", " : "",
			     c->verb->opts[k].name);
		if (n < 0 || (size_t)n >= sizeof(list) - used)
			break;
		used += (size_t)n;
	}
	if (used)
		return cli_usage_error("the following arguments are required: %s", list);
	if (c->nunknown) {
		for (size_t k = 0; k < MIN(c->nunknown, (size_t)CLI_UNKNOWN_MAX); k++) {
			int n =
			    snprintf(list + used, sizeof(list) - used, "%s%.*s", used ? ", " : "",
				     cli_echo_len(c->unknown[k]), c->unknown[k]);

			if (n < 0 || (size_t)n >= sizeof(list) - used)
				break;
			used += (size_t)n;
		}
		return cli_usage_error("Unknown options: %s%s", list,
				       c->nunknown > CLI_UNKNOWN_MAX ? ", ..." : "");
	}
	return 0;
}

/* --- help ----------------------------------------------------------------------------- */

static void cli_spaces(FILE *f, int n)
{
	for (int i = 0; i < n; i++)
		putc(' ', f);
}

/* Print the words of [p, end) filling lines to CLI_HELP_WIDTH; *col is the current column
 * (0: at the start of a line, which then gets indent spaces). */
static void cli_fill(FILE *f, int *col, int indent, const char *p, const char *end)
{
	while (p < end) {
		const char *w;
		int wl;

		while (p < end && *p == ' ')
			p++;
		if (p == end)
			break;
		w = p;
		while (p < end && *p != ' ')
			p++;
		wl = (int)(p - w);
		if (*col && *col + 1 + wl > CLI_HELP_WIDTH) {
			putc('\n', f);
			*col = 0;
		}
		if (*col) {
			putc(' ', f);
			(*col)++;
		} else {
			cli_spaces(f, indent);
			*col = indent;
		}
		fwrite(w, 1, (size_t)wl, f);
		*col += wl;
	}
}

/* Print help text (see the registry for its conventions) at the given indent. */
static void cli_wrap(FILE *f, int indent, const char *text)
{
	const char *p = text;
	int col = 0;

	while (*p) {
		const char *nl = strchrnul(p, '\n');

		if (nl == p || *p == ' ' || (p[0] == '*' && p[1] == ' ')) {
			if (col)
				putc('\n', f);
			col = 0;
		}
		if (nl == p) {
			putc('\n', f);
		} else if (*p == ' ') {
			cli_spaces(f, indent);
			fprintf(f, "%.*s\n", (int)(nl - p - 1), p + 1);
		} else if (p[0] == '*' && p[1] == ' ') {
			cli_spaces(f, indent);
			putc('*', f); /* cli_fill adds the space */
			col = indent + 1;
			cli_fill(f, &col, indent + 2, p + 2, nl);
			putc('\n', f);
			col = 0;
		} else {
			cli_fill(f, &col, indent, p, nl);
		}
		p = *nl ? nl + 1 : nl;
	}
	if (col)
		putc('\n', f);
}

static const char *cli_type_name(enum cli_type t)
{
	switch (t) {
	case CLI_INTEGER:
		return "integer";
	case CLI_STRING:
		return "string";
	case CLI_BOOLEAN:
		return "boolean";
	case CLI_LIST:
		return "list";
	case CLI_JSON:
		return "JSON";
	case CLI_FILTERS:
		return "list of filters";
	case CLI_TAGS:
		return "list of tags";
	case CLI_FLAG:
		return "flag";
	case CLI_VALUE:
		return "attribute value";
	}
	return "?";
}

/* Definition lists: a term line, printed at 7 columns, then lines that start with "   ",
 * wrapped at 10. */
static const char cli_global_help[] =
    "--home <dir>\n"
    "   The ebsim home directory: the daemon's state and its control socket, "
    "<dir>/" CTL_SOCK_NAME ". Default: $EBSIM_HOME, else " EBSIM_DEFAULT_HOME ".\n"
    "\n"
    "--region <region>\n"
    "   The region of the request, e.g. eu-west-1. Resources live in one region and "
    "other regions do not see them. Default: $EBSIM_REGION, else " EBSIM_DEFAULT_REGION ".\n"
    "\n"
    "--account <id>\n"
    "   The 12-digit account the request acts for; resources belong to an account. "
    "Default: $EBSIM_ACCOUNT, else " EBSIM_DEFAULT_ACCOUNT ".\n"
    "\n"
    "--debug\n"
    "   Print the request sent to ebsimd and the raw reply on standard error.\n"
    "\n"
    "--help\n"
    "   Print help: this page, or the page of the command it follows.\n"
    "\n"
    "--version\n"
    "   Print the version of ebsim and exit.\n";

static const char cli_env_help[] =
    "EBSIM_HOME, EBSIM_REGION, EBSIM_ACCOUNT\n"
    "   The defaults of --home, --region and --account. An empty variable counts as "
    "unset.\n";

static const char cli_exit_help[] =
    "0\n"
    "   Success.\n"
    "\n"
    "2\n"
    "   check: the snapshot stores are corrupt (corrupt or missing objects, or unreadable "
    "manifests).\n"
    "\n"
    "3\n"
    "   check: the stored data is sound, but there are leaked objects.\n"
    "\n"
    "130\n"
    "   Interrupted (SIGINT) while initialize-volume waits for the initialization; the "
    "initialization goes on.\n"
    "\n"
    "252\n"
    "   Usage error: an unknown command or option, a missing required option, an option "
    "without its value, shorthand that cannot be parsed, a file:// that cannot be read, or "
    "a run-instances --count that is not N or MIN:MAX.\n"
    "\n"
    "254\n"
    "   ebsimd answered with an error; it is printed on standard error.\n"
    "\n"
    "255\n"
    "   ebsimd cannot be reached, the connection broke, or the reply is malformed.\n";

static void cli_deflist(FILE *f, const char *p)
{
	int col;

	while (*p) {
		const char *nl = strchrnul(p, '\n');

		if (nl == p) {
			putc('\n', f);
		} else if (p[0] == ' ') {
			col = 0;
			cli_fill(f, &col, 10, p, nl);
			putc('\n', f);
		} else {
			fprintf(f, "       %.*s\n", (int)(nl - p), p);
		}
		p = *nl ? nl + 1 : nl;
	}
}

static int cli_help_overview(void)
{
	FILE *f = stdout;
	int width = 0;

	fputs("NAME\n", f);
	cli_wrap(f, 7,
		 "ebsim - the command-line client of ebsimd, which models Amazon EC2 "
		 "storage on one Linux host");
	fputs("\nSYNOPSIS\n", f);
	cli_wrap(f, 10,
		 " ebsim [global options] <command> [parameters]\n"
		 " ebsim help [<command>]\n"
		 " ebsim <command> --help\n"
		 " ebsim --version");
	fputs("\nDESCRIPTION\n", f);
	cli_wrap(f, 7,
		 "ebsim speaks the language of the AWS CLI (aws ec2 ...) to ebsimd, the daemon "
		 "that keeps EBS-like volumes, snapshots, instances and AMIs on this host with "
		 "real block devices and real data. The commands are the EC2 API actions in "
		 "kebab-case and take awscli's option names; their output is the JSON awscli "
		 "prints, so scripts written for one work with the other.\n"
		 "\n"
		 "Each command sends one request to the daemon of the home directory (--home) "
		 "over its control socket and prints the Result on standard output. A service "
		 "error is printed on standard error the way awscli prints it:\n"
		 "\n"
		 "   An error occurred (InvalidVolume.NotFound) when calling the\n"
		 "   DescribeVolumes operation: The volume 'vol-...' does not exist.\n"
		 "\n"
		 "Options take their value as the next word or after '=' (--size 8 or "
		 "--size=8). A list option takes every word up to the next option (--volume-ids "
		 "vol-1 vol-2) and may be repeated. A boolean option --x has a negative form "
		 "--no-x. Global options may come before or after the command.");
	fputs("\nGLOBAL OPTIONS\n", f);
	cli_deflist(f, cli_global_help);
	fputs("\nENVIRONMENT\n", f);
	cli_deflist(f, cli_env_help);
	fputs("\nEXIT STATUS\n", f);
	cli_deflist(f, cli_exit_help);
	fputs("\nAVAILABLE COMMANDS\n", f);
	for (size_t i = 0; i < ARRAY_SIZE(cli_verbs); i++)
		width = MAX(width, (int)strlen(cli_verbs[i].name));
	for (size_t i = 0; i < ARRAY_SIZE(cli_verbs); i++) {
		int col;

		/* cli_fill puts a space before the first word: the second of the two. */
		fprintf(f, "       o %-*s ", width, cli_verbs[i].name);
		col = 7 + 2 + width + 1;
		cli_fill(f, &col, 7 + 2 + width + 2, cli_verbs[i].summary,
			 cli_verbs[i].summary + strlen(cli_verbs[i].summary));
		putc('\n', f);
	}
	fputs("\nSee 'ebsim <command> --help' for the options and output of a command.\n", f);
	return 0;
}

static void cli_synopsis_opt(FILE *f, const struct cli_opt *o)
{
	const char *open = o->required ? "" : "[";
	const char *close = o->required ? "" : "]";

	fputs("          ", f);
	switch (o->type) {
	case CLI_BOOLEAN:
		fprintf(f, "[--%s | --no-%s]\n", o->name, o->name);
		break;
	case CLI_FLAG:
		fprintf(f, "%s--%s%s\n", open, o->name, close);
		break;
	case CLI_LIST:
	case CLI_FILTERS:
	case CLI_TAGS:
		fprintf(f, "%s--%s <value> [<value> ...]%s\n", open, o->name, close);
		break;
	default:
		fprintf(f, "%s--%s <value>%s\n", open, o->name, close);
		break;
	}
}

static int cli_help_verb(const struct cli_verb *v)
{
	FILE *f = stdout;
	char param[CLI_PARAM_MAX];
	int col = fprintf(f, "NAME\n       %s -", v->name) - 5;

	cli_fill(f, &col, 7, v->summary, v->summary + strlen(v->summary));
	putc('\n', f);
	fprintf(f, "\nSYNOPSIS\n          ebsim %s\n", v->name);
	for (const struct cli_opt *o = v->opts; o->name; o++)
		cli_synopsis_opt(f, o);
	fputs("          [global options]\n", f);
	fputs("\nDESCRIPTION\n", f);
	cli_wrap(f, 7, v->description);
	fprintf(f, "\n       %s action: %s.\n", v->api ? v->api : "EC2 API", v->action);
	fputs("\nOPTIONS\n", f);
	if (!v->opts->name)
		fputs("       None.\n\n", f);
	for (const struct cli_opt *o = v->opts; o->name; o++) {
		cli_param_name(o, param);
		if (o->type == CLI_BOOLEAN)
			fprintf(f, "       --%s | --no-%s (%s)", o->name, o->name,
				cli_type_name(o->type));
		else
			fprintf(f, "       --%s (%s)", o->name, cli_type_name(o->type));
		if (cli_is_local(o))
			fprintf(f, "%s, not sent to ebsimd\n", o->required ? " [required]" : "");
		else
			fprintf(f, "%s -> %s\n", o->required ? " [required]" : "", param);
		cli_wrap(f, 10, o->help);
		putc('\n', f);
	}
	fputs("GLOBAL OPTIONS\n", f);
	cli_wrap(f, 7, "--home, --region, --account, --debug: see 'ebsim help'.");
	fputs("\nOUTPUT\n", f);
	if (!v->output)
		cli_wrap(f, 7, "None: on success the command prints nothing.");
	for (const struct cli_field *o = v->output; o && o->name; o++) {
		fprintf(f, "%*s%s -> (%s)\n", 7 + 3 * o->depth, "", o->name, o->type);
		cli_wrap(f, 10 + 3 * o->depth, o->help);
		putc('\n', f);
	}
	fputs(v->output ? "EXAMPLES\n" : "\nEXAMPLES\n", f);
	cli_wrap(f, 7, v->examples);
	return 0;
}

/* --- printing the result -------------------------------------------------------------- */

/* A JSON string as Python's json.dumps(ensure_ascii=False) writes it. */
static void cli_put_string(FILE *f, const char *s, size_t len)
{
	putc('"', f);
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];

		switch (ch) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\b':
			fputs("\\b", f);
			break;
		case '\f':
			fputs("\\f", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\r':
			fputs("\\r", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		default:
			if (ch < 0x20)
				fprintf(f, "\\u%04x", ch);
			else
				putc(ch, f);
		}
	}
	putc('"', f);
}

/* awscli's layout: 4-space indent, "key": value, empty containers as {} and [].
 * Recursion is bounded by CLI_JSON_DEPTH, the tokener's limit. 0 or -ENOMEM. */
static int cli_put_json(FILE *f, struct json_object *o, int level)
{
	const char *s;
	size_t n;
	bool first = true;

	switch (json_object_get_type(o)) {
	case json_type_object:
		if (json_object_object_length(o) == 0) {
			fputs("{}", f);
			return 0;
		}
		fputs("{\n", f);
		json_object_object_foreach(o, key, val)
		{
			if (!first)
				fputs(",\n", f);
			first = false;
			cli_spaces(f, 4 * (level + 1));
			cli_put_string(f, key, strlen(key));
			fputs(": ", f);
			if (cli_put_json(f, val, level + 1) < 0)
				return -ENOMEM;
		}
		putc('\n', f);
		cli_spaces(f, 4 * level);
		putc('}', f);
		return 0;
	case json_type_array:
		n = json_object_array_length(o);
		if (n == 0) {
			fputs("[]", f);
			return 0;
		}
		fputs("[\n", f);
		for (size_t i = 0; i < n; i++) {
			if (i)
				fputs(",\n", f);
			cli_spaces(f, 4 * (level + 1));
			if (cli_put_json(f, json_object_array_get_idx(o, i), level + 1) < 0)
				return -ENOMEM;
		}
		putc('\n', f);
		cli_spaces(f, 4 * level);
		putc(']', f);
		return 0;
	case json_type_string:
		cli_put_string(f, json_object_get_string(o), (size_t)json_object_get_string_len(o));
		return 0;
	case json_type_null:
		fputs("null", f);
		return 0;
	default: /* numbers and booleans: json-c keeps the daemon's spelling of numbers */
		s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
		if (!s)
			return -ENOMEM;
		fputs(s, f);
		return 0;
	}
}

/* --- talking to ebsimd ---------------------------------------------------------------- */

static int cli_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t len = strlen(path);
	int fd, ret;

	if (len >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, len + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	return fd;
}

static int cli_send_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read the reply line (without its '\n') into a malloc'd, NUL-terminated buffer. A reply cut
 * by EOF is returned as it is, for the parser to judge. 0, -EMSGSIZE or -errno. */
static int cli_recv_line(int fd, char **out, size_t *outlen)
{
	size_t len = 0, cap = 0;
	char *buf = NULL, *nl;
	int ret;

	for (;;) {
		ssize_t n;

		if (cap - len < 2) {
			size_t ncap = cap ? cap * 2 : 65536;
			char *nbuf;

			if (cap >= (size_t)CLI_REPLY_MAX + 1) {
				ret = -EMSGSIZE;
				goto out_free;
			}
			ncap = MIN(ncap, (size_t)CLI_REPLY_MAX + 1);
			nbuf = realloc(buf, ncap);
			if (!nbuf) {
				ret = -ENOMEM;
				goto out_free;
			}
			buf = nbuf;
			cap = ncap;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			goto out_free;
		}
		if (n == 0)
			break;
		nl = memchr(buf + len, '\n', (size_t)n);
		if (nl) {
			len = (size_t)(nl - buf);
			break;
		}
		len += (size_t)n;
	}
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	return 0;
out_free:
	free(buf);
	return ret;
}

/* Print s for a shell: as is when it is plain, else in single quotes. */
static void cli_put_shell_word(FILE *f, const char *s)
{
	if (*s && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
			    "/._-+:@%,=") == strlen(s)) {
		fputs(s, f);
		return;
	}
	putc('\'', f);
	for (; *s; s++) {
		if (*s == '\'')
			fputs("'\\''", f);
		else
			putc(*s, f);
	}
	putc('\'', f);
}

static int cli_no_daemon(const struct cli *c, const char *path, int err)
{
	cli_end_line();
	fprintf(stderr, "ebsim: cannot reach ebsimd at %s (%s).\nStart it with: ebsimd --home ",
		path, strerror(-err));
	cli_put_shell_word(stderr, c->home);
	fputc('\n', stderr);
	return EXIT_NODAEMON;
}

static int cli_bad_reply(const char *path, const char *why)
{
	cli_end_line();
	fprintf(stderr, "ebsim: malformed reply from ebsimd at %s: %s.\n", path, why);
	return EXIT_NODAEMON;
}

/* Judge the reply to action. Returns the exit code; on 0, *res is the Result, a reference
 * for the caller (NULL for a JSON null). Errors are printed. */
static int cli_answer(const char *action, const char *path, const char *text, size_t len,
		      struct json_object **res)
{
	struct json_object *reply, *result, *err, *code, *msg;
	char why[160];
	const char *jwhy;
	int ret;

	*res = NULL;
	if (len == 0)
		return cli_bad_reply(path, "the connection was closed without a reply");
	if (!cli_json_parse(text, len, &reply, &jwhy)) {
		snprintf(why, sizeof(why), "not JSON (%s)", jwhy);
		return cli_bad_reply(path, why);
	}
	if (!json_object_is_type(reply, json_type_object)) {
		ret = cli_bad_reply(path, "not a JSON object");
		goto out_put;
	}
	if (json_object_object_get_ex(reply, "Error", &err)) {
		if (!json_object_object_get_ex(err, "Code", &code) ||
		    !json_object_is_type(code, json_type_string)) {
			ret = cli_bad_reply(path, "an Error without a string Code");
			goto out_put;
		}
		json_object_object_get_ex(err, "Message", &msg);
		cli_end_line();
		fprintf(stderr, "\nAn error occurred (%s) when calling the %s operation: %s\n",
			json_object_get_string(code), action,
			json_object_is_type(msg, json_type_string) ? json_object_get_string(msg)
								   : "");
		ret = EXIT_SERVICE;
		goto out_put;
	}
	if (!json_object_object_get_ex(reply, "Result", &result)) {
		ret = cli_bad_reply(path, "neither Result nor Error");
		goto out_put;
	}
	*res = json_object_get(result);
	ret = 0;
out_put:
	json_object_put(reply);
	return ret;
}

/* Print a Result as awscli does. Returns the exit code. */
static int cli_print_result(struct json_object *res)
{
	/* awscli prints nothing for an empty response (DeleteVolume). */
	if (json_object_is_type(res, json_type_object) && json_object_object_length(res) == 0)
		return 0;
	if (cli_put_json(stdout, res, 0) < 0)
		return cli_nomem();
	putchar('\n');
	return 0;
}

static int cli_add_string(struct json_object *o, const char *key, const char *s)
{
	struct json_object *v = json_object_new_string(s);

	return v ? cli_object_add(o, key, v) : -ENOMEM;
}

static int cli_add_string_item(struct json_object *a, const char *s)
{
	struct json_object *v = json_object_new_string(s);

	return v ? cli_array_add(a, v) : -ENOMEM;
}

/* A request for action with empty Params; *params belongs to it. NULL: no memory. */
static struct json_object *cli_new_request(const struct cli *c, const char *action,
					   struct json_object **params)
{
	struct json_object *req = json_object_new_object();

	if (!req)
		return NULL;
	if (cli_add_string(req, "Action", action) < 0 ||
	    cli_add_string(req, "Account", c->account) < 0 ||
	    cli_add_string(req, "Region", c->region) < 0)
		goto out_put_req;
	*params = json_object_new_object();
	if (!*params || cli_object_add(req, "Params", *params) < 0)
		goto out_put_req;
	return req;
out_put_req:
	json_object_put(req);
	return NULL;
}

/* The request of the command line, its Params in the registry's order. NULL: no memory. */
static struct json_object *cli_request(const struct cli *c)
{
	struct json_object *req, *params;
	char param[CLI_PARAM_MAX];

	req = cli_new_request(c, c->verb->action, &params);
	if (!req)
		return NULL;
	for (size_t k = 0; k < c->nopts; k++) {
		if (!c->given[k] || cli_is_local(&c->verb->opts[k]))
			continue;
		cli_param_name(&c->verb->opts[k], param);
		if (cli_object_add(params, param, json_object_get(c->vals[k])) < 0) {
			json_object_put(req);
			return NULL;
		}
	}
	return req;
}

/* "<home>/ebsimd.sock", without doubling a trailing '/'. NULL: no memory. */
static char *cli_sock_path(const char *home)
{
	size_t hl = strlen(home);
	char *path;

	while (hl > 1 && home[hl - 1] == '/')
		hl--;
	if (hl > INT_MAX)
		hl = INT_MAX;
	if (asprintf(&path, "%.*s%s" CTL_SOCK_NAME, (int)hl, home,
		     hl == 1 && home[0] == '/' ? "" : "/") < 0)
		return NULL;
	return path;
}

/* Send req, whose Action is action, and read the answer. Returns the exit code; on 0, *res
 * is the Result (the caller's reference). Errors are printed. */
static int cli_call(const struct cli *c, struct json_object *req, const char *action,
		    struct json_object **res)
{
	const char *text;
	char *path, *reply = NULL;
	size_t len, rlen = 0;
	int fd, ret;

	*res = NULL;
	path = cli_sock_path(c->home);
	text = json_object_to_json_string_length(
	    req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!path || !text) {
		ret = cli_nomem();
		goto out_free_path;
	}
	if (len + 1 > CTL_MAX_MSG) {
		ret = cli_usage_error("the request is %zu bytes, more than the %d that ebsimd "
				      "accepts",
				      len + 1, CTL_MAX_MSG);
		goto out_free_path;
	}
	if (c->debug) {
		cli_end_line();
		fprintf(stderr, "ebsim: request to %s: %s\n", path, text);
	}
	fd = cli_connect(path);
	if (fd < 0) {
		ret = cli_no_daemon(c, path, fd);
		goto out_free_path;
	}
	ret = cli_send_all(fd, text, len);
	if (!ret)
		ret = cli_send_all(fd, "\n", 1);
	if (!ret)
		ret = cli_recv_line(fd, &reply, &rlen);
	close(fd);
	if (ret == -EMSGSIZE) {
		ret = cli_bad_reply(path, "longer than the limit of " CLI_REPLY_MAX_TEXT);
	} else if (ret == -ENOMEM) {
		ret = cli_nomem();
	} else if (ret < 0) {
		cli_end_line();
		fprintf(stderr, "ebsim: lost the connection to ebsimd at %s (%s).\n", path,
			strerror(-ret));
		ret = EXIT_NODAEMON;
	} else {
		if (c->debug) {
			cli_end_line();
			fprintf(stderr, "ebsim: reply: %s\n", reply ? reply : "");
		}
		ret = cli_answer(action, path, reply, rlen, res);
		free(reply);
	}
out_free_path:
	free(path);
	return ret;
}

/* Run the command line's request and print the answer. Returns the exit code. */
static int cli_run(const struct cli *c)
{
	struct json_object *req, *res = NULL;
	int ret;

	req = cli_request(c);
	if (!req)
		return cli_nomem();
	if (c->verb->prepare) {
		struct json_object *params = NULL;

		json_object_object_get_ex(req, "Params", &params);
		ret = c->verb->prepare(c, params);
		if (ret) {
			json_object_put(req);
			return ret;
		}
	}
	ret = cli_call(c, req, c->verb->action, &res);
	json_object_put(req);
	if (!ret)
		ret = c->verb->finish ? c->verb->finish(c, res) : cli_print_result(res);
	json_object_put(res);
	return ret;
}

/* --- commands that do more than print the Result ---------------------------------------- */

/* o[key] when o is an object that has it, else NULL. Borrowed. */
static struct json_object *cli_member(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v))
		return NULL;
	return v;
}

static size_t cli_list_len(struct json_object *o, const char *key)
{
	struct json_object *v = cli_member(o, key);

	return json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
}

/* The value of the command's option name, NULL when it was not given. Borrowed. */
static struct json_object *cli_opt_value(const struct cli *c, const char *name)
{
	for (size_t k = 0; k < c->nopts; k++)
		if (strcmp(c->verb->opts[k].name, name) == 0)
			return c->given[k] ? c->vals[k] : NULL;
	return NULL;
}

/* A usage error found while preparing the request, printed as awscli prints its parameter
 * errors (no usage lines). Returns EXIT_USAGE. */
static int cli_param_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli_param_error(const char *fmt, ...)
{
	va_list ap;

	fputc('\n', stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_USAGE;
}

#define CLI_FILE_PREFIX "file://"

/* awscli's file://PATH: when o[key] is a string that starts with it, replace it with the
 * text of the file (as_json: with the JSON value of that text; text that is not JSON goes
 * as the string, for ebsimd to refuse, as when typed). A leading ~/ is the user's home.
 * The file is read up to the size of a request: a larger one could not be sent anyway.
 * Returns 0 or an exit code, printed. */
static int cli_paramfile(struct json_object *o, const char *key, const char *opt, bool as_json)
{
	struct json_object *v = cli_member(o, key), *nv;
	const char *uri, *path, *home = getenv("HOME");
	char *full = NULL, *buf;
	size_t len = 0;
	ssize_t n;
	int fd, ret;

	if (!json_object_is_type(v, json_type_string))
		return 0;
	uri = json_object_get_string(v);
	if (strncmp(uri, CLI_FILE_PREFIX, strlen(CLI_FILE_PREFIX)) != 0)
		return 0;
	path = uri + strlen(CLI_FILE_PREFIX);
	if (path[0] == '~' && path[1] == '/' && home && *home) {
		if (asprintf(&full, "%s%s", home, path + 1) < 0)
			return cli_nomem();
		path = full;
	}
	buf = malloc(CTL_MAX_MSG + 1);
	if (!buf) {
		free(full);
		return cli_nomem();
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = cli_param_error("Error parsing parameter '--%s': Unable to load paramfile "
				      "%.*s: %s",
				      opt, cli_echo_len(uri), uri, strerror(errno));
		goto out_free;
	}
	while (len <= CTL_MAX_MSG && (n = read(fd, buf + len, CTL_MAX_MSG + 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = cli_param_error("Error parsing parameter '--%s': Unable to load "
					      "paramfile %.*s: %s",
					      opt, cli_echo_len(uri), uri, strerror(errno));
			close(fd);
			goto out_free;
		}
		len += (size_t)n;
	}
	close(fd);
	if (len > CTL_MAX_MSG) {
		ret = cli_param_error("Error parsing parameter '--%s': paramfile %.*s is larger "
				      "than the %d bytes of a request to ebsimd",
				      opt, cli_echo_len(uri), uri, CTL_MAX_MSG);
		goto out_free;
	}
	buf[len] = '\0';
	nv = NULL;
	if (!as_json || !cli_json_parse(buf, len, &nv, NULL))
		nv = json_object_new_string_len(buf, (int)len);
	ret = nv ? cli_object_add(o, key, nv) : -ENOMEM;
	ret = ret < 0 ? cli_nomem() : 0;
out_free:
	free(buf);
	free(full);
	return ret;
}

/* One side of run-instances --count: an optional sign and decimal digits, blanks around
 * (Python's int()); the number goes as an integer, or as text when it does not fit int64,
 * for ebsimd to refuse. NULL when the text is not a number. */
static struct json_object *cli_count_part(const char *s, size_t len)
{
	char buf[64];
	size_t i = 0;

	while (len && (*s == ' ' || *s == '\t'))
		s++, len--;
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	if (!len || len >= sizeof(buf))
		return NULL;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (buf[0] == '+' || buf[0] == '-')
		i++;
	if (!buf[i] || strspn(buf + i, "0123456789") != len - i)
		return NULL;
	return cli_integer(buf);
}

/* register-image: --block-device-mappings file://PATH. */
/* create-image: awscli's --reboot | --no-reboot is the API's NoReboot, inverted. */
static int cli_prepare_create_image(const struct cli *c, struct json_object *params)
{
	struct json_object *v = cli_opt_value(c, "reboot"), *b;

	if (!v)
		return 0;
	b = json_object_new_boolean(!json_object_get_boolean(v));
	if (!b || cli_object_add(params, "NoReboot", b) < 0)
		return cli_nomem();
	return 0;
}

static int cli_prepare_register(const struct cli *c, struct json_object *params)
{
	(void)c;
	return cli_paramfile(params, "BlockDeviceMappings", "block-device-mappings", true);
}

/* run-instances: --count N or MIN:MAX becomes MinCount and MaxCount (both 1 without it),
 * as in awscli; file://PATH for --user-data, --block-device-mappings and --placement. */
static int cli_prepare_run(const struct cli *c, struct json_object *params)
{
	struct json_object *count = cli_opt_value(c, "count"), *lo, *hi;
	const char *s = count ? json_object_get_string(count) : "1", *colon;
	int ret;

	colon = strchr(s, ':');
	if (colon && strchr(colon + 1, ':'))
		colon = NULL, s = "";
	lo = cli_count_part(s, colon ? (size_t)(colon - s) : strlen(s));
	hi = cli_count_part(colon ? colon + 1 : s, colon ? strlen(colon + 1) : strlen(s));
	if (!lo || !hi) {
		json_object_put(lo);
		json_object_put(hi);
		return cli_param_error("Parameter validation failed:\ncount parameter should be "
				       "of form min[:max] (e.g. 1 or 1:10)");
	}
	if (cli_object_add(params, "MinCount", lo) < 0) {
		json_object_put(hi);
		return cli_nomem();
	}
	if (cli_object_add(params, "MaxCount", hi) < 0)
		return cli_nomem();
	ret = cli_paramfile(params, "UserData", "user-data", false);
	if (!ret)
		ret = cli_paramfile(params, "BlockDeviceMappings", "block-device-mappings", true);
	if (!ret)
		ret = cli_paramfile(params, "Placement", "placement", true);
	return ret;
}

/* modify-instance-attribute: file://PATH for the user data, given as --user-data or as
 * --attribute userData --value. */
static int cli_prepare_modify(const struct cli *c, struct json_object *params)
{
	struct json_object *attr = cli_member(params, "Attribute");
	int ret;

	(void)c;
	ret = cli_paramfile(cli_member(params, "UserData"), "Value", "user-data", false);
	if (!ret && json_object_is_type(attr, json_type_string) &&
	    strcmp(json_object_get_string(attr), "userData") == 0)
		ret = cli_paramfile(params, "Value", "value", false);
	return ret;
}

/* check: print the report; exit 0 clean, 2 corrupt, 3 leaks only (qemu-img check). The
 * lists are judged as well as Result, so that a report never passes for better than it
 * is. */
static int cli_finish_check(const struct cli *c, struct json_object *res)
{
	struct json_object *verdict = cli_member(res, "Result");
	const char *v =
	    json_object_is_type(verdict, json_type_string) ? json_object_get_string(verdict) : "";
	bool corrupt, leaks;
	int ret;

	(void)c;
	ret = cli_print_result(res);
	if (ret)
		return ret;
	corrupt = strcmp(v, "corrupt") == 0 || cli_list_len(res, "Corrupt") ||
		  cli_list_len(res, "Missing") || cli_list_len(res, "BadManifests");
	leaks = strcmp(v, "leaks") == 0 || cli_list_len(res, "Leaked") ||
		json_object_get_int64(cli_member(res, "LeakedCount")) > 0;
	if (!corrupt && !leaks && strcmp(v, "clean") != 0) {
		fputs("ebsim: malformed reply from ebsimd: the Result of CheckStore is not "
		      "clean, corrupt or leaks.\n",
		      stderr);
		return EXIT_NODAEMON;
	}
	return corrupt ? CLI_EXIT_CORRUPT : leaks ? CLI_EXIT_LEAKS : 0;
}

static volatile sig_atomic_t cli_interrupted;

static void cli_on_sigint(int sig)
{
	(void)sig;
	cli_interrupted = 1;
}

/* The Progress of InitializationStatusDetails, 0 to 100: an integer, or text such as "45%".
 * -1 when there is none. */
static int cli_progress(struct json_object *details)
{
	struct json_object *p = cli_member(details, "Progress");
	double d;
	long long v;

	switch (json_object_get_type(p)) {
	case json_type_int:
		v = json_object_get_int64(p);
		break;
	case json_type_double:
		d = json_object_get_double(p);
		v = d >= 100 ? 100 : d >= 0 ? (long long)d : 0; /* NaN: 0 */
		break;
	case json_type_string:
		v = strtoll(json_object_get_string(p), NULL, 10);
		break;
	default:
		return -1;
	}
	return v < 0 ? 0 : v > 100 ? 100 : (int)v;
}

static const char *cli_init_state(struct json_object *details)
{
	struct json_object *s = cli_member(details, "State");

	return json_object_is_type(s, json_type_string) ? json_object_get_string(s) : NULL;
}

/* Whether the initialization is over: the details are gone, Progress is 100, or the State
 * is no longer initializing (it stopped, e.g. lazy after ebsimd restarted). */
static bool cli_init_over(struct json_object *details)
{
	const char *state = cli_init_state(details);

	return !details || cli_progress(details) >= 100 ||
	       (state && strcmp(state, "initializing") != 0);
}

/* "12s", "3m07s", "2h05m". */
static void cli_duration(char *buf, size_t size, long long s)
{
	if (s < 60)
		snprintf(buf, size, "%llds", s);
	else if (s < 3600)
		snprintf(buf, size, "%lldm%02llds", s / 60, s % 60);
	else
		snprintf(buf, size, "%lldh%02lldm", s / 3600, s / 60 % 60);
}

/* "\r[#####.....]  45%  ETA 12s" on stderr, blanking what is left of a longer line. */
static void cli_draw_bar(struct json_object *details)
{
	struct json_object *eta = cli_member(details, "EstimatedTimeToCompleteInSeconds");
	int pct = MAX(cli_progress(details), 0);
	int fill = pct * CLI_BAR_WIDTH / 100;
	char line[CLI_BAR_WIDTH + 64], when[32];
	int n = 0;

	line[n++] = '[';
	for (int i = 0; i < CLI_BAR_WIDTH; i++)
		line[n++] = i < fill ? '#' : '.';
	n += snprintf(line + n, sizeof(line) - (size_t)n, "] %3d%%", pct);
	if (pct < 100 && json_object_is_type(eta, json_type_int) &&
	    json_object_get_int64(eta) >= 0) {
		cli_duration(when, sizeof(when), (long long)json_object_get_int64(eta));
		n += snprintf(line + n, sizeof(line) - (size_t)n, "  ETA %s", when);
	}
	fprintf(stderr, "\r%s%*s", line, MAX(cli_bar_len - n, 0), "");
	cli_bar_len = n;
}

/* DescribeVolumes of volume id: *details is its InitializationStatusDetails, a reference
 * for the caller, NULL when absent. Returns the exit code. */
static int cli_poll_init(const struct cli *c, const char *id, struct json_object **details)
{
	struct json_object *req, *params, *ids, *res = NULL, *vols, *vol = NULL;
	size_t n;
	int ret;

	*details = NULL;
	req = cli_new_request(c, "DescribeVolumes", &params);
	if (!req)
		return cli_nomem();
	ids = json_object_new_array();
	if (!ids || cli_object_add(params, "VolumeIds", ids) < 0 ||
	    cli_add_string_item(ids, id) < 0) {
		json_object_put(req);
		return cli_nomem();
	}
	ret = cli_call(c, req, "DescribeVolumes", &res);
	json_object_put(req);
	if (ret)
		return ret;
	vols = cli_member(res, "Volumes");
	n = cli_list_len(res, "Volumes");
	for (size_t i = 0; i < n && !vol; i++) {
		struct json_object *v = json_object_array_get_idx(vols, i);
		struct json_object *vid = cli_member(v, "VolumeId");

		if (json_object_is_type(vid, json_type_string) &&
		    strcmp(json_object_get_string(vid), id) == 0)
			vol = v;
	}
	if (!vol) {
		cli_end_line();
		fprintf(stderr,
			"ebsim: malformed reply from ebsimd: DescribeVolumes does not "
			"describe %.*s.\n",
			cli_echo_len(id), id);
		ret = EXIT_NODAEMON;
	} else {
		*details = json_object_get(cli_member(vol, "InitializationStatusDetails"));
	}
	json_object_put(res);
	return ret;
}

/* The details of a volume whose InitializationStatusDetails are gone: it no longer reads
 * from its snapshot. Shaped as ebsimd's reply for an initialized volume. NULL: no memory. */
static struct json_object *cli_init_completed(struct json_object *last)
{
	struct json_object *type = cli_member(last, "InitializationType");
	struct json_object *o = json_object_new_object(), *v;

	if (!o)
		return NULL;
	v = type ? json_object_get(type) : json_object_new_string("default");
	if (!v || cli_object_add(o, "InitializationType", v) < 0)
		goto out_put;
	v = json_object_new_int(100);
	if (!v || cli_object_add(o, "Progress", v) < 0)
		goto out_put;
	if (cli_add_string(o, "State", "completed") < 0)
		goto out_put;
	return o;
out_put:
	json_object_put(o);
	return NULL;
}

static void cli_sleep_poll(void)
{
	struct timespec ts = {0, CLI_POLL_NS};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !cli_interrupted)
		;
}

/* initialize-volume: on a terminal, unless --no-wait, follow the initialization with
 * DescribeVolumes and a progress bar on stderr, then print the first reply with the last
 * details. Elsewhere print the reply as it is. */
static int cli_finish_init(const struct cli *c, struct json_object *res)
{
	struct json_object *details, *next, *idv = cli_member(res, "VolumeId");
	struct json_object *nowait = cli_opt_value(c, "no-wait");
	struct sigaction sa = {.sa_handler = cli_on_sigint, .sa_flags = SA_RESTART}, old;
	const char *id, *state;
	int ret = 0;

	details = json_object_get(cli_member(res, "InitializationStatusDetails"));
	if ((nowait && json_object_get_boolean(nowait)) || !isatty(STDERR_FILENO) ||
	    cli_init_over(details))
		goto out_print;
	id = json_object_is_type(idv, json_type_string)
		 ? json_object_get_string(idv)
		 : json_object_get_string(cli_opt_value(c, "volume-id"));
	if (!id)
		id = "";
	sigemptyset(&sa.sa_mask);
	cli_interrupted = 0;
	sigaction(SIGINT, &sa, &old);
	for (;;) {
		cli_draw_bar(details);
		if (cli_init_over(details))
			break;
		cli_sleep_poll();
		if (cli_interrupted)
			break;
		ret = cli_poll_init(c, id, &next);
		if (ret)
			break;
		if (!next) {
			next = cli_init_completed(details);
			if (!next) {
				ret = cli_nomem();
				break;
			}
		}
		json_object_put(details);
		details = next;
	}
	sigaction(SIGINT, &old, NULL);
	cli_end_line();
	if (cli_interrupted) {
		fprintf(stderr, "ebsim: interrupted; ebsimd goes on initializing %.*s.\n",
			cli_echo_len(id), id);
		ret = CLI_EXIT_INTERRUPTED;
	}
	if (ret)
		goto out_put;
	state = cli_init_state(details);
	if (cli_progress(details) < 100 && !(state && strcmp(state, "completed") == 0))
		fprintf(stderr,
			"ebsim: the initialization of %.*s stopped at %d%% (State %.*s); "
			"run initialize-volume again to resume it.\n",
			cli_echo_len(id), id, MAX(cli_progress(details), 0),
			state ? cli_echo_len(state) : 1, state ? state : "?");
	if (cli_object_add(res, "InitializationStatusDetails", json_object_get(details)) < 0) {
		ret = cli_nomem();
		goto out_put;
	}
out_print:
	ret = cli_print_result(res);
out_put:
	json_object_put(details);
	return ret;
}

/* bench: the fio profiles of bench/bench.py's JOBS table (keep the two in step). */
struct cli_bench_profile {
	const char *name;
	const char *rw;
	const char *bs;
	const char *iodepth;
	bool writes;
};

static const struct cli_bench_profile cli_bench_profiles[] = {
    {"rr4k-qd1", "randread", "4k", "1", false},
    {"rr4k-qd32", "randread", "4k", "32", false},
    {"rw4k-qd32", "randwrite", "4k", "32", true},
    {"mix4k-qd16", "randrw", "4k", "16", true},
    {"sr1m-qd8", "read", "1M", "8", false},
    {"sw1m-qd8", "write", "1M", "8", true},
    {NULL, NULL, NULL, NULL, false},
};

#define CLI_FIO_OUT_MAX (16 << 20) /* fio's JSON for one job is a few KiB */

/* Run fio with profile p on path; on 0, *out is its JSON. fio's errors go to stderr. */
static int cli_bench_fio(const struct cli_bench_profile *p, const char *path, long runtime,
			 struct json_object **out)
{
	char *file, rt[32], rw[32], bs[16], qd[24], *argv[16], *buf = NULL, *nb;
	size_t len = 0, cap = 0, k = 0;
	int pfd[2], status;
	ssize_t n;
	pid_t pid;

	*out = NULL;
	if (asprintf(&file, "--filename=%s", path) < 0)
		return -ENOMEM;
	snprintf(rt, sizeof(rt), "--runtime=%ld", runtime);
	snprintf(rw, sizeof(rw), "--rw=%s", p->rw);
	snprintf(bs, sizeof(bs), "--bs=%s", p->bs);
	snprintf(qd, sizeof(qd), "--iodepth=%s", p->iodepth);
	argv[k++] = "fio";
	argv[k++] = "--output-format=json";
	argv[k++] = "--name=ebsim-bench";
	argv[k++] = file;
	argv[k++] = "--direct=1";
	argv[k++] = "--ioengine=io_uring";
	argv[k++] = "--thread";
	argv[k++] = "--time_based";
	argv[k++] = rt;
	argv[k++] = "--ramp_time=1";
	argv[k++] = rw;
	argv[k++] = bs;
	argv[k++] = qd;
	if (strcmp(p->rw, "randrw") == 0)
		argv[k++] = "--rwmixread=70";
	argv[k] = NULL;
	if (pipe(pfd) < 0) {
		free(file);
		return -errno;
	}
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		free(file);
		return -errno;
	}
	if (pid == 0) {
		dup2(pfd[1], STDOUT_FILENO);
		close(pfd[0]);
		close(pfd[1]);
		execvp("fio", argv);
		fprintf(stderr, "ebsim: cannot run fio: %s (make deps installs it).\n",
			strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	free(file);
	for (;;) {
		if (len + 4096 > cap) {
			cap = cap ? 2 * cap : 65536;
			nb = cap <= CLI_FIO_OUT_MAX ? realloc(buf, cap + 1) : NULL;
			if (!nb)
				break;
			buf = nb;
		}
		n = read(pfd[0], buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (buf && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		buf[len] = '\0';
		nb = strchr(buf, '{'); /* fio may print notes before the JSON */
		*out = nb ? json_tokener_parse(nb) : NULL;
	}
	free(buf);
	if (!*out) {
		fprintf(stderr, "ebsim: fio failed on %s (profile %s).\n", path, p->name);
		return -EIO;
	}
	return 0;
}

/* A number with one decimal, spelled as such in the output. */
static int cli_add_num(struct json_object *o, const char *key, double d)
{
	char s[64];
	struct json_object *v;

	snprintf(s, sizeof(s), "%.1f", d);
	v = json_object_new_double_s(d, s);
	return v ? cli_object_add(o, key, v) : -ENOMEM;
}

/* The entry of Results for one fio run: both directions summed, latencies apart. */
static struct json_object *cli_bench_result(const char *name, struct json_object *fio)
{
	struct json_object *jobs = cli_member(fio, "jobs"), *job, *io[2], *n;
	struct json_object *r = json_object_new_object();
	static const char *const dirs[][3] = {{"read", "ReadLatencyP50Us", "ReadLatencyP99Us"},
					      {"write", "WriteLatencyP50Us", "WriteLatencyP99Us"}};
	double iops = 0, bw = 0;

	if (!r)
		return NULL;
	job =
	    json_object_is_type(jobs, json_type_array) ? json_object_array_get_idx(jobs, 0) : NULL;
	for (size_t i = 0; i < 2; i++) {
		io[i] = cli_member(job, dirs[i][0]);
		if (json_object_get_int64(cli_member(io[i], "total_ios")) <= 0) {
			io[i] = NULL;
			continue;
		}
		iops += json_object_get_double(cli_member(io[i], "iops"));
		bw += json_object_get_double(cli_member(io[i], "bw_bytes"));
	}
	n = json_object_new_int64((int64_t)(iops + 0.5));
	if (cli_add_string(r, "Profile", name) < 0 || !n || cli_object_add(r, "Iops", n) < 0 ||
	    cli_add_num(r, "MBps", bw / 1e6) < 0)
		goto out_put;
	for (size_t i = 0; i < 2; i++) {
		struct json_object *pct = cli_member(cli_member(io[i], "clat_ns"), "percentile");

		if (!io[i])
			continue;
		if (cli_add_num(r, dirs[i][1],
				json_object_get_double(cli_member(pct, "50.000000")) / 1e3) < 0 ||
		    cli_add_num(r, dirs[i][2],
				json_object_get_double(cli_member(pct, "99.000000")) / 1e3) < 0)
			goto out_put;
	}
	return r;
out_put:
	json_object_put(r);
	return NULL;
}

/* bench: res is DescribeVolumes' answer for --volume-id; run fio on the LocalPath. */
static int cli_finish_bench(const struct cli *c, struct json_object *res)
{
	struct json_object *vols = cli_member(res, "Volumes"), *vol, *pv, *rv, *rt, *out, *list;
	struct json_object *fio;
	const char *profile = "rr4k-qd32", *path;
	long runtime = 10;
	bool all, found = false;
	int ret;

	pv = cli_opt_value(c, "profile");
	if (pv)
		profile = json_object_get_string(pv);
	rv = cli_opt_value(c, "runtime");
	if (rv) {
		runtime = json_object_is_type(rv, json_type_int) ? json_object_get_int64(rv) : 0;
		if (runtime < 1 || runtime > 3600)
			return cli_usage_error("--runtime must be 1 to 3600 seconds");
	}
	all = strcmp(profile, "all") == 0;
	for (const struct cli_bench_profile *p = cli_bench_profiles; p->name; p++) {
		if (!all && strcmp(p->name, profile) != 0)
			continue;
		found = true;
		if (p->writes && !cli_opt_value(c, "overwrite"))
			return cli_usage_error("profile %s writes over the volume's data: add "
					       "--overwrite to run it",
					       p->name);
	}
	if (!found)
		return cli_usage_error("unknown profile '%.*s': see ebsim bench --help",
				       cli_echo_len(profile), profile);
	if (!json_object_is_type(vols, json_type_array) || json_object_array_length(vols) != 1)
		return cli_usage_error("bench measures one volume: give one --volume-id");
	vol = json_object_array_get_idx(vols, 0);
	path = json_object_get_string(cli_member(vol, "LocalPath"));
	if (!path || !*path) {
		fputs("ebsim: the volume has no LocalPath: ebsimd does not serve it.\n", stderr);
		return EXIT_NODAEMON;
	}
	out = json_object_new_object();
	list = json_object_new_array();
	rt = json_object_new_int64(runtime);
	if (!out || !list || !rt ||
	    cli_object_add(out, "VolumeId", json_object_get(cli_member(vol, "VolumeId"))) < 0 ||
	    cli_add_string(out, "LocalPath", path) < 0 ||
	    cli_object_add(out, "RuntimeSeconds", json_object_get(rt)) < 0 ||
	    cli_object_add(out, "Results", json_object_get(list)) < 0) {
		ret = cli_nomem();
		goto out_put;
	}
	for (const struct cli_bench_profile *p = cli_bench_profiles; p->name; p++) {
		if (!all && strcmp(p->name, profile) != 0)
			continue;
		if (isatty(STDERR_FILENO))
			fprintf(stderr, "ebsim: bench: %s on %s, %ld s ...\n", p->name, path,
				runtime + 1);
		ret = cli_bench_fio(p, path, runtime, &fio);
		if (ret) {
			ret = EXIT_NODAEMON;
			goto out_put;
		}
		rv = cli_bench_result(p->name, fio);
		json_object_put(fio);
		if (!rv || cli_array_add(list, rv) < 0) {
			ret = cli_nomem();
			goto out_put;
		}
	}
	ret = cli_print_result(out);
out_put:
	json_object_put(rt);
	json_object_put(list);
	json_object_put(out);
	return ret;
}

static const char *cli_env(const char *name, const char *def)
{
	const char *v = getenv(name);

	return v && *v ? v : def;
}

int main(int argc, char **argv)
{
	struct cli c = {
	    .home = cli_env("EBSIM_HOME", EBSIM_DEFAULT_HOME),
	    .region = cli_env("EBSIM_REGION", EBSIM_DEFAULT_REGION),
	    .account = cli_env("EBSIM_ACCOUNT", EBSIM_DEFAULT_ACCOUNT),
	};
	int ret;

	if (cli_parse(&c, argc, argv) < 0) {
		ret = cli_nomem();
		goto out;
	}
	if (c.version) {
		printf("ebsim %s\n", EBSIM_VERSION);
		ret = 0;
	} else if (c.help && c.verb_word && !c.verb) {
		ret = cli_bad_verb(c.verb_word);
	} else if (c.help) {
		ret = c.verb ? cli_help_verb(c.verb) : cli_help_overview();
	} else {
		ret = cli_check(&c);
		if (!ret)
			ret = cli_run(&c);
	}
out:
	cli_free(&c);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "ebsim: error writing to standard output: %s\n", strerror(errno));
		if (!ret)
			ret = EXIT_NODAEMON;
	}
	return ret;
}
