/* SPDX-License-Identifier: MIT */
/*
 * daemon_i.h - ebsimd's private state, shared by its files: main (ebsimd.c), the control
 * socket (ctl.c), request plumbing (api.c) and the EC2 actions (act_*.c).
 *
 * Locking: requests are served one at a time by the control thread, which alone touches
 * the catalog and the served-volume table; the FUSE and engine threads reach volumes only
 * through fuse/ and blockdev/, which have their own locks.
 */
#ifndef EBSIM_DAEMON_I_H
#define EBSIM_DAEMON_I_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include "blockdev/blockdev.h"
#include "common/common.h"
#include "fuse/volfs.h"
#include "persistence/catalog.h"

/* A volume the daemon serves. */
struct dvol {
	char id[ID_MAX];
	struct vol *vol;
	struct dvol *next;
};

struct daemon {
	char home[4096];
	int home_fd;
	int vols_fd; /* <home>/volumes */
	struct cat *cat;
	struct volfs *fs;
	struct blk_engine *eng;
	uint8_t master_key[VOL_MASTER_KEY_LEN];
	struct dvol *vols;
};

/* One control request while it is being served. */
struct api_req {
	struct daemon *d;
	const char *action;
	const char *account;
	const char *region;
	json_object *params; /* never NULL: an empty object when the request had none */
	json_object *result; /* set by the action on success */
	char code[64];	     /* set by api_error */
	char message[1024];
};

/* Record an EC2 error on r; returns -1 so actions can `return api_error(...)`. */
int api_error(struct api_req *r, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Parameter accessors: 1 = present, 0 = absent, -1 = error recorded on r. */
int param_str(struct api_req *r, const char *name, bool required, const char **out);
int param_int(struct api_req *r, const char *name, bool required, int64_t *out);
int param_bool(struct api_req *r, const char *name, bool *out);
/* A list of strings: a JSON array of strings (or one string). *out is borrowed from r. */
int param_str_list(struct api_req *r, const char *name, json_object **out);
/* Refuse parameters that the action does not know: UnknownParameter. */
int params_allow(struct api_req *r, const char *const *names);

/* Validate an ID with the given prefix; records "<Kind>ID.Malformed" on failure. */
int check_id(struct api_req *r, const char *prefix, const char *kind, const char *id);

/* Served-volume table. */
struct dvol *dvol_find(struct daemon *d, const char *id);
int dvol_serve(struct daemon *d, const char *id); /* open and expose in FUSE */
int dvol_unserve(struct daemon *d, const char *id); /* -EBUSY while open */

/* Dispatch one request: 0 with r->result, or -1 with r->code/r->message. */
int api_dispatch(struct api_req *r);

/* Actions (act_volumes.c). */
int act_create_volume(struct api_req *r);
int act_describe_volumes(struct api_req *r);
int act_delete_volume(struct api_req *r);
int act_modify_volume(struct api_req *r);

/* Start-up recovery of volumes: finish interrupted creates and deletes, serve the rest. */
int volumes_recover(struct daemon *d);

#endif
