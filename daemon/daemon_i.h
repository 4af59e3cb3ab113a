/* SPDX-License-Identifier: MIT */
/*
 * daemon_i.h - ebsimd's private state, shared by its files: main (ebsimd.c), the control
 * socket (ctl.c), request plumbing (api.c) and the EC2 actions (act_*.c).
 *
 * Locking: d->lock guards the catalog, the served-volume table, the stores table and the
 * jobs list. The control thread holds it for the whole of each request; background jobs
 * (snapshot copies, hydration) take it only to read or update those tables, never across
 * I/O. The FUSE and engine threads reach volumes only through fuse/ and blockdev/, which
 * have their own locks.
 */
#ifndef EBSIM_DAEMON_I_H
#define EBSIM_DAEMON_I_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>

#include <json-c/json.h>

#include "blockdev/blockdev.h"
#include "common/common.h"
#include "fuse/volfs.h"
#include "persistence/catalog.h"
#include "snapshot/snapshot.h"

/* A volume the daemon serves. */
struct dvol {
	char id[ID_MAX];
	struct vol *vol;
	struct manifest *base; /* the base snapshot's manifest while it is still read */
	char base_id[ID_MAX];  /* its id ("" when none) */
	char region[32];
	bool ephemeral;	       /* an instance-store volume: its key lives only here */
	uint8_t key[VOL_DATA_KEY_LEN];
	int jobs;	       /* background jobs using this volume (it cannot be removed) */
	struct dvol *next;
};

enum job_kind { JOB_SNAPSHOT, JOB_COPY, JOB_INIT };

/* A background job: a snapshot being copied, a snapshot copy between regions, or the
 * hydration of a restored volume (initialize-volume). */
struct job {
	enum job_kind kind;
	char id[ID_MAX];     /* the snapshot (SNAPSHOT, COPY) or volume (INIT) */
	char volume[ID_MAX]; /* SNAPSHOT: the volume being copied */
	char region[32];
	/* chunks; the job thread writes them while describe calls read them */
	_Atomic uint64_t done, total;
	uint64_t started_ns;
	bool finished;
	_Atomic bool cancel; /* SNAPSHOT, COPY: stop early, undone (snapshot_abort) */
	pthread_t thread;
	struct job *next;
	void *priv;
};

struct region_store {
	char region[32];
	struct snap_store *store;
	bool gc_wanted; /* a GC is due once no job runs in the region */
	struct region_store *next;
};

struct daemon {
	char home[4096];
	int home_fd;
	int vols_fd; /* <home>/volumes */
	struct cat *cat;
	struct volfs *fs;
	struct blk_engine *eng;
	uint8_t master_key[VOL_MASTER_KEY_LEN];
	struct dvol *vols;
	pthread_mutex_t lock;
	int regions_fd; /* <home>/regions */
	int eph_fd;	/* <home>/instance-store */
	int inst_fd;	/* <home>/instances */
	double store_scale; /* --instance-store-scale */
	struct region_store *stores;
	struct job *jobs;
	bool stopping; /* jobs stop early at shutdown */
	/* base AMIs (base.c) */
	bool no_base_images;  /* --no-base-images */
	bool base_cached;     /* the image file is in cache_dir */
	char cache_dir[4096]; /* --cache-dir, default /var/cache/ebsim */
	char base_version[32]; /* BusyBox version in the image */
	uint32_t base_ready;  /* bit i: regions[i] has its base images */
};

/* One control request while it is being served. */
struct api_req {
	struct daemon *d;
	const char *action;
	const char *account;
	const char *region;
	json_object *params; /* never NULL: an empty object when the request had none */
	json_object *result; /* set by the action on success */
	char code[64];	     /* set by api_error */
	char message[1024];
};

/* Catalog documents: member k of object o, or NULL (o may be NULL). */
static inline json_object *jget(json_object *o, const char *k)
{
	json_object *v = NULL;

	return o && json_object_object_get_ex(o, k, &v) ? v : NULL;
}

/* The string member k of o, or "" when it is absent or not a string. */
static inline const char *jstr(json_object *o, const char *k)
{
	json_object *v = jget(o, k);

	return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
}

/* The regions ebsim knows, NULL-terminated. */
extern const char *const regions[];

/* Record an EC2 error on r; returns -1 so actions can `return api_error(...)`. */
int api_error(struct api_req *r, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Parameter accessors: 1 = present, 0 = absent, -1 = error recorded on r. */
int param_str(struct api_req *r, const char *name, bool required, const char **out);
int param_int(struct api_req *r, const char *name, bool required, int64_t *out);
int param_bool(struct api_req *r, const char *name, bool *out);
/* A list of strings: a JSON array of strings (or one string). *out is borrowed from r. */
int param_str_list(struct api_req *r, const char *name, json_object **out);
/* Refuse parameters that the action does not know: UnknownParameter. */
int params_allow(struct api_req *r, const char *const *names);

/* Describe-style filters: a filter name and the output field it matches. */
struct filter_map {
	const char *filter, *field;
};
/* Validate the request's Filters ([{Name, Values:[...]}], names from map or tag:*);
 * *out is NULL when there are none. 0 or -1 with InvalidParameterValue recorded. */
int filters_parse(struct api_req *r, const struct filter_map *map, json_object **out);
/* True when obj (an output object) matches every filter (values may use * and ?). */
bool filters_match(json_object *filters, const struct filter_map *map, json_object *obj);
/* '*' and '?' wildcards, as EC2 filters use them. */
bool glob_match(const char *pat, const char *s);
/* MaxResults (between min and max) / NextToken over a complete list: the token is the
 * idkey field of the first item of the next page. Consumes all; 0 or -1 (error recorded). */
int paginate(struct api_req *r, json_object *all, const char *idkey, int64_t min, int64_t max,
	     json_object **page, json_object **next);

/* Validate an ID with the given prefix; records "<Kind>ID.Malformed" on failure. */
int check_id(struct api_req *r, const char *prefix, const char *kind, const char *id);

/* Served-volume table. */
struct dvol *dvol_find(struct daemon *d, const char *id);
/* Open (with its base snapshot, if it has one, from region's store) and expose in FUSE. */
int dvol_serve(struct daemon *d, const char *id, const char *region);
/* Close and stop exposing; waits up to wait_ms for the file's open handles to close
 * (volfs_remove). -EBUSY while open or in a job. */
int dvol_unserve(struct daemon *d, const char *id, int wait_ms);

/* Dispatch one request: 0 with r->result, or -1 with r->code/r->message. */
int api_dispatch(struct api_req *r);

/* The chunk store of a region (opened on first use). NULL with the error logged. */
struct snap_store *region_store(struct daemon *d, const char *region);
/* Jobs (jobs.c). Under d->lock. */
struct job *job_find(struct daemon *d, enum job_kind kind, const char *id);
struct job *job_start(struct daemon *d, enum job_kind kind, const char *id, const char *region,
		      void *(*fn)(void *), void *priv);
void jobs_reap(struct daemon *d);   /* free finished jobs */
/* Ask j to stop early (j->cancel: snapshot and copy jobs check it), wait for its end with
 * d->lock released (its end takes the lock), then free it. Under d->lock, on the control
 * thread, which alone adds, reaps and removes jobs: j stays listed until it is joined here. */
void job_cancel(struct daemon *d, struct job *j);
/* The end of a job that stores chunks (snapshot, copy), from its thread, under d->lock:
 * mark it finished and run the region's GC if one is due; failed: its chunks are
 * referenced by no manifest, so one is. */
void job_finish(struct daemon *d, struct job *j, bool failed);
void jobs_stop(struct daemon *d);   /* at shutdown: wait for every job (d->lock not held) */
bool jobs_in_region(struct daemon *d, const char *region);
/* Remove snapshot manifests nobody needs and unreferenced chunks, when no job runs in the
 * region; otherwise the last job there does it. Under d->lock. */
void region_gc(struct daemon *d, const char *region);

/* Actions (act_volumes.c). */
int act_create_volume(struct api_req *r);
int act_describe_volumes(struct api_req *r);
int act_delete_volume(struct api_req *r);
int act_modify_volume(struct api_req *r);

/* Start-up recovery of volumes: finish interrupted creates and deletes, serve the rest. */
int volumes_recover(struct daemon *d);
/* Is az a zone of the request's region (<region>a to <region>f)? 0, or -1 with
 * InvalidZone.NotFound recorded. */
int zone_check(struct api_req *r, const char *az);
/* Look a volume up for this request's account and region; records the EC2 error. */
int volume_lookup(struct api_req *r, const char *id, struct cat_volume *v);
/* Create a volume (empty, or from snapshot `snap`) and serve it: the shared core of
 * CreateVolume and run-instances. 0 or -1 with the error recorded. */
int volume_create(struct api_req *r, struct cat_volume *v, const struct cat_snapshot *snap);
/* The same, with tags (an array of {Key, Value}) committed with the volume's row. */
int volume_create_tagged(struct api_req *r, struct cat_volume *v, const struct cat_snapshot *snap,
			 json_object *tags);

/* Actions (act_snapshots.c). */
int act_create_snapshot(struct api_req *r);
int act_describe_snapshots(struct api_req *r);
int act_delete_snapshot(struct api_req *r);
int act_copy_snapshot(struct api_req *r);
int act_list_snapshot_blocks(struct api_req *r);
int act_list_changed_blocks(struct api_req *r);
int act_initialize_volume(struct api_req *r);
int act_check_store(struct api_req *r);
/* Look a snapshot up (visible to the request's account, in its region). */
int snapshot_lookup(struct api_req *r, const char *id, struct cat_snapshot *s);
/* Start a point-in-time snapshot of a looked-up volume: the catalog row ('pending'), the
 * changed-set switch and the copy job. *out is the new row. 0 or -1 (error recorded). */
int snapshot_start(struct api_req *r, struct cat_volume *v, const char *desc, json_object *tags,
		   struct cat_snapshot *out);
/* Undo a snapshot that snapshot_start() or snapshot_copy_start() started (CreateImage or
 * CopyImage after a later step failed; DeregisterImage of the pending image it was made
 * for): stop its job and wait for it, which ends it as any failed snapshot ends, then
 * delete its row as DeleteSnapshot does. Nothing of it is left; the volume's next snapshot
 * is full. why is logged. Under d->lock, which it releases while it waits. */
void snapshot_abort(struct daemon *d, const char *id, const char *why);
/* Start copying a completed snapshot (any region, any owner: the caller checked access)
 * into the request's region, owned by the request's account; only chunks the destination
 * lacks are transferred. *out is the new 'pending' row. 0 or -1 (error recorded). */
int snapshot_copy_start(struct api_req *r, const struct cat_snapshot *src, const char *desc,
			json_object *tags, struct cat_snapshot *out);
/* Start-up recovery: snapshots left pending by a crash become 'error'. */
int snapshots_recover(struct daemon *d);
/* Images (act_images.c). */
int act_register_image(struct api_req *r);
int act_describe_images(struct api_req *r);
int act_deregister_image(struct api_req *r);
/* Validate and normalise a BlockDeviceMappings value; NULL with the error recorded. */
json_object *bdm_parse(struct api_req *r, json_object *in, bool for_image);
int act_create_image(struct api_req *r);
int act_copy_image(struct api_req *r);
int act_modify_image_attribute(struct api_req *r);
int act_describe_image_attribute(struct api_req *r);
int act_reset_image_attribute(struct api_req *r);
/* An image the request's account may launch (owner, explicitly permitted, or public), with
 * its State brought up to date from its snapshots; *out is a new reference. Otherwise
 * InvalidAMIID.NotFound (or .Malformed), as EC2 hides private images. */
int image_lookup(struct api_req *r, const char *id, json_object **out);
/* A snapshot the request's account may restore: its own, or one that backs an image in
 * the region the account may launch. InvalidSnapshot.NotFound otherwise. */
int snapshot_lookup_use(struct api_req *r, const char *id, struct cat_snapshot *s);
/* The DryRun parameter: when true, records DryRunOperation and returns -1; 0 otherwise. */
int dry_run_check(struct api_req *r);
/* A copy of a catalog document without its private "_" fields. */
json_object *doc_public(json_object *doc);
/* Does a registered image use this snapshot? */
bool snapshot_in_use(struct daemon *d, const char *snap);
/* "/dev/sdb" -> "sdb" */
const char *device_basename(const char *dev);

/* Instance-store-backed images (act_bundles.c). RegisterImage with ImageLocation
 * "BUCKET/OBJECT", called by act_register_image once the name is checked. */
int ami_bundle_register(struct api_req *r, const char *name, const char *desc, const char *virt,
			const char *loc);
/* run-instances of an instance-store-backed image: add the root (an instance-store volume
 * sized to the image) to the instance's planned instance store eph. 0 or -1 (recorded). */
int ami_bundle_root_plan(struct api_req *r, json_object *img, const char *inst_id,
			 json_object *eph);
/* Unbundle img onto inst's root, attached (LocalDevices) and not mounted, and flush it.
 * Verifies signature and digests before writing. 0 or -1 (recorded; the caller rolls
 * the instance back). */
int ami_bundle_root_fill(struct api_req *r, json_object *img, json_object *inst);

/* Mount-table operations on file systems that may sit on ebsimd's own FUSE files, each run
 * in a child process (run_isolated) so that a SIGKILL of ebsimd cannot leave it blocked for
 * ever on its own FUSE replies (act_instances.c). 0 or -errno. */
enum fs_op_kind {
	FS_MOUNT,	  /* mount source (type, flags) at path */
	FS_SYNC_UNMOUNT,  /* syncfs, then unmount path (-EBUSY while busy) */
	FS_DETACH,	  /* lazy unmount of path */
	FS_SYNC_FREEZE,	  /* syncfs, then FIFREEZE */
	FS_THAW,	  /* FITHAW */
};
int fs_op(enum fs_op_kind op, const char *path, const char *source, const char *type,
	  unsigned long flags);

/* Instances (act_instances.c). */
int act_run_instances(struct api_req *r);
int act_describe_instances(struct api_req *r);
int act_stop_instances(struct api_req *r);
int act_start_instances(struct api_req *r);
int act_reboot_instances(struct api_req *r);
int act_terminate_instances(struct api_req *r);
int act_modify_instance_attribute(struct api_req *r);
int act_attach_volume(struct api_req *r);
int act_detach_volume(struct api_req *r);
/* Start-up: instances cannot survive the daemon (their instance store is gone). */
int instances_recover(struct daemon *d);
/* Shutdown: unmount roots and detach loops of running instances (state kept). */
void instances_shutdown(struct daemon *d);

/* InitializationStatusDetails for a volume, or NULL when it has no base. Under d->lock. */
json_object *volume_init_status(struct daemon *d, const char *vol_id);

/* Base AMIs (base.c). At start-up: build the cached image file if missing and offer the
 * images in the default region; 0, or -EIO (logged) and the daemon runs without them. */
int base_init(struct daemon *d);
/* Offer the base images in region if it does not have them yet (first request there). */
void base_ensure(struct daemon *d, const char *region);
int act_build_base_images(struct api_req *r);

/* Tags (act_tags.c). */
int act_create_tags(struct api_req *r);
int act_delete_tags(struct api_req *r);
int act_describe_tags(struct api_req *r);
/* Check the request's TagSpecifications, which may name only resource type `type`: *tags
 * is its list of tags (borrowed from r), NULL when there are none. 0 or -1 (recorded). */
int tag_specs_parse(struct api_req *r, const char *type, json_object **tags);
/* Store checked tags (tag_specs_parse) on a resource, in the caller's transaction. */
int tags_put(struct daemon *d, const char *resource, json_object *tags);
/* Add "Tags": [{"Key", "Value"}] to an output object when the resource has tags. */
void tags_add_json(struct daemon *d, json_object *o, const char *resource);

#endif
