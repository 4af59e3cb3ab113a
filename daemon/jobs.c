/* SPDX-License-Identifier: MIT */
/*
 * jobs.c - background jobs (snapshot copies, cross-region copies, hydration), the region
 * chunk stores, and garbage collection of snapshot data.
 *
 * Design notes
 * ------------
 * A job is a detached-at-reap thread recorded in d->jobs while it runs, so that describe
 * calls can report its progress and shutdown can wait for it. Jobs take d->lock only to
 * touch the catalog or the tables; a job never holds it across I/O.
 *
 * GC (region_gc) deletes manifests that neither the catalog nor a served volume (a
 * restored volume still reading its base) needs, then sweeps chunks no manifest
 * references. It never runs while a job writes chunks in that region: chunks stored by a
 * snapshot in progress are not referenced by any manifest yet. Such a GC is deferred to the
 * end of the last job in the region (job_finish).
 *
 * A job that stores chunks and fails (a snapshot or a copy: an error, a cancel, shutdown)
 * leaves chunks no manifest references: those of the packs it finished (a pack is closed
 * every 256 MiB) and, between its pack commit and its manifest, all of them. job_finish
 * then asks for a GC of the region, which runs at once or at the end of the last job
 * there; on a full store nothing else would trigger it, since every other trigger writes
 * the catalog first. job_cancel is the one way to stop such a job early: it sets cancel,
 * which both kinds check once per chunk (or run of chunks), as they check d->stopping.
 */
#include "daemon/daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct snap_store *region_store(struct daemon *d, const char *region)
{
	struct region_store *rs;
	int ret;

	for (rs = d->stores; rs; rs = rs->next)
		if (!strcmp(rs->region, region))
			return rs->store;
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return NULL;
	snprintf(rs->region, sizeof(rs->region), "%s", region);
	ret = store_open(d->regions_fd, region, &rs->store);
	if (ret) {
		log_err("cannot open the chunk store of %s: %s", region, strerror(-ret));
		free(rs);
		return NULL;
	}
	rs->next = d->stores;
	d->stores = rs;
	return rs->store;
}

struct job *job_find(struct daemon *d, enum job_kind kind, const char *id)
{
	for (struct job *j = d->jobs; j; j = j->next)
		if (j->kind == kind && !j->finished && !strcmp(j->id, id))
			return j;
	return NULL;
}

bool jobs_in_region(struct daemon *d, const char *region)
{
	for (struct job *j = d->jobs; j; j = j->next)
		if (!j->finished && j->kind != JOB_INIT && !strcmp(j->region, region))
			return true;
	return false;
}

struct job *job_start(struct daemon *d, enum job_kind kind, const char *id, const char *region,
		      void *(*fn)(void *), void *priv)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->kind = kind;
	snprintf(j->id, sizeof(j->id), "%s", id);
	snprintf(j->region, sizeof(j->region), "%s", region);
	j->started_ns = time_mono_ns();
	j->priv = priv;
	j->next = d->jobs;
	d->jobs = j;
	if (pthread_create(&j->thread, NULL, fn, j)) {
		d->jobs = j->next;
		free(j);
		return NULL;
	}
	return j;
}

void jobs_reap(struct daemon *d)
{
	struct job **pp = &d->jobs;

	while (*pp) {
		struct job *j = *pp;
		if (j->finished) {
			pthread_join(j->thread, NULL);
			*pp = j->next;
			free(j);
		} else {
			pp = &j->next;
		}
	}
}

void job_cancel(struct daemon *d, struct job *j)
{
	struct job **pp;

	j->cancel = true;
	pthread_mutex_unlock(&d->lock);
	pthread_join(j->thread, NULL);
	pthread_mutex_lock(&d->lock);
	for (pp = &d->jobs; *pp != j; pp = &(*pp)->next)
		;
	*pp = j->next;
	free(j);
}

void job_finish(struct daemon *d, struct job *j, bool failed)
{
	j->finished = true;
	for (struct region_store *rs = d->stores; rs; rs = rs->next) {
		if (strcmp(rs->region, j->region))
			continue;
		if (failed)
			rs->gc_wanted = true;
		if (rs->gc_wanted && !jobs_in_region(d, j->region))
			region_gc(d, j->region);
	}
}

void jobs_stop(struct daemon *d)
{
	pthread_mutex_lock(&d->lock);
	d->stopping = true;
	while (d->jobs) {
		struct job *j = d->jobs;
		d->jobs = j->next;
		pthread_mutex_unlock(&d->lock);
		pthread_join(j->thread, NULL);
		free(j);
		pthread_mutex_lock(&d->lock);
	}
	pthread_mutex_unlock(&d->lock);
}

struct gc_ctx {
	struct daemon *d;
	const char *region;
	char ids[256][ID_MAX];
	int n;
};

static int gc_collect(void *arg, const char *id)
{
	struct gc_ctx *g = arg;
	struct cat_snapshot s;

	if (cat_snapshot_get(g->d->cat, id, &s) == 0)
		return 0; /* still in the catalog */
	for (struct dvol *dv = g->d->vols; dv; dv = dv->next)
		if (!strcmp(dv->base_id, id))
			return 0; /* a restored volume still reads it */
	snprintf(g->ids[g->n++], ID_MAX, "%s", id);
	return g->n == (int)ARRAY_SIZE(g->ids);
}

void region_gc(struct daemon *d, const char *region)
{
	struct snap_store *st = region_store(d, region);
	struct region_store *rs;
	uint64_t freed = 0;
	int ret;

	if (!st)
		return;
	for (rs = d->stores; rs && strcmp(rs->region, region); rs = rs->next)
		;
	if (jobs_in_region(d, region)) {
		rs->gc_wanted = true;
		return;
	}
	rs->gc_wanted = false;
	for (;;) {
		struct gc_ctx *g = calloc(1, sizeof(*g));
		if (!g)
			return;
		g->d = d;
		g->region = region;
		manifest_each(st, gc_collect, g);
		for (int i = 0; i < g->n; i++)
			manifest_remove(st, g->ids[i]);
		int n = g->n;
		free(g);
		if (n < 256)
			break;
	}
	ret = store_gc(st, &freed);
	if (ret)
		log_err("GC of %s: %s", region, strerror(-ret));
	else if (freed)
		log_info("GC of %s freed %llu chunk(s)", region, (unsigned long long)freed);
}
