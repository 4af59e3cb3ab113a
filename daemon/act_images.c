/* SPDX-License-Identifier: MIT */
/*
 * act_images.c - AMIs: RegisterImage (EBS-backed, from snapshots), CreateImage (from an
 * instance), CopyImage, DescribeImages, DeregisterImage, and launch permissions
 * (Modify/Describe/ResetImageAttribute).
 *
 * Design notes
 * ------------
 * An image is a catalog document (kind "image") holding exactly what DescribeImages shows,
 * plus private fields: _Region, and _LaunchUsers (the accounts explicitly allowed to
 * launch it, in the order they were added). "Public": true is the launch permission of
 * the group "all". BlockDeviceMappings use EC2's JSON: DeviceName with Ebs {SnapshotId,
 * VolumeSize, VolumeType, DeleteOnTermination, Iops, Throughput, Encrypted}, VirtualName
 * "ephemeralN", or NoDevice. A snapshot an image uses cannot be deleted
 * (InvalidSnapshot.InUse).
 *
 * Launch permissions (the seed's three kinds): implicit (the owner), explicit
 * (_LaunchUsers) and public. An account that may launch an image sees it in
 * DescribeImages, may launch it, copy it, and restore the snapshots it is made of
 * (snapshot_lookup_use: create-volume, run-instances). Anyone else gets
 * InvalidAMIID.NotFound (InvalidSnapshot.NotFound for the snapshots), as EC2 does not
 * reveal private images; DryRun answers the same way, since the image is checked before
 * the dry run is. Only the owner reads or changes the attributes, deregisters, or deletes
 * the snapshots: a non-owner who can see the image gets AuthFailure.
 *
 * State: CreateImage and CopyImage return at once with the image 'pending'; its
 * snapshots are copied by jobs (act_snapshots.c). The image's state is derived from its
 * snapshots' states whenever it is read (image_refresh): all completed -> 'available',
 * one in 'error' or gone -> 'failed' (with a StateReason). The catalog only caches the
 * result, so a daemon crash (which turns pending snapshots into 'error') cannot leave an
 * image wrong.
 *
 * CreateImage takes the point-in-time switch of every EBS volume of the instance at one
 * moment in which the file systems on them are quiet: by default (reboot semantics, as
 * on EC2) every file system mounted from the instance's loop devices is unmounted,
 * the switches are taken and the file systems are mounted again where they were; with
 * NoReboot each is synced (syncfs) and frozen (FIFREEZE) around the switches and thawed
 * (FITHAW) after. A file system that cannot be unmounted (busy) is frozen instead.
 * Instance-store volumes are mapped as VirtualName ephemeralN; their contents are not
 * captured.
 *
 * CreateImage fails whole or not at all. Every refusal it can foresee (bad input, the
 * instance's state, a volume already being snapshotted) comes before the first snapshot
 * starts. What can still fail after one has started, inside the request: looking up or
 * starting the snapshot of a later volume (snapshot_start: the store, vol_snap_begin, the
 * catalog row, the job), and the catalog write of the image and its tags (image_insert).
 * Each of these returns the EC2 error to the caller with no image, and first undoes every
 * snapshot the request started (each is recorded in its entry of vols), after the file
 * systems are mounted or thawed again: snapshot_abort (act_snapshots.c) stops the job and
 * waits for it, so it ends as any failed snapshot ends (vol_snap_end(ok=false) gives the
 * volume its changed bits back, and the chunks it stored are collected), then deletes the
 * row as DeleteSnapshot would; the volume's changed_base is cleared, so its next snapshot
 * is full. A snapshot whose own start failed leaves nothing either (snapshot_start undoes
 * its row and switch). A daemon crash inside the request leaves the started snapshots
 * 'pending' with no image naming them: snapshots_recover turns them into 'error' rows.
 *
 * CopyImage fails whole or not at all in the same way. Every source snapshot is checked
 * (present, completed) before the first copy starts. What can fail after one has started,
 * inside the request: starting the copy of a later snapshot (snapshot_copy_start: the
 * stores, the source manifest, the catalog row, the job) and image_insert. Each returns
 * the EC2 error with no image, after snapshot_abort has undone every copy the request
 * started: the copy job stops at its next chunk (its cancel flag), ends as a failed copy
 * (row 'error', its chunks collected: job_finish in jobs.c), and its row is deleted. The
 * destination region is left as it was, chunks included.
 *
 * A failure later, asynchronously (a snapshot of the pending image goes to 'error', e.g.
 * its copy fails on a damaged source chunk or ENOSPC, or the daemon stops), is EC2's
 * failed AMI, for CreateImage and CopyImage alike: the caller already holds the ImageId,
 * and EC2 reports such an AMI as State 'failed' (DescribeImages' ImageState, with a
 * StateReason) until its owner deregisters it, rather than making it vanish. So the image
 * stays, 'failed' with a StateReason naming the snapshot, and so do its other snapshots,
 * the completed ones and those still copying; the failed snapshot's own chunks are
 * collected when its job ends (job_finish). They are not orphans: the failed image's
 * BlockDeviceMappings name them, DeleteSnapshot refuses them (InvalidSnapshot.InUse)
 * while it exists, and DeregisterImage with DeleteAssociatedSnapshots removes them with
 * it, as on EC2, where the owner deregisters a failed AMI and its snapshots stay until
 * then.
 *
 * DeregisterImage with DeleteAssociatedSnapshots deletes each snapshot the image's
 * mappings name, except one another image also uses (EC2's rule) and another account's
 * (a mapping create-image added from a shared image). A snapshot still pending (the image
 * is pending: its CreateImage or CopyImage job still copies) is made for this image
 * alone, so it goes too: snapshot_abort stops its job, waits for it and deletes it, as a
 * failed CreateImage/CopyImage does, and its chunks are collected (a volume's stopped
 * snapshot gives the volume its changed bits back, so its next snapshot misses nothing).
 * Keeping it would leave, once it completed, a snapshot no image names: what the caller
 * asked to delete, left behind. The response stays {"Return": true}; EC2's
 * DeleteSnapshotResults (a ReturnCode per snapshot) is not emitted by ebsim, and a
 * snapshot that cannot be deleted (a catalog failure) is logged.
 */
#include "daemon/daemon_i.h"
#include "common/ctl_proto.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>
/* EC2's AMI name rule: 3-128 characters of letters, digits and ( ) [ ] space . / - ' @ _ */
static bool ami_name_ok(const char *n)
{
	size_t len = strlen(n);

	if (len < 3 || len > 128)
		return false;
	for (const char *p = n; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("()[] ./-'@_", *p))
			return false;
	return true;
}

static bool device_name_ok(const char *n)
{
	/* /dev/sd[a-z][1-9]?, /dev/xvd[a-z]{1,2}, xvd.., sd.. */
	const char *p = !strncmp(n, "/dev/", 5) ? n + 5 : n;
	size_t len = strlen(p);

	if (len < 3 || len > 8)
		return false;
	if (strncmp(p, "sd", 2) && strncmp(p, "xvd", 3) && strncmp(p, "hd", 2))
		return false;
	for (const char *q = p; *q; q++)
		if (!islower((unsigned char)*q) && !isdigit((unsigned char)*q))
			return false;
	return true;
}

const char *device_basename(const char *dev)
{
	return !strncmp(dev, "/dev/", 5) ? dev + 5 : dev;
}

/* Validate a BlockDeviceMappings value (for images and run-instances) and normalise it
 * into a new array. for_image: Ebs entries need a SnapshotId or VolumeSize. */
json_object *bdm_parse(struct api_req *r, json_object *in, bool for_image)
{
	json_object *out;

	if (!in)
		return json_object_new_array();
	if (json_object_is_type(in, json_type_string)) {
		api_error(r, "InvalidParameterValue",
			  "BlockDeviceMappings is not valid JSON: %.200s", json_object_get_string(in));
		return NULL;
	}
	if (!json_object_is_type(in, json_type_array) || json_object_array_length(in) > 32) {
		api_error(r, "InvalidParameterValue",
			  "BlockDeviceMappings must be a list of at most 32 mappings");
		return NULL;
	}
	out = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(in); i++) {
		json_object *m = json_object_array_get_idx(in, i), *n = json_object_new_object();
		json_object *dn = jget(m, "DeviceName"), *ebs = jget(m, "Ebs"), *vn = jget(m, "VirtualName");
		json_object *nd = jget(m, "NoDevice");
		const char *dev;

		json_object_array_add(out, n);
		if (!json_object_is_type(m, json_type_object) || !dn ||
		    !json_object_is_type(dn, json_type_string) ||
		    !device_name_ok(dev = json_object_get_string(dn)))
			goto bad;
		for (size_t k = 0; k < i; k++)
			if (!strcmp(device_basename(json_object_get_string(
					    jget(json_object_array_get_idx(out, k), "DeviceName"))),
				    device_basename(dev))) {
				api_error(r, "InvalidBlockDeviceMapping",
					  "The device %s is mapped more than once", dev);
				goto out_put;
			}
		json_object_object_add(n, "DeviceName", json_object_new_string(dev));
		if (!!ebs + !!vn + !!nd != 1)
			goto bad;
		if (nd) {
			json_object_object_add(n, "NoDevice", json_object_new_string(""));
			continue;
		}
		if (vn) {
			const char *v = json_object_get_string(vn);
			char *end;
			if (!json_object_is_type(vn, json_type_string) || strncmp(v, "ephemeral", 9) ||
			    !isdigit((unsigned char)v[9]) || strtol(v + 9, &end, 10) > 23 || *end)
				goto bad;
			json_object_object_add(n, "VirtualName", json_object_new_string(v));
			continue;
		}
		if (!json_object_is_type(ebs, json_type_object))
			goto bad;
		json_object *e = json_object_new_object(), *v;
		json_object_object_add(n, "Ebs", e);
		json_object_object_foreach(ebs, key, val)
		{
			if (!strcmp(key, "SnapshotId")) {
				if (!json_object_is_type(val, json_type_string) ||
				    check_id(r, "snap", "InvalidSnapshot", json_object_get_string(val)))
					goto out_put_any;
			} else if (!strcmp(key, "VolumeSize") || !strcmp(key, "Iops") ||
				   !strcmp(key, "Throughput")) {
				if (!json_object_is_type(val, json_type_int) || json_object_get_int64(val) <= 0)
					goto bad;
			} else if (!strcmp(key, "DeleteOnTermination") || !strcmp(key, "Encrypted")) {
				if (!json_object_is_type(val, json_type_boolean))
					goto bad;
			} else if (!strcmp(key, "VolumeType") || !strcmp(key, "KmsKeyId")) {
				if (!json_object_is_type(val, json_type_string))
					goto bad;
			} else {
				api_error(r, "InvalidBlockDeviceMapping",
					  "Unknown field Ebs.%.64s in the mapping for %s", key, dev);
				goto out_put;
			}
			json_object_object_add(e, key, json_object_get(val));
		}
		if (for_image && !(v = jget(e, "SnapshotId")) && !jget(e, "VolumeSize")) {
			api_error(r, "InvalidBlockDeviceMapping",
				  "The mapping for %s needs Ebs.SnapshotId or Ebs.VolumeSize", dev);
			goto out_put;
		}
	}
	return out;
bad:
	api_error(r, "InvalidBlockDeviceMapping",
		  "Mapping %zu is not valid: expected {\"DeviceName\": \"/dev/sdX\", and one of "
		  "\"Ebs\": {...}, \"VirtualName\": \"ephemeralN\", \"NoDevice\": \"\"}",
		  json_object_array_length(out) - 1);
out_put_any:
out_put:
	json_object_put(out);
	return NULL;
}

/* ---- launch permissions and state --------------------------------------------------------- */

static bool is_owner(const char *account, json_object *img)
{
	return !strcmp(jstr(img, "OwnerId"), account);
}

static bool is_public(json_object *img)
{
	json_object *pub = jget(img, "Public");

	return pub && json_object_get_boolean(pub);
}

/* Is account in the image's explicit launch permissions? */
static bool is_launch_user(const char *account, json_object *img)
{
	json_object *u = jget(img, "_LaunchUsers");

	for (size_t i = 0; u && i < json_object_array_length(u); i++)
		if (!strcmp(json_object_get_string(json_object_array_get_idx(u, i)), account))
			return true;
	return false;
}

/* May account launch (and so see, copy, restore) the image? */
static bool image_launchable(const char *account, json_object *img)
{
	return is_owner(account, img) || is_public(img) || is_launch_user(account, img);
}

/* Bring a pending image's State up to date from its snapshots. True when it changed. */
static bool image_refresh(struct daemon *d, json_object *img)
{
	json_object *bdm = jget(img, "BlockDeviceMappings");
	const char *failed = NULL;
	char why[300];
	bool pending = false;

	if (strcmp(jstr(img, "State"), "pending"))
		return false;
	for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
		const char *sid = jstr(jget(json_object_array_get_idx(bdm, i), "Ebs"), "SnapshotId");
		struct cat_snapshot s;
		if (!sid[0])
			continue;
		if (cat_snapshot_get(d->cat, sid, &s)) {
			snprintf(why, sizeof(why), "the snapshot %s is gone", sid);
			failed = why;
		} else if (!strcmp(s.state, "error")) {
			snprintf(why, sizeof(why), "the snapshot %s failed: %.200s", sid,
				 s.state_message);
			failed = why;
		} else if (strcmp(s.state, "completed")) {
			pending = true;
		}
	}
	if (failed) {
		json_object *sr = json_object_new_object();
		json_object_object_add(sr, "Code", json_object_new_string("Client.InternalError"));
		json_object_object_add(sr, "Message", json_object_new_string(failed));
		json_object_object_add(img, "StateReason", sr);
		json_object_object_add(img, "State", json_object_new_string("failed"));
		log_warn("image %s failed: %s", jstr(img, "ImageId"), failed);
		return true;
	}
	if (pending)
		return false;
	json_object_object_add(img, "State", json_object_new_string("available"));
	log_info("image %s is available", jstr(img, "ImageId"));
	return true;
}

static int image_save(struct daemon *d, json_object *img)
{
	return cat_doc_put(d->cat, "image", jstr(img, "ImageId"), jstr(img, "OwnerId"),
			   jstr(img, "_Region"), img);
}

/* The image as the catalog has it, in the request's region, whoever owns it. */
static int image_get(struct api_req *r, const char *id, json_object **out)
{
	json_object *img = NULL;
	int ret;

	if (check_id(r, "ami", "InvalidAMI", id))
		return -1;
	ret = cat_doc_get(r->d->cat, "image", id, &img);
	if (ret == -ENOENT || (!ret && strcmp(jstr(img, "_Region"), r->region))) {
		json_object_put(img);
		return api_error(r, "InvalidAMIID.NotFound", "The image id '[%s]' does not exist", id);
	}
	if (ret)
		return api_error(r, "InternalError", "catalog read failed");
	if (image_refresh(r->d, img) && image_save(r->d, img))
		log_warn("image %s: cannot record its state", id);
	*out = img;
	return 0;
}

int image_lookup(struct api_req *r, const char *id, json_object **out)
{
	json_object *img = NULL;

	if (image_get(r, id, &img))
		return -1;
	if (!image_launchable(r->account, img)) {
		json_object_put(img);
		return api_error(r, "InvalidAMIID.NotFound", "The image id '[%s]' does not exist", id);
	}
	*out = img;
	return 0;
}

/* An image the request's account owns: InvalidAMIID.NotFound when it cannot see it,
 * AuthFailure when it can but is not the owner. */
static int image_lookup_owned(struct api_req *r, const char *id, json_object **out)
{
	if (image_lookup(r, id, out))
		return -1;
	if (!is_owner(r->account, *out)) {
		json_object_put(*out);
		return api_error(r, "AuthFailure", "Not authorized for image:%s", id);
	}
	return 0;
}

struct snapuse_ctx {
	const char *account, *snap;
	bool ok;
};

static int snap_backs_launchable(void *arg, const char *id, const char *account, json_object *doc)
{
	struct snapuse_ctx *c = arg;
	json_object *bdm = jget(doc, "BlockDeviceMappings");

	(void)id;
	(void)account;
	if (!image_launchable(c->account, doc))
		return 0;
	for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++)
		if (!strcmp(jstr(jget(json_object_array_get_idx(bdm, i), "Ebs"), "SnapshotId"),
			    c->snap))
			c->ok = true;
	return c->ok;
}

int snapshot_lookup_use(struct api_req *r, const char *id, struct cat_snapshot *s)
{
	struct snapuse_ctx c = {r->account, id, false};
	int ret;

	if (check_id(r, "snap", "InvalidSnapshot", id))
		return -1;
	ret = cat_snapshot_get(r->d->cat, id, s);
	if (ret && ret != -ENOENT)
		return api_error(r, "InternalError", "catalog read failed: %s", strerror(-ret));
	if (!ret && !strcmp(s->region, r->region)) {
		if (!strcmp(s->account, r->account))
			return 0;
		cat_doc_each(r->d->cat, "image", r->region, snap_backs_launchable, &c);
		if (c.ok)
			return 0;
	}
	return api_error(r, "InvalidSnapshot.NotFound", "The snapshot '%s' does not exist.", id);
}

int dry_run_check(struct api_req *r)
{
	bool dry = false;

	if (param_bool(r, "DryRun", &dry) < 0)
		return -1;
	if (dry)
		return api_error(r, "DryRunOperation",
				 "Request would have succeeded, but DryRun flag is set.");
	return 0;
}

/* A copy of doc without the private "_" fields: what describe calls show. */
json_object *doc_public(json_object *doc)
{
	json_object *o = json_object_new_object();

	json_object_object_foreach(doc, k, v)
	{
		if (k[0] != '_')
			json_object_object_add(o, k, json_object_get(v));
	}
	return o;
}

struct name_ctx {
	const char *account, *region, *name;
	bool dup;
};

static int name_dup(void *arg, const char *id, const char *account, json_object *doc)
{
	struct name_ctx *c = arg;

	(void)id;
	if (!strcmp(account, c->account) &&
	    !strcmp(json_object_get_string(jget(doc, "Name")), c->name))
		c->dup = true;
	return c->dup;
}

/* A new image's name: well formed, and not in use by the account in the region. */
static int image_name_check(struct api_req *r, const char *name)
{
	struct name_ctx nc = {r->account, r->region, name, false};

	if (!ami_name_ok(name))
		return api_error(r, "InvalidAMIName.Malformed",
				 "AMI names must be between 3 and 128 characters long, and may "
				 "contain letters, numbers, '(', ')', '[', ']', ' ', '.', '-', '/', "
				 "'\\'', '@' and '_'");
	cat_doc_each(r->d->cat, "image", r->region, name_dup, &nc);
	if (nc.dup)
		return api_error(r, "InvalidAMIName.Duplicate",
				 "AMI name %s is already in use by AMI in your account", name);
	return 0;
}

/* The fields every new image starts with; the caller adds the rest. */
static json_object *image_new(struct api_req *r, const char *id, const char *name,
			      const char *desc, const char *state)
{
	json_object *img = json_object_new_object();
	char now[32], location[200];

	time_iso8601(now);
	snprintf(location, sizeof(location), "%s/%s", r->account, name);
	json_object_object_add(img, "CreationDate", json_object_new_string(now));
	json_object_object_add(img, "ImageId", json_object_new_string(id));
	json_object_object_add(img, "ImageLocation", json_object_new_string(location));
	json_object_object_add(img, "ImageType", json_object_new_string("machine"));
	json_object_object_add(img, "Public", json_object_new_boolean(false));
	json_object_object_add(img, "OwnerId", json_object_new_string(r->account));
	json_object_object_add(img, "PlatformDetails", json_object_new_string("Linux/UNIX"));
	json_object_object_add(img, "UsageOperation", json_object_new_string("RunInstances"));
	json_object_object_add(img, "State", json_object_new_string(state));
	json_object_object_add(img, "Description", json_object_new_string(desc ? desc : ""));
	json_object_object_add(img, "Name", json_object_new_string(name));
	json_object_object_add(img, "RootDeviceType", json_object_new_string("ebs"));
	json_object_object_add(img, "Hypervisor", json_object_new_string("xen"));
	json_object_object_add(img, "_Region", json_object_new_string(r->region));
	return img;
}

/* Store a new image with its tags, in one transaction. 0 or -1 (recorded). */
static int image_insert(struct api_req *r, json_object *img, json_object *tags)
{
	struct daemon *d = r->d;
	int ret = cat_begin(d->cat);

	if (!ret) {
		ret = image_save(d, img);
		if (!ret)
			ret = tags_put(d, jstr(img, "ImageId"), tags);
		if (!ret)
			ret = cat_commit(d->cat);
		if (ret)
			cat_rollback(d->cat);
	}
	return ret ? api_error(r, "InternalError", "catalog update failed") : 0;
}

int act_register_image(struct api_req *r)
{
	static const char *const allowed[] = {
		"Name",	       "Description",	     "RootDeviceName", "BlockDeviceMappings",
		"Architecture", "VirtualizationType", "KernelId",	"RamdiskId",
		"EnaSupport",  "SriovNetSupport",    "BootMode",	"ImageLocation",
		"DryRun",      "TpmSupport",	     "ImdsSupport",	"TagSpecifications",
		NULL};
	const char *name, *desc = NULL, *root = NULL, *arch = "x86_64", *virt = "hvm", *loc = NULL;
	json_object *bdm, *img, *tags;
	char id[ID_MAX];
	bool root_found = false;

	if (params_allow(r, allowed) || param_str(r, "Name", true, &name) < 0 ||
	    param_str(r, "Description", false, &desc) < 0 ||
	    param_str(r, "RootDeviceName", false, &root) < 0 ||
	    param_str(r, "Architecture", false, &arch) < 0 ||
	    param_str(r, "VirtualizationType", false, &virt) < 0 ||
	    param_str(r, "ImageLocation", false, &loc) < 0)
		return -1;
	arch = arch ? arch : "x86_64";
	virt = virt ? virt : "hvm";
	if (image_name_check(r, name))
		return -1;
	if (strcmp(arch, "x86_64") && strcmp(arch, "arm64") && strcmp(arch, "i386"))
		return api_error(r, "InvalidParameterValue",
				 "Value (%.32s) for parameter architecture is invalid.", arch);
	if (strcmp(virt, "hvm") && strcmp(virt, "paravirtual"))
		return api_error(r, "InvalidParameterValue",
				 "Value (%.32s) for parameter virtualizationType is invalid.", virt);
	if (desc && strlen(desc) > 255)
		return api_error(r, "InvalidParameterValue", "The description is too long.");
	if (!root && !loc)
		return api_error(r, "MissingParameter",
				 "The request must contain the parameter RootDeviceName");
	if (root && !device_name_ok(root))
		return api_error(r, "InvalidParameterValue", "Invalid root device name: %.64s", root);
	if (loc)
		return ami_bundle_register(r, name, desc, virt, loc);
	if (tag_specs_parse(r, "image", &tags))
		return -1;
	bdm = bdm_parse(r, jget(r->params, "BlockDeviceMappings"), true);
	if (!bdm)
		return -1;
	for (size_t i = 0; i < json_object_array_length(bdm); i++) {
		json_object *m = json_object_array_get_idx(bdm, i), *e = jget(m, "Ebs"), *sid;
		struct cat_snapshot s;
		if (e && (sid = jget(e, "SnapshotId"))) {
			if (snapshot_lookup(r, json_object_get_string(sid), &s))
				goto out_put;
			if (strcmp(s.state, "completed")) {
				api_error(r, "IncorrectState", "The snapshot '%s' is not completed.", s.id);
				goto out_put;
			}
			json_object *vs = jget(e, "VolumeSize");
			if (vs && (uint64_t)json_object_get_int64(vs) < s.volume_size_gib) {
				api_error(r, "InvalidBlockDeviceMapping",
					  "Volume of size %lld GiB is smaller than snapshot '%s', "
					  "expect size >= %llu GiB",
					  (long long)json_object_get_int64(vs), s.id,
					  (unsigned long long)s.volume_size_gib);
				goto out_put;
			}
			if (!vs)
				json_object_object_add(e, "VolumeSize",
						       json_object_new_int64((int64_t)s.volume_size_gib));
			if (!jget(e, "Encrypted"))
				json_object_object_add(e, "Encrypted", json_object_new_boolean(s.encrypted));
		}
		if (e && !jget(e, "DeleteOnTermination"))
			json_object_object_add(e, "DeleteOnTermination", json_object_new_boolean(true));
		if (e && !jget(e, "VolumeType"))
			json_object_object_add(e, "VolumeType", json_object_new_string("gp2"));
		if (!strcmp(device_basename(json_object_get_string(jget(m, "DeviceName"))),
			    device_basename(root))) {
			if (!e || !jget(e, "SnapshotId")) {
				api_error(r, "InvalidBlockDeviceMapping",
					  "The root device %s must map an EBS snapshot", root);
				goto out_put;
			}
			root_found = true;
		}
	}
	if (!root_found) {
		api_error(r, "InvalidBlockDeviceMapping",
			  "No mapping for the root device %s: an EBS-backed image needs one with "
			  "Ebs.SnapshotId",
			  root);
		goto out_put;
	}
	if (id_new("ami", id)) {
		api_error(r, "InternalError", "cannot make an ID");
		goto out_put;
	}
	img = image_new(r, id, name, desc, "available");
	json_object_object_add(img, "Architecture", json_object_new_string(arch));
	json_object_object_add(img, "BlockDeviceMappings", bdm);
	json_object_object_add(img, "RootDeviceName", json_object_new_string(root));
	json_object_object_add(img, "VirtualizationType", json_object_new_string(virt));
	if (image_insert(r, img, tags)) {
		json_object_put(img);
		return -1;
	}
	json_object_put(img);
	log_info("registered %s (%s) for %s in %s", id, name, r->account, r->region);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "ImageId", json_object_new_string(id));
	return 0;
out_put:
	json_object_put(bdm);
	return -1;
}

/* ---- describe-images --------------------------------------------------------------------- */

/* DescribeImages filters. Those whose field starts with '@' are matched by image_special
 * (block device mappings); the others match a field of the image document. */
static const struct filter_map image_filters[] = {
	{"architecture", "Architecture"},
	{"block-device-mapping.delete-on-termination", "@DeleteOnTermination"},
	{"block-device-mapping.device-name", "@DeviceName"},
	{"block-device-mapping.snapshot-id", "@SnapshotId"},
	{"block-device-mapping.volume-size", "@VolumeSize"},
	{"block-device-mapping.volume-type", "@VolumeType"},
	{"block-device-mapping.encrypted", "@Encrypted"},
	{"creation-date", "CreationDate"},
	{"description", "Description"},
	{"hypervisor", "Hypervisor"},
	{"image-id", "ImageId"},
	{"image-type", "ImageType"},
	{"is-public", "Public"},
	{"name", "Name"},
	{"owner-alias", "ImageOwnerAlias"},
	{"owner-id", "OwnerId"},
	{"platform", "Platform"},
	{"platform-details", "PlatformDetails"},
	{"root-device-name", "RootDeviceName"},
	{"root-device-type", "RootDeviceType"},
	{"source-image-id", "SourceImageId"},
	{"source-instance-id", "SourceInstanceId"},
	{"state", "State"},
	{"state-reason-code", "StateReasonCode"},
	{"usage-operation", "UsageOperation"},
	{"virtualization-type", "VirtualizationType"},
	{NULL, NULL},
};

static const char *special_field(const char *filter)
{
	for (const struct filter_map *m = image_filters; m->filter; m++)
		if (!strcmp(m->filter, filter))
			return m->field[0] == '@' ? m->field + 1 : NULL;
	return NULL;
}

/* A block-device-mapping.* filter: some mapping's field (in it or its Ebs) matches. */
static bool image_special(json_object *f, json_object *img)
{
	const char *field = special_field(jstr(f, "Name"));
	json_object *values = jget(f, "Values"), *bdm = jget(img, "BlockDeviceMappings");

	for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
		json_object *m = json_object_array_get_idx(bdm, i);
		json_object *v = jget(m, field) ? jget(m, field) : jget(jget(m, "Ebs"), field);
		for (size_t k = 0; v && k < json_object_array_length(values); k++)
			if (glob_match(json_object_get_string(json_object_array_get_idx(values, k)),
				       json_object_get_string(v)))
				return true;
	}
	return false;
}

struct dimg_ctx {
	struct api_req *r;
	json_object *ids, *owners, *users, *filters, *special, *out, *changed;
	bool *seen;
};

static bool owner_matches(struct api_req *r, json_object *owners, json_object *img)
{
	for (size_t i = 0; i < json_object_array_length(owners); i++) {
		const char *o = json_object_get_string(json_object_array_get_idx(owners, i));
		if ((!strcmp(o, "self") && is_owner(r->account, img)) || is_owner(o, img) ||
		    (!strcmp(o, EBSIM_AMAZON_ALIAS) &&
		     (is_owner(EBSIM_AMAZON_ACCOUNT, img) ||
		      !strcmp(jstr(img, "ImageOwnerAlias"), EBSIM_AMAZON_ALIAS))))
			return true;
	}
	return false;
}

/* ExecutableUsers: all = public images; self or an account = images that account has an
 * explicit launch permission for (EC2 leaves out the owner's implicit one). */
static bool users_match(struct api_req *r, json_object *users, json_object *img)
{
	for (size_t i = 0; i < json_object_array_length(users); i++) {
		const char *u = json_object_get_string(json_object_array_get_idx(users, i));
		if (!strcmp(u, "all") ? is_public(img)
				      : is_launch_user(!strcmp(u, "self") ? r->account : u, img))
			return true;
	}
	return false;
}

static int describe_image_one(void *arg, const char *id, const char *account, json_object *doc)
{
	struct dimg_ctx *c = arg;
	json_object *o;

	(void)account;
	if (!image_launchable(c->r->account, doc))
		return 0;
	if (c->owners && !owner_matches(c->r, c->owners, doc))
		return 0;
	if (c->users && !users_match(c->r, c->users, doc))
		return 0;
	if (c->ids) {
		bool wanted = false;
		for (size_t i = 0; i < json_object_array_length(c->ids); i++)
			if (!strcmp(json_object_get_string(json_object_array_get_idx(c->ids, i)), id))
				wanted = c->seen[i] = true;
		if (!wanted)
			return 0;
	}
	if (image_refresh(c->r->d, doc))
		json_object_array_add(c->changed, json_object_get(doc));
	o = doc_public(doc);
	tags_add_json(c->r->d, o, id);
	if (jget(doc, "StateReason"))
		json_object_object_add(o, "StateReasonCode",
				       json_object_new_string(jstr(jget(doc, "StateReason"), "Code")));
	bool ok = filters_match(c->filters, image_filters, o);
	for (size_t i = 0; ok && c->special && i < json_object_array_length(c->special); i++)
		ok = image_special(json_object_array_get_idx(c->special, i), o);
	json_object_object_del(o, "StateReasonCode");
	if (ok) {
		json_object_array_add(c->out, o);
	} else {
		json_object_put(o);
	}
	return 0;
}

/* Owners: self, amazon, aws-marketplace, aws-backup-vault or 12-digit account IDs;
 * ExecutableUsers: self, all or account IDs. */
static bool account_id_ok(const char *s)
{
	size_t n = strlen(s);

	return n == 12 && strspn(s, "0123456789") == 12;
}

static int check_names(struct api_req *r, json_object *l, const char *param,
		       const char *const *words)
{
	for (size_t i = 0; l && i < json_object_array_length(l); i++) {
		const char *s = json_object_get_string(json_object_array_get_idx(l, i));
		bool ok = account_id_ok(s);
		for (const char *const *w = words; *w && !ok; w++)
			ok = !strcmp(s, *w);
		if (!ok)
			return api_error(r, "InvalidParameterValue",
					 "Invalid value '%.64s' for %s: expected a 12-digit account ID "
					 "or one of the aliases.",
					 s, param);
	}
	return 0;
}

int act_describe_images(struct api_req *r)
{
	static const char *const allowed[] = {"ImageIds", "Owners", "ExecutableUsers", "Filters",
					      "IncludeDeprecated", "IncludeDisabled", "MaxResults",
					      "NextToken", "DryRun", NULL};
	static const char *const owner_words[] = {"self", EBSIM_AMAZON_ALIAS, "aws-marketplace",
						  "aws-backup-vault", NULL};
	static const char *const user_words[] = {"self", "all", NULL};
	struct dimg_ctx c = {.r = r};
	json_object *all, *page, *next;
	size_t nids;
	int ret;

	if (params_allow(r, allowed) || param_str_list(r, "ImageIds", &c.ids) < 0 ||
	    param_str_list(r, "Owners", &c.owners) < 0 ||
	    param_str_list(r, "ExecutableUsers", &c.users) < 0 ||
	    check_names(r, c.owners, "Owners", owner_words) ||
	    check_names(r, c.users, "ExecutableUsers", user_words) ||
	    filters_parse(r, image_filters, &all))
		return -1;
	if (c.ids && json_object_object_get_ex(r->params, "MaxResults", NULL))
		return api_error(r, "InvalidParameterCombination",
				 "The parameter imageIds cannot be used with maxResults");
	nids = c.ids ? json_object_array_length(c.ids) : 0;
	for (size_t i = 0; i < nids; i++)
		if (check_id(r, "ami", "InvalidAMI",
			     json_object_get_string(json_object_array_get_idx(c.ids, i))))
			return -1;
	/* split the filters: document fields for filters_match, mappings for image_special */
	c.filters = json_object_new_array();
	c.special = json_object_new_array();
	for (size_t i = 0; all && i < json_object_array_length(all); i++) {
		json_object *f = json_object_array_get_idx(all, i);
		json_object_array_add(special_field(jstr(f, "Name")) ? c.special : c.filters,
				      json_object_get(f));
	}
	c.seen = calloc(nids + 1, sizeof(bool));
	c.out = json_object_new_array();
	c.changed = json_object_new_array();
	ret = c.seen ? cat_doc_each(r->d->cat, "image", r->region, describe_image_one, &c) : -1;
	/* states brought up to date are cached once the walk is over */
	for (size_t i = 0; i < json_object_array_length(c.changed); i++)
		if (image_save(r->d, json_object_array_get_idx(c.changed, i)))
			log_warn("cannot record the state of an image");
	for (size_t i = 0; !ret && i < nids; i++)
		if (!c.seen[i])
			ret = api_error(r, "InvalidAMIID.NotFound", "The image id '[%s]' does not exist",
					json_object_get_string(json_object_array_get_idx(c.ids, i)));
	free(c.seen);
	json_object_put(c.filters);
	json_object_put(c.special);
	json_object_put(c.changed);
	if (ret) {
		json_object_put(c.out);
		return r->code[0] ? -1 : api_error(r, "InternalError", "catalog read failed");
	}
	if (paginate(r, c.out, "ImageId", 5, 1000, &page, &next))
		return -1;
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Images", page);
	if (next)
		json_object_object_add(r->result, "NextToken", next);
	return 0;
}

int act_deregister_image(struct api_req *r)
{
	static const char *const allowed[] = {"ImageId", "DeleteAssociatedSnapshots", "DryRun",
					      NULL};
	json_object *img;
	const char *id;
	bool del_snaps = false;

	if (params_allow(r, allowed) || param_str(r, "ImageId", true, &id) < 0 ||
	    param_bool(r, "DeleteAssociatedSnapshots", &del_snaps) < 0 ||
	    image_lookup_owned(r, id, &img))
		return -1;
	if (dry_run_check(r)) {
		json_object_put(img);
		return -1;
	}
	cat_tags_delete(r->d->cat, id, NULL, NULL); /* -ENOENT when it had none */
	if (cat_doc_delete(r->d->cat, "image", id)) {
		json_object_put(img);
		return api_error(r, "InternalError", "catalog update failed");
	}
	if (del_snaps) {
		json_object *bdm = jget(img, "BlockDeviceMappings");
		for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
			const char *sid =
			    jstr(jget(json_object_array_get_idx(bdm, i), "Ebs"), "SnapshotId");
			struct cat_snapshot s;
			/* kept: a snapshot another image uses (EC2's rule), and another
			 * account's (a mapping create-image added from a shared image) */
			if (!sid[0] || snapshot_in_use(r->d, sid) ||
			    cat_snapshot_get(r->d->cat, sid, &s) || strcmp(s.account, r->account))
				continue;
			if (!strcmp(s.state, "pending")) {
				/* still being made for this image: stopped, then deleted */
				snapshot_abort(r->d, sid,
					       "pending when its image was deregistered");
			} else if (cat_snapshot_delete(r->d->cat, sid)) {
				log_err("deregister %s: cannot delete its snapshot %s", id, sid);
			}
		}
		region_gc(r->d, r->region);
	}
	json_object_put(img);
	log_info("deregistered %s", id);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Return", json_object_new_boolean(true));
	return 0;
}

struct inuse_ctx {
	const char *snap;
	bool used;
};

static int uses_snapshot(void *arg, const char *id, const char *account, json_object *doc)
{
	struct inuse_ctx *c = arg;
	json_object *bdm = jget(doc, "BlockDeviceMappings");

	(void)id;
	(void)account;
	for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
		json_object *sid = jget(jget(json_object_array_get_idx(bdm, i), "Ebs"), "SnapshotId");
		if (sid && !strcmp(json_object_get_string(sid), c->snap))
			c->used = true;
	}
	return c->used;
}

bool snapshot_in_use(struct daemon *d, const char *snap)
{
	struct inuse_ctx c = {snap, false};

	cat_doc_each(d->cat, "image", NULL, uses_snapshot, &c);
	return c.used;
}
/* ---- launch permissions: Modify/Describe/ResetImageAttribute ------------------------------ */

/* One list of a LaunchPermission (Add or Remove): [{"UserId": "..."} | {"Group": "all"}].
 * Appends to users the account IDs, sets *all when the group is named. */
static int perm_list(struct api_req *r, json_object *l, const char *what, json_object *users,
		     bool *all)
{
	if (!json_object_is_type(l, json_type_array))
		return api_error(r, "InvalidParameterValue",
				 "LaunchPermission.%s must be a list of {\"UserId\": \"123456789012\"} "
				 "or {\"Group\": \"all\"}",
				 what);
	for (size_t i = 0; i < json_object_array_length(l); i++) {
		json_object *e = json_object_array_get_idx(l, i), *u, *g;
		if (!json_object_is_type(e, json_type_object) || json_object_object_length(e) != 1)
			goto bad;
		u = jget(e, "UserId");
		g = jget(e, "Group");
		if (u) {
			const char *s = json_object_get_string(u);
			if (!json_object_is_type(u, json_type_string) || !account_id_ok(s))
				return api_error(r, "InvalidUserID.Malformed",
						 "User ID '%.64s' is not valid: expected 12 digits", s);
			json_object_array_add(users, json_object_new_string(s));
		} else if (g) {
			if (!json_object_is_type(g, json_type_string) ||
			    strcmp(json_object_get_string(g), "all"))
				return api_error(r, "InvalidParameterValue",
						 "Invalid launch permission group '%.64s': the only "
						 "group is 'all'",
						 json_object_get_string(g));
			*all = true;
		} else {
			goto bad;
		}
	}
	return 0;
bad:
	return api_error(r, "InvalidParameterValue",
			 "Each entry of LaunchPermission.%s must be {\"UserId\": \"123456789012\"} or "
			 "{\"Group\": \"all\"}",
			 what);
}

/* Add or remove one account in _LaunchUsers (kept in the order added, no duplicates). */
static void launch_user_set(json_object *img, const char *account, bool add)
{
	json_object *u = jget(img, "_LaunchUsers"), *n = json_object_new_array();
	bool have = false;

	for (size_t i = 0; u && i < json_object_array_length(u); i++) {
		const char *s = json_object_get_string(json_object_array_get_idx(u, i));
		if (!strcmp(s, account)) {
			have = true;
			if (!add)
				continue;
		}
		json_object_array_add(n, json_object_new_string(s));
	}
	if (add && !have)
		json_object_array_add(n, json_object_new_string(account));
	json_object_object_add(img, "_LaunchUsers", n);
}

int act_modify_image_attribute(struct api_req *r)
{
	static const char *const allowed[] = {"ImageId", "Attribute", "OperationType", "UserIds",
					      "UserGroups", "LaunchPermission", "Description",
					      "Value", "ProductCodes", "OrganizationArns",
					      "OrganizationalUnitArns", "ImdsSupport", "DryRun", NULL};
	const char *id, *attr = NULL, *op = NULL, *value = NULL;
	json_object *img, *uids, *groups, *lp = jget(r->params, "LaunchPermission");
	json_object *desc = jget(r->params, "Description");
	json_object *add = json_object_new_array(), *rem = json_object_new_array();
	bool add_all = false, rem_all = false;
	int ret = -1;

	if (params_allow(r, allowed) || param_str(r, "ImageId", true, &id) < 0 ||
	    param_str(r, "Attribute", false, &attr) < 0 ||
	    param_str(r, "OperationType", false, &op) < 0 ||
	    param_str(r, "Value", false, &value) < 0 ||
	    param_str_list(r, "UserIds", &uids) < 0 || param_str_list(r, "UserGroups", &groups) < 0)
		goto out;
	if (jget(r->params, "ProductCodes") || jget(r->params, "OrganizationArns") ||
	    jget(r->params, "OrganizationalUnitArns") || jget(r->params, "ImdsSupport")) {
		api_error(r, "UnsupportedOperation",
			  "ebsim models launch permissions for accounts and the group 'all' "
			  "only (no product codes, organizations or IMDS settings).");
		goto out;
	}
	if (attr && strcmp(attr, "launchPermission") && strcmp(attr, "description")) {
		api_error(r, "InvalidParameterValue",
			  "Value (%.64s) for parameter attribute is invalid. Expecting "
			  "launchPermission or description.",
			  attr);
		goto out;
	}
	/* the launch permission: LaunchPermission JSON, or OperationType + UserIds/UserGroups */
	bool perm = lp || uids || groups || op;
	bool is_desc = desc || (attr && !strcmp(attr, "description"));
	if (perm && is_desc) {
		api_error(r, "InvalidParameterCombination",
			  "Change the launch permission or the description, not both at once.");
		goto out;
	}
	if (!perm && !is_desc) {
		api_error(r, "MissingParameter",
			  "Give --launch-permission, --operation-type with --user-ids or "
			  "--user-groups, or --description.");
		goto out;
	}
	if (lp) {
		if (op || uids || groups) {
			api_error(r, "InvalidParameterCombination",
				  "LaunchPermission cannot be combined with OperationType, UserIds "
				  "or UserGroups.");
			goto out;
		}
		if (!json_object_is_type(lp, json_type_object)) {
			api_error(r, "InvalidParameterValue",
				  "LaunchPermission is not valid JSON of the shape {\"Add\": [...], "
				  "\"Remove\": [...]}: %.200s",
				  json_object_get_string(lp));
			goto out;
		}
		json_object_object_foreach(lp, k, v)
		{
			if (!strcmp(k, "Add")) {
				if (perm_list(r, v, "Add", add, &add_all))
					goto out;
			} else if (!strcmp(k, "Remove")) {
				if (perm_list(r, v, "Remove", rem, &rem_all))
					goto out;
			} else {
				api_error(r, "InvalidParameterValue",
					  "Unknown field LaunchPermission.%.64s: expected Add or Remove",
					  k);
				goto out;
			}
		}
	} else if (perm) {
		bool adding;
		if (!op || (strcmp(op, "add") && strcmp(op, "remove"))) {
			api_error(r, "InvalidParameterValue",
				  "OperationType must be add or remove with UserIds or UserGroups.");
			goto out;
		}
		if (!uids && !groups) {
			api_error(r, "MissingParameter",
				  "OperationType %s needs UserIds or UserGroups.", op);
			goto out;
		}
		adding = !strcmp(op, "add");
		for (size_t i = 0; uids && i < json_object_array_length(uids); i++) {
			const char *u = json_object_get_string(json_object_array_get_idx(uids, i));
			if (!account_id_ok(u)) {
				api_error(r, "InvalidUserID.Malformed",
					  "User ID '%.64s' is not valid: expected 12 digits", u);
				goto out;
			}
			json_object_array_add(adding ? add : rem, json_object_new_string(u));
		}
		for (size_t i = 0; groups && i < json_object_array_length(groups); i++) {
			const char *g = json_object_get_string(json_object_array_get_idx(groups, i));
			if (strcmp(g, "all")) {
				api_error(r, "InvalidParameterValue",
					  "Invalid launch permission group '%.64s': the only group "
					  "is 'all'",
					  g);
				goto out;
			}
			*(adding ? &add_all : &rem_all) = true;
		}
	} else {
		/* Description: {"Value": "..."} (awscli), a plain string, or Value */
		if (desc && json_object_is_type(desc, json_type_object) &&
		    json_object_object_length(desc) == 1 && jget(desc, "Value") &&
		    json_object_is_type(jget(desc, "Value"), json_type_string))
			value = json_object_get_string(jget(desc, "Value"));
		else if (desc && json_object_is_type(desc, json_type_string))
			value = json_object_get_string(desc);
		else if (desc || !value) {
			api_error(r, "InvalidParameterValue",
				  "Description must be {\"Value\": \"...\"} (awscli: --description "
				  "Value=...).");
			goto out;
		}
		if (strlen(value) > 255) {
			api_error(r, "InvalidParameterValue", "The description is too long.");
			goto out;
		}
	}
	if (image_lookup_owned(r, id, &img))
		goto out;
	if (dry_run_check(r))
		goto out_put;
	if (perm) {
		for (size_t i = 0; i < json_object_array_length(add); i++)
			launch_user_set(img, json_object_get_string(json_object_array_get_idx(add, i)),
					true);
		if (add_all)
			json_object_object_add(img, "Public", json_object_new_boolean(true));
		for (size_t i = 0; i < json_object_array_length(rem); i++)
			launch_user_set(img, json_object_get_string(json_object_array_get_idx(rem, i)),
					false);
		if (rem_all)
			json_object_object_add(img, "Public", json_object_new_boolean(false));
	} else {
		json_object_object_add(img, "Description", json_object_new_string(value));
	}
	if (image_save(r->d, img)) {
		api_error(r, "InternalError", "catalog update failed");
		goto out_put;
	}
	r->result = json_object_new_object();
	ret = 0;
out_put:
	json_object_put(img);
out:
	json_object_put(add);
	json_object_put(rem);
	return ret;
}

static json_object *launch_permissions(json_object *img)
{
	json_object *out = json_object_new_array(), *u = jget(img, "_LaunchUsers"), *e;

	if (is_public(img)) {
		e = json_object_new_object();
		json_object_object_add(e, "Group", json_object_new_string("all"));
		json_object_array_add(out, e);
	}
	for (size_t i = 0; u && i < json_object_array_length(u); i++) {
		e = json_object_new_object();
		json_object_object_add(e, "UserId",
				       json_object_get(json_object_array_get_idx(u, i)));
		json_object_array_add(out, e);
	}
	return out;
}

int act_describe_image_attribute(struct api_req *r)
{
	static const char *const allowed[] = {"ImageId", "Attribute", "DryRun", NULL};
	const char *id, *attr;
	json_object *img, *o = json_object_new_object(), *v;

	if (params_allow(r, allowed) || param_str(r, "ImageId", true, &id) < 0 ||
	    param_str(r, "Attribute", true, &attr) < 0)
		goto out;
	if (strcmp(attr, "launchPermission") && strcmp(attr, "description") &&
	    strcmp(attr, "blockDeviceMapping") && strcmp(attr, "kernel") &&
	    strcmp(attr, "ramdisk") && strcmp(attr, "productCodes") &&
	    strcmp(attr, "sriovNetSupport") && strcmp(attr, "bootMode") &&
	    strcmp(attr, "imdsSupport")) {
		api_error(r, "InvalidParameterValue",
			  "Value (%.64s) for parameter attribute is invalid. Expecting one of "
			  "launchPermission, description, blockDeviceMapping, kernel, ramdisk, "
			  "productCodes, sriovNetSupport, bootMode, imdsSupport.",
			  attr);
		goto out;
	}
	if (image_lookup_owned(r, id, &img))
		goto out;
	if (dry_run_check(r)) {
		json_object_put(img);
		goto out;
	}
	json_object_object_add(o, "ImageId", json_object_new_string(id));
	if (!strcmp(attr, "launchPermission")) {
		json_object_object_add(o, "LaunchPermissions", launch_permissions(img));
	} else if (!strcmp(attr, "description")) {
		v = json_object_new_object();
		json_object_object_add(v, "Value", json_object_new_string(jstr(img, "Description")));
		json_object_object_add(o, "Description", v);
	} else if (!strcmp(attr, "blockDeviceMapping")) {
		json_object_object_add(o, "BlockDeviceMappings",
				       json_object_get(jget(img, "BlockDeviceMappings")));
	} else if (!strcmp(attr, "productCodes")) {
		json_object_object_add(o, "ProductCodes", json_object_new_array());
	} else {
		/* kernel, ramdisk, ...: ebsim keeps none: an empty value, as EC2 shows it */
		static const struct {
			const char *attr, *key;
		} keys[] = {{"kernel", "KernelId"},
			    {"ramdisk", "RamdiskId"},
			    {"sriovNetSupport", "SriovNetSupport"},
			    {"bootMode", "BootMode"},
			    {"imdsSupport", "ImdsSupport"}};
		for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
			if (!strcmp(attr, keys[i].attr))
				json_object_object_add(o, keys[i].key, json_object_new_object());
	}
	json_object_put(img);
	r->result = o;
	return 0;
out:
	json_object_put(o);
	return -1;
}

int act_reset_image_attribute(struct api_req *r)
{
	static const char *const allowed[] = {"ImageId", "Attribute", "DryRun", NULL};
	const char *id, *attr;
	json_object *img;

	if (params_allow(r, allowed) || param_str(r, "ImageId", true, &id) < 0 ||
	    param_str(r, "Attribute", true, &attr) < 0)
		return -1;
	if (strcmp(attr, "launchPermission"))
		return api_error(r, "InvalidParameterValue",
				 "Value (%.64s) for parameter attribute is invalid. Only "
				 "launchPermission can be reset.",
				 attr);
	if (image_lookup_owned(r, id, &img))
		return -1;
	if (dry_run_check(r)) {
		json_object_put(img);
		return -1;
	}
	json_object_object_add(img, "Public", json_object_new_boolean(false));
	json_object_object_del(img, "_LaunchUsers");
	if (image_save(r->d, img)) {
		json_object_put(img);
		return api_error(r, "InternalError", "catalog update failed");
	}
	json_object_put(img);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Return", json_object_new_boolean(true));
	return 0;
}

/* ---- create-image ------------------------------------------------------------------------- */

/* A file system mounted from one of the instance's loop devices. */
struct quiet_fs {
	char mnt[4096], type[64], source[64];
	unsigned long flags;
	bool frozen;	/* FIFREEZE'd, to be thawed */
	bool unmounted; /* reboot semantics: mount it again afterwards */
};

static unsigned long mount_flags(const char *opts)
{
	static const struct {
		const char *name;
		unsigned long flag;
	} f[] = {{"ro", MS_RDONLY},   {"nosuid", MS_NOSUID}, {"nodev", MS_NODEV},
		 {"noexec", MS_NOEXEC}, {"noatime", MS_NOATIME}, {"nodiratime", MS_NODIRATIME},
		 {"relatime", MS_RELATIME}};
	char buf[1024], *save = NULL;
	unsigned long flags = 0;

	snprintf(buf, sizeof(buf), "%s", opts);
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
		for (size_t i = 0; i < ARRAY_SIZE(f); i++)
			if (!strcmp(t, f[i].name))
				flags |= f[i].flag;
	return flags;
}

/* mountinfo writes space, tab, newline and backslash in paths as \ooo: undo it in place. */
static void unescape_octal(char *s)
{
	char *w = s;

	for (const char *p = s; *p; p++) {
		if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' &&
		    p[3] >= '0' && p[3] <= '7') {
			*w++ = (char)((p[1] - '0') << 6 | (p[2] - '0') << 3 | (p[3] - '0'));
			p += 3;
		} else {
			*w++ = *p;
		}
	}
	*w = 0;
}

/* The file systems mounted (in this namespace) from the instance's loop devices, in
 * mount order. Returns how many (at most cap). */
static int quiet_find(json_object *inst, struct quiet_fs *q, int cap)
{
	json_object *ld = jget(inst, "LocalDevices");
	char line[8192];
	int n = 0;
	FILE *f;

	if (!ld)
		return 0;
	f = fopen("/proc/self/mountinfo", "re");
	while (f && n < cap && fgets(line, sizeof(line), f)) {
		char mnt[4096], opts[1024], type[64], src[64];
		char *dash = strstr(line, " - ");
		if (!dash || sscanf(line, "%*s %*s %*s %*s %4095s %1023s", mnt, opts) != 2 ||
		    sscanf(dash + 3, "%63s %63s", type, src) != 2)
			continue;
		unescape_octal(mnt);
		json_object_object_foreach(ld, dev, loop)
		{
			(void)dev;
			if (strcmp(json_object_get_string(loop), src))
				continue;
			snprintf(q[n].mnt, sizeof(q[n].mnt), "%s", mnt);
			snprintf(q[n].type, sizeof(q[n].type), "%s", type);
			snprintf(q[n].source, sizeof(q[n].source), "%s", src);
			q[n].flags = mount_flags(opts);
			q[n].unmounted = false;
			q[n].frozen = false;
			n++;
			break;
		}
	}
	if (f)
		fclose(f);
	return n;
}

/* Make each file system quiet: unmount it (reboot) or sync and freeze it (no_reboot, or
 * when it is busy). */
static void quiet_begin(const char *iid, struct quiet_fs *q, int n, bool no_reboot)
{
	for (int i = n - 1; i >= 0; i--) {
		int ret;
		if (!no_reboot) {
			ret = fs_op(FS_SYNC_UNMOUNT, q[i].mnt, NULL, NULL, 0);
			if (!ret) {
				q[i].unmounted = true;
				continue;
			}
			log_warn("%s: %s is busy (%s): freezing it instead of unmounting it", iid,
				 q[i].mnt, strerror(-ret));
		}
		ret = fs_op(FS_SYNC_FREEZE, q[i].mnt, NULL, NULL, 0);
		if (ret) {
			log_warn("%s: cannot freeze %s: %s", iid, q[i].mnt, strerror(-ret));
			continue;
		}
		q[i].frozen = true;
	}
}

static void quiet_end(const char *iid, struct quiet_fs *q, int n)
{
	int ret;

	for (int i = 0; i < n; i++) {
		if (q[i].frozen && (ret = fs_op(FS_THAW, q[i].mnt, NULL, NULL, 0)))
			log_err("%s: cannot thaw %s: %s", iid, q[i].mnt, strerror(-ret));
		q[i].frozen = false;
		if (q[i].unmounted &&
		    (ret = fs_op(FS_MOUNT, q[i].mnt, q[i].source, q[i].type, q[i].flags)))
			log_err("%s: cannot mount %s at %s again: %s", iid, q[i].source, q[i].mnt,
				strerror(-ret));
	}
}

static json_object *find_device(json_object *bdm, const char *dev)
{
	for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
		json_object *m = json_object_array_get_idx(bdm, i);
		if (!strcmp(device_basename(jstr(m, "DeviceName")), device_basename(dev)))
			return m;
	}
	return NULL;
}

/* Fill an Ebs mapping that names a snapshot or a size (a request's extra mapping). */
static int ebs_complete(struct api_req *r, const char *dev, json_object *e)
{
	const char *sid = jstr(e, "SnapshotId");
	struct cat_snapshot s;

	if (sid[0]) {
		if (snapshot_lookup_use(r, sid, &s))
			return -1;
		if (strcmp(s.state, "completed"))
			return api_error(r, "IncorrectState", "The snapshot '%s' is not completed.",
					 sid);
		if (!jget(e, "VolumeSize"))
			json_object_object_add(e, "VolumeSize",
					       json_object_new_int64((int64_t)s.volume_size_gib));
		if ((uint64_t)json_object_get_int64(jget(e, "VolumeSize")) < s.volume_size_gib)
			return api_error(r, "InvalidBlockDeviceMapping",
					 "The volume size for %s is smaller than snapshot '%s'", dev,
					 sid);
		if (!jget(e, "Encrypted"))
			json_object_object_add(e, "Encrypted", json_object_new_boolean(s.encrypted));
	} else if (!jget(e, "VolumeSize")) {
		return api_error(r, "InvalidBlockDeviceMapping",
				 "The mapping for %s needs Ebs.SnapshotId or Ebs.VolumeSize", dev);
	}
	if (!jget(e, "DeleteOnTermination"))
		json_object_object_add(e, "DeleteOnTermination", json_object_new_boolean(true));
	if (!jget(e, "VolumeType"))
		json_object_object_add(e, "VolumeType", json_object_new_string("gp2"));
	return 0;
}

/* The image's mappings from the instance's and the request's: *vols gets, per mapping that
 * must be snapshotted, {"Index": i, "VolumeId"}. NULL with the error recorded. */
static json_object *image_mappings(struct api_req *r, json_object *inst, json_object *req,
				   json_object *vols)
{
	json_object *out = json_object_new_array(), *ibdm = jget(inst, "BlockDeviceMappings");
	json_object *eph = jget(inst, "_Ephemeral");
	const char *root = jstr(inst, "RootDeviceName");

	for (size_t i = 0; ibdm && i < json_object_array_length(ibdm); i++) {
		json_object *m = json_object_array_get_idx(ibdm, i), *ie = jget(m, "Ebs");
		const char *dev = jstr(m, "DeviceName"), *vid = jstr(ie, "VolumeId");
		json_object *over = find_device(req, dev), *n, *e;
		struct cat_volume v;

		if (over && jget(over, "NoDevice"))
			continue;
		if (over && !jget(over, "Ebs")) {
			json_object_array_add(out, json_object_get(over));
			continue;
		}
		if (cat_volume_get(r->d->cat, vid, &v)) {
			api_error(r, "InternalError", "the volume %s of %s is missing", vid,
				  jstr(inst, "InstanceId"));
			goto out_put;
		}
		n = json_object_new_object();
		e = json_object_new_object();
		json_object_object_add(n, "DeviceName", json_object_new_string(dev));
		json_object_object_add(n, "Ebs", e);
		json_object_array_add(out, n);
		json_object_object_add(e, "DeleteOnTermination",
				       json_object_get(jget(ie, "DeleteOnTermination")));
		json_object_object_add(e, "VolumeSize", json_object_new_int64((int64_t)v.size_gib));
		json_object_object_add(e, "VolumeType", json_object_new_string(v.type));
		if (!strcmp(v.type, "io1") || !strcmp(v.type, "io2") || !strcmp(v.type, "gp3"))
			json_object_object_add(e, "Iops", json_object_new_int(v.iops));
		if (!strcmp(v.type, "gp3"))
			json_object_object_add(e, "Throughput", json_object_new_int(v.throughput));
		json_object_object_add(e, "Encrypted", json_object_new_boolean(v.encrypted));
		json_object *oe = over ? jget(over, "Ebs") : json_object_new_object();
		json_object_object_foreach(oe, k, val)
		{
			if (!strcmp(k, "SnapshotId")) {
				api_error(r, "InvalidBlockDeviceMapping",
					  "The mapping for %s cannot name a snapshot: CreateImage "
					  "snapshots the instance's volume %s",
					  dev, vid);
				goto out_put;
			}
			if (!strcmp(k, "VolumeSize") &&
			    (uint64_t)json_object_get_int64(val) < v.size_gib) {
				api_error(r, "InvalidBlockDeviceMapping",
					  "The volume size for %s (%lld GiB) is smaller than its "
					  "volume %s (%llu GiB)",
					  dev, (long long)json_object_get_int64(val), vid,
					  (unsigned long long)v.size_gib);
				goto out_put;
			}
			json_object_object_add(e, k, json_object_get(val));
		}
		if (!over)
			json_object_put(oe);
		json_object *pv = json_object_new_object();
		json_object_object_add(pv, "Index",
				       json_object_new_int((int)json_object_array_length(out) - 1));
		json_object_object_add(pv, "VolumeId", json_object_new_string(vid));
		json_object_array_add(vols, pv);
	}
	for (size_t i = 0; eph && i < json_object_array_length(eph); i++) {
		json_object *e = json_object_array_get_idx(eph, i), *n;
		const char *dev = jstr(e, "DeviceName");
		json_object *over = find_device(req, dev);
		if (!device_name_ok(dev) || over)
			continue; /* NVMe instance store is not in an AMI; a request's wins */
		n = json_object_new_object();
		json_object_object_add(n, "DeviceName", json_object_new_string(dev));
		json_object_object_add(n, "VirtualName",
				       json_object_new_string(jstr(e, "VirtualName")));
		json_object_array_add(out, n);
	}
	/* the request's mappings of devices the instance does not have */
	for (size_t i = 0; req && i < json_object_array_length(req); i++) {
		json_object *m = json_object_array_get_idx(req, i);
		const char *dev = jstr(m, "DeviceName");
		if (find_device(ibdm, dev) || find_device(out, dev) || jget(m, "NoDevice"))
			continue;
		if (jget(m, "Ebs") && ebs_complete(r, dev, jget(m, "Ebs")))
			goto out_put;
		json_object_array_add(out, json_object_get(m));
	}
	json_object *rm = find_device(out, root);
	if (!rm || !jget(rm, "Ebs")) {
		api_error(r, "InvalidBlockDeviceMapping",
			  "The root device %s must stay mapped to the instance's root volume", root);
		goto out_put;
	}
	return out;
out_put:
	json_object_put(out);
	return NULL;
}

int act_create_image(struct api_req *r)
{
	static const char *const allowed[] = {"InstanceId", "Name", "Description", "NoReboot",
					      "BlockDeviceMappings", "TagSpecifications", "DryRun",
					      NULL};
	struct daemon *d = r->d;
	const char *iid, *name, *desc = NULL;
	json_object *inst = NULL, *req = NULL, *bdm = NULL, *vols, *tags, *img;
	struct quiet_fs *q = NULL;
	bool no_reboot = false;
	char id[ID_MAX], sdesc[256];
	int ret, state, nq = 0;

	if (params_allow(r, allowed) || param_str(r, "InstanceId", true, &iid) < 0 ||
	    param_str(r, "Name", true, &name) < 0 ||
	    param_str(r, "Description", false, &desc) < 0 ||
	    param_bool(r, "NoReboot", &no_reboot) < 0 || tag_specs_parse(r, "image", &tags))
		return -1;
	if (desc && strlen(desc) > 255)
		return api_error(r, "InvalidParameterValue", "The description is too long.");
	if (check_id(r, "i", "InvalidInstance", iid) || image_name_check(r, name))
		return -1;
	ret = cat_doc_get(d->cat, "instance", iid, &inst);
	if (ret == -ENOENT || (!ret && (strcmp(jstr(inst, "OwnerId"), r->account) ||
					strcmp(jstr(inst, "_Region"), r->region)))) {
		json_object_put(inst);
		return api_error(r, "InvalidInstanceID.NotFound",
				 "The instance ID '%s' does not exist", iid);
	}
	if (ret)
		return api_error(r, "InternalError", "catalog read failed");
	state = json_object_get_int(jget(jget(inst, "State"), "Code"));
	if (state != 16 && state != 80) {
		api_error(r, "IncorrectInstanceState",
			  "The instance '%s' is not in a state from which it can be imaged "
			  "(%s); it must be running or stopped.",
			  iid, jstr(jget(inst, "State"), "Name"));
		goto out;
	}
	if (strcmp(jstr(inst, "RootDeviceType"), "ebs")) {
		api_error(r, "UnsupportedOperation",
			  "The instance '%s' is instance-store-backed: bundle its root with "
			  "ebsim-ami bundle-vol and register the bundle instead.",
			  iid);
		goto out;
	}
	if (jget(r->params, "BlockDeviceMappings") &&
	    !(req = bdm_parse(r, jget(r->params, "BlockDeviceMappings"), false)))
		goto out;
	vols = json_object_new_array();
	bdm = image_mappings(r, inst, req, vols);
	if (!bdm || dry_run_check(r))
		goto out_vols;
	/* refuse before any snapshot starts, so that a refusal leaves nothing behind */
	for (size_t i = 0; i < json_object_array_length(vols); i++) {
		const char *vid = jstr(json_object_array_get_idx(vols, i), "VolumeId");
		for (struct job *j = d->jobs; j; j = j->next)
			if (j->kind == JOB_SNAPSHOT && !j->finished && !strcmp(j->volume, vid)) {
				api_error(r, "SnapshotCreationPerVolumeRateExceeded",
					  "A snapshot of volume %s is already in progress.", vid);
				goto out_vols;
			}
	}
	if (id_new("ami", id)) {
		api_error(r, "InternalError", "cannot make an ID");
		goto out_vols;
	}
	/* the point-in-time switch of every volume, at one quiet moment */
	q = calloc(32, sizeof(*q));
	if (!q) {
		api_error(r, "InternalError", "out of memory");
		goto out_vols;
	}
	if (state == 16) {
		nq = quiet_find(inst, q, 32);
		quiet_begin(iid, q, nq, no_reboot);
	}
	snprintf(sdesc, sizeof(sdesc), "Created by CreateImage(%s) for %s", iid, id);
	ret = 0;
	for (size_t i = 0; !ret && i < json_object_array_length(vols); i++) {
		json_object *pv = json_object_array_get_idx(vols, i);
		json_object *e = jget(json_object_array_get_idx(bdm, (size_t)json_object_get_int(
									   jget(pv, "Index"))),
				      "Ebs");
		struct cat_volume v;
		struct cat_snapshot s;
		ret = volume_lookup(r, jstr(pv, "VolumeId"), &v);
		if (!ret)
			ret = snapshot_start(r, &v, sdesc, NULL, &s);
		if (!ret) {
			json_object_object_add(e, "SnapshotId", json_object_new_string(s.id));
			json_object_object_add(pv, "SnapshotId", json_object_new_string(s.id));
		}
	}
	quiet_end(iid, q, nq);
	if (ret)
		goto out_undo;
	img = image_new(r, id, name, desc, "pending");
	json_object_object_add(img, "Architecture",
			       json_object_new_string(jstr(inst, "Architecture")));
	json_object_object_add(img, "BlockDeviceMappings", json_object_get(bdm));
	json_object_object_add(img, "RootDeviceName",
			       json_object_new_string(jstr(inst, "RootDeviceName")));
	json_object_object_add(img, "VirtualizationType",
			       json_object_new_string(jstr(inst, "VirtualizationType")));
	json_object_object_add(img, "SourceInstanceId", json_object_new_string(iid));
	ret = image_insert(r, img, tags);
	json_object_put(img);
	if (ret)
		goto out_undo;
	log_info("creating %s (%s) from %s: %zu snapshots, %s", id, name, iid,
		 json_object_array_length(vols), no_reboot ? "no reboot" : "reboot");
	r->result = json_object_new_object();
	json_object_object_add(r->result, "ImageId", json_object_new_string(id));
	ret = 0;
	goto out_done;
out_undo:
	/* the caller gets the error and no image: the snapshots started for it go too */
	for (size_t i = 0; i < json_object_array_length(vols); i++) {
		const char *sid = jstr(json_object_array_get_idx(vols, i), "SnapshotId");
		if (sid[0])
			snapshot_abort(d, sid, "its request failed");
	}
out_vols:
	ret = -1;
out_done:
	free(q);
	json_object_put(vols);
	json_object_put(bdm);
	json_object_put(req);
	json_object_put(inst);
	return ret;
out:
	json_object_put(inst);
	return -1;
}

/* ---- copy-image --------------------------------------------------------------------------- */

static bool region_known(const char *name)
{
	for (size_t i = 0; regions[i]; i++)
		if (!strcmp(regions[i], name))
			return true;
	return false;
}

int act_copy_image(struct api_req *r)
{
	static const char *const allowed[] = {"SourceRegion", "SourceImageId", "Name",
					      "Description", "Encrypted", "KmsKeyId", "ClientToken",
					      "CopyImageTags", "TagSpecifications", "DryRun", NULL};
	const char *src_region, *src_id, *name, *desc = NULL;
	json_object *src, *img, *bdm, *tags, *started;
	struct cat_snapshot *srcs; /* the source snapshots, as checked */
	struct api_req sr;
	char id[ID_MAX], sdesc[256];
	size_t n;
	int ret = 0;

	if (params_allow(r, allowed) || param_str(r, "SourceRegion", true, &src_region) < 0 ||
	    param_str(r, "SourceImageId", true, &src_id) < 0 ||
	    param_str(r, "Name", true, &name) < 0 ||
	    param_str(r, "Description", false, &desc) < 0 || tag_specs_parse(r, "image", &tags))
		return -1;
	if (!region_known(src_region))
		return api_error(r, "InvalidParameterValue",
				 "Value (%.32s) for parameter SourceRegion is invalid: no such "
				 "region.",
				 src_region);
	if (desc && strlen(desc) > 255)
		return api_error(r, "InvalidParameterValue", "The description is too long.");
	if (image_name_check(r, name))
		return -1;
	/* the source, as this account sees it in its region */
	sr = *r;
	sr.region = src_region;
	if (image_lookup(&sr, src_id, &src)) {
		snprintf(r->code, sizeof(r->code), "%s", sr.code);
		snprintf(r->message, sizeof(r->message), "%s", sr.message);
		return -1;
	}
	if (strcmp(jstr(src, "RootDeviceType"), "ebs")) {
		json_object_put(src);
		return api_error(r, "UnsupportedOperation",
				 "The image '%s' is instance-store-backed: ebsim copies only "
				 "EBS-backed images (copy its bundle and register it in %s "
				 "instead).",
				 src_id, r->region);
	}
	if (strcmp(jstr(src, "State"), "available")) {
		json_object_put(src);
		return api_error(r, "IncorrectState", "The image '%s' is not available (%s).",
				 src_id, jstr(src, "State"));
	}
	if (dry_run_check(r) || id_new("ami", id)) {
		if (!r->code[0])
			api_error(r, "InternalError", "cannot make an ID");
		json_object_put(src);
		return -1;
	}
	img = doc_public(src);
	json_object_object_del(img, "ImageOwnerAlias");
	json_object_object_del(img, "StateReason");
	json_object_object_del(img, "SourceInstanceId");
	json_object *base = image_new(r, id, name, desc ? desc : jstr(src, "Description"),
				      "pending");
	json_object_object_foreach(base, k, v) json_object_object_add(img, k, json_object_get(v));
	json_object_put(base);
	json_object_object_add(img, "SourceImageId", json_object_new_string(src_id));
	json_object_object_add(img, "SourceImageRegion", json_object_new_string(src_region));
	bdm = jget(img, "BlockDeviceMappings");
	bdm = json_tokener_parse(json_object_to_json_string(bdm)); /* a deep copy */
	json_object_object_add(img, "BlockDeviceMappings", bdm);
	n = bdm ? json_object_array_length(bdm) : 0;
	started = json_object_new_array();
	srcs = calloc(n + 1, sizeof(*srcs));
	if (!srcs)
		ret = api_error(r, "InternalError", "out of memory");
	/* refuse before any copy starts, so that a refusal leaves nothing behind */
	for (size_t i = 0; !ret && i < n; i++) {
		const char *sid =
		    jstr(jget(json_object_array_get_idx(bdm, i), "Ebs"), "SnapshotId");
		if (sid[0] && (cat_snapshot_get(r->d->cat, sid, &srcs[i]) ||
			       strcmp(srcs[i].state, "completed")))
			ret = api_error(r, "IncorrectState",
					"The snapshot %s of the image '%s' is not completed.", sid,
					src_id);
	}
	for (size_t i = 0; !ret && i < n; i++) {
		json_object *e = jget(json_object_array_get_idx(bdm, i), "Ebs");
		const char *sid = jstr(e, "SnapshotId");
		struct cat_snapshot ns;
		if (!sid[0])
			continue;
		snprintf(sdesc, sizeof(sdesc),
			 "Copied for DestinationAmi %s from SourceAmi %s for SourceSnapshot %s", id,
			 src_id, sid);
		ret = snapshot_copy_start(r, &srcs[i], sdesc, NULL, &ns);
		if (!ret) {
			json_object_object_add(e, "SnapshotId", json_object_new_string(ns.id));
			json_object_array_add(started, json_object_new_string(ns.id));
		}
	}
	if (!ret)
		ret = image_insert(r, img, tags);
	if (ret) {
		/* the caller gets the error and no image: the copies started for it go too */
		for (size_t i = 0; i < json_object_array_length(started); i++) {
			json_object *sid = json_object_array_get_idx(started, i);
			snapshot_abort(r->d, json_object_get_string(sid), "its request failed");
		}
	}
	free(srcs);
	json_object_put(started);
	json_object_put(img);
	json_object_put(src);
	if (ret)
		return -1;
	log_info("copying %s/%s to %s in %s for %s", src_region, src_id, id, r->region,
		 r->account);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "ImageId", json_object_new_string(id));
	return 0;
}
