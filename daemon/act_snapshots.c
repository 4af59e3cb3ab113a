/* SPDX-License-Identifier: MIT */
/*
 * act_snapshots.c - EBS snapshot actions: CreateSnapshot, DescribeSnapshots,
 * DeleteSnapshot, CopySnapshot, the EBS direct API listings (ListSnapshotBlocks,
 * ListChangedBlocks), InitializeVolume (hydration), and the store check.
 *
 * Design notes
 * ------------
 * CreateSnapshot: vol_snap_begin switches the volume's changed set (writes pause only for
 * that), the catalog gets a 'pending' row, and a job copies the captured chunks: each is
 * hashed and appended to a pack unless all-zero or already stored; unchanged chunks keep the
 * parent's entries. The copy is a two-stage pipeline: the job thread reads, zero-tests and
 * hashes each chunk into a ring of PUT_RING chunk buffers; a put thread appends them to the
 * pack (so the disk writes overlap the reads and SHA-256). A put error stops the reader;
 * the job joins the put thread before it commits. On a reflink file system (XFS, btrfs)
 * the job instead zero-tests, hashes and clones each run of consecutive chunks (one
 * store_pack_clone_raw per run) from vol_snap_next's callback, under the run's chunk locks,
 * so no data is copied and the pack holds exactly the hashed point-in-time bytes; the first
 * refusal (ext4) switches the rest of the snapshot to the put thread (see clone_fn). The
 * phases' times (and the bytes cloned, and in how many clone calls) go to the log. Then
 * store_pack_commit (the packs and their indexes durable: only what this snapshot wrote is
 * synced, never the whole file system) -> manifest_write -> catalog 'completed'. So a
 * 'completed' snapshot always has every chunk and its manifest on disk. A crash mid-copy
 * leaves the row 'pending'; snapshots_recover() turns it into 'error', and its volume's
 * next snapshot is full (volumes.changed_base is cleared), because the changed bits the
 * failed snapshot cleared may have been persisted.
 *
 * CopySnapshot: a job reads (and verifies) only the chunks the destination region's store
 * lacks, appends them to a pack there, commits it, then writes the manifest. A copy that
 * fails (a damaged source chunk, ENOSPC, a cancel, shutdown) reads 'error' and its chunks
 * are collected (job_finish), as a failed snapshot's are.
 *
 * Lineage: a snapshot's lineage is its parent's (or its own id for a full snapshot of a
 * volume not restored from one); a volume restored from S continues S's lineage. The direct
 * API listings work on 512 KiB blocks (EBS's BlockSize); a block is listed when any of its
 * chunks is non-zero (ListSnapshotBlocks) or differs (ListChangedBlocks).
 *
 * snapshot_start() and snapshot_copy_start() are the cores of CreateSnapshot and
 * CopySnapshot, shared with CreateImage and CopyImage (act_images.c). snapshot_abort()
 * undoes a started snapshot or copy whose request failed later (CreateImage, CopyImage),
 * or whose pending image is deregistered with its snapshots (DeregisterImage): it sets the
 * job's cancel flag (a snapshot stops at its next run, a copy at its next chunk,
 * -ECANCELED, as at shutdown), waits for the job with d->lock released (its end takes the
 * lock), then deletes the row ('error', or 'completed' when the copy won the race) and
 * collects the region. No second way to delete: the job's own failure path restores the
 * changed bits and drops changed_base (changed_base_drop, shared with snapshots_recover)
 * and asks for the GC of its chunks (job_finish, jobs.c), DeleteSnapshot's steps do the
 * rest.
 *
 * Snapshot visibility: the owning account, in the snapshot's region (snapshot_lookup);
 * restoring (create-volume, launch) also lets an account use a snapshot that backs an
 * image it may launch (snapshot_lookup_use in act_images.c). Delete and copy stay
 * owner-only.
 */
#include "daemon/daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GIB (1ull << 30)
#define DIRECT_BLOCK (512u << 10)

/* ---- JSON ------------------------------------------------------------------------------ */

static json_object *snapshot_json(struct daemon *d, const struct cat_snapshot *s)
{
	json_object *o = json_object_new_object();
	char progress[8];
	int pct = s->progress;
	struct job *j;

	if (!strcmp(s->state, "pending") &&
	    ((j = job_find(d, JOB_SNAPSHOT, s->id)) || (j = job_find(d, JOB_COPY, s->id))) &&
	    j->total)
		pct = (int)MIN(99, j->done * 100 / j->total);
	snprintf(progress, sizeof(progress), "%d%%", pct);
	json_object_object_add(o, "Description", json_object_new_string(s->description));
	json_object_object_add(o, "Encrypted", json_object_new_boolean(s->encrypted));
	json_object_object_add(o, "OwnerId", json_object_new_string(s->account));
	json_object_object_add(o, "Progress", json_object_new_string(progress));
	json_object_object_add(o, "SnapshotId", json_object_new_string(s->id));
	json_object_object_add(o, "StartTime", json_object_new_string(s->start_time));
	json_object_object_add(o, "State", json_object_new_string(s->state));
	if (s->state_message[0])
		json_object_object_add(o, "StateMessage", json_object_new_string(s->state_message));
	json_object_object_add(o, "VolumeId", json_object_new_string(s->volume_id));
	json_object_object_add(o, "VolumeSize", json_object_new_int64((int64_t)s->volume_size_gib));
	json_object_object_add(o, "StorageTier", json_object_new_string("standard"));
	json_object_object_add(o, "DataSize", json_object_new_int64((int64_t)s->data_size));
	if (s->parent[0])
		json_object_object_add(o, "ParentSnapshotId", json_object_new_string(s->parent));
	if (s->source[0])
		json_object_object_add(o, "SourceSnapshot", json_object_new_string(s->source));
	tags_add_json(d, o, s->id);
	return o;
}

int snapshot_lookup(struct api_req *r, const char *id, struct cat_snapshot *s)
{
	int ret;

	if (check_id(r, "snap", "InvalidSnapshot", id))
		return -1;
	ret = cat_snapshot_get(r->d->cat, id, s);
	if (ret == -ENOENT ||
	    (!ret && (strcmp(s->account, r->account) || strcmp(s->region, r->region))))
		return api_error(r, "InvalidSnapshot.NotFound", "The snapshot '%s' does not exist.",
				 id);
	if (ret)
		return api_error(r, "InternalError", "catalog read failed: %s", strerror(-ret));
	return 0;
}

/* ---- the snapshot job ------------------------------------------------------------------ */

struct snap_job {
	struct daemon *d;
	struct dvol *dv;
	struct vol_snap *vs;
	struct snap_store *store;
	struct manifest *parent; /* NULL for a full snapshot */
	struct manifest m;	 /* the new manifest's header */
	uint64_t total;
	uint64_t ns_read, ns_hash, ns_put, ns_commit, ns_manifest; /* time per phase (log) */
	uint64_t cloned;	 /* bytes that entered the pack as clones (log) */
	uint64_t clones;	 /* clone ioctls (runs) made (log) */
};

static int entry_cmp(const void *a, const void *b)
{
	const struct manifest_entry *x = a, *y = b;

	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	static const uint8_t zero[4096];

	for (size_t i = 0; i < n; i += sizeof(zero))
		if (memcmp(p + i, zero, MIN(sizeof(zero), n - i)))
			return false;
	return true;
}

/* Zero-test and hash a chunk as stored (buf; plain is scratch for the decryption of an
 * encrypted one): 1 when it reads as zeros, else 0 with id set, or -errno. */
static int chunk_hash(struct vol *v, uint64_t idx, const uint8_t *buf, uint8_t *plain,
		      size_t cs, uint8_t id[OBJ_ID_LEN])
{
	int ret;

	if (vol_encrypted(v)) {
		memcpy(plain, buf, cs);
		ret = vol_chunk_plaintext(v, idx, plain);
		if (ret)
			return ret;
	}
	if (all_zero(vol_encrypted(v) ? plain : buf, cs))
		return 1;
	return store_sha256(buf, cs, id);
}

/* The clone path (reflink file systems): vol_snap_next returns runs of up to RUN_MAX
 * consecutive chunks and calls clone_fn under all their locks, which clones the run's range
 * of the data file to the end of the pack with one ioctl (store_pack_clone_raw), so the
 * pack shares the point-in-time extents that buf holds. (One FICLONERANGE per 64 KiB chunk
 * cost ~0.45 s per GiB on XFS, half of a full snapshot; with runs, the 512 ioctls and the
 * per-chunk naming take ~0.11 s. A writer to a chunk of the run waits until the run is
 * cloned: at most one 2 MiB read and one ioctl.) The put thread then zero-tests and hashes
 * each chunk of buf, and the job thread, in chunk order, names each clone by its id
 * (store_pack_clone_finish: kept, or punched out when zero or already stored). So the
 * SHA-256 of one run overlaps the read and clone of the next, on the two threads; when the
 * ring is full the job thread hashes too (ring_help), so on two cores the hashing, the
 * largest part, is shared. (perf of a 1 GiB full snapshot on XFS after this: SHA-256 ~0.75
 * core-seconds, at 1.45 GB/s per core with SHA-NI, `openssl speed`; the pread out of the
 * page cache ~0.25; the clone ioctls a few ms. So two free cores give ~0.6 s, one ~1 s.
 * Hashing the data file's pages in place instead of the copy would need the run's locks
 * held during the hash, writers waiting that much longer.) The first refusal (-EOPNOTSUPP:
 * ext4, ...) turns the clone path off for the rest of the snapshot: that run and all later
 * ones are put (copied) by the put thread. Only the job thread uses the writer while the
 * clone path is on. */
enum { CL_NONE, CL_RAW, CL_PUT };

struct snap_clone {
	struct store_pack *pk;
	size_t cs;
	bool on, any, full;
	int res;     /* CL_* for the run just returned */
	uint64_t at; /* where it was cloned to */
	uint64_t cloned, ns_clone;
	uint64_t clones; /* clone_raw calls (one per run) */
};

static int clone_fn(void *arg, uint64_t idx, uint64_t n, void *buf, int fd, uint64_t off)
{
	struct snap_clone *c = arg;
	uint64_t t0 = time_mono_ns();
	int ret = store_pack_clone_raw(c->pk, fd, off, n * c->cs, &c->at);

	(void)idx;
	(void)buf;
	c->ns_clone += time_mono_ns() - t0;
	if (ret == -EOPNOTSUPP && !c->any) {
		log_info("snapshot: the store cannot clone from the volume's data file; copying");
		c->on = false;
		c->res = CL_PUT;
		return 0;
	}
	if (ret < 0)
		return ret;
	c->any = true;
	c->clones++;
	c->full = ret == 1;
	c->res = CL_RAW;
	return 0;
}

/* The put side of the copy pipeline: the job thread reads runs of chunks into consecutive
 * ring slots (one pread per run), tests and hashes them; a second thread appends them to
 * the pack, so the disk writes overlap the reads and SHA-256 (the two halves take about as
 * long each). On the clone path the put thread only zero-tests and hashes (slot.raw), and
 * the job thread helps with that while it has no free slots (ring_help). Slots are taken
 * in order (claim), finish in any order (done), and are freed in order (tail). The job
 * thread waits for RUN_MAX free slots (or the slab's end) before it reads the next run, so
 * that runs stay long when the hashing is the slower side. */
#define PUT_RING 128
#define RUN_MAX 32

struct put_ring {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct {
		uint8_t *buf;
		uint8_t id[OBJ_ID_LEN];
		bool raw;  /* clone path: only hash (zero: it is all zero) */
		bool zero; /* copy path: skip (the job thread found it all zero) */
		bool done;
		uint64_t idx, at;
	} slot[PUT_RING];
	uint64_t head, claim, tail; /* filled / taken / freed: tail <= claim <= head */
	bool done;	     /* no more slots will be filled */
	int err;	     /* the first put error */
	struct store_pack *pk;
	struct vol *v;
	uint8_t *plain;	     /* the put thread's decryption scratch */
	size_t cs;
	uint64_t new_bytes, ns_put, ns_hash;
};

/* Hash a raw slot (clone path): zero-test and SHA-256 into slot.id. */
static int slot_hash(struct put_ring *r, unsigned k, uint8_t *plain)
{
	int ret = chunk_hash(r->v, r->slot[k].idx, r->slot[k].buf, plain, r->cs, r->slot[k].id);

	r->slot[k].zero = ret == 1;
	return ret == 1 ? 0 : ret;
}

/* Under r->lock: slot k is processed; free the finished prefix. */
static void slot_done(struct put_ring *r, unsigned k, int ret)
{
	if (ret && !r->err)
		r->err = ret;
	r->slot[k].done = true;
	while (r->tail < r->claim && r->slot[r->tail % PUT_RING].done)
		r->tail++;
	pthread_cond_broadcast(&r->cond);
}

/* Under r->lock: the job thread hashes the next slot if it is a clone-path one. True when
 * it did (the lock was dropped meanwhile). */
static bool ring_help(struct put_ring *r, uint8_t *plain, uint64_t *ns)
{
	unsigned k;
	uint64_t t0;
	int ret = 0;

	if (r->claim == r->head || !r->slot[r->claim % PUT_RING].raw || r->err)
		return false;
	k = (unsigned)(r->claim++ % PUT_RING);
	pthread_mutex_unlock(&r->lock);
	t0 = time_mono_ns();
	ret = slot_hash(r, k, plain);
	*ns += time_mono_ns() - t0;
	pthread_mutex_lock(&r->lock);
	slot_done(r, k, ret);
	return true;
}

static void *put_thread(void *arg)
{
	struct put_ring *r = arg;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		while (r->claim == r->head && !r->done)
			pthread_cond_wait(&r->cond, &r->lock);
		if (r->claim == r->head)
			break;
		unsigned k = (unsigned)(r->claim++ % PUT_RING);
		pthread_mutex_unlock(&r->lock);
		bool existed = false;
		uint64_t t0 = time_mono_ns();
		int ret = 0;
		if (r->err) {
			/* stopping: skip */
		} else if (r->slot[k].raw) {
			ret = slot_hash(r, k, r->plain);
			r->ns_hash += time_mono_ns() - t0;
			existed = true; /* counted when finished */
		} else if (r->slot[k].zero) {
			existed = true; /* all zero: not stored */
		} else {
			ret = store_pack_put(r->pk, r->slot[k].buf, r->cs, r->slot[k].id,
					     &existed);
			r->ns_put += time_mono_ns() - t0;
		}
		pthread_mutex_lock(&r->lock);
		if (!ret && !existed)
			r->new_bytes += r->cs;
		slot_done(r, k, ret);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

static int entry_add(struct manifest_entry **e, size_t *n, size_t *cap, uint64_t idx,
		     const uint8_t id[OBJ_ID_LEN])
{
	if (*n == *cap) {
		struct manifest_entry *ne = realloc(*e, 2 * *cap * sizeof(**e));
		if (!ne)
			return -ENOMEM;
		*e = ne;
		*cap *= 2;
	}
	(*e)[*n].idx = idx;
	memcpy((*e)[(*n)++].id, id, OBJ_ID_LEN);
	return 0;
}

/* Clone path: finish the slots hashed so far (*fin up to tail), in order. */
static int clone_drain(struct put_ring *r, struct snap_clone *cl, uint64_t *fin, uint64_t tail,
		       struct manifest_entry **e, size_t *n, size_t *cap)
{
	for (; *fin < tail; (*fin)++) {
		unsigned k = (unsigned)(*fin % PUT_RING);
		bool existed;
		uint64_t t0;
		int ret;

		if (!r->slot[k].raw)
			continue;
		t0 = time_mono_ns();
		ret = store_pack_clone_finish(r->pk, r->slot[k].at, r->cs,
					      r->slot[k].zero ? NULL : r->slot[k].id, &existed);
		cl->ns_clone += time_mono_ns() - t0;
		if (ret)
			return ret;
		if (!existed)
			cl->cloned += r->cs;
		if (!r->slot[k].zero && (ret = entry_add(e, n, cap, r->slot[k].idx, r->slot[k].id)))
			return ret;
	}
	return 0;
}

/* Copy the captured chunks, then merge with the parent's entries. 0 or -errno. */
static int snap_copy(struct job *j, struct snap_job *sj, uint64_t *data_size)
{
	struct vol *v = sj->dv->vol;
	size_t cs = vol_chunk_size(v), n = 0, cap = 1024;
	struct manifest_entry *e = malloc(cap * sizeof(*e));
	uint64_t *taken = calloc((sj->m.volume_size / cs + 63) / 64, 8);
	uint8_t *plain = NULL, *plain2 = NULL, *slab = NULL;
	struct put_ring *r = calloc(1, sizeof(*r));
	uint64_t fin = 0; /* clone path: slots finished */
	pthread_t th;
	int ret = 0;

	if (!e || !taken || !r || store_pack_begin(sj->store, &r->pk) ||
	    posix_memalign((void **)&slab, 4096, PUT_RING * cs) ||
	    posix_memalign((void **)&plain, 4096, cs) ||
	    posix_memalign((void **)&plain2, 4096, cs)) {
		ret = -ENOMEM;
		goto out;
	}
	r->cs = cs;
	r->v = v;
	r->plain = plain2;
	struct snap_clone cl = {.pk = r->pk, .cs = cs, .on = true};
	for (unsigned k = 0; k < PUT_RING; k++)
		r->slot[k].buf = slab + (size_t)k * cs;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	ret = -pthread_create(&th, NULL, put_thread, r);
	if (ret)
		goto out_ring;
	for (;;) {
		enum vol_snap_kind kind;
		uint8_t id[OBJ_ID_LEN];
		uint64_t idx, run, room, t0;
		unsigned k;

		/* free slots to read a run into (on the clone path: all slots hashed and
		 * finished once the pack is full, so that it can be closed); while waiting,
		 * hash what the put thread has not taken yet */
		uint64_t tail;
		pthread_mutex_lock(&r->lock);
		for (;;) {
			k = (unsigned)(r->head % PUT_RING);
			room = MIN(PUT_RING - (r->head - r->tail), PUT_RING - k);
			if (r->err || (room >= MIN(RUN_MAX, PUT_RING - k) &&
				       !(cl.full && r->tail != r->head)))
				break;
			if (!ring_help(r, plain, &sj->ns_hash))
				pthread_cond_wait(&r->cond, &r->lock);
		}
		ret = r->err;
		tail = r->tail;
		pthread_mutex_unlock(&r->lock);
		if (!ret)
			ret = clone_drain(r, &cl, &fin, tail, &e, &n, &cap);
		if (ret)
			break;
		cl.full = false;
		uint8_t *buf = r->slot[k].buf;

		uint64_t in_fn = cl.ns_clone;
		t0 = time_mono_ns();
		cl.res = CL_NONE;
		ret = vol_snap_next(sj->vs, MIN(room, RUN_MAX), &idx, &run, &kind, buf, id,
				    cl.on ? clone_fn : NULL, &cl);
		sj->ns_read += time_mono_ns() - t0 - (cl.ns_clone - in_fn);
		if (ret <= 0)
			break;
		ret = 0;
		for (uint64_t i = 0; i < run; i++)
			taken[(idx + i) / 64] |= 1ull << ((idx + i) % 64);
		j->done += run;
		if (kind == VOL_SNAP_ZERO)
			continue;
		if (kind == VOL_SNAP_BASE) {
			ret = entry_add(&e, &n, &cap, idx, id);
			if (ret)
				break;
			continue;
		}
		for (uint64_t i = 0; i < run && !ret; i++) {
			unsigned ki = (unsigned)((k + i) % PUT_RING);
			r->slot[ki].raw = cl.res == CL_RAW;
			r->slot[ki].zero = false;
			r->slot[ki].done = false;
			r->slot[ki].idx = idx + i;
			if (cl.res == CL_RAW) {
				/* hashed by the put thread (or ring_help), named by clone_drain */
				r->slot[ki].at = cl.at + i * cs;
				continue;
			}
			/* all-zero chunks are stored as "zero", never as data */
			t0 = time_mono_ns();
			ret = chunk_hash(v, idx + i, r->slot[ki].buf, plain, cs, r->slot[ki].id);
			sj->ns_hash += time_mono_ns() - t0;
			if (ret < 0)
				break;
			r->slot[ki].zero = ret == 1;
			if (ret == 0)
				ret = entry_add(&e, &n, &cap, idx + i, r->slot[ki].id);
			else
				ret = 0;
		}
		if (ret < 0) {
			/* a clone of this run may be unnamed: the writer is freed, not committed */
			break;
		}
		pthread_mutex_lock(&r->lock);
		r->head += run;
		pthread_cond_broadcast(&r->cond);
		pthread_mutex_unlock(&r->lock);
		if (sj->d->stopping || j->cancel) {
			ret = -ECANCELED;
			break;
		}
	}
	pthread_mutex_lock(&r->lock);
	r->done = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	pthread_join(th, NULL);
	if (!ret)
		ret = r->err;
	if (!ret)
		ret = clone_drain(r, &cl, &fin, r->head, &e, &n, &cap);
	sj->ns_put = r->ns_put + cl.ns_clone;
	sj->ns_hash += r->ns_hash;
	sj->cloned = cl.cloned;
	sj->clones = cl.clones;
	*data_size = r->new_bytes + cl.cloned;
	/* the new chunks are durable before any manifest names them */
	if (!ret) {
		uint64_t t0 = time_mono_ns();
		ret = store_pack_commit(r->pk);
		sj->ns_commit = time_mono_ns() - t0;
	}
	if (ret)
		goto out_ring;
	/* unchanged chunks keep the parent's objects */
	for (size_t i = 0; sj->parent && i < sj->parent->nentries; i++) {
		const struct manifest_entry *pe = &sj->parent->e[i];
		uint64_t c = pe->idx;
		if (c * cs >= sj->m.volume_size || ((taken[c / 64] >> (c % 64)) & 1))
			continue;
		if (n == cap) {
			struct manifest_entry *ne = realloc(e, 2 * cap * sizeof(*e));
			if (!ne) {
				ret = -ENOMEM;
				goto out_ring;
			}
			e = ne;
			cap *= 2;
		}
		e[n++] = *pe;
	}
	qsort(e, n, sizeof(*e), entry_cmp);
	sj->m.e = e;
	sj->m.nentries = n;
	e = NULL;
out_ring:
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
out:
	if (r)
		store_pack_free(r->pk);
	free(r);
	free(e);
	free(taken);
	free(slab);
	free(plain);
	free(plain2);
	return ret;
}

/* A snapshot that cleared its volume's changed bits did not complete: the cleared bits may
 * be on disk, so the volume's next snapshot is full. */
static void changed_base_drop(struct daemon *d, const char *vol_id, const char *snap_id)
{
	struct cat_volume v;

	if (cat_volume_get(d->cat, vol_id, &v) == 0 && !strcmp(v.changed_base, snap_id)) {
		v.changed_base[0] = 0;
		cat_volume_update(d->cat, &v);
	}
}

static void *snapshot_job(void *arg)
{
	struct job *j = arg;
	struct snap_job *sj = j->priv;
	struct daemon *d = sj->d;
	struct cat_snapshot s;
	uint64_t data_size = 0;
	int ret, cat_ret = 0;

	ret = snap_copy(j, sj, &data_size);
	vol_snap_end(sj->vs, ret == 0);
	if (!ret) {
		uint64_t t0 = time_mono_ns();
		ret = manifest_write(sj->store, j->id, &sj->m);
		sj->ns_manifest = time_mono_ns() - t0;
	}
	pthread_mutex_lock(&d->lock);
	if (cat_snapshot_get(d->cat, j->id, &s) == 0) {
		if (!ret) {
			snprintf(s.state, sizeof(s.state), "completed");
			s.progress = 100;
			s.data_size = data_size;
		} else {
			snprintf(s.state, sizeof(s.state), "error");
			snprintf(s.state_message, sizeof(s.state_message), "copying the data failed: %s",
				 strerror(-ret));
			/* the changed bits are back (vol_snap_end), but be safe: next is full */
			changed_base_drop(d, s.volume_id, s.id);
		}
		crash_point("in-catalog-txn");
		cat_ret = cat_snapshot_update(d->cat, &s);
	}
	log_info("snapshot %s of %s: %s (%llu chunks, %llu bytes new, %llu of them cloned, in %llu "
		 "clone calls; "
		 "seconds: read %.3f, zero-test+hash %.3f, pack put %.3f, pack commit %.3f, "
		 "manifest %.3f)",
		 j->id, sj->dv->id, ret ? strerror(-ret) : "completed",
		 (unsigned long long)j->total, (unsigned long long)data_size,
		 (unsigned long long)sj->cloned, (unsigned long long)sj->clones, sj->ns_read / 1e9,
		 sj->ns_hash / 1e9, sj->ns_put / 1e9, sj->ns_commit / 1e9, sj->ns_manifest / 1e9);
	sj->dv->jobs--;
	job_finish(d, j, ret != 0);
	/* ENOSPC fills the catalog's file system too: retry once GC has made room, or the
	 * snapshot would stay 'pending' until the next start */
	if (cat_ret && cat_snapshot_update(d->cat, &s))
		log_err("snapshot %s: cannot record its state '%s'; it reads 'pending' until the "
			"daemon restarts, which marks it 'error'", j->id, s.state);
	pthread_mutex_unlock(&d->lock);
	manifest_free(sj->parent);
	free(sj->m.e);
	free(sj);
	return NULL;
}

int snapshot_start(struct api_req *r, struct cat_volume *vp, const char *desc, json_object *tags,
		   struct cat_snapshot *out)
{
	struct daemon *d = r->d;
	const char *vid = vp->id;
	struct cat_volume v = *vp;
	struct cat_snapshot s = {0}, ps;
	struct snap_job *sj;
	struct dvol *dv;
	struct snap_store *store;
	bool full = true;
	int ret;

	dv = dvol_find(d, vid);
	store = region_store(d, r->region);
	if (!dv || !store)
		return api_error(r, "InternalError", "volume %s is not being served", vid);
	for (struct job *j = d->jobs; j; j = j->next)
		if (j->kind == JOB_SNAPSHOT && !j->finished && !strcmp(j->volume, vid))
			return api_error(r, "SnapshotCreationPerVolumeRateExceeded",
					 "A snapshot of volume %s is already in progress.", vid);
	sj = calloc(1, sizeof(*sj));
	if (!sj)
		return api_error(r, "InternalError", "out of memory");
	/* incremental when the snapshot that last cleared the changed bits is still usable */
	if (v.changed_base[0] && cat_snapshot_get(d->cat, v.changed_base, &ps) == 0 &&
	    !strcmp(ps.state, "completed") && manifest_read(store, ps.id, &sj->parent) == 0 &&
	    sj->parent->chunk_size == vol_chunk_size(dv->vol)) {
		full = false;
		snprintf(s.parent, sizeof(s.parent), "%s", ps.id);
		snprintf(s.lineage, sizeof(s.lineage), "%s", ps.lineage);
	} else {
		manifest_free(sj->parent);
		sj->parent = NULL;
	}
	ret = id_new("snap", s.id);
	if (!ret)
		ret = vol_snap_begin(dv->vol, full, &sj->vs, &sj->total);
	if (ret) {
		manifest_free(sj->parent);
		free(sj);
		return api_error(r, ret == -EBUSY ? "SnapshotCreationPerVolumeRateExceeded"
						  : "InternalError",
				 "cannot start the snapshot: %s", strerror(-ret));
	}
	if (!s.lineage[0])
		snprintf(s.lineage, sizeof(s.lineage), "%s", s.id);
	snprintf(s.account, sizeof(s.account), "%s", r->account);
	snprintf(s.region, sizeof(s.region), "%s", r->region);
	snprintf(s.volume_id, sizeof(s.volume_id), "%s", vid);
	s.volume_size_gib = v.size_gib;
	snprintf(s.description, sizeof(s.description), "%s", desc ? desc : "");
	snprintf(s.state, sizeof(s.state), "pending");
	time_iso8601(s.start_time);
	s.encrypted = v.encrypted;
	/* the manifest's header */
	sj->d = d;
	sj->dv = dv;
	sj->store = store;
	sj->m.volume_size = v.size_gib * GIB;
	sj->m.chunk_size = vol_chunk_size(dv->vol);
	snprintf(sj->m.volume_id, sizeof(sj->m.volume_id), "%s", vid);
	snprintf(sj->m.parent, sizeof(sj->m.parent), "%s", s.parent);
	snprintf(sj->m.lineage, sizeof(sj->m.lineage), "%s", s.lineage);
	if (v.encrypted) {
		sj->m.flags |= MANIFEST_F_ENCRYPTED;
		vol_wrapped_key(dv->vol, sj->m.wrapped_key);
	}
	snprintf(v.changed_base, sizeof(v.changed_base), "%s", s.id);
	ret = cat_begin(d->cat);
	if (!ret) {
		ret = cat_snapshot_insert(d->cat, &s);
		if (!ret)
			ret = cat_volume_update(d->cat, &v);
		if (!ret)
			ret = tags_put(d, s.id, tags);
		if (!ret)
			ret = cat_commit(d->cat);
		if (ret)
			cat_rollback(d->cat);
	}
	if (ret) {
		vol_snap_end(sj->vs, false);
		manifest_free(sj->parent);
		free(sj);
		return api_error(r, "InternalError", "catalog update failed");
	}
	dv->jobs++;
	if (!job_start(d, JOB_SNAPSHOT, s.id, r->region, snapshot_job, sj)) {
		dv->jobs--;
		vol_snap_end(sj->vs, false);
		manifest_free(sj->parent);
		free(sj);
		/* nothing was copied: the row goes, and the volume's next snapshot is full */
		changed_base_drop(d, vid, s.id);
		cat_snapshot_delete(d->cat, s.id);
		return api_error(r, "InternalError", "cannot start the snapshot job");
	}
	struct job *j = job_find(d, JOB_SNAPSHOT, s.id);
	j->total = sj->total;
	snprintf(j->volume, sizeof(j->volume), "%s", vid);
	log_info("snapshot %s of %s started (%s, %llu chunks to copy)", s.id, vid,
		 full ? "full" : "incremental", (unsigned long long)sj->total);
	*out = s;
	return 0;
}

void snapshot_abort(struct daemon *d, const char *id, const char *why)
{
	struct cat_snapshot s;
	struct job *j = job_find(d, JOB_SNAPSHOT, id);

	if (!j)
		j = job_find(d, JOB_COPY, id);
	/* the job ends as a failed snapshot or copy ends (snapshot_job, copy_job): the row
	 * reads 'error', the chunks it stored are collected (job_finish); a snapshot's
	 * vol_snap_end(ok=false) gives the volume its changed bits back and its next snapshot
	 * is full. A job that has finished already wrote its row (jobs_reap frees it). */
	if (j)
		job_cancel(d, j);
	if (cat_snapshot_get(d->cat, id, &s))
		return;
	/* it may have completed before it saw the cancel: its changed bits stay cleared (a
	 * copy's volume_id is its source's, whose changed_base never names the copy) */
	changed_base_drop(d, s.volume_id, id);
	if (cat_snapshot_delete(d->cat, id)) {
		log_err("snapshot %s: cannot delete the row of the undone snapshot", id);
		return;
	}
	log_info("snapshot %s undone (%s)", id, why);
	region_gc(d, s.region);
}

int act_create_snapshot(struct api_req *r)
{
	static const char *const allowed[] = {"VolumeId", "Description", "TagSpecifications",
					      "DryRun", "OutpostArn", NULL};
	const char *vid, *desc = NULL;
	struct cat_volume v;
	struct cat_snapshot s;
	json_object *tags;

	if (params_allow(r, allowed) || param_str(r, "VolumeId", true, &vid) < 0 ||
	    param_str(r, "Description", false, &desc) < 0 ||
	    tag_specs_parse(r, "snapshot", &tags) || volume_lookup(r, vid, &v))
		return -1;
	if (desc && strlen(desc) > 255)
		return api_error(r, "InvalidParameterValue",
				 "The description is longer than 255 characters.");
	if (snapshot_start(r, &v, desc, tags, &s))
		return -1;
	r->result = snapshot_json(r->d, &s);
	return 0;
}

/* ---- describe / delete ----------------------------------------------------------------- */

static const struct filter_map snapshot_filters[] = {
	{"snapshot-id", "SnapshotId"}, {"volume-id", "VolumeId"},     {"status", "State"},
	{"owner-id", "OwnerId"},       {"description", "Description"}, {"encrypted", "Encrypted"},
	{"volume-size", "VolumeSize"}, {"progress", "Progress"},       {"start-time", "StartTime"},
	{NULL, NULL},
};

struct dsnap_ctx {
	struct api_req *r;
	json_object *ids, *owners, *restorable, *filters, *out;
	bool *seen;
};

static int describe_snap_one(void *arg, const struct cat_snapshot *s)
{
	struct dsnap_ctx *c = arg;
	struct api_req *r = c->r;

	if (strcmp(s->account, r->account))
		return 0;
	if (c->owners) {
		bool ok = false;
		for (size_t i = 0; i < json_object_array_length(c->owners); i++) {
			const char *o = json_object_get_string(json_object_array_get_idx(c->owners, i));
			ok |= !strcmp(o, "self") || !strcmp(o, s->account);
		}
		if (!ok)
			return 0;
	}
	if (c->restorable) {
		/* snapshots are not shared in ebsim: only their owner can restore them */
		bool ok = false;
		for (size_t i = 0; i < json_object_array_length(c->restorable); i++) {
			const char *u = json_object_get_string(json_object_array_get_idx(c->restorable, i));
			ok |= !strcmp(u, "self") || !strcmp(u, s->account);
		}
		if (!ok)
			return 0;
	}
	if (c->ids) {
		bool wanted = false;
		for (size_t i = 0; i < json_object_array_length(c->ids); i++)
			if (!strcmp(json_object_get_string(json_object_array_get_idx(c->ids, i)),
				    s->id))
				wanted = c->seen[i] = true;
		if (!wanted)
			return 0;
	}
	json_object *o = snapshot_json(r->d, s);
	if (filters_match(c->filters, snapshot_filters, o))
		json_object_array_add(c->out, o);
	else
		json_object_put(o);
	return 0;
}

int act_describe_snapshots(struct api_req *r)
{
	static const char *const allowed[] = {"SnapshotIds", "OwnerIds", "RestorableByUserIds",
					      "Filters", "MaxResults", "NextToken", "DryRun", NULL};
	struct dsnap_ctx c = {.r = r};
	size_t nids;
	int ret;

	if (params_allow(r, allowed) || param_str_list(r, "SnapshotIds", &c.ids) < 0 ||
	    param_str_list(r, "OwnerIds", &c.owners) < 0 ||
	    param_str_list(r, "RestorableByUserIds", &c.restorable) < 0 ||
	    filters_parse(r, snapshot_filters, &c.filters))
		return -1;
	if (c.ids && json_object_object_get_ex(r->params, "MaxResults", NULL))
		return api_error(r, "InvalidParameterCombination",
				 "The parameter snapshotIds cannot be used with maxResults");
	nids = c.ids ? json_object_array_length(c.ids) : 0;
	for (size_t i = 0; i < nids; i++)
		if (check_id(r, "snap", "InvalidSnapshot",
			     json_object_get_string(json_object_array_get_idx(c.ids, i))))
			return -1;
	c.seen = calloc(nids + 1, sizeof(bool));
	c.out = json_object_new_array();
	ret = cat_snapshot_each(r->d->cat, r->region, describe_snap_one, &c);
	for (size_t i = 0; !ret && i < nids; i++)
		if (!c.seen[i])
			ret = api_error(r, "InvalidSnapshot.NotFound",
					"The snapshot '%s' does not exist.",
					json_object_get_string(json_object_array_get_idx(c.ids, i)));
	free(c.seen);
	if (ret) {
		json_object_put(c.out);
		return r->code[0] ? -1 : api_error(r, "InternalError", "catalog read failed");
	}
	json_object *page, *next;
	if (paginate(r, c.out, "SnapshotId", 5, 1000, &page, &next))
		return -1;
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Snapshots", page);
	if (next)
		json_object_object_add(r->result, "NextToken", next);
	return 0;
}

int act_delete_snapshot(struct api_req *r)
{
	static const char *const allowed[] = {"SnapshotId", "DryRun", NULL};
	struct daemon *d = r->d;
	struct cat_snapshot s;
	const char *id;

	if (params_allow(r, allowed) || param_str(r, "SnapshotId", true, &id) < 0 ||
	    snapshot_lookup(r, id, &s))
		return -1;
	if (!strcmp(s.state, "pending"))
		return api_error(r, "IncorrectState",
				 "The snapshot '%s' is still pending; wait for it to complete.", id);
	if (snapshot_in_use(d, id))
		return api_error(r, "InvalidSnapshot.InUse",
				 "The snapshot %s is currently in use by a registered image.", id);
	if (cat_snapshot_delete(d->cat, id))
		return api_error(r, "InternalError", "catalog update failed");
	log_info("deleted snapshot %s", id);
	region_gc(d, r->region);
	r->result = json_object_new_object();
	return 0;
}

/* ---- copy-snapshot --------------------------------------------------------------------- */

struct copy_job {
	struct daemon *d;
	struct snap_store *src, *dst;
	struct manifest *m;
};

static void *copy_job(void *arg)
{
	struct job *j = arg;
	struct copy_job *cj = j->priv;
	struct daemon *d = cj->d;
	struct cat_snapshot s;
	uint64_t copied_bytes = 0;
	size_t cs = cj->m->chunk_size;
	struct store_pack *pk = NULL;
	uint8_t *buf = malloc(cs);
	int ret = buf && !store_pack_begin(cj->dst, &pk) ? 0 : -ENOMEM;

	/* only the chunks the destination lacks are read (and verified: store_get) and
	 * appended to a pack there; the commit makes them durable */
	for (size_t i = 0; i < cj->m->nentries && !ret; i++) {
		const uint8_t *id = cj->m->e[i].id;
		bool existed = true;

		if (!store_has(cj->dst, id)) {
			ret = store_get(cj->src, id, buf, cs);
			if (!ret)
				ret = store_pack_put(pk, buf, cs, id, &existed);
		}
		if (!ret && !existed)
			copied_bytes += cs;
		j->done++;
		if (d->stopping || j->cancel)
			ret = -ECANCELED;
	}
	/* the copy starts a lineage of its own in this region */
	cj->m->parent[0] = 0;
	snprintf(cj->m->lineage, sizeof(cj->m->lineage), "%s", j->id);
	if (!ret)
		ret = store_pack_commit(pk);
	store_pack_free(pk);
	free(buf);
	if (!ret)
		ret = manifest_write(cj->dst, j->id, cj->m);
	pthread_mutex_lock(&d->lock);
	if (cat_snapshot_get(d->cat, j->id, &s) == 0) {
		snprintf(s.state, sizeof(s.state), "%s", ret ? "error" : "completed");
		if (ret)
			snprintf(s.state_message, sizeof(s.state_message), "copy failed: %s",
				 strerror(-ret));
		s.progress = ret ? 0 : 100;
		s.data_size = copied_bytes;
		cat_snapshot_update(d->cat, &s);
	}
	log_info("copy %s: %s, %llu bytes transferred", j->id, ret ? strerror(-ret) : "completed",
		 (unsigned long long)copied_bytes);
	job_finish(d, j, ret != 0);
	pthread_mutex_unlock(&d->lock);
	manifest_free(cj->m);
	free(cj);
	return NULL;
}

int act_copy_snapshot(struct api_req *r)
{
	static const char *const allowed[] = {"SourceRegion", "SourceSnapshotId", "Description",
					      "Encrypted", "KmsKeyId", "DestinationRegion",
					      "TagSpecifications", "DryRun", "PresignedUrl", NULL};
	const char *src_region, *src_id, *desc = NULL;
	struct cat_snapshot src, s = {0};
	struct api_req sr;
	const char *dest = NULL;
	json_object *tags;
	bool encrypt = false;

	if (params_allow(r, allowed) || param_str(r, "SourceRegion", true, &src_region) < 0 ||
	    param_str(r, "SourceSnapshotId", true, &src_id) < 0 ||
	    param_str(r, "Description", false, &desc) < 0 ||
	    param_str(r, "DestinationRegion", false, &dest) < 0 ||
	    param_bool(r, "Encrypted", &encrypt) < 0 || tag_specs_parse(r, "snapshot", &tags))
		return -1;
	if (dest && strcmp(dest, r->region))
		return api_error(r, "InvalidParameterValue",
				 "DestinationRegion (%.32s) must be the region of the request (%s).",
				 dest, r->region);
	/* look the source up as the same account, in the source region */
	sr = *r;
	sr.region = src_region;
	if (snapshot_lookup(&sr, src_id, &src)) {
		snprintf(r->code, sizeof(r->code), "%s", sr.code);
		snprintf(r->message, sizeof(r->message), "%s", sr.message);
		return -1;
	}
	if (strcmp(src.state, "completed"))
		return api_error(r, "IncorrectState", "The snapshot '%s' is not completed.", src_id);
	if (encrypt && !src.encrypted)
		return api_error(r, "InvalidParameterCombination",
				 "Encrypting an unencrypted snapshot while copying it is not supported "
				 "by ebsim; copies keep the source's encryption.");
	if (snapshot_copy_start(r, &src, desc, tags, &s))
		return -1;
	r->result = json_object_new_object();
	json_object_object_add(r->result, "SnapshotId", json_object_new_string(s.id));
	return 0;
}

int snapshot_copy_start(struct api_req *r, const struct cat_snapshot *srcp, const char *desc,
			json_object *tags, struct cat_snapshot *out)
{
	struct daemon *d = r->d;
	const struct cat_snapshot src = *srcp;
	const char *src_region = src.region, *src_id = src.id;
	struct cat_snapshot s;
	struct copy_job *cj;
	int ret;

	cj = calloc(1, sizeof(*cj));
	if (!cj)
		return api_error(r, "InternalError", "out of memory");
	cj->d = d;
	cj->src = region_store(d, src_region);
	cj->dst = region_store(d, r->region);
	if (!cj->src || !cj->dst || (ret = manifest_read(cj->src, src_id, &cj->m))) {
		free(cj);
		return api_error(r, "InternalError", "cannot read the source snapshot");
	}
	s = src;
	/* copy-image of a shared image: the copy belongs to whoever asked for it */
	snprintf(s.account, sizeof(s.account), "%s", r->account);
	if (id_new("snap", s.id)) {
		manifest_free(cj->m);
		free(cj);
		return api_error(r, "InternalError", "cannot make an ID");
	}
	snprintf(s.region, sizeof(s.region), "%s", r->region);
	snprintf(s.state, sizeof(s.state), "pending");
	s.progress = 0;
	s.parent[0] = 0;
	snprintf(s.lineage, sizeof(s.lineage), "%s", s.id);
	snprintf(s.description, sizeof(s.description), "%s",
		 desc ? desc : src.description);
	snprintf(s.source, sizeof(s.source), "%s/%s", src_region, src_id);
	time_iso8601(s.start_time);
	s.state_message[0] = 0;
	ret = cat_begin(d->cat);
	if (!ret) {
		ret = cat_snapshot_insert(d->cat, &s);
		if (!ret)
			ret = tags_put(d, s.id, tags);
		if (!ret)
			ret = cat_commit(d->cat);
		if (ret)
			cat_rollback(d->cat);
	}
	if (ret) {
		manifest_free(cj->m);
		free(cj);
		return api_error(r, "InternalError", "catalog update failed");
	}
	struct job *j = job_start(d, JOB_COPY, s.id, r->region, copy_job, cj);
	if (!j) {
		cat_snapshot_delete(d->cat, s.id);
		manifest_free(cj->m);
		free(cj);
		return api_error(r, "InternalError", "cannot start the copy");
	}
	j->total = cj->m->nentries;
	*out = s;
	return 0;
}

/* ---- EBS direct API listings ----------------------------------------------------------- */

/* Per 512 KiB block: the object ids of its chunks (zeros where a chunk is zero). */
static const uint8_t *block_chunk(const struct manifest *m, uint64_t block, unsigned k)
{
	uint64_t per = DIRECT_BLOCK / m->chunk_size;

	return manifest_lookup(m, block * per + k);
}

static bool block_differs(const struct manifest *a, const struct manifest *b, uint64_t block)
{
	uint64_t per = MAX(1, DIRECT_BLOCK / b->chunk_size);

	for (unsigned k = 0; k < per; k++) {
		const uint8_t *x = a ? block_chunk(a, block, k) : NULL;
		const uint8_t *y = block_chunk(b, block, k);
		if (!x != !y || (x && memcmp(x, y, OBJ_ID_LEN)))
			return true;
	}
	return false;
}

/* A token naming the block's content (the first non-zero chunk's object id, abbreviated);
 * false when the block holds no data, and then EBS gives no token. */
static bool block_token(const struct manifest *m, uint64_t block, char out[48])
{
	uint64_t per = MAX(1, DIRECT_BLOCK / m->chunk_size);
	char hex[OBJ_HEX_LEN + 1];

	for (unsigned k = 0; k < per; k++) {
		const uint8_t *id = block_chunk(m, block, k);
		if (id) {
			obj_id_hex(id, hex);
			snprintf(out, 48, "EBSim%.40s", hex);
			return true;
		}
	}
	return false;
}

static int paging(struct api_req *r, int64_t *max, uint64_t *start)
{
	const char *token = NULL;
	int64_t sbi = 0;
	int has_max, has_sbi;

	if ((has_max = param_int(r, "MaxResults", false, max)) < 0 ||
	    param_str(r, "NextToken", false, &token) < 0 ||
	    (has_sbi = param_int(r, "StartingBlockIndex", false, &sbi)) < 0)
		return -1;
	if (!has_max)
		*max = 10000;
	if (*max < 100 || *max > 10000)
		return api_error(r, "ValidationException",
				 "MaxResults must be between 100 and 10000.");
	if (sbi < 0)
		return api_error(r, "ValidationException", "StartingBlockIndex must be >= 0.");
	*start = (uint64_t)sbi;
	if (token) {
		char *end;
		errno = 0;
		unsigned long long t = strtoull(token, &end, 10);
		if (errno || *end || !*token)
			return api_error(r, "ValidationException", "The pagination token is invalid.");
		*start = t;
	}
	return 0;
}

static json_object *blocks_result(const struct manifest *m, uint64_t next_block, bool more)
{
	json_object *o = json_object_new_object();
	char tok[32];

	json_object_object_add(o, "VolumeSize", json_object_new_int64((int64_t)(m->volume_size / GIB)));
	json_object_object_add(o, "BlockSize", json_object_new_int(DIRECT_BLOCK));
	if (more) {
		snprintf(tok, sizeof(tok), "%llu", (unsigned long long)next_block);
		json_object_object_add(o, "NextToken", json_object_new_string(tok));
	}
	return o;
}

static int load_manifest(struct api_req *r, const struct cat_snapshot *s, struct manifest **m)
{
	struct snap_store *st = region_store(r->d, r->region);

	if (strcmp(s->state, "completed"))
		return api_error(r, "ValidationException", "The snapshot '%s' is not completed.",
				 s->id);
	if (!st || manifest_read(st, s->id, m))
		return api_error(r, "InternalError", "cannot read the snapshot's manifest");
	return 0;
}

int act_list_snapshot_blocks(struct api_req *r)
{
	static const char *const allowed[] = {"SnapshotId", "MaxResults", "NextToken",
					      "StartingBlockIndex", NULL};
	struct cat_snapshot s;
	struct manifest *m = NULL;
	const char *id;
	int64_t max;
	uint64_t start, nblocks, b, listed = 0;
	json_object *blocks;

	if (params_allow(r, allowed) || param_str(r, "SnapshotId", true, &id) < 0 ||
	    paging(r, &max, &start) || snapshot_lookup(r, id, &s) || load_manifest(r, &s, &m))
		return -1;
	nblocks = (m->volume_size + DIRECT_BLOCK - 1) / DIRECT_BLOCK;
	blocks = json_object_new_array();
	uint64_t per = MAX(1, DIRECT_BLOCK / m->chunk_size);
	for (size_t i = 0; i < m->nentries && listed < (uint64_t)max; i++) {
		b = m->e[i].idx / per;
		if (b < start)
			continue;
		if (i && m->e[i - 1].idx / per == b)
			continue;
		json_object *o = json_object_new_object();
		char tok[48];
		block_token(m, b, tok);
		json_object_object_add(o, "BlockIndex", json_object_new_int64((int64_t)b));
		json_object_object_add(o, "BlockToken", json_object_new_string(tok));
		json_object_array_add(blocks, o);
		listed++;
		start = b + 1;
	}
	bool more = false;
	for (size_t i = 0; i < m->nentries; i++)
		if (m->e[i].idx / per >= start) {
			more = listed == (uint64_t)max;
			break;
		}
	(void)nblocks;
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Blocks", blocks);
	json_object *tail = blocks_result(m, start, more);
	json_object_object_foreach(tail, k, val) json_object_object_add(r->result, k, json_object_get(val));
	json_object_put(tail);
	manifest_free(m);
	return 0;
}

int act_list_changed_blocks(struct api_req *r)
{
	static const char *const allowed[] = {"FirstSnapshotId", "SecondSnapshotId", "MaxResults",
					      "NextToken", "StartingBlockIndex", NULL};
	struct cat_snapshot a, b;
	struct manifest *ma = NULL, *mb = NULL;
	const char *ida = NULL, *idb;
	int64_t max;
	uint64_t start, listed = 0, blk, nblocks;
	json_object *out;

	if (params_allow(r, allowed) || param_str(r, "FirstSnapshotId", false, &ida) < 0 ||
	    param_str(r, "SecondSnapshotId", true, &idb) < 0 || paging(r, &max, &start) ||
	    snapshot_lookup(r, idb, &b) || (ida && snapshot_lookup(r, ida, &a)))
		return -1;
	if (ida && strcmp(a.lineage, b.lineage))
		return api_error(r, "ValidationException",
				 "The snapshots %s and %s are not in the same lineage.", ida, idb);
	if ((ida && load_manifest(r, &a, &ma)) || load_manifest(r, &b, &mb)) {
		manifest_free(ma);
		return -1;
	}
	if (ma && ma->chunk_size != mb->chunk_size) {
		manifest_free(ma);
		manifest_free(mb);
		return api_error(r, "ValidationException", "The snapshots have different chunk sizes.");
	}
	nblocks = (MAX(mb->volume_size, ma ? ma->volume_size : 0) + DIRECT_BLOCK - 1) / DIRECT_BLOCK;
	out = json_object_new_array();
	for (blk = start; blk < nblocks && listed < (uint64_t)max; blk++) {
		if (!block_differs(ma, mb, blk))
			continue;
		json_object *o = json_object_new_object();
		char ta[48], tb[48];
		json_object_object_add(o, "BlockIndex", json_object_new_int64((int64_t)blk));
		if (ma && block_token(ma, blk, ta))
			json_object_object_add(o, "FirstBlockToken", json_object_new_string(ta));
		if (block_token(mb, blk, tb))
			json_object_object_add(o, "SecondBlockToken", json_object_new_string(tb));
		json_object_array_add(out, o);
		listed++;
	}
	bool more = false;
	for (uint64_t k = blk; k < nblocks && listed == (uint64_t)max; k++)
		if (block_differs(ma, mb, k)) {
			more = true;
			break;
		}
	r->result = json_object_new_object();
	json_object_object_add(r->result, "ChangedBlocks", out);
	json_object *tail = blocks_result(mb, blk, more);
	json_object_object_foreach(tail, k2, val)
		json_object_object_add(r->result, k2, json_object_get(val));
	json_object_put(tail);
	manifest_free(ma);
	manifest_free(mb);
	return 0;
}

/* ---- initialize-volume ----------------------------------------------------------------- */

static void *init_job(void *arg)
{
	struct job *j = arg;
	struct daemon *d = j->priv;
	struct dvol *dv;
	uint64_t next = 0, left = 0;
	int ret;

	pthread_mutex_lock(&d->lock);
	dv = dvol_find(d, j->id);
	pthread_mutex_unlock(&d->lock);
	do {
		ret = vol_hydrate(dv->vol, &next, 64, &left);
		j->done = j->total > left ? j->total - left : 0;
	} while (ret == 1 && !d->stopping);
	pthread_mutex_lock(&d->lock);
	if (ret == 0) {
		/* the base is no longer read: forget it, let GC free what nobody needs */
		log_info("initialized %s: every chunk is in its data file", j->id);
		manifest_free(dv->base);
		dv->base = NULL;
		dv->base_id[0] = 0;
		j->done = j->total;
		region_gc(d, dv->region);
	} else if (ret < 0) {
		log_err("initializing %s: %s", j->id, strerror(-ret));
	}
	dv->jobs--;
	j->finished = true;
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

json_object *volume_init_status(struct daemon *d, const char *vol_id)
{
	struct dvol *dv = dvol_find(d, vol_id);
	struct job *j = job_find(d, JOB_INIT, vol_id);
	json_object *o;
	uint64_t left, total;
	int pct;

	if (!dv || (!dv->base && !j))
		return NULL;
	left = dv->base ? vol_base_left(dv->vol) : 0;
	total = dv->base ? dv->base->nentries : 0;
	pct = total ? (int)((total - MIN(left, total)) * 100 / total) : 100;
	o = json_object_new_object();
	json_object_object_add(o, "InitializationType", json_object_new_string("default"));
	json_object_object_add(o, "Progress", json_object_new_int(pct));
	if (j && j->done && left) {
		double el = (double)(time_mono_ns() - j->started_ns) / 1e9;
		double eta = el / (double)j->done * (double)left;
		json_object_object_add(o, "EstimatedTimeToCompleteInSeconds",
				       json_object_new_int64((int64_t)(eta + 0.5)));
	}
	json_object_object_add(o, "State",
			       json_object_new_string(left ? (j ? "initializing" : "lazy")
							   : "completed"));
	return o;
}

int act_initialize_volume(struct api_req *r)
{
	static const char *const allowed[] = {"VolumeId", NULL};
	struct daemon *d = r->d;
	struct cat_volume v;
	const char *id;
	struct dvol *dv;
	struct job *j;

	if (params_allow(r, allowed) || param_str(r, "VolumeId", true, &id) < 0 ||
	    volume_lookup(r, id, &v))
		return -1;
	dv = dvol_find(d, id);
	if (!dv)
		return api_error(r, "InternalError", "volume %s is not being served", id);
	if (dv->base && !job_find(d, JOB_INIT, id)) {
		dv->jobs++;
		j = job_start(d, JOB_INIT, id, r->region, init_job, d);
		if (!j) {
			dv->jobs--;
			return api_error(r, "InternalError", "cannot start the initialization");
		}
		j->total = dv->base->nentries;
		j->done = j->total - MIN(j->total, vol_base_left(dv->vol));
	}
	r->result = json_object_new_object();
	json_object_object_add(r->result, "VolumeId", json_object_new_string(id));
	json_object *st = volume_init_status(d, id);
	if (!st) {
		st = json_object_new_object();
		json_object_object_add(st, "InitializationType", json_object_new_string("default"));
		json_object_object_add(st, "Progress", json_object_new_int(100));
		json_object_object_add(st, "State", json_object_new_string("completed"));
	}
	json_object_object_add(r->result, "InitializationStatusDetails", st);
	return 0;
}

/* ---- check ----------------------------------------------------------------------------- */

struct check_ctx {
	json_object *corrupt, *missing, *leaked, *bad;
	const char *region;
};

static void ck_corrupt(void *arg, const char *obj, const char *snap, uint64_t idx)
{
	struct check_ctx *c = arg;
	json_object *o = json_object_new_object();

	json_object_object_add(o, "Region", json_object_new_string(c->region));
	json_object_object_add(o, "ObjectId", json_object_new_string(obj));
	if (snap) {
		json_object_object_add(o, "SnapshotId", json_object_new_string(snap));
		json_object_object_add(o, "ChunkIndex", json_object_new_int64((int64_t)idx));
	}
	json_object_array_add(c->corrupt, o);
}

static void ck_missing(void *arg, const char *snap, uint64_t idx, const char *obj)
{
	struct check_ctx *c = arg;
	json_object *o = json_object_new_object();

	json_object_object_add(o, "Region", json_object_new_string(c->region));
	json_object_object_add(o, "SnapshotId", json_object_new_string(snap));
	json_object_object_add(o, "ChunkIndex", json_object_new_int64((int64_t)idx));
	json_object_object_add(o, "ObjectId", json_object_new_string(obj));
	json_object_array_add(c->missing, o);
}

static void ck_leaked(void *arg, const char *obj)
{
	struct check_ctx *c = arg;

	if (json_object_array_length(c->leaked) < 1000)
		json_object_array_add(c->leaked, json_object_new_string(obj));
}

static void ck_bad(void *arg, const char *snap)
{
	struct check_ctx *c = arg;

	json_object_array_add(c->bad, json_object_new_string(snap));
}

int act_check_store(struct api_req *r)
{
	static const char *const allowed[] = {NULL};
	struct check_ctx c = {json_object_new_array(), json_object_new_array(),
			      json_object_new_array(), json_object_new_array(), NULL};
	uint64_t objects = 0, leaked = 0;

	int ret = 0;

	if (params_allow(r, allowed))
		ret = -1;
	for (size_t i = 0; regions[i] && !ret; i++) {
		if (faccessat(r->d->regions_fd, regions[i], F_OK, AT_SYMLINK_NOFOLLOW))
			continue;
		if (jobs_in_region(r->d, regions[i])) {
			ret = api_error(r, "IncorrectState",
					"A snapshot job is running in %s; check again when it ends.",
					regions[i]);
			break;
		}
		struct snap_store *st = region_store(r->d, regions[i]);
		struct check_report rep = {.corrupt = ck_corrupt, .missing = ck_missing,
					   .leaked = ck_leaked, .bad_manifest = ck_bad, .arg = &c};
		c.region = regions[i];
		if (!st || store_check(st, &rep)) {
			ret = api_error(r, "InternalError", "cannot check the store of %s",
					regions[i]);
			break;
		}
		objects += rep.objects_checked;
		leaked += rep.leaked_n;
	}
	if (ret) {
		json_object_put(c.corrupt);
		json_object_put(c.missing);
		json_object_put(c.leaked);
		json_object_put(c.bad);
		return -1;
	}
	r->result = json_object_new_object();
	json_object_object_add(r->result, "ObjectsChecked", json_object_new_int64((int64_t)objects));
	json_object_object_add(r->result, "Corrupt", c.corrupt);
	json_object_object_add(r->result, "Missing", c.missing);
	json_object_object_add(r->result, "BadManifests", c.bad);
	json_object_object_add(r->result, "LeakedCount", json_object_new_int64((int64_t)leaked));
	json_object_object_add(r->result, "Leaked", c.leaked);
	const char *verdict = json_object_array_length(c.corrupt) ||
					      json_object_array_length(c.missing) ||
					      json_object_array_length(c.bad)
				      ? "corrupt"
			      : leaked ? "leaks"
				       : "clean";
	json_object_object_add(r->result, "Result", json_object_new_string(verdict));
	return 0;
}

/* ---- recovery -------------------------------------------------------------------------- */

struct recover_ctx {
	struct daemon *d;
	char regions[8][32]; /* regions whose store holds an interrupted snapshot's chunks */
	int nregions;
};

static int recover_snap(void *arg, const struct cat_snapshot *s)
{
	struct recover_ctx *c = arg;
	struct daemon *d = c->d;
	int i;

	if (strcmp(s->state, "pending"))
		return 0;
	struct cat_snapshot n = *s;
	snprintf(n.state, sizeof(n.state), "error");
	snprintf(n.state_message, sizeof(n.state_message),
		 "the daemon stopped before the snapshot completed");
	cat_snapshot_update(d->cat, &n);
	changed_base_drop(d, s->volume_id, s->id); /* its cleared bits may be on disk */
	for (i = 0; i < c->nregions && strcmp(c->regions[i], s->region); i++)
		;
	if (i == c->nregions && i < (int)ARRAY_SIZE(c->regions))
		snprintf(c->regions[c->nregions++], sizeof(c->regions[0]), "%s", s->region);
	log_warn("snapshot %s was pending when the daemon stopped: now 'error'", s->id);
	return 0;
}

/* Pending snapshots become 'error'; the chunks they had stored belong to no manifest, so
 * their regions are collected at once (ebsim check then reports no leaks). */
int snapshots_recover(struct daemon *d)
{
	struct recover_ctx c = {.d = d};
	int ret = cat_snapshot_each(d->cat, NULL, recover_snap, &c);

	for (int i = 0; i < c.nregions; i++)
		region_gc(d, c.regions[i]);
	return ret;
}
