/* SPDX-License-Identifier: MIT */
/*
 * loop.c - loop devices for volumes.
 *
 * Design notes
 * ------------
 * LOOP_CTL_GET_FREE names a free device, LOOP_CONFIGURE sets file, direct I/O and block
 * size in one ioctl. Another process can take the same free number between the two calls:
 * then LOOP_CONFIGURE fails with EBUSY and we ask again. The backing file is opened with
 * O_DIRECT: the FUSE file is direct-I/O anyway, and loop then issues asynchronous direct
 * I/O, which is what keeps the queue deep (PERF-NOTES). 4 KiB logical blocks match the
 * volume's encryption sector. No autoclear: the daemon detaches explicitly, and at
 * start-up detaches the devices a crashed daemon recorded, checking each is still backed by
 * the file it expects (sysfs backing_file) before touching it.
 *
 * What sysfs shows for a device left by a crashed daemon: the kernel prints the backing
 * file's path as seen from our root. While the dead FUSE mount is still attached that is
 * "<home>/mnt/<name>"; once it is detached (the next daemon clears it with MNT_DETACH
 * before anything else) the file is unreachable and the kernel prints its path relative to
 * the detached mount, "/<name>" (volume files sit at the mount's root), possibly followed
 * by " (deleted)". Both forms mean the device is still ours: backed_by() accepts either,
 * for the device number the daemon recorded at attach. (LOOP_GET_STATUS64, which would
 * return lo_file_name, cannot help here: it stats the backing file and fails with ENOTCONN
 * once the FUSE connection is dead.) A device someone else attached meanwhile, or one the
 * daemon never recorded, is left alone.
 */
#include "fuse/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int loop_attach(const char *path, bool read_only, char dev[LOOP_DEV_MAX])
{
	int ctl, file, ret = -EBUSY;

	file = open(path, (read_only ? O_RDONLY : O_RDWR) | O_DIRECT | O_CLOEXEC);
	if (file < 0)
		return -errno;
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		ret = -errno;
		goto out_file;
	}
	for (int attempt = 0; attempt < 16 && ret == -EBUSY; attempt++) {
		struct loop_config cfg = {.fd = (unsigned)file, .block_size = 4096};
		int n = ioctl(ctl, LOOP_CTL_GET_FREE), lfd;

		if (n < 0) {
			ret = -errno;
			break;
		}
		snprintf(dev, LOOP_DEV_MAX, "/dev/loop%d", n);
		lfd = open(dev, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
		if (lfd < 0) {
			ret = -errno;
			break;
		}
		cfg.info.lo_flags = LO_FLAGS_DIRECT_IO | (read_only ? LO_FLAGS_READ_ONLY : 0);
		snprintf((char *)cfg.info.lo_file_name, sizeof(cfg.info.lo_file_name), "%s", path);
		ret = ioctl(lfd, LOOP_CONFIGURE, &cfg) < 0 ? -errno : 0;
		close(lfd);
	}
	close(ctl);
out_file:
	close(file);
	return ret;
}

/* Does the kernel's backing path buf name path: equal to it, or to "/<basename>" (the
 * mount holding path was detached), either optionally followed by " (deleted)"? */
static bool names_file(const char *buf, const char *path)
{
	const char *base = strrchr(path, '/');
	size_t n = strlen(path);

	if (!strncmp(buf, path, n) && (!buf[n] || !strcmp(buf + n, " (deleted)")))
		return true;
	if (!base || base == path)
		return false;
	n = strlen(base);
	return !strncmp(buf, base, n) && (!buf[n] || !strcmp(buf + n, " (deleted)"));
}

static bool backed_by(const char *dev, const char *path)
{
	char sys[128], buf[4200];
	const char *name = strrchr(dev, '/');
	ssize_t n;
	int fd;

	snprintf(sys, sizeof(sys), "/sys/block/%s/loop/backing_file", name ? name + 1 : dev);
	fd = open(sys, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	if (buf[n - 1] == '\n')
		buf[n - 1] = 0;
	return names_file(buf, path);
}

int loop_detach(const char *dev, const char *path)
{
	int fd, ret;

	if (!backed_by(dev, path))
		return -ENXIO;
	fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = ioctl(fd, LOOP_CLR_FD, 0) < 0 ? -errno : 0;
	close(fd);
	return ret;
}

int loop_set_capacity(const char *dev)
{
	int fd = open(dev, O_RDONLY | O_CLOEXEC), ret;

	if (fd < 0)
		return -errno;
	ret = ioctl(fd, LOOP_SET_CAPACITY, 0) < 0 ? -errno : 0;
	close(fd);
	return ret;
}
