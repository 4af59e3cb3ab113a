/* SPDX-License-Identifier: MIT */
/*
 * blk_engine.h - asynchronous I/O engines (io_uring, libaio, psync) behind one ops table.
 *
 * Design notes
 * ------------
 * An engine executes blk_req objects against file descriptors and calls req->done exactly
 * once per request, on one of the engine's own threads (never inside blk_submit). Every
 * engine normalises completions the same way, so the volume layer above never sees a
 * difference:
 *   - -EAGAIN and -EINTR are resubmitted transparently;
 *   - a short read is continued from where it stopped; a read that reaches end of file
 *     zero-fills the rest of the buffer and succeeds;
 *   - a short write is reported as -ENOSPC;
 *   - success is reported as res == len for BLK_READ/BLK_WRITE, res == 0 for
 *     BLK_FSYNC/BLK_FALLOC; failure as a negative errno.
 *
 * blk_submit is thread-safe: it may be called from any thread, including from inside a
 * done callback (the volume layer chains copy-on-write and flush steps that way). When more
 * requests are submitted than the engine's depth, the surplus waits in a FIFO backlog and is
 * submitted as completions free slots; blk_submit never blocks on I/O.
 *
 * blk_engine_close waits for every submitted request to complete, then frees the engine.
 *
 * blk_try_now is the one exception to "done runs on an engine thread": a caller may first
 * try a request synchronously, on its own thread, and blk_try_now never calls done:
 *   - a READ without blocking (preadv2 RWF_NOWAIT: served only when every byte is in the
 *     page cache);
 *   - a WRITE that is page aligned (offset and length) and at most BLK_WRITE_NOW_MAX long,
 *     with plain pwrite(2). It copies into the page cache of a buffered file: no read of
 *     the disk (whole pages), but it may wait briefly (dirty-page throttling, the journal).
 *     ext4 refuses RWF_NOWAIT for buffered writes (EOPNOTSUPP), so io_uring hands every
 *     such write to an io-wq worker thread: two more thread wake-ups per write, and 35% of
 *     the daemon's CPU per 4 KiB write (31.4 -> 19.7 us, fio rw4k QD32 via loop).
 * It returns len, or -EAGAIN when the request must go through blk_submit as usual (not
 * cached, too long, unaligned, short, any error: the asynchronous path redoes it whole and
 * reports). It saves the ring round trip and the wake-ups of the completion thread.
 * Every engine uses the same try_now (blk_req_try_nowait); engine_psync.c says what that
 * means for fault injection.
 */
#ifndef EBSIM_BLK_ENGINE_H
#define EBSIM_BLK_ENGINE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

enum blk_op {
	BLK_READ,   /* pread(fd, buf, len, off) */
	BLK_WRITE,  /* pwrite(fd, buf, len, off) */
	BLK_FSYNC,  /* fdatasync(fd); buf, len, off ignored */
	BLK_FALLOC, /* fallocate(fd, mode, off, len); buf ignored */
};

struct blk_req;
typedef void (*blk_done_fn)(struct blk_req *req, int res);

struct blk_req {
	/* set by the submitter */
	enum blk_op op;
	int fd;
	void *buf;
	size_t len;
	uint64_t off;
	int mode; /* fallocate mode, BLK_FALLOC only */
	blk_done_fn done;
	void *priv; /* owner's cookie; untouched by engines */

	/* engine-private: progress of a continued short read, backlog link */
	size_t progress;
	struct blk_req *next;
};

struct blk_engine;

struct blk_engine_ops {
	const char *name;
	/* allocate the engine (the first member of the implementation's struct is a
	 * struct blk_engine) and start its threads */
	int (*open)(unsigned depth, struct blk_engine **out);
	int (*submit)(struct blk_engine *e, struct blk_req *req);
	void (*close)(struct blk_engine *e);
	/* optional: blk_try_now (NULL: always -EAGAIN) */
	int (*try_now)(struct blk_engine *e, struct blk_req *req);
};

/* Common header embedded as the first member of every implementation. */
struct blk_engine {
	const struct blk_engine_ops *ops;
};

extern const struct blk_engine_ops uring_ops;
extern const struct blk_engine_ops aio_ops;
extern const struct blk_engine_ops psync_ops;

/* Names accepted by blk_engine_open, NULL-terminated, default first. */
extern const char *const blk_engine_names[];

/* Look an engine up by name ("io_uring", "libaio", "psync") and open it.
 * Returns 0, -ENOENT for an unknown name, or the engine's -errno. */
int blk_engine_open(const char *name, unsigned depth, struct blk_engine **out);

/* Queue one request; 0 or -errno (the request was not queued and done will not run). */
static inline int blk_submit(struct blk_engine *e, struct blk_req *req)
{
	return e->ops->submit(e, req);
}

/* Writes blk_try_now does at once: page aligned, at most this long (see above). */
#define BLK_WRITE_NOW_MAX (64u << 10)
#define BLK_WRITE_NOW_ALIGN 4096u

/* Try a BLK_READ or a small BLK_WRITE at once; len, or -EAGAIN: submit it (see above). */
static inline int blk_try_now(struct blk_engine *e, struct blk_req *req)
{
	return e->ops->try_now ? e->ops->try_now(e, req) : -EAGAIN;
}

/* Wait for all submitted requests to complete, then free the engine. */
static inline void blk_engine_close(struct blk_engine *e)
{
	if (e)
		e->ops->close(e);
}

static inline const char *blk_engine_name(const struct blk_engine *e)
{
	return e->ops->name;
}

/*
 * Shared by every engine: finish or continue a request given the raw result of one attempt
 * (bytes transferred or -errno). Returns 1 when the request must be submitted again, 0 when
 * it is complete and *res holds the normalised result to pass to done. An attempt always
 * transfers (buf + progress, len - progress) at (off + progress): buf, len and off stay
 * as the submitter set them; only progress advances.
 */
int blk_req_account(struct blk_req *req, int raw, int *res);

/* Shared by every engine's submit: -EINVAL for a request no engine can run (no done
 * callback, unknown op, NULL buffer, a length beyond INT_MAX, an offset that overflows). */
int blk_req_check(const struct blk_req *req);

/* Execute one request synchronously with the normalisation rules above; returns the result
 * to pass to done. Used by psync and for ops an engine cannot do asynchronously. */
int blk_req_exec_sync(struct blk_req *req);

/* The try_now of the io_uring and libaio engines: preadv2(RWF_NOWAIT) of a whole READ,
 * pwrite of a small aligned WRITE. */
int blk_req_try_nowait(struct blk_engine *e, struct blk_req *req);

#endif
