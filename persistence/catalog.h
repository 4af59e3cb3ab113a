/* SPDX-License-Identifier: MIT */
/*
 * catalog.h - the catalog: what exists (volumes, snapshots and their tags now; images and
 * instances as they land), kept in SQLite in WAL mode with synchronous=FULL, so a row that
 * a reply announced survives a crash.
 *
 * Public API of persistence/.
 */
#ifndef EBSIM_CATALOG_H
#define EBSIM_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"

struct cat;

/* Open (creating if needed) the catalog database at path. -EUCLEAN when the file is not a
 * usable ebsim catalog (damaged, or from a newer schema). */
int cat_open(const char *path, struct cat **out);
void cat_close(struct cat *c);

/* Group several changes atomically. */
int cat_begin(struct cat *c);
int cat_commit(struct cat *c);
void cat_rollback(struct cat *c);

struct cat_volume {
	char id[ID_MAX];
	char account[16];
	char region[32];
	char az[40];
	uint64_t size_gib;
	char type[16];
	int iops;	/* 0: not applicable to the type */
	int throughput; /* MiB/s, gp3 only; 0 otherwise */
	bool encrypted;
	char create_time[32];
	char snapshot_id[ID_MAX]; /* "" when created empty */
	char state[16];		  /* creating | available | in-use | deleting */
	/* the snapshot whose start last cleared the volume's changed bits: the parent of its
	 * next incremental snapshot ("" = the next snapshot must be full) */
	char changed_base[ID_MAX];
};

int cat_volume_insert(struct cat *c, const struct cat_volume *v);
int cat_volume_update(struct cat *c, const struct cat_volume *v);
int cat_volume_delete(struct cat *c, const char *id);
/* -ENOENT when absent. */
int cat_volume_get(struct cat *c, const char *id, struct cat_volume *out);
/* Call fn for each volume, in creation order; region NULL = all regions. fn returns
 * non-zero to stop, and that value is returned. */
int cat_volume_each(struct cat *c, const char *region,
		    int (*fn)(void *arg, const struct cat_volume *v), void *arg);

struct cat_snapshot {
	char id[ID_MAX];
	char account[16];
	char region[32];
	char volume_id[ID_MAX];
	uint64_t volume_size_gib;
	char description[256];
	char state[16]; /* pending | completed | error */
	char state_message[256];
	int progress;	/* percent */
	char start_time[32];
	char parent[ID_MAX];  /* "" for a full snapshot */
	char lineage[ID_MAX]; /* the first snapshot of the chain */
	bool encrypted;
	uint64_t data_size;	 /* bytes of new chunks this snapshot stored */
	char source[ID_MAX + 40]; /* copies: "region/snap-..." of the source; else "" */
};

int cat_snapshot_insert(struct cat *c, const struct cat_snapshot *s);
int cat_snapshot_update(struct cat *c, const struct cat_snapshot *s);
int cat_snapshot_delete(struct cat *c, const char *id);
int cat_snapshot_get(struct cat *c, const char *id, struct cat_snapshot *out);
int cat_snapshot_each(struct cat *c, const char *region,
		      int (*fn)(void *arg, const struct cat_snapshot *s), void *arg);

/* EC2 tags: a key (1-128 characters) and a value (0-256) per resource, keys unique per
 * resource. The catalog stores what it is given; the rules are the daemon's. Deleting a
 * volume's or snapshot's row deletes its tags. */
#define CAT_TAG_KEY_MAX (128 * 4 + 1)	 /* 128 characters of UTF-8, NUL */
#define CAT_TAG_VALUE_MAX (256 * 4 + 1) /* 256 characters of UTF-8, NUL */

struct cat_tag {
	char resource[ID_MAX];
	char key[CAT_TAG_KEY_MAX];
	char value[CAT_TAG_VALUE_MAX];
};

/* The tags of a resource, ordered by key, in a malloc'd array (*out NULL when none). */
int cat_tags_get(struct cat *c, const char *resource, struct cat_tag **out, size_t *n);
/* Call fn for every tag, ordered by resource, then key; fn returns non-zero to stop. */
int cat_tags_each(struct cat *c, int (*fn)(void *arg, const struct cat_tag *t), void *arg);
/* Add a tag, or overwrite the value of the resource's tag with that key. */
int cat_tags_set(struct cat *c, const char *resource, const char *key, const char *value);
/* Delete the resource's tag key when its value is value (NULL: whatever it is); key NULL
 * deletes all its tags. -ENOENT when nothing matched. */
int cat_tags_delete(struct cat *c, const char *resource, const char *key, const char *value);

/*
 * Documents: resources kept as JSON objects (images, instances), keyed by kind and id,
 * with their owner account and region for lookups. The JSON is what describe calls
 * return, plus private fields whose names start with "_".
 */
struct json_object;
int cat_doc_put(struct cat *c, const char *kind, const char *id, const char *account,
		const char *region, struct json_object *doc);
/* -ENOENT when absent; *out is a new reference. */
int cat_doc_get(struct cat *c, const char *kind, const char *id, struct json_object **out);
int cat_doc_delete(struct cat *c, const char *kind, const char *id);
/* fn gets a borrowed object; return non-zero to stop. region NULL = all. */
int cat_doc_each(struct cat *c, const char *kind, const char *region,
		 int (*fn)(void *arg, const char *id, const char *account, struct json_object *doc),
		 void *arg);

#endif
