/* SPDX-License-Identifier: MIT */
/*
 * catalog.c - SQLite-backed catalog (see catalog.h).
 *
 * Design notes
 * ------------
 * Schema versioned with PRAGMA user_version; a database whose version is newer than this
 * build, or that fails PRAGMA quick_check at open, is refused (-EUCLEAN) rather than
 * guessed at. journal_mode=WAL, synchronous=FULL: a committed transaction is durable when
 * sqlite3_step returns. One connection, used by the daemon's control thread only (callers
 * serialise), opened with SQLITE_OPEN_NOMUTEX and O_NOFOLLOW semantics.
 *
 * Crash protocol with the volume files (daemon/): a volume's directory is created before
 * its row is inserted, and its row is marked 'deleting' before the directory is removed;
 * recovery at start removes directories without a row and finishes 'deleting' rows.
 *
 * Tags (schema version 2) live in one table keyed by (resource_id, key), whatever the
 * resource's kind. Triggers delete a resource's tags in the statement that deletes its
 * row, so no path that removes a volume or snapshot (actions, recovery, a failed create)
 * can leave tags behind, and a crash cannot separate the two. A version 1 catalog gains
 * the table and triggers when it is opened.
 */
#include "persistence/catalog.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <sqlite3.h>

#define SCHEMA_VERSION 2

struct cat {
	sqlite3 *db;
};

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS volumes ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	" id TEXT UNIQUE NOT NULL, account TEXT NOT NULL, region TEXT NOT NULL,"
	" az TEXT NOT NULL, size_gib INTEGER NOT NULL, type TEXT NOT NULL,"
	" iops INTEGER NOT NULL, throughput INTEGER NOT NULL, encrypted INTEGER NOT NULL,"
	" create_time TEXT NOT NULL, snapshot_id TEXT NOT NULL, state TEXT NOT NULL,"
	" changed_base TEXT NOT NULL DEFAULT '');"
	"CREATE TABLE IF NOT EXISTS snapshots ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	" id TEXT UNIQUE NOT NULL, account TEXT NOT NULL, region TEXT NOT NULL,"
	" volume_id TEXT NOT NULL, volume_size_gib INTEGER NOT NULL, description TEXT NOT NULL,"
	" state TEXT NOT NULL, state_message TEXT NOT NULL, progress INTEGER NOT NULL,"
	" start_time TEXT NOT NULL, parent TEXT NOT NULL, lineage TEXT NOT NULL,"
	" encrypted INTEGER NOT NULL, data_size INTEGER NOT NULL, source TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS tags ("
	" resource_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
	" UNIQUE (resource_id, key));"
	"CREATE TRIGGER IF NOT EXISTS volumes_untag AFTER DELETE ON volumes"
	" BEGIN DELETE FROM tags WHERE resource_id = OLD.id; END;"
	"CREATE TRIGGER IF NOT EXISTS snapshots_untag AFTER DELETE ON snapshots"
	" BEGIN DELETE FROM tags WHERE resource_id = OLD.id; END;"
	"CREATE TABLE IF NOT EXISTS docs ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, id TEXT NOT NULL,"
	" account TEXT NOT NULL, region TEXT NOT NULL, json TEXT NOT NULL, UNIQUE (kind, id));";

static int exec(struct cat *c, const char *sql)
{
	char *err = NULL;

	if (sqlite3_exec(c->db, sql, NULL, NULL, &err) != SQLITE_OK) {
		log_err("catalog: %s: %s", sql, err ? err : "?");
		sqlite3_free(err);
		return -EIO;
	}
	return 0;
}

static int get_int(struct cat *c, const char *sql, int *out)
{
	sqlite3_stmt *st;
	int ret = -EIO;

	if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	if (sqlite3_step(st) == SQLITE_ROW) {
		*out = sqlite3_column_int(st, 0);
		ret = 0;
	}
	sqlite3_finalize(st);
	return ret;
}

int cat_open(const char *path, struct cat **out)
{
	struct cat *c = calloc(1, sizeof(*c));
	sqlite3_stmt *st;
	int version = 0, ret = -EUCLEAN;

	if (!c)
		return -ENOMEM;
	if (sqlite3_open_v2(path, &c->db,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
				    SQLITE_OPEN_NOFOLLOW,
			    NULL) != SQLITE_OK) {
		log_err("catalog %s: %s", path, c->db ? sqlite3_errmsg(c->db) : "cannot open");
		goto out_close;
	}
	sqlite3_busy_timeout(c->db, 5000);
	if (sqlite3_prepare_v2(c->db, "PRAGMA quick_check", -1, &st, NULL) != SQLITE_OK) {
		log_err("catalog %s is not a database: %s", path, sqlite3_errmsg(c->db));
		goto out_close;
	}
	if (sqlite3_step(st) != SQLITE_ROW ||
	    strcmp((const char *)sqlite3_column_text(st, 0), "ok")) {
		log_err("catalog %s failed its integrity check", path);
		sqlite3_finalize(st);
		goto out_close;
	}
	sqlite3_finalize(st);
	if (get_int(c, "PRAGMA user_version", &version) || version > SCHEMA_VERSION) {
		log_err("catalog %s has schema version %d; this ebsimd knows %d", path, version,
			SCHEMA_VERSION);
		goto out_close;
	}
	if (exec(c, "PRAGMA journal_mode=WAL") || exec(c, "PRAGMA synchronous=FULL") ||
	    exec(c, "PRAGMA foreign_keys=ON") || exec(c, schema))
		goto out_close;
	if (version < SCHEMA_VERSION) {
		char sql[64];
		snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", SCHEMA_VERSION);
		if (exec(c, sql))
			goto out_close;
	}
	*out = c;
	return 0;
out_close:
	sqlite3_close(c->db);
	free(c);
	return ret;
}

void cat_close(struct cat *c)
{
	if (!c)
		return;
	sqlite3_close(c->db);
	free(c);
}

int cat_begin(struct cat *c)
{
	return exec(c, "BEGIN IMMEDIATE");
}

int cat_commit(struct cat *c)
{
	return exec(c, "COMMIT");
}

void cat_rollback(struct cat *c)
{
	exec(c, "ROLLBACK");
}

static void copy_col(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

#define VOL_COLS                                                                           \
	"id, account, region, az, size_gib, type, iops, throughput, encrypted, create_time,"  \
	" snapshot_id, state, changed_base"

static void vol_from_row(sqlite3_stmt *st, struct cat_volume *v)
{
	memset(v, 0, sizeof(*v));
	copy_col(st, 0, v->id, sizeof(v->id));
	copy_col(st, 1, v->account, sizeof(v->account));
	copy_col(st, 2, v->region, sizeof(v->region));
	copy_col(st, 3, v->az, sizeof(v->az));
	v->size_gib = (uint64_t)sqlite3_column_int64(st, 4);
	copy_col(st, 5, v->type, sizeof(v->type));
	v->iops = sqlite3_column_int(st, 6);
	v->throughput = sqlite3_column_int(st, 7);
	v->encrypted = sqlite3_column_int(st, 8) != 0;
	copy_col(st, 9, v->create_time, sizeof(v->create_time));
	copy_col(st, 10, v->snapshot_id, sizeof(v->snapshot_id));
	copy_col(st, 11, v->state, sizeof(v->state));
	copy_col(st, 12, v->changed_base, sizeof(v->changed_base));
}

static int vol_bind(sqlite3_stmt *st, const struct cat_volume *v)
{
	int i = 1;

	sqlite3_bind_text(st, i++, v->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, v->account, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, v->region, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, v->az, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)v->size_gib);
	sqlite3_bind_text(st, i++, v->type, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, i++, v->iops);
	sqlite3_bind_int(st, i++, v->throughput);
	sqlite3_bind_int(st, i++, v->encrypted);
	sqlite3_bind_text(st, i++, v->create_time, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, v->snapshot_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, v->state, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, v->changed_base, -1, SQLITE_STATIC);
	return i;
}

static int step_done(struct cat *c, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_finalize(st);
	if (rc == SQLITE_CONSTRAINT)
		return -EEXIST;
	if (rc != SQLITE_DONE) {
		log_err("catalog: %s", sqlite3_errmsg(c->db));
		return -EIO;
	}
	return sqlite3_changes(c->db) ? 0 : -ENOENT;
}

int cat_volume_insert(struct cat *c, const struct cat_volume *v)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->db,
			       "INSERT INTO volumes (" VOL_COLS
			       ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	vol_bind(st, v);
	return step_done(c, st);
}

int cat_volume_update(struct cat *c, const struct cat_volume *v)
{
	sqlite3_stmt *st;
	int i;

	if (sqlite3_prepare_v2(c->db,
			       "UPDATE volumes SET id=?1, account=?2, region=?3, az=?4, size_gib=?5,"
			       " type=?6, iops=?7, throughput=?8, encrypted=?9, create_time=?10,"
			       " snapshot_id=?11, state=?12, changed_base=?13 WHERE id=?14",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	i = vol_bind(st, v);
	sqlite3_bind_text(st, i, v->id, -1, SQLITE_STATIC);
	return step_done(c, st);
}

int cat_volume_delete(struct cat *c, const char *id)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->db, "DELETE FROM volumes WHERE id=?", -1, &st, NULL) !=
	    SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	return step_done(c, st);
}

int cat_volume_get(struct cat *c, const char *id, struct cat_volume *out)
{
	sqlite3_stmt *st;
	int rc, ret;

	if (sqlite3_prepare_v2(c->db, "SELECT " VOL_COLS " FROM volumes WHERE id=?", -1, &st,
			       NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		vol_from_row(st, out);
		ret = 0;
	} else {
		ret = rc == SQLITE_DONE ? -ENOENT : -EIO;
	}
	sqlite3_finalize(st);
	return ret;
}

int cat_volume_each(struct cat *c, const char *region,
		    int (*fn)(void *arg, const struct cat_volume *v), void *arg)
{
	sqlite3_stmt *st;
	int rc, ret = 0;

	if (sqlite3_prepare_v2(c->db,
			       "SELECT " VOL_COLS " FROM volumes WHERE ?1 IS NULL OR region=?1"
			       " ORDER BY seq",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	if (region)
		sqlite3_bind_text(st, 1, region, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct cat_volume v;
		vol_from_row(st, &v);
		ret = fn(arg, &v);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = -EIO;
	sqlite3_finalize(st);
	return ret;
}

/* ---- snapshots ----------------------------------------------------------------------- */

#define SNAP_COLS                                                                          \
	"id, account, region, volume_id, volume_size_gib, description, state, state_message,"   \
	" progress, start_time, parent, lineage, encrypted, data_size, source"

static void snap_from_row(sqlite3_stmt *st, struct cat_snapshot *s)
{
	memset(s, 0, sizeof(*s));
	copy_col(st, 0, s->id, sizeof(s->id));
	copy_col(st, 1, s->account, sizeof(s->account));
	copy_col(st, 2, s->region, sizeof(s->region));
	copy_col(st, 3, s->volume_id, sizeof(s->volume_id));
	s->volume_size_gib = (uint64_t)sqlite3_column_int64(st, 4);
	copy_col(st, 5, s->description, sizeof(s->description));
	copy_col(st, 6, s->state, sizeof(s->state));
	copy_col(st, 7, s->state_message, sizeof(s->state_message));
	s->progress = sqlite3_column_int(st, 8);
	copy_col(st, 9, s->start_time, sizeof(s->start_time));
	copy_col(st, 10, s->parent, sizeof(s->parent));
	copy_col(st, 11, s->lineage, sizeof(s->lineage));
	s->encrypted = sqlite3_column_int(st, 12) != 0;
	s->data_size = (uint64_t)sqlite3_column_int64(st, 13);
	copy_col(st, 14, s->source, sizeof(s->source));
}

static int snap_bind(sqlite3_stmt *st, const struct cat_snapshot *s)
{
	int i = 1;

	sqlite3_bind_text(st, i++, s->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, s->account, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, s->region, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, s->volume_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)s->volume_size_gib);
	sqlite3_bind_text(st, i++, s->description, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, s->state, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, s->state_message, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, i++, s->progress);
	sqlite3_bind_text(st, i++, s->start_time, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, s->parent, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, s->lineage, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, i++, s->encrypted);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)s->data_size);
	sqlite3_bind_text(st, i++, s->source, -1, SQLITE_STATIC);
	return i;
}

int cat_snapshot_insert(struct cat *c, const struct cat_snapshot *s)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->db,
			       "INSERT INTO snapshots (" SNAP_COLS
			       ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	snap_bind(st, s);
	return step_done(c, st);
}

int cat_snapshot_update(struct cat *c, const struct cat_snapshot *s)
{
	sqlite3_stmt *st;
	int i;

	if (sqlite3_prepare_v2(c->db,
			       "UPDATE snapshots SET id=?1, account=?2, region=?3, volume_id=?4,"
			       " volume_size_gib=?5, description=?6, state=?7, state_message=?8,"
			       " progress=?9, start_time=?10, parent=?11, lineage=?12, encrypted=?13,"
			       " data_size=?14, source=?15 WHERE id=?16",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	i = snap_bind(st, s);
	sqlite3_bind_text(st, i, s->id, -1, SQLITE_STATIC);
	return step_done(c, st);
}

int cat_snapshot_delete(struct cat *c, const char *id)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->db, "DELETE FROM snapshots WHERE id=?", -1, &st, NULL) !=
	    SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	return step_done(c, st);
}

int cat_snapshot_get(struct cat *c, const char *id, struct cat_snapshot *out)
{
	sqlite3_stmt *st;
	int rc, ret;

	if (sqlite3_prepare_v2(c->db, "SELECT " SNAP_COLS " FROM snapshots WHERE id=?", -1, &st,
			       NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		snap_from_row(st, out);
		ret = 0;
	} else {
		ret = rc == SQLITE_DONE ? -ENOENT : -EIO;
	}
	sqlite3_finalize(st);
	return ret;
}

int cat_snapshot_each(struct cat *c, const char *region,
		      int (*fn)(void *arg, const struct cat_snapshot *s), void *arg)
{
	sqlite3_stmt *st;
	int rc, ret = 0;

	if (sqlite3_prepare_v2(c->db,
			       "SELECT " SNAP_COLS " FROM snapshots WHERE ?1 IS NULL OR region=?1"
			       " ORDER BY seq",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	if (region)
		sqlite3_bind_text(st, 1, region, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct cat_snapshot s;
		snap_from_row(st, &s);
		ret = fn(arg, &s);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = -EIO;
	sqlite3_finalize(st);
	return ret;
}

/* ---- tags ------------------------------------------------------------------------------ */

static void tag_from_row(sqlite3_stmt *st, struct cat_tag *t)
{
	copy_col(st, 0, t->resource, sizeof(t->resource));
	copy_col(st, 1, t->key, sizeof(t->key));
	copy_col(st, 2, t->value, sizeof(t->value));
}

int cat_tags_get(struct cat *c, const char *resource, struct cat_tag **out, size_t *n)
{
	struct cat_tag *v = NULL;
	size_t cap = 0;
	sqlite3_stmt *st;
	int rc, ret = 0;

	*out = NULL;
	*n = 0;
	if (sqlite3_prepare_v2(c->db,
			       "SELECT resource_id, key, value FROM tags WHERE resource_id=?"
			       " ORDER BY key",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, resource, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			struct cat_tag *nv;
			cap = cap ? 2 * cap : 8;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				ret = -ENOMEM;
				break;
			}
			v = nv;
		}
		tag_from_row(st, &v[(*n)++]);
	}
	if (!ret && rc != SQLITE_DONE)
		ret = -EIO;
	sqlite3_finalize(st);
	if (ret) {
		free(v);
		*n = 0;
		return ret;
	}
	*out = v;
	return 0;
}

int cat_tags_each(struct cat *c, int (*fn)(void *arg, const struct cat_tag *t), void *arg)
{
	sqlite3_stmt *st;
	struct cat_tag *t;
	int rc, ret = 0;

	t = malloc(sizeof(*t)); /* 1.5 KiB: not on the caller's stack */
	if (!t)
		return -ENOMEM;
	if (sqlite3_prepare_v2(c->db,
			       "SELECT resource_id, key, value FROM tags ORDER BY resource_id, key",
			       -1, &st, NULL) != SQLITE_OK) {
		free(t);
		return -EIO;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		tag_from_row(st, t);
		ret = fn(arg, t);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = -EIO;
	sqlite3_finalize(st);
	free(t);
	return ret;
}

int cat_tags_set(struct cat *c, const char *resource, const char *key, const char *value)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->db,
			       "INSERT INTO tags (resource_id, key, value) VALUES (?1, ?2, ?3)"
			       " ON CONFLICT (resource_id, key) DO UPDATE SET value=excluded.value",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, resource, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
	return step_done(c, st);
}

int cat_tags_delete(struct cat *c, const char *resource, const char *key, const char *value)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->db,
			       "DELETE FROM tags WHERE resource_id=?1 AND (?2 IS NULL OR key=?2)"
			       " AND (?3 IS NULL OR value=?3)",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, resource, -1, SQLITE_STATIC);
	if (key)
		sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
	if (value)
		sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
	return step_done(c, st);
}

/* ---- documents ----------------------------------------------------------------------- */

int cat_doc_put(struct cat *c, const char *kind, const char *id, const char *account,
		const char *region, struct json_object *doc)
{
	sqlite3_stmt *st;
	const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);

	if (sqlite3_prepare_v2(c->db,
			       "INSERT INTO docs (kind, id, account, region, json) VALUES (?,?,?,?,?)"
			       " ON CONFLICT (kind, id) DO UPDATE SET json=excluded.json,"
			       " account=excluded.account, region=excluded.region",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, account, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, region, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, text, -1, SQLITE_TRANSIENT);
	return step_done(c, st);
}

static struct json_object *parse_doc(sqlite3_stmt *st, int col)
{
	const char *t = (const char *)sqlite3_column_text(st, col);
	struct json_object *o = t ? json_tokener_parse(t) : NULL;

	if (o && !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		o = NULL;
	}
	return o;
}

int cat_doc_get(struct cat *c, const char *kind, const char *id, struct json_object **out)
{
	sqlite3_stmt *st;
	int rc, ret = -ENOENT;

	if (sqlite3_prepare_v2(c->db, "SELECT json FROM docs WHERE kind=? AND id=?", -1, &st,
			       NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*out = parse_doc(st, 0);
		ret = *out ? 0 : -EUCLEAN;
	} else if (rc != SQLITE_DONE) {
		ret = -EIO;
	}
	sqlite3_finalize(st);
	return ret;
}

int cat_doc_delete(struct cat *c, const char *kind, const char *id)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(c->db, "DELETE FROM docs WHERE kind=? AND id=?", -1, &st, NULL) !=
	    SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
	return step_done(c, st);
}

int cat_doc_each(struct cat *c, const char *kind, const char *region,
		 int (*fn)(void *arg, const char *id, const char *account, struct json_object *doc),
		 void *arg)
{
	sqlite3_stmt *st;
	int rc, ret = 0;

	if (sqlite3_prepare_v2(c->db,
			       "SELECT id, account, json FROM docs WHERE kind=?1 AND"
			       " (?2 IS NULL OR region=?2) ORDER BY seq",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
	if (region)
		sqlite3_bind_text(st, 2, region, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct json_object *o = parse_doc(st, 2);
		if (!o) {
			ret = -EUCLEAN;
			break;
		}
		ret = fn(arg, (const char *)sqlite3_column_text(st, 0),
			 (const char *)sqlite3_column_text(st, 1), o);
		json_object_put(o);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE && rc != SQLITE_ROW)
		ret = -EIO;
	sqlite3_finalize(st);
	return ret;
}
