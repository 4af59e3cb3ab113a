/* SPDX-License-Identifier: MIT */
/* test_engine.c - unit test of the I/O engines: every check runs over every engine. */
/*
 * Design notes
 * ------------
 * One program, exit 0 pass / 1 fail / 77 skip (all engines unavailable). An engine is skipped
 * only when its open() returns -ENOSYS or -EPERM (io_uring disabled by sysctl or seccomp), or,
 * for io_uring, under valgrind, which does not know that io_uring_enter blocks and so holds its
 * global lock while the reaper waits (liburing issue #657): every other thread would hang.
 * Every check asserts outcomes: bytes are compared against what was written (engine reads are
 * compared with a position-dependent pattern, engine writes are checked with a plain pread),
 * results are exact, done runs exactly once per request and never on the submitting thread.
 * The file is created under /tmp (mkstemp) and unlinked at once, so even a killed run leaves
 * nothing behind; an alarm turns a hang into a failure.
 */
#include "blockdev/blk_engine.h"
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif

#define DEPTH 8
#define WAIT_SECS 60
#define NTHREADS 4

static int tfd = -1;
static char tpath_proc[64];   /* the file is unlinked at once; reopened through /proc */
static const char *cur = "-"; /* engine under test, for messages */

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "FAIL [%s] %s:%d: %s: ", cur, __func__, __LINE__, #cond);  \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			return -1;                                                                 \
		}                                                                                  \
	} while (0)

/* --- waiting for completions ---------------------------------------------------------- */

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned pending;
	unsigned extra; /* done calls beyond the expected number */
};

static void waiter_init(struct waiter *w, unsigned n)
{
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	w->pending = n;
	w->extra = 0;
}

static void waiter_destroy(struct waiter *w)
{
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
}

static void waiter_done(struct waiter *w)
{
	pthread_mutex_lock(&w->lock);
	if (w->pending)
		w->pending--;
	else
		w->extra++;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

/* Wait for all expected completions; a timeout is fatal (requests still point at us). */
static void waiter_wait(struct waiter *w)
{
	struct timespec deadline;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += WAIT_SECS;
	pthread_mutex_lock(&w->lock);
	while (w->pending) {
		if (pthread_cond_timedwait(&w->cond, &w->lock, &deadline) == ETIMEDOUT) {
			fprintf(stderr, "FAIL [%s] %u requests never completed\n", cur, w->pending);
			exit(1);
		}
	}
	pthread_mutex_unlock(&w->lock);
}

/* --- requests ------------------------------------------------------------------------- */

struct treq {
	struct blk_req req;
	struct waiter *w;
	int res;
	int calls;
	pthread_t thread; /* where done ran */
};

static void treq_done(struct blk_req *req, int res)
{
	struct treq *t = req->priv;

	t->res = res;
	t->calls++;
	t->thread = pthread_self();
	waiter_done(t->w); /* last: the waiter may free t once this returns */
}

static void treq_init(struct treq *t, struct waiter *w, enum blk_op op, int fd, void *buf,
		      size_t len, uint64_t off, int mode)
{
	memset(t, 0, sizeof(*t));
	t->req.op = op;
	t->req.fd = fd;
	t->req.buf = buf;
	t->req.len = len;
	t->req.off = off;
	t->req.mode = mode;
	t->req.done = treq_done;
	t->req.priv = t;
	t->req.progress = 12345; /* garbage: the engine must reset it */
	t->w = w;
	t->res = INT_MIN;
}

/* Submit n prepared requests (their waiter must expect n), wait, check done ran once each
 * on an engine thread. */
static int run(struct blk_engine *e, struct treq *t, unsigned n, struct waiter *w)
{
	unsigned i;
	int ret;

	for (i = 0; i < n; i++) {
		ret = blk_submit(e, &t[i].req);
		CHECK(ret == 0, "submit %u: %d", i, ret);
	}
	waiter_wait(w);
	CHECK(w->extra == 0, "%u extra done calls", w->extra);
	for (i = 0; i < n; i++) {
		CHECK(t[i].calls == 1, "request %u: done ran %d times", i, t[i].calls);
		CHECK(!pthread_equal(t[i].thread, pthread_self()),
		      "request %u: done ran on the submitting thread", i);
	}
	return 0;
}

/* One request, synchronously; returns its result through *res. */
static int io1(struct blk_engine *e, enum blk_op op, int fd, void *buf, size_t len, uint64_t off,
	       int mode, int *res)
{
	struct waiter w;
	struct treq t;
	int ret;

	waiter_init(&w, 1);
	treq_init(&t, &w, op, fd, buf, len, off, mode);
	ret = run(e, &t, 1, &w);
	waiter_destroy(&w);
	*res = t.res;
	return ret;
}

/* --- data helpers --------------------------------------------------------------------- */

/* The byte expected at file position pos for a given seed (a 64-bit mix of both). */
static uint8_t pat(uint64_t pos, unsigned seed)
{
	uint64_t x = (pos + 1) * 0x9e3779b97f4a7c15ull ^ (seed + 1) * 0xc2b2ae3d27d4eb4full;

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ull;
	return (uint8_t)(x >> 56);
}

static void fill(uint8_t *buf, size_t len, uint64_t off, unsigned seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		buf[i] = pat(off + i, seed);
}

/* Index of the first byte of buf that differs from the pattern, or -1. */
static long mismatch(const uint8_t *buf, size_t len, uint64_t off, unsigned seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (buf[i] != pat(off + i, seed))
			return (long)i;
	return -1;
}

static long nonzero(const uint8_t *buf, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (buf[i])
			return (long)i;
	return -1;
}

static void *xmalloc(size_t len)
{
	void *p = malloc(len ? len : 1);

	if (!p) {
		perror("malloc");
		exit(1);
	}
	return p;
}

static int reset_file(void)
{
	CHECK(ftruncate(tfd, 0) == 0, "ftruncate: %m");
	return 0;
}

/* Read len bytes at off with plain pread, to check what an engine wrote. */
static int file_check(uint64_t off, size_t len, unsigned seed)
{
	uint8_t *buf = xmalloc(len);
	ssize_t n = pread(tfd, buf, len, (off_t)off);
	long bad = n == (ssize_t)len ? mismatch(buf, len, off, seed) : -2;

	free(buf);
	CHECK(bad == -1, "file at %llu+%zu: pread %zd, first bad byte %ld", (unsigned long long)off,
	      len, n, bad);
	return 0;
}

static int file_write(uint64_t off, size_t len, unsigned seed)
{
	uint8_t *buf = xmalloc(len);
	ssize_t n;

	fill(buf, len, off, seed);
	n = pwrite(tfd, buf, len, (off_t)off);
	free(buf);
	CHECK(n == (ssize_t)len, "pwrite %zd: %m", n);
	return 0;
}

/* --- checks that need no engine ------------------------------------------------------- */

static int check_names(void)
{
	static struct blk_engine dummy;
	struct blk_engine *e = &dummy; /* open must clear it on failure */
	unsigned i;
	int ret;

	CHECK(blk_engine_names[0] && !strcmp(blk_engine_names[0], "io_uring"), "default");
	CHECK(blk_engine_names[1] && !strcmp(blk_engine_names[1], "libaio"), "second");
	CHECK(blk_engine_names[2] && !strcmp(blk_engine_names[2], "psync"), "third");
	CHECK(!blk_engine_names[3], "NULL terminated");
	ret = blk_engine_open("nope", DEPTH, &e);
	CHECK(ret == -ENOENT, "unknown name: %d", ret);
	CHECK(e == NULL, "*out cleared");
	ret = blk_engine_open("", DEPTH, &e);
	CHECK(ret == -ENOENT, "empty name: %d", ret);
	ret = blk_engine_open("IO_URING", DEPTH, &e);
	CHECK(ret == -ENOENT, "names are case-sensitive: %d", ret);
	ret = blk_engine_open(NULL, DEPTH, &e);
	CHECK(ret == -EINVAL, "NULL name: %d", ret);
	for (i = 0; blk_engine_names[i]; i++) {
		ret = blk_engine_open(blk_engine_names[i], 0, &e);
		CHECK(ret == -EINVAL || ret == -ENOSYS || ret == -EPERM, "%s depth 0: %d",
		      blk_engine_names[i], ret);
	}
	return 0;
}

static int check_account(void)
{
	uint8_t buf[100];
	struct blk_req r = {.op = BLK_READ, .buf = buf, .len = 100, .off = 1000};
	int res = INT_MIN;

	/* short read continues, then completes */
	CHECK(blk_req_account(&r, 40, &res) == 1 && r.progress == 40, "short read 40");
	CHECK(blk_req_account(&r, -EAGAIN, &res) == 1 && r.progress == 40, "EAGAIN keeps progress");
	CHECK(blk_req_account(&r, -EINTR, &res) == 1 && r.progress == 40, "EINTR keeps progress");
	CHECK(blk_req_account(&r, 60, &res) == 0 && res == 100, "rest of read: %d", res);

	/* short read, then end of file: the rest is zero-filled, result is len */
	memset(buf, 0xaa, sizeof(buf));
	r.progress = 0;
	res = INT_MIN;
	CHECK(blk_req_account(&r, 30, &res) == 1 && r.progress == 30, "short read 30");
	CHECK(blk_req_account(&r, 0, &res) == 0 && res == 100, "EOF: %d", res);
	CHECK(buf[29] == 0xaa && nonzero(buf + 30, 70) == -1, "EOF zero-fill");

	/* a read entirely past EOF */
	memset(buf, 0xaa, sizeof(buf));
	r.progress = 0;
	CHECK(blk_req_account(&r, 0, &res) == 0 && res == 100 && nonzero(buf, 100) == -1,
	      "read past EOF");

	/* errors, and more than asked */
	r.progress = 0;
	CHECK(blk_req_account(&r, -EIO, &res) == 0 && res == -EIO, "EIO");
	CHECK(blk_req_account(&r, 101, &res) == 0 && res == -EIO, "overlong read: %d", res);
	r.len = 0;
	CHECK(blk_req_account(&r, 0, &res) == 0 && res == 0, "empty read: %d", res);

	/* writes: full is len, short is -ENOSPC, EAGAIN/EINTR resubmit */
	r = (struct blk_req){.op = BLK_WRITE, .buf = buf, .len = 100};
	CHECK(blk_req_account(&r, 100, &res) == 0 && res == 100, "full write: %d", res);
	CHECK(blk_req_account(&r, 50, &res) == 0 && res == -ENOSPC, "short write: %d", res);
	CHECK(blk_req_account(&r, 0, &res) == 0 && res == -ENOSPC, "zero write: %d", res);
	CHECK(blk_req_account(&r, -EAGAIN, &res) == 1, "write EAGAIN");
	CHECK(blk_req_account(&r, -EINTR, &res) == 1, "write EINTR");
	CHECK(blk_req_account(&r, -EBADF, &res) == 0 && res == -EBADF, "write EBADF");

	/* fsync and fallocate: 0, -errno, or again */
	r = (struct blk_req){.op = BLK_FSYNC};
	CHECK(blk_req_account(&r, 0, &res) == 0 && res == 0, "fsync 0");
	CHECK(blk_req_account(&r, -EINTR, &res) == 1, "fsync EINTR");
	CHECK(blk_req_account(&r, -EAGAIN, &res) == 1, "fsync EAGAIN");
	CHECK(blk_req_account(&r, -EIO, &res) == 0 && res == -EIO, "fsync EIO");
	r = (struct blk_req){.op = BLK_FALLOC, .len = 4096};
	CHECK(blk_req_account(&r, 0, &res) == 0 && res == 0, "falloc 0");
	CHECK(blk_req_account(&r, -EOPNOTSUPP, &res) == 0 && res == -EOPNOTSUPP,
	      "falloc EOPNOTSUPP");
	CHECK(blk_req_account(&r, -EAGAIN, &res) == 1, "falloc EAGAIN");
	return 0;
}

/* blk_req_exec_sync: a read straddling EOF is a real short read followed by a 0 return. */
static int check_exec_sync(void)
{
	uint8_t buf[8192];
	struct blk_req r = {.op = BLK_READ, .fd = tfd, .buf = buf, .len = sizeof(buf), .off = 6000};
	int res;

	if (reset_file() || file_write(0, 10000, 7))
		return -1;
	memset(buf, 0xaa, sizeof(buf));
	res = blk_req_exec_sync(&r);
	CHECK(res == (int)sizeof(buf), "read across EOF: %d", res);
	CHECK(mismatch(buf, 4000, 6000, 7) == -1, "data before EOF");
	CHECK(nonzero(buf + 4000, sizeof(buf) - 4000) == -1, "zeros after EOF");
	r = (struct blk_req){.op = BLK_WRITE, .fd = -1, .buf = buf, .len = 10};
	CHECK(blk_req_exec_sync(&r) == -EBADF, "bad fd");
	r = (struct blk_req){.op = BLK_READ, .fd = tfd, .buf = buf, .len = (size_t)INT_MAX + 1};
	CHECK(blk_req_exec_sync(&r) == -EINVAL, "too long");
	r = (struct blk_req){.op = BLK_FSYNC, .fd = tfd};
	CHECK(blk_req_exec_sync(&r) == 0, "fsync");
	return 0;
}

/* --- engine checks -------------------------------------------------------------------- */

/* Write len bytes at off through the engine, check the file, read them back and compare. */
static int rw_case(struct blk_engine *e, uint64_t off, size_t len, unsigned seed)
{
	uint8_t *wbuf = xmalloc(len), *rbuf = xmalloc(len);
	int res, ret = -1;
	long bad;

	fill(wbuf, len, off, seed);
	if (io1(e, BLK_WRITE, tfd, wbuf, len, off, 0, &res))
		goto out_free;
	if (res != (int)len) {
		fprintf(stderr, "FAIL [%s] write %llu+%zu: %d\n", cur, (unsigned long long)off, len,
			res);
		goto out_free;
	}
	if (file_check(off, len, seed))
		goto out_free;
	memset(rbuf, 0xaa, len);
	if (io1(e, BLK_READ, tfd, rbuf, len, off, 0, &res))
		goto out_free;
	bad = mismatch(rbuf, len, off, seed);
	if (res != (int)len || bad != -1) {
		fprintf(stderr, "FAIL [%s] read %llu+%zu: %d, first bad byte %ld\n", cur,
			(unsigned long long)off, len, res, bad);
		goto out_free;
	}
	ret = 0;
out_free:
	free(rbuf);
	free(wbuf);
	return ret;
}

/* Writes then reads at odd offsets and lengths (disjoint ranges, two of them adjacent). */
static int check_rw_odd(struct blk_engine *e)
{
	static const struct {
		uint64_t off;
		size_t len;
	} cases[] = {
	    {1, 4097}, {12345, 70001}, {4098, 4096}, {100003, 3}, {196609, 131071}, {1 << 20, 1},
	};
	unsigned i;

	if (reset_file())
		return -1;
	for (i = 0; i < ARRAY_SIZE(cases); i++)
		if (rw_case(e, cases[i].off, cases[i].len, i))
			return -1;
	/* all of them are still there, none clobbered a neighbour */
	for (i = 0; i < ARRAY_SIZE(cases); i++)
		if (file_check(cases[i].off, cases[i].len, i))
			return -1;
	return 0;
}

/* Reads that reach end of file: the part past EOF is zero-filled and the result is len. */
static int check_eof(struct blk_engine *e)
{
	size_t len = 70001;
	uint8_t *buf = xmalloc(len);
	int res, ret = -1;

	if (reset_file() || file_write(0, 10000, 3))
		goto out_free;

	memset(buf, 0xaa, len);
	if (io1(e, BLK_READ, tfd, buf, 4096, 9000, 0, &res))
		goto out_free;
	CHECK(res == 4096, "straddling read: %d", res);
	CHECK(mismatch(buf, 1000, 9000, 3) == -1, "data before EOF");
	CHECK(nonzero(buf + 1000, 3096) == -1, "zeros after EOF");
	CHECK(buf[4096] == 0xaa, "nothing written beyond len");

	memset(buf, 0xaa, len);
	if (io1(e, BLK_READ, tfd, buf, len, 5001, 0, &res))
		goto out_free;
	CHECK(res == (int)len, "long straddling read: %d", res);
	CHECK(mismatch(buf, 4999, 5001, 3) == -1, "data before EOF");
	CHECK(nonzero(buf + 4999, len - 4999) == -1, "zeros after EOF");

	memset(buf, 0xaa, len);
	if (io1(e, BLK_READ, tfd, buf, 512, 20000, 0, &res))
		goto out_free;
	CHECK(res == 512 && nonzero(buf, 512) == -1, "read past EOF: %d", res);

	memset(buf, 0xaa, len);
	if (io1(e, BLK_READ, tfd, buf, 10000, 0, 0, &res))
		goto out_free;
	CHECK(res == 10000 && mismatch(buf, 10000, 0, 3) == -1, "read up to EOF: %d", res);
	ret = 0;
out_free:
	free(buf);
	return ret;
}

static int check_fsync(struct blk_engine *e)
{
	uint8_t buf[4096];
	int res;

	fill(buf, sizeof(buf), 0, 1);
	if (io1(e, BLK_WRITE, tfd, buf, sizeof(buf), 0, 0, &res))
		return -1;
	CHECK(res == (int)sizeof(buf), "write: %d", res);
	if (io1(e, BLK_FSYNC, tfd, NULL, 0, 0, 0, &res))
		return -1;
	CHECK(res == 0, "fsync: %d", res);
	/* buf, len and off are ignored for FSYNC */
	if (io1(e, BLK_FSYNC, tfd, buf, 12345, 777, 0, &res))
		return -1;
	CHECK(res == 0, "fsync with junk fields: %d", res);
	return 0;
}

/* Punch or zero a hole inside a written range; the hole reads as zeros, the rest survives. */
static int check_falloc_mode(struct blk_engine *e, int mode, const char *what)
{
	const uint64_t base = 65536, hole = base + 4096;
	const size_t len = 65536, hole_len = 8192;
	uint8_t *buf = xmalloc(len);
	struct stat st;
	int res, ret = -1, expect = 0;
	long bad;

	if (reset_file() || file_write(base, len, 9))
		goto out_free;
	/* what the file system says, to compare with (ext4 and xfs do both, tmpfs only
	 * punches) */
	if (fallocate(tfd, mode, (off_t)base + len - 4096, 4096))
		expect = -errno;
	if (file_write(base, len, 9))
		goto out_free;

	if (io1(e, BLK_FALLOC, tfd, NULL, hole_len, hole, mode, &res))
		goto out_free;
	CHECK(res == expect, "%s: %d, fallocate(2) gave %d", what, res, expect);
	if (expect) {
		printf("  [%s] %s not supported by /tmp (%d): result matches fallocate(2)\n", cur,
		       what, expect);
		ret = 0;
		goto out_free;
	}
	CHECK(fstat(tfd, &st) == 0 && st.st_size == (off_t)(base + len), "size kept: %lld",
	      (long long)st.st_size);
	memset(buf, 0xaa, len);
	if (io1(e, BLK_READ, tfd, buf, len, base, 0, &res))
		goto out_free;
	CHECK(res == (int)len, "read: %d", res);
	bad = mismatch(buf, hole - base, base, 9);
	CHECK(bad == -1, "%s: data before the hole, byte %ld", what, bad);
	bad = nonzero(buf + (hole - base), hole_len);
	CHECK(bad == -1, "%s: hole not zero at byte %ld", what, bad);
	bad = mismatch(buf + (hole - base) + hole_len, len - (hole - base) - hole_len,
		       hole + hole_len, 9);
	CHECK(bad == -1, "%s: data after the hole, byte %ld", what, bad);
	ret = 0;
out_free:
	free(buf);
	return ret;
}

static int check_punch(struct blk_engine *e)
{
	return check_falloc_mode(e, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "PUNCH_HOLE");
}

static int check_zero_range(struct blk_engine *e)
{
	return check_falloc_mode(e, FALLOC_FL_ZERO_RANGE, "ZERO_RANGE") ||
	       check_falloc_mode(e, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
				 "ZERO_RANGE|KEEP_SIZE");
}

/* 4 x depth requests at once: the surplus waits in the backlog and still completes. */
static int check_backlog(struct blk_engine *e)
{
	enum { N = 4 * DEPTH, BS = 4096 + 7 };
	uint8_t *buf = xmalloc((size_t)N * BS);
	struct treq *t = xmalloc(N * sizeof(*t));
	struct waiter w;
	unsigned i;
	int ret = -1;

	if (reset_file())
		goto out_free;
	for (i = 0; i < N; i++)
		fill(buf + (size_t)i * BS, BS, (uint64_t)i * BS + 3, 5);
	waiter_init(&w, N);
	for (i = 0; i < N; i++)
		treq_init(&t[i], &w, BLK_WRITE, tfd, buf + (size_t)i * BS, BS, (uint64_t)i * BS + 3,
			  0);
	if (run(e, t, N, &w))
		goto out_destroy;
	for (i = 0; i < N; i++)
		CHECK(t[i].res == BS, "write %u: %d", i, t[i].res);
	if (file_check(3, (size_t)N * BS, 5))
		goto out_destroy;
	waiter_destroy(&w);

	/* reads in reverse order, with an fsync every 8th slot, also all at once */
	memset(buf, 0xaa, (size_t)N * BS);
	waiter_init(&w, N);
	for (i = 0; i < N; i++) {
		unsigned k = N - 1 - i;

		if (i % 8 == 7)
			treq_init(&t[i], &w, BLK_FSYNC, tfd, NULL, 0, 0, 0);
		else
			treq_init(&t[i], &w, BLK_READ, tfd, buf + (size_t)k * BS, BS,
				  (uint64_t)k * BS + 3, 0);
	}
	if (run(e, t, N, &w))
		goto out_destroy;
	for (i = 0; i < N; i++) {
		unsigned k = N - 1 - i;

		if (i % 8 == 7) {
			CHECK(t[i].res == 0, "fsync %u: %d", i, t[i].res);
			continue;
		}
		CHECK(t[i].res == BS, "read %u: %d", i, t[i].res);
		CHECK(mismatch(buf + (size_t)k * BS, BS, (uint64_t)k * BS + 3, 5) == -1,
		      "read %u data", i);
	}
	ret = 0;
out_destroy:
	waiter_destroy(&w);
out_free:
	free(t);
	free(buf);
	return ret;
}

/* --- several submitting threads ------------------------------------------------------- */

enum { PER_THREAD = 64, TBS = 8192 + 1 };

struct submitter {
	struct blk_engine *e;
	unsigned id;
	int ret;
};

static uint64_t thread_off(unsigned id, unsigned i)
{
	return ((uint64_t)id << 20) + (uint64_t)i * TBS;
}

/* Each thread writes its own region, waits, reads it back, all through the engine. */
static void *submitter_main(void *arg)
{
	struct submitter *s = arg;
	uint8_t *buf = xmalloc((size_t)PER_THREAD * TBS);
	struct treq *t = xmalloc(PER_THREAD * sizeof(*t));
	struct waiter w;
	unsigned i;

	s->ret = -1;
	for (i = 0; i < PER_THREAD; i++)
		fill(buf + (size_t)i * TBS, TBS, thread_off(s->id, i), s->id);
	waiter_init(&w, PER_THREAD);
	for (i = 0; i < PER_THREAD; i++)
		treq_init(&t[i], &w, BLK_WRITE, tfd, buf + (size_t)i * TBS, TBS,
			  thread_off(s->id, i), 0);
	if (run(s->e, t, PER_THREAD, &w))
		goto out;
	for (i = 0; i < PER_THREAD; i++)
		if (t[i].res != TBS) {
			fprintf(stderr, "FAIL [%s] thread %u write %u: %d\n", cur, s->id, i,
				t[i].res);
			goto out;
		}
	waiter_destroy(&w);

	memset(buf, 0xaa, (size_t)PER_THREAD * TBS);
	waiter_init(&w, PER_THREAD);
	for (i = 0; i < PER_THREAD; i++)
		treq_init(&t[i], &w, BLK_READ, tfd, buf + (size_t)i * TBS, TBS,
			  thread_off(s->id, i), 0);
	if (run(s->e, t, PER_THREAD, &w))
		goto out;
	for (i = 0; i < PER_THREAD; i++)
		if (t[i].res != TBS ||
		    mismatch(buf + (size_t)i * TBS, TBS, thread_off(s->id, i), s->id) != -1) {
			fprintf(stderr, "FAIL [%s] thread %u read %u: %d\n", cur, s->id, i,
				t[i].res);
			goto out;
		}
	s->ret = 0;
out:
	waiter_destroy(&w);
	free(t);
	free(buf);
	return NULL;
}

static int check_threads(struct blk_engine *e)
{
	struct submitter s[NTHREADS];
	pthread_t th[NTHREADS];
	unsigned i;
	int ret = 0;

	if (reset_file())
		return -1;
	for (i = 0; i < NTHREADS; i++) {
		s[i] = (struct submitter){.e = e, .id = i};
		CHECK(pthread_create(&th[i], NULL, submitter_main, &s[i]) == 0, "pthread_create");
	}
	for (i = 0; i < NTHREADS; i++) {
		pthread_join(th[i], NULL);
		ret |= s[i].ret;
	}
	for (i = 0; i < NTHREADS && !ret; i++)
		ret = file_check(thread_off(i, 0), (size_t)PER_THREAD * TBS, i);
	return ret;
}

/* Threads that submit and exit at once: their requests must still complete normally. */
enum { EXIT_THREADS = 8, EXIT_PER = 12 };

struct exiting {
	struct blk_engine *e;
	struct treq *t;
	int ret;
};

static void *exiting_main(void *arg)
{
	struct exiting *x = arg;
	unsigned i;

	x->ret = 0;
	for (i = 0; i < EXIT_PER; i++)
		if (blk_submit(x->e, &x->t[i].req))
			x->ret = -1;
	return NULL;
}

static int check_exiting_submitters(struct blk_engine *e)
{
	struct treq *t = xmalloc(EXIT_THREADS * EXIT_PER * sizeof(*t));
	uint8_t *buf = xmalloc((size_t)EXIT_THREADS * EXIT_PER * 4096);
	struct exiting x[EXIT_THREADS];
	pthread_t th;
	struct waiter w;
	unsigned i, k, n = EXIT_THREADS * EXIT_PER;
	int ret = -1;

	if (reset_file())
		goto out_free;
	waiter_init(&w, n);
	for (i = 0; i < n; i++) {
		uint8_t *b = buf + (size_t)i * 4096;

		fill(b, 4096, (uint64_t)i * 4096, 11);
		switch (i % 3) {
		case 0:
		case 1:
			treq_init(&t[i], &w, BLK_WRITE, tfd, b, 4096, (uint64_t)i * 4096, 0);
			break;
		default:
			treq_init(&t[i], &w, i % 2 ? BLK_FSYNC : BLK_FALLOC, tfd, NULL, 4096,
				  (uint64_t)i * 4096, 0);
		}
	}
	for (k = 0; k < EXIT_THREADS; k++) {
		x[k] = (struct exiting){.e = e, .t = t + k * EXIT_PER};
		if (pthread_create(&th, NULL, exiting_main, &x[k]) || pthread_join(th, NULL)) {
			fprintf(stderr, "FAIL [%s] thread\n", cur);
			exit(1);
		}
		CHECK(x[k].ret == 0, "thread %u submit", k);
	}
	waiter_wait(&w);
	CHECK(w.extra == 0, "%u extra done calls", w.extra);
	for (i = 0; i < n; i++) {
		int expect = t[i].req.op == BLK_WRITE ? 4096 : 0;

		CHECK(t[i].calls == 1, "request %u: %d done calls", i, t[i].calls);
		CHECK(t[i].res == expect, "request %u (op %d): %d", i, t[i].req.op, t[i].res);
		if (t[i].req.op == BLK_WRITE && file_check((uint64_t)i * 4096, 4096, 11))
			goto out_destroy;
	}
	ret = 0;
out_destroy:
	waiter_destroy(&w);
out_free:
	free(buf);
	free(t);
	return ret;
}

/* --- chaining from done callbacks ----------------------------------------------------- */

/*
 * One request resubmitted from its own done callback: nsteps writes of 512 bytes one after
 * the other, an fsync as every 16th step, then a read of everything back into rbuf.
 */
struct chain {
	struct blk_req req;
	struct blk_engine *e;
	struct waiter *w;
	uint8_t *wbuf, *rbuf;
	unsigned step, nsteps;
	unsigned written; /* WRITE steps completed */
	int err;	  /* first unexpected result or submit error */
	pthread_t submitter;
};

static void chain_set(struct chain *c)
{
	struct blk_req *r = &c->req;

	if (c->written == c->nsteps) {
		r->op = BLK_READ;
		r->buf = c->rbuf;
		r->len = (size_t)c->nsteps * 512;
		r->off = 0;
	} else if (c->step % 16 == 15) {
		r->op = BLK_FSYNC;
	} else {
		r->op = BLK_WRITE;
		r->buf = c->wbuf + (size_t)c->written * 512;
		r->len = 512;
		r->off = (uint64_t)c->written * 512;
	}
}

static void chain_done(struct blk_req *req, int res)
{
	struct chain *c = req->priv;
	int expect = req->op == BLK_FSYNC ? 0 : (int)req->len;
	int ret;

	if (pthread_equal(pthread_self(), c->submitter))
		c->err = -EDEADLK;
	if (res != expect && !c->err)
		c->err = res < 0 ? res : -EPROTO;
	if (c->err || req->op == BLK_READ) {
		waiter_done(c->w);
		return;
	}
	if (req->op == BLK_WRITE)
		c->written++;
	c->step++;
	chain_set(c);
	ret = blk_submit(c->e, req);
	if (ret) {
		c->err = ret;
		waiter_done(c->w);
	}
}

static void chain_init(struct chain *c, struct blk_engine *e, struct waiter *w, unsigned nsteps)
{
	memset(c, 0, sizeof(*c));
	c->e = e;
	c->w = w;
	c->nsteps = nsteps;
	c->wbuf = xmalloc((size_t)nsteps * 512);
	c->rbuf = xmalloc((size_t)nsteps * 512);
	fill(c->wbuf, (size_t)nsteps * 512, 0, 13);
	memset(c->rbuf, 0xaa, (size_t)nsteps * 512);
	c->req.fd = tfd;
	c->req.done = chain_done;
	c->req.priv = c;
	c->submitter = pthread_self();
	chain_set(c);
}

static int chain_verify(struct chain *c)
{
	size_t len = (size_t)c->nsteps * 512;

	CHECK(c->err == 0, "chain stopped at step %u: %d", c->step, c->err);
	CHECK(c->written == c->nsteps && c->req.op == BLK_READ, "chain wrote %u of %u blocks",
	      c->written, c->nsteps);
	CHECK(c->step == c->nsteps + (c->nsteps - 1) / 15, "chain took %u steps", c->step);
	CHECK(mismatch(c->rbuf, len, 0, 13) == -1, "chained read data");
	return file_check(0, len, 13);
}

static void chain_free(struct chain *c)
{
	free(c->rbuf);
	free(c->wbuf);
}

static int check_chain(struct blk_engine *e)
{
	struct chain c[3];
	struct waiter w;
	unsigned i;
	int ret = 0;

	if (reset_file())
		return -1;
	/* one long chain, then three at once (they overlap but write the same pattern) */
	waiter_init(&w, 1);
	chain_init(&c[0], e, &w, 200);
	CHECK(blk_submit(e, &c[0].req) == 0, "submit");
	waiter_wait(&w);
	ret = chain_verify(&c[0]);
	chain_free(&c[0]);
	waiter_destroy(&w);
	if (ret)
		return ret;

	waiter_init(&w, 3);
	for (i = 0; i < 3; i++)
		chain_init(&c[i], e, &w, 40);
	for (i = 0; i < 3; i++)
		CHECK(blk_submit(e, &c[i].req) == 0, "submit %u", i);
	waiter_wait(&w);
	for (i = 0; i < 3; i++) {
		ret |= chain_verify(&c[i]);
		chain_free(&c[i]);
	}
	waiter_destroy(&w);
	return ret;
}

/* --- errors --------------------------------------------------------------------------- */

static int check_errors(struct blk_engine *e)
{
	uint8_t buf[4096];
	struct waiter w;
	struct treq t;
	int rfd, res, ret = -1;

	if (reset_file() || file_write(0, sizeof(buf), 2))
		return -1;
	rfd = open(tpath_proc, O_RDONLY | O_CLOEXEC);
	CHECK(rfd >= 0, "open read-only: %m");

	fill(buf, sizeof(buf), 0, 4);
	if (io1(e, BLK_WRITE, rfd, buf, sizeof(buf), 0, 0, &res))
		goto out_close;
	if (res != -EBADF) {
		fprintf(stderr, "FAIL [%s] write to read-only fd: %d\n", cur, res);
		goto out_close;
	}
	if (io1(e, BLK_FALLOC, rfd, NULL, 4096, 0, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		&res))
		goto out_close;
	if (res != -EBADF) {
		fprintf(stderr, "FAIL [%s] punch on read-only fd: %d\n", cur, res);
		goto out_close;
	}
	memset(buf, 0xaa, sizeof(buf));
	if (io1(e, BLK_READ, rfd, buf, sizeof(buf), 0, 0, &res))
		goto out_close;
	if (res != (int)sizeof(buf) || mismatch(buf, sizeof(buf), 0, 2) != -1) {
		fprintf(stderr, "FAIL [%s] read from read-only fd: %d\n", cur, res);
		goto out_close;
	}
	if (file_check(0, sizeof(buf), 2))
		goto out_close;
	ret = 0;
out_close:
	close(rfd);
	if (ret)
		return ret;

	/* a closed fd */
	CHECK(io1(e, BLK_READ, -1, buf, sizeof(buf), 0, 0, &res) == 0 && res == -EBADF,
	      "read from fd -1: %d", res);
	CHECK(io1(e, BLK_FSYNC, -1, NULL, 0, 0, 0, &res) == 0 && res == -EBADF, "fsync fd -1: %d",
	      res);

	/* requests refused by blk_submit never reach done */
	waiter_init(&w, 1);
	treq_init(&t, &w, BLK_READ, tfd, buf, (size_t)INT_MAX + 1, 0, 0);
	CHECK(blk_submit(e, &t.req) == -EINVAL, "len > INT_MAX");
	treq_init(&t, &w, BLK_READ, tfd, NULL, 10, 0, 0);
	CHECK(blk_submit(e, &t.req) == -EINVAL, "NULL buffer");
	treq_init(&t, &w, (enum blk_op)42, tfd, buf, 10, 0, 0);
	CHECK(blk_submit(e, &t.req) == -EINVAL, "unknown op");
	treq_init(&t, &w, BLK_WRITE, tfd, buf, 10, (uint64_t)INT64_MAX, 0);
	CHECK(blk_submit(e, &t.req) == -EINVAL, "offset overflow");
	treq_init(&t, &w, BLK_READ, tfd, buf, 10, 0, 0);
	t.req.done = NULL;
	CHECK(blk_submit(e, &t.req) == -EINVAL, "no done");
	CHECK(t.calls == 0 && w.pending == 1, "done ran for a refused request");
	waiter_destroy(&w);
	return 0;
}

/* blk_try_now on one request; done must not run (try_now never calls it). */
static int try1(struct blk_engine *e, enum blk_op op, int fd, void *buf, size_t len, uint64_t off)
{
	struct treq t;

	treq_init(&t, NULL, op, fd, buf, len, off, 0);
	int ret = blk_try_now(e, &t.req);
	CHECK(t.calls == 0, "try_now called done");
	return ret;
}

/*
 * blk_try_now: a cached READ and a small page-aligned WRITE are done at once on the caller's
 * thread, by every engine; everything else -- unaligned, longer than BLK_WRITE_NOW_MAX,
 * any error -- returns -EAGAIN and leaves the file untouched, for blk_submit to do.
 */
static int check_try_now(struct blk_engine *e)
{
	const size_t big = BLK_WRITE_NOW_MAX + 4096;
	uint8_t *buf;
	int ret, rofd;

	if (reset_file() || file_write(0, 2 * big, 1))
		return -1;
	if (posix_memalign((void **)&buf, 4096, big)) {
		perror("posix_memalign");
		exit(1);
	}
	/* a cached read */
	ret = try1(e, BLK_READ, tfd, buf, 4096, 4096);
	CHECK(ret == 4096, "read: %d", ret);
	CHECK(mismatch(buf, 4096, 4096, 1) == -1, "read returned other bytes");
	/* an aligned 4 KiB write and the longest write done at once */
	fill(buf, 4096, 8192, 2);
	ret = try1(e, BLK_WRITE, tfd, buf, 4096, 8192);
	CHECK(ret == 4096, "4 KiB write: %d", ret);
	if (file_check(8192, 4096, 2))
		goto fail;
	fill(buf, BLK_WRITE_NOW_MAX, 65536, 3);
	ret = try1(e, BLK_WRITE, tfd, buf, BLK_WRITE_NOW_MAX, 65536);
	CHECK(ret == (int)BLK_WRITE_NOW_MAX, "longest write: %d", ret);
	if (file_check(65536, BLK_WRITE_NOW_MAX, 3))
		goto fail;
	/* too long, unaligned offset, unaligned length, an error: left for blk_submit */
	if (reset_file() || file_write(0, 2 * big, 1))
		goto fail;
	fill(buf, big, 0, 4);
	CHECK(try1(e, BLK_WRITE, tfd, buf, big, 0) == -EAGAIN, "a write over the limit");
	CHECK(try1(e, BLK_WRITE, tfd, buf, 4096, 512) == -EAGAIN, "an unaligned offset");
	CHECK(try1(e, BLK_WRITE, tfd, buf, 4096 + 512, 4096) == -EAGAIN, "an unaligned length");
	rofd = open(tpath_proc, O_RDONLY | O_CLOEXEC);
	CHECK(rofd >= 0, "reopen read-only: %m");
	ret = try1(e, BLK_WRITE, rofd, buf, 4096, 0);
	close(rofd);
	CHECK(ret == -EAGAIN, "a write to a read-only fd: %d", ret);
	if (file_check(0, 2 * big, 1))
		goto fail;
	free(buf);
	return 0;
fail:
	free(buf);
	return -1;
}

/* Close with requests in flight, in the backlog and chaining: all complete before it returns. */
static int check_close_drains(const char *name)
{
	enum { N = 4 * DEPTH, BS = 4096 };
	uint8_t *buf = xmalloc((size_t)N * BS);
	struct treq *t = xmalloc(N * sizeof(*t));
	struct blk_engine *e;
	struct chain c;
	struct waiter w, cw;
	unsigned i;
	int ret = -1;

	if (reset_file())
		goto out_free;
	ret = blk_engine_open(name, DEPTH, &e);
	CHECK(ret == 0, "open: %d", ret);
	ret = -1;
	waiter_init(&w, N);
	waiter_init(&cw, 1);
	chain_init(&c, e, &cw, 20);
	for (i = 0; i < N; i++) {
		fill(buf + (size_t)i * BS, BS, (uint64_t)i * BS + (1 << 20), 17);
		treq_init(&t[i], &w, i % 5 == 4 ? BLK_FSYNC : BLK_WRITE, tfd, buf + (size_t)i * BS,
			  BS, (uint64_t)i * BS + (1 << 20), 0);
	}
	CHECK(blk_submit(e, &c.req) == 0, "submit chain");
	for (i = 0; i < N; i++)
		CHECK(blk_submit(e, &t[i].req) == 0, "submit %u", i);
	blk_engine_close(e);

	CHECK(w.pending == 0 && cw.pending == 0, "close returned with %u + %u pending", w.pending,
	      cw.pending);
	for (i = 0; i < N; i++) {
		int expect = t[i].req.op == BLK_WRITE ? BS : 0;

		CHECK(t[i].calls == 1 && t[i].res == expect, "request %u: %d calls, res %d", i,
		      t[i].calls, t[i].res);
		if (expect && file_check((uint64_t)i * BS + (1 << 20), BS, 17))
			goto out_chain;
	}
	if (chain_verify(&c))
		goto out_chain;
	ret = 0;
out_chain:
	chain_free(&c);
	waiter_destroy(&cw);
	waiter_destroy(&w);
out_free:
	free(t);
	free(buf);
	return ret;
}

/* --- driver --------------------------------------------------------------------------- */

static const struct {
	const char *name;
	int (*fn)(struct blk_engine *e);
} engine_checks[] = {
    {.name = "rw_odd", .fn = check_rw_odd},
    {.name = "eof", .fn = check_eof},
    {.name = "fsync", .fn = check_fsync},
    {.name = "punch_hole", .fn = check_punch},
    {.name = "zero_range", .fn = check_zero_range},
    {.name = "backlog", .fn = check_backlog},
    {.name = "threads", .fn = check_threads},
    {.name = "exiting_submitters", .fn = check_exiting_submitters},
    {.name = "chain", .fn = check_chain},
    {.name = "errors", .fn = check_errors},
    {.name = "try_now", .fn = check_try_now},
};

static int report(const char *what, int ret)
{
	printf("%s %s %s\n", ret ? "FAIL" : "ok  ", cur, what);
	return ret ? 1 : 0;
}

int main(void)
{
	char tpath[] = "/tmp/ebsim-test-engine-XXXXXX";
	unsigned i, k, ran = 0, failed = 0;
	struct blk_engine *e;
	int ret;

	alarm(600);
	setvbuf(stdout, NULL, _IOLBF, 0);
	tfd = mkstemp(tpath);
	if (tfd < 0) {
		perror("mkstemp");
		return 1;
	}
	unlink(tpath); /* nothing is left behind, however the test ends */
	snprintf(tpath_proc, sizeof(tpath_proc), "/proc/self/fd/%d", tfd);

	failed += report("names", check_names());
	failed += report("blk_req_account", check_account());
	failed += report("blk_req_exec_sync", check_exec_sync());

	for (i = 0; blk_engine_names[i]; i++) {
		cur = blk_engine_names[i];
#ifdef RUNNING_ON_VALGRIND
		if (RUNNING_ON_VALGRIND && !strcmp(cur, "io_uring")) {
			printf("SKIP %s: valgrind cannot run a thread blocked in io_uring_enter\n",
			       cur);
			continue;
		}
#endif
		ret = blk_engine_open(cur, DEPTH, &e);
		if (ret == -ENOSYS || ret == -EPERM) {
			printf("SKIP %s: open: %s\n", cur, strerror(-ret));
			continue;
		}
		if (ret) {
			failed += report("open", ret);
			continue;
		}
		ran++;
		failed += report("name", strcmp(blk_engine_name(e), cur) != 0);
		for (k = 0; k < ARRAY_SIZE(engine_checks); k++)
			failed += report(engine_checks[k].name, engine_checks[k].fn(e));
		blk_engine_close(e);
		failed += report("close_drains", check_close_drains(cur));
	}
	cur = "-";
	if (failed) {
		printf("%u checks failed\n", failed);
		return 1;
	}
	if (!ran) {
		printf("SKIP: no engine available\n");
		return 77;
	}
	printf("all checks passed on %u engines\n", ran);
	return 0;
}
