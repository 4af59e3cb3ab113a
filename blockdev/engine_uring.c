/* SPDX-License-Identifier: MIT */
/* engine_uring.c - the io_uring engine: one ring, locked submission, one completion thread. */
/*
 * Design notes
 * ------------
 * Threads. Any thread may submit; the SQ side of the ring, the backlog and the counters are
 * protected by one mutex, and a submitter preps its SQE and calls io_uring_submit under it
 * (the kernel serialises submissions on its own ring lock anyway). One completion thread, the
 * reaper, owns the CQ side: it blocks in io_uring_wait_cqe without the lock, so submitters
 * and the reaper never wait for each other except for the short bookkeeping section.
 *
 * Slots. At most `depth` requests are in the kernel at once (inflight); the ring has at least
 * that many SQEs and twice as many CQEs, so io_uring_get_sqe cannot run dry and the CQ cannot
 * overflow. A request submitted while all slots are taken joins a FIFO backlog (linked through
 * blk_req.next, no allocation); once a backlog exists new requests queue behind it.
 *
 * A wake-up of the reaper:
 *   1. reaps every CQE available, in batches of URING_BATCH, without the lock. Each raw result
 *      goes through blk_req_account: a request that must go again (-EAGAIN, -EINTR, a short
 *      read) keeps its slot and is put on a local list; a finished one has done called right
 *      there, still without the lock, so done may submit (chain) freely;
 *   2. takes the lock once: releases the finished requests' slots, re-preps the requests that
 *      go again, moves backlog requests into free slots, and submits everything -- including
 *      SQEs that done callbacks prepared -- with a single io_uring_submit.
 * A submission made from a done callback (i.e. on the reaper) is only prepared; step 2 submits
 * it with the rest of the batch, so a chain costs no extra syscall.
 *
 * Life cycle. `busy` counts requests accepted and whose done has not yet returned. Close sets
 * `closing` (new submissions from other threads get -ESHUTDOWN, chained ones from done
 * callbacks are still accepted: they are part of the work being drained), waits for busy to
 * reach 0, then submits a NOP whose user_data is 0 -- the sentinel that stops the reaper --
 * and joins it. Close must not be called from a done callback (it would wait for itself).
 */
#include "blockdev/blk_engine.h"
#include "common/common.h"

#include <errno.h>
#include <liburing.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>

#define URING_BATCH 64

/* The kernel carries a request from the submitting thread to the reaper (user_data); tell
 * ThreadSanitizer, which cannot see that hand-off, about the ordering it implies. */
#ifdef __SANITIZE_THREAD__
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define uring_tsan_release(p) __tsan_release(p)
#define uring_tsan_acquire(p) __tsan_acquire(p)
#else
#define uring_tsan_release(p) ((void)(p))
#define uring_tsan_acquire(p) ((void)(p))
#endif

struct uring_engine {
	struct blk_engine base;
	struct io_uring ring;
	pthread_mutex_t lock; /* SQ ring, backlog, counters, closing */
	pthread_cond_t idle;  /* broadcast when busy reaches 0 while closing */
	unsigned depth;	      /* most requests in the kernel at once */
	unsigned inflight;    /* requests holding a slot */
	unsigned busy;	      /* requests accepted whose done has not returned */
	struct blk_req *bl_head, *bl_tail;
	bool closing;
	pthread_t reaper;
};

/* The engine whose reaper runs on this thread, so submit can tell a chained request. */
static _Thread_local struct uring_engine *uring_self;


/*
 * Hand every prepared SQE to the kernel. Transient refusals (no memory for requests, a
 * signal) are retried: the SQEs are already in the ring and cannot be taken back, and nothing
 * else might submit them if no request is in flight. Called with the lock held.
 */
static void uring_flush(struct uring_engine *e)
{
	int ret;

	while (io_uring_sq_ready(&e->ring)) {
		ret = io_uring_submit(&e->ring);
		if (ret >= 0)
			continue;
		if (ret == -EINTR)
			continue;
		if (ret == -EAGAIN || ret == -EBUSY) {
			sched_yield();
			continue;
		}
		/* Our own ring refused: left in the SQ for the next flush. */
		log_err("io_uring: submit: %d", ret);
		return;
	}
}

/* Prepare one attempt of req in an SQE (the slot is already counted). False if the SQ is full,
 * which only happens when the kernel has refused SQEs that are still queued. */
static bool uring_prep(struct uring_engine *e, struct blk_req *req)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
	char *p = req->buf;

	if (!sqe) {
		uring_flush(e);
		sqe = io_uring_get_sqe(&e->ring);
		if (!sqe)
			return false;
	}
	switch (req->op) {
	case BLK_READ:
		io_uring_prep_read(sqe, req->fd, p + req->progress,
				   (unsigned)(req->len - req->progress), req->off + req->progress);
		break;
	case BLK_WRITE:
		io_uring_prep_write(sqe, req->fd, p + req->progress,
				    (unsigned)(req->len - req->progress), req->off + req->progress);
		break;
	case BLK_FSYNC:
		io_uring_prep_fsync(sqe, req->fd, IORING_FSYNC_DATASYNC);
		break;
	case BLK_FALLOC:
		io_uring_prep_fallocate(sqe, req->fd, req->mode, (off_t)req->off, (off_t)req->len);
		break;
	}
	io_uring_sqe_set_data(sqe, req);
	uring_tsan_release(req);
	return true;
}

static void uring_backlog_push(struct uring_engine *e, struct blk_req *req)
{
	req->next = NULL;
	if (e->bl_tail)
		e->bl_tail->next = req;
	else
		e->bl_head = req;
	e->bl_tail = req;
}

/* Move backlog requests into free slots. Called with the lock held. */
static void uring_refill(struct uring_engine *e)
{
	struct blk_req *req;

	while (e->inflight < e->depth && (req = e->bl_head)) {
		if (!uring_prep(e, req))
			return;
		e->bl_head = req->next;
		if (!e->bl_head)
			e->bl_tail = NULL;
		e->inflight++;
	}
}

static int uring_submit(struct blk_engine *be, struct blk_req *req)
{
	struct uring_engine *e = (struct uring_engine *)be;
	bool chained = uring_self == e;
	int ret = blk_req_check(req);

	if (ret)
		return ret;
	req->progress = 0;
	req->next = NULL;
	pthread_mutex_lock(&e->lock);
	if (e->closing && !chained) {
		pthread_mutex_unlock(&e->lock);
		return -ESHUTDOWN;
	}
	e->busy++;
	if (e->inflight < e->depth && !e->bl_head && uring_prep(e, req)) {
		e->inflight++;
		if (!chained) /* the reaper submits chained SQEs with its batch */
			uring_flush(e);
	} else {
		uring_backlog_push(e, req);
	}
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* Reap everything available; returns false once the close sentinel has been seen. */
static bool uring_reap_batch(struct uring_engine *e)
{
	struct io_uring_cqe *cqes[URING_BATCH];
	struct blk_req *again = NULL, **again_tail = &again, *req;
	unsigned i, n, finished = 0, retried = 0;
	bool running = true;
	int res;

	while ((n = io_uring_peek_batch_cqe(&e->ring, cqes, URING_BATCH))) {
		for (i = 0; i < n; i++) {
			req = io_uring_cqe_get_data(cqes[i]);
			if (!req) {
				running = false;
				continue;
			}
			uring_tsan_acquire(req);
			if (blk_req_account(req, cqes[i]->res, &res)) {
				req->next = NULL;
				*again_tail = req;
				again_tail = &req->next;
				retried++;
				continue;
			}
			finished++;
			req->done(req, res); /* may free or resubmit req */
		}
		io_uring_cq_advance(&e->ring, n);
	}
	if (!finished && !retried)
		return running;

	pthread_mutex_lock(&e->lock);
	e->inflight -= finished;
	e->busy -= finished;
	while ((req = again)) {
		again = req->next;
		if (!uring_prep(e, req)) {
			/* no SQE: give the slot up and go first in the backlog */
			e->inflight--;
			req->next = e->bl_head;
			e->bl_head = req;
			if (!e->bl_tail)
				e->bl_tail = req;
		}
	}
	uring_refill(e);
	uring_flush(e);
	if (e->closing && !e->busy)
		pthread_cond_broadcast(&e->idle);
	pthread_mutex_unlock(&e->lock);
	return running;
}

static void *uring_reap(void *arg)
{
	struct uring_engine *e = arg;
	struct io_uring_cqe *cqe;
	int ret;

	uring_self = e;
	do {
		ret = io_uring_wait_cqe(&e->ring, &cqe);
		if (ret < 0) {
			if (ret != -EINTR && ret != -EAGAIN)
				log_err("io_uring: wait for completions: %d", ret);
			continue;
		}
	} while (uring_reap_batch(e));
	return NULL;
}

/* Every opcode we issue (READ, WRITE and FALLOCATE came in 5.6, with the probe itself);
 * -ENOSYS on an older kernel lets the caller pick another engine. */
static int uring_probe(struct io_uring *ring)
{
	static const int ops[] = {IORING_OP_NOP, IORING_OP_READ, IORING_OP_WRITE, IORING_OP_FSYNC,
				  IORING_OP_FALLOCATE};
	struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
	int ret = 0;
	size_t i;

	if (!probe)
		return -ENOSYS;
	for (i = 0; i < ARRAY_SIZE(ops); i++)
		if (!io_uring_opcode_supported(probe, ops[i]))
			ret = -ENOSYS;
	io_uring_free_probe(probe);
	return ret;
}

static int uring_open(unsigned depth, struct blk_engine **out)
{
	struct uring_engine *e;
	int ret;

	if (!depth)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->base.ops = &uring_ops;
	/* SUBMIT_ALL keeps submitting past a refused SQE (5.18+); CLAMP caps huge depths. */
	ret = io_uring_queue_init(depth, &e->ring, IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CLAMP);
	if (ret == -EINVAL)
		ret = io_uring_queue_init(depth, &e->ring, IORING_SETUP_CLAMP);
	if (ret < 0)
		goto out_free;
	ret = uring_probe(&e->ring);
	if (ret)
		goto out_exit_ring;
	e->depth = MIN(depth, e->ring.sq.ring_entries);
	ret = -pthread_mutex_init(&e->lock, NULL);
	if (ret)
		goto out_exit_ring;
	ret = -pthread_cond_init(&e->idle, NULL);
	if (ret)
		goto out_destroy_lock;
	ret = -pthread_create(&e->reaper, NULL, uring_reap, e);
	if (ret)
		goto out_destroy_cond;
	*out = &e->base;
	return 0;

out_destroy_cond:
	pthread_cond_destroy(&e->idle);
out_destroy_lock:
	pthread_mutex_destroy(&e->lock);
out_exit_ring:
	io_uring_queue_exit(&e->ring);
out_free:
	free(e);
	return ret;
}

static void uring_close(struct blk_engine *be)
{
	struct uring_engine *e = (struct uring_engine *)be;
	struct io_uring_sqe *sqe;

	if (uring_self == e) {
		log_err("io_uring: blk_engine_close called from a done callback");
		abort();
	}
	pthread_mutex_lock(&e->lock);
	e->closing = true;
	while (e->busy)
		pthread_cond_wait(&e->idle, &e->lock);
	while (!(sqe = io_uring_get_sqe(&e->ring)))
		uring_flush(e);
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data(sqe, NULL);
	uring_flush(e);
	pthread_mutex_unlock(&e->lock);

	pthread_join(e->reaper, NULL);
	pthread_cond_destroy(&e->idle);
	pthread_mutex_destroy(&e->lock);
	io_uring_queue_exit(&e->ring);
	free(e);
}

const struct blk_engine_ops uring_ops = {
    .name = "io_uring",
    .open = uring_open,
    .submit = uring_submit,
    .close = uring_close,
    .try_now = blk_req_try_nowait,
};
