/* SPDX-License-Identifier: MIT */
/*
 * loop.h - attach volume files as loop devices (LOOP_CTL_GET_FREE + LOOP_CONFIGURE, direct
 * I/O), part of fuse/'s public API.
 */
#ifndef EBSIM_LOOP_H
#define EBSIM_LOOP_H

#include <stdbool.h>

#define LOOP_DEV_MAX 32

/* Attach path (a volume's FUSE file) to a free loop device with direct I/O; dev receives
 * "/dev/loopN". 0 or -errno. */
int loop_attach(const char *path, bool read_only, char dev[LOOP_DEV_MAX]);
/* Detach dev, but only if it is still backed by path (a loop number can be reused by
 * someone else after a crash). Once the mount holding path is gone (a crashed daemon's
 * mount, detached), the kernel names the file "/<basename>": that counts as path too.
 * 0, -ENXIO if it is not attached (or to something else). */
int loop_detach(const char *dev, const char *path);
/* Tell the loop device that its file grew. */
int loop_set_capacity(const char *dev);

#endif
