/* SPDX-License-Identifier: MIT */
/* snapshot_i.h - private to snapshot/: what manifest.c needs from store.c. */
#ifndef EBSIM_SNAPSHOT_I_H
#define EBSIM_SNAPSHOT_I_H

#include "snapshot/snapshot.h"

/* The store's manifests/ directory fd (owned by the store). */
int store_manifest_dirfd(struct snap_store *s);

#endif
