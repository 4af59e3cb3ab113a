/* SPDX-License-Identifier: MIT */
/*
 * base.c - the base AMIs every home offers: a small real root file system (BusyBox on
 * ext4) registered as two public images owned by EBSIM_AMAZON_ACCOUNT (alias "amazon"),
 * one HVM and one paravirtual; and the BuildBaseImages action that rebuilds them.
 *
 * Design notes
 * ------------
 * The image file. Built from Debian's busybox-static (/bin/busybox): a temporary tree with
 * /bin/busybox and one symlink per applet (`busybox --list`, each -> busybox), /sbin/init
 * (a shell script: mount proc and sys, print a banner, run a shell on the console or
 * sleep), /etc/{fstab,hostname,os-release}, /boot/grub/menu.lst (a PV-GRUB entry) and the
 * usual empty directories, turned into ext4 by `mkfs.ext4 -d TREE` on a sparse file of
 * BASE_SIZE_GIB. It is built once per host and cached as
 *   <cache>/base-busybox-<version>-f<BASE_FORMAT>.ext4    (default cache /var/cache/ebsim)
 * keyed by the BusyBox version (read from the binary) and BASE_FORMAT, which changes
 * whenever this file changes what goes into the tree. It is written under a temporary
 * name, fsynced and renamed into place, so a crash never leaves a half-made cache file.
 *
 * The import. Snapshots of unencrypted volumes store a chunk's plaintext as its object, so
 * an image file becomes a snapshot without a volume: each non-zero 64 KiB chunk of the
 * file (only its data extents are read, SEEK_DATA/SEEK_HOLE) is put in the region's chunk
 * store, store_sync makes them durable, then the manifest is written (volume id
 * vol-fffffffffffffffff, as EC2 shows for imported snapshots), then the catalog row,
 * 'completed'. The same order as a snapshot job: a crash leaves at worst objects no
 * manifest references, which GC removes. Both images share the one snapshot.
 *
 * When. "A fresh home offers the base AMIs with no extra step": start-up builds the cache
 * file if it is missing and imports into the default region; any other region imports on
 * its first request (base_ensure, called from api_dispatch under d->lock). Measured on the
 * shared 2-core CI host (3 runs each): start-up with --no-base-images 70-110 ms; with a
 * cached image file 170-215 ms (the import, 49 chunks and their fsyncs, is 105-135 ms);
 * with an empty cache 0.7-1.3 s (mkfs.ext4 -d alone 0.4-0.45 s), once per host. Both
 * steps stay synchronous: the daemon remains ready-on-return and the images are
 * 'available' from the first request, where a background job with 'pending' images would
 * make the first launch wait or fail (InvalidAMIID.Unavailable) for about as long.
 * `ebsimd --no-base-images` skips all of it (the test fixtures use it). Whether a region
 * has its images is read from the catalog (images owned by the amazon account with the
 * current names); d->base_ready caches the answer per region for the daemon's life.
 *
 * BuildBaseImages rebuilds the cache file, then in the request's region deregisters every
 * base image, deletes their snapshots that no volume was created from, and imports and
 * registers afresh. A volume restored from an old snapshot keeps reading it: GC keeps the
 * manifest of any snapshot still in the catalog or still read by a served volume.
 */
#include "common/ctl_proto.h"
#include "daemon/daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BASE_FORMAT 2
#define BASE_SIZE_GIB 1
#define BASE_BUSYBOX "/bin/busybox"
#define BASE_NAME_PREFIX "ebsim-base-"
#define BASE_IMPORT_VOLUME "vol-fffffffffffffffff"
/* PV-GRUB (hd0) for x86_64, the kernel EC2's paravirtual AMIs name */
#define BASE_PV_KERNEL "aki-919dcaf8"

extern char **environ;

/* Run argv (no shell); stdout into out (NUL-terminated, may be NULL), stderr to the log.
 * 0 when it exits 0, else -EIO (or -errno when it cannot start). */
static int run_cmd(char *const argv[], char *out, size_t cap)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none;
	int pfd[2], st, ret;
	size_t len = 0;
	pid_t pid;

	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
	ret = -posix_spawn(&pid, argv[0], &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(pfd[1]);
	if (ret) {
		close(pfd[0]);
		log_err("cannot run %s: %s", argv[0], strerror(-ret));
		return ret;
	}
	for (;;) {
		char sink[4096];
		char *dst = out && len + 1 < cap ? out + len : sink;
		size_t room = out && len + 1 < cap ? cap - 1 - len : sizeof(sink);
		ssize_t n = read(pfd[0], dst, room);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (dst != sink)
			len += (size_t)n;
	}
	close(pfd[0]);
	if (out)
		out[len] = 0;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		log_err("%s failed (status %d)", argv[0], st);
		return -EIO;
	}
	return 0;
}

/* "1.35.0" from the "BusyBox v1.35.0 (" string inside the binary. */
static int busybox_version(const void *bin, size_t len, char ver[32])
{
	const char *p = memmem(bin, len, "BusyBox v", 9);
	size_t n = 0;

	if (!p)
		return -ENOENT;
	p += 9;
	while (n < 31 && p + n < (const char *)bin + len &&
	       (p[n] == '.' || (p[n] >= '0' && p[n] <= '9')))
		n++;
	if (!n)
		return -ENOENT;
	memcpy(ver, p, n);
	ver[n] = 0;
	return 0;
}

static int put_file(int dirfd, const char *name, const char *text, mode_t mode)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	int ret;

	if (fd < 0)
		return -errno;
	ret = file_write_full(fd, text, strlen(text));
	if (!ret && fchmod(fd, mode) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

/* Fill the tree at dirfd: directories, busybox and its applets, init and /etc. */
static int tree_fill(int dirfd, const void *bin, size_t binlen, const char *ver)
{
	static const struct {
		const char *path;
		mode_t mode;
	} dirs[] = {
	    {"bin", 0755},	 {"sbin", 0755},    {"etc", 0755},	{"boot", 0755},
	    {"boot/grub", 0755}, {"dev", 0755},	    {"proc", 0555},	{"sys", 0555},
	    {"tmp", 01777},	 {"root", 0700},    {"home", 0755},	{"mnt", 0755},
	    {"run", 0755},	 {"var", 0755},	    {"var/log", 0755},	{"var/tmp", 01777},
	    {"usr", 0755},	 {"usr/bin", 0755}, {"usr/sbin", 0755},
	};
	static const char init[] =
	    "#!/bin/busybox sh\n"
	    "# ebsim base image: the first process of the instance\n"
	    "export PATH=/bin:/sbin:/usr/bin:/usr/sbin\n"
	    "mount -t proc proc /proc\n"
	    "mount -t sysfs sysfs /sys\n"
	    "mount -o remount,rw / 2>/dev/null\n"
	    "hostname -F /etc/hostname\n"
	    ". /etc/os-release\n"
	    "echo \"Welcome to $PRETTY_NAME ($(uname -m))\"\n"
	    "if [ -c /dev/console ]; then exec sh </dev/console >/dev/console 2>&1; fi\n"
	    "while :; do sleep 3600; done\n";
	static const char fstab[] = "# <file system> <mount point> <type> <options> <dump> <pass>\n"
				    "LABEL=ebsim-root / ext4 defaults 0 1\n"
				    "proc /proc proc defaults 0 0\n"
				    "sysfs /sys sysfs defaults 0 0\n";
	static const char menu[] =
	    "# PV-GRUB reads this file (hd0 kernel: the root file system is the whole disk)\n"
	    "default 0\n"
	    "timeout 0\n\n"
	    "title ebsim base (BusyBox)\n"
	    "    root (hd0)\n"
	    "    kernel /boot/vmlinuz root=LABEL=ebsim-root console=hvc0 init=/sbin/init ro\n";
	char text[1024], list[16384];
	int fd, ret = 0;

	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		if (mkdirat(dirfd, dirs[i].path, dirs[i].mode) < 0 ||
		    fchmodat(dirfd, dirs[i].path, dirs[i].mode, 0) < 0)
			return -errno;
	}
	fd = openat(dirfd, "bin/busybox", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
	if (fd < 0)
		return -errno;
	ret = file_write_full(fd, bin, binlen);
	if (!ret && fchmod(fd, 0755) < 0) /* the daemon's umask is 077 */
		ret = -errno;
	close(fd);
	if (ret)
		return ret;
	char *argv[] = {BASE_BUSYBOX, "--list", NULL};
	ret = run_cmd(argv, list, sizeof(list));
	if (ret)
		return ret;
	for (char *save = NULL, *a = strtok_r(list, "\n", &save); a;
	     a = strtok_r(NULL, "\n", &save)) {
		char link[300];
		if (!a[0] || strchr(a, '/') || !strcmp(a, "busybox") || strlen(a) > 64)
			continue;
		snprintf(link, sizeof(link), "bin/%s", a);
		if (symlinkat("busybox", dirfd, link) < 0 && errno != EEXIST)
			return -errno;
	}
	ret = put_file(dirfd, "sbin/init", init, 0755);
	if (!ret)
		ret = put_file(dirfd, "etc/fstab", fstab, 0644);
	if (!ret)
		ret = put_file(dirfd, "etc/hostname", "ebsim-base\n", 0644);
	snprintf(text, sizeof(text),
		 "PRETTY_NAME=\"ebsim base (BusyBox %s)\"\n"
		 "NAME=\"ebsim-base\"\n"
		 "ID=ebsim-base\n"
		 "VERSION_ID=\"%d\"\n"
		 "VERSION=\"%d (BusyBox %s)\"\n"
		 "HOME_URL=\"https://github.com/ebsim/ebsim\"\n",
		 ver, BASE_FORMAT, BASE_FORMAT, ver);
	if (!ret)
		ret = put_file(dirfd, "etc/os-release", text, 0644);
	if (!ret)
		ret = put_file(dirfd, "boot/grub/menu.lst", menu, 0644);
	if (!ret)
		ret = put_file(dirfd, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0644);
	if (!ret)
		ret = put_file(dirfd, "etc/group", "root:x:0:\n", 0644);
	return ret;
}

static void cache_name(const char *ver, char *out, size_t cap)
{
	snprintf(out, cap, "base-busybox-%s-f%d.ext4", ver, BASE_FORMAT);
}

/* Build the image file into the cache (replacing it atomically). 0 or -errno. */
static int base_build(struct daemon *d)
{
	char tree[4300], tmp[4300], final[4300], name[128];
	void *bin = NULL;
	size_t binlen;
	uint64_t t0 = time_mono_ns();
	int tfd = -1, fd = -1, ret;

	ret = file_read_all(AT_FDCWD, BASE_BUSYBOX, &bin, &binlen);
	if (ret) {
		log_err("base images: cannot read %s (install busybox-static): %s", BASE_BUSYBOX,
			strerror(-ret));
		return ret;
	}
	if (busybox_version(bin, binlen, d->base_version)) {
		log_err("base images: %s does not name its version", BASE_BUSYBOX);
		free(bin);
		return -ENOENT;
	}
	cache_name(d->base_version, name, sizeof(name));
	snprintf(tree, sizeof(tree), "%s/tree.XXXXXX", d->cache_dir);
	if (!mkdtemp(tree)) {
		ret = -errno;
		log_err("base images: cannot make a directory in %s: %s", d->cache_dir,
			strerror(-ret));
		free(bin);
		return ret;
	}
	chmod(tree, 0755);
	tfd = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ret = tfd < 0 ? -errno : tree_fill(tfd, bin, binlen, d->base_version);
	free(bin);
	if (ret) {
		log_err("base images: cannot lay out the tree in %s: %s", tree, strerror(-ret));
		goto out_tree;
	}
	snprintf(tmp, sizeof(tmp), "%s/%s.XXXXXX", d->cache_dir, name);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)BASE_SIZE_GIB << 30) < 0) {
		ret = -errno;
		goto out_tmp;
	}
	/* clang-format off */
	char *argv[] = {"/sbin/mkfs.ext4", "-q", "-F", "-L", "ebsim-root", "-b", "4096", "-E",
			"lazy_itable_init=1,lazy_journal_init=1,nodiscard", "-d", tree, tmp, NULL};
	/* clang-format on */
	ret = run_cmd(argv, NULL, 0);
	if (!ret && (fsync(fd) < 0 || fchmod(fd, 0644) < 0))
		ret = -errno;
	snprintf(final, sizeof(final), "%s/%s", d->cache_dir, name);
	if (!ret && rename(tmp, final) < 0)
		ret = -errno;
	if (!ret) {
		int dfd = open(d->cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
		log_info("base images: built %s in %.0f ms", final,
			 (double)(time_mono_ns() - t0) / 1e6);
	} else {
		log_err("base images: cannot build %s: %s", final, strerror(-ret));
	}
out_tmp:
	if (fd >= 0)
		close(fd);
	if (ret)
		unlink(tmp);
out_tree:
	if (tfd >= 0)
		close(tfd);
	file_remove_tree(AT_FDCWD, tree);
	return ret;
}

/* Make sure the cache file exists (build it when missing or when force). */
static int base_cache(struct daemon *d, bool force)
{
	char path[4300], name[128];
	void *bin;
	size_t len;
	int ret;

	if (mkdir(d->cache_dir, 0755) < 0 && errno != EEXIST) {
		log_err("base images: cannot create %s: %s", d->cache_dir, strerror(errno));
		return -errno;
	}
	if (!d->base_version[0]) {
		ret = file_read_all(AT_FDCWD, BASE_BUSYBOX, &bin, &len);
		if (ret) {
			log_err("base images: cannot read %s (install busybox-static): %s",
				BASE_BUSYBOX, strerror(-ret));
			return ret;
		}
		ret = busybox_version(bin, len, d->base_version);
		free(bin);
		if (ret) {
			log_err("base images: %s does not name its version", BASE_BUSYBOX);
			return ret;
		}
	}
	cache_name(d->base_version, name, sizeof(name));
	snprintf(path, sizeof(path), "%s/%s", d->cache_dir, name);
	if (!force && access(path, R_OK) == 0) {
		log_info("base images: using the cached %s", path);
		return 0;
	}
	return base_build(d);
}

static bool chunk_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* Import the cached image file into a new completed snapshot of the amazon account. */
static int base_import(struct daemon *d, const char *region, char snap_id[ID_MAX])
{
	struct snap_store *st = region_store(d, region);
	struct manifest m = {.chunk_size = VOL_DEFAULT_CHUNK};
	struct cat_snapshot s = {0};
	char path[4300], name[128];
	size_t cap = 256, cs = VOL_DEFAULT_CHUNK;
	uint64_t data_size = 0, last = UINT64_MAX;
	uint8_t *buf = NULL;
	off_t size, off = 0;
	int fd, ret = 0;

	if (!st)
		return -EIO;
	cache_name(d->base_version, name, sizeof(name));
	snprintf(path, sizeof(path), "%s/%s", d->cache_dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	size = lseek(fd, 0, SEEK_END);
	m.e = malloc(cap * sizeof(*m.e));
	buf = malloc(cs);
	if (size <= 0 || size % (off_t)cs || !m.e || !buf) {
		ret = size <= 0 || size % (off_t)cs ? -EINVAL : -ENOMEM;
		goto out;
	}
	/* only the data extents: the file is 1 GiB of mostly holes */
	while (off < size) {
		off_t data = lseek(fd, off, SEEK_DATA), hole;
		if (data < 0)
			break; /* ENXIO: no data after off */
		hole = lseek(fd, data, SEEK_HOLE);
		if (hole < 0)
			hole = size;
		for (uint64_t idx = (uint64_t)data / cs; idx * cs < (uint64_t)hole; idx++) {
			uint8_t id[OBJ_ID_LEN];
			bool existed;
			if (idx == last)
				continue;
			last = idx;
			if (pread(fd, buf, cs, (off_t)(idx * cs)) != (ssize_t)cs) {
				ret = -EIO;
				goto out;
			}
			if (chunk_zero(buf, cs))
				continue;
			ret = store_put(st, buf, cs, id, &existed);
			if (ret)
				goto out;
			if (!existed)
				data_size += cs;
			if (m.nentries == cap) {
				struct manifest_entry *ne = realloc(m.e, 2 * cap * sizeof(*ne));
				if (!ne) {
					ret = -ENOMEM;
					goto out;
				}
				m.e = ne;
				cap *= 2;
			}
			m.e[m.nentries].idx = idx;
			memcpy(m.e[m.nentries++].id, id, OBJ_ID_LEN);
		}
		off = hole;
	}
	ret = id_new("snap", snap_id);
	if (!ret)
		ret = store_sync(st);
	m.volume_size = (uint64_t)size;
	snprintf(m.volume_id, sizeof(m.volume_id), "%s", BASE_IMPORT_VOLUME);
	snprintf(m.lineage, sizeof(m.lineage), "%s", snap_id);
	if (!ret)
		ret = manifest_write(st, snap_id, &m);
	if (ret)
		goto out;
	snprintf(s.id, sizeof(s.id), "%s", snap_id);
	snprintf(s.account, sizeof(s.account), "%s", EBSIM_AMAZON_ACCOUNT);
	snprintf(s.region, sizeof(s.region), "%s", region);
	snprintf(s.volume_id, sizeof(s.volume_id), "%s", BASE_IMPORT_VOLUME);
	s.volume_size_gib = (uint64_t)size >> 30;
	snprintf(s.description, sizeof(s.description), "ebsim base image (BusyBox %s), from %s",
		 d->base_version, name);
	snprintf(s.state, sizeof(s.state), "completed");
	s.progress = 100;
	time_iso8601(s.start_time);
	snprintf(s.lineage, sizeof(s.lineage), "%s", snap_id);
	s.data_size = data_size;
	ret = cat_snapshot_insert(d->cat, &s);
	if (ret)
		manifest_remove(st, snap_id);
	else
		log_info("base images: imported %s into %s in %s (%zu chunks)", name, snap_id,
			 region, m.nentries);
out:
	free(m.e);
	free(buf);
	close(fd);
	return ret;
}

static void base_image_name(struct daemon *d, const char *virt, char *out, size_t cap)
{
	snprintf(out, cap, BASE_NAME_PREFIX "busybox-%s-x86_64-%s", d->base_version, virt);
}

/* Register one base image over snapshot snap (the fields act_register_image writes, plus
 * ImageOwnerAlias and, for paravirtual, KernelId). */
static int base_register(struct daemon *d, const char *region, const char *virt, const char *snap,
			 char id[ID_MAX])
{
	bool pv = !strcmp(virt, "paravirtual");
	const char *root = pv ? "/dev/sda1" : "/dev/xvda";
	json_object *img, *bdm = json_object_new_array(), *m = json_object_new_object();
	json_object *e = json_object_new_object();
	char name[128], now[32], text[300];
	int ret;

	base_image_name(d, virt, name, sizeof(name));
	json_object_object_add(e, "DeleteOnTermination", json_object_new_boolean(true));
	json_object_object_add(e, "SnapshotId", json_object_new_string(snap));
	json_object_object_add(e, "VolumeSize", json_object_new_int64(BASE_SIZE_GIB));
	json_object_object_add(e, "VolumeType", json_object_new_string("gp2"));
	json_object_object_add(e, "Encrypted", json_object_new_boolean(false));
	json_object_object_add(m, "DeviceName", json_object_new_string(root));
	json_object_object_add(m, "Ebs", e);
	json_object_array_add(bdm, m);
	ret = id_new("ami", id);
	if (ret) {
		json_object_put(bdm);
		return ret;
	}
	time_iso8601(now);
	img = json_object_new_object();
	json_object_object_add(img, "Architecture", json_object_new_string("x86_64"));
	json_object_object_add(img, "CreationDate", json_object_new_string(now));
	json_object_object_add(img, "ImageId", json_object_new_string(id));
	snprintf(text, sizeof(text), EBSIM_AMAZON_ALIAS "/%s", name);
	json_object_object_add(img, "ImageLocation", json_object_new_string(text));
	json_object_object_add(img, "ImageType", json_object_new_string("machine"));
	json_object_object_add(img, "Public", json_object_new_boolean(true));
	json_object_object_add(img, "OwnerId", json_object_new_string(EBSIM_AMAZON_ACCOUNT));
	json_object_object_add(img, "ImageOwnerAlias", json_object_new_string(EBSIM_AMAZON_ALIAS));
	json_object_object_add(img, "PlatformDetails", json_object_new_string("Linux/UNIX"));
	json_object_object_add(img, "UsageOperation", json_object_new_string("RunInstances"));
	json_object_object_add(img, "State", json_object_new_string("available"));
	json_object_object_add(img, "BlockDeviceMappings", bdm);
	snprintf(text, sizeof(text), "ebsim base image: BusyBox %s on ext4, x86_64, %s",
		 d->base_version, pv ? "paravirtual (PV-GRUB)" : "HVM");
	json_object_object_add(img, "Description", json_object_new_string(text));
	json_object_object_add(img, "Name", json_object_new_string(name));
	json_object_object_add(img, "RootDeviceName", json_object_new_string(root));
	json_object_object_add(img, "RootDeviceType", json_object_new_string("ebs"));
	json_object_object_add(img, "VirtualizationType", json_object_new_string(virt));
	json_object_object_add(img, "Hypervisor", json_object_new_string("xen"));
	if (pv)
		json_object_object_add(img, "KernelId", json_object_new_string(BASE_PV_KERNEL));
	json_object_object_add(img, "_Region", json_object_new_string(region));
	ret = cat_doc_put(d->cat, "image", id, EBSIM_AMAZON_ACCOUNT, region, img);
	json_object_put(img);
	if (!ret)
		log_info("base images: registered %s (%s) in %s", id, name, region);
	return ret;
}

struct base_scan {
	struct daemon *d;
	char names[2][128];
	bool have[2];
	json_object *old; /* ids of every base image, when collecting */
};

static int base_scan_one(void *arg, const char *id, const char *account, json_object *doc)
{
	struct base_scan *b = arg;

	if (strcmp(account, EBSIM_AMAZON_ACCOUNT) ||
	    strncmp(jstr(doc, "Name"), BASE_NAME_PREFIX, strlen(BASE_NAME_PREFIX)))
		return 0;
	for (int i = 0; i < 2; i++)
		if (!strcmp(jstr(doc, "Name"), b->names[i]))
			b->have[i] = true;
	if (b->old)
		json_object_array_add(b->old, json_object_get(doc));
	(void)id;
	return 0;
}

static const char *const base_virts[2] = {"hvm", "paravirtual"};

/* Import and register what the region lacks. Under d->lock (or before serving). */
static int base_region(struct daemon *d, const char *region)
{
	struct base_scan b = {.d = d};
	char snap[ID_MAX], id[ID_MAX];
	int ret;

	for (int i = 0; i < 2; i++)
		base_image_name(d, base_virts[i], b.names[i], sizeof(b.names[i]));
	ret = cat_doc_each(d->cat, "image", region, base_scan_one, &b);
	if (ret || (b.have[0] && b.have[1]))
		return ret;
	ret = base_import(d, region, snap);
	for (int i = 0; !ret && i < 2; i++)
		if (!b.have[i])
			ret = base_register(d, region, base_virts[i], snap, id);
	if (ret)
		log_err("base images: cannot offer them in %s: %s", region, strerror(-ret));
	return ret;
}

static int region_index(const char *region)
{
	for (int i = 0; regions[i]; i++)
		if (!strcmp(regions[i], region))
			return i;
	return -1;
}

void base_ensure(struct daemon *d, const char *region)
{
	int i = region_index(region);

	if (d->no_base_images || !d->base_cached || i < 0 || (d->base_ready >> i) & 1)
		return;
	if (base_region(d, region) == 0)
		d->base_ready |= 1u << i;
}

int base_init(struct daemon *d)
{
	uint64_t t0 = time_mono_ns();

	if (d->no_base_images)
		return 0;
	if (base_cache(d, false))
		return -EIO; /* logged; the daemon runs without base images */
	d->base_cached = true;
	base_ensure(d, EBSIM_DEFAULT_REGION);
	log_info("base images: ready in %s in %.0f ms", EBSIM_DEFAULT_REGION,
		 (double)(time_mono_ns() - t0) / 1e6);
	return 0;
}

struct vol_uses {
	const char *snap;
	bool used;
};

static int vol_uses_snap(void *arg, const struct cat_volume *v)
{
	struct vol_uses *u = arg;

	u->used |= !strcmp(v->snapshot_id, u->snap);
	return u->used;
}

int act_build_base_images(struct api_req *r)
{
	static const char *const allowed[] = {"DryRun", NULL};
	struct daemon *d = r->d;
	struct base_scan b = {.d = d};
	int ret, i = region_index(r->region);

	if (params_allow(r, allowed))
		return -1;
	if (d->no_base_images)
		return api_error(
		    r, "UnsupportedOperation",
		    "This ebsimd runs with --no-base-images: it offers no base images.");
	ret = base_cache(d, true);
	if (ret)
		return api_error(r, "InternalError",
				 "cannot build the base image file in %s: %s (see the daemon log)",
				 d->cache_dir, strerror(-ret));
	d->base_cached = true;
	/* the old images of this region go; instances launched from them keep their volumes */
	b.old = json_object_new_array();
	cat_doc_each(d->cat, "image", r->region, base_scan_one, &b);
	for (size_t k = 0; k < json_object_array_length(b.old); k++) {
		json_object *img = json_object_array_get_idx(b.old, k);
		const char *snap = jstr(
		    jget(json_object_array_get_idx(jget(img, "BlockDeviceMappings"), 0), "Ebs"),
		    "SnapshotId");
		cat_doc_delete(d->cat, "image", jstr(img, "ImageId"));
		log_info("base images: deregistered %s (%s)", jstr(img, "ImageId"),
			 jstr(img, "Name"));
		struct vol_uses u = {snap, false};
		cat_volume_each(d->cat, NULL, vol_uses_snap, &u);
		if (snap[0] && !u.used && !snapshot_in_use(d, snap))
			cat_snapshot_delete(d->cat, snap);
	}
	json_object_put(b.old);
	if (i >= 0)
		d->base_ready &= ~(1u << i);
	region_gc(d, r->region);
	if (base_region(d, r->region))
		return api_error(r, "InternalError",
				 "cannot register the base images (see the log)");
	if (i >= 0)
		d->base_ready |= 1u << i;
	/* the answer: the new images */
	struct base_scan now = {.d = d, .old = json_object_new_array()};
	cat_doc_each(d->cat, "image", r->region, base_scan_one, &now);
	json_object *out = json_object_new_array();
	for (size_t k = 0; k < json_object_array_length(now.old); k++)
		json_object_array_add(out, doc_public(json_object_array_get_idx(now.old, k)));
	json_object_put(now.old);
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Images", out);
	return 0;
}
