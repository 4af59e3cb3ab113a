/* SPDX-License-Identifier: MIT */
/*
 * volfs.c - FUSE low-level frontend: one regular file per volume in a flat directory.
 *
 * Design notes
 * ------------
 * FUSE_THREADS (2) threads serve /dev/fuse: libfuse's multi-threaded loop, each thread on
 * its own cloned fd (clone_fd). Data handlers (read, write, fsync, fallocate) never wait
 * for the disk: they hand the request to blockdev/ and return; the volume's completion, on
 * an engine thread, sends the reply. blockdev/ may complete a read the page cache holds, or
 * a small page-aligned write (a copy into the page cache, blk_try_now in blk_engine.h), at
 * once on the serving thread: the callback then replies before the handler returns. Such a
 * write can wait briefly (dirty-page throttling, the host journal) and holds up the requests
 * behind it on that thread meanwhile, so a second thread keeps reading the queue. Measured
 * against one thread (bench/ab.py, 2 CPUs, median of per-round ratios): via loop rw4k QD32
 * 1.08x, rr4k 1.05x, mix 1.05x, 1 MiB reads 1.47x and writes 1.15x; on the FUSE file rr4k
 * QD1 1.73x, rr4k 1.26x, rw4k 1.28x, 1 MiB writes 0.88x; 4 threads did no better than 2
 * (rw4k 0.87x of 2 on the file). Early in the project (PERF-NOTES) one thread had been
 * fastest, when every write still went through the engine. vol_* are thread-safe (v->lock),
 * the inode table is under fs->lock and the request pool under fs->pool_lock, so handlers
 * may run on both threads at once. Ordering is the block layer's: requests in flight
 * together have no order, and an fsync covers the writes acknowledged before it was sent,
 * which were handed to the volume before their reply. Handing a small buffered write
 * to io_uring instead cost 35% more daemon CPU per 4 KiB write (ext4 sends every buffered
 * write through an io-wq worker). So every request is answered exactly once, either inline
 * (errors, metadata, cached reads, small writes) or from the completion callback.
 * fuse_reply_* is safe from any thread.
 *
 * Valid replies per op: lookup -> entry|err; getattr -> attr|err; open -> open|err;
 * read -> buf|err; write -> write|err; fsync/flush/release/fallocate -> err (0 = ok);
 * readdir -> buf|err; statfs -> statfs; setattr -> attr|err.
 *
 * Files are opened with FOPEN_DIRECT_IO: no page cache between the kernel and us, so an
 * fsync reaches vol_flush with every acknowledged write already handed to the volume.
 * Writes are copied out of libfuse's receive buffer (it is reused once the handler returns)
 * into a sector-aligned buffer that the volume may encrypt in place.
 *
 * Transports (volfs_mount): /dev/fuse, or FUSE over io_uring (fuse/furing.c). The latter
 * goes through libfuse's custom io: io_read notes the FUSE_INIT request, io_writev asks for
 * io_uring in its reply and starts the ring, and hands every later reply to furing_reply
 * first. The ring thread then serves the requests (the classic loop, one thread with this
 * transport, still reads forgets and interrupts), and a
 * read or write whose request came from the ring uses the ring entry's payload as its
 * buffer instead of copying (ioreq->data).
 *
 * Request pool: a serving thread allocates a struct ioreq (and its aligned data buffer) per
 * read or write, and an engine thread (or the serving thread itself) frees it after the
 * reply; glibc then serialises the threads on its arena lock (about 10% of the daemon's CPU
 * at 4k QD32). Finished requests are pushed instead on fs->pool_ret, a lock-free stack any
 * thread may push to; takers hold fs->pool_lock (uncontended but for the two serving
 * threads), and take the whole stack at once (atomic exchange) into the list fs->pool, so
 * there is no ABA. Buffers up to POOL_BUF_MAX stay with
 * their ioreq; at most POOL_MAX requests are kept; the rest are freed at unmount.
 *
 * Inode table: fs->files, guarded by fs->lock (the control thread adds and removes, the
 * FUSE thread looks up). Inode numbers are never reused within a mount. A file that is open
 * cannot be removed (volfs_remove -> -EBUSY), so no I/O is in flight on a removed volume.
 *
 * Unmount (found with TSan): the mount is detached with umount2(MNT_DETACH) and the loop
 * thread joined *before* libfuse closes /dev/fuse (fuse_session_unmount): closing it while
 * the loop still reads it could hand the fd number to another file under the read. Then
 * volfs_unmount waits for fs->pending, the requests handed to blockdev/ and not answered
 * yet (a flush completing on an engine thread), before fuse_session_destroy: a reply
 * after the destroy would use the freed session.
 */
#include "fuse/volfs.h"
#include "blockdev/blockdev.h"
#include "fuse/furing_i.h"
#include "common/common.h"

#define FUSE_USE_VERSION 312 /* fuse_session_loop_mt with fuse_loop_cfg_* */
#include <fuse_lowlevel.h>
#include <linux/fuse.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define MAX_IO (1u << 20)
#define FUSE_THREADS 2 /* threads serving /dev/fuse (see the notes) */
#define ATTR_TIMEOUT 1.0
#define POOL_MAX 512		    /* requests kept for reuse */
#define POOL_BUF_MAX (128u << 10) /* larger buffers are not kept */
#define RING_DEPTH 16		    /* io_uring transport: entries per CPU queue */

struct vfile {
	char name[ID_MAX];
	fuse_ino_t ino;
	struct vol *vol;
	int nopen;
	struct vfile *next;
};

struct ioreq {
	fuse_req_t req;
	void *data; /* the I/O's bytes: buf, or a FUSE ring entry's payload */
	void *buf;
	size_t cap; /* bytes at buf (0: no buffer) */
	struct ioreq *next;
};

struct volfs {
	struct fuse_session *se;
	pthread_t thread;
	bool running;
	pthread_mutex_t lock;
	struct vfile *files;
	fuse_ino_t next_ino;
	char mountpoint[4096];
	dev_t dev; /* the mount's st_dev: its minor names the connection in fusectl */
	atomic_int pending; /* requests handed to blockdev/, not answered yet */
	struct ioreq *pool;		   /* under pool_lock */
	_Atomic(struct ioreq *) pool_ret;  /* pushed by any thread */
	atomic_int pool_n;		   /* requests in pool + pool_ret (approximate bound) */
	pthread_mutex_t pool_lock;	   /* serving threads take from the pool */
	bool uring;			   /* io_uring transport asked for */
	uint64_t init_unique;		   /* its FUSE_INIT request (0: not seen/offered) */
	_Atomic(struct furing *) ring;	   /* set once the kernel took the ring */
};

/* A request with a 4 KiB-aligned buffer of at least size bytes (the thread serving
 * requests; with the io_uring transport two threads may, hence fs->pool_lock). */
static struct ioreq *ioreq_get(struct volfs *fs, size_t size)
{
	struct ioreq *r;

	pthread_mutex_lock(&fs->pool_lock);
	r = fs->pool;
	if (!r) {
		r = atomic_exchange(&fs->pool_ret, NULL);
		fs->pool = r;
	}
	if (r)
		fs->pool = r->next;
	pthread_mutex_unlock(&fs->pool_lock);
	if (r) {
		atomic_fetch_sub(&fs->pool_n, 1);
	} else {
		r = calloc(1, sizeof(*r));
		if (!r)
			return NULL;
	}
	if (r->cap < size) {
		size_t cap = (size + 4095) & ~(size_t)4095;
		free(r->buf);
		r->buf = NULL;
		r->cap = 0;
		if (posix_memalign(&r->buf, 4096, cap)) {
			r->buf = NULL;
			free(r);
			return NULL;
		}
		r->cap = cap;
	}
	return r;
}

/* Give a finished request back (any thread). */
static void ioreq_put(struct volfs *fs, struct ioreq *r)
{
	if (atomic_fetch_add(&fs->pool_n, 1) >= POOL_MAX) {
		atomic_fetch_sub(&fs->pool_n, 1);
		free(r->buf);
		free(r);
		return;
	}
	if (r->cap > POOL_BUF_MAX) {
		free(r->buf);
		r->buf = NULL;
		r->cap = 0;
	}
	r->next = atomic_load(&fs->pool_ret);
	while (!atomic_compare_exchange_weak(&fs->pool_ret, &r->next, r))
		;
}

static void pool_free(struct ioreq *r)
{
	while (r) {
		struct ioreq *next = r->next;
		free(r->buf);
		free(r);
		r = next;
	}
}

/* A request is handed to blockdev/, which answers it from a completion. */
static void pending_get(fuse_req_t req)
{
	struct volfs *fs = fuse_req_userdata(req);

	atomic_fetch_add(&fs->pending, 1);
}

/* Called by that completion once it has replied (fs taken before the reply frees req). */
static void pending_put(struct volfs *fs)
{
	atomic_fetch_sub(&fs->pending, 1);
}

static struct vfile *find_ino(struct volfs *fs, fuse_ino_t ino)
{
	for (struct vfile *f = fs->files; f; f = f->next)
		if (f->ino == ino)
			return f;
	return NULL;
}

static struct vfile *find_name(struct volfs *fs, const char *name)
{
	for (struct vfile *f = fs->files; f; f = f->next)
		if (!strcmp(f->name, name))
			return f;
	return NULL;
}

static void fill_attr(struct stat *st, fuse_ino_t ino, uint64_t size)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0700;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
		st->st_size = (off_t)size;
		st->st_blocks = (blkcnt_t)(size / 512);
	}
	st->st_blksize = 4096;
}

/* Look up ino and return its volume (NULL: not found); if sizep, also its size. */
static struct vol *ino_vol(struct volfs *fs, fuse_ino_t ino)
{
	struct vfile *f;
	struct vol *v;

	pthread_mutex_lock(&fs->lock);
	f = find_ino(fs, ino);
	v = f ? f->vol : NULL;
	pthread_mutex_unlock(&fs->lock);
	return v;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = MAX_IO;
	conn->max_read = MAX_IO;
	conn->max_readahead = MAX_IO;
	conn->max_background = 256;
	conn->congestion_threshold = 192;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct fuse_entry_param e;
	struct vfile *f;

	if (parent != FUSE_ROOT_ID)
		return (void)fuse_reply_err(req, ENOENT);
	memset(&e, 0, sizeof(e));
	pthread_mutex_lock(&fs->lock);
	f = find_name(fs, name);
	if (f) {
		e.ino = f->ino;
		fill_attr(&e.attr, f->ino, vol_size(f->vol));
	}
	pthread_mutex_unlock(&fs->lock);
	if (!f)
		return (void)fuse_reply_err(req, ENOENT);
	e.attr_timeout = ATTR_TIMEOUT;
	e.entry_timeout = ATTR_TIMEOUT;
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct stat st;
	struct vol *v = NULL;

	(void)fi;
	if (ino != FUSE_ROOT_ID && !(v = ino_vol(fs, ino)))
		return (void)fuse_reply_err(req, ENOENT);
	fill_attr(&st, ino, v ? vol_size(v) : 0);
	fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct vol *v = ino_vol(fs, ino);
	struct stat st;

	(void)fi;
	if (!v)
		return (void)fuse_reply_err(req, ENOENT);
	/* a volume's size changes only through modify-volume; mode/owner are fixed */
	if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != vol_size(v))
		return (void)fuse_reply_err(req, EPERM);
	if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))
		return (void)fuse_reply_err(req, EPERM);
	fill_attr(&st, ino, vol_size(v));
	fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	char *buf;
	size_t used = 0;
	off_t i = 0;

	(void)fi;
	if (ino != FUSE_ROOT_ID)
		return (void)fuse_reply_err(req, ENOTDIR);
	buf = malloc(size);
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);
	pthread_mutex_lock(&fs->lock);
	/* entries: ".", "..", then the files in list order; off = index of the next one */
	const char *dots[] = {".", ".."};
	for (; i < 2; i++) {
		if (i < off)
			continue;
		struct stat st = {.st_ino = FUSE_ROOT_ID, .st_mode = S_IFDIR};
		size_t n = fuse_add_direntry(req, buf + used, size - used, dots[i], &st, i + 1);
		if (n > size - used)
			goto full;
		used += n;
	}
	for (struct vfile *f = fs->files; f; f = f->next, i++) {
		if (i < off)
			continue;
		struct stat st = {.st_ino = f->ino, .st_mode = S_IFREG};
		size_t n = fuse_add_direntry(req, buf + used, size - used, f->name, &st, i + 1);
		if (n > size - used)
			goto full;
		used += n;
	}
full:
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct vfile *f;

	pthread_mutex_lock(&fs->lock);
	f = find_ino(fs, ino);
	if (f)
		f->nopen++;
	pthread_mutex_unlock(&fs->lock);
	if (!f)
		return (void)fuse_reply_err(req, ENOENT);
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fi->nonseekable = 0;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		/* the opener was interrupted: release will not come */
		pthread_mutex_lock(&fs->lock);
		f = find_ino(fs, ino);
		if (f)
			f->nopen--;
		pthread_mutex_unlock(&fs->lock);
	}
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct vfile *f;

	(void)fi;
	pthread_mutex_lock(&fs->lock);
	f = find_ino(fs, ino);
	if (f && f->nopen > 0)
		f->nopen--;
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_err(req, 0);
}

/* Block-device semantics at the edge: a chunk whose stored copy fails its hash check
 * (-EBADMSG) is an I/O error to the reader, never wrong bytes. */
static int edge_errno(int res)
{
	return res == -EBADMSG || res == -EUCLEAN ? EIO : -res;
}

static void read_done(void *arg, int res)
{
	struct ioreq *r = arg;
	struct volfs *fs = fuse_req_userdata(r->req);

	if (res < 0)
		fuse_reply_err(r->req, edge_errno(res));
	else
		fuse_reply_buf(r->req, r->data, (size_t)res);
	ioreq_put(fs, r);
	pending_put(fs);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct vol *v = ino_vol(fs, ino);
	struct ioreq *r;
	uint64_t vsize;

	(void)fi;
	if (!v)
		return (void)fuse_reply_err(req, ENOENT);
	vsize = vol_size(v);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	if ((uint64_t)off >= vsize || !size)
		return (void)fuse_reply_buf(req, NULL, 0);
	size = (size_t)MIN((uint64_t)size, vsize - (uint64_t)off);
	void *p = furing_payload(size);
	r = ioreq_get(fs, p ? 0 : size);
	if (!r)
		return (void)fuse_reply_err(req, ENOMEM);
	r->data = p ? p : r->buf;
	r->req = req;
	pending_get(req);
	vol_read(v, r->data, size, (uint64_t)off, read_done, r);
}

static void write_done(void *arg, int res)
{
	struct ioreq *r = arg;
	struct volfs *fs = fuse_req_userdata(r->req);

	if (res < 0)
		fuse_reply_err(r->req, edge_errno(res));
	else
		fuse_reply_write(r->req, (size_t)res);
	ioreq_put(fs, r);
	pending_put(fs);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct vol *v = ino_vol(fs, ino);
	struct ioreq *r;

	(void)fi;
	if (!v)
		return (void)fuse_reply_err(req, ENOENT);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	if ((uint64_t)off + size > vol_size(v))
		return (void)fuse_reply_err(req, ENOSPC); /* a block device does not grow */
	bool inplace = furing_owns(buf); /* a ring payload: aligned, ours until the reply */
	r = ioreq_get(fs, inplace ? 0 : (size ? size : 1));
	if (!r)
		return (void)fuse_reply_err(req, ENOMEM);
	r->data = inplace ? (void *)buf : r->buf;
	if (!inplace)
		memcpy(r->buf, buf, size);
	r->req = req;
	pending_get(req);
	vol_write(v, r->data, size, (uint64_t)off, write_done, r);
}

static void status_done(void *arg, int res)
{
	struct volfs *fs = fuse_req_userdata((fuse_req_t)arg);

	fuse_reply_err((fuse_req_t)arg, res < 0 ? edge_errno(res) : 0);
	pending_put(fs);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct vol *v = ino_vol(fs, ino);

	(void)datasync;
	(void)fi;
	if (!v)
		return (void)fuse_reply_err(req, ENOENT);
	pending_get(req);
	vol_flush(v, status_done, req);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	/* close(2): nothing is cached here, and close does not promise durability */
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct vol *v = ino_vol(fs, ino);
	const int zero_modes = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;

	(void)fi;
	if (!v)
		return (void)fuse_reply_err(req, ENOENT);
	if (off < 0 || len <= 0)
		return (void)fuse_reply_err(req, EINVAL);
	if ((uint64_t)off + (uint64_t)len > vol_size(v)) {
		/* past the end: a block device cannot grow */
		return (void)fuse_reply_err(req, (mode & FALLOC_FL_KEEP_SIZE) ? EINVAL : ENOSPC);
	}
	if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE)
		return (void)fuse_reply_err(req, 0); /* allocation: the volume is all there */
	if ((mode & ~zero_modes) || ((mode & FALLOC_FL_PUNCH_HOLE) && !(mode & FALLOC_FL_KEEP_SIZE)))
		return (void)fuse_reply_err(req, EOPNOTSUPP);
	pending_get(req);
	vol_discard(v, (uint64_t)off, (uint64_t)len, status_done, req);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct volfs *fs = fuse_req_userdata(req);
	struct statvfs sv;

	(void)ino;
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_namemax = 255;
	pthread_mutex_lock(&fs->lock);
	for (struct vfile *f = fs->files; f; f = f->next) {
		sv.f_blocks += vol_size(f->vol) / 4096;
		sv.f_files++;
	}
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops volfs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readdir = op_readdir,
	.open = op_open,
	.release = op_release,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.fsync = op_fsync,
	.fallocate = op_fallocate,
	.statfs = op_statfs,
};

/* The file-system type mounted at path ("" if none) and its device number (the last
 * mount there: the one on top). path must be canonical (no symlinks, no ..): a dead mount
 * cannot be resolved, and a live FUSE mount cannot be asked before it answers FUSE_INIT. */
static void mount_info(const char *real, char type[64], dev_t *dev)
{
	char line[8192];
	FILE *f;

	type[0] = 0;
	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		/* id parent major:minor root mountpoint options [optional...] - fstype ... */
		char mnt[4096], *dash;
		unsigned maj, min;
		if (sscanf(line, "%*s %*s %u:%u %*s %4095s", &maj, &min, mnt) != 3 ||
		    strcmp(mnt, real))
			continue;
		if (dev)
			*dev = makedev(maj, min);
		dash = strstr(line, " - ");
		if (dash && sscanf(dash + 3, "%63s", type) != 1)
			type[0] = 0;
	}
	fclose(f);
}

/* Abort the kernel connection (fusectl), failing whatever the kernel still sends. */
static void conn_abort(dev_t dev)
{
	const char *dir = "/sys/fs/fuse/connections";
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%u/abort", dir, minor(dev));
	if (access(path, W_OK) < 0)
		mount("fusectl", dir, "fusectl", 0, NULL);
	f = fopen(path, "we");
	if (!f) {
		log_warn("cannot abort FUSE connection %u: %s", minor(dev), strerror(errno));
		return;
	}
	fputs("1", f);
	fclose(f);
}

/* Custom io of the io_uring transport: plain read/writev of /dev/fuse, except that the
 * FUSE_INIT reply asks for io_uring (when the kernel offered it) and replies to requests
 * that came from the ring go back through it. */
static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	struct volfs *fs = userdata;
	ssize_t n = read(fd, buf, len);
	const struct fuse_in_header *in = buf;

	if (n >= (ssize_t)(sizeof(*in) + sizeof(struct fuse_init_in)) && in->opcode == FUSE_INIT &&
	    !fs->init_unique) {
		const struct fuse_init_in *ii = (const struct fuse_init_in *)(in + 1);
		int saved = errno;
		if ((ii->flags & FUSE_INIT_EXT) && (ii->flags2 & FURING_INIT_FLAGS2_BIT))
			fs->init_unique = in->unique;
		else
			log_warn("the kernel does not offer FUSE over io_uring: using /dev/fuse");
		errno = saved;
	}
	return n;
}

static ssize_t init_reply(struct volfs *fs, int fd, struct iovec *iov, int count)
{
	const struct fuse_out_header *oh = iov[0].iov_base;
	struct fuse_init_out io;
	ssize_t n;
	int ret;

	if (count != 2 || oh->error || iov[1].iov_len > sizeof(io) ||
	    iov[1].iov_len < offsetof(struct fuse_init_out, flags2) + sizeof(io.flags2))
		return writev(fd, iov, count);
	memcpy(&io, iov[1].iov_base, iov[1].iov_len);
	io.flags |= FUSE_INIT_EXT;
	io.flags2 |= FURING_INIT_FLAGS2_BIT;
	struct iovec v[2] = {iov[0], {&io, iov[1].iov_len}};
	n = writev(fd, v, 2);
	if (n < 0)
		return n;
	ret = furing_start(fs->se, fd, MAX_IO, RING_DEPTH, &fs->ring);
	if (ret) {
		/* the kernel now waits for the ring: fail the mount rather than hang it */
		log_err("FUSE over io_uring failed to start: %s", strerror(-ret));
		conn_abort(fs->dev);
	}
	return n;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct volfs *fs = userdata;
	const struct fuse_out_header *oh = iov[0].iov_base;
	ssize_t n;

	if (furing_reply(atomic_load(&fs->ring), iov, count, &n))
		return n;
	if (fs->init_unique && oh->unique == fs->init_unique)
		return init_reply(fs, fd, iov, count);
	return writev(fd, iov, count);
}

static const struct fuse_custom_io uring_io = {.read = io_read, .writev = io_writev};

static void *loop_thread(void *arg)
{
	struct volfs *fs = arg;
	/* with io_uring, this loop reads only forgets and interrupts (see the notes) */
	struct fuse_loop_config *cfg = fs->uring ? NULL : fuse_loop_cfg_create();

	if (!cfg) {
		fuse_session_loop(fs->se);
		return NULL;
	}
	fuse_loop_cfg_set_clone_fd(cfg, 1);
	fuse_loop_cfg_set_max_threads(cfg, FUSE_THREADS);
	fuse_loop_cfg_set_idle_threads(cfg, FUSE_THREADS);
	fuse_session_loop_mt(fs->se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return NULL;
}

int volfs_mount(const char *mountpoint, enum volfs_transport transport, struct volfs **out)
{
	char maxread[64];
	snprintf(maxread, sizeof(maxread), "-omax_read=%u", MAX_IO);
	char *argv[] = {"ebsimd", "-odefault_permissions", "-ofsname=ebsim",
			"-osubtype=ebsim", maxread, NULL};
	struct fuse_args args = FUSE_ARGS_INIT(5, argv);
	struct volfs *fs = calloc(1, sizeof(*fs));
	int ret;

	if (!fs)
		return -ENOMEM;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->pool_lock, NULL);
	fs->uring = transport == VOLFS_IO_URING;
	if (fs->uring && !furing_kernel_enabled(true)) {
		log_warn("the kernel has no FUSE over io_uring (fuse enable_uring): using /dev/fuse");
		fs->uring = false;
	}
	fs->next_ino = FUSE_ROOT_ID + 1;
	snprintf(fs->mountpoint, sizeof(fs->mountpoint), "%s", mountpoint);
	fs->se = fuse_session_new(&args, &volfs_ops, sizeof(volfs_ops), fs);
	fuse_opt_free_args(&args);
	if (!fs->se) {
		ret = -EIO;
		goto out_free;
	}
	if (fuse_session_mount(fs->se, mountpoint) != 0) {
		ret = -EIO;
		goto out_destroy;
	}
	if (fs->uring && fuse_session_custom_io(fs->se, &uring_io, fuse_session_fd(fs->se))) {
		ret = -EIO;
		goto out_unmount;
	}
	char type[64];
	mount_info(mountpoint, type, &fs->dev); /* its minor names the connection in fusectl */
	ret = -pthread_create(&fs->thread, NULL, loop_thread, fs);
	if (ret)
		goto out_unmount;
	fs->running = true;
	/* The first request: it waits for FUSE_INIT (and, with io_uring, for the ring). */
	struct stat st;
	if (stat(mountpoint, &st) < 0) {
		ret = -errno;
		log_err("the FUSE mount at %s does not answer: %s", mountpoint, strerror(-ret));
		volfs_unmount(fs);
		return ret;
	}
	*out = fs;
	return 0;
out_unmount:
	fuse_session_unmount(fs->se);
out_destroy:
	fuse_session_destroy(fs->se);
out_free:
	pthread_mutex_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->pool_lock);
	free(fs);
	return ret;
}

void volfs_unmount(struct volfs *fs)
{
	if (!fs)
		return;
	fuse_session_exit(fs->se);
	/* The (lazy) unmount ends the connection, and the loop's read of /dev/fuse returns
	 * ENODEV, once no file is open. A loop device may still hold one: then abort the
	 * connection, as the kernel would if we died. /dev/fuse stays open until the loop
	 * thread is joined (see the design notes). */
	if (umount2(fs->mountpoint, MNT_DETACH) < 0 && errno != EINVAL)
		log_warn("unmounting %s: %s", fs->mountpoint, strerror(errno));
	if (fs->running) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 2;
		if (pthread_timedjoin_np(fs->thread, NULL, &ts)) {
			log_warn("volumes still open at unmount: aborting the FUSE connection");
			conn_abort(fs->dev);
			pthread_join(fs->thread, NULL);
		}
	}
	for (int i = 0; atomic_load(&fs->pending); i++) {
		if (i == 5000)
			log_warn("waiting for %d FUSE request(s) still in blockdev/",
				 atomic_load(&fs->pending));
		usleep(1000);
	}
	struct furing *ring = atomic_load(&fs->ring);
	if (ring) {
		log_info("FUSE over io_uring served %lu requests", furing_served(ring));
		furing_stop(ring); /* before /dev/fuse closes: the ring holds commands on it */
	}
	fuse_session_unmount(fs->se); /* closes /dev/fuse; the mount is gone already */
	fuse_session_destroy(fs->se);
	pool_free(fs->pool);
	pool_free(atomic_load(&fs->pool_ret));
	while (fs->files) {
		struct vfile *f = fs->files;
		fs->files = f->next;
		free(f);
	}
	pthread_mutex_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->pool_lock);
	free(fs);
}

int volfs_add(struct volfs *fs, const char *name, struct vol *v)
{
	struct vfile *f;

	if (strlen(name) >= ID_MAX)
		return -ENAMETOOLONG;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	strcpy(f->name, name);
	f->vol = v;
	pthread_mutex_lock(&fs->lock);
	if (find_name(fs, name)) {
		pthread_mutex_unlock(&fs->lock);
		free(f);
		return -EEXIST;
	}
	f->ino = fs->next_ino++;
	/* append, so readdir offsets of existing entries stay stable */
	struct vfile **pp = &fs->files;
	while (*pp)
		pp = &(*pp)->next;
	*pp = f;
	pthread_mutex_unlock(&fs->lock);
	return 0;
}

int volfs_remove(struct volfs *fs, const char *name, int timeout_ms)
{
	struct vfile **pp, *f;
	int ret = -ENOENT;

	volfs_wait_closed(fs, name, timeout_ms); /* the check below decides */
	pthread_mutex_lock(&fs->lock);
	for (pp = &fs->files; (f = *pp); pp = &f->next) {
		if (strcmp(f->name, name))
			continue;
		if (f->nopen) {
			ret = -EBUSY;
			break;
		}
		*pp = f->next;
		free(f);
		ret = 0;
		break;
	}
	pthread_mutex_unlock(&fs->lock);
	if (!ret)
		fuse_lowlevel_notify_inval_entry(fs->se, FUSE_ROOT_ID, name, strlen(name));
	return ret;
}

int volfs_open_count(struct volfs *fs, const char *name)
{
	struct vfile *f;
	int n;

	pthread_mutex_lock(&fs->lock);
	f = find_name(fs, name);
	n = f ? f->nopen : 0;
	pthread_mutex_unlock(&fs->lock);
	return n;
}

int volfs_wait_closed(struct volfs *fs, const char *name, int timeout_ms)
{
	for (int waited = 0; volfs_open_count(fs, name) > 0; waited += 10) {
		if (waited >= timeout_ms)
			return -EBUSY;
		usleep(10000);
	}
	return 0;
}

void volfs_resized(struct volfs *fs, const char *name)
{
	struct vfile *f;
	fuse_ino_t ino = 0;

	pthread_mutex_lock(&fs->lock);
	f = find_name(fs, name);
	if (f)
		ino = f->ino;
	pthread_mutex_unlock(&fs->lock);
	if (!ino)
		return;
	fuse_lowlevel_notify_inval_inode(fs->se, ino, 0, 0);
	/* The kernel keeps the old i_size until someone asks again, and the loop driver
	 * (LOOP_SET_CAPACITY) reads i_size without asking: ask now. */
	char path[4200];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", fs->mountpoint, name);
	stat(path, &st);
}

int volfs_clear_stale(const char *path)
{
	char type[64];

	mount_info(path, type, NULL);
	if (!type[0])
		return 0;
	/* The caller holds the home's lock, so an ebsim mount here belongs to a daemon that
	 * died; anything else is someone else's and is left alone. (Its attributes may still
	 * answer stat() from the kernel's cache for a while: do not ask the mount.) */
	if (strcmp(type, "fuse.ebsim"))
		return -EBUSY;
	if (umount2(path, MNT_DETACH) < 0)
		return -errno;
	return 1;
}
