/* SPDX-License-Identifier: MIT */
/*
 * furing.c - FUSE over io_uring (ebsimd --fuse-transport io_uring).
 *
 * Design notes
 * ------------
 * Protocol (kernel fs/fuse/dev_uring.c, Documentation/filesystems/fuse-io-uring.rst):
 * the FUSE_INIT reply sets FUSE_OVER_IO_URING (flags2 bit 9, with FUSE_INIT_EXT). Then
 * the server sends, on an io_uring created with IORING_SETUP_SQE128, one
 * IORING_OP_URING_CMD per ring entry on the /dev/fuse fd: cmd_op REGISTER, sqe->addr an
 * iovec[2] = {header buffer (struct uring_req_header), payload buffer (>= max_write)},
 * sqe->len 2, and in sqe->cmd a struct uring_cmd_req naming the queue (qid = CPU). Once
 * every CPU's queue has an entry, the kernel sends requests through the ring (forgets and
 * interrupts still come through read(2) of /dev/fuse, which volfs's classic loop keeps
 * serving). A request arrives as the completion of an entry's command (res 0):
 * header.in_out = struct fuse_in_header, header.op_in = the op's first argument (e.g.
 * fuse_read_in; may be empty), payload = the other arguments (payload_sz bytes, e.g. the
 * data of a write or the name of a lookup), header.ent.commit_id = the request's unique.
 * The reply goes back in the same entry: header.in_out = struct fuse_out_header, payload =
 * the reply's arguments, header.ent.payload_sz their size, then cmd_op COMMIT_AND_FETCH
 * with commit_id, which also hands the entry back for the next request.
 *
 * libfuse 3.14 keeps parsing and replying: serve() rebuilds the request as read(2) would
 * have returned it (in header, op_in, payload in one buffer: the headers are copied into
 * the PREFIX bytes in front of the payload, which stays in place) for
 * fuse_session_process_buf, and volfs's custom-io writev gives every reply to
 * furing_reply first, which claims the replies whose unique is held by an entry. No
 * payload is copied in user space: a write's data is used where the kernel put it
 * (furing_owns), and a read is read straight into the entry's payload (furing_payload),
 * which stays the request's until its reply is committed.
 *
 * Threads: one ring thread creates the ring (SINGLE_ISSUER, DEFER_TASKRUN: every
 * submission and every kernel task_work of the ring happens on it), registers the
 * entries and then serves requests. A reply made on the ring thread (errors, metadata,
 * and the cached reads and small writes blockdev/ completes at once) is queued as an SQE
 * and submitted with the next wait: one io_uring_enter commits a batch and fetches the
 * next. A reply from another thread (an engine completion) is written into its entry,
 * which is pushed on fr->commits (a lock-free stack; the ring thread takes it whole), and
 * the pusher that found the stack empty wakes the ring thread through an eventfd the ring
 * always has a read armed on. An entry holds one request at a time, so there is at most
 * one SQE per entry plus the eventfd read: the SQ never fills.
 *
 * Teardown: volfs_unmount stops the ring only after the connection is gone and no request
 * is pending; furing_stop sets fr->stop and kicks the eventfd; the ring thread leaves its
 * loop and exits the ring, which cancels the entries' commands.
 */
#include "fuse/furing_i.h"
#include "common/common.h"

#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <liburing.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/sysinfo.h>
#include <unistd.h>

/* The kernel's UAPI (include/uapi/linux/fuse.h, protocol 7.42); Debian 12's headers
 * predate it. */
struct uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};

struct uring_req_header {
	char in_out[128];
	char op_in[128];
	struct uring_ent_in_out ent;
};

struct uring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

enum { CMD_REGISTER = 1, CMD_COMMIT_AND_FETCH = 2 };

_Static_assert(sizeof(struct uring_req_header) == 288, "fuse_uring_req_header");
_Static_assert(sizeof(struct uring_cmd_req) == 24, "fuse_uring_cmd_req");

struct fent {
	struct furing *fr;
	unsigned qid;
	struct uring_req_header *hdr;
	char *mem;     /* PREFIX bytes, then the payload buffer the kernel fills */
	char *payload; /* mem + PREFIX */
	struct iovec iov[2];
	_Atomic uint64_t unique; /* the request held and not answered yet; 0: none */
	uint64_t commit;	 /* the unique to commit (ring thread) */
	int last_cmd;		 /* to resubmit after -EINTR/-EAGAIN */
	struct fent *next;	 /* on fr->commits */
};

struct furing {
	struct fuse_session *se;
	int devfd, efd;
	struct io_uring ring;
	pthread_t thread;
	size_t max_payload;
	unsigned nq, depth, n;
	struct fent *ents;
	_Atomic(struct fent *) commits;
	atomic_bool stop;
	atomic_ulong served;
	uint64_t efd_val;
	sem_t started, go;
	int start_err;
};

/* Room before each payload for the request's headers, so that serve() can hand libfuse
 * the request in one piece without copying the payload (a write's data stays where the
 * kernel put it). */
#define PREFIX 4096

static _Thread_local struct furing *ring_self;
static _Thread_local struct fent *ring_cur; /* the entry serve() is handing to libfuse */

bool furing_kernel_enabled(bool enable)
{
	const char *path = "/sys/module/fuse/parameters/enable_uring";
	char c = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return false;
	if (read(fd, &c, 1) != 1)
		c = 0;
	close(fd);
	if (c == 'Y' || !enable)
		return c == 'Y';
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (write(fd, "1", 1) != 1)
		log_warn("cannot turn on %s: %s", path, strerror(errno));
	close(fd);
	return furing_kernel_enabled(false);
}

static struct io_uring_sqe *get_sqe(struct furing *fr)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&fr->ring);

	if (!sqe) { /* cannot happen (see the design notes), but never drop a reply */
		io_uring_submit(&fr->ring);
		sqe = io_uring_get_sqe(&fr->ring);
	}
	return sqe;
}

static void prep_cmd(struct furing *fr, struct fent *e, int cmd)
{
	struct io_uring_sqe *sqe = get_sqe(fr);
	struct uring_cmd_req *req;

	if (!sqe) {
		log_err("fuse ring: no SQE for an entry; it is lost");
		return;
	}
	memset(sqe, 0, 2 * sizeof(*sqe)); /* SQE128 */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fr->devfd;
	sqe->cmd_op = (uint32_t)cmd;
	io_uring_sqe_set_data(sqe, e);
	req = (struct uring_cmd_req *)sqe->cmd;
	req->qid = (uint16_t)e->qid;
	if (cmd == CMD_REGISTER) {
		sqe->addr = (uint64_t)(uintptr_t)e->iov;
		sqe->len = 2;
	} else {
		req->commit_id = e->commit;
	}
	e->last_cmd = cmd;
}

static void arm_efd(struct furing *fr)
{
	struct io_uring_sqe *sqe = get_sqe(fr);

	if (!sqe)
		return;
	io_uring_prep_read(sqe, fr->efd, &fr->efd_val, sizeof(fr->efd_val), 0);
	io_uring_sqe_set_data(sqe, &fr->efd_val);
}

static void drain_commits(struct furing *fr)
{
	struct fent *e = atomic_exchange(&fr->commits, NULL);

	while (e) {
		struct fent *next = e->next;
		prep_cmd(fr, e, CMD_COMMIT_AND_FETCH);
		e = next;
	}
}

/* Answer a request the ring handed us without involving libfuse (malformed entry). */
static void reply_error(struct furing *fr, struct fent *e, uint64_t unique, int err)
{
	struct fuse_out_header *oh = (struct fuse_out_header *)e->hdr->in_out;

	oh->len = sizeof(*oh);
	oh->error = -err;
	oh->unique = unique;
	e->hdr->ent.payload_sz = 0;
	e->commit = unique;
	prep_cmd(fr, e, CMD_COMMIT_AND_FETCH);
}

static void serve(struct furing *fr, struct fent *e)
{
	const struct fuse_in_header *in = (const struct fuse_in_header *)e->hdr->in_out;
	size_t psz = e->hdr->ent.payload_sz;
	size_t hsz = sizeof(*in), opsz;
	char *start;

	if (psz > fr->max_payload || in->len < hsz + psz ||
	    (opsz = in->len - hsz - psz) > sizeof(e->hdr->op_in)) {
		log_err("fuse ring: malformed request (opcode %u, len %u, payload %zu)",
			in->opcode, in->len, psz);
		return reply_error(fr, e, in->unique, EIO);
	}
	start = e->payload - hsz - opsz;
	memcpy(start, in, hsz);
	memcpy(start + hsz, e->hdr->op_in, opsz);
	e->commit = in->unique;
	atomic_store(&e->unique, in->unique);
	atomic_fetch_add_explicit(&fr->served, 1, memory_order_relaxed);
	struct fuse_buf fb = {.size = hsz + opsz + psz, .mem = start};
	log_debug("fuse ring: entry %td: opcode %u unique %llu", e - fr->ents, in->opcode,
		  (unsigned long long)in->unique);
	ring_cur = e;
	fuse_session_process_buf(fr->se, &fb);
	ring_cur = NULL;
}

void *furing_payload(size_t size)
{
	struct fent *e = ring_cur;

	return e && size <= e->fr->max_payload ? e->payload : NULL;
}

bool furing_owns(const void *p)
{
	return ring_cur && p == ring_cur->payload;
}

bool furing_reply(struct furing *fr, const struct iovec *iov, int count, ssize_t *ret)
{
	const struct fuse_out_header *out = iov[0].iov_base;
	struct fent *e = NULL;
	size_t len = 0;

	if (!fr || iov[0].iov_len < sizeof(*out) || !out->unique)
		return false;
	for (unsigned i = 0; i < fr->n; i++) {
		if (atomic_load_explicit(&fr->ents[i].unique, memory_order_acquire) == out->unique) {
			e = &fr->ents[i];
			break;
		}
	}
	if (!e) {
		log_debug("fuse ring: reply %llu is not the ring's", (unsigned long long)out->unique);
		return false;
	}
	log_debug("fuse ring: reply %llu to entry %td (%s)", (unsigned long long)out->unique,
		  e - fr->ents, ring_self == fr ? "inline" : "pushed");
	struct fuse_out_header *oh = (struct fuse_out_header *)e->hdr->in_out;
	oh->error = out->error;
	for (int i = 1; i < count; i++) {
		if (len + iov[i].iov_len > fr->max_payload) {
			oh->error = -EIO;
			len = 0;
			break;
		}
		if (iov[i].iov_base != e->payload + len) /* else read into place already */
			memcpy(e->payload + len, iov[i].iov_base, iov[i].iov_len);
		len += iov[i].iov_len;
	}
	oh->len = (uint32_t)(sizeof(*oh) + len);
	oh->unique = out->unique;
	e->hdr->ent.payload_sz = (uint32_t)len;
	*ret = (ssize_t)(sizeof(*oh) + len);
	atomic_store_explicit(&e->unique, 0, memory_order_release);
	if (ring_self == fr) {
		prep_cmd(fr, e, CMD_COMMIT_AND_FETCH);
		return true;
	}
	e->next = atomic_load(&fr->commits);
	while (!atomic_compare_exchange_weak(&fr->commits, &e->next, e))
		;
	if (!e->next && eventfd_write(fr->efd, 1) < 0)
		log_err("fuse ring: eventfd: %s", strerror(errno));
	return true;
}

/* Create the ring and register every entry; 0 once the kernel took them all. */
static int ring_setup(struct furing *fr)
{
	struct io_uring_params p = {0};
	unsigned sq = 4;
	int ret;

	while (sq < 2 * (fr->n + 1))
		sq *= 2;
	p.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	ret = io_uring_queue_init_params(sq, &fr->ring, &p);
	if (ret < 0)
		return ret;
	arm_efd(fr);
	for (unsigned i = 0; i < fr->n; i++)
		prep_cmd(fr, &fr->ents[i], CMD_REGISTER);
	ret = io_uring_submit(&fr->ring);
	if (ret >= 0 && (unsigned)ret != fr->n + 1)
		ret = -EIO;
	if (ret >= 0) {
		struct io_uring_cqe *cqe;
		ret = 0;
		/* a registration the kernel refused completes at once */
		if (io_uring_peek_cqe(&fr->ring, &cqe) == 0) {
			ret = cqe->res < 0 ? cqe->res : -EPROTO;
			log_err("fuse ring: registration failed: %s", strerror(-ret));
		}
	}
	if (ret < 0)
		io_uring_queue_exit(&fr->ring);
	return ret;
}

static void *ring_thread(void *arg)
{
	struct furing *fr = arg;

	ring_self = fr;
	fr->start_err = ring_setup(fr);
	sem_post(&fr->started);
	if (fr->start_err)
		return NULL;
	/* The kernel may have handed us a request already; serve it only once furing_start
	 * has published the ring, or its reply would not find its entry. */
	sem_wait(&fr->go);
	while (!atomic_load(&fr->stop)) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		bool kicked = false;
		int ret = io_uring_submit_and_wait(&fr->ring, 1);

		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			log_err("fuse ring: io_uring_enter: %s", strerror(-ret));
			break;
		}
		io_uring_for_each_cqe(&fr->ring, head, cqe) {
			void *ud = io_uring_cqe_get_data(cqe);
			seen++;
			if (ud == &fr->efd_val) {
				kicked = true;
				continue;
			}
			struct fent *e = ud;
			if (cqe->res == 0)
				serve(fr, e);
			else if (cqe->res == -EINTR || cqe->res == -EAGAIN)
				prep_cmd(fr, e, e->last_cmd);
			else /* -ENOTCONN: the connection is gone; the entry stays idle */
				log_debug("fuse ring: entry %td ended: %d", e - fr->ents, cqe->res);
		}
		io_uring_cq_advance(&fr->ring, seen);
		if (kicked)
			arm_efd(fr);
		drain_commits(fr);
	}
	io_uring_queue_exit(&fr->ring);
	return NULL;
}

static void furing_free(struct furing *fr)
{
	for (unsigned i = 0; fr->ents && i < fr->n; i++) {
		free(fr->ents[i].hdr);
		free(fr->ents[i].mem);
	}
	free(fr->ents);
	if (fr->efd >= 0)
		close(fr->efd);
	sem_destroy(&fr->started);
	sem_destroy(&fr->go);
	free(fr);
}

int furing_start(struct fuse_session *se, int devfd, size_t max_payload, unsigned depth,
		 _Atomic(struct furing *) *out)
{
	struct furing *fr = calloc(1, sizeof(*fr));
	int ret = -ENOMEM;

	if (!fr)
		return -ENOMEM;
	fr->se = se;
	fr->devfd = devfd;
	fr->max_payload = max_payload;
	fr->nq = (unsigned)get_nprocs_conf(); /* the kernel has a queue per possible CPU */
	fr->depth = depth;
	fr->n = fr->nq * depth;
	sem_init(&fr->started, 0, 0);
	sem_init(&fr->go, 0, 0);
	fr->efd = eventfd(0, EFD_CLOEXEC);
	fr->ents = calloc(fr->n, sizeof(*fr->ents));
	if (fr->efd < 0 || !fr->ents)
		goto fail;
	for (unsigned i = 0; i < fr->n; i++) {
		struct fent *e = &fr->ents[i];
		e->fr = fr;
		e->qid = i / depth;
		if (posix_memalign((void **)&e->hdr, 4096, 4096) ||
		    posix_memalign((void **)&e->mem, 4096, PREFIX + max_payload))
			goto fail;
		e->payload = e->mem + PREFIX;
		memset(e->hdr, 0, 4096);
		e->iov[0] = (struct iovec){e->hdr, sizeof(*e->hdr)};
		e->iov[1] = (struct iovec){e->payload, max_payload};
	}
	ret = -pthread_create(&fr->thread, NULL, ring_thread, fr);
	if (ret)
		goto fail;
	sem_wait(&fr->started);
	ret = fr->start_err;
	if (ret) {
		pthread_join(fr->thread, NULL);
		goto fail;
	}
	atomic_store(out, fr);
	sem_post(&fr->go);
	return 0;
fail:
	furing_free(fr);
	return ret;
}

void furing_stop(struct furing *fr)
{
	if (!fr)
		return;
	atomic_store(&fr->stop, true);
	if (eventfd_write(fr->efd, 1) < 0)
		log_err("fuse ring: eventfd: %s", strerror(errno));
	pthread_join(fr->thread, NULL);
	furing_free(fr);
}

unsigned long furing_served(struct furing *fr)
{
	return fr ? atomic_load(&fr->served) : 0;
}
