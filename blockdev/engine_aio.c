/* SPDX-License-Identifier: MIT */
/* engine_aio.c - the libaio engine: io_submit from any thread, an eventfd-driven reaper. */
/*
 * Design notes
 * ------------
 * Control blocks. io_setup(depth) sizes the kernel's completion ring; `depth` iocbs are
 * allocated at open and kept on a free stack, so the hot path never allocates. A request
 * holds an iocb while it is in the kernel (iocb.data points back at it); without a free iocb
 * it joins the FIFO backlog, linked through blk_req.next.
 *
 * Threads. The lock protects the free stack, the backlog, the synchronous queue and the
 * counters; io_submit runs outside it (with buffered fds the kernel may do the whole I/O
 * inside io_submit -- a property of Linux AIO, which is why this engine is meant for O_DIRECT
 * fds). Every iocb carries IOCB_FLAG_RESFD: the kernel bumps an eventfd after posting its
 * event, and the reaper sleeps in read() on that eventfd, then drains the ring with
 * non-blocking io_getevents. Close wakes the reaper through the same eventfd.
 *
 * Synchronous fallback. Linux AIO has no fallocate, and io_submit may refuse an iocb
 * (IOCB_CMD_FDSYNC is -EINVAL on kernels before 4.18; -EAGAIN when the kernel is short of
 * resources; -EBADF for a write to a read-only fd). Such requests go to a FIFO served by one
 * helper thread, which runs blk_req_exec_sync (resuming at req->progress, so a continued
 * read refused half-way finishes correctly) and calls done; the submitter's thread never
 * executes I/O synchronously or calls done. Errors thus come out exactly as psync reports them.
 *
 * A reaper wake-up reaps up to AIO_BATCH events at a time, calls done for finished requests
 * without the lock (done may chain), resubmits the requests that go again on the iocb they
 * already hold, and moves backlog requests into released iocbs with one io_submit per batch.
 *
 * Life cycle. `busy` counts requests accepted whose done has not returned. Close sets
 * `closing` (new submissions from other threads get -ESHUTDOWN; chained ones from done
 * callbacks are accepted), waits for busy to reach 0, stops and joins both threads. Close must
 * not be called from a done callback.
 */
#include "blockdev/blk_engine.h"
#include "common/common.h"

#include <errno.h>
#include <libaio.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define AIO_BATCH 64

/* The kernel carries a request from the submitting thread to the reaper (user_data); tell
 * ThreadSanitizer, which cannot see that hand-off, about the ordering it implies. */
#ifdef __SANITIZE_THREAD__
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define aio_tsan_release(p) __tsan_release(p)
#define aio_tsan_acquire(p) __tsan_acquire(p)
#else
#define aio_tsan_release(p) ((void)(p))
#define aio_tsan_acquire(p) ((void)(p))
#endif

struct aio_engine {
	struct blk_engine base;
	io_context_t ctx;
	int efd;	      /* completion eventfd, also the stop wake-up */
	pthread_mutex_t lock; /* free stack, backlog, sync queue, counters, flags */
	pthread_cond_t idle;  /* broadcast when busy reaches 0 while closing */
	pthread_cond_t sync_wake;
	unsigned busy; /* requests accepted whose done has not returned */
	bool closing;
	bool helper_stop;
	atomic_bool reaper_stop;
	struct blk_req *bl_head, *bl_tail;     /* waiting for an iocb */
	struct blk_req *sync_head, *sync_tail; /* waiting for the helper thread */
	struct iocb *iocbs;
	struct iocb **free_iocbs;
	unsigned nfree;
	pthread_t reaper;
	pthread_t helper;
};

/* The engine whose reaper or helper runs on this thread, so submit can tell a chained
 * request and close can refuse to wait for itself. */
static _Thread_local struct aio_engine *aio_self;


static void aio_queue_push(struct blk_req **head, struct blk_req **tail, struct blk_req *req)
{
	req->next = NULL;
	if (*tail)
		(*tail)->next = req;
	else
		*head = req;
	*tail = req;
}

static struct blk_req *aio_queue_pop(struct blk_req **head, struct blk_req **tail)
{
	struct blk_req *req = *head;

	if (req) {
		*head = req->next;
		if (!*head)
			*tail = NULL;
	}
	return req;
}

/* Fill iocb for the next attempt of req (READ, WRITE or FSYNC). */
static void aio_prep(struct aio_engine *e, struct iocb *iocb, struct blk_req *req)
{
	char *p = req->buf;

	switch (req->op) {
	case BLK_READ:
		io_prep_pread(iocb, req->fd, p + req->progress, req->len - req->progress,
			      (long long)(req->off + req->progress));
		break;
	case BLK_WRITE:
		io_prep_pwrite(iocb, req->fd, p + req->progress, req->len - req->progress,
			       (long long)(req->off + req->progress));
		break;
	default:
		io_prep_fdsync(iocb, req->fd);
		break;
	}
	iocb->data = req;
	io_set_eventfd(iocb, e->efd);
	aio_tsan_release(req);
}

/* Hand req to the helper thread. Called with the lock held. */
static void aio_defer_sync(struct aio_engine *e, struct blk_req *req)
{
	aio_queue_push(&e->sync_head, &e->sync_tail, req);
	pthread_cond_signal(&e->sync_wake);
}

/*
 * io_submit a batch of prepared iocbs, outside the lock. An iocb the kernel refuses releases
 * its control block and its request goes to the helper thread. Returns how many were refused,
 * i.e. how many iocbs were released that the backlog might use.
 */
static unsigned aio_kick(struct aio_engine *e, struct iocb **list, unsigned n)
{
	unsigned i = 0, refused = 0;
	int ret;

	while (i < n) {
		ret = io_submit(e->ctx, (long)(n - i), list + i);
		if (ret > 0) {
			i += (unsigned)ret;
			continue;
		}
		if (ret == -EINTR)
			continue;
		pthread_mutex_lock(&e->lock);
		e->free_iocbs[e->nfree++] = list[i];
		aio_defer_sync(e, list[i]->data);
		pthread_mutex_unlock(&e->lock);
		i++;
		refused++;
	}
	return refused;
}

/* Move backlog requests into free iocbs and submit them, until either runs out. */
static void aio_pump(struct aio_engine *e)
{
	struct iocb *batch[AIO_BATCH];
	struct blk_req *req;
	unsigned n;

	do {
		n = 0;
		pthread_mutex_lock(&e->lock);
		while (n < AIO_BATCH && e->nfree && e->bl_head) {
			req = aio_queue_pop(&e->bl_head, &e->bl_tail);
			batch[n] = e->free_iocbs[--e->nfree];
			aio_prep(e, batch[n++], req);
		}
		pthread_mutex_unlock(&e->lock);
		if (n)
			aio_kick(e, batch, n);
	} while (n);
}

static int aio_submit(struct blk_engine *be, struct blk_req *req)
{
	struct aio_engine *e = (struct aio_engine *)be;
	struct iocb *iocb = NULL;
	int ret = blk_req_check(req);

	if (ret)
		return ret;
	req->progress = 0;
	req->next = NULL;
	pthread_mutex_lock(&e->lock);
	if (e->closing && aio_self != e) {
		pthread_mutex_unlock(&e->lock);
		return -ESHUTDOWN;
	}
	e->busy++;
	if (req->op == BLK_FALLOC) {
		aio_defer_sync(e, req);
	} else if (e->nfree && !e->bl_head) {
		iocb = e->free_iocbs[--e->nfree];
		aio_prep(e, iocb, req);
	} else {
		aio_queue_push(&e->bl_head, &e->bl_tail, req);
	}
	pthread_mutex_unlock(&e->lock);
	/* a refused iocb was released: the backlog may be waiting for it */
	if (iocb && aio_kick(e, &iocb, 1))
		aio_pump(e);
	return 0;
}

/* Reap what the ring holds now; false once close has asked the reaper to stop. */
static bool aio_reap_batch(struct aio_engine *e)
{
	struct io_event events[AIO_BATCH];
	struct iocb *again[AIO_BATCH], *released[AIO_BATCH];
	struct timespec zero = {0, 0};
	struct blk_req *req;
	unsigned nagain, nreleased;
	int i, n, res;

	for (;;) {
		n = io_getevents(e->ctx, 0, AIO_BATCH, events, &zero);
		if (n == -EINTR)
			continue;
		if (n < 0) {
			log_err("libaio: io_getevents: %d", n);
			break;
		}
		if (!n)
			break;
		nagain = nreleased = 0;
		for (i = 0; i < n; i++) {
			req = events[i].data;
			aio_tsan_acquire(req);
			if (blk_req_account(req, (int)(long)events[i].res, &res)) {
				aio_prep(e, events[i].obj, req);
				again[nagain++] = events[i].obj;
				continue;
			}
			released[nreleased++] = events[i].obj;
			req->done(req, res); /* may free or resubmit req */
		}
		pthread_mutex_lock(&e->lock);
		for (i = 0; i < (int)nreleased; i++)
			e->free_iocbs[e->nfree++] = released[i];
		e->busy -= nreleased;
		if (e->closing && !e->busy)
			pthread_cond_broadcast(&e->idle);
		pthread_mutex_unlock(&e->lock);
		if (nagain)
			aio_kick(e, again, nagain);
		aio_pump(e);
	}
	return !atomic_load(&e->reaper_stop);
}

static void *aio_reap(void *arg)
{
	struct aio_engine *e = arg;
	uint64_t count;

	aio_self = e;
	do {
		if (read(e->efd, &count, sizeof(count)) < 0 && errno != EINTR)
			log_err("libaio: read eventfd: %d", -errno);
	} while (aio_reap_batch(e));
	return NULL;
}

/* The helper thread: runs refused requests and fallocates synchronously, in FIFO order. */
static void *aio_sync_worker(void *arg)
{
	struct aio_engine *e = arg;
	struct blk_req *req;
	int res;

	aio_self = e;
	pthread_mutex_lock(&e->lock);
	for (;;) {
		req = aio_queue_pop(&e->sync_head, &e->sync_tail);
		if (!req) {
			if (e->helper_stop)
				break;
			pthread_cond_wait(&e->sync_wake, &e->lock);
			continue;
		}
		pthread_mutex_unlock(&e->lock);
		res = blk_req_exec_sync(req);
		req->done(req, res);
		pthread_mutex_lock(&e->lock);
		if (!--e->busy && e->closing)
			pthread_cond_broadcast(&e->idle);
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

static int aio_open(unsigned depth, struct blk_engine **out)
{
	struct aio_engine *e;
	unsigned i;
	int ret;

	if (!depth || depth > INT_MAX)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->base.ops = &aio_ops;
	atomic_init(&e->reaper_stop, false);
	e->iocbs = calloc(depth, sizeof(*e->iocbs));
	e->free_iocbs = calloc(depth, sizeof(*e->free_iocbs));
	ret = -ENOMEM;
	if (!e->iocbs || !e->free_iocbs)
		goto out_free;
	for (i = 0; i < depth; i++)
		e->free_iocbs[i] = &e->iocbs[depth - 1 - i];
	e->nfree = depth;

	ret = io_setup((int)depth, &e->ctx);
	if (ret < 0)
		goto out_free;
	e->efd = eventfd(0, EFD_CLOEXEC);
	if (e->efd < 0) {
		ret = -errno;
		goto out_destroy_ctx;
	}
	ret = -pthread_mutex_init(&e->lock, NULL);
	if (ret)
		goto out_close_efd;
	ret = -pthread_cond_init(&e->idle, NULL);
	if (ret)
		goto out_destroy_lock;
	ret = -pthread_cond_init(&e->sync_wake, NULL);
	if (ret)
		goto out_destroy_idle;
	ret = -pthread_create(&e->helper, NULL, aio_sync_worker, e);
	if (ret)
		goto out_destroy_sync_wake;
	ret = -pthread_create(&e->reaper, NULL, aio_reap, e);
	if (ret)
		goto out_stop_helper;
	*out = &e->base;
	return 0;

out_stop_helper:
	pthread_mutex_lock(&e->lock);
	e->helper_stop = true;
	pthread_cond_signal(&e->sync_wake);
	pthread_mutex_unlock(&e->lock);
	pthread_join(e->helper, NULL);
out_destroy_sync_wake:
	pthread_cond_destroy(&e->sync_wake);
out_destroy_idle:
	pthread_cond_destroy(&e->idle);
out_destroy_lock:
	pthread_mutex_destroy(&e->lock);
out_close_efd:
	close(e->efd);
out_destroy_ctx:
	io_destroy(e->ctx);
out_free:
	free(e->free_iocbs);
	free(e->iocbs);
	free(e);
	return ret;
}

static void aio_close(struct blk_engine *be)
{
	struct aio_engine *e = (struct aio_engine *)be;
	uint64_t one = 1;

	if (aio_self == e) {
		log_err("libaio: blk_engine_close called from a done callback");
		abort();
	}
	pthread_mutex_lock(&e->lock);
	e->closing = true;
	while (e->busy)
		pthread_cond_wait(&e->idle, &e->lock);
	e->helper_stop = true;
	pthread_cond_signal(&e->sync_wake);
	pthread_mutex_unlock(&e->lock);

	atomic_store(&e->reaper_stop, true);
	while (write(e->efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	pthread_join(e->reaper, NULL);
	pthread_join(e->helper, NULL);

	pthread_cond_destroy(&e->sync_wake);
	pthread_cond_destroy(&e->idle);
	pthread_mutex_destroy(&e->lock);
	close(e->efd);
	io_destroy(e->ctx);
	free(e->free_iocbs);
	free(e->iocbs);
	free(e);
}

const struct blk_engine_ops aio_ops = {
    .name = "libaio",
    .open = aio_open,
    .submit = aio_submit,
    .close = aio_close,
    .try_now = blk_req_try_nowait,
};
