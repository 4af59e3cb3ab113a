/* SPDX-License-Identifier: MIT */
/*
 * test_catalog.c - the catalog's tags on a real SQLite file in a private temp dir: set,
 * overwrite, ordered get, delete by key, by key and value, and all at once; the tags of a
 * volume or snapshot go when its row is deleted (and only its); a rolled-back transaction
 * leaves none; tags survive close and reopen; a schema version 1 catalog gains the tags
 * table when opened and keeps its rows.
 * Exit: 0 pass, 1 fail, 77 skip.
 */
#include "common/common.h"
#include "persistence/catalog.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

static int failures;
static char dir[512];

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

static struct cat *open_cat(const char *name)
{
	char path[600];
	struct cat *c = NULL;
	int ret;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	ret = cat_open(path, &c);
	CHECK(ret == 0, "cat_open %s -> %d", path, ret);
	if (ret)
		exit(1);
	return c;
}

/* The tags of a resource as "k=v;k=v;" (in the catalog's order). */
static const char *tags_str(struct cat *c, const char *res)
{
	static char buf[8192];
	struct cat_tag *t;
	size_t n, used = 0;
	int ret = cat_tags_get(c, res, &t, &n);

	buf[0] = 0;
	CHECK(ret == 0, "cat_tags_get %s -> %d", res, ret);
	for (size_t i = 0; i < n; i++) {
		CHECK(!strcmp(t[i].resource, res), "resource %s", t[i].resource);
		used += (size_t)snprintf(buf + used, sizeof(buf) - used, "%s=%s;", t[i].key,
					 t[i].value);
	}
	free(t);
	return buf;
}

static void volume(struct cat *c, const char *id)
{
	struct cat_volume v = {0};

	snprintf(v.id, sizeof(v.id), "%s", id);
	snprintf(v.account, sizeof(v.account), "123456789012");
	snprintf(v.region, sizeof(v.region), "us-east-1");
	snprintf(v.az, sizeof(v.az), "us-east-1a");
	snprintf(v.type, sizeof(v.type), "gp2");
	snprintf(v.state, sizeof(v.state), "available");
	v.size_gib = 1;
	CHECK(cat_volume_insert(c, &v) == 0, "insert %s", id);
}

static void snapshot(struct cat *c, const char *id)
{
	struct cat_snapshot s = {0};

	snprintf(s.id, sizeof(s.id), "%s", id);
	snprintf(s.account, sizeof(s.account), "123456789012");
	snprintf(s.region, sizeof(s.region), "us-east-1");
	snprintf(s.state, sizeof(s.state), "completed");
	CHECK(cat_snapshot_insert(c, &s) == 0, "insert %s", id);
}

static int count_each(void *arg, const struct cat_tag *t)
{
	static char last[ID_MAX + CAT_TAG_KEY_MAX + 2];
	char cur[sizeof(last)];
	size_t *n = arg;

	snprintf(cur, sizeof(cur), "%s/%s", t->resource, t->key);
	CHECK(!*n || strcmp(last, cur) < 0, "cat_tags_each order: %s after %s", cur, last);
	memcpy(last, cur, sizeof(last));
	(*n)++;
	return 0;
}

static void test_tags(void)
{
	const char *vol = "vol-0123456789abcdef0", *vol2 = "vol-0123456789abcdef1";
	const char *snap = "snap-0123456789abcdef0";
	char key[CAT_TAG_KEY_MAX], value[CAT_TAG_VALUE_MAX];
	struct cat *c = open_cat("tags.db");
	size_t n = 0;

	volume(c, vol);
	volume(c, vol2);
	snapshot(c, snap);
	CHECK(!strcmp(tags_str(c, vol), ""), "no tags yet: %s", tags_str(c, vol));

	/* set, ordered by key (bytewise: upper case first), overwrite */
	CHECK(cat_tags_set(c, vol, "env", "prod") == 0, "set");
	CHECK(cat_tags_set(c, vol, "Name", "web") == 0, "set");
	CHECK(cat_tags_set(c, vol, "empty", "") == 0, "set");
	CHECK(cat_tags_set(c, vol, "env", "test") == 0, "overwrite");
	CHECK(!strcmp(tags_str(c, vol), "Name=web;empty=;env=test;"), "%s", tags_str(c, vol));
	CHECK(cat_tags_set(c, vol2, "env", "prod") == 0, "set");
	CHECK(cat_tags_set(c, snap, "Name", "s") == 0, "set");

	/* the longest key and value fit */
	memset(key, 'k', sizeof(key) - 1);
	key[sizeof(key) - 1] = 0;
	memset(value, 'v', sizeof(value) - 1);
	value[sizeof(value) - 1] = 0;
	CHECK(cat_tags_set(c, vol2, key, value) == 0, "long");
	struct cat_tag *t;
	CHECK(cat_tags_get(c, vol2, &t, &n) == 0 && n == 2, "n=%zu", n);
	CHECK(n == 2 && !strcmp(t[1].key, key) && !strcmp(t[1].value, value), "long round trip");
	free(t);

	n = 0;
	CHECK(cat_tags_each(c, count_each, &n) == 0 && n == 6, "each: %zu", n);

	/* delete: value must match when given; key NULL deletes all */
	CHECK(cat_tags_delete(c, vol, "env", "prod") == -ENOENT, "value mismatch");
	CHECK(cat_tags_delete(c, vol, "env", "test") == 0, "value match");
	CHECK(cat_tags_delete(c, vol, "nosuch", NULL) == -ENOENT, "absent key");
	CHECK(cat_tags_delete(c, vol, "empty", NULL) == 0, "any value");
	CHECK(!strcmp(tags_str(c, vol), "Name=web;"), "%s", tags_str(c, vol));
	CHECK(cat_tags_set(c, vol, "x", "1") == 0, "set");
	CHECK(cat_tags_delete(c, vol, NULL, NULL) == 0, "all");
	CHECK(!strcmp(tags_str(c, vol), ""), "%s", tags_str(c, vol));

	/* a rolled-back transaction leaves nothing */
	CHECK(cat_begin(c) == 0, "begin");
	CHECK(cat_tags_set(c, vol, "tmp", "1") == 0, "set in txn");
	cat_rollback(c);
	CHECK(!strcmp(tags_str(c, vol), ""), "after rollback: %s", tags_str(c, vol));

	/* deleting a row deletes its tags, and only its */
	CHECK(cat_tags_set(c, vol, "Name", "web") == 0, "set");
	CHECK(cat_volume_delete(c, vol2) == 0, "delete vol2");
	CHECK(!strcmp(tags_str(c, vol2), ""), "vol2 tags left: %s", tags_str(c, vol2));
	CHECK(!strcmp(tags_str(c, vol), "Name=web;"), "%s", tags_str(c, vol));
	CHECK(cat_snapshot_delete(c, snap) == 0, "delete snap");
	CHECK(!strcmp(tags_str(c, snap), ""), "snap tags left: %s", tags_str(c, snap));

	/* durable across close and reopen */
	cat_close(c);
	c = open_cat("tags.db");
	CHECK(!strcmp(tags_str(c, vol), "Name=web;"), "after reopen: %s", tags_str(c, vol));
	cat_close(c);
}

/* A catalog written by the first schema (no tags) opens, keeps its rows, gains tags. */
static void test_upgrade(void)
{
	char path[600];
	sqlite3 *db;
	struct cat *c;
	struct cat_volume v;

	snprintf(path, sizeof(path), "%s/v1.db", dir);
	CHECK(sqlite3_open(path, &db) == SQLITE_OK, "sqlite3_open");
	CHECK(
	    sqlite3_exec(db,
			 "CREATE TABLE volumes (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
			 " id TEXT UNIQUE NOT NULL, account TEXT NOT NULL, region TEXT NOT NULL,"
			 " az TEXT NOT NULL, size_gib INTEGER NOT NULL, type TEXT NOT NULL,"
			 " iops INTEGER NOT NULL, throughput INTEGER NOT NULL,"
			 " encrypted INTEGER NOT NULL, create_time TEXT NOT NULL,"
			 " snapshot_id TEXT NOT NULL, state TEXT NOT NULL,"
			 " changed_base TEXT NOT NULL DEFAULT '');"
			 "INSERT INTO volumes (id, account, region, az, size_gib, type, iops,"
			 " throughput, encrypted, create_time, snapshot_id, state) VALUES"
			 " ('vol-00000000000000001', '123456789012', 'us-east-1', 'us-east-1a', 1,"
			 " 'gp2', 100, 0, 0, '', '', 'available');"
			 "PRAGMA user_version=1;",
			 NULL, NULL, NULL) == SQLITE_OK,
	    "v1 schema: %s", sqlite3_errmsg(db));
	sqlite3_close(db);

	c = open_cat("v1.db");
	CHECK(cat_volume_get(c, "vol-00000000000000001", &v) == 0, "v1 row kept");
	CHECK(cat_tags_set(c, "vol-00000000000000001", "Name", "old") == 0, "tag in v1 db");
	CHECK(cat_volume_delete(c, "vol-00000000000000001") == 0, "delete");
	CHECK(!strcmp(tags_str(c, "vol-00000000000000001"), ""), "trigger after upgrade");
	cat_close(c);
}

int main(void)
{
	static const char *const files[] = {"tags.db", "tags.db-wal", "tags.db-shm",
					    "v1.db",   "v1.db-wal",   "v1.db-shm"};
	const char *tmpdir = getenv("TMPDIR");
	char path[600];

	log_set_level(LOG_ERR);
	snprintf(dir, sizeof(dir), "%s/ebsim-test-catalog-XXXXXX", tmpdir ? tmpdir : "/tmp");
	if (!mkdtemp(dir)) {
		fprintf(stderr, "SKIP: mkdtemp %s: %s\n", dir, strerror(errno));
		return 77;
	}
	test_tags();
	test_upgrade();
	/* the directory holds only the databases made above and their WAL files */
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	if (rmdir(dir))
		fprintf(stderr, "warning: could not remove %s: %s\n", dir, strerror(errno));
	if (failures)
		fprintf(stderr, "%d failure(s)\n", failures);
	return failures ? 1 : 0;
}
