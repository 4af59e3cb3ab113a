/* SPDX-License-Identifier: MIT */
/*
 * act_images.c - AMIs, the part instances need: RegisterImage (EBS-backed, from
 * snapshots), DescribeImages, DeregisterImage.
 *
 * Design notes
 * ------------
 * An image is a catalog document (kind "image") holding exactly what DescribeImages shows.
 * BlockDeviceMappings use EC2's JSON: DeviceName with Ebs {SnapshotId, VolumeSize,
 * VolumeType, DeleteOnTermination, Iops, Throughput, Encrypted}, VirtualName
 * "ephemeralN", or NoDevice. Every referenced snapshot must be completed and owned by the
 * caller; a snapshot an image uses cannot be deleted (InvalidSnapshot.InUse).
 * Visibility: the owner, or anyone when Public (launch permissions come with the AMI
 * issue). DescribeImages filters match fields of the image document (image_filters);
 * ExecutableUsers is accepted and not applied until launch permissions exist.
 */
#include "daemon/daemon_i.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static json_object *jget(json_object *o, const char *k)
{
	json_object *v = NULL;

	return o && json_object_object_get_ex(o, k, &v) ? v : NULL;
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

/* Visible to the request's account? (owner, or public) */
static bool image_visible(struct api_req *r, json_object *img)
{
	json_object *pub = jget(img, "Public");

	return !strcmp(json_object_get_string(jget(img, "OwnerId")), r->account) ||
	       (pub && json_object_get_boolean(pub));
}

int image_lookup(struct api_req *r, const char *id, json_object **out)
{
	json_object *img = NULL;
	int ret;

	if (check_id(r, "ami", "InvalidAMI", id))
		return -1;
	ret = cat_doc_get(r->d->cat, "image", id, &img);
	if (ret == -ENOENT || (!ret && (strcmp(json_object_get_string(jget(img, "_Region")),
					      r->region) ||
					!image_visible(r, img)))) {
		json_object_put(img);
		return api_error(r, "InvalidAMIID.NotFound", "The image id '[%s]' does not exist", id);
	}
	if (ret)
		return api_error(r, "InternalError", "catalog read failed");
	*out = img;
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

int act_register_image(struct api_req *r)
{
	static const char *const allowed[] = {
		"Name",	       "Description",	     "RootDeviceName", "BlockDeviceMappings",
		"Architecture", "VirtualizationType", "KernelId",	"RamdiskId",
		"EnaSupport",  "SriovNetSupport",    "BootMode",	"ImageLocation",
		"DryRun",      "TpmSupport",	     "ImdsSupport",	"TagSpecifications",
		NULL};
	struct daemon *d = r->d;
	const char *name, *desc = NULL, *root = NULL, *arch = "x86_64", *virt = "hvm", *loc = NULL;
	json_object *bdm, *img;
	char id[ID_MAX], now[32], location[200];
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
	if (!ami_name_ok(name))
		return api_error(r, "InvalidAMIName.Malformed",
				 "AMI names must be between 3 and 128 characters long, and may "
				 "contain letters, numbers, '(', ')', '.', '-', '/' and '_'");
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
	struct name_ctx nc = {r->account, r->region, name, false};
	cat_doc_each(d->cat, "image", r->region, name_dup, &nc);
	if (nc.dup)
		return api_error(r, "InvalidAMIName.Duplicate",
				 "AMI name %s is already in use by AMI in your account", name);
	if (loc)
		return ami_bundle_register(r, name, desc, virt, loc);
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
	time_iso8601(now);
	snprintf(location, sizeof(location), "%s/%s", r->account, name);
	img = json_object_new_object();
	json_object_object_add(img, "Architecture", json_object_new_string(arch));
	json_object_object_add(img, "CreationDate", json_object_new_string(now));
	json_object_object_add(img, "ImageId", json_object_new_string(id));
	json_object_object_add(img, "ImageLocation", json_object_new_string(location));
	json_object_object_add(img, "ImageType", json_object_new_string("machine"));
	json_object_object_add(img, "Public", json_object_new_boolean(false));
	json_object_object_add(img, "OwnerId", json_object_new_string(r->account));
	json_object_object_add(img, "PlatformDetails", json_object_new_string("Linux/UNIX"));
	json_object_object_add(img, "UsageOperation", json_object_new_string("RunInstances"));
	json_object_object_add(img, "State", json_object_new_string("available"));
	json_object_object_add(img, "BlockDeviceMappings", bdm);
	json_object_object_add(img, "Description", json_object_new_string(desc ? desc : ""));
	json_object_object_add(img, "Name", json_object_new_string(name));
	json_object_object_add(img, "RootDeviceName", json_object_new_string(root));
	json_object_object_add(img, "RootDeviceType", json_object_new_string("ebs"));
	json_object_object_add(img, "VirtualizationType", json_object_new_string(virt));
	json_object_object_add(img, "Hypervisor", json_object_new_string("xen"));
	json_object_object_add(img, "_Region", json_object_new_string(r->region));
	if (cat_doc_put(d->cat, "image", id, r->account, r->region, img)) {
		json_object_put(img);
		return api_error(r, "InternalError", "catalog update failed");
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

struct dimg_ctx {
	struct api_req *r;
	json_object *ids, *owners, *filters, *out;
	bool *seen;
};

/* DescribeImages filters: each matches a field of the image document. */
static const struct filter_map image_filters[] = {
	{"architecture", "Architecture"},
	{"creation-date", "CreationDate"},
	{"description", "Description"},
	{"hypervisor", "Hypervisor"},
	{"image-id", "ImageId"},
	{"image-type", "ImageType"},
	{"is-public", "Public"},
	{"name", "Name"},
	{"owner-id", "OwnerId"},
	{"platform-details", "PlatformDetails"},
	{"root-device-name", "RootDeviceName"},
	{"root-device-type", "RootDeviceType"},
	{"state", "State"},
	{"usage-operation", "UsageOperation"},
	{"virtualization-type", "VirtualizationType"},
	{NULL, NULL},
};

static int describe_image_one(void *arg, const char *id, const char *account, json_object *doc)
{
	struct dimg_ctx *c = arg;

	if (!image_visible(c->r, doc))
		return 0;
	if (c->owners) {
		bool ok = false;
		for (size_t i = 0; i < json_object_array_length(c->owners); i++) {
			const char *o = json_object_get_string(json_object_array_get_idx(c->owners, i));
			ok |= (!strcmp(o, "self") && !strcmp(account, c->r->account)) ||
			      !strcmp(o, account);
		}
		if (!ok)
			return 0;
	}
	if (c->ids) {
		bool wanted = false;
		for (size_t i = 0; i < json_object_array_length(c->ids); i++)
			if (!strcmp(json_object_get_string(json_object_array_get_idx(c->ids, i)), id))
				wanted = c->seen[i] = true;
		if (!wanted)
			return 0;
	}
	if (!filters_match(c->filters, image_filters, doc))
		return 0;
	json_object_array_add(c->out, doc_public(doc));
	return 0;
}

int act_describe_images(struct api_req *r)
{
	static const char *const allowed[] = {"ImageIds", "Owners", "ExecutableUsers", "Filters",
					      "IncludeDeprecated", "MaxResults", "NextToken",
					      "DryRun", NULL};
	struct dimg_ctx c = {.r = r};
	size_t nids;
	int ret;

	if (params_allow(r, allowed) || param_str_list(r, "ImageIds", &c.ids) < 0 ||
	    param_str_list(r, "Owners", &c.owners) < 0 ||
	    filters_parse(r, image_filters, &c.filters))
		return -1;
	nids = c.ids ? json_object_array_length(c.ids) : 0;
	for (size_t i = 0; i < nids; i++)
		if (check_id(r, "ami", "InvalidAMI",
			     json_object_get_string(json_object_array_get_idx(c.ids, i))))
			return -1;
	c.seen = calloc(nids + 1, sizeof(bool));
	c.out = json_object_new_array();
	ret = cat_doc_each(r->d->cat, "image", r->region, describe_image_one, &c);
	for (size_t i = 0; !ret && i < nids; i++)
		if (!c.seen[i])
			ret = api_error(r, "InvalidAMIID.NotFound", "The image id '[%s]' does not exist",
					json_object_get_string(json_object_array_get_idx(c.ids, i)));
	free(c.seen);
	if (ret) {
		json_object_put(c.out);
		return r->code[0] ? -1 : api_error(r, "InternalError", "catalog read failed");
	}
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Images", c.out);
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
	    param_bool(r, "DeleteAssociatedSnapshots", &del_snaps) < 0 || image_lookup(r, id, &img))
		return -1;
	if (strcmp(json_object_get_string(jget(img, "OwnerId")), r->account)) {
		json_object_put(img);
		return api_error(r, "AuthFailure", "Not authorized for image:%s", id);
	}
	if (cat_doc_delete(r->d->cat, "image", id)) {
		json_object_put(img);
		return api_error(r, "InternalError", "catalog update failed");
	}
	if (del_snaps) {
		json_object *bdm = jget(img, "BlockDeviceMappings");
		for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
			json_object *sid = jget(jget(json_object_array_get_idx(bdm, i), "Ebs"),
						"SnapshotId");
			if (sid && !snapshot_in_use(r->d, json_object_get_string(sid)))
				cat_snapshot_delete(r->d->cat, json_object_get_string(sid));
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
