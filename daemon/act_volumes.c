/* SPDX-License-Identifier: MIT */
/*
 * act_volumes.c - the EBS volume actions: CreateVolume, DescribeVolumes, DeleteVolume,
 * ModifyVolume; the served-volume table; start-up recovery of volumes.
 *
 * Design notes
 * ------------
 * Crash protocol (with catalog.c): create = volume directory (built under a temp name,
 * renamed into place) -> catalog row -> served. Delete = refuse while the FUSE file is
 * open -> row marked 'deleting' -> unserved and closed -> directory removed -> row deleted.
 * At start, volumes_recover() removes directories that have no row (a create that never
 * answered), finishes 'deleting' rows, and serves every other volume.
 *
 * Volume-type rules (sizes in GiB, IOPS, MiB/s) follow the EC2 documentation:
 * gp2 1-16384, IOPS 3/GiB within 100-16000, not settable; gp3 1-16384, IOPS 3000-16000
 * (<= 500/GiB), throughput 125-1000 (<= IOPS/4); io1 4-16384, IOPS 100-64000 (<= 50/GiB),
 * required; io2 4-65536, IOPS 100-256000 (<= 1000/GiB), required; st1 and sc1 125-16384;
 * standard 1-1024.
 */
#include "daemon/daemon_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#define GIB (1ull << 30)

struct vtype {
	const char *name;
	int64_t min_gib, max_gib;
	int64_t min_iops, max_iops, iops_per_gib; /* max_iops 0: IOPS not settable */
	bool iops_required;
};

static const struct vtype vtypes[] = {
	{"gp2", 1, 16384, 0, 0, 0, false},
	{"gp3", 1, 16384, 3000, 16000, 500, false},
	{"io1", 4, 16384, 100, 64000, 50, true},
	{"io2", 4, 65536, 100, 256000, 1000, true},
	{"st1", 125, 16384, 0, 0, 0, false},
	{"sc1", 125, 16384, 0, 0, 0, false},
	{"standard", 1, 1024, 0, 0, 0, false},
};

static const struct vtype *vtype_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(vtypes); i++)
		if (!strcmp(vtypes[i].name, name))
			return &vtypes[i];
	return NULL;
}

/* ---- served-volume table ------------------------------------------------------------- */

struct dvol *dvol_find(struct daemon *d, const char *id)
{
	for (struct dvol *v = d->vols; v; v = v->next)
		if (!strcmp(v->id, id))
			return v;
	return NULL;
}

int dvol_serve(struct daemon *d, const char *id, const char *region)
{
	struct vol_keys keys = {.master = d->master_key};
	struct dvol *dv = calloc(1, sizeof(*dv));
	struct vol_base base = {0};
	int ret;

	if (!dv)
		return -ENOMEM;
	snprintf(dv->id, sizeof(dv->id), "%s", id);
	snprintf(dv->region, sizeof(dv->region), "%s", region);
	ret = vol_read_base_id(d->vols_fd, id, dv->base_id);
	if (ret)
		goto out_free;
	if (dv->base_id[0]) {
		base.store = region_store(d, region);
		ret = base.store ? manifest_read(base.store, dv->base_id, &dv->base) : -EIO;
		if (ret) {
			log_err("volume %s: its base snapshot %s cannot be read: %s", id,
				dv->base_id, strerror(-ret));
			goto out_free;
		}
		base.m = dv->base;
	}
	ret = vol_open(d->vols_fd, id, d->eng, &keys, dv->base ? &base : NULL, &dv->vol);
	if (ret)
		goto out_free;
	ret = volfs_add(d->fs, id, dv->vol);
	if (ret)
		goto out_close;
	dv->next = d->vols;
	d->vols = dv;
	return 0;
out_close:
	vol_close(dv->vol);
out_free:
	manifest_free(dv->base);
	free(dv);
	return ret;
}

int dvol_unserve(struct daemon *d, const char *id, int wait_ms)
{
	struct dvol **pp, *dv;
	int ret;

	for (pp = &d->vols; (dv = *pp); pp = &dv->next)
		if (!strcmp(dv->id, id))
			break;
	if (!dv)
		return -ENOENT;
	if (dv->jobs)
		return -EBUSY;
	ret = volfs_remove(d->fs, id, wait_ms);
	if (ret && ret != -ENOENT)
		return ret;
	*pp = dv->next;
	ret = vol_close(dv->vol);
	manifest_free(dv->base);
	free(dv);
	return ret;
}

/* ---- JSON ---------------------------------------------------------------------------- */

static json_object *volume_json(struct daemon *d, const struct cat_volume *v, bool attachments)
{
	json_object *o = json_object_new_object();
	char path[4200];
	const char *state = v->state;

	if (!strcmp(state, "available") && volfs_open_count(d->fs, v->id) > 0)
		state = "in-use";
	if (attachments) {
		json_object *list = json_object_new_array(), *a;
		if (cat_doc_get(d->cat, "attachment", v->id, &a) == 0)
			json_object_array_add(list, a);
		json_object_object_add(o, "Attachments", list);
	}
	json_object_object_add(o, "AvailabilityZone", json_object_new_string(v->az));
	json_object_object_add(o, "CreateTime", json_object_new_string(v->create_time));
	json_object_object_add(o, "Encrypted", json_object_new_boolean(v->encrypted));
	json_object_object_add(o, "Size", json_object_new_int64((int64_t)v->size_gib));
	json_object_object_add(o, "SnapshotId", json_object_new_string(v->snapshot_id));
	json_object_object_add(o, "State", json_object_new_string(state));
	json_object_object_add(o, "VolumeId", json_object_new_string(v->id));
	if (v->iops)
		json_object_object_add(o, "Iops", json_object_new_int(v->iops));
	json_object_object_add(o, "VolumeType", json_object_new_string(v->type));
	if (v->throughput)
		json_object_object_add(o, "Throughput", json_object_new_int(v->throughput));
	json_object_object_add(o, "MultiAttachEnabled", json_object_new_boolean(false));
	snprintf(path, sizeof(path), "%s/mnt/%s", d->home, v->id);
	json_object_object_add(o, "LocalPath", json_object_new_string(path));
	json_object *init = volume_init_status(d, v->id);
	if (init)
		json_object_object_add(o, "InitializationStatusDetails", init);
	tags_add_json(d, o, v->id);
	return o;
}

int volume_lookup(struct api_req *r, const char *id, struct cat_volume *v)
{
	int ret;

	if (check_id(r, "vol", "InvalidVolume", id))
		return -1;
	ret = cat_volume_get(r->d->cat, id, v);
	if (ret == -ENOENT || (!ret && (strcmp(v->account, r->account) ||
					strcmp(v->region, r->region) || !strcmp(v->state, "deleting") ||
					!strcmp(v->state, "creating"))))
		return api_error(r, "InvalidVolume.NotFound", "The volume '%s' does not exist.", id);
	if (ret)
		return api_error(r, "InternalError", "catalog read failed: %s", strerror(-ret));
	return 0;
}

/* Check size/IOPS/throughput against the type's rules; fills v->iops and v->throughput. */
static int volume_rules(struct api_req *r, const struct vtype *t, int64_t size, bool has_iops,
			int64_t iops, bool has_tput, int64_t tput, struct cat_volume *v)
{
	if (size < t->min_gib || size > t->max_gib)
		return api_error(r, "InvalidParameterValue",
				 "Volume size %lld GiB is invalid for %s volumes: valid range is "
				 "%lld-%lld GiB.",
				 (long long)size, t->name, (long long)t->min_gib,
				 (long long)t->max_gib);
	if (has_iops && !t->max_iops)
		return api_error(r, "InvalidParameterCombination",
				 "The parameter iops is not supported for %s volumes.", t->name);
	if (!has_iops && t->iops_required)
		return api_error(r, "MissingParameter",
				 "The request must contain the parameter iops for %s volumes.",
				 t->name);
	if (has_tput && strcmp(t->name, "gp3"))
		return api_error(r, "InvalidParameterCombination",
				 "The parameter throughput is supported only for gp3 volumes.");
	if (has_iops && (iops < t->min_iops || iops > t->max_iops ||
			 iops > t->iops_per_gib * MAX(size, 6)))
		return api_error(r, "InvalidParameterValue",
				 "Iops %lld is invalid for a %lld GiB %s volume: valid range is "
				 "%lld-%lld, at most %lld per GiB.",
				 (long long)iops, (long long)size, t->name, (long long)t->min_iops,
				 (long long)t->max_iops, (long long)t->iops_per_gib);
	if (!strcmp(t->name, "gp2"))
		v->iops = (int)MIN(16000, MAX(100, 3 * size));
	else if (!strcmp(t->name, "gp3"))
		v->iops = has_iops ? (int)iops : 3000;
	else
		v->iops = has_iops ? (int)iops : 0;
	if (!strcmp(t->name, "gp3")) {
		if (has_tput && (tput < 125 || tput > 1000 || tput > v->iops / 4))
			return api_error(r, "InvalidParameterValue",
					 "Throughput %lld MiB/s is invalid: valid range is 125-1000, "
					 "at most IOPS/4.",
					 (long long)tput);
		v->throughput = has_tput ? (int)tput : 125;
	} else {
		v->throughput = 0;
	}
	return 0;
}

/* ---- actions ------------------------------------------------------------------------- */

int zone_check(struct api_req *r, const char *az)
{
	size_t n = strlen(r->region);

	if (strncmp(az, r->region, n) || strlen(az) != n + 1 || az[n] < 'a' || az[n] > 'f')
		return api_error(r, "InvalidZone.NotFound",
				 "The zone '%.64s' does not exist in region %s.", az, r->region);
	return 0;
}

int act_create_volume(struct api_req *r)
{
	static const char *const allowed[] = {
		"Size",	     "VolumeType",	 "Iops",     "Throughput",	  "Encrypted",
		"KmsKeyId",  "AvailabilityZone", "SnapshotId", "TagSpecifications", "DryRun",
		"MultiAttachEnabled", "ClientToken", NULL};
	struct daemon *d = r->d;
	const char *type = "gp2", *az = NULL, *snap = NULL;
	int64_t size = 0, iops = 0, tput = 0;
	int has_size, has_iops, has_tput;
	bool encrypted = false;
	struct cat_volume v = {0};
	const struct vtype *t;
	json_object *tags;

	if (params_allow(r, allowed) || (has_size = param_int(r, "Size", false, &size)) < 0 ||
	    param_str(r, "VolumeType", false, &type) < 0 ||
	    (has_iops = param_int(r, "Iops", false, &iops)) < 0 ||
	    (has_tput = param_int(r, "Throughput", false, &tput)) < 0 ||
	    param_bool(r, "Encrypted", &encrypted) < 0 ||
	    param_str(r, "AvailabilityZone", false, &az) < 0 ||
	    param_str(r, "SnapshotId", false, &snap) < 0 ||
	    tag_specs_parse(r, "volume", &tags))
		return -1;
	if (!type)
		type = "gp2";
	t = vtype_find(type);
	if (!t)
		return api_error(r, "InvalidParameterValue",
				 "Value (%.32s) for parameter volumeType is invalid. Valid values: "
				 "gp2, gp3, io1, io2, st1, sc1, standard.",
				 type);
	struct cat_snapshot cs;
	if (snap) {
		if (snapshot_lookup_use(r, snap, &cs))
			return -1;
		if (strcmp(cs.state, "completed"))
			return api_error(r, "IncorrectState", "The snapshot '%s' is not completed.",
					 snap);
		if (!has_size) {
			size = (int64_t)cs.volume_size_gib;
			has_size = 1;
		}
		if (size < (int64_t)cs.volume_size_gib)
			return api_error(r, "InvalidParameterValue",
					 "The volume size (%lld GiB) cannot be smaller than the snapshot "
					 "size (%llu GiB).",
					 (long long)size, (unsigned long long)cs.volume_size_gib);
		encrypted = encrypted || cs.encrypted;
		if (!cs.encrypted && encrypted)
			return api_error(r, "InvalidParameterCombination",
					 "Creating an encrypted volume from an unencrypted snapshot "
					 "is not supported by ebsim yet.");
	}
	if (!has_size)
		return api_error(r, "MissingParameter",
				 "The request must contain the parameter size or snapshotId");
	if (volume_rules(r, t, size, has_iops, iops, has_tput, tput, &v))
		return -1;
	if (az) {
		if (zone_check(r, az))
			return -1;
		snprintf(v.az, sizeof(v.az), "%s", az);
	} else {
		snprintf(v.az, sizeof(v.az), "%sa", r->region);
	}
	snprintf(v.type, sizeof(v.type), "%s", t->name);
	v.size_gib = (uint64_t)size;
	v.encrypted = encrypted;
	if (volume_create_tagged(r, &v, snap ? &cs : NULL, tags))
		return -1;
	r->result = volume_json(d, &v, false);
	return 0;
}

int volume_create(struct api_req *r, struct cat_volume *v, const struct cat_snapshot *snap)
{
	return volume_create_tagged(r, v, snap, NULL);
}

/*
 * The create protocol: a 'creating' row is committed first, then the volume directory is
 * built (under a temporary name, renamed into place), then the row becomes 'available'
 * together with its tags. A crash leaves either nothing, or a 'creating' row that recovery
 * removes with whatever directory it has: the request never answered. So a volume
 * directory without a row is never ours to delete (volumes_recover leaves it alone).
 */
int volume_create_tagged(struct api_req *r, struct cat_volume *v, const struct cat_snapshot *snap,
			 json_object *tags)
{
	struct daemon *d = r->d;
	struct manifest *m = NULL;
	struct snap_store *st = NULL;
	int ret;

	ret = id_new("vol", v->id);
	if (ret)
		return api_error(r, "InternalError", "cannot make an ID: %s", strerror(-ret));
	snprintf(v->account, sizeof(v->account), "%s", r->account);
	snprintf(v->region, sizeof(v->region), "%s", r->region);
	time_iso8601(v->create_time);
	snprintf(v->state, sizeof(v->state), "creating");
	snprintf(v->snapshot_id, sizeof(v->snapshot_id), "%s", snap ? snap->id : "");
	/* a restored volume continues its snapshot's lineage: the next snapshot is incremental */
	snprintf(v->changed_base, sizeof(v->changed_base), "%s", snap ? snap->id : "");

	struct vol_params p = {.size = v->size_gib * GIB,
			       .crypt = v->encrypted ? VOL_CRYPT_WRAPPED : VOL_CRYPT_NONE};
	if (snap) {
		st = region_store(d, r->region);
		ret = st ? manifest_read(st, snap->id, &m) : -EIO;
		if (ret)
			return api_error(r, "InternalError", "cannot read snapshot %s: %s", snap->id,
					 strerror(-ret));
		p.base_snap = snap->id;
		p.chunk_size = m->chunk_size;
		if (m->flags & MANIFEST_F_ENCRYPTED)
			p.wrapped_key = m->wrapped_key;
	}
	ret = cat_volume_insert(d->cat, v);
	if (ret) {
		manifest_free(m);
		return api_error(r, "InternalError", "catalog update failed: %s", strerror(-ret));
	}
	crash_point("in-catalog-txn"); /* the row says 'creating'; the volume does not exist */
	struct vol_keys keys = {.master = d->master_key};
	ret = vol_create(d->vols_fd, v->id, &p, &keys);
	manifest_free(m);
	if (ret) {
		cat_volume_delete(d->cat, v->id);
		return api_error(r, ret == -ENOSPC ? "InsufficientVolumeCapacity" : "InternalError",
				 "cannot create the volume: %s", strerror(-ret));
	}
	snprintf(v->state, sizeof(v->state), "available");
	ret = cat_begin(d->cat);
	if (!ret) {
		ret = cat_volume_update(d->cat, v);
		if (!ret && tags)
			ret = tags_put(d, v->id, tags);
		ret = ret ? ret : cat_commit(d->cat);
		if (ret)
			cat_rollback(d->cat);
	}
	if (ret)
		goto out_destroy;
	ret = dvol_serve(d, v->id, v->region);
	if (ret)
		goto out_destroy;
	log_info("created %s (%llu GiB %s%s%s%s) for %s in %s", v->id,
		 (unsigned long long)v->size_gib, v->type, v->encrypted ? ", encrypted" : "",
		 snap ? ", from " : "", snap ? snap->id : "", v->account, v->region);
	return 0;
out_destroy:
	vol_destroy(d->vols_fd, v->id);
	cat_volume_delete(d->cat, v->id);
	return api_error(r, "InternalError", "cannot create the volume: %s", strerror(-ret));
}

struct describe_ctx {
	struct api_req *r;
	json_object *ids;     /* requested IDs, or NULL */
	json_object *filters; /* [{Name, Values}] or NULL */
	json_object *out;
	bool *seen;
};

static const struct filter_map volume_filters[] = {
	{"volume-id", "VolumeId"},     {"status", "State"},
	{"volume-type", "VolumeType"}, {"availability-zone", "AvailabilityZone"},
	{"size", "Size"},	       {"snapshot-id", "SnapshotId"},
	{"encrypted", "Encrypted"},    {"create-time", "CreateTime"},
	{"iops", "Iops"},	       {"throughput", "Throughput"},
	{NULL, NULL},
};

static int describe_one(void *arg, const struct cat_volume *v)
{
	struct describe_ctx *c = arg;
	struct api_req *r = c->r;
	json_object *vj;
	bool match = true;

	if (strcmp(v->account, r->account) || !strcmp(v->state, "deleting") ||
	    !strcmp(v->state, "creating"))
		return 0;
	if (c->ids) {
		bool wanted = false;
		for (size_t i = 0; i < json_object_array_length(c->ids); i++) {
			if (!strcmp(json_object_get_string(json_object_array_get_idx(c->ids, i)),
				    v->id)) {
				c->seen[i] = true;
				wanted = true;
			}
		}
		if (!wanted)
			return 0;
	}
	vj = volume_json(r->d, v, true);
	match = filters_match(c->filters, volume_filters, vj);
	if (match)
		json_object_array_add(c->out, vj);
	else
		json_object_put(vj);
	return 0;
}

int act_describe_volumes(struct api_req *r)
{
	static const char *const allowed[] = {"VolumeIds", "Filters", "MaxResults", "NextToken",
					      "DryRun", NULL};
	struct describe_ctx c = {.r = r};
	int ret;

	if (params_allow(r, allowed) || param_str_list(r, "VolumeIds", &c.ids) < 0 ||
	    filters_parse(r, volume_filters, &c.filters))
		return -1;
	if (c.ids && json_object_object_get_ex(r->params, "MaxResults", NULL))
		return api_error(r, "InvalidParameterCombination",
				 "The parameter volumeIds cannot be used with maxResults");
	size_t nids = c.ids ? json_object_array_length(c.ids) : 0;
	for (size_t i = 0; i < nids; i++)
		if (check_id(r, "vol", "InvalidVolume",
			     json_object_get_string(json_object_array_get_idx(c.ids, i))))
			return -1;
	c.seen = calloc(nids + 1, sizeof(bool));
	c.out = json_object_new_array();
	ret = cat_volume_each(r->d->cat, r->region, describe_one, &c);
	for (size_t i = 0; !ret && i < nids; i++)
		if (!c.seen[i])
			ret = api_error(r, "InvalidVolume.NotFound",
					"The volume '%s' does not exist.",
					json_object_get_string(json_object_array_get_idx(c.ids, i)));
	free(c.seen);
	if (ret) {
		json_object_put(c.out);
		return ret < 0 && !r->code[0] ? api_error(r, "InternalError", "catalog read failed")
					      : -1;
	}
	json_object *page, *next;
	if (paginate(r, c.out, "VolumeId", 5, 500, &page, &next))
		return -1;
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Volumes", page);
	if (next)
		json_object_object_add(r->result, "NextToken", next);
	return 0;
}

int act_delete_volume(struct api_req *r)
{
	static const char *const allowed[] = {"VolumeId", "DryRun", NULL};
	struct daemon *d = r->d;
	struct cat_volume v;
	const char *id;
	int ret;

	if (params_allow(r, allowed) || param_str(r, "VolumeId", true, &id) < 0 ||
	    volume_lookup(r, id, &v))
		return -1;
	if (strcmp(v.state, "available"))
		return api_error(r, "VolumeInUse", "Volume %s is currently %s.", id, v.state);
	if (dvol_find(d, id) && dvol_find(d, id)->jobs)
		return api_error(r, "VolumeInUse",
				 "Volume %s is in use by a snapshot or initialization in progress.", id);
	/* a close in flight (RELEASE comes after close(2) returns) gets a moment */
	ret = dvol_unserve(d, id, 1000);
	if (ret == -EBUSY)
		return api_error(r, "VolumeInUse",
				 "Volume %s is in use: its file %s/mnt/%s is open (attached to a loop "
				 "device or opened by a program).",
				 id, d->home, id);
	if (ret && ret != -ENOENT)
		log_warn("closing %s before delete: %s", id, strerror(-ret));
	snprintf(v.state, sizeof(v.state), "deleting");
	if (cat_volume_update(d->cat, &v))
		return api_error(r, "InternalError", "catalog update failed");
	ret = vol_destroy(d->vols_fd, id);
	if (ret)
		log_err("removing %s: %s (recovery at next start will retry)", id, strerror(-ret));
	else
		cat_volume_delete(d->cat, id);
	log_info("deleted %s", id);
	r->result = json_object_new_object();
	return 0;
}

int act_modify_volume(struct api_req *r)
{
	static const char *const allowed[] = {"VolumeId", "Size",	"VolumeType", "Iops",
					      "Throughput", "DryRun", "MultiAttachEnabled", NULL};
	struct daemon *d = r->d;
	const char *id, *type = NULL;
	int64_t size = 0, iops = 0, tput = 0;
	int has_size, has_iops, has_tput;
	struct cat_volume v, nv;
	const struct vtype *t;
	struct dvol *dv;
	char start[32], end[32];
	int ret;

	if (params_allow(r, allowed) || param_str(r, "VolumeId", true, &id) < 0 ||
	    (has_size = param_int(r, "Size", false, &size)) < 0 ||
	    param_str(r, "VolumeType", false, &type) < 0 ||
	    (has_iops = param_int(r, "Iops", false, &iops)) < 0 ||
	    (has_tput = param_int(r, "Throughput", false, &tput)) < 0 || volume_lookup(r, id, &v))
		return -1;
	if (!has_size && !type && !has_iops && !has_tput)
		return api_error(r, "MissingParameter",
				 "The request must contain at least one of size, volumeType, iops, "
				 "throughput");
	time_iso8601(start);
	if (!has_size)
		size = (int64_t)v.size_gib;
	if (size < (int64_t)v.size_gib)
		return api_error(r, "InvalidParameterValue",
				 "New size (%lld GiB) cannot be smaller than the existing size (%llu "
				 "GiB).",
				 (long long)size, (unsigned long long)v.size_gib);
	t = vtype_find(type ? type : v.type);
	if (!t)
		return api_error(r, "InvalidParameterValue",
				 "Value (%.32s) for parameter volumeType is invalid.", type);
	nv = v;
	if (!has_iops && t->iops_required && v.iops) {
		has_iops = 1;
		iops = v.iops;
	}
	if (!has_tput && !strcmp(t->name, "gp3") && v.throughput) {
		has_tput = 1;
		tput = v.throughput;
	}
	if (!has_iops && !strcmp(t->name, "gp3") && !strcmp(v.type, "gp3")) {
		has_iops = 1;
		iops = v.iops;
	}
	if (volume_rules(r, t, size, has_iops, iops, has_tput, tput, &nv))
		return -1;
	dv = dvol_find(d, id);
	if (!dv)
		return api_error(r, "IncorrectState", "Volume %s is not being served", id);
	if ((uint64_t)size != v.size_gib) {
		ret = vol_resize(dv->vol, (uint64_t)size * GIB);
		if (ret)
			return api_error(r, "InternalError", "resize failed: %s", strerror(-ret));
		volfs_resized(d->fs, id);
	}
	nv.size_gib = (uint64_t)size;
	snprintf(nv.type, sizeof(nv.type), "%s", t->name);
	if (cat_volume_update(d->cat, &nv))
		return api_error(r, "InternalError", "catalog update failed");
	time_iso8601(end);
	json_object *m = json_object_new_object();
	json_object_object_add(m, "VolumeId", json_object_new_string(id));
	json_object_object_add(m, "ModificationState", json_object_new_string("completed"));
	json_object_object_add(m, "TargetSize", json_object_new_int64((int64_t)nv.size_gib));
	if (nv.iops)
		json_object_object_add(m, "TargetIops", json_object_new_int(nv.iops));
	json_object_object_add(m, "TargetVolumeType", json_object_new_string(nv.type));
	if (nv.throughput)
		json_object_object_add(m, "TargetThroughput", json_object_new_int(nv.throughput));
	json_object_object_add(m, "OriginalSize", json_object_new_int64((int64_t)v.size_gib));
	if (v.iops)
		json_object_object_add(m, "OriginalIops", json_object_new_int(v.iops));
	json_object_object_add(m, "OriginalVolumeType", json_object_new_string(v.type));
	if (v.throughput)
		json_object_object_add(m, "OriginalThroughput", json_object_new_int(v.throughput));
	json_object_object_add(m, "Progress", json_object_new_int(100));
	json_object_object_add(m, "StartTime", json_object_new_string(start));
	json_object_object_add(m, "EndTime", json_object_new_string(end));
	r->result = json_object_new_object();
	json_object_object_add(r->result, "VolumeModification", m);
	log_info("modified %s: %llu -> %lld GiB, %s -> %s", id, (unsigned long long)v.size_gib,
		 (long long)size, v.type, nv.type);
	return 0;
}

/* ---- recovery ------------------------------------------------------------------------ */

struct recover_ctx {
	struct daemon *d;
	int served, failed;
};

static int recover_one(void *arg, const struct cat_volume *v)
{
	struct recover_ctx *c = arg;
	int ret;

	if (!id_valid("vol", v->id)) {
		log_err("catalog holds a malformed volume id; refusing to touch it");
		c->failed++;
		return 0;
	}
	if (!strcmp(v->state, "deleting") || !strcmp(v->state, "creating"))
		return 0; /* finished or undone above */
	ret = dvol_serve(c->d, v->id, v->region);
	if (ret) {
		log_err("volume %s cannot be served: %s", v->id, strerror(-ret));
		c->failed++;
	} else {
		c->served++;
	}
	return 0;
}

struct deleting {
	char ids[64][ID_MAX];
	int n;
};

static int collect_deleting(void *arg, const struct cat_volume *v)
{
	struct deleting *del = arg;

	/* 'deleting': finish; 'creating': a create that never answered, undo it */
	if ((strcmp(v->state, "deleting") && strcmp(v->state, "creating")) || !id_valid("vol", v->id))
		return 0;
	snprintf(del->ids[del->n++], ID_MAX, "%s", v->id);
	return del->n == (int)ARRAY_SIZE(del->ids); /* stop when full; the caller loops */
}

int volumes_recover(struct daemon *d)
{
	struct recover_ctx c = {.d = d};
	struct dirent *de;
	DIR *dir;
	int dfd, ret;

	/* Temporary directories are creates that never finished building: remove them. A
	 * directory without a row is not ours to judge (a catalog restored from a backup, or
	 * moved aside): it is left alone, and not served. */
	dfd = dup(d->vols_fd);
	dir = dfd >= 0 ? fdopendir(dfd) : NULL;
	while (dir && (de = readdir(dir))) {
		struct cat_volume v;
		if (de->d_name[0] == '.' && (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")))
			continue;
		if (de->d_name[0] == '.') {
			log_warn("removing %s: an interrupted create", de->d_name);
			file_remove_tree(d->vols_fd, de->d_name);
		} else if (cat_volume_get(d->cat, de->d_name, &v) == -ENOENT) {
			log_warn("volumes/%.64s is not in the catalog: left untouched, not served",
				 de->d_name);
		}
	}
	if (dir)
		closedir(dir);
	/* rows marked deleting: finish */
	for (;;) {
		struct deleting del = {.n = 0};
		int progress = 0;
		cat_volume_each(d->cat, NULL, collect_deleting, &del);
		for (int i = 0; i < del.n; i++) {
			if (vol_destroy(d->vols_fd, del.ids[i]) == 0 &&
			    cat_volume_delete(d->cat, del.ids[i]) == 0) {
				log_info("finished deleting %s", del.ids[i]);
				progress++;
			}
		}
		if (del.n < (int)ARRAY_SIZE(del.ids) || !progress)
			break;
	}
	ret = cat_volume_each(d->cat, NULL, recover_one, &c);
	if (ret)
		return ret;
	log_info("serving %d volume(s)%s", c.served, c.failed ? "; some failed, see above" : "");
	return c.failed ? -EUCLEAN : 0;
}
