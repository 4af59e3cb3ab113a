/* SPDX-License-Identifier: MIT */
/*
 * volfs.h - the FUSE frontend: one flat directory with one regular file per volume.
 *
 * Public API of fuse/. The daemon mounts it at <home>/mnt; each volume appears there as
 * <home>/mnt/vol-..., a file of the volume's size that any tool can use: losetup
 * --direct-io=on, qemu, fio. I/O is served asynchronously through blockdev/.
 */
#ifndef EBSIM_VOLFS_H
#define EBSIM_VOLFS_H

#include <stdint.h>

struct vol;
struct volfs;

/* How the kernel hands FUSE requests to the daemon. */
enum volfs_transport {
	VOLFS_DEV_FUSE,	/* read(2)/writev(2) of /dev/fuse (the default) */
	VOLFS_IO_URING, /* FUSE over io_uring (kernel 6.14+, fuse enable_uring=1); falls back
			 * to /dev/fuse, with a warning, when the kernel does not offer it */
};

/* Mount at mountpoint (which must exist and not be mounted) and start serving. */
int volfs_mount(const char *mountpoint, enum volfs_transport transport, struct volfs **out);
/* Stop serving and unmount; every volume must have been removed or be idle. */
void volfs_unmount(struct volfs *fs);

/* Expose v as mountpoint/name. -EEXIST if the name is taken. */
int volfs_add(struct volfs *fs, const char *name, struct vol *v);
/* Stop exposing name, first waiting up to timeout_ms for its open handles to close (the
 * kernel sends RELEASE after close(2) returns, and a detached loop device lets go of its
 * file asynchronously); -EBUSY if it is still open (a loop device holds it), -ENOENT if
 * unknown. On success the vol is the caller's again. */
int volfs_remove(struct volfs *fs, const char *name, int timeout_ms);
/* Wait up to timeout_ms for name to have no open handle (a detached loop device releases
 * its file asynchronously). 0, or -EBUSY on timeout. */
int volfs_wait_closed(struct volfs *fs, const char *name, int timeout_ms);
/* How many open file handles the kernel holds on name (0 if unknown). */
int volfs_open_count(struct volfs *fs, const char *name);
/* Tell the kernel that name's size changed (after vol_resize). */
void volfs_resized(struct volfs *fs, const char *name);

/* Stale-mount handling at start-up, called while holding the home's lock: an ebsim FUSE
 * mount at path belongs to a daemon that died, and is detached. Returns 1 if something
 * was cleared, 0 if nothing was mounted, -EBUSY if another file system is mounted there.
 * path must be canonical: a dead mount point cannot be resolved. */
int volfs_clear_stale(const char *path);

#endif
