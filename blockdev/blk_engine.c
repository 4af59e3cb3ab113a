/* SPDX-License-Identifier: MIT */
/* blk_engine.c - engine lookup by name and the completion rules every engine shares. */
/*
 * Design notes
 * ------------
 * The three engines differ only in how an attempt reaches the kernel; what an attempt's raw
 * result means is decided here, once, so the volume layer sees identical behaviour whichever
 * engine is configured (QEMU's block/io_uring.c and block/linux-aio.c agree the same way):
 *
 *   raw                        READ                         WRITE            FSYNC, FALLOC
 *   -EAGAIN, -EINTR            again, progress unchanged    again            again
 *   other -errno               -errno                       -errno           -errno
 *   0 < raw < remaining        progress += raw, again       -ENOSPC          0
 *   raw == remaining           len                          len              0
 *   0 with bytes remaining     zero-fill the rest (EOF),    -ENOSPC          0
 *                              len
 *   raw > remaining            -EIO (never from a sane kernel)
 *
 * A request's progress is reset by the engine when it is submitted; an attempt always covers
 * (buf + progress, len - progress) at off + progress, so a continued read and a request an
 * engine hands to blk_req_exec_sync after a partial asynchronous attempt both resume where
 * the last attempt stopped. READ and WRITE lengths are limited to INT_MAX because the result
 * is an int.
 *
 * blk_req_try_nowait (every engine's try_now, see blk_engine.h) runs on the
 * caller's thread and touches nothing of the engine: a READ by preadv2(RWF_NOWAIT), a small
 * page-aligned WRITE by pwrite. Any shortfall is -EAGAIN and the caller submits the whole
 * request; a partly done write is simply written again, the same bytes at the same place.
 */
#include "blockdev/blk_engine.h"
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

const char *const blk_engine_names[] = {"io_uring", "libaio", "psync", NULL};

/* Same order as blk_engine_names; the names come from the ops tables themselves. */
static const struct blk_engine_ops *const blk_engines[] = {&uring_ops, &aio_ops, &psync_ops};

_Static_assert(ARRAY_SIZE(blk_engines) + 1 == ARRAY_SIZE(blk_engine_names),
	       "blk_engine_names and blk_engines must list the same engines");

int blk_engine_open(const char *name, unsigned depth, struct blk_engine **out)
{
	size_t i;

	if (!name || !out)
		return -EINVAL;
	*out = NULL;
	for (i = 0; i < ARRAY_SIZE(blk_engines); i++)
		if (!strcmp(blk_engines[i]->name, name))
			return blk_engines[i]->open(depth, out);
	return -ENOENT;
}

int blk_req_account(struct blk_req *req, int raw, int *res)
{
	size_t left;

	if (raw == -EAGAIN || raw == -EINTR)
		return 1;
	if (raw < 0) {
		*res = raw;
		return 0;
	}
	switch (req->op) {
	case BLK_READ:
	case BLK_WRITE:
		break;
	case BLK_FSYNC:
	case BLK_FALLOC:
		*res = 0;
		return 0;
	default:
		*res = -EINVAL;
		return 0;
	}
	if (req->len > INT_MAX || req->progress > req->len ||
	    (size_t)raw > req->len - req->progress) {
		*res = -EIO;
		return 0;
	}
	left = req->len - req->progress - (size_t)raw;
	if (req->op == BLK_WRITE) {
		*res = left ? -ENOSPC : (int)req->len;
		return 0;
	}
	req->progress += (size_t)raw;
	if (left && raw > 0)
		return 1; /* short read: continue where it stopped */
	if (left)
		memset((char *)req->buf + req->progress, 0, left); /* end of file */
	*res = (int)req->len;
	return 0;
}

/* One synchronous attempt: bytes transferred or -errno, the raw input of blk_req_account. */
static int blk_req_attempt(struct blk_req *req)
{
	ssize_t n;

	switch (req->op) {
	case BLK_READ:
		n = pread(req->fd, (char *)req->buf + req->progress, req->len - req->progress,
			  (off_t)(req->off + req->progress));
		break;
	case BLK_WRITE:
		n = pwrite(req->fd, (char *)req->buf + req->progress, req->len - req->progress,
			   (off_t)(req->off + req->progress));
		break;
	case BLK_FSYNC:
		n = fdatasync(req->fd);
		break;
	case BLK_FALLOC:
		n = fallocate(req->fd, req->mode, (off_t)req->off, (off_t)req->len);
		break;
	default:
		return -EINVAL;
	}
	return n < 0 ? -errno : (int)n;
}

int blk_req_exec_sync(struct blk_req *req)
{
	int res;

	switch (req->op) {
	case BLK_READ:
	case BLK_WRITE:
		if (!req->buf || req->len > INT_MAX || req->progress > req->len ||
		    req->off > (uint64_t)INT64_MAX - req->len)
			return -EINVAL;
		break;
	case BLK_FSYNC:
		break;
	case BLK_FALLOC:
		if (req->off > (uint64_t)INT64_MAX || req->len > (uint64_t)INT64_MAX)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	while (blk_req_account(req, blk_req_attempt(req), &res))
		;
	return res;
}

int blk_req_check(const struct blk_req *req)
{
	if (!req || !req->done)
		return -EINVAL;
	switch (req->op) {
	case BLK_READ:
	case BLK_WRITE:
		if (!req->buf || req->len > INT_MAX || req->off > (uint64_t)INT64_MAX - req->len)
			return -EINVAL;
		return 0;
	case BLK_FSYNC:
		return 0;
	case BLK_FALLOC:
		if (req->off > (uint64_t)INT64_MAX || req->len > (uint64_t)INT64_MAX)
			return -EINVAL;
		return 0;
	}
	return -EINVAL;
}

int blk_req_try_nowait(struct blk_engine *e, struct blk_req *req)
{
	struct iovec iov = {.iov_base = req->buf, .iov_len = req->len};
	ssize_t n;

	(void)e;
	if (blk_req_check(req))
		return -EAGAIN;
	if (req->op == BLK_READ)
		n = preadv2(req->fd, &iov, 1, (off_t)req->off, RWF_NOWAIT);
	else if (req->op == BLK_WRITE && req->len <= BLK_WRITE_NOW_MAX &&
		 !((req->off | req->len) & (BLK_WRITE_NOW_ALIGN - 1)))
		n = pwrite(req->fd, req->buf, req->len, (off_t)req->off);
	else
		return -EAGAIN;
	return n == (ssize_t)req->len ? (int)n : -EAGAIN;
}
