/* SPDX-License-Identifier: MIT */
/*
 * furing_i.h - FUSE over io_uring, private to fuse/ (used by volfs.c only).
 *
 * The kernel (6.14+, fuse module parameter enable_uring=1) can hand FUSE requests to the
 * server through io_uring commands on /dev/fuse instead of read(2)/writev(2): the server
 * registers ring entries (a header buffer and a payload buffer each) per CPU queue; the
 * kernel fills an entry with a request and completes its command; the server answers by
 * writing the reply into the same entry and sending COMMIT_AND_FETCH, which also re-arms
 * the entry. See furing.c for the protocol and the threading.
 *
 * libfuse 3.14 parses requests and builds replies (volfs's ops are unchanged); volfs.c
 * routes its custom-io writev through furing_reply, which takes the replies of requests
 * that came from the ring.
 */
#ifndef EBSIM_FURING_I_H
#define EBSIM_FURING_I_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

struct fuse_session;
struct furing;

/* FUSE_INIT flag bits (flags2 of fuse_init_in/out, with FUSE_INIT_EXT set in flags) */
#define FURING_INIT_FLAGS2_BIT (1u << 9) /* FUSE_OVER_IO_URING = 1ULL << 41 */

/* Is the kernel switch on? (/sys/module/fuse/parameters/enable_uring; tries to turn it on
 * when enable is true). */
bool furing_kernel_enabled(bool enable);

/* After the FUSE_INIT reply that asked for io_uring: start the ring thread, register
 * depth entries for each CPU queue and wait until the kernel took them; *out is set
 * before the first request is served (replies look the ring up there). 0, or -errno:
 * nothing is left running, and the kernel, told to use io_uring, holds every request
 * until the connection is aborted. */
int furing_start(struct fuse_session *se, int devfd, size_t max_payload, unsigned depth,
		 _Atomic(struct furing *) *out);
/* If iov is the reply to a request that came from the ring, send it there and return
 * true with *ret = bytes taken (or -errno); false: not ours, write it to /dev/fuse.
 * Any thread. */
bool furing_reply(struct furing *fr, const struct iovec *iov, int count, ssize_t *ret);
/* While a request from the ring is handed to volfs's ops (on the ring thread): its
 * entry's payload buffer, where a read may put its data to have it sent without a copy
 * (NULL if none or smaller than size); and whether p is that buffer (a write's data,
 * usable in place until the reply). The buffer is the request's until it is answered. */
void *furing_payload(size_t size);
bool furing_owns(const void *p);
/* Stop the ring thread and free the ring (after the connection is gone and no request
 * is pending). NULL is fine. */
void furing_stop(struct furing *fr);
/* Requests served through the ring so far (for tests and logs). */
unsigned long furing_served(struct furing *fr);

#endif
