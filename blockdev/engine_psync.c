/* SPDX-License-Identifier: MIT */
/* engine_psync.c - the psync engine: a fixed pool of threads running blocking syscalls. */
/*
 * Design notes
 * ------------
 * min(depth, PSYNC_MAX_THREADS) worker threads share one FIFO queue (linked through
 * blk_req.next) under one mutex. A worker pops a request, runs it with blk_req_exec_sync
 * (pread/pwrite/fdatasync/fallocate with the shared normalisation rules) without the lock and
 * calls done on its own thread, so done may submit (chain) freely. The number of threads is
 * the engine's depth: requests beyond it simply wait in the queue, which is the backlog.
 *
 * Life cycle. `busy` counts requests accepted whose done has not returned. Close sets
 * `closing` (new submissions from other threads get -ESHUTDOWN; chained ones from done
 * callbacks are accepted), waits for busy to reach 0, then stops and joins the workers. Close
 * must not be called from a done callback.
 *
 * try_now is the shared blk_req_try_nowait, as for io_uring and libaio: a cached read and a
 * small aligned write are done on the caller's thread, so only misses, long writes and
 * flushes pay the hop to a worker (two wake-ups on a 2-core host). Without it, 4 KiB random
 * I/O via loop ran at 0.45-0.47x of the raw file against io_uring's 0.66 (full make bench,
 * issue 6). A write done at once is still a libc pwrite, where libfiu's POSIX preload
 * (tests/test_faults.py) intercepts it; a failed or short one is redone here, so an
 * injected fault reaches the caller as before. Reads done at once use preadv2(RWF_NOWAIT),
 * which libfiu does not wrap: read faults can be injected only on uncached data.
 */
#include "blockdev/blk_engine.h"
#include "common/common.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#define PSYNC_MAX_THREADS 16

struct psync_engine {
	struct blk_engine base;
	pthread_mutex_t lock; /* queue, counters, flags */
	pthread_cond_t work;  /* a request was queued, or stop */
	pthread_cond_t idle;  /* broadcast when busy reaches 0 while closing */
	struct blk_req *head, *tail;
	unsigned busy; /* requests accepted whose done has not returned */
	bool closing;
	bool stop;
	unsigned nthreads;
	pthread_t threads[];
};

/* The engine whose worker runs on this thread, so submit can tell a chained request. */
static _Thread_local struct psync_engine *psync_self;


static void *psync_worker(void *arg)
{
	struct psync_engine *e = arg;
	struct blk_req *req;
	int res;

	psync_self = e;
	pthread_mutex_lock(&e->lock);
	for (;;) {
		req = e->head;
		if (!req) {
			if (e->stop)
				break;
			pthread_cond_wait(&e->work, &e->lock);
			continue;
		}
		e->head = req->next;
		if (!e->head)
			e->tail = NULL;
		pthread_mutex_unlock(&e->lock);

		res = blk_req_exec_sync(req);
		req->done(req, res); /* may free or resubmit req */

		pthread_mutex_lock(&e->lock);
		if (!--e->busy && e->closing)
			pthread_cond_broadcast(&e->idle);
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

static int psync_submit(struct blk_engine *be, struct blk_req *req)
{
	struct psync_engine *e = (struct psync_engine *)be;
	int ret = blk_req_check(req);

	if (ret)
		return ret;
	req->progress = 0;
	req->next = NULL;
	pthread_mutex_lock(&e->lock);
	if (e->closing && psync_self != e) {
		pthread_mutex_unlock(&e->lock);
		return -ESHUTDOWN;
	}
	e->busy++;
	if (e->tail)
		e->tail->next = req;
	else
		e->head = req;
	e->tail = req;
	pthread_cond_signal(&e->work);
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* Stop the workers and wait for them; the queue must be empty. */
static void psync_stop(struct psync_engine *e)
{
	unsigned i;

	pthread_mutex_lock(&e->lock);
	e->stop = true;
	pthread_cond_broadcast(&e->work);
	pthread_mutex_unlock(&e->lock);
	for (i = 0; i < e->nthreads; i++)
		pthread_join(e->threads[i], NULL);
}

static int psync_open(unsigned depth, struct blk_engine **out)
{
	unsigned n = MIN(depth, PSYNC_MAX_THREADS);
	struct psync_engine *e;
	int ret;

	if (!depth)
		return -EINVAL;
	e = calloc(1, sizeof(*e) + n * sizeof(e->threads[0]));
	if (!e)
		return -ENOMEM;
	e->base.ops = &psync_ops;
	ret = -pthread_mutex_init(&e->lock, NULL);
	if (ret)
		goto out_free;
	ret = -pthread_cond_init(&e->work, NULL);
	if (ret)
		goto out_destroy_lock;
	ret = -pthread_cond_init(&e->idle, NULL);
	if (ret)
		goto out_destroy_work;
	for (; e->nthreads < n; e->nthreads++) {
		ret = -pthread_create(&e->threads[e->nthreads], NULL, psync_worker, e);
		if (ret)
			goto out_stop_workers;
	}
	*out = &e->base;
	return 0;

out_stop_workers:
	psync_stop(e);
	pthread_cond_destroy(&e->idle);
out_destroy_work:
	pthread_cond_destroy(&e->work);
out_destroy_lock:
	pthread_mutex_destroy(&e->lock);
out_free:
	free(e);
	return ret;
}

static void psync_close(struct blk_engine *be)
{
	struct psync_engine *e = (struct psync_engine *)be;

	if (psync_self == e) {
		log_err("psync: blk_engine_close called from a done callback");
		abort();
	}
	pthread_mutex_lock(&e->lock);
	e->closing = true;
	while (e->busy)
		pthread_cond_wait(&e->idle, &e->lock);
	pthread_mutex_unlock(&e->lock);
	psync_stop(e);
	pthread_cond_destroy(&e->idle);
	pthread_cond_destroy(&e->work);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

const struct blk_engine_ops psync_ops = {
    .name = "psync",
    .open = psync_open,
    .submit = psync_submit,
    .close = psync_close,
    .try_now = blk_req_try_nowait,
};
