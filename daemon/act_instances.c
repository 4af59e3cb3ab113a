/* SPDX-License-Identifier: MIT */
/*
 * act_instances.c - instances and their storage lifecycle: RunInstances,
 * DescribeInstances, Stop/Start/Reboot/TerminateInstances, ModifyInstanceAttribute,
 * AttachVolume, DetachVolume; recovery at start-up.
 *
 * Design notes
 * ------------
 * An instance is a catalog document (kind "instance") holding what DescribeInstances shows
 * plus private fields: _Ephemeral (its instance-store volumes: device, virtual name, size,
 * served name), _Loops (device name -> the file each loop device is backed by, so that
 * cleanup after a crash detaches only loops still backed by our files), _UserData,
 * _TerminatedAt, _StoreMappings (every ephemeralN the launch's mappings asked for, even
 * beyond what the type offers: a later type with more instance-store volumes gets them
 * at its next start, fresh and empty, as on EC2). KernelId/RamdiskId come from
 * run-instances (checked for form: aki-/ari- and 8 or 17 hex digits) or the image.
 * An attachment is a document (kind "attachment") keyed by volume id.
 *
 * DescribeInstances pages over instances (MaxResults 5-1000, not with InstanceIds), in
 * catalog order, then groups each page into reservations; NextToken is the instance id
 * the next page starts at (paginate()).
 *
 * Storage effects (DESIGN.md's lifecycle table):
 *   run     EBS volumes created (root lazily from the image's snapshot) and attached;
 *           instance store created empty with a fresh key that lives only in memory;
 *           loops attached, device symlinks under instances/<id>/dev, root mounted at
 *           instances/<id>/root when it holds an ext2/3/4 file system.
 *   reboot  root unmounted and mounted again; everything else kept.
 *   stop    root unmounted, loops detached, EBS volumes flushed and kept, instance store
 *           destroyed: its key is wiped and its file removed (EBS-backed only).
 *   start   EBS attached again, instance store created empty again, root mounted.
 *   terminate  like stop, then EBS volumes with DeleteOnTermination are deleted and the
 *           others detached.
 *   daemon restart (or stop)  the host is gone: EBS-backed instances become stopped,
 *           instance-store-backed ones terminated, with a StateReason saying why.
 * Every transition runs to completion inside the request (the reply shows EC2's
 * intermediate state, as EC2 does); a failure in the middle of run-instances undoes
 * everything that call created.
 */
#include "daemon/daemon_i.h"
#include "fuse/loop.h"
#include "persistence/itypes.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GIB (1ull << 30)
#define TERMINATED_VISIBLE_S 3600 /* terminated instances stay visible for an hour */

enum { ST_PENDING = 0, ST_RUNNING = 16, ST_SHUTTING_DOWN = 32, ST_TERMINATED = 48,
       ST_STOPPING = 64, ST_STOPPED = 80 };

static json_object *state_obj(int code)
{
	static const struct {
		int code;
		const char *name;
	} names[] = {{ST_PENDING, "pending"},	   {ST_RUNNING, "running"},
		     {ST_SHUTTING_DOWN, "shutting-down"}, {ST_TERMINATED, "terminated"},
		     {ST_STOPPING, "stopping"},	   {ST_STOPPED, "stopped"}};
	json_object *o = json_object_new_object();

	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (names[i].code == code) {
			json_object_object_add(o, "Code", json_object_new_int(code));
			json_object_object_add(o, "Name", json_object_new_string(names[i].name));
		}
	return o;
}

static int state_code(json_object *inst)
{
	return json_object_get_int(jget(jget(inst, "State"), "Code"));
}

static void set_state(json_object *inst, int code, const char *reason_code, const char *reason)
{
	json_object_object_add(inst, "State", state_obj(code));
	if (reason_code) {
		json_object *sr = json_object_new_object();
		json_object_object_add(sr, "Code", json_object_new_string(reason_code));
		json_object_object_add(sr, "Message", json_object_new_string(reason));
		json_object_object_add(inst, "StateReason", sr);
		json_object_object_add(inst, "StateTransitionReason", json_object_new_string(reason));
	}
}

static bool ebs_backed(json_object *inst)
{
	return !strcmp(jstr(inst, "RootDeviceType"), "ebs");
}

static int inst_save(struct daemon *d, json_object *inst)
{
	return cat_doc_put(d->cat, "instance", jstr(inst, "InstanceId"), jstr(inst, "OwnerId"),
			   jstr(inst, "_Region"), inst);
}

/* ---- per-instance directory: dev/ symlinks and root/ mount point --------------------- */

static void inst_path(struct daemon *d, const char *id, const char *sub, char *out, size_t cap)
{
	snprintf(out, cap, "%s/instances/%s%s%s", d->home, id, sub ? "/" : "", sub ? sub : "");
}

static int inst_dirs(struct daemon *d, const char *id)
{
	char p[4200];

	if (mkdirat(d->inst_fd, id, 0755) < 0 && errno != EEXIST)
		return -errno;
	inst_path(d, id, "dev", p, sizeof(p));
	if (mkdir(p, 0755) < 0 && errno != EEXIST)
		return -errno;
	inst_path(d, id, "root", p, sizeof(p));
	if (mkdir(p, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static bool is_mounted(const char *path)
{
	char line[8192];
	bool found = false;
	FILE *f = fopen("/proc/self/mountinfo", "re");

	while (f && fgets(line, sizeof(line), f)) {
		char mnt[4200];
		if (sscanf(line, "%*s %*s %*s %*s %4199s", mnt) == 1 && !strcmp(mnt, path))
			found = true;
	}
	if (f)
		fclose(f);
	return found;
}

/* ext2/3/4 superblock magic 0xEF53 at byte 1080 */
static bool holds_ext(const char *dev)
{
	unsigned char m[2];
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	bool ok;

	if (fd < 0)
		return false;
	ok = pread(fd, m, 2, 1080) == 2 && m[0] == 0x53 && m[1] == 0xEF;
	close(fd);
	return ok;
}

static void root_mount(struct daemon *d, json_object *inst)
{
	const char *id = jstr(inst, "InstanceId");
	const char *loop = jstr(jget(inst, "LocalDevices"), jstr(inst, "RootDeviceName"));
	char root[4200];
	int ret;

	if (!loop[0] || !holds_ext(loop))
		return;
	inst_path(d, id, "root", root, sizeof(root));
	ret = fs_op(FS_MOUNT, root, loop, "ext4", MS_NODEV | MS_NOSUID);
	if (ret) {
		log_warn("%s: cannot mount its root %s at %s: %s", id, loop, root, strerror(-ret));
		return;
	}
	json_object_object_add(inst, "RootMount", json_object_new_string(root));
}

static void root_unmount(struct daemon *d, const char *id)
{
	char root[4200];

	inst_path(d, id, "root", root, sizeof(root));
	if (!is_mounted(root))
		return;
	/* flush this file system, not the host's (sync() waits for every other writer on
	 * the host): its data is on the volume even if it must be detached lazily below */
	if (fs_op(FS_SYNC_UNMOUNT, root, NULL, NULL, 0)) {
		log_warn("%s: %s is busy; detaching it lazily", id, root);
		fs_op(FS_DETACH, root, NULL, NULL, 0);
	}
}

struct fs_op_args {
	enum fs_op_kind op;
	const char *path, *source, *type;
	unsigned long flags;
};

/* In the child of run_isolated: system calls only. */
static int fs_op_child(void *arg)
{
	struct fs_op_args *a = arg;
	int fd, ret = 0;

	switch (a->op) {
	case FS_MOUNT:
		return mount(a->source, a->path, a->type, a->flags, NULL) < 0 ? -errno : 0;
	case FS_DETACH:
		return umount2(a->path, MNT_DETACH) < 0 ? -errno : 0;
	default:
		break;
	}
	fd = open(a->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (a->op == FS_SYNC_UNMOUNT || a->op == FS_SYNC_FREEZE)
		syncfs(fd); /* best effort: the unmount or freeze below writes back too */
	if (a->op == FS_SYNC_FREEZE && ioctl(fd, FIFREEZE, 0) < 0)
		ret = -errno;
	if (a->op == FS_THAW && ioctl(fd, FITHAW, 0) < 0)
		ret = -errno;
	close(fd);
	if (a->op == FS_SYNC_UNMOUNT && umount2(a->path, 0) < 0)
		ret = -errno;
	return ret;
}

int fs_op(enum fs_op_kind op, const char *path, const char *source, const char *type,
	  unsigned long flags)
{
	struct fs_op_args a = {op, path, source, type, flags};

	return run_isolated(fs_op_child, &a);
}

/* ---- devices --------------------------------------------------------------------------- */

static int dev_attach(struct daemon *d, json_object *inst, const char *device, const char *name)
{
	const char *id = jstr(inst, "InstanceId");
	char file[4200], link[4200], loop[LOOP_DEV_MAX];
	json_object *ld = jget(inst, "LocalDevices"), *lp = jget(inst, "_Loops");
	int ret;

	snprintf(file, sizeof(file), "%s/mnt/%s", d->home, name);
	ret = loop_attach(file, false, loop);
	if (ret) {
		log_err("%s: cannot attach %s as a loop device: %s", id, name, strerror(-ret));
		return ret;
	}
	if (!ld) {
		ld = json_object_new_object();
		json_object_object_add(inst, "LocalDevices", ld);
	}
	if (!lp) {
		lp = json_object_new_object();
		json_object_object_add(inst, "_Loops", lp);
	}
	json_object_object_add(ld, device, json_object_new_string(loop));
	json_object_object_add(lp, device, json_object_new_string(file));
	inst_path(d, id, "dev/", link, sizeof(link));
	strncat(link, device_basename(device), sizeof(link) - strlen(link) - 1);
	unlink(link);
	if (symlink(loop, link) < 0)
		log_warn("%s: cannot link %s -> %s: %s", id, link, loop, strerror(errno));
	return 0;
}

static void dev_detach(struct daemon *d, json_object *inst, const char *device)
{
	const char *id = jstr(inst, "InstanceId");
	const char *loop = jstr(jget(inst, "LocalDevices"), device);
	const char *file = jstr(jget(inst, "_Loops"), device);
	char link[4200];
	int ret;

	if (loop[0] && file[0]) {
		ret = loop_detach(loop, file);
		if (ret && ret != -ENXIO)
			log_warn("%s: detaching %s: %s", id, loop, strerror(-ret));
		/* The kernel drops the loop's reference to the FUSE file only when the last
		 * opener of the device (udev's blkid probe, a mount being torn down) closes it:
		 * wait for that, so the volume is free again (attachable, deletable) when the
		 * detach returns. */
		const char *base = strrchr(file, '/');
		if (volfs_wait_closed(d->fs, base ? base + 1 : file, 3000))
			log_warn("%s: %s is still open 3 s after detaching %s", id, file, loop);
	}
	inst_path(d, id, "dev/", link, sizeof(link));
	strncat(link, device_basename(device), sizeof(link) - strlen(link) - 1);
	unlink(link);
	json_object_object_del(jget(inst, "LocalDevices"), device);
	json_object_object_del(jget(inst, "_Loops"), device);
}

/* ---- instance store -------------------------------------------------------------------- */

static int eph_create(struct daemon *d, const char *name, uint64_t gib, const char *region)
{
	struct dvol *dv = calloc(1, sizeof(*dv));
	struct vol_params p = {.size = gib * GIB, .crypt = VOL_CRYPT_EPHEMERAL};
	struct vol_keys keys;
	int ret;

	if (!dv)
		return -ENOMEM;
	dv->ephemeral = true;
	snprintf(dv->id, sizeof(dv->id), "%s", name);
	snprintf(dv->region, sizeof(dv->region), "%s", region);
	do {
		ret = rand_bytes(dv->key, sizeof(dv->key));
	} while (!ret && !memcmp(dv->key, dv->key + 32, 32));
	keys.ephemeral = dv->key;
	keys.master = NULL;
	file_remove_tree(d->eph_fd, name);
	if (!ret)
		ret = vol_create(d->eph_fd, name, &p, &keys);
	if (!ret)
		ret = vol_open(d->eph_fd, name, d->eng, &keys, NULL, &dv->vol);
	if (!ret) {
		ret = volfs_add(d->fs, name, dv->vol);
		if (ret)
			vol_close(dv->vol);
	}
	if (ret) {
		file_remove_tree(d->eph_fd, name);
		secure_zero(dv->key, sizeof(dv->key));
		free(dv);
		return ret;
	}
	dv->next = d->vols;
	d->vols = dv;
	return 0;
}

/* Crypto-shred: forget the key, then remove the file. */
static void eph_destroy(struct daemon *d, const char *name)
{
	struct dvol **pp, *dv;

	for (pp = &d->vols; (dv = *pp); pp = &dv->next)
		if (dv->ephemeral && !strcmp(dv->id, name))
			break;
	if (dv) {
		/* the loop device lets go of the file asynchronously */
		if (volfs_remove(d->fs, name, 3000))
			log_warn("instance store %s is still open while being destroyed", name);
		*pp = dv->next;
		vol_close(dv->vol);
		secure_zero(dv->key, sizeof(dv->key));
		free(dv);
	}
	file_remove_tree(d->eph_fd, name);
}

/* ---- bring an instance up / down -------------------------------------------------------- */

static void inst_down(struct daemon *d, json_object *inst, bool destroy_store);

static int inst_up(struct daemon *d, json_object *inst)
{
	const char *id = jstr(inst, "InstanceId");
	json_object *bdm = jget(inst, "BlockDeviceMappings"), *eph = jget(inst, "_Ephemeral");
	int ret = inst_dirs(d, id);

	for (size_t i = 0; !ret && bdm && i < json_object_array_length(bdm); i++) {
		json_object *m = json_object_array_get_idx(bdm, i);
		ret = dev_attach(d, inst, jstr(m, "DeviceName"), jstr(jget(m, "Ebs"), "VolumeId"));
	}
	for (size_t i = 0; !ret && eph && i < json_object_array_length(eph); i++) {
		json_object *e = json_object_array_get_idx(eph, i);
		ret = eph_create(d, jstr(e, "Name"),
				 (uint64_t)json_object_get_int64(jget(e, "SizeGiB")),
				 jstr(inst, "_Region"));
		if (!ret)
			ret = dev_attach(d, inst, jstr(e, "DeviceName"), jstr(e, "Name"));
	}
	if (ret) {
		inst_down(d, inst, true);
		return ret;
	}
	root_mount(d, inst);
	return 0;
}

static void inst_down(struct daemon *d, json_object *inst, bool destroy_store)
{
	const char *id = jstr(inst, "InstanceId");
	json_object *lp = jget(inst, "_Loops"), *eph = jget(inst, "_Ephemeral");
	char *devs[64];
	int n = 0;

	root_unmount(d, id);
	json_object_object_del(inst, "RootMount");
	if (lp) { /* none once stopped */
		json_object_object_foreach(lp, k, v)
		{
			(void)v;
			if (n < 64)
				devs[n++] = strdup(k);
		}
	}
	for (int i = 0; i < n; i++) {
		dev_detach(d, inst, devs[i]);
		free(devs[i]);
	}
	/* EBS volumes: every acknowledged write becomes durable now */
	json_object *bdm = jget(inst, "BlockDeviceMappings");
	for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
		struct dvol *dv = dvol_find(d, jstr(jget(json_object_array_get_idx(bdm, i), "Ebs"),
						    "VolumeId"));
		if (dv)
			vol_fsync(dv->vol);
	}
	for (size_t i = 0; destroy_store && eph && i < json_object_array_length(eph); i++)
		eph_destroy(d, jstr(json_object_array_get_idx(eph, i), "Name"));
	json_object_object_del(inst, "LocalDevices");
	json_object_object_del(inst, "_Loops");
}

/* ---- attachments ----------------------------------------------------------------------- */

static int attach_record(struct daemon *d, const char *vol, const char *inst, const char *device,
			 bool dot, const char *region, const char *account)
{
	json_object *a = json_object_new_object();
	struct cat_volume v;
	char now[32];
	int ret;

	time_iso8601(now);
	json_object_object_add(a, "AttachTime", json_object_new_string(now));
	json_object_object_add(a, "Device", json_object_new_string(device));
	json_object_object_add(a, "InstanceId", json_object_new_string(inst));
	json_object_object_add(a, "State", json_object_new_string("attached"));
	json_object_object_add(a, "VolumeId", json_object_new_string(vol));
	json_object_object_add(a, "DeleteOnTermination", json_object_new_boolean(dot));
	ret = cat_doc_put(d->cat, "attachment", vol, account, region, a);
	json_object_put(a);
	if (!ret && !(ret = cat_volume_get(d->cat, vol, &v))) {
		snprintf(v.state, sizeof(v.state), "in-use");
		ret = cat_volume_update(d->cat, &v);
	}
	return ret;
}

static void attach_forget(struct daemon *d, const char *vol)
{
	struct cat_volume v;

	cat_doc_delete(d->cat, "attachment", vol);
	if (cat_volume_get(d->cat, vol, &v) == 0) {
		snprintf(v.state, sizeof(v.state), "available");
		cat_volume_update(d->cat, &v);
	}
}

/* Delete an EBS volume that an instance no longer uses (DeleteOnTermination). */
static void volume_drop(struct daemon *d, const char *vol)
{
	struct cat_volume v;

	attach_forget(d, vol);
	if (dvol_unserve(d, vol, 3000))
		log_warn("%s could not be closed before deletion", vol);
	if (cat_volume_get(d->cat, vol, &v) == 0) {
		snprintf(v.state, sizeof(v.state), "deleting");
		cat_volume_update(d->cat, &v);
	}
	if (vol_destroy(d->vols_fd, vol) == 0)
		cat_volume_delete(d->cat, vol);
	log_info("deleted %s (DeleteOnTermination)", vol);
}

/* ---- run-instances --------------------------------------------------------------------- */

static int jint(struct api_req *r, json_object *o, const char *k, int64_t def, int64_t *out)
{
	json_object *v = jget(o, k);

	if (!v) {
		*out = def;
		return 0;
	}
	if (!json_object_is_type(v, json_type_int))
		return api_error(r, "InvalidParameterValue", "%s must be an integer", k);
	*out = json_object_get_int64(v);
	return 0;
}

static bool same_device(json_object *a, json_object *b)
{
	return !strcmp(device_basename(jstr(a, "DeviceName")), device_basename(jstr(b, "DeviceName")));
}

/* Merge the image's mappings with the request's, by device. A request's Ebs mapping over an
 * image's Ebs mapping changes only the fields it gives: EC2 keeps the image's SnapshotId
 * (and the rest) when a launch sets, say, DeleteOnTermination false on the root device.
 * Any other request mapping replaces the image's; NoDevice removes it. */
static json_object *merge_bdm(json_object *img_bdm, json_object *req_bdm)
{
	json_object *out = json_object_new_array();
	size_t ni = img_bdm ? json_object_array_length(img_bdm) : 0;
	size_t nr = req_bdm ? json_object_array_length(req_bdm) : 0;

	for (size_t i = 0; i < ni; i++) {
		json_object *m = json_object_array_get_idx(img_bdm, i), *over = NULL;
		for (size_t k = 0; k < nr; k++)
			if (same_device(m, json_object_array_get_idx(req_bdm, k)))
				over = json_object_array_get_idx(req_bdm, k);
		if (!over) {
			json_object_array_add(out, json_object_get(m));
		} else if (jget(m, "Ebs") && jget(over, "Ebs")) {
			json_object *n = json_object_new_object(), *e = json_object_new_object();
			json_object_object_foreach(jget(m, "Ebs"), k1, v1)
				json_object_object_add(e, k1, json_object_get(v1));
			json_object_object_foreach(jget(over, "Ebs"), k2, v2)
				json_object_object_add(e, k2, json_object_get(v2));
			json_object_object_add(n, "DeviceName", json_object_get(jget(m, "DeviceName")));
			json_object_object_add(n, "Ebs", e);
			json_object_array_add(out, n);
		}
	}
	for (size_t k = 0; k < nr; k++) {
		json_object *m = json_object_array_get_idx(req_bdm, k);
		bool merged = false;
		for (size_t i = 0; jget(m, "Ebs") && i < ni; i++)
			merged |= same_device(m, json_object_array_get_idx(img_bdm, i)) &&
				  jget(json_object_array_get_idx(img_bdm, i), "Ebs");
		if (!merged && !jget(m, "NoDevice"))
			json_object_array_add(out, json_object_get(m));
	}
	return out;
}

/* Undo a partly built instance: volumes it created, its devices, its document. */
static void inst_rollback(struct daemon *d, json_object *inst)
{
	json_object *bdm = jget(inst, "BlockDeviceMappings");

	inst_down(d, inst, true);
	for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
		const char *vol = jstr(jget(json_object_array_get_idx(bdm, i), "Ebs"), "VolumeId");
		if (vol[0])
			volume_drop(d, vol);
	}
	cat_doc_delete(d->cat, "instance", jstr(inst, "InstanceId"));
	file_remove_tree(d->inst_fd, jstr(inst, "InstanceId"));
}

/* The size of each instance-store volume of type t, scaled by --instance-store-scale. */
static uint64_t store_gib(struct daemon *d, const struct itype *t)
{
	return (uint64_t)MAX(1.0, (double)t->store_gib * d->store_scale + 0.5);
}

/* Plan the instance store of an instance of type t (at launch, and at each start, since
 * the type may have changed while stopped): ephemeralN for every N below the type's count
 * that _StoreMappings asks for (NVMe types get all of theirs without asking), each fresh,
 * named <instance>.ephN and sized by the type. A device an EBS volume took meanwhile wins. */
static void store_plan(struct daemon *d, json_object *inst, const struct itype *t)
{
	const char *id = jstr(inst, "InstanceId");
	json_object *maps = jget(inst, "_StoreMappings"), *old = jget(inst, "_Ephemeral");
	json_object *eph = json_object_new_array(), *bdm = jget(inst, "BlockDeviceMappings");

	if (!maps) /* an instance from before _StoreMappings: what it had is what it asked */
		maps = old;
	for (int n = 0; n < t->store_count; n++) {
		char vname[24], dev[40] = "", name[ID_MAX + 16];
		bool taken = false;
		snprintf(vname, sizeof(vname), "ephemeral%d", n);
		for (size_t i = 0; maps && i < json_object_array_length(maps); i++) {
			json_object *m = json_object_array_get_idx(maps, i);
			if (!strcmp(jstr(m, "VirtualName"), vname))
				snprintf(dev, sizeof(dev), "%s", jstr(m, "DeviceName"));
		}
		if (!dev[0] && t->store_kind && !strcmp(t->store_kind, "nvme-ssd"))
			snprintf(dev, sizeof(dev), "/dev/nvme%dn1", n + 1);
		for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++)
			taken |= !strcmp(device_basename(jstr(json_object_array_get_idx(bdm, i),
							      "DeviceName")),
					 device_basename(dev));
		if (!dev[0] || taken)
			continue;
		snprintf(name, sizeof(name), "%s.eph%d", id, n & 31);
		json_object *e = json_object_new_object();
		json_object_object_add(e, "DeviceName", json_object_new_string(dev));
		json_object_object_add(e, "VirtualName", json_object_new_string(vname));
		json_object_object_add(e, "SizeGiB", json_object_new_int64((int64_t)store_gib(d, t)));
		json_object_object_add(e, "Name", json_object_new_string(name));
		json_object_array_add(eph, e);
	}
	json_object_object_add(inst, "_Ephemeral", eph);
}

/* Build one instance: create its volumes, bring it up. NULL with the error recorded. */
static json_object *inst_build(struct api_req *r, json_object *img, const struct itype *t,
			       json_object *bdm, const char *resv, const char *az,
			       const char *user_data, const char *kernel, const char *ramdisk)
{
	struct daemon *d = r->d;
	json_object *inst = json_object_new_object(), *mappings = json_object_new_array();
	char id[ID_MAX], now[32];
	int ret;

	id_new("i", id);
	time_iso8601(now);
	json_object_object_add(inst, "InstanceId", json_object_new_string(id));
	json_object_object_add(inst, "ImageId", json_object_new_string(jstr(img, "ImageId")));
	json_object_object_add(inst, "InstanceType", json_object_new_string(t->name));
	json_object_object_add(inst, "LaunchTime", json_object_new_string(now));
	json_object *pl = json_object_new_object();
	json_object_object_add(pl, "AvailabilityZone", json_object_new_string(az));
	json_object_object_add(inst, "Placement", pl);
	json_object_object_add(inst, "Architecture", json_object_new_string(jstr(img, "Architecture")));
	json_object_object_add(inst, "VirtualizationType",
			       json_object_new_string(jstr(img, "VirtualizationType")));
	json_object_object_add(inst, "RootDeviceType", json_object_new_string(jstr(img, "RootDeviceType")));
	json_object_object_add(inst, "RootDeviceName", json_object_new_string(jstr(img, "RootDeviceName")));
	json_object_object_add(inst, "Hypervisor", json_object_new_string("xen"));
	json_object_object_add(inst, "OwnerId", json_object_new_string(r->account));
	json_object_object_add(inst, "_ReservationId", json_object_new_string(resv));
	json_object_object_add(inst, "_Region", json_object_new_string(r->region));
	json_object_object_add(inst, "_UserData", json_object_new_string(user_data ? user_data : ""));
	json_object_object_add(inst, "BlockDeviceMappings", mappings);
	json_object_object_add(inst, "_Ephemeral", json_object_new_array());
	if (kernel && kernel[0])
		json_object_object_add(inst, "KernelId", json_object_new_string(kernel));
	if (ramdisk && ramdisk[0])
		json_object_object_add(inst, "RamdiskId", json_object_new_string(ramdisk));
	set_state(inst, ST_PENDING, NULL, NULL);
	json_object_object_add(inst, "StateTransitionReason", json_object_new_string(""));

	/* EBS mappings: create each volume (lazily restored from its snapshot) */
	for (size_t i = 0; i < json_object_array_length(bdm); i++) {
		json_object *m = json_object_array_get_idx(bdm, i), *e = jget(m, "Ebs"), *dv;
		struct cat_volume v = {0};
		struct cat_snapshot s, *sp = NULL;
		int64_t size = 0;

		if (!e)
			continue;
		const char *sid = jstr(e, "SnapshotId");
		if (sid[0]) {
			if (snapshot_lookup_use(r, sid, &s))
				goto out_rollback;
			sp = &s;
		}
		jint(r, e, "VolumeSize", sp ? (int64_t)s.volume_size_gib : 0, &size);
		if (size <= 0 || (sp && (uint64_t)size < s.volume_size_gib) || size > 16384) {
			api_error(r, "InvalidBlockDeviceMapping",
				  "The mapping for %s needs a valid VolumeSize (>= its snapshot)",
				  jstr(m, "DeviceName"));
			goto out_rollback;
		}
		v.size_gib = (uint64_t)size;
		snprintf(v.type, sizeof(v.type), "%s", jstr(e, "VolumeType")[0] ? jstr(e, "VolumeType") : "gp2");
		v.iops = !strcmp(v.type, "gp2") ? (int)MIN(16000, MAX(100, 3 * size))
						  : !strcmp(v.type, "gp3") ? 3000 : 0;
		v.throughput = !strcmp(v.type, "gp3") ? 125 : 0;
		v.encrypted = sp ? s.encrypted : false;
		snprintf(v.az, sizeof(v.az), "%s", az);
		if (volume_create(r, &v, sp))
			goto out_rollback;
		json_object *dot = jget(e, "DeleteOnTermination");
		bool del = dot ? json_object_get_boolean(dot) : true;
		json_object *nm = json_object_new_object();
		dv = json_object_new_object();
		json_object_object_add(nm, "DeviceName", json_object_new_string(jstr(m, "DeviceName")));
		json_object_object_add(dv, "AttachTime", json_object_new_string(now));
		json_object_object_add(dv, "DeleteOnTermination", json_object_new_boolean(del));
		json_object_object_add(dv, "Status", json_object_new_string("attached"));
		json_object_object_add(dv, "VolumeId", json_object_new_string(v.id));
		json_object_object_add(nm, "Ebs", dv);
		json_object_array_add(mappings, nm);
		if (attach_record(d, v.id, id, jstr(m, "DeviceName"), del, r->region, r->account)) {
			api_error(r, "InternalError", "catalog update failed");
			goto out_rollback;
		}
	}
	/* instance store: every ephemeralN the mappings ask for, kept so that a later type
	 * with more instance-store volumes gets them at start */
	json_object *sm = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(bdm); i++) {
		json_object *m = json_object_array_get_idx(bdm, i), *o;
		if (!jstr(m, "VirtualName")[0])
			continue;
		o = json_object_new_object();
		json_object_object_add(o, "DeviceName", json_object_new_string(jstr(m, "DeviceName")));
		json_object_object_add(o, "VirtualName", json_object_new_string(jstr(m, "VirtualName")));
		json_object_array_add(sm, o);
	}
	json_object_object_add(inst, "_StoreMappings", sm);
	store_plan(d, inst, t);
	/* an instance-store root: filled from the image's bundle once it is attached */
	if (!ebs_backed(inst) && ami_bundle_root_plan(r, img, id, jget(inst, "_Ephemeral")))
		goto out_rollback;
	ret = inst_up(d, inst);
	if (ret) {
		api_error(r, "InternalError", "cannot attach the instance's devices: %s",
			  strerror(-ret));
		goto out_rollback;
	}
	if (!ebs_backed(inst)) {
		if (ami_bundle_root_fill(r, img, inst))
			goto out_rollback;
		root_mount(d, inst);
	}
	set_state(inst, ST_RUNNING, NULL, NULL);
	json_object_object_add(inst, "StateTransitionReason", json_object_new_string(""));
	if (inst_save(d, inst)) {
		api_error(r, "InternalError", "catalog update failed");
		goto out_rollback;
	}
	log_info("launched %s (%s, %s) from %s", id, t->name, jstr(inst, "RootDeviceType"),
		 jstr(img, "ImageId"));
	return inst;
out_rollback:
	inst_rollback(d, inst);
	json_object_put(inst);
	return NULL;
}

static int check_compat(struct api_req *r, const struct itype *t, json_object *img)
{
	const char *arch = jstr(img, "Architecture"), *virt = jstr(img, "VirtualizationType");

	if (strcmp(arch, t->arch) && !(!strcmp(arch, "i386") && !strcmp(t->arch, "x86_64")))
		return api_error(r, "InvalidParameterCombination",
				 "The architecture '%s' of the specified instance type does not match "
				 "the architecture '%s' of the specified AMI.",
				 t->arch, arch);
	if (!strcmp(virt, "paravirtual") ? !t->pv : !t->hvm)
		return api_error(r, "InvalidParameterCombination",
				 "Virtualization type '%s' is not supported by instances of type "
				 "'%s'.",
				 virt, t->name);
	return 0;
}

/* The public view of an instance: what describe and run return. */
static json_object *inst_view(json_object *inst, int shown_state)
{
	json_object *o = doc_public(inst);

	if (shown_state >= 0)
		json_object_object_add(o, "State", state_obj(shown_state));
	return o;
}

/* A kernel (aki-) or RAM disk (ari-) ID: the prefix, a dash and 8 or 17 lower-case hex
 * digits (EC2's short and long forms). 0, or -1 with InvalidParameterValue recorded. */
static int check_boot_id(struct api_req *r, const char *prefix, const char *what, const char *id)
{
	size_t pl = strlen(prefix), n = strlen(id);
	bool ok = n > pl + 1 && !strncmp(id, prefix, pl) && id[pl] == '-' &&
		  (n - pl - 1 == 8 || n - pl - 1 == 17);

	for (size_t i = pl + 1; ok && i < n; i++)
		ok = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
	if (!ok)
		return api_error(r, "InvalidParameterValue",
				 "Value (%.64s) for parameter %sId is invalid. Expected: '%s-...'.", id,
				 what, prefix);
	return 0;
}

int act_run_instances(struct api_req *r)
{
	static const char *const allowed[] = {
		"ImageId",	"InstanceType",	    "MinCount",	   "MaxCount",
		"BlockDeviceMappings", "UserData",  "KernelId",	   "RamdiskId",
		"Placement",	"KeyName",	    "SecurityGroupIds", "SecurityGroups",
		"SubnetId",	"TagSpecifications", "DryRun",	   "ClientToken",
		NULL};
	const char *image_id, *type = "m1.small", *ud = NULL, *kernel = NULL, *ramdisk = NULL;
	int64_t minc = 1, maxc = 1;
	json_object *img, *bdm, *req_bdm, *out;
	const struct itype *t;
	char resv[ID_MAX], az[40];

	if (params_allow(r, allowed) || param_str(r, "ImageId", true, &image_id) < 0 ||
	    param_str(r, "InstanceType", false, &type) < 0 ||
	    param_int(r, "MinCount", false, &minc) < 0 || param_int(r, "MaxCount", false, &maxc) < 0 ||
	    param_str(r, "UserData", false, &ud) < 0 ||
	    param_str(r, "KernelId", false, &kernel) < 0 ||
	    param_str(r, "RamdiskId", false, &ramdisk) < 0 ||
	    (kernel && check_boot_id(r, "aki", "kernel", kernel)) ||
	    (ramdisk && check_boot_id(r, "ari", "ramdisk", ramdisk)))
		return -1;
	type = type ? type : "m1.small";
	if (minc < 1 || maxc < minc || maxc > 20)
		return api_error(r, "InvalidParameterValue",
				 "MinCount and MaxCount must satisfy 1 <= MinCount <= MaxCount <= 20");
	if (ud && strlen(ud) > 16384)
		return api_error(r, "InvalidParameterValue", "User data is limited to 16384 bytes");
	json_object *pl = jget(r->params, "Placement");
	if (pl && !json_object_is_type(pl, json_type_object))
		return api_error(r, "InvalidParameterValue",
				 "Placement must be an object such as {\"AvailabilityZone\": \"%sa\"}",
				 r->region);
	snprintf(az, sizeof(az), "%sa", r->region);
	if (jstr(pl, "AvailabilityZone")[0]) {
		if (zone_check(r, jstr(pl, "AvailabilityZone")))
			return -1;
		snprintf(az, sizeof(az), "%s", jstr(pl, "AvailabilityZone"));
	}
	if (image_lookup(r, image_id, &img))
		return -1;
	t = itype_find(type);
	if (!t) {
		json_object_put(img);
		return api_error(r, "InvalidInstanceType", "The instance type '%.64s' does not exist",
				 type);
	}
	if (strcmp(jstr(img, "State"), "available")) {
		json_object_put(img);
		return api_error(r, "InvalidAMIID.Unavailable", "The image '%s' is not available",
				 image_id);
	}
	if (check_compat(r, t, img)) {
		json_object_put(img);
		return -1;
	}
	req_bdm = bdm_parse(r, jget(r->params, "BlockDeviceMappings"), false);
	if (!req_bdm || dry_run_check(r)) {
		json_object_put(req_bdm);
		json_object_put(img);
		return -1;
	}
	bdm = merge_bdm(jget(img, "BlockDeviceMappings"), req_bdm);
	json_object_put(req_bdm);
	id_new("r", resv);
	out = json_object_new_array();
	for (int64_t n = 0; n < maxc; n++) {
		json_object *inst = inst_build(r, img, t, bdm, resv, az, ud,
					       kernel ? kernel : jstr(img, "KernelId"),
					       ramdisk ? ramdisk : jstr(img, "RamdiskId"));
		if (!inst) {
			/* all or nothing: undo the instances this call made */
			for (size_t k = 0; k < json_object_array_length(out); k++) {
				json_object *done = NULL;
				const char *iid = jstr(json_object_array_get_idx(out, k), "InstanceId");
				if (cat_doc_get(r->d->cat, "instance", iid, &done) == 0) {
					inst_rollback(r->d, done);
					json_object_put(done);
				}
			}
			json_object_put(out);
			json_object_put(bdm);
			json_object_put(img);
			return -1;
		}
		json_object_array_add(out, inst_view(inst, ST_PENDING));
		json_object_put(inst);
	}
	json_object_put(bdm);
	json_object_put(img);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Groups", json_object_new_array());
	json_object_object_add(r->result, "Instances", out);
	json_object_object_add(r->result, "OwnerId", json_object_new_string(r->account));
	json_object_object_add(r->result, "ReservationId", json_object_new_string(resv));
	return 0;
}

/* ---- lookups --------------------------------------------------------------------------- */

static int inst_lookup(struct api_req *r, const char *id, json_object **out)
{
	json_object *inst = NULL;
	int ret;

	if (check_id(r, "i", "InvalidInstance", id))
		return -1;
	ret = cat_doc_get(r->d->cat, "instance", id, &inst);
	if (ret == -ENOENT || (!ret && (strcmp(jstr(inst, "OwnerId"), r->account) ||
					strcmp(jstr(inst, "_Region"), r->region)))) {
		json_object_put(inst);
		return api_error(r, "InvalidInstanceID.NotFound",
				 "The instance ID '%s' does not exist", id);
	}
	if (ret)
		return api_error(r, "InternalError", "catalog read failed");
	*out = inst;
	return 0;
}

/* InstanceIds as a list, each looked up; *out is an array of documents. */
static int inst_lookup_all(struct api_req *r, json_object **out)
{
	json_object *ids;

	if (param_str_list(r, "InstanceIds", &ids) < 0)
		return -1;
	if (!ids || !json_object_array_length(ids))
		return api_error(r, "MissingParameter",
				 "The request must contain the parameter InstanceIds");
	*out = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(ids); i++) {
		json_object *inst;
		if (inst_lookup(r, json_object_get_string(json_object_array_get_idx(ids, i)), &inst)) {
			json_object_put(*out);
			return -1;
		}
		json_object_array_add(*out, inst);
	}
	return 0;
}

static json_object *change(json_object *inst, int prev)
{
	json_object *c = json_object_new_object();

	json_object_object_add(c, "CurrentState", state_obj(state_code(inst)));
	json_object_object_add(c, "InstanceId", json_object_new_string(jstr(inst, "InstanceId")));
	json_object_object_add(c, "PreviousState", state_obj(prev));
	return c;
}

/* ---- stop / start / reboot / terminate ------------------------------------------------- */

int act_stop_instances(struct api_req *r)
{
	static const char *const allowed[] = {"InstanceIds", "Force", "Hibernate", "DryRun", NULL};
	json_object *all, *out;

	if (params_allow(r, allowed) || inst_lookup_all(r, &all))
		return -1;
	/* check every instance first: nothing changes unless all can stop */
	for (size_t i = 0; i < json_object_array_length(all); i++) {
		json_object *inst = json_object_array_get_idx(all, i);
		int st = state_code(inst);
		if (!ebs_backed(inst)) {
			api_error(r, "UnsupportedOperation",
				  "The instance '%s' does not have an 'ebs' root device type and "
				  "cannot be stopped.",
				  jstr(inst, "InstanceId"));
			goto out_err;
		}
		if (st == ST_TERMINATED || st == ST_SHUTTING_DOWN) {
			api_error(r, "IncorrectInstanceState",
				  "This instance '%s' is not in a state from which it can be stopped.",
				  jstr(inst, "InstanceId"));
			goto out_err;
		}
	}
	out = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(all); i++) {
		json_object *inst = json_object_array_get_idx(all, i);
		int prev = state_code(inst);
		if (prev == ST_RUNNING || prev == ST_PENDING) {
			inst_down(r->d, inst, true);
			set_state(inst, ST_STOPPED, "Client.UserInitiatedShutdown",
				  "Client.UserInitiatedShutdown: User initiated shutdown");
			inst_save(r->d, inst);
			log_info("stopped %s", jstr(inst, "InstanceId"));
		}
		json_object *c = change(inst, prev);
		if (prev == ST_RUNNING)
			json_object_object_add(c, "CurrentState", state_obj(ST_STOPPING));
		json_object_array_add(out, c);
	}
	json_object_put(all);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "StoppingInstances", out);
	return 0;
out_err:
	json_object_put(all);
	return -1;
}

int act_start_instances(struct api_req *r)
{
	static const char *const allowed[] = {"InstanceIds", "AdditionalInfo", "DryRun", NULL};
	json_object *all, *out;

	if (params_allow(r, allowed) || inst_lookup_all(r, &all))
		return -1;
	for (size_t i = 0; i < json_object_array_length(all); i++) {
		json_object *inst = json_object_array_get_idx(all, i);
		int st = state_code(inst);
		if (st != ST_STOPPED && st != ST_RUNNING) {
			api_error(r, "IncorrectInstanceState",
				  "The instance '%s' is not in a state from which it can be started.",
				  jstr(inst, "InstanceId"));
			json_object_put(all);
			return -1;
		}
	}
	out = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(all); i++) {
		json_object *inst = json_object_array_get_idx(all, i);
		int prev = state_code(inst), ret;
		if (prev == ST_STOPPED) {
			/* the instance type may have changed while stopped: re-plan the store (its
			 * count and size follow the new type) */
			const struct itype *t = itype_find(jstr(inst, "InstanceType"));
			if (t)
				store_plan(r->d, inst, t);
			ret = inst_up(r->d, inst);
			if (ret) {
				api_error(r, "InternalError", "cannot start %s: %s",
					  jstr(inst, "InstanceId"), strerror(-ret));
				json_object_put(out);
				json_object_put(all);
				return -1;
			}
			set_state(inst, ST_RUNNING, NULL, NULL);
			json_object_object_del(inst, "StateReason");
			json_object_object_add(inst, "StateTransitionReason", json_object_new_string(""));
			inst_save(r->d, inst);
			log_info("started %s", jstr(inst, "InstanceId"));
		}
		json_object *c = change(inst, prev);
		if (prev == ST_STOPPED)
			json_object_object_add(c, "CurrentState", state_obj(ST_PENDING));
		json_object_array_add(out, c);
	}
	json_object_put(all);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "StartingInstances", out);
	return 0;
}

int act_reboot_instances(struct api_req *r)
{
	static const char *const allowed[] = {"InstanceIds", "DryRun", NULL};
	json_object *all;

	if (params_allow(r, allowed) || inst_lookup_all(r, &all))
		return -1;
	for (size_t i = 0; i < json_object_array_length(all); i++) {
		json_object *inst = json_object_array_get_idx(all, i);
		if (state_code(inst) != ST_RUNNING) {
			api_error(r, "IncorrectInstanceState", "The instance '%s' is not running.",
				  jstr(inst, "InstanceId"));
			json_object_put(all);
			return -1;
		}
	}
	for (size_t i = 0; i < json_object_array_length(all); i++) {
		json_object *inst = json_object_array_get_idx(all, i);
		/* the OS restarts: file systems are unmounted and mounted again; every device,
		 * instance store included, stays */
		root_unmount(r->d, jstr(inst, "InstanceId"));
		json_object_object_del(inst, "RootMount");
		root_mount(r->d, inst);
		inst_save(r->d, inst);
		log_info("rebooted %s", jstr(inst, "InstanceId"));
	}
	json_object_put(all);
	r->result = json_object_new_object();
	return 0;
}

/* Terminate one instance (any state but terminated). */
/* Let go of a terminated instance's EBS volumes: delete those with DeleteOnTermination,
 * detach the others. Idempotent: instances_recover repeats it after a crash. */
static void inst_release(struct daemon *d, json_object *inst)
{
	json_object *bdm = jget(inst, "BlockDeviceMappings");

	for (size_t i = 0; bdm && i < json_object_array_length(bdm); i++) {
		json_object *e = jget(json_object_array_get_idx(bdm, i), "Ebs");
		const char *vol = jstr(e, "VolumeId");
		if (json_object_get_boolean(jget(e, "DeleteOnTermination")))
			volume_drop(d, vol);
		else
			attach_forget(d, vol);
	}
	json_object_object_add(inst, "BlockDeviceMappings", json_object_new_array());
	json_object_object_del(inst, "_Releasing");
	inst_save(d, inst);
	file_remove_tree(d->inst_fd, jstr(inst, "InstanceId"));
}

/* Crash protocol: the terminated state is committed (with _Releasing and the mappings)
 * before any volume is deleted, so a kill -9 in between leaves an instance that
 * instances_recover finishes, never a "stopped" one whose root volume is gone. */
static void inst_terminate(struct daemon *d, json_object *inst, const char *code,
			   const char *reason)
{
	char when[32];

	inst_down(d, inst, true);
	set_state(inst, ST_TERMINATED, code, reason);
	snprintf(when, sizeof(when), "%lld", (long long)time(NULL));
	json_object_object_add(inst, "_TerminatedAt", json_object_new_string(when));
	json_object_object_add(inst, "_Releasing", json_object_new_boolean(true));
	inst_save(d, inst);
	inst_release(d, inst);
	log_info("terminated %s", jstr(inst, "InstanceId"));
}

int act_terminate_instances(struct api_req *r)
{
	static const char *const allowed[] = {"InstanceIds", "DryRun", NULL};
	json_object *all, *out;

	if (params_allow(r, allowed) || inst_lookup_all(r, &all))
		return -1;
	out = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(all); i++) {
		json_object *inst = json_object_array_get_idx(all, i);
		int prev = state_code(inst);
		if (prev != ST_TERMINATED)
			inst_terminate(r->d, inst, "Client.UserInitiatedShutdown",
				       "Client.UserInitiatedShutdown: User initiated shutdown");
		json_object *c = change(inst, prev);
		if (prev != ST_TERMINATED)
			json_object_object_add(c, "CurrentState", state_obj(ST_SHUTTING_DOWN));
		json_object_array_add(out, c);
	}
	json_object_put(all);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "TerminatingInstances", out);
	return 0;
}

/* ---- describe -------------------------------------------------------------------------- */

struct dinst_ctx {
	struct api_req *r;
	json_object *ids, *filters;
	json_object *all; /* [{InstanceId, ReservationId, Instance}] in catalog order */
	bool *seen;
};

static const struct filter_map inst_filters[] = {
	{"instance-id", "InstanceId"},
	{"instance-state-name", "StateName"},
	{"instance-state-code", "StateCode"},
	{"instance-type", "InstanceType"},
	{"image-id", "ImageId"},
	{"architecture", "Architecture"},
	{"root-device-type", "RootDeviceType"},
	{"root-device-name", "RootDeviceName"},
	{"virtualization-type", "VirtualizationType"},
	{"availability-zone", "AvailabilityZone"},
	{"reservation-id", "ReservationId"},
	{NULL, NULL},
};

static int describe_inst_one(void *arg, const char *id, const char *account, json_object *inst)
{
	struct dinst_ctx *c = arg;
	json_object *flat, *res;
	const char *rid = jstr(inst, "_ReservationId");
	bool match;

	if (strcmp(account, c->r->account))
		return 0;
	if (state_code(inst) == ST_TERMINATED &&
	    time(NULL) - atoll(jstr(inst, "_TerminatedAt")) > TERMINATED_VISIBLE_S) {
		cat_doc_delete(c->r->d->cat, "instance", id);
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
	flat = json_object_new_object();
	json_object_object_add(flat, "InstanceId", json_object_new_string(id));
	json_object_object_add(flat, "StateName",
			       json_object_get(jget(jget(inst, "State"), "Name")));
	json_object_object_add(flat, "StateCode",
			       json_object_get(jget(jget(inst, "State"), "Code")));
	json_object_object_add(flat, "AvailabilityZone",
			       json_object_get(jget(jget(inst, "Placement"), "AvailabilityZone")));
	json_object_object_add(flat, "ReservationId", json_object_new_string(rid));
	static const char *const copy[] = {"InstanceType", "ImageId", "Architecture",
					   "RootDeviceType", "RootDeviceName",
					   "VirtualizationType"};
	for (size_t i = 0; i < ARRAY_SIZE(copy); i++)
		json_object_object_add(flat, copy[i], json_object_get(jget(inst, copy[i])));
	match = filters_match(c->filters, inst_filters, flat);
	json_object_put(flat);
	if (!match)
		return 0;
	/* a flat list first: pages hold instances, grouped into reservations afterwards */
	res = json_object_new_object();
	json_object_object_add(res, "InstanceId", json_object_new_string(id));
	json_object_object_add(res, "ReservationId", json_object_new_string(rid));
	json_object_object_add(res, "Instance", inst_view(inst, -1));
	json_object_array_add(c->all, res);
	return 0;
}

int act_describe_instances(struct api_req *r)
{
	static const char *const allowed[] = {"InstanceIds", "Filters", "MaxResults", "NextToken",
					      "DryRun", NULL};
	struct dinst_ctx c = {.r = r};
	size_t nids;
	int ret;

	if (params_allow(r, allowed) || param_str_list(r, "InstanceIds", &c.ids) < 0 ||
	    filters_parse(r, inst_filters, &c.filters))
		return -1;
	nids = c.ids ? json_object_array_length(c.ids) : 0;
	for (size_t i = 0; i < nids; i++)
		if (check_id(r, "i", "InvalidInstance",
			     json_object_get_string(json_object_array_get_idx(c.ids, i))))
			return -1;
	/* EC2: "You cannot specify this parameter and the instance IDs parameter in the same
	 * request." */
	if (nids && jget(r->params, "MaxResults"))
		return api_error(r, "InvalidParameterCombination",
				 "The parameter instancesSet cannot be used with the parameter "
				 "maxResults");
	c.seen = calloc(nids + 1, sizeof(bool));
	c.all = json_object_new_array();
	ret = cat_doc_each(r->d->cat, "instance", r->region, describe_inst_one, &c);
	for (size_t i = 0; !ret && i < nids; i++)
		if (!c.seen[i])
			ret = api_error(r, "InvalidInstanceID.NotFound",
					"The instance ID '%s' does not exist",
					json_object_get_string(json_object_array_get_idx(c.ids, i)));
	free(c.seen);
	if (ret) {
		json_object_put(c.all);
		return r->code[0] ? -1 : api_error(r, "InternalError", "catalog read failed");
	}
	json_object *page, *next, *resv = json_object_new_object(), *list = json_object_new_array();
	if (paginate(r, c.all, "InstanceId", 5, 1000, &page, &next)) {
		json_object_put(resv);
		json_object_put(list);
		return -1;
	}
	for (size_t i = 0; i < json_object_array_length(page); i++) {
		json_object *it = json_object_array_get_idx(page, i);
		const char *rid = jstr(it, "ReservationId");
		json_object *res = jget(resv, rid);
		if (!res) {
			res = json_object_new_object();
			json_object_object_add(res, "Groups", json_object_new_array());
			json_object_object_add(res, "Instances", json_object_new_array());
			json_object_object_add(res, "OwnerId", json_object_new_string(r->account));
			json_object_object_add(res, "ReservationId", json_object_new_string(rid));
			json_object_object_add(resv, rid, res);
			json_object_array_add(list, json_object_get(res));
		}
		json_object_array_add(jget(res, "Instances"), json_object_get(jget(it, "Instance")));
	}
	json_object_put(page);
	json_object_put(resv);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Reservations", list);
	if (next)
		json_object_object_add(r->result, "NextToken", next);
	return 0;
}

/* ---- modify-instance-attribute --------------------------------------------------------- */

/* An attribute value given as a string or as {"Value": "..."} (awscli's shape). */
static int attr_value(struct api_req *r, const char *name, const char **out)
{
	json_object *v = jget(r->params, name);

	*out = NULL;
	if (!v)
		return 0;
	if (json_object_is_type(v, json_type_object))
		v = jget(v, "Value");
	if (!v || !json_object_is_type(v, json_type_string))
		return api_error(r, "InvalidParameterValue",
				 "%s must be a string or {\"Value\": \"...\"}", name);
	*out = json_object_get_string(v);
	return 1;
}

int act_modify_instance_attribute(struct api_req *r)
{
	static const char *const allowed[] = {"InstanceId", "InstanceType", "UserData", "Kernel",
					      "Ramdisk", "Attribute", "Value", "DryRun", NULL};
	const char *id, *type = NULL, *ud = NULL, *kernel = NULL, *ramdisk = NULL, *attr = NULL,
			*value = NULL;
	json_object *inst, *img = NULL;
	int n = 0;

	if (params_allow(r, allowed) || param_str(r, "InstanceId", true, &id) < 0 ||
	    attr_value(r, "InstanceType", &type) < 0 || attr_value(r, "UserData", &ud) < 0 ||
	    attr_value(r, "Kernel", &kernel) < 0 || attr_value(r, "Ramdisk", &ramdisk) < 0 ||
	    param_str(r, "Attribute", false, &attr) < 0 || param_str(r, "Value", false, &value) < 0)
		return -1;
	if (attr) {
		if (!value)
			return api_error(r, "MissingParameter", "The request must contain the parameter Value");
		if (!strcmp(attr, "instanceType"))
			type = value;
		else if (!strcmp(attr, "userData"))
			ud = value;
		else if (!strcmp(attr, "kernel"))
			kernel = value;
		else if (!strcmp(attr, "ramdisk"))
			ramdisk = value;
		else
			return api_error(r, "InvalidParameterValue",
					 "Value (%.32s) for parameter attribute is invalid.", attr);
	}
	n = !!type + !!ud + !!kernel + !!ramdisk;
	if (n != 1)
		return api_error(r, "InvalidParameterCombination",
				 "Exactly one attribute may be modified per request.");
	if (inst_lookup(r, id, &inst))
		return -1;
	if (!ebs_backed(inst)) {
		json_object_put(inst);
		return api_error(r, "UnsupportedOperation",
				 "The instance '%s' has an instance-store root: its attributes are "
				 "fixed for its life.",
				 id);
	}
	if (state_code(inst) != ST_STOPPED) {
		json_object_put(inst);
		return api_error(r, "IncorrectInstanceState",
				 "The instance '%s' is not in the 'stopped' state.", id);
	}
	if (type) {
		const struct itype *t = itype_find(type);
		if (!t) {
			json_object_put(inst);
			return api_error(r, "InvalidInstanceType",
					 "The instance type '%.64s' does not exist", type);
		}
		if (cat_doc_get(r->d->cat, "image", jstr(inst, "ImageId"), &img) == 0 &&
		    check_compat(r, t, img)) {
			json_object_put(img);
			json_object_put(inst);
			return -1;
		}
		json_object_put(img);
		json_object_object_add(inst, "InstanceType", json_object_new_string(type));
	}
	if (ud) {
		if (strlen(ud) > 16384) {
			json_object_put(inst);
			return api_error(r, "InvalidParameterValue", "User data is limited to 16384 bytes");
		}
		json_object_object_add(inst, "_UserData", json_object_new_string(ud));
	}
	if ((kernel && check_boot_id(r, "aki", "kernel", kernel)) ||
	    (ramdisk && check_boot_id(r, "ari", "ramdisk", ramdisk))) {
		json_object_put(inst);
		return -1;
	}
	if (kernel)
		json_object_object_add(inst, "KernelId", json_object_new_string(kernel));
	if (ramdisk)
		json_object_object_add(inst, "RamdiskId", json_object_new_string(ramdisk));
	inst_save(r->d, inst);
	json_object_put(inst);
	r->result = json_object_new_object();
	return 0;
}

/* ---- attach / detach ------------------------------------------------------------------- */

int act_attach_volume(struct api_req *r)
{
	static const char *const allowed[] = {"VolumeId", "InstanceId", "Device", "DryRun", NULL};
	const char *vid, *iid, *dev;
	struct cat_volume v;
	json_object *inst, *bdm, *a;
	int st;

	if (params_allow(r, allowed) || param_str(r, "VolumeId", true, &vid) < 0 ||
	    param_str(r, "InstanceId", true, &iid) < 0 || param_str(r, "Device", true, &dev) < 0 ||
	    volume_lookup(r, vid, &v))
		return -1;
	if (inst_lookup(r, iid, &inst))
		return -1;
	st = state_code(inst);
	if (st != ST_RUNNING && st != ST_STOPPED) {
		json_object_put(inst);
		return api_error(r, "IncorrectInstanceState",
				 "Instance '%s' is not 'running' or 'stopped'.", iid);
	}
	if (strcmp(v.state, "available") || volfs_open_count(r->d->fs, vid) > 0) {
		json_object_put(inst);
		return api_error(r, "VolumeInUse", "%s is already attached or in use.", vid);
	}
	if (strcmp(v.az, jstr(jget(inst, "Placement"), "AvailabilityZone"))) {
		json_object_put(inst);
		return api_error(r, "InvalidVolume.ZoneMismatch",
				 "The volume '%s' is not in the same availability zone as instance "
				 "'%s'",
				 vid, iid);
	}
	bdm = jget(inst, "BlockDeviceMappings");
	bool taken = false;
	for (size_t i = 0; i < json_object_array_length(bdm); i++)
		taken |= !strcmp(device_basename(jstr(json_object_array_get_idx(bdm, i), "DeviceName")),
				 device_basename(dev));
	json_object *eph = jget(inst, "_Ephemeral");
	for (size_t i = 0; eph && i < json_object_array_length(eph); i++)
		taken |= !strcmp(device_basename(jstr(json_object_array_get_idx(eph, i), "DeviceName")),
				 device_basename(dev));
	if (taken || !strncmp(device_basename(dev), "..", 2) || strchr(device_basename(dev), '/') ||
	    strlen(dev) > 32 || strlen(device_basename(dev)) < 3) {
		json_object_put(inst);
		return api_error(r, "InvalidParameterValue",
				 "Invalid value '%.32s' for unixDevice. Attachment point %.32s is "
				 "already in use",
				 dev, dev);
	}
	if (st == ST_RUNNING) {
		int ret = dev_attach(r->d, inst, dev, vid);
		if (ret) {
			json_object_put(inst);
			return api_error(r, "InternalError", "cannot attach %s: %s", vid, strerror(-ret));
		}
	}
	json_object *m = json_object_new_object(), *e = json_object_new_object();
	char now[32];
	time_iso8601(now);
	json_object_object_add(m, "DeviceName", json_object_new_string(dev));
	json_object_object_add(e, "AttachTime", json_object_new_string(now));
	json_object_object_add(e, "DeleteOnTermination", json_object_new_boolean(false));
	json_object_object_add(e, "Status", json_object_new_string("attached"));
	json_object_object_add(e, "VolumeId", json_object_new_string(vid));
	json_object_object_add(m, "Ebs", e);
	json_object_array_add(bdm, m);
	attach_record(r->d, vid, iid, dev, false, r->region, r->account);
	inst_save(r->d, inst);
	json_object_put(inst);
	a = json_object_new_object();
	json_object_object_add(a, "AttachTime", json_object_new_string(now));
	json_object_object_add(a, "Device", json_object_new_string(dev));
	json_object_object_add(a, "InstanceId", json_object_new_string(iid));
	json_object_object_add(a, "State", json_object_new_string("attaching"));
	json_object_object_add(a, "VolumeId", json_object_new_string(vid));
	r->result = a;
	return 0;
}

int act_detach_volume(struct api_req *r)
{
	static const char *const allowed[] = {"VolumeId", "InstanceId", "Device", "Force",
					      "DryRun", NULL};
	const char *vid, *iid = NULL, *dev = NULL;
	struct cat_volume v;
	json_object *att = NULL, *inst, *bdm;
	char device[64];

	if (params_allow(r, allowed) || param_str(r, "VolumeId", true, &vid) < 0 ||
	    param_str(r, "InstanceId", false, &iid) < 0 || param_str(r, "Device", false, &dev) < 0 ||
	    volume_lookup(r, vid, &v))
		return -1;
	if (cat_doc_get(r->d->cat, "attachment", vid, &att))
		return api_error(r, "IncorrectState", "Volume '%s' is in the '%s' state.", vid,
				 v.state);
	if (iid && strcmp(iid, jstr(att, "InstanceId"))) {
		json_object_put(att);
		return api_error(r, "InvalidAttachment.NotFound",
				 "The volume %s is not attached to instance %s", vid, iid);
	}
	if (dev && strcmp(device_basename(dev), device_basename(jstr(att, "Device")))) {
		api_error(r, "InvalidAttachment.NotFound",
			  "The volume %s is not attached to instance %s at device %.32s", vid,
			  jstr(att, "InstanceId"), dev);
		json_object_put(att);
		return -1;
	}
	if (inst_lookup(r, jstr(att, "InstanceId"), &inst)) {
		json_object_put(att);
		return -1;
	}
	snprintf(device, sizeof(device), "%s", jstr(att, "Device"));
	if (!strcmp(device_basename(device), device_basename(jstr(inst, "RootDeviceName"))) &&
	    state_code(inst) != ST_STOPPED) {
		json_object_put(att);
		json_object_put(inst);
		return api_error(r, "IncorrectState",
				 "Unable to detach root volume '%s' from instance '%s' while it is "
				 "not stopped",
				 vid, jstr(att, "InstanceId"));
	}
	if (jget(jget(inst, "LocalDevices"), device))
		dev_detach(r->d, inst, device);
	struct dvol *dv = dvol_find(r->d, vid);
	if (dv)
		vol_fsync(dv->vol);
	bdm = jget(inst, "BlockDeviceMappings");
	for (size_t i = 0; i < json_object_array_length(bdm); i++)
		if (!strcmp(jstr(jget(json_object_array_get_idx(bdm, i), "Ebs"), "VolumeId"), vid)) {
			json_object_array_del_idx(bdm, i, 1);
			break;
		}
	inst_save(r->d, inst);
	attach_forget(r->d, vid);
	json_object_object_add(att, "State", json_object_new_string("detaching"));
	json_object_put(inst);
	r->result = att;
	return 0;
}

/* ---- the host goes away: daemon start-up and shutdown ---------------------------------- */

static void host_lost(struct daemon *d, json_object *inst, const char *why)
{
	const char *id = jstr(inst, "InstanceId");
	json_object *eph = jget(inst, "_Ephemeral");

	/* devices of the previous daemon: detach only loops still backed by our files */
	inst_down(d, inst, false);
	for (size_t i = 0; eph && i < json_object_array_length(eph); i++)
		eph_destroy(d, jstr(json_object_array_get_idx(eph, i), "Name"));
	if (ebs_backed(inst)) {
		set_state(inst, ST_STOPPED, "Server.InternalError", why);
		inst_save(d, inst);
		log_warn("%s: %s; it is stopped (its instance store is gone)", id, why);
	} else {
		inst_terminate(d, inst, "Server.InternalError", why);
		log_warn("%s: %s; an instance-store-backed instance cannot survive it: terminated",
			 id, why);
	}
}

static int recover_one(void *arg, const char *id, const char *account, json_object *inst)
{
	struct daemon *d = arg;
	int st = state_code(inst);

	(void)id;
	(void)account;
	if (st == ST_TERMINATED && jget(inst, "_Releasing")) {
		log_warn("%s: terminated while the daemon stopped; releasing its volumes", id);
		inst_release(d, inst);
	} else if (st != ST_STOPPED && st != ST_TERMINATED)
		host_lost(d, inst,
			  "Server.InternalError: the host (ebsimd) restarted while the instance "
			  "ran; its instance store was lost");
	return 0;
}

int instances_recover(struct daemon *d)
{
	int ret = cat_doc_each(d->cat, "instance", NULL, recover_one, d);

	/* instance store left by a crash: its key died with the daemon; remove the files */
	DIR *dir = fdopendir(dup(d->eph_fd));
	struct dirent *de;
	while (dir && (de = readdir(dir))) {
		if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
			continue;
		file_remove_tree(d->eph_fd, de->d_name);
	}
	if (dir)
		closedir(dir);
	return ret;
}

static int shutdown_one(void *arg, const char *id, const char *account, json_object *inst)
{
	(void)id;
	(void)account;
	if (state_code(inst) == ST_RUNNING || state_code(inst) == ST_PENDING)
		host_lost(arg, inst,
			  "Server.InternalError: the host (ebsimd) shut down while the instance "
			  "ran; its instance store was lost");
	return 0;
}

void instances_shutdown(struct daemon *d)
{
	pthread_mutex_lock(&d->lock);
	cat_doc_each(d->cat, "instance", NULL, shutdown_one, d);
	pthread_mutex_unlock(&d->lock);
}
