/* SPDX-License-Identifier: MIT */
/*
 * fuzz_ctl.c - libFuzzer target for the control-socket request handler ctl_handle()
 * (daemon/ctl.c), i.e. everything a local client can send to ebsimd: JSON parsing,
 * dispatch, parameter checks and the actions themselves (volumes, snapshots, tags, images,
 * instances), against a real catalog, real volume files and real snapshot stores in a
 * scratch home.
 *
 * Design notes
 * ------------
 * Input: up to MAX_LINES requests separated by '\n', each handed to ctl_handle() as raw
 * bytes (NULs included), as ctl_serve_one() would. Each input runs against a fresh home
 * (catalog, volumes/, regions/, instance-store/, instances/), so a crash reproduces from its
 * input alone. The literal IDs vol-fffffffffffffffff, snap-fffffffffffffffff,
 * ami-fffffffffffffffff and i-fffffffffffffffff in a request are replaced by the last
 * volume, snapshot, image and instance the input created, so that seeds (and mutations of
 * them) can create a volume, snapshot it, register an image, run an instance from it and so
 * on, in one input. Background jobs (snapshot copies, hydration) finish before the next
 * request is handled, so an input always does the same thing. A volume the input creates
 * gets 192 KiB written to it, as a guest would through FUSE, so that snapshots and listings
 * have chunks to work on.
 *
 * The daemon is built as ebsimd.c start() would build it, minus FUSE and loop devices: the
 * frontend's functions are stubbed here (volfs_add keeps nothing, open counts are 0, loop
 * devices are /dev/null, which holds no file system, so no root is ever mounted), which is
 * why the target links every daemon/ file except ebsimd.c and no fuse/ object. Nothing in
 * daemon/ or fuse/ changes for the harness. The I/O engine is psync, shared by all inputs.
 *
 * Bound: a request naming a "Size" or "VolumeSize" over MAX_GIB that could be created
 * (<= 65536) is skipped, and instance-store volumes are scaled to 1/1024 of their EC2 size
 * (--instance-store-scale): a volume's chunk map lives in memory (16 MiB per TiB, by design),
 * so a few large volumes in one input would exceed libFuzzer's memory limit without saying
 * anything about the code. Larger sizes are always refused by the rules and still reach
 * them.
 *
 * Oracles: every reply is a JSON object with exactly one of Result or Error; an Error has a
 * non-empty Code and a Message without control characters (they reach terminals); a reply
 * serialises to one line.
 */
#include "common/ctl_proto.h"
#include "daemon/ctl_i.h"
#include "fuse/loop.h"
#include "tests/fuzz/fuzz_util.h"

#define MAX_LINES 8
#define MAX_GIB 256 /* see "Bound" above */

/* Placeholders a request may use for the last resource of each kind the input created. */
static const struct {
	const char *token, *key, *prefix;
} tokens[] = {
	{"vol-fffffffffffffffff", "VolumeId", "vol"},
	{"snap-fffffffffffffffff", "SnapshotId", "snap"},
	{"ami-fffffffffffffffff", "ImageId", "ami"},
	{"i-fffffffffffffffff", "InstanceId", "i"},
};
#define NTOKENS (sizeof(tokens) / sizeof(tokens[0]))

/* ---- fuse/volfs.h stubs: the harness serves no FUSE mount ------------------------------ */

int volfs_mount(const char *mountpoint, enum volfs_transport transport, struct volfs **out)
{
	(void)mountpoint;
	(void)transport;
	*out = NULL;
	return 0;
}

void volfs_unmount(struct volfs *fs)
{
	(void)fs;
}

int volfs_add(struct volfs *fs, const char *name, struct vol *v)
{
	(void)fs;
	(void)v;
	return strlen(name) < ID_MAX ? 0 : -ENAMETOOLONG;
}

int volfs_remove(struct volfs *fs, const char *name, int timeout_ms)
{
	(void)fs;
	(void)name;
	(void)timeout_ms;
	return 0;
}

int volfs_wait_closed(struct volfs *fs, const char *name, int timeout_ms)
{
	(void)fs;
	(void)name;
	(void)timeout_ms;
	return 0;
}

int volfs_open_count(struct volfs *fs, const char *name)
{
	(void)fs;
	(void)name;
	return 0;
}

void volfs_resized(struct volfs *fs, const char *name)
{
	(void)fs;
	(void)name;
}

int volfs_clear_stale(const char *path)
{
	(void)path;
	return 0;
}

/* ---- fuse/loop.h stubs: a fuzzer must not attach real loop devices ---------------------- */

int loop_attach(const char *path, bool read_only, char dev[LOOP_DEV_MAX])
{
	(void)path;
	(void)read_only;
	snprintf(dev, LOOP_DEV_MAX, "/dev/null");
	return 0;
}

int loop_detach(const char *dev, const char *path)
{
	(void)dev;
	(void)path;
	return 0;
}

int loop_set_capacity(const char *dev)
{
	(void)dev;
	return 0;
}

/* ---- the harness ----------------------------------------------------------------------- */

static struct blk_engine *eng;
static char root[256];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int ret;

	(void)argc;
	(void)argv;
	log_set_level(getenv("EBSIM_FUZZ_LOG") ? LOG_DEBUG : LOG_ERR);
	log_set_prefix("fuzz_ctl");
	fuzz_mkdtemp(root, "ctl");
	ret = blk_engine_open("psync", 16, &eng);
	if (ret) {
		fprintf(stderr, "fuzz_ctl: cannot open the psync engine: %s\n", strerror(-ret));
		abort();
	}
	return 0;
}

static int mkdir_open(int parent, const char *name)
{
	if (mkdirat(parent, name, 0700) < 0)
		return -1;
	return openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* A daemon on a fresh home, as ebsimd.c start() makes it (no FUSE, no socket). */
static int daemon_up(struct daemon *d, unsigned long n)
{
	char path[4200];

	memset(d, 0, sizeof(*d));
	d->home_fd = d->vols_fd = d->regions_fd = d->eph_fd = d->inst_fd = -1;
	d->store_scale = 1.0 / 1024; /* see "Bound" */
	pthread_mutex_init(&d->lock, NULL);
	snprintf(d->home, sizeof(d->home), "%s/h%lu", root, n);
	if (mkdir(d->home, 0700) < 0)
		return -errno;
	d->home_fd = open(d->home, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (d->home_fd < 0)
		return -errno;
	d->vols_fd = mkdir_open(d->home_fd, "volumes");
	d->regions_fd = mkdir_open(d->home_fd, "regions");
	d->eph_fd = mkdir_open(d->home_fd, "instance-store");
	d->inst_fd = mkdir_open(d->home_fd, "instances");
	if (d->vols_fd < 0 || d->regions_fd < 0 || d->eph_fd < 0 || d->inst_fd < 0)
		return -errno;
	for (size_t i = 0; i < sizeof(d->master_key); i++)
		d->master_key[i] = (uint8_t)(0x5a ^ i);
	d->eng = eng;
	snprintf(path, sizeof(path), "%s/catalog.db", d->home);
	return cat_open(path, &d->cat);
}

/* ebsimd.c shutdown_daemon(), minus FUSE and the shared engine; then remove the home. */
static void daemon_down(struct daemon *d)
{
	jobs_stop(d);
	if (d->cat)
		instances_shutdown(d);
	while (d->vols) {
		struct dvol *dv = d->vols;
		d->vols = dv->next;
		vol_close(dv->vol);
		manifest_free(dv->base);
		free(dv);
	}
	while (d->stores) {
		struct region_store *rs = d->stores;
		d->stores = rs->next;
		store_close(rs->store);
		free(rs);
	}
	cat_close(d->cat);
	int fds[] = {d->vols_fd, d->regions_fd, d->eph_fd, d->inst_fd, d->home_fd};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	fuzz_rmtree(d->home);
	pthread_mutex_destroy(&d->lock);
}

/* Replace every occurrence of token (same length as the id) by id, in place. */
static void substitute(char *s, size_t len, const char *token, const char *id)
{
	size_t tl = strlen(token);

	if (!id[0] || strlen(id) != tl)
		return;
	for (char *p = s; (size_t)(p - s) + tl <= len;) {
		char *hit = memmem(p, len - (size_t)(p - s), token, tl);
		if (!hit)
			break;
		memcpy(hit, id, tl);
		p = hit + tl;
	}
}

/* Any "Size" or "VolumeSize" integer in (MAX_GIB, 65536] anywhere in v. */
static bool big_size(json_object *v, int depth)
{
	if (depth > 16)
		return false;
	if (json_object_is_type(v, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(v); i++)
			if (big_size(json_object_array_get_idx(v, i), depth + 1))
				return true;
	} else if (json_object_is_type(v, json_type_object)) {
		json_object_object_foreach(v, key, val)
		{
			if ((!strcmp(key, "Size") || !strcmp(key, "VolumeSize")) &&
			    json_object_is_type(val, json_type_int)) {
				int64_t gib = json_object_get_int64(val);
				if (gib > MAX_GIB && gib <= 65536)
					return true;
			}
			if (big_size(val, depth + 1))
				return true;
		}
	}
	return false;
}

/* The memory bound described above. */
static bool too_big(const char *s, size_t len)
{
	json_tokener *tok = json_tokener_new();
	json_object *req;
	bool big;

	if (!tok)
		return false;
	req = json_tokener_parse_ex(tok, s, (int)MIN(len, (size_t)CTL_MAX_MSG));
	big = req && big_size(req, 0);
	json_object_put(req);
	json_tokener_free(tok);
	return big;
}

/* Let background jobs (snapshot copies, hydration) finish before the next request, so an
 * input means the same thing on every run. */
static void jobs_settle(struct daemon *d)
{
	for (;;) {
		bool busy = false;
		pthread_mutex_lock(&d->lock);
		for (struct job *j = d->jobs; j; j = j->next)
			busy |= !j->finished;
		pthread_mutex_unlock(&d->lock);
		if (!busy)
			return;
		usleep(100);
	}
}

/* What a guest would do through FUSE: write a little to a new volume, so that snapshots,
 * block listings, copies and restores have chunks to work on (the pattern depends on n). */
static void scribble(struct daemon *d, const char *id, unsigned n)
{
	static uint8_t buf[3 * 65536];
	struct dvol *dv;

	pthread_mutex_lock(&d->lock);
	dv = dvol_find(d, id);
	pthread_mutex_unlock(&d->lock);
	if (!dv)
		return;
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 31 + n);
	memset(buf + 65536, 0, 65536); /* an all-zero chunk, stored as "zero" */
	vol_pwrite(dv->vol, buf, sizeof(buf), (uint64_t)(n % 4) * 65536);
	vol_fsync(dv->vol);
}

/* Remember the IDs a result names, for the placeholders. */
static void remember(json_object *o, char ids[][ID_MAX])
{
	json_object *id;

	if (!json_object_is_type(o, json_type_object))
		return;
	for (size_t k = 0; k < NTOKENS; k++)
		if (json_object_object_get_ex(o, tokens[k].key, &id) &&
		    id_valid(tokens[k].prefix, json_object_get_string(id)))
			snprintf(ids[k], ID_MAX, "%s", json_object_get_string(id));
}

static void check_reply(json_object *reply, char ids[][ID_MAX])
{
	json_object *res = NULL, *err = NULL, *code, *msg, *inst;

	FUZZ_ASSERT(json_object_is_type(reply, json_type_object), "reply is not an object");
	bool has_res = json_object_object_get_ex(reply, "Result", &res);
	bool has_err = json_object_object_get_ex(reply, "Error", &err);
	FUZZ_ASSERT(has_res != has_err, "reply has %s", has_res ? "both" : "neither");
	if (has_err) {
		FUZZ_ASSERT(json_object_object_get_ex(err, "Code", &code) &&
				    json_object_get_string_len(code) > 0,
			    "Error without a Code");
		FUZZ_ASSERT(json_object_object_get_ex(err, "Message", &msg), "Error without Message");
		const char *m = json_object_get_string(msg);
		for (int i = 0; i < json_object_get_string_len(msg); i++)
			FUZZ_ASSERT((unsigned char)m[i] >= 0x20 && m[i] != 0x7f,
				    "control character 0x%02x in an error message", m[i]);
		return;
	}
	if (json_object_object_get_ex(res, "Instances", &inst) &&
	    json_object_is_type(inst, json_type_array) && json_object_array_length(inst))
		remember(json_object_array_get_idx(inst, 0), ids);
	remember(res, ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned long seq;
	char ids[NTOKENS][ID_MAX] = {{0}};
	struct daemon d;
	char *text;
	int ret;

	if (size > CTL_MAX_MSG)
		return 0;
	text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = 0;
	ret = daemon_up(&d, seq++);
	FUZZ_ASSERT(ret == 0, "cannot set up a scratch daemon in %s: %s", d.home, strerror(-ret));
	char *line = text, *end = text + size;
	for (int n = 0; n < MAX_LINES && line <= end; n++) {
		char *nl = memchr(line, '\n', (size_t)(end - line));
		size_t len = nl ? (size_t)(nl - line) : (size_t)(end - line);
		for (size_t k = 0; k < NTOKENS; k++)
			substitute(line, len, tokens[k].token, ids[k]);
		if (!too_big(line, len)) {
			char before[ID_MAX];
			json_object *reply = ctl_handle(&d, line, len);
			FUZZ_ASSERT(reply, "ctl_handle returned NULL");
			snprintf(before, sizeof(before), "%s", ids[0]);
			check_reply(reply, ids);
			if (strcmp(before, ids[0]))
				scribble(&d, ids[0], (unsigned)n);
			/* what ctl_serve_one sends */
			const char *out = json_object_to_json_string_ext(
				reply, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
			FUZZ_ASSERT(out && !memchr(out, '\n', strlen(out)), "reply is not one line");
			json_object_put(reply);
			jobs_settle(&d);
		}
		if (!nl)
			break;
		line = nl + 1;
	}
	daemon_down(&d);
	free(text);
	return 0;
}
