/* SPDX-License-Identifier: MIT */
/*
 * act_bundles.c - instance-store-backed AMIs on the daemon side: RegisterImage with an
 * ImageLocation (a bundle uploaded by `ebsim-ami upload-bundle`), and the unbundling of
 * such an image into an instance's instance-store root at run-instances.
 *
 * Design notes
 * ------------
 * Where things are (ami-contract.md; H = the daemon home):
 *   H/regions/<region>/buckets/<bucket>/<object>   the region's object store (S3 stand-in)
 *   H/accounts/<account>/signing-cert.pem          the account's X.509 signing certificate
 *   H/regions/<region>/ec2-key.pem, ec2-cert.pem   the region's EC2 key pair
 *                                                  (snapshot/bundle.h: bundle_region_keys)
 * An ImageLocation is "BUCKET/OBJECT": both names are checked with the bundle library's
 * rules (bundle_valid_bucket, bundle_valid_object) before anything is opened, and every
 * path component is then opened with O_NOFOLLOW from the home's directory fds, so neither
 * a hostile name nor a symlink planted in the home leads outside it.
 *
 * Trust, at registration (nothing is registered unless every step passes):
 *   1. the manifest parses (bundle_manifest_load);       else InvalidManifest
 *   2. its <user> is the registering account;             else AuthFailure
 *   3. the account has a signing certificate;             else AuthFailure
 *   4. the signature verifies with that certificate;      else InvalidManifest
 *   5. the EC2-wrapped AES key and IV open with the region's EC2 private key (so that
 *      the daemon will be able to unbundle it at launch); else InvalidManifest
 *   6. every part is present with its SHA-1 (bundle_verify_parts); else InvalidManifest
 * The image document is the EBS one's shape with RootDeviceType "instance-store", the
 * manifest's architecture, kernel and ephemeral mappings, and private fields _Bucket,
 * _Manifest and _ImageSize (bytes).
 *
 * Launch: act_instances.c plans the root as one more instance-store volume of the
 * instance (ami_bundle_root_plan: size = the image rounded up to GiB, an in-memory key
 * like every instance-store volume), brings the instance up (the root attached as a loop
 * device, empty, so not mounted), then calls ami_bundle_root_fill: the manifest is read
 * again and checked as at registration (a bundle may have changed since), and
 * bundle_unbundle decrypts with the region's EC2 key, verifying the signature (with the
 * image owner's certificate) and every part digest before the first byte is written, and
 * the tar stream's SHA-1 at the end. It writes through the root's loop device (the same
 * page cache the mount will read), which is then fsync'ed: loop -> FUSE -> volume flush,
 * so the image is durable on the volume before the instance is reported running. Any
 * failure leaves an EC2 error on the request and run-instances' rollback destroys the
 * volume, its loop device and the instance (nothing half-made).
 *
 * Locking: everything runs on the control thread under d->lock, like every action; the
 * loop device's I/O is served by the FUSE and engine threads, which never take d->lock.
 */
#include "daemon/daemon_i.h"
#include "snapshot/bundle.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


#define GIB (1ull << 30)
#define ROOT_MAX_GIB 10 /* EC2: an instance-store root is at most 10 GiB */

static json_object *jget(json_object *o, const char *k)
{
	json_object *v = NULL;

	return o && json_object_object_get_ex(o, k, &v) ? v : NULL;
}

static const char *jstr(json_object *o, const char *k)
{
	json_object *v = jget(o, k);

	return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
}

/* Everything one bundle needs while it is checked or unbundled. */
struct bctx {
	char bucket[64], object[BUNDLE_NAME_MAX + 1];
	int bucket_fd;
	struct bundle_manifest *m;
	char *cert; /* the owner's signing certificate (PEM) */
	size_t cert_len;
	char *ec2_key; /* the region's EC2 private key (PEM) */
	size_t ec2_key_len;
};

static void bctx_free(struct bctx *c)
{
	if (c->bucket_fd >= 0)
		close(c->bucket_fd);
	bundle_manifest_free(c->m);
	free(c->cert);
	if (c->ec2_key) {
		secure_zero(c->ec2_key, c->ec2_key_len);
		free(c->ec2_key);
	}
	memset(c, 0, sizeof(*c));
	c->bucket_fd = -1;
}

/* Open dirfd/a/b/c... one component at a time, directories only, no symlinks. */
static int open_dirs(int dirfd, const char *const *names)
{
	int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);

	for (size_t i = 0; fd >= 0 && names[i]; i++) {
		int nfd = openat(fd, names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int err = errno;
		close(fd);
		fd = nfd;
		errno = err;
	}
	return fd < 0 ? -errno : fd;
}

/* "BUCKET/OBJECT" -> validated names in c. 0 or -1 with InvalidParameterValue. */
static int location_split(struct api_req *r, const char *loc, struct bctx *c)
{
	const char *slash = strchr(loc, '/');
	size_t blen = slash ? (size_t)(slash - loc) : 0;

	if (!slash || blen >= sizeof(c->bucket) || strlen(slash + 1) >= sizeof(c->object))
		goto bad;
	memcpy(c->bucket, loc, blen);
	c->bucket[blen] = 0;
	snprintf(c->object, sizeof(c->object), "%s", slash + 1);
	if (!bundle_valid_bucket(c->bucket) || !bundle_valid_object(c->object))
		goto bad;
	return 0;
bad:
	return api_error(r, "InvalidParameterValue",
			 "Invalid value '%.300s' for ImageLocation: expected BUCKET/OBJECT, a bucket "
			 "name of 3 to 63 characters of a-z 0-9 . - (first and last a letter or "
			 "digit, no '..') and an object name of A-Z a-z 0-9 . _ - (not starting "
			 "with '.')",
			 loc);
}

/* Read the owner's signing certificate. 0 or -1 with the error recorded. */
static int cert_load(struct api_req *r, const char *owner, struct bctx *c)
{
	const char *const path[] = {"accounts", owner, NULL};
	void *buf;
	int fd, ret;

	fd = open_dirs(r->d->home_fd, path);
	ret = fd < 0 ? fd : file_read_all(fd, "signing-cert.pem", &buf, &c->cert_len);
	if (fd >= 0)
		close(fd);
	if (ret == -ENOENT)
		return api_error(r, "AuthFailure",
				 "Account %s has no signing certificate, so the manifest's signature "
				 "cannot be verified: register one with `ebsim-ami upload-bundle -c "
				 "CERT.pem`",
				 owner);
	if (ret)
		return api_error(r, "InternalError", "cannot read the signing certificate of %s: %s",
				 owner, strerror(-ret));
	c->cert = buf;
	return 0;
}

/* The region's EC2 private key (created on first need). */
static int ec2_key_load(struct api_req *r, const char *region, struct bctx *c)
{
	char key_path[256], err[BUNDLE_ERR_MAX] = "";
	void *buf;
	int ret;

	ret = bundle_region_keys(r->d->home_fd, region, key_path, NULL, err);
	if (!ret)
		ret = file_read_all(r->d->home_fd, key_path, &buf, &c->ec2_key_len);
	if (ret)
		return api_error(r, "InternalError", "cannot get the EC2 key of region %s: %s",
				 region, err[0] ? err : strerror(-ret));
	c->ec2_key = buf;
	return 0;
}

/*
 * Open location in region, parse its manifest, check that owner made it and signed it
 * with owner's certificate, and load the region's EC2 key. 0 or -1 (recorded).
 */
static int bundle_open(struct api_req *r, const char *region, const char *bucket,
		       const char *object, const char *owner, struct bctx *c)
{
	const char *const path[] = {region, "buckets", bucket, NULL};
	char err[BUNDLE_ERR_MAX] = "";
	int ret;

	c->bucket_fd = open_dirs(r->d->regions_fd, path);
	if (c->bucket_fd < 0)
		return api_error(r, "InvalidManifest",
				 "The manifest %s/%s cannot be read: there is no bucket %s in %s",
				 bucket, object, bucket, region);
	ret = bundle_manifest_load(c->bucket_fd, object, &c->m, err);
	if (ret == -ENOENT)
		return api_error(r, "InvalidManifest",
				 "The manifest %s/%s does not exist: upload the bundle with "
				 "`ebsim-ami upload-bundle`",
				 bucket, object);
	if (ret)
		return api_error(r, "InvalidManifest", "The manifest %s/%s is not valid: %s", bucket,
				 object, err[0] ? err : strerror(-ret));
	if (strcmp(c->m->user, owner))
		return api_error(r, "AuthFailure",
				 "The manifest %s/%s was bundled by account %.16s, not by %s", bucket,
				 object, c->m->user, owner);
	if (cert_load(r, owner, c))
		return -1;
	err[0] = 0;
	ret = bundle_verify_signature(c->m, c->cert, c->cert_len, err);
	if (ret)
		return api_error(r, "InvalidManifest",
				 "The signature of the manifest %s/%s does not verify with the signing "
				 "certificate of account %s: %s",
				 bucket, object, owner, err[0] ? err : strerror(-ret));
	return ec2_key_load(r, region, c);
}

/* Cancel an unbundle when the daemon is shutting down. */
static int progress(void *arg, const char *step, uint64_t done, uint64_t total)
{
	struct daemon *d = arg;

	(void)step;
	(void)done;
	(void)total;
	return d->stopping;
}

static uint64_t root_gib(uint64_t bytes)
{
	return MAX(1, (bytes + GIB - 1) / GIB);
}

int ami_bundle_register(struct api_req *r, const char *name, const char *desc, const char *virt,
			const char *loc)
{
	struct daemon *d = r->d;
	struct bctx c = {.bucket_fd = -1};
	const char *arch = NULL, *root = NULL;
	char err[BUNDLE_ERR_MAX] = "", id[ID_MAX], now[32], rootdev[80] = "/dev/sda1";
	json_object *in, *bdm = NULL, *img;
	int ret;

	if (param_str(r, "Architecture", false, &arch) < 0 ||
	    param_str(r, "RootDeviceName", false, &root) < 0)
		return -1;
	if (jget(r->params, "BlockDeviceMappings"))
		return api_error(r, "InvalidParameterCombination",
				 "The block device mappings of an instance-store-backed image come "
				 "from its manifest (ebsim-ami bundle-vol --block-device-mapping); "
				 "do not give BlockDeviceMappings with ImageLocation");
	if (location_split(r, loc, &c) || bundle_open(r, r->region, c.bucket, c.object,
						      r->account, &c))
		goto out_free;
	if (bundle_check_ec2_key(c.m, c.ec2_key, c.ec2_key_len)) {
		api_error(r, "InvalidManifest",
			  "The bundle %s was not encrypted for region %s: its EC2-wrapped key does "
			  "not open with the region's EC2 key (bundle it with that region's EC2 "
			  "certificate)",
			  loc, r->region);
		goto out_free;
	}
	ret = bundle_verify_parts(c.m, c.bucket_fd, progress, d, err);
	if (ret) {
		api_error(r, "InvalidManifest", "The parts of the bundle %s do not match its manifest: %s",
			  loc, err[0] ? err : strerror(-ret));
		goto out_free;
	}
	if (arch && strcmp(arch, c.m->arch)) {
		api_error(r, "InvalidParameterValue",
			  "Value (%.32s) for parameter architecture does not match the manifest's "
			  "architecture %s",
			  arch, c.m->arch);
		goto out_free;
	}
	if (root_gib(c.m->size) > ROOT_MAX_GIB) {
		api_error(r, "InvalidManifest",
			  "The image of %s is %llu bytes; an instance-store root holds at most %d GiB",
			  loc, (unsigned long long)c.m->size, ROOT_MAX_GIB);
		goto out_free;
	}
	/* the manifest's mappings: root names the root device, ephemeralN instance store */
	in = json_object_new_array();
	for (size_t i = 0; i < c.m->n_bdm; i++) {
		const struct bundle_bdm *b = &c.m->bdm[i];
		char dev[80];
		snprintf(dev, sizeof(dev), "%s%s", strncmp(b->device, "/dev/", 5) ? "/dev/" : "",
			 b->device);
		if (!strcmp(b->virtual_name, "root")) {
			snprintf(rootdev, sizeof(rootdev), "%s", dev);
		} else if (!strncmp(b->virtual_name, "ephemeral", 9)) {
			json_object *m = json_object_new_object();
			json_object_object_add(m, "DeviceName", json_object_new_string(dev));
			json_object_object_add(m, "VirtualName", json_object_new_string(b->virtual_name));
			json_object_array_add(in, m);
		}
	}
	bdm = bdm_parse(r, in, true);
	json_object_put(in);
	if (!bdm) {
		char why[sizeof(r->message)];
		memcpy(why, r->message, sizeof(why));
		api_error(r, "InvalidManifest",
			  "The block device mapping of the manifest %s is not valid: %.600s", loc,
			  why);
		goto out_free;
	}
	if (root && strcmp(device_basename(root), device_basename(rootdev))) {
		api_error(r, "InvalidParameterValue",
			  "RootDeviceName %.64s differs from the manifest's root device %s", root,
			  rootdev);
		goto out_free;
	}
	if (id_new("ami", id)) {
		api_error(r, "InternalError", "cannot make an ID");
		goto out_free;
	}
	time_iso8601(now);
	img = json_object_new_object();
	json_object_object_add(img, "Architecture", json_object_new_string(c.m->arch));
	json_object_object_add(img, "CreationDate", json_object_new_string(now));
	json_object_object_add(img, "ImageId", json_object_new_string(id));
	json_object_object_add(img, "ImageLocation", json_object_new_string(loc));
	json_object_object_add(img, "ImageType", json_object_new_string("machine"));
	json_object_object_add(img, "Public", json_object_new_boolean(false));
	json_object_object_add(img, "OwnerId", json_object_new_string(r->account));
	json_object_object_add(img, "PlatformDetails", json_object_new_string("Linux/UNIX"));
	json_object_object_add(img, "UsageOperation", json_object_new_string("RunInstances"));
	json_object_object_add(img, "State", json_object_new_string("available"));
	json_object_object_add(img, "BlockDeviceMappings", bdm);
	bdm = NULL;
	json_object_object_add(img, "Description", json_object_new_string(desc ? desc : ""));
	json_object_object_add(img, "Name", json_object_new_string(name));
	json_object_object_add(img, "RootDeviceName", json_object_new_string(rootdev));
	json_object_object_add(img, "RootDeviceType", json_object_new_string("instance-store"));
	json_object_object_add(img, "VirtualizationType", json_object_new_string(virt));
	json_object_object_add(img, "Hypervisor", json_object_new_string("xen"));
	if (c.m->kernel_id[0])
		json_object_object_add(img, "KernelId", json_object_new_string(c.m->kernel_id));
	if (c.m->ramdisk_id[0])
		json_object_object_add(img, "RamdiskId", json_object_new_string(c.m->ramdisk_id));
	json_object_object_add(img, "_Region", json_object_new_string(r->region));
	json_object_object_add(img, "_Bucket", json_object_new_string(c.bucket));
	json_object_object_add(img, "_Manifest", json_object_new_string(c.object));
	json_object_object_add(img, "_ImageSize", json_object_new_int64((int64_t)c.m->size));
	ret = cat_doc_put(d->cat, "image", id, r->account, r->region, img);
	json_object_put(img);
	if (ret) {
		api_error(r, "InternalError", "catalog update failed");
		goto out_free;
	}
	log_info("registered %s (%s, instance-store, %s) for %s in %s", id, name, loc, r->account,
		 r->region);
	bctx_free(&c);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "ImageId", json_object_new_string(id));
	return 0;
out_free:
	json_object_put(bdm);
	bctx_free(&c);
	return -1;
}

int ami_bundle_root_plan(struct api_req *r, json_object *img, const char *inst_id,
			 json_object *eph)
{
	int64_t size = json_object_get_int64(jget(img, "_ImageSize"));
	json_object *e;
	char name[ID_MAX + 16];

	if (size <= 0 || !jstr(img, "_Bucket")[0] || !jstr(img, "_Manifest")[0])
		return api_error(r, "InvalidAMIID.Unavailable",
				 "The image '%s' has no bundle to launch from", jstr(img, "ImageId"));
	snprintf(name, sizeof(name), "%s.root", inst_id);
	e = json_object_new_object();
	json_object_object_add(e, "DeviceName", json_object_new_string(jstr(img, "RootDeviceName")));
	json_object_object_add(e, "VirtualName", json_object_new_string("ami"));
	json_object_object_add(e, "SizeGiB", json_object_new_int64((int64_t)root_gib((uint64_t)size)));
	json_object_object_add(e, "Name", json_object_new_string(name));
	json_object_object_add(e, "Image", json_object_new_string(jstr(img, "ImageId")));
	json_object_array_add(eph, e);
	return 0;
}

int ami_bundle_root_fill(struct api_req *r, json_object *img, json_object *inst)
{
	struct daemon *d = r->d;
	struct bctx c = {.bucket_fd = -1};
	const char *loop = jstr(jget(inst, "LocalDevices"), jstr(inst, "RootDeviceName"));
	char err[BUNDLE_ERR_MAX] = "";
	uint64_t t0 = time_mono_ns();
	int fd = -1, ret;

	if (!bundle_valid_bucket(jstr(img, "_Bucket")) || !bundle_valid_object(jstr(img, "_Manifest")))
		return api_error(r, "InvalidAMIID.Unavailable",
				 "The image '%s' has no valid bundle location", jstr(img, "ImageId"));
	if (!loop[0] || strncmp(loop, "/dev/loop", 9))
		return api_error(r, "InternalError", "the instance's root device is not attached");
	if (bundle_open(r, jstr(img, "_Region"), jstr(img, "_Bucket"), jstr(img, "_Manifest"),
			jstr(img, "OwnerId"), &c))
		goto out_free;
	if ((uint64_t)json_object_get_int64(jget(img, "_ImageSize")) != c.m->size) {
		api_error(r, "InvalidManifest",
			  "The bundle %s changed since the image was registered (its size differs)",
			  jstr(img, "ImageLocation"));
		goto out_free;
	}
	fd = open(loop, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		api_error(r, "InternalError", "cannot open the root device %s: %s", loop,
			  strerror(errno));
		goto out_free;
	}
	ret = bundle_unbundle(c.m, c.cert, c.cert_len, c.bucket_fd, c.ec2_key, c.ec2_key_len, fd,
			      progress, d, err);
	if (!ret && fsync(fd) < 0)
		ret = -errno;
	if (ret) {
		const char *why = err[0] ? err : strerror(-ret);
		if (ret == -EBADMSG || ret == -ENOENT || ret == -EINVAL || ret == -EKEYREJECTED)
			api_error(r, "InvalidManifest",
				  "The bundle %s of image %s cannot be unbundled: %s",
				  jstr(img, "ImageLocation"), jstr(img, "ImageId"), why);
		else
			api_error(r, "InternalError", "cannot unbundle %s onto the root device: %s",
				  jstr(img, "ImageLocation"), why);
		goto out_free;
	}
	close(fd);
	log_info("%s: unbundled %s (%llu bytes) onto its instance-store root in %llu ms",
		 jstr(inst, "InstanceId"), jstr(img, "ImageLocation"), (unsigned long long)c.m->size,
		 (unsigned long long)((time_mono_ns() - t0) / 1000000));
	bctx_free(&c);
	return 0;
out_free:
	if (fd >= 0)
		close(fd);
	bctx_free(&c);
	return -1;
}
