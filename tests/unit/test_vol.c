/* SPDX-License-Identifier: MIT */
/*
 * test_vol.c - the volume engine over every I/O engine: read-after-write at odd offsets,
 * discard, range checks, encryption (round trip, no plaintext in the data file, wrong
 * key), concurrent unaligned writes, resize, and crash recovery (a child that flushes and
 * dies without closing). Every check compares bytes against an in-memory model.
 * Exit: 0 pass, 1 fail, 77 skip.
 */
#include "blockdev/blockdev.h"
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIZE (8u << 20)
#define CHUNK (64u << 10)

static int failures;
static const char *cur_engine;

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "FAIL [%s] %s:%d: %s: ", cur_engine, __FILE__,   \
				__LINE__, #cond);                                          \
			fprintf(stderr, __VA_ARGS__);                                      \
			fputc('\n', stderr);                                               \
			failures++;                                                        \
		}                                                                          \
	} while (0)

static uint8_t master[VOL_MASTER_KEY_LEN], other_master[VOL_MASTER_KEY_LEN];
static uint8_t model[SIZE];
static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fill(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rnd();
}

static void model_write(struct vol *v, uint64_t off, size_t len)
{
	uint8_t *buf = malloc(len);

	fill(buf, len);
	memcpy(model + off, buf, len);
	CHECK(vol_pwrite(v, buf, len, off) == (int)len, "write %zu@%llu", len,
	      (unsigned long long)off);
	free(buf);
}

static void model_check(struct vol *v, const char *what)
{
	uint8_t *buf = malloc(SIZE);
	int r = vol_pread(v, buf, SIZE, 0);

	CHECK(r == (int)SIZE, "%s: read all -> %d", what, r);
	if (memcmp(buf, model, SIZE)) {
		size_t i = 0;
		while (buf[i] == model[i])
			i++;
		CHECK(0, "%s: content differs at byte %zu", what, i);
	}
	free(buf);
}

struct sync_op {
	atomic_int done;
	int res;
};

static void sync_cb(void *arg, int res)
{
	struct sync_op *o = arg;

	o->res = res;
	atomic_store(&o->done, 1);
}

static int discard_sync(struct vol *v, uint64_t off, uint64_t len)
{
	struct sync_op o = {.res = -1};

	vol_discard(v, off, len, sync_cb, &o);
	while (!atomic_load(&o.done))
		usleep(100);
	return o.res;
}

static int tmpdir_fd(char *path)
{
	strcpy(path, "/tmp/test_vol.XXXXXX");
	if (!mkdtemp(path))
		return -1;
	return open(path, O_RDONLY | O_DIRECTORY);
}

static void basic_rw(int dfd, struct blk_engine *eng, enum vol_crypt crypt)
{
	struct vol_params p = {.size = SIZE, .chunk_size = CHUNK, .crypt = crypt};
	struct vol_keys keys = {.master = master};
	struct vol *v;
	const char *name = crypt ? "enc" : "plain";

	memset(model, 0, SIZE);
	CHECK(vol_create(dfd, name, &p, &keys) == 0, "create");
	CHECK(vol_create(dfd, name, &p, &keys) == -EEXIST, "create twice");
	CHECK(vol_open(dfd, name, eng, &keys, NULL, &v) == 0, "open");
	CHECK(vol_size(v) == SIZE, "size");
	model_check(v, "fresh volume reads zeros");

	/* odd offsets and lengths, within and across chunks */
	static const struct {
		uint64_t off;
		size_t len;
	} cases[] = {{1, 4097},	      {12345, 70001},	    {CHUNK - 3, 7},
		     {3 * CHUNK, CHUNK}, {SIZE - 5, 5},	    {0, 1},
		     {5 * CHUNK + 512, 3 * CHUNK}, {100 * 4096, 4096}, {SIZE - CHUNK * 2 - 1, 1}};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		model_write(v, cases[i].off, cases[i].len);
	model_check(v, "after odd writes");
	/* small reads at odd offsets */
	for (int i = 0; i < 200; i++) {
		uint64_t off = rnd() % (SIZE - 1);
		size_t len = 1 + rnd() % MIN(SIZE - off, 100000);
		uint8_t *buf = malloc(len);
		CHECK(vol_pread(v, buf, len, off) == (int)len, "pread");
		CHECK(!memcmp(buf, model + off, len), "odd read %zu@%llu", len,
		      (unsigned long long)off);
		free(buf);
	}
	/* discard: whole chunks, partial chunks, unaligned */
	CHECK(vol_fsync(v) == 0, "fsync");
	{
		struct {
			uint64_t off, len;
		} d[] = {{3 * CHUNK, CHUNK}, {1, 4000}, {5 * CHUNK + 100, 2 * CHUNK + 77}};
		for (size_t i = 0; i < ARRAY_SIZE(d); i++) {
			int res = discard_sync(v, d[i].off, d[i].len);
			CHECK(res == 0, "discard -> %d", res);
			memset(model + d[i].off, 0, d[i].len);
		}
	}
	model_check(v, "after discard");
	/* out of range */
	uint8_t b[16];
	CHECK(vol_pread(v, b, 16, SIZE - 8) == -EINVAL, "read past end");
	CHECK(vol_pwrite(v, b, 16, SIZE - 8) == -EINVAL, "write past end");
	CHECK(vol_pread(v, b, 1, SIZE) == -EINVAL, "read at end");
	CHECK(vol_pread(v, b, 0, 5) == 0, "zero-length read");
	CHECK(vol_fsync(v) == 0, "fsync");
	CHECK(vol_close(v) == 0, "close");

	/* reopen: everything persisted */
	CHECK(vol_open(dfd, name, eng, &keys, NULL, &v) == 0, "reopen");
	model_check(v, "after reopen");

	/* resize: grow, new area reads zeros, writable; shrink refused */
	CHECK(vol_resize(v, SIZE / 2) == -EINVAL, "shrink refused");
	CHECK(vol_resize(v, SIZE + CHUNK * 3) == 0, "grow");
	CHECK(vol_size(v) == SIZE + CHUNK * 3, "grown size");
	{
		uint8_t *z = malloc(CHUNK * 3), *w = malloc(CHUNK);
		CHECK(vol_pread(v, z, CHUNK * 3, SIZE) == (int)(CHUNK * 3), "read grown");
		size_t nz = 0;
		for (size_t i = 0; i < CHUNK * 3; i++)
			nz += z[i] != 0;
		CHECK(nz == 0, "grown area reads zeros (%zu non-zero)", nz);
		fill(w, CHUNK);
		CHECK(vol_pwrite(v, w, CHUNK, SIZE + CHUNK * 2) == (int)CHUNK, "write grown");
		CHECK(vol_pread(v, z, CHUNK, SIZE + CHUNK * 2) == (int)CHUNK, "read grown");
		CHECK(!memcmp(z, w, CHUNK), "grown area round trip");
		CHECK(vol_close(v) == 0, "close");
		CHECK(vol_open(dfd, name, eng, &keys, NULL, &v) == 0, "reopen grown");
		CHECK(vol_size(v) == SIZE + CHUNK * 3, "size persisted");
		CHECK(vol_pread(v, z, CHUNK, SIZE + CHUNK * 2) == (int)CHUNK, "read grown");
		CHECK(!memcmp(z, w, CHUNK), "grown area persisted");
		free(z);
		free(w);
	}
	CHECK(vol_close(v) == 0, "close");
}

/* The data file of an encrypted volume must never hold the plaintext. */
static void encryption(int dfd, struct blk_engine *eng)
{
	struct vol_params p = {.size = SIZE, .chunk_size = CHUNK, .crypt = VOL_CRYPT_WRAPPED};
	struct vol_keys keys = {.master = master}, bad = {.master = other_master};
	uint8_t pattern[4096];
	struct vol *v;
	int fd;

	CHECK(vol_create(dfd, "enc2", &p, &keys) == 0, "create");
	CHECK(vol_open(dfd, "enc2", eng, &keys, NULL, &v) == 0, "open");
	memset(pattern, 0, sizeof(pattern));
	memcpy(pattern, "EBSIM-CANARY-PLAINTEXT-", 23);
	for (int i = 0; i < 32; i++)
		CHECK(vol_pwrite(v, pattern, sizeof(pattern), (uint64_t)i * 65536 + 4096) == 4096,
		      "write");
	CHECK(vol_pwrite(v, pattern, 100, 3) == 100, "unaligned write");
	CHECK(vol_close(v) == 0, "close");
	fd = openat(dfd, "enc2/data", O_RDONLY);
	CHECK(fd >= 0, "open data");
	{
		uint8_t *buf = malloc(SIZE);
		ssize_t n = pread(fd, buf, SIZE, 0);
		CHECK(n == SIZE, "read data");
		CHECK(!memmem(buf, SIZE, "EBSIM-CANARY-PLAINTEXT", 22), "plaintext in data file");
		free(buf);
	}
	close(fd);
	CHECK(vol_open(dfd, "enc2", eng, &bad, NULL, &v) == -EKEYREJECTED, "wrong master key");
	CHECK(vol_open(dfd, "enc2", eng, NULL, NULL, &v) == -ENOKEY, "no key");
	CHECK(vol_open(dfd, "enc2", eng, &keys, NULL, &v) == 0, "reopen");
	uint8_t back[4096];
	CHECK(vol_pread(v, back, 4096, 31 * 65536 + 4096) == 4096, "read");
	CHECK(!memcmp(back, pattern, 4096), "decrypts");
	CHECK(vol_pread(v, back, 100, 3) == 100, "read unaligned");
	CHECK(!memcmp(back, pattern, 100), "decrypts unaligned");
	CHECK(vol_close(v) == 0, "close");

	/* ephemeral keys are never stored: no key, no volume */
	uint8_t ek[VOL_DATA_KEY_LEN];
	fill(ek, sizeof(ek));
	struct vol_params pe = {.size = SIZE, .chunk_size = CHUNK, .crypt = VOL_CRYPT_EPHEMERAL};
	struct vol_keys ekeys = {.ephemeral = ek};
	CHECK(vol_create(dfd, "eph", &pe, &ekeys) == 0, "create ephemeral");
	CHECK(vol_open(dfd, "eph", eng, &keys, NULL, &v) == -ENOKEY, "ephemeral needs its key");
	CHECK(vol_open(dfd, "eph", eng, &ekeys, NULL, &v) == 0, "open ephemeral");
	CHECK(vol_pwrite(v, pattern, 4096, 0) == 4096, "write");
	CHECK(vol_pread(v, back, 4096, 0) == 4096 && !memcmp(back, pattern, 4096), "round trip");
	CHECK(vol_close(v) == 0, "close");
}

/* Many concurrent non-overlapping unaligned writes sharing chunks and sectors. */
struct cw {
	atomic_int left;
	atomic_int errors;
};

static void cw_done(void *arg, int res)
{
	struct cw *c = arg;

	if (res < 0)
		atomic_fetch_add(&c->errors, 1);
	atomic_fetch_sub(&c->left, 1);
}

static void concurrent(int dfd, struct blk_engine *eng, enum vol_crypt crypt, const char *name)
{
	struct vol_params p = {.size = SIZE, .chunk_size = CHUNK, .crypt = crypt};
	struct vol_keys keys = {.master = master};
	struct cw c;
	struct vol *v;
	enum { N = 512, PIECE = 1000 };
	uint8_t *bufs[N];

	memset(model, 0, SIZE);
	CHECK(vol_create(dfd, name, &p, &keys) == 0, "create");
	CHECK(vol_open(dfd, name, eng, &keys, NULL, &v) == 0, "open");
	atomic_init(&c.left, N);
	atomic_init(&c.errors, 0);
	/* piece i covers [i*PIECE + 7, (i+1)*PIECE + 7): adjacent pieces share sectors */
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * PIECE + 7;
		bufs[i] = malloc(PIECE);
		fill(bufs[i], PIECE);
		memcpy(model + off, bufs[i], PIECE);
	}
	for (int i = 0; i < N; i++) {
		int k = (i * 7) % N; /* scrambled submission order */
		vol_write(v, bufs[k], PIECE, (uint64_t)k * PIECE + 7, cw_done, &c);
	}
	while (atomic_load(&c.left))
		usleep(200);
	CHECK(atomic_load(&c.errors) == 0, "write errors");
	for (int i = 0; i < N; i++)
		free(bufs[i]);
	model_check(v, "after concurrent unaligned writes");
	CHECK(vol_close(v) == 0, "close");
	CHECK(vol_open(dfd, name, eng, &keys, NULL, &v) == 0, "reopen");
	model_check(v, "concurrent writes persisted");
	CHECK(vol_close(v) == 0, "close");
}

/* A child writes, flushes, writes more, and dies without closing. */
static void crash(int dfd, struct blk_engine *eng, const char *engine, enum vol_crypt crypt,
		  const char *name)
{
	struct vol_params p = {.size = SIZE, .chunk_size = CHUNK, .crypt = crypt};
	struct vol_keys keys = {.master = master};
	uint8_t flushed[3 * CHUNK];
	struct vol *v;
	pid_t pid;
	int st;

	fill(flushed, sizeof(flushed));
	CHECK(vol_create(dfd, name, &p, &keys) == 0, "create");
	pid = fork();
	if (pid == 0) {
		struct blk_engine *e2;
		if (blk_engine_open(engine, 64, &e2) || vol_open(dfd, name, e2, &keys, NULL, &v))
			_exit(2);
		if (vol_pwrite(v, flushed, sizeof(flushed), CHUNK + 5) != (int)sizeof(flushed))
			_exit(3);
		if (vol_fsync(v))
			_exit(4);
		uint8_t junk[CHUNK];
		memset(junk, 0xAB, sizeof(junk));
		vol_pwrite(v, junk, sizeof(junk), 6 * CHUNK); /* never flushed */
		_exit(0);
	}
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
	CHECK(vol_open(dfd, name, eng, &keys, NULL, &v) == 0, "reopen after crash");
	uint8_t back[sizeof(flushed)];
	CHECK(vol_pread(v, back, sizeof(back), CHUNK + 5) == (int)sizeof(back), "read");
	CHECK(!memcmp(back, flushed, sizeof(back)), "flushed data survived the crash");
	CHECK(vol_close(v) == 0, "close");
}

int main(void)
{
	int tested = 0;

	fill(master, sizeof(master));
	fill(other_master, sizeof(other_master));
	for (const char *const *n = blk_engine_names; *n; n++) {
		struct blk_engine *eng;
		char path[64];
		int dfd, ret;

		cur_engine = *n;
		ret = blk_engine_open(*n, 64, &eng);
		if (ret == -ENOSYS || ret == -EPERM) {
			fprintf(stderr, "SKIP engine %s: %s\n", *n, strerror(-ret));
			continue;
		}
		CHECK(ret == 0, "engine open %d", ret);
		if (ret)
			continue;
		dfd = tmpdir_fd(path);
		CHECK(dfd >= 0, "tmpdir");
		basic_rw(dfd, eng, VOL_CRYPT_NONE);
		basic_rw(dfd, eng, VOL_CRYPT_WRAPPED);
		encryption(dfd, eng);
		concurrent(dfd, eng, VOL_CRYPT_NONE, "conc-plain");
		concurrent(dfd, eng, VOL_CRYPT_WRAPPED, "conc-enc");
		crash(dfd, eng, *n, VOL_CRYPT_NONE, "crash-plain");
		crash(dfd, eng, *n, VOL_CRYPT_WRAPPED, "crash-enc");
		blk_engine_close(eng);
		file_remove_tree(AT_FDCWD, path);
		close(dfd);
		fprintf(stderr, "engine %s: %s\n", *n, failures ? "FAILURES" : "ok");
		tested++;
	}
	if (!tested)
		return 77;
	return failures ? 1 : 0;
}
