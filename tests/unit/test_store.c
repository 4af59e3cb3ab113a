/* SPDX-License-Identifier: MIT */
/*
 * test_store.c - the object store and manifests on real files in a private temp dir:
 * put/get round trips and dedup, corruption detected on read and by store_check (with the
 * referencing manifest and chunk index), manifest round trip and strict parsing (every
 * truncation, every flipped byte, each structural rule with a valid trailer), lookup, GC
 * (exactly the unreferenced objects go; a damaged manifest stops it), object copy between
 * stores, concurrent puts, and an informational put/sync throughput figure.
 * Exit: 0 pass, 1 fail, 77 skip.
 *
 * EBSIM_STORE_BENCH_MB sets the throughput run's size (default 1024, 64 under sanitizers;
 * 0 skips it).
 */
#include "common/common.h"
#include "snapshot/snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#define CHUNK (64u << 10)

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static int failures;
static int rootfd = -1; /* the private temp dir */

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fill(void *p, size_t n)
{
	uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)rnd();
}

static struct snap_store *open_store(const char *name)
{
	struct snap_store *s = NULL;
	int ret = store_open(rootfd, name, &s);

	CHECK(ret == 0, "store_open %s -> %d", name, ret);
	if (ret)
		exit(1);
	return s;
}

/* Count regular files under <store>/objects/xx/: object-named ones and others. */
static void count_files(const char *store, size_t *objects, size_t *others)
{
	char path[256];
	DIR *top, *sub;
	struct dirent *de, *fe;

	*objects = *others = 0;
	snprintf(path, sizeof(path), "%s/objects", store);
	int fd = openat(rootfd, path, O_RDONLY | O_DIRECTORY);
	if (fd < 0 || !(top = fdopendir(fd)))
		return;
	while ((de = readdir(top))) {
		if (de->d_name[0] == '.')
			continue;
		int sfd = openat(dirfd(top), de->d_name, O_RDONLY | O_DIRECTORY);
		if (sfd < 0 || !(sub = fdopendir(sfd)))
			continue;
		while ((fe = readdir(sub))) {
			if (!strcmp(fe->d_name, ".") || !strcmp(fe->d_name, ".."))
				continue;
			if (strlen(fe->d_name) == OBJ_HEX_LEN - 2)
				(*objects)++;
			else
				(*others)++;
		}
		closedir(sub);
	}
	closedir(top);
}

static size_t count_objects(const char *store)
{
	size_t o, x;

	count_files(store, &o, &x);
	return o;
}

static void obj_path(const char *store, const uint8_t id[OBJ_ID_LEN], char path[256])
{
	char hex[OBJ_HEX_LEN + 1];

	obj_id_hex(id, hex);
	snprintf(path, 256, "%s/objects/%.2s/%s", store, hex, hex + 2);
}

/* Flip one byte of an object file in place. */
static void corrupt_object(const char *store, const uint8_t id[OBJ_ID_LEN], off_t off)
{
	char path[256];
	uint8_t b;
	int fd;

	obj_path(store, id, path);
	fd = openat(rootfd, path, O_RDWR);
	CHECK(fd >= 0, "open %s", path);
	if (fd < 0)
		return;
	CHECK(pread(fd, &b, 1, off) == 1, "pread");
	b ^= 0x40;
	CHECK(pwrite(fd, &b, 1, off) == 1, "pwrite");
	close(fd);
}

static void sha256(const void *buf, size_t len, uint8_t out[32])
{
	EVP_Digest(buf, len, out, NULL, EVP_sha256(), NULL);
}

/* ---- objects ------------------------------------------------------------------------- */

static void test_ids(void)
{
	uint8_t id[OBJ_ID_LEN], back[OBJ_ID_LEN];
	char hex[OBJ_HEX_LEN + 1], bad[OBJ_HEX_LEN + 2];

	fill(id, sizeof(id));
	obj_id_hex(id, hex);
	CHECK(strlen(hex) == OBJ_HEX_LEN, "hex length");
	CHECK(obj_id_parse(hex, back) == 0 && !memcmp(id, back, OBJ_ID_LEN), "round trip");
	for (size_t i = 0; i < OBJ_HEX_LEN; i++)
		CHECK(hex[i] == "0123456789abcdef"[(id[i / 2] >> (i % 2 ? 0 : 4)) & 15],
		      "lower-case hex at %zu", i);

	memcpy(bad, hex, sizeof(hex));
	bad[OBJ_HEX_LEN - 1] = '\0';
	CHECK(obj_id_parse(bad, back) == -EINVAL, "63 digits accepted");
	memcpy(bad, hex, OBJ_HEX_LEN);
	bad[OBJ_HEX_LEN] = '0';
	bad[OBJ_HEX_LEN + 1] = '\0';
	CHECK(obj_id_parse(bad, back) == -EINVAL, "65 digits accepted");
	memcpy(bad, hex, sizeof(hex));
	bad[10] = 'A';
	CHECK(obj_id_parse(bad, back) == -EINVAL, "upper case accepted");
	bad[10] = 'g';
	CHECK(obj_id_parse(bad, back) == -EINVAL, "'g' accepted");
	bad[10] = '/';
	CHECK(obj_id_parse(bad, back) == -EINVAL, "'/' accepted");
	CHECK(obj_id_parse("", back) == -EINVAL, "empty accepted");
	CHECK(obj_id_parse(NULL, back) == -EINVAL, "NULL accepted");
}

static void test_put_get(void)
{
	struct snap_store *s = open_store("pg");
	uint8_t *buf = malloc(CHUNK), *out = malloc(CHUNK), id[OBJ_ID_LEN], id2[OBJ_ID_LEN];
	uint8_t want[32], missing[OBJ_ID_LEN];
	char path[256];
	struct stat st;
	bool existed = true;
	uint64_t off = 1;
	int ret, fd;

	fill(buf, CHUNK);
	ret = store_put(s, buf, CHUNK, id, &existed);
	CHECK(ret == 0 && !existed, "first put -> %d existed=%d", ret, existed);
	sha256(buf, CHUNK, want);
	CHECK(!memcmp(id, want, 32), "id is not SHA-256 of the bytes");
	CHECK(store_verify(buf, CHUNK, id), "store_verify");
	CHECK(!store_verify(buf, CHUNK - 1, id), "store_verify of other bytes");
	CHECK(store_has(s, id), "store_has after put");

	memset(out, 0, CHUNK);
	ret = store_get(s, id, out, CHUNK);
	CHECK(ret == 0 && !memcmp(buf, out, CHUNK), "get -> %d / bytes differ", ret);

	ret = store_put(s, buf, CHUNK, id2, &existed);
	CHECK(ret == 0 && existed && !memcmp(id, id2, 32), "second put -> %d existed=%d", ret,
	      existed);
	size_t objs, others;
	count_files("pg", &objs, &others);
	CHECK(objs == 1 && others == 0, "%zu objects, %zu other files after two puts", objs,
	      others);

	/* modes: objects 0600, directories 0700 */
	obj_path("pg", id, path);
	CHECK(fstatat(rootfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
		  (st.st_mode & 0777) == 0600,
	      "object mode %o", st.st_mode & 0777);
	path[strlen("pg/objects/ab")] = '\0';
	CHECK(fstatat(rootfd, path, &st, 0) == 0 && (st.st_mode & 0777) == 0700,
	      "fan-out dir mode %o", st.st_mode & 0777);
	CHECK(fstatat(rootfd, "pg/manifests", &st, 0) == 0 && (st.st_mode & 0777) == 0700,
	      "manifests mode %o", st.st_mode & 0777);

	/* missing: both an unused fan-out dir and a used one */
	memcpy(missing, id, OBJ_ID_LEN);
	missing[31] ^= 1;
	CHECK(store_get(s, missing, out, CHUNK) == -ENOENT, "missing id in used dir");
	CHECK(!store_has(s, missing), "store_has of a missing id");
	missing[0] ^= 0x80;
	CHECK(store_get(s, missing, out, CHUNK) == -ENOENT, "missing id in unused dir");
	CHECK(store_open_object(s, missing, &off) == -ENOENT, "open missing");
	CHECK(store_remove_object(s, missing) == -ENOENT, "remove missing");

	/* wrong length is a mismatch */
	CHECK(store_get(s, id, out, CHUNK - 1) == -EBADMSG, "short len accepted");
	CHECK(store_get(s, id, out, CHUNK / 2) == -EBADMSG, "half len accepted");

	/* async readers: open + read + verify */
	fd = store_open_object(s, id, &off);
	CHECK(fd >= 0 && off == 0, "store_open_object -> %d", fd);
	if (fd >= 0) {
		CHECK(pread(fd, out, CHUNK, 0) == (ssize_t)CHUNK && store_verify(out, CHUNK, id),
		      "read through store_open_object");
		close(fd);
	}

	/* zero-length and odd-length objects */
	ret = store_put(s, buf, 0, id2, &existed);
	CHECK(ret == 0 && !existed && store_get(s, id2, out, 0) == 0, "empty object -> %d", ret);
	ret = store_put(s, buf + 1, 12345, id2, NULL);
	CHECK(ret == 0 && store_get(s, id2, out, 12345) == 0 && !memcmp(out, buf + 1, 12345),
	      "odd-length object -> %d", ret);

	/* a torn object (wrong size, as after a crash before store_sync) is rewritten */
	obj_path("pg", id, path);
	fd = openat(rootfd, path, O_WRONLY | O_TRUNC);
	CHECK(fd >= 0, "truncate %s", path);
	if (fd >= 0)
		close(fd);
	CHECK(store_get(s, id, out, CHUNK) == -EBADMSG, "torn object read");
	ret = store_put(s, buf, CHUNK, id2, &existed);
	CHECK(ret == 0 && !existed, "put over a torn object -> %d existed=%d", ret, existed);
	CHECK(store_get(s, id, out, CHUNK) == 0 && !memcmp(out, buf, CHUNK), "repaired object");

	CHECK(store_remove_object(s, id) == 0, "remove");
	CHECK(store_get(s, id, out, CHUNK) == -ENOENT, "get after remove");
	CHECK(store_sync(s) == 0, "sync");

	store_close(s);
	free(buf);
	free(out);
}

/* ---- manifests ----------------------------------------------------------------------- */

static struct manifest *make_manifest(uint64_t volume_size, uint32_t chunk_size, size_t n,
				      const uint64_t *idx)
{
	struct manifest *m = calloc(1, sizeof(*m));

	m->volume_size = volume_size;
	m->chunk_size = chunk_size;
	id_new("vol", m->volume_id);
	id_new("snap", m->lineage);
	id_new("snap", m->parent);
	m->nentries = n;
	m->e = calloc(n ? n : 1, sizeof(*m->e));
	for (size_t i = 0; i < n; i++) {
		m->e[i].idx = idx ? idx[i] : i;
		fill(m->e[i].id, OBJ_ID_LEN);
	}
	return m;
}

static bool manifest_equal(const struct manifest *a, const struct manifest *b)
{
	if (a->volume_size != b->volume_size || a->chunk_size != b->chunk_size ||
	    a->flags != b->flags || strcmp(a->volume_id, b->volume_id) ||
	    strcmp(a->parent, b->parent) || strcmp(a->lineage, b->lineage) ||
	    a->nentries != b->nentries)
		return false;
	if ((a->flags & MANIFEST_F_ENCRYPTED) && memcmp(a->wrapped_key, b->wrapped_key, 72))
		return false;
	for (size_t i = 0; i < a->nentries; i++)
		if (a->e[i].idx != b->e[i].idx || memcmp(a->e[i].id, b->e[i].id, OBJ_ID_LEN))
			return false;
	return true;
}

/* Parse a copy of exactly len bytes, so ASan sees any read past the end. */
static int parse_copy(const uint8_t *buf, size_t len)
{
	struct manifest *m = NULL;
	uint8_t *c = malloc(len ? len : 1);
	int ret;

	memcpy(c, buf, len);
	ret = manifest_parse(c, len, &m);
	CHECK((ret == 0) == (m != NULL), "out set iff success");
	manifest_free(m);
	free(c);
	return ret;
}

/* Recompute the trailer after an edit, so only the structural rule is tested. */
static void reseal(uint8_t *buf, size_t len)
{
	sha256(buf, len - 32, buf + len - 32);
}

static void put64le(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

struct each_state {
	int n;
	bool saw_id, saw_id2;
	const char *id, *id2;
};

static int each_cb(void *arg, const char *x)
{
	struct each_state *st = arg;

	st->n++;
	if (!strcmp(x, st->id))
		st->saw_id = true;
	else if (!strcmp(x, st->id2))
		st->saw_id2 = true;
	else
		CHECK(0, "each listed %s", x);
	return 0;
}

/* Apply edit to a copy of good (then reseal) and expect -EUCLEAN. */
#define EXPECT_REJECT(what, len_expr, ...)                                                         \
	do {                                                                                       \
		uint8_t *b_ = malloc(glen + 64);                                                   \
		size_t blen_ = (len_expr);                                                         \
		memcpy(b_, good, glen);                                                            \
		__VA_ARGS__;                                                                       \
		reseal(b_, blen_);                                                                 \
		CHECK(parse_copy(b_, blen_) == -EUCLEAN, "%s accepted", what);                     \
		free(b_);                                                                          \
	} while (0)

static void test_manifest(void)
{
	struct snap_store *s = open_store("mf");
	const uint64_t idx[] = {0, 1, 2, 7, 100, 101, 5000, 16383};
	const size_t n = ARRAY_SIZE(idx);
	struct manifest *m = make_manifest(1ull << 30, CHUNK, n, idx), *r = NULL, *e;
	char id[ID_MAX], id2[ID_MAX];
	uint8_t *good;
	size_t glen;
	void *raw;
	int ret, mfd;

	m->flags = MANIFEST_F_ENCRYPTED;
	fill(m->wrapped_key, sizeof(m->wrapped_key));
	id_new("snap", id);
	ret = manifest_write(s, id, m);
	CHECK(ret == 0, "manifest_write -> %d", ret);
	ret = manifest_read(s, id, &r);
	CHECK(ret == 0 && r && manifest_equal(m, r), "round trip -> %d", ret);
	manifest_free(r);

	/* unencrypted, no parent, no entries */
	e = make_manifest(4096 * 3, 4096, 0, NULL);
	e->parent[0] = '\0';
	memset(e->wrapped_key, 0xaa, sizeof(e->wrapped_key)); /* ignored: not encrypted */
	id_new("snap", id2);
	CHECK(manifest_write(s, id2, e) == 0, "write empty manifest");
	ret = manifest_read(s, id2, &r);
	CHECK(ret == 0 && r && manifest_equal(e, r) && r->parent[0] == '\0' && r->nentries == 0 &&
		  manifest_lookup(r, 0) == NULL,
	      "empty round trip -> %d", ret);
	manifest_free(r);

	/* manifest_write validates */
	CHECK(manifest_write(s, "snap-../../etc/x", m) == -EINVAL, "bad id written");
	CHECK(manifest_write(s, "vol-0123456789abcdef0", m) == -EINVAL, "vol id written");
	m->e[3].idx = m->e[2].idx;
	CHECK(manifest_write(s, id, m) == -EINVAL, "duplicate idx written");
	m->e[3].idx = 1;
	CHECK(manifest_write(s, id, m) == -EINVAL, "unsorted written");
	m->e[3].idx = 7;
	m->e[n - 1].idx = 16384;
	CHECK(manifest_write(s, id, m) == -EINVAL, "idx out of range written");
	m->e[n - 1].idx = 16383;
	m->chunk_size = 3 << 12;
	CHECK(manifest_write(s, id, m) == -EINVAL, "non-power-of-two chunk written");
	m->chunk_size = CHUNK;
	strcpy(m->lineage, "");
	CHECK(manifest_write(s, id, m) == -EINVAL, "empty lineage written");
	id_new("snap", m->lineage);

	/* lookup */
	ret = manifest_read(s, id, &r);
	CHECK(ret == 0, "re-read -> %d", ret);
	if (r) {
		for (size_t i = 0; i < n; i++) {
			const uint8_t *got = manifest_lookup(r, idx[i]);
			CHECK(got && !memcmp(got, m->e[i].id, OBJ_ID_LEN), "lookup %llu",
			      (unsigned long long)idx[i]);
		}
		const uint64_t misses[] = {3, 6, 8, 99, 102, 4999, 5001, 16382, 16384, ~0ull};
		for (size_t i = 0; i < ARRAY_SIZE(misses); i++)
			CHECK(!manifest_lookup(r, misses[i]), "lookup %llu hit",
			      (unsigned long long)misses[i]);
		manifest_free(r);
	}
	CHECK(!manifest_lookup(NULL, 0), "lookup in NULL");

	/* the raw bytes, for the parser tests */
	mfd = openat(rootfd, "mf/manifests", O_RDONLY | O_DIRECTORY);
	ret = file_read_all(mfd, id, &raw, &glen);
	CHECK(ret == 0 && glen == 208 + 40 * n + 32, "raw manifest: %d, %zu bytes", ret, glen);
	if (ret)
		exit(1);
	good = raw;
	CHECK(parse_copy(good, glen) == 0, "good bytes rejected");

	for (size_t l = 0; l < glen; l++)
		CHECK(parse_copy(good, l) == -EUCLEAN, "truncation to %zu accepted", l);
	for (size_t i = 0; i < glen; i++) {
		for (int bit = 0; bit < 8; bit += 7) {
			good[i] ^= (uint8_t)(1u << bit);
			CHECK(parse_copy(good, glen) == -EUCLEAN,
			      "flip of byte %zu bit %d accepted", i, bit);
			good[i] ^= (uint8_t)(1u << bit);
		}
	}
	/* extra bytes after the trailer */
	EXPECT_REJECT("trailing garbage", glen + 8, memset(b_ + glen, 0, 8));
	/* a correct trailer is not enough: each structural rule on its own */
	{
		uint8_t *b = malloc(glen);
		memcpy(b, good, glen);
		reseal(b, glen);
		CHECK(parse_copy(b, glen) == 0, "reseal helper broke a good manifest");
		free(b);
	}
	EXPECT_REJECT("bad magic", glen, b_[0] ^= 1);
	EXPECT_REJECT("version 2", glen, b_[8] = 2);
	EXPECT_REJECT("unknown flag", glen, b_[12] |= 2);
	EXPECT_REJECT("reserved non-zero", glen, b_[28] = 1);
	EXPECT_REJECT("volume size 0", glen, put64le(b_ + 16, 0));
	EXPECT_REJECT("volume size not a chunk multiple", glen,
		      put64le(b_ + 16, (1ull << 30) + 4096));
	EXPECT_REJECT("volume size 2^51", glen, put64le(b_ + 16, 1ull << 51));
	EXPECT_REJECT("chunk 3*4096", glen, b_[24] = 0; b_[25] = 0x30; b_[26] = 0);
	EXPECT_REJECT("chunk 2048", glen, b_[24] = 0; b_[25] = 0x08; b_[26] = 0);
	EXPECT_REJECT("chunk 128 MiB", glen, b_[24] = 0; b_[25] = 0; b_[26] = 0; b_[27] = 8);
	EXPECT_REJECT("chunk 0", glen, b_[24] = 0; b_[25] = 0; b_[26] = 0; b_[27] = 0);
	EXPECT_REJECT("volume id not vol-", glen, memcpy(b_ + 32, "snap", 4));
	EXPECT_REJECT("volume id empty", glen, memset(b_ + 32, 0, 32));
	EXPECT_REJECT("volume id upper case", glen, b_[32 + 6] = 'G');
	EXPECT_REJECT("volume id unterminated", glen, memset(b_ + 32 + 21, 'a', 11));
	EXPECT_REJECT("volume id junk after NUL", glen, b_[32 + 30] = 'x');
	EXPECT_REJECT("parent not snap-", glen, memcpy(b_ + 64, "vol-", 4));
	EXPECT_REJECT("parent traversal", glen, memcpy(b_ + 64, "snap-../../../../x", 18));
	EXPECT_REJECT("lineage empty", glen, memset(b_ + 96, 0, 32));
	EXPECT_REJECT("nentries + 1", glen, b_[200]++);
	EXPECT_REJECT("nentries - 1", glen, b_[200]--);
	EXPECT_REJECT("nentries huge", glen, put64le(b_ + 200, ~0ull / 40 + 1));
	EXPECT_REJECT("one entry short", glen - 40, memmove(b_ + glen - 72, b_ + glen - 32, 32));
	EXPECT_REJECT("half an entry more", glen + 20, memset(b_ + glen - 32, 0, 52));
	EXPECT_REJECT("unsorted", glen, put64le(b_ + 208 + 40 * 3, 1));
	EXPECT_REJECT("duplicate idx", glen, put64le(b_ + 208 + 40 * 3, 2));
	EXPECT_REJECT("idx == nchunks", glen, put64le(b_ + 208 + 40 * (n - 1), 16384));
	EXPECT_REJECT("idx huge", glen, put64le(b_ + 208 + 40 * (n - 1), ~0ull));
	/* an unencrypted manifest carries no key */
	EXPECT_REJECT("key without the encrypted flag", glen, b_[12] = 0);
	CHECK(parse_copy(good, 0) == -EUCLEAN, "empty input");
	{
		struct manifest *x = (struct manifest *)1;
		CHECK(manifest_parse(NULL, 0, &x) == -EUCLEAN && x == NULL, "NULL input");
	}

	/* a damaged file on disk reads as -EUCLEAN; a missing one as -ENOENT */
	good[100] ^= 1;
	CHECK(file_write_atomic(mfd, id, good, glen, 0600) == 0, "write damaged");
	CHECK(manifest_read(s, id, &r) == -EUCLEAN && !r, "damaged manifest read");
	good[100] ^= 1;

	/* manifest_each: only well-formed snapshot ids */
	CHECK(file_write_atomic(mfd, "junk", "x", 1, 0600) == 0, "junk");
	CHECK(file_write_atomic(mfd, ".snap-0123456789abcdef0.tmp", "x", 1, 0600) == 0, "tmp");
	CHECK(file_write_atomic(mfd, "snap-0123456789ABCDEF0", "x", 1, 0600) == 0, "upper");
	CHECK(symlinkat("/etc/passwd", mfd, "snap-00000000000000000") == 0, "symlink");
	CHECK(manifest_read(s, "snap-00000000000000000", &r) == -EUCLEAN, "symlink manifest");
	CHECK(manifest_read(s, "snap-11111111111111111", &r) == -ENOENT, "missing manifest");
	CHECK(manifest_read(s, "snap-../../etc/passwd", &r) == -EINVAL, "hostile id read");
	CHECK(unlinkat(mfd, "snap-00000000000000000", 0) == 0, "unlink symlink");
	{
		struct each_state st = {.id = id, .id2 = id2};

		ret = manifest_each(s, each_cb, &st);
		CHECK(ret == 0 && st.n == 2 && st.saw_id && st.saw_id2, "each -> %d, n=%d", ret,
		      st.n);
	}
	CHECK(manifest_remove(s, id2) == 0, "remove");
	CHECK(manifest_read(s, id2, &r) == -ENOENT, "read after remove");
	CHECK(manifest_remove(s, id2) == -ENOENT, "remove twice");
	CHECK(manifest_remove(s, "snap-x") == -EINVAL, "remove bad id");

	close(mfd);
	free(raw);
	manifest_free(m);
	manifest_free(e);
	store_close(s);
}

/* ---- check, GC, copy ----------------------------------------------------------------- */

struct report_log {
	int corrupt, missing, leaked, bad;
	char corrupt_obj[OBJ_HEX_LEN + 1], corrupt_snap[ID_MAX];
	uint64_t corrupt_idx;
	char missing_snap[ID_MAX], missing_obj[OBJ_HEX_LEN + 1];
	uint64_t missing_idx;
	char leaked_obj[OBJ_HEX_LEN + 1], bad_snap[ID_MAX];
};

static void on_corrupt(void *arg, const char *obj, const char *snap, uint64_t idx)
{
	struct report_log *l = arg;

	l->corrupt++;
	snprintf(l->corrupt_obj, sizeof(l->corrupt_obj), "%s", obj);
	snprintf(l->corrupt_snap, sizeof(l->corrupt_snap), "%s", snap ? snap : "(none)");
	l->corrupt_idx = idx;
}

static void on_missing(void *arg, const char *snap, uint64_t idx, const char *obj)
{
	struct report_log *l = arg;

	l->missing++;
	snprintf(l->missing_snap, sizeof(l->missing_snap), "%s", snap);
	snprintf(l->missing_obj, sizeof(l->missing_obj), "%s", obj);
	l->missing_idx = idx;
}

static void on_leaked(void *arg, const char *obj)
{
	struct report_log *l = arg;

	l->leaked++;
	snprintf(l->leaked_obj, sizeof(l->leaked_obj), "%s", obj);
}

static void on_bad(void *arg, const char *snap)
{
	struct report_log *l = arg;

	l->bad++;
	snprintf(l->bad_snap, sizeof(l->bad_snap), "%s", snap);
}

static int run_check(struct snap_store *s, struct check_report *r, struct report_log *l)
{
	memset(l, 0, sizeof(*l));
	memset(r, 0xff, sizeof(*r)); /* the counters must be reset by store_check */
	r->corrupt = on_corrupt;
	r->missing = on_missing;
	r->leaked = on_leaked;
	r->bad_manifest = on_bad;
	r->arg = l;
	return store_check(s, r);
}

/* Put n random chunks; ids go to ids[], bytes to data (n * CHUNK). */
static void put_random(struct snap_store *s, size_t n, uint8_t *data, uint8_t (*ids)[32])
{
	for (size_t i = 0; i < n; i++) {
		fill(data + i * CHUNK, CHUNK);
		CHECK(store_put(s, data + i * CHUNK, CHUNK, ids[i], NULL) == 0, "put %zu", i);
	}
}

static void write_manifest_of(struct snap_store *s, const char *snap, size_t n, const uint64_t *idx,
			      uint8_t (*ids)[32], const size_t *which)
{
	struct manifest *m = make_manifest(1ull << 30, CHUNK, n, idx);
	int ret;

	for (size_t i = 0; i < n; i++)
		memcpy(m->e[i].id, ids[which[i]], OBJ_ID_LEN);
	ret = manifest_write(s, snap, m);
	CHECK(ret == 0, "manifest_write %s -> %d", snap, ret);
	manifest_free(m);
}

static void test_check(void)
{
	struct snap_store *s = open_store("ck");
	uint8_t *data = malloc(4 * CHUNK), *out = malloc(CHUNK), ids[4][32];
	const uint64_t idx[] = {0, 5, 9};
	const size_t which[] = {0, 1, 2};
	char snap[ID_MAX], hex[OBJ_HEX_LEN + 1];
	struct check_report r;
	struct report_log l;
	int ret;

	put_random(s, 3, data, ids);
	id_new("snap", snap);
	write_manifest_of(s, snap, 3, idx, ids, which);

	ret = run_check(s, &r, &l);
	CHECK(ret == 0 && r.objects_checked == 3 && !r.corrupt_n && !r.missing_n && !r.leaked_n &&
		  !r.bad_manifests_n && !l.corrupt && !l.missing && !l.leaked && !l.bad,
	      "clean check -> %d: %llu checked %llu/%llu/%llu/%llu", ret,
	      (unsigned long long)r.objects_checked, (unsigned long long)r.corrupt_n,
	      (unsigned long long)r.missing_n, (unsigned long long)r.leaked_n,
	      (unsigned long long)r.bad_manifests_n);

	/* one flipped byte: the read fails, the check names the object, manifest and idx */
	corrupt_object("ck", ids[1], 4321);
	CHECK(store_get(s, ids[1], out, CHUNK) == -EBADMSG, "corrupt object read");
	CHECK(store_get(s, ids[0], out, CHUNK) == 0, "other object still reads");
	ret = run_check(s, &r, &l);
	obj_id_hex(ids[1], hex);
	CHECK(ret == 0 && r.objects_checked == 3 && r.corrupt_n == 1 && l.corrupt == 1 &&
		  !strcmp(l.corrupt_obj, hex) && !strcmp(l.corrupt_snap, snap) &&
		  l.corrupt_idx == 5 && !r.missing_n && !r.leaked_n && !r.bad_manifests_n,
	      "corrupt report -> %d: n=%llu obj=%s snap=%s idx=%llu", ret,
	      (unsigned long long)r.corrupt_n, l.corrupt_obj, l.corrupt_snap,
	      (unsigned long long)l.corrupt_idx);

	/* a missing object, and a leaked one */
	CHECK(store_remove_object(s, ids[2]) == 0, "remove");
	fill(data + 3 * CHUNK, CHUNK);
	CHECK(store_put(s, data + 3 * CHUNK, CHUNK, ids[3], NULL) == 0, "put leaked");
	ret = run_check(s, &r, &l);
	obj_id_hex(ids[2], hex);
	CHECK(ret == 0 && r.missing_n == 1 && !strcmp(l.missing_snap, snap) && l.missing_idx == 9 &&
		  !strcmp(l.missing_obj, hex),
	      "missing report -> %d: n=%llu %s idx %llu", ret, (unsigned long long)r.missing_n,
	      l.missing_snap, (unsigned long long)l.missing_idx);
	obj_id_hex(ids[3], hex);
	CHECK(r.leaked_n == 1 && !strcmp(l.leaked_obj, hex) && r.corrupt_n == 1 &&
		  r.objects_checked == 3,
	      "leaked report: n=%llu", (unsigned long long)r.leaked_n);

	store_close(s);
	free(data);
	free(out);
}

/* Files in <store>/packs: *.pack, *.idx and anything else. */
static void count_packs(const char *store, size_t *packs, size_t *idxs, size_t *others)
{
	char path[256];
	struct dirent *de;
	DIR *d;
	int fd;

	*packs = *idxs = *others = 0;
	snprintf(path, sizeof(path), "%s/packs", store);
	fd = openat(rootfd, path, O_RDONLY | O_DIRECTORY);
	d = fd < 0 ? NULL : fdopendir(fd);
	if (!d)
		return;
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (de->d_name[0] == '.' && (n == 1 || !strcmp(de->d_name, "..")))
			continue;
		if (n > 5 && !strcmp(de->d_name + n - 5, ".pack") && de->d_name[0] != '.')
			(*packs)++;
		else if (n > 4 && !strcmp(de->d_name + n - 4, ".idx") && de->d_name[0] != '.')
			(*idxs)++;
		else
			(*others)++;
	}
	closedir(d);
}

/* Flip one byte of the only pack file (or its index) at off. */
static void flip_in_pack(const char *store, const char *suffix, off_t off)
{
	char path[256];
	struct dirent *de;
	DIR *d;
	int fd;
	uint8_t b;

	snprintf(path, sizeof(path), "%s/packs", store);
	fd = openat(rootfd, path, O_RDONLY | O_DIRECTORY);
	d = fdopendir(fd);
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name), sl = strlen(suffix);
		if (de->d_name[0] == '.' || n <= sl || strcmp(de->d_name + n - sl, suffix))
			continue;
		int f = openat(dirfd(d), de->d_name, O_RDWR);
		CHECK(f >= 0 && pread(f, &b, 1, off) == 1, "read %s", de->d_name);
		b ^= 0x10;
		CHECK(pwrite(f, &b, 1, off) == 1, "flip %s", de->d_name);
		close(f);
	}
	closedir(d);
}

static void pack_put_random(struct store_pack *w, size_t n, uint8_t *data, uint8_t (*ids)[32])
{
	for (size_t i = 0; i < n; i++) {
		bool existed = true;
		fill(data + i * CHUNK, CHUNK);
		CHECK(store_sha256(data + i * CHUNK, CHUNK, ids[i]) == 0, "hash %zu", i);
		CHECK(store_pack_put(w, data + i * CHUNK, CHUNK, ids[i], &existed) == 0 && !existed,
		      "pack put %zu", i);
	}
}

/* The pack writer: objects visible and durable only after commit, read back by id (also at
 * an offset through store_open_object), dedup, check and GC over packs (repacking the live
 * entries, freeing the rest), an aborted writer and a damaged index. */
static void test_packs(void)
{
	struct snap_store *s = open_store("pk");
	uint8_t *data = malloc(8 * CHUNK), *out = malloc(CHUNK), ids[8][32];
	char m1[ID_MAX], m2[ID_MAX], hex[OBJ_HEX_LEN + 1];
	const uint64_t idx1[] = {0, 1, 2, 3}, idx2[] = {10, 11, 12};
	const size_t w1[] = {0, 1, 2, 3}, w2[] = {2, 3, 4};
	struct store_pack *w = NULL;
	struct check_report r;
	struct report_log l;
	size_t np, ni, no;
	uint64_t freed = 99, off = 0;
	bool existed = false;
	int ret, fd;

	CHECK(store_pack_begin(s, &w) == 0, "pack begin");
	pack_put_random(w, 6, data, ids);
	CHECK(store_pack_put(w, data + 2 * CHUNK, CHUNK, ids[2], &existed) == 0 && existed,
	      "duplicate within a writer stored twice");
	CHECK(!store_has(s, ids[0]), "visible before commit");
	CHECK(store_pack_commit(w) == 0, "commit");
	store_pack_free(w);
	count_packs("pk", &np, &ni, &no);
	CHECK(np == 1 && ni == 1 && no == 0 && count_objects("pk") == 0,
	      "one pack + index, no loose objects: %zu %zu %zu", np, ni, no);
	for (int i = 0; i < 6; i++)
		CHECK(store_has(s, ids[i]) && store_get(s, ids[i], out, CHUNK) == 0 &&
			  !memcmp(out, data + (size_t)i * CHUNK, CHUNK),
		      "packed object %d", i);
	fd = store_open_object(s, ids[3], &off);
	CHECK(fd >= 0 && off == 3 * CHUNK && pread(fd, out, CHUNK, (off_t)off) == CHUNK &&
		      store_verify(out, CHUNK, ids[3]),
	      "open packed object -> %d at %llu", fd, (unsigned long long)off);
	if (fd >= 0)
		close(fd);
	CHECK(store_get(s, ids[3], out, CHUNK - 1) == -EBADMSG, "packed object, wrong length");

	/* dedup against packs, and loose puts see packed objects */
	CHECK(store_pack_begin(s, &w) == 0, "pack begin 2");
	CHECK(store_pack_put(w, data, CHUNK, ids[0], &existed) == 0 && existed, "dedup vs pack");
	CHECK(store_pack_commit(w) == 0, "empty commit");
	store_pack_free(w);
	CHECK(store_put(s, data + CHUNK, CHUNK, ids[6], &existed) == 0 && existed &&
		  count_objects("pk") == 0,
	      "loose put of a packed object");
	count_packs("pk", &np, &ni, &no);
	CHECK(np == 1 && ni == 1 && no == 0, "an empty commit made a pack");

	/* an aborted writer leaves nothing */
	CHECK(store_pack_begin(s, &w) == 0, "pack begin 3");
	pack_put_random(w, 1, data + 6 * CHUNK, ids + 6);
	store_pack_free(w);
	count_packs("pk", &np, &ni, &no);
	CHECK(np == 1 && ni == 1 && no == 0 && !store_has(s, ids[6]), "aborted pack left behind");

	/* reopened: the index is loaded */
	store_close(s);
	s = open_store("pk");
	CHECK(store_get(s, ids[5], out, CHUNK) == 0 && !memcmp(out, data + 5 * CHUNK, CHUNK),
	      "packed object after reopen");

	/* check: 5 is leaked; a flipped byte in entry 1 is corrupt, named with M1 and idx 1 */
	id_new("snap", m1);
	id_new("snap", m2);
	write_manifest_of(s, m1, 4, idx1, ids, w1);
	write_manifest_of(s, m2, 3, idx2, ids, w2);
	ret = run_check(s, &r, &l);
	obj_id_hex(ids[5], hex);
	CHECK(ret == 0 && r.objects_checked == 6 && r.leaked_n == 1 && !strcmp(l.leaked_obj, hex) &&
		  !r.corrupt_n && !r.missing_n,
	      "pack check -> %d: %llu checked, %llu leaked", ret,
	      (unsigned long long)r.objects_checked, (unsigned long long)r.leaked_n);
	flip_in_pack("pk", ".pack", CHUNK + 999);
	CHECK(store_get(s, ids[1], out, CHUNK) == -EBADMSG, "corrupt packed object read");
	ret = run_check(s, &r, &l);
	obj_id_hex(ids[1], hex);
	CHECK(ret == 0 && r.corrupt_n == 1 && !strcmp(l.corrupt_obj, hex) &&
		  !strcmp(l.corrupt_snap, m1) && l.corrupt_idx == 1,
	      "corrupt packed object report -> %d", ret);
	flip_in_pack("pk", ".pack", CHUNK + 999);

	/* GC: 5 goes (the pack is rewritten with the live five), then M1's own 0 and 1 */
	ret = store_gc(s, &freed);
	count_packs("pk", &np, &ni, &no);
	CHECK(ret == 0 && freed == 1 && np == 1 && ni == 1 && no == 0 && !store_has(s, ids[5]),
	      "pack gc -> %d freed %llu, %zu/%zu/%zu", ret, (unsigned long long)freed, np, ni, no);
	for (int i = 0; i < 5; i++)
		CHECK(store_get(s, ids[i], out, CHUNK) == 0 &&
			  !memcmp(out, data + (size_t)i * CHUNK, CHUNK),
		      "object %d after repack", i);
	CHECK(manifest_remove(s, m1) == 0, "remove M1");
	ret = store_gc(s, &freed);
	CHECK(ret == 0 && freed == 2, "gc after M1 -> %d freed %llu", ret, (unsigned long long)freed);
	for (int i = 0; i < 5; i++)
		CHECK((store_get(s, ids[i], out, CHUNK) == 0) == (i >= 2), "object %d after gc", i);
	ret = run_check(s, &r, &l);
	CHECK(ret == 0 && r.objects_checked == 3 && !r.leaked_n && !r.missing_n && !r.corrupt_n,
	      "check after pack gc -> %d: %llu checked %llu leaked", ret,
	      (unsigned long long)r.objects_checked, (unsigned long long)r.leaked_n);
	/* the same after a reopen (the rebuilt map matches the files) */
	store_close(s);
	s = open_store("pk");
	ret = run_check(s, &r, &l);
	CHECK(ret == 0 && r.objects_checked == 3 && !r.leaked_n && !r.missing_n && !r.corrupt_n,
	      "check after reopen -> %d", ret);

	/* a damaged index: its objects read as missing, never as other bytes */
	flip_in_pack("pk", ".idx", 40);
	store_close(s);
	s = open_store("pk");
	CHECK(store_get(s, ids[2], out, CHUNK) == -ENOENT, "object of a damaged index");
	ret = run_check(s, &r, &l);
	CHECK(ret == 0 && r.missing_n == 3, "damaged index -> %d, %llu missing", ret,
	      (unsigned long long)r.missing_n);
	flip_in_pack("pk", ".idx", 40);
	store_close(s);
	s = open_store("pk");

	/* the last manifest goes: so does the last pack */
	CHECK(manifest_remove(s, m2) == 0, "remove M2");
	ret = store_gc(s, &freed);
	count_packs("pk", &np, &ni, &no);
	CHECK(ret == 0 && freed == 3 && np == 0 && ni == 0 && no == 0,
	      "final gc -> %d freed %llu, %zu/%zu/%zu", ret, (unsigned long long)freed, np, ni, no);
	store_close(s);
	free(data);
	free(out);
}

static void test_gc(void)
{
	struct snap_store *s = open_store("gc");
	uint8_t *data = malloc(8 * CHUNK), *out = malloc(CHUNK), ids[8][32];
	char m1[ID_MAX], m2[ID_MAX], path[256];
	const uint64_t idx1[] = {0, 1, 2, 3}, idx2[] = {10, 11, 12};
	const size_t w1[] = {0, 1, 2, 3}, w2[] = {2, 3, 4};
	struct check_report r;
	struct report_log l;
	uint64_t freed = 99;
	void *raw;
	size_t rawlen, objs, others;
	int ret, fd;

	/* 0-3 in M1, 2-4 in M2 (2 and 3 shared), 5 unreferenced, plus a stale temp file */
	put_random(s, 6, data, ids);
	id_new("snap", m1);
	id_new("snap", m2);
	write_manifest_of(s, m1, 4, idx1, ids, w1);
	write_manifest_of(s, m2, 3, idx2, ids, w2);
	obj_path("gc", ids[0], path);
	strcpy(strrchr(path, '/'), "/.tmp.1.2");
	fd = openat(rootfd, path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	CHECK(fd >= 0, "stale temp");
	close(fd);

	ret = store_gc(s, &freed);
	count_files("gc", &objs, &others);
	CHECK(ret == 0 && freed == 1 && objs == 5 && others == 0,
	      "gc -> %d freed %llu, %zu objects %zu others", ret, (unsigned long long)freed, objs,
	      others);
	CHECK(!store_has(s, ids[5]), "unreferenced object kept");
	for (int i = 0; i < 5; i++)
		CHECK(store_get(s, ids[i], out, CHUNK) == 0 &&
			  !memcmp(out, data + (size_t)i * CHUNK, CHUNK),
		      "object %d lost", i);

	/* delete M1: only its own objects go */
	CHECK(manifest_remove(s, m1) == 0, "remove M1");
	ret = store_gc(s, &freed);
	CHECK(ret == 0 && freed == 2 && count_objects("gc") == 3, "gc -> %d freed %llu", ret,
	      (unsigned long long)freed);
	for (int i = 0; i < 2; i++)
		CHECK(store_get(s, ids[i], out, CHUNK) == -ENOENT, "object %d kept", i);
	for (int i = 2; i < 5; i++)
		CHECK(store_get(s, ids[i], out, CHUNK) == 0 &&
			  !memcmp(out, data + (size_t)i * CHUNK, CHUNK),
		      "M2's object %d lost", i);
	ret = run_check(s, &r, &l);
	CHECK(ret == 0 && r.objects_checked == 3 && !r.leaked_n && !r.missing_n && !r.corrupt_n &&
		  !r.bad_manifests_n,
	      "check after gc -> %d: %llu leaked", ret, (unsigned long long)r.leaked_n);
	ret = store_gc(s, &freed);
	CHECK(ret == 0 && freed == 0, "idle gc -> %d freed %llu", ret, (unsigned long long)freed);

	/* a damaged manifest: GC must not sweep anything */
	fill(data + 5 * CHUNK, CHUNK);
	CHECK(store_put(s, data + 5 * CHUNK, CHUNK, ids[5], NULL) == 0, "put garbage");
	int mfd = openat(rootfd, "gc/manifests", O_RDONLY | O_DIRECTORY);
	CHECK(file_read_all(mfd, m2, &raw, &rawlen) == 0, "read M2");
	((uint8_t *)raw)[rawlen / 2] ^= 1;
	CHECK(file_write_atomic(mfd, m1, raw, rawlen, 0600) == 0, "write damaged M1");
	free(raw);
	freed = 99;
	ret = store_gc(s, &freed);
	CHECK(ret == -EUCLEAN && freed == 0 && store_has(s, ids[5]) && count_objects("gc") == 4,
	      "gc with a damaged manifest -> %d freed %llu", ret, (unsigned long long)freed);
	ret = run_check(s, &r, &l);
	CHECK(ret == 0 && r.bad_manifests_n == 1 && l.bad == 1 && !strcmp(l.bad_snap, m1) &&
		  r.leaked_n == 1,
	      "check with a damaged manifest -> %d: bad=%llu", ret,
	      (unsigned long long)r.bad_manifests_n);
	/* a truncated one too */
	CHECK(file_write_atomic(mfd, m1, "EBSMANIF", 8, 0600) == 0, "write truncated M1");
	CHECK(store_gc(s, &freed) == -EUCLEAN && store_has(s, ids[5]), "gc with truncated");
	CHECK(manifest_remove(s, m1) == 0, "remove damaged");
	CHECK(store_gc(s, &freed) == 0 && freed == 1 && !store_has(s, ids[5]), "gc after fix");
	close(mfd);

	store_close(s);
	free(data);
	free(out);
}

static void test_copy(void)
{
	struct snap_store *src = open_store("cp-src"), *dst = open_store("cp-dst");
	uint8_t *data = malloc(5 * CHUNK), *out = malloc(CHUNK), ids[5][32], bad[32];
	bool copied;
	int ret, ncopied = 0;

	put_random(src, 5, data, ids);
	for (int i = 0; i < 2; i++)
		CHECK(store_put(dst, data + (size_t)i * CHUNK, CHUNK, ids[i], NULL) == 0, "put");
	for (int i = 0; i < 5; i++) {
		copied = !(i >= 2);
		ret = store_copy_object(src, dst, ids[i], CHUNK, &copied);
		CHECK(ret == 0 && copied == (i >= 2), "copy %d -> %d copied=%d", i, ret, copied);
		ncopied += copied;
		CHECK(store_get(dst, ids[i], out, CHUNK) == 0 &&
			  !memcmp(out, data + (size_t)i * CHUNK, CHUNK),
		      "copied object %d", i);
	}
	CHECK(ncopied == 3 && count_objects("cp-dst") == 5, "copied %d", ncopied);
	ret = store_copy_object(src, dst, ids[3], CHUNK, &copied);
	CHECK(ret == 0 && !copied, "second copy -> %d copied=%d", ret, copied);

	/* a corrupt source object is not copied; a missing one is -ENOENT */
	fill(data, CHUNK);
	CHECK(store_put(src, data, CHUNK, bad, NULL) == 0, "put");
	corrupt_object("cp-src", bad, 0);
	ret = store_copy_object(src, dst, bad, CHUNK, &copied);
	CHECK(ret == -EBADMSG && !copied && !store_has(dst, bad), "corrupt copy -> %d", ret);
	bad[5] ^= 1;
	ret = store_copy_object(src, dst, bad, CHUNK, &copied);
	CHECK(ret == -ENOENT && !copied, "missing copy -> %d", ret);
	CHECK(store_sync(dst) == 0, "sync dst");

	store_close(src);
	store_close(dst);
	free(data);
	free(out);
}

/* ---- concurrency and throughput ------------------------------------------------------ */

#define CONC_THREADS 4
#define CONC_SHARED 64
#define CONC_OWN 64

struct conc_arg {
	struct snap_store *s;
	int t;
	int fresh_shared; /* shared chunks this thread found absent */
	int errors;
};

static uint8_t shared_data[CONC_SHARED][4096];
static uint8_t shared_ids[CONC_SHARED][32];

static void *conc_thread(void *p)
{
	struct conc_arg *a = p;
	uint8_t buf[4096], id[32], out[4096];
	bool existed;

	for (int i = 0; i < CONC_SHARED + CONC_OWN; i++) {
		/* interleave: own chunk i, shared chunk in a per-thread order */
		if (i % 2 == 0 && i / 2 < CONC_OWN) {
			memset(buf, 0, sizeof(buf));
			snprintf((char *)buf, sizeof(buf), "thread %d chunk %d", a->t, i / 2);
			if (store_put(a->s, buf, sizeof(buf), id, &existed) || existed)
				a->errors++;
			if (store_get(a->s, id, out, sizeof(out)) || memcmp(buf, out, sizeof(out)))
				a->errors++;
		}
		int k = (i * 7 + a->t * 13) % CONC_SHARED;
		if (i < CONC_SHARED) {
			if (store_put(a->s, shared_data[k], 4096, id, &existed) ||
			    memcmp(id, shared_ids[k], 32))
				a->errors++;
			else if (!existed)
				a->fresh_shared++;
			if (store_get(a->s, id, out, sizeof(out)) ||
			    memcmp(shared_data[k], out, sizeof(out)))
				a->errors++;
		}
	}
	return NULL;
}

static void test_concurrent(void)
{
	struct snap_store *s = open_store("conc");
	struct conc_arg a[CONC_THREADS];
	pthread_t th[CONC_THREADS];
	size_t objs, others;
	int fresh = 0;

	for (int k = 0; k < CONC_SHARED; k++) {
		fill(shared_data[k], 4096);
		sha256(shared_data[k], 4096, shared_ids[k]);
	}
	for (int t = 0; t < CONC_THREADS; t++) {
		a[t] = (struct conc_arg){.s = s, .t = t};
		CHECK(pthread_create(&th[t], NULL, conc_thread, &a[t]) == 0, "pthread_create");
	}
	for (int t = 0; t < CONC_THREADS; t++) {
		pthread_join(th[t], NULL);
		CHECK(a[t].errors == 0, "thread %d: %d errors", t, a[t].errors);
		fresh += a[t].fresh_shared;
	}
	/* each shared chunk was new to at least one thread (racing writers may both be) */
	CHECK(fresh >= CONC_SHARED && fresh <= CONC_SHARED * CONC_THREADS, "fresh %d", fresh);
	count_files("conc", &objs, &others);
	CHECK(objs == CONC_SHARED + CONC_THREADS * CONC_OWN && others == 0,
	      "%zu objects, %zu other files", objs, others);
	store_close(s);
}

struct bench_arg {
	struct snap_store *s;
	uint8_t *buf; /* random, filled before the thread starts */
	uint64_t first, n;
	int errors;
};

static void *bench_thread(void *p)
{
	struct bench_arg *a = p;
	uint8_t *buf = a->buf, id[32];

	for (uint64_t i = a->first; i < a->first + a->n; i++) {
		memcpy(buf, &i, sizeof(i)); /* distinct content per chunk */
		if (store_put(a->s, buf, CHUNK, id, NULL))
			a->errors++;
	}
	return NULL;
}

/* CPU time (user + system) of the whole process, in ns */
static uint64_t cpu_ns(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

/* Informational: 2 threads put mb MiB of distinct 64 KiB chunks, then store_sync. Besides
 * wall-clock rates it prints the CPU time per object and the rate that CPU cost allows on
 * 2 otherwise idle cores, which stays meaningful on a shared, busy machine. */
static void bench(void)
{
	const char *env = getenv("EBSIM_STORE_BENCH_MB");
	uint64_t mb = env ? strtoull(env, NULL, 10) : SANITIZED ? 64 : 1024;
	uint64_t n = mb * (1 << 20) / CHUNK, t0, t1, t2, c0, c1;
	enum { NT = 2 };
	struct bench_arg a[NT];
	pthread_t th[NT];
	struct snap_store *s;
	int ret;

	if (!n)
		return;
	s = open_store("bench");
	for (int t = 0; t < NT; t++) {
		a[t] = (struct bench_arg){.s = s, .buf = malloc(CHUNK), .first = n * t / NT};
		a[t].n = n * (t + 1) / NT - a[t].first;
		fill(a[t].buf, CHUNK);
	}
	c0 = cpu_ns();
	t0 = time_mono_ns();
	for (int t = 0; t < NT; t++)
		pthread_create(&th[t], NULL, bench_thread, &a[t]);
	for (int t = 0; t < NT; t++) {
		pthread_join(th[t], NULL);
		CHECK(a[t].errors == 0, "bench thread %d: %d errors", t, a[t].errors);
		free(a[t].buf);
	}
	t1 = time_mono_ns();
	c1 = cpu_ns();
	ret = store_sync(s);
	t2 = time_mono_ns();
	CHECK(ret == 0, "store_sync -> %d", ret);
	fprintf(stderr,
		"throughput: put %llu x 64 KiB (%llu MiB) from %d threads in %.3f s = %.2f GB/s "
		"(incl. SHA-256); store_sync %.3f s; overall %.2f GB/s%s\n",
		(unsigned long long)n, (unsigned long long)mb, NT, (t1 - t0) / 1e9,
		n * (double)CHUNK / (t1 - t0), (t2 - t1) / 1e9, n * (double)CHUNK / (t2 - t0),
		SANITIZED ? " [sanitizer build]" : "");
	fprintf(stderr,
		"throughput: put CPU %.1f us/object (user+sys, incl. SHA-256) -> %.2f GB/s on %d "
		"idle cores\n",
		(c1 - c0) / 1e3 / n, n * (double)CHUNK * NT / (c1 - c0), NT);
	store_close(s);
	file_remove_tree(rootfd, "bench");
}

int main(void)
{
	const char *tmpdir = getenv("TMPDIR");
	char dir[512];

	log_set_level(LOG_ERR);
	snprintf(dir, sizeof(dir), "%s/ebsim-test-store-XXXXXX", tmpdir ? tmpdir : "/tmp");
	if (!mkdtemp(dir)) {
		fprintf(stderr, "SKIP: mkdtemp %s: %s\n", dir, strerror(errno));
		return 77;
	}
	rootfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (rootfd < 0) {
		fprintf(stderr, "SKIP: open %s: %s\n", dir, strerror(errno));
		return 77;
	}

	test_ids();
	test_put_get();
	test_manifest();
	test_check();
	test_gc();
	test_packs();
	test_copy();
	test_concurrent();
	if (!failures)
		bench();

	close(rootfd);
	char *slash = strrchr(dir, '/');
	*slash = '\0';
	int parent = open(dir, O_RDONLY | O_DIRECTORY);
	if (parent >= 0) {
		file_remove_tree(parent, slash + 1);
		close(parent);
	}
	if (failures) {
		fprintf(stderr, "%d failures\n", failures);
		return 1;
	}
	fprintf(stderr, "test_store: all passed\n");
	return 0;
}
