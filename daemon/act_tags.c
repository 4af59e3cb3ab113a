/* SPDX-License-Identifier: MIT */
/*
 * act_tags.c - EC2 tags on volumes and snapshots: CreateTags, DeleteTags, DescribeTags,
 * the TagSpecifications of the create actions, and the Tags of their output.
 *
 * Design notes
 * ------------
 * The rules are EC2's: a key is 1-128 characters and does not start with "aws:" (in any
 * case), a value is 0-256 characters (counted as Unicode characters of valid UTF-8), keys
 * are unique per resource, a resource has at most 50 tags (TagLimitExceeded). CreateTags
 * overwrites the value of a key the resource already has. DeleteTags deletes a key whatever
 * its value when the tag has no Value, and only when its value matches when it has one; no
 * Tags at all deletes every tag of the resources.
 *
 * Every check runs before anything changes, and a request's changes go to the catalog in
 * one transaction: a request that fails leaves no tag added or removed. Resource IDs are
 * vol-... or snap-... of the request's account and region; any other shape is InvalidID.
 *
 * Tags are stored in the catalog (persistence/catalog.h), which deletes them with their
 * resource's row. Output objects carry them as "Tags": [{"Key", "Value"}] ordered by key,
 * and omit the member when there are none, as awscli shows EC2's replies; filters_match()
 * evaluates the tag:<key> and tag-key filters on that member.
 */
#include "daemon/daemon_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TAGS_MAX 50	    /* tags per resource */
#define TAG_KEY_CHARS 128   /* characters */
#define TAG_VALUE_CHARS 256 /* characters */
#define TAG_RESOURCES_MAX 1000

/* Characters in s when it is valid UTF-8 (no overlongs, surrogates or values past
 * U+10FFFF); -1 otherwise. */
static long utf8_chars(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	long n = 0;

	while (*p) {
		unsigned char c = *p;
		int more;
		unsigned long cp;

		if (c < 0x80) {
			p++;
			n++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			more = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			more = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			more = 3;
			cp = c & 0x07;
		} else {
			return -1;
		}
		p++;
		for (int i = 0; i < more; i++, p++) {
			if ((*p & 0xc0) != 0x80)
				return -1;
			cp = cp << 6 | (*p & 0x3f);
		}
		if ((more == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (more == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return -1;
		n++;
	}
	return n;
}

/* How much of valid UTF-8 text s to quote in a message: at most 64 bytes, cut at the
 * start of a character so the message stays valid UTF-8. */
static int echo_len(const char *s)
{
	size_t n = strnlen(s, 65);

	if (n <= 64)
		return (int)n;
	n = 64;
	while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	return (int)n;
}

/* A JSON string member of a tag: 1 present, 0 absent, -1 error recorded. */
static int tag_member(struct api_req *r, json_object *tag, const char *name, const char *what,
		      const char **out)
{
	json_object *v;

	*out = NULL;
	if (!json_object_object_get_ex(tag, name, &v))
		return 0;
	if (!json_object_is_type(v, json_type_string))
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: the %s of a tag must be a string",
				 what, name);
	*out = json_object_get_string(v);
	if (strlen(*out) != (size_t)json_object_get_string_len(v))
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: the %s of a tag contains a NUL "
				 "character",
				 what, name);
	return 1;
}

/* Check one tag {"Key", "Value"} of parameter `what`. value_required: a tag to set (a
 * missing Value is then an empty one); otherwise a tag to delete, whose Value may be
 * absent. *key and *value (NULL when absent) are borrowed from tag. */
static int tag_check(struct api_req *r, json_object *tag, const char *what, bool to_set,
		     const char **key, const char **value)
{
	long n;

	if (!json_object_is_type(tag, json_type_object))
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: a tag must be {\"Key\": ..., "
				 "\"Value\": ...}",
				 what);
	json_object_object_foreach(tag, name, val)
	{
		(void)val;
		if (strcmp(name, "Key") && strcmp(name, "Value"))
			return api_error(r, "InvalidParameterValue",
					 "Invalid value for parameter %s: a tag has no member "
					 "'%.64s'",
					 what, name);
	}
	if (tag_member(r, tag, "Key", what, key) < 0 ||
	    tag_member(r, tag, "Value", what, value) < 0)
		return -1;
	if (!*key)
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: a tag must have a Key", what);
	n = utf8_chars(*key);
	if (n < 0)
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: a tag key is not valid UTF-8.",
				 what);
	if (n < 1 || n > TAG_KEY_CHARS)
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: a tag key must be 1 to %d "
				 "characters long, not %ld.",
				 what, TAG_KEY_CHARS, n);
	if (!strncasecmp(*key, "aws:", 4))
		return api_error(
		    r, "InvalidParameterValue",
		    "Value (%.*s) for parameter key is invalid. Tag keys starting with "
		    "'aws:' are reserved for internal use",
		    echo_len(*key), *key);
	if (*value) {
		n = utf8_chars(*value);
		if (n < 0)
			return api_error(
			    r, "InvalidParameterValue",
			    "Invalid value for parameter %s: the value of tag '%.*s' is "
			    "not valid UTF-8.",
			    what, echo_len(*key), *key);
		if (n > TAG_VALUE_CHARS)
			return api_error(
			    r, "InvalidParameterValue",
			    "Invalid value for parameter %s: the value of tag '%.*s' is "
			    "%ld characters long; at most %d are allowed.",
			    what, echo_len(*key), *key, n, TAG_VALUE_CHARS);
	} else if (to_set) {
		*value = "";
	}
	return 0;
}

/* Check a list of tags to set (Key unique, at most 50). */
static int tags_check_set(struct api_req *r, json_object *tags, const char *what)
{
	size_t n = json_object_array_length(tags);
	const char *key, *value;

	if (n > TAGS_MAX)
		return api_error(
		    r, "TagLimitExceeded",
		    "The maximum number of tags per resource is %d; the request has %zu.", TAGS_MAX,
		    n);
	for (size_t i = 0; i < n; i++) {
		if (tag_check(r, json_object_array_get_idx(tags, i), what, true, &key, &value))
			return -1;
		for (size_t k = 0; k < i; k++) {
			json_object *o =
			    json_object_object_get(json_object_array_get_idx(tags, k), "Key");
			if (!strcmp(json_object_get_string(o), key))
				return api_error(r, "InvalidParameterValue",
						 "Duplicate tag key '%.*s' in parameter %s.",
						 echo_len(key), key, what);
		}
	}
	return 0;
}

int tag_specs_parse(struct api_req *r, const char *type, json_object **tags)
{
	json_object *specs, *rt, *t;

	*tags = NULL;
	if (!json_object_object_get_ex(r->params, "TagSpecifications", &specs))
		return 0;
	if (!json_object_is_type(specs, json_type_array))
		goto bad;
	for (size_t i = 0; i < json_object_array_length(specs); i++) {
		json_object *s = json_object_array_get_idx(specs, i);
		const char *rtype;

		if (!json_object_is_type(s, json_type_object))
			goto bad;
		json_object_object_foreach(s, name, val)
		{
			(void)val;
			if (strcmp(name, "ResourceType") && strcmp(name, "Tags"))
				goto bad;
		}
		if (!json_object_object_get_ex(s, "ResourceType", &rt) ||
		    !json_object_is_type(rt, json_type_string) ||
		    !json_object_object_get_ex(s, "Tags", &t) ||
		    !json_object_is_type(t, json_type_array))
			goto bad;
		rtype = json_object_get_string(rt);
		if (strcmp(rtype, type))
			return api_error(r, "InvalidParameterValue",
					 "'%.64s' is not a valid taggable resource type for this "
					 "operation.",
					 rtype);
		if (*tags)
			return api_error(r, "InvalidParameterValue",
					 "The resource type '%s' is given more than once in "
					 "TagSpecifications.",
					 type);
		if (tags_check_set(r, t, "TagSpecifications"))
			return -1;
		*tags = t;
	}
	if (*tags && !json_object_array_length(*tags))
		*tags = NULL;
	return 0;
bad:
	return api_error(r, "InvalidParameterValue",
			 "TagSpecifications must be a list of {\"ResourceType\": ..., \"Tags\": "
			 "[{\"Key\": ..., \"Value\": ...}, ...]}");
}

int tags_put(struct daemon *d, const char *resource, json_object *tags)
{
	for (size_t i = 0; tags && i < json_object_array_length(tags); i++) {
		json_object *t = json_object_array_get_idx(tags, i), *v;
		const char *value = "";
		int ret;

		if (json_object_object_get_ex(t, "Value", &v))
			value = json_object_get_string(v);
		ret = cat_tags_set(d->cat, resource,
				   json_object_get_string(json_object_object_get(t, "Key")), value);
		if (ret)
			return ret;
	}
	return 0;
}

/* [{"Key", "Value"}, ...] of a resource, ordered by key; NULL when it has none. */
static json_object *tags_array(struct daemon *d, const char *resource)
{
	struct cat_tag *t;
	json_object *a;
	size_t n;
	int ret;

	ret = cat_tags_get(d->cat, resource, &t, &n);
	if (ret) {
		log_err("reading the tags of %s: %s", resource, strerror(-ret));
		return NULL;
	}
	if (!n)
		return NULL;
	a = json_object_new_array();
	for (size_t i = 0; i < n; i++) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "Key", json_object_new_string(t[i].key));
		json_object_object_add(o, "Value", json_object_new_string(t[i].value));
		json_object_array_add(a, o);
	}
	free(t);
	return a;
}

void tags_add_json(struct daemon *d, json_object *o, const char *resource)
{
	json_object *a = tags_array(d, resource);

	if (a)
		json_object_object_add(o, "Tags", a);
}

/* ---- resources ------------------------------------------------------------------------- */

/* The type ("volume" or "snapshot") of a resource the request may see; records InvalidID
 * or the resource's NotFound error. */
static int resource_lookup(struct api_req *r, const char *id, const char **type)
{
	if (id_valid("vol", id)) {
		struct cat_volume v;
		*type = "volume";
		return volume_lookup(r, id, &v);
	}
	if (id_valid("snap", id)) {
		struct cat_snapshot s;
		*type = "snapshot";
		return snapshot_lookup(r, id, &s);
	}
	return api_error(r, "InvalidID", "The ID '%.80s' is not valid", id);
}

/* The Resources parameter, every one of them checked. */
static int resources_param(struct api_req *r, json_object **out)
{
	const char *type;
	size_t n;

	if (param_str_list(r, "Resources", out) < 0)
		return -1;
	if (!*out || !json_object_array_length(*out))
		return api_error(r, "MissingParameter",
				 "The request must contain the parameter resourceIdSet");
	n = json_object_array_length(*out);
	if (n > TAG_RESOURCES_MAX)
		return api_error(
		    r, "InvalidParameterValue",
		    "At most %d resource IDs may be given at once; the request has %zu.",
		    TAG_RESOURCES_MAX, n);
	for (size_t i = 0; i < n; i++)
		if (resource_lookup(r, json_object_get_string(json_object_array_get_idx(*out, i)),
				    &type))
			return -1;
	return 0;
}

/* Run the changes of one request in a transaction; fn returns 0 or -errno. */
static int tags_txn(struct api_req *r,
		    int (*fn)(struct api_req *r, json_object *res, json_object *tags),
		    json_object *res, json_object *tags)
{
	struct cat *c = r->d->cat;
	int ret;

	ret = cat_begin(c);
	if (ret)
		return api_error(r, "InternalError", "catalog update failed: %s", strerror(-ret));
	ret = fn(r, res, tags);
	if (!ret)
		ret = cat_commit(c);
	if (ret) {
		cat_rollback(c);
		return api_error(r, "InternalError", "catalog update failed: %s", strerror(-ret));
	}
	return 0;
}

/* ---- CreateTags ------------------------------------------------------------------------ */

/* Whether key is among the first n tags of t. */
static bool cat_tags_have(const struct cat_tag *t, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(t[i].key, key))
			return true;
	return false;
}

static int create_tags_apply(struct api_req *r, json_object *res, json_object *tags)
{
	for (size_t i = 0; i < json_object_array_length(res); i++) {
		int ret =
		    tags_put(r->d, json_object_get_string(json_object_array_get_idx(res, i)), tags);
		if (ret)
			return ret;
	}
	return 0;
}

int act_create_tags(struct api_req *r)
{
	static const char *const allowed[] = {"Resources", "Tags", "DryRun", NULL};
	json_object *res, *tags;

	if (params_allow(r, allowed) || resources_param(r, &res))
		return -1;
	if (!json_object_object_get_ex(r->params, "Tags", &tags))
		return api_error(r, "MissingParameter",
				 "The request must contain the parameter Tags");
	if (!json_object_is_type(tags, json_type_array) || !json_object_array_length(tags))
		return api_error(r, "InvalidParameterValue",
				 "Tags must be a non-empty list of {\"Key\": ..., \"Value\": ...}");
	if (tags_check_set(r, tags, "Tags"))
		return -1;
	/* the limit counts what each resource will have: its tags and the new keys */
	for (size_t i = 0; i < json_object_array_length(res); i++) {
		const char *id = json_object_get_string(json_object_array_get_idx(res, i));
		struct cat_tag *t;
		size_t n, total;
		int ret = cat_tags_get(r->d->cat, id, &t, &n);

		if (ret)
			return api_error(r, "InternalError", "catalog read failed: %s",
					 strerror(-ret));
		total = n;
		for (size_t k = 0; k < json_object_array_length(tags); k++)
			total += !cat_tags_have(t, n,
						json_object_get_string(json_object_object_get(
						    json_object_array_get_idx(tags, k), "Key")));
		free(t);
		if (total > TAGS_MAX)
			return api_error(r, "TagLimitExceeded",
					 "The maximum number of tags per resource is %d: %s would "
					 "have %zu.",
					 TAGS_MAX, id, total);
	}
	if (tags_txn(r, create_tags_apply, res, tags))
		return -1;
	log_info("tagged %zu resource(s) with %zu tag(s)", json_object_array_length(res),
		 json_object_array_length(tags));
	r->result = json_object_new_object();
	return 0;
}

/* ---- DeleteTags ------------------------------------------------------------------------ */

static int delete_tags_apply(struct api_req *r, json_object *res, json_object *tags)
{
	for (size_t i = 0; i < json_object_array_length(res); i++) {
		const char *id = json_object_get_string(json_object_array_get_idx(res, i));
		size_t n = tags ? json_object_array_length(tags) : 0;
		int ret = 0;

		if (!n)
			ret = cat_tags_delete(r->d->cat, id, NULL, NULL);
		for (size_t k = 0; k < n && (!ret || ret == -ENOENT); k++) {
			json_object *t = json_object_array_get_idx(tags, k), *v;
			const char *value = NULL;

			if (json_object_object_get_ex(t, "Value", &v))
				value = json_object_get_string(v);
			ret = cat_tags_delete(
			    r->d->cat, id, json_object_get_string(json_object_object_get(t, "Key")),
			    value);
		}
		if (ret && ret != -ENOENT) /* deleting a tag that is not there is no error */
			return ret;
	}
	return 0;
}

int act_delete_tags(struct api_req *r)
{
	static const char *const allowed[] = {"Resources", "Tags", "DryRun", NULL};
	json_object *res, *tags = NULL;
	const char *key, *value;

	if (params_allow(r, allowed) || resources_param(r, &res))
		return -1;
	if (json_object_object_get_ex(r->params, "Tags", &tags)) {
		if (!json_object_is_type(tags, json_type_array))
			return api_error(r, "InvalidParameterValue",
					 "Tags must be a list of {\"Key\": ..., \"Value\": ...}");
		for (size_t i = 0; i < json_object_array_length(tags); i++)
			if (tag_check(r, json_object_array_get_idx(tags, i), "Tags", false, &key,
				      &value))
				return -1;
	}
	if (tags_txn(r, delete_tags_apply, res, tags))
		return -1;
	r->result = json_object_new_object();
	return 0;
}

/* ---- DescribeTags ---------------------------------------------------------------------- */

static const struct filter_map tag_filters[] = {
    {"key", "Key"},
    {"value", "Value"},
    {"resource-id", "ResourceId"},
    {"resource-type", "ResourceType"},
    {NULL, NULL},
};

struct dtags_ctx {
	struct api_req *r;
	json_object *filters, *out;
	char resource[ID_MAX]; /* the resource whose tags are being read */
	const char *type;      /* its type; NULL when the request may not see it */
	json_object *all;      /* all its tags, for the tag:<key> and tag-key filters */
};

/* Whether the request may see a resource; its type when it may. */
static const char *visible_type(struct api_req *r, const char *id)
{
	struct cat_volume v;
	struct cat_snapshot s;

	if (id_valid("vol", id) && !cat_volume_get(r->d->cat, id, &v) &&
	    !strcmp(v.account, r->account) && !strcmp(v.region, r->region) &&
	    strcmp(v.state, "deleting"))
		return "volume";
	if (id_valid("snap", id) && !cat_snapshot_get(r->d->cat, id, &s) &&
	    !strcmp(s.account, r->account) && !strcmp(s.region, r->region))
		return "snapshot";
	return NULL;
}

static int describe_tag_one(void *arg, const struct cat_tag *t)
{
	struct dtags_ctx *c = arg;
	json_object *o;

	if (strcmp(c->resource, t->resource)) {
		snprintf(c->resource, sizeof(c->resource), "%s", t->resource);
		c->type = visible_type(c->r, t->resource);
		json_object_put(c->all);
		c->all = c->type && c->filters ? tags_array(c->r->d, t->resource) : NULL;
	}
	if (!c->type)
		return 0;
	o = json_object_new_object();
	json_object_object_add(o, "Key", json_object_new_string(t->key));
	json_object_object_add(o, "ResourceId", json_object_new_string(t->resource));
	json_object_object_add(o, "ResourceType", json_object_new_string(c->type));
	json_object_object_add(o, "Value", json_object_new_string(t->value));
	if (c->all)
		json_object_object_add(o, "Tags", json_object_get(c->all));
	if (!filters_match(c->filters, tag_filters, o)) {
		json_object_put(o);
		return 0;
	}
	json_object_object_del(o, "Tags");
	json_object_array_add(c->out, o);
	return 0;
}

/* NextToken: "<resource-id>/<key in hex>" of the first tag of the next page. The list is
 * ordered by (resource, key), so a page starts at the first tag not before the token,
 * even when that tag was deleted meanwhile. */
static void tag_token(json_object *t, char **out)
{
	const char *id = json_object_get_string(json_object_object_get(t, "ResourceId"));
	const char *key = json_object_get_string(json_object_object_get(t, "Key"));
	size_t n = strlen(id), k = strlen(key);
	char *s = malloc(n + 1 + 2 * k + 1);

	*out = s;
	if (!s)
		return;
	s += sprintf(s, "%s/", id);
	for (size_t i = 0; i < k; i++)
		s += sprintf(s, "%02x", (unsigned char)key[i]);
}

static int describe_tags_page(struct api_req *r, json_object *all)
{
	const char *token = NULL;
	int64_t want = 0;
	int has_max;
	size_t n = json_object_array_length(all), start = 0, end;
	json_object *page;

	if ((has_max = param_int(r, "MaxResults", false, &want)) < 0 ||
	    param_str(r, "NextToken", false, &token) < 0)
		return -1;
	if (has_max && (want < 5 || want > 1000))
		return api_error(
		    r, "InvalidParameterValue",
		    "Value (%lld) for parameter maxResults is invalid. Expecting a value "
		    "between 5 and 1000.",
		    (long long)want);
	if (token) {
		const char *slash = strchr(token, '/');
		if (!slash || (size_t)(slash - token) >= ID_MAX)
			return api_error(r, "InvalidParameterValue", "Invalid NextToken");
		while (start < n) {
			char *t;
			tag_token(json_object_array_get_idx(all, start), &t);
			if (!t)
				return api_error(r, "InternalError", "out of memory");
			/* ids hold no '/' and two ids differ before either ends (vol- and snap-
			 * ids of one length each), so this orders by (id, key) */
			int cmp = strcmp(t, token);
			free(t);
			if (cmp >= 0)
				break;
			start++;
		}
	}
	end = has_max ? MIN(n, start + (size_t)want) : n;
	page = json_object_new_array();
	for (size_t i = start; i < end; i++)
		json_object_array_add(page, json_object_get(json_object_array_get_idx(all, i)));
	r->result = json_object_new_object();
	json_object_object_add(r->result, "Tags", page);
	if (end < n) {
		char *t;
		tag_token(json_object_array_get_idx(all, end), &t);
		if (t)
			json_object_object_add(r->result, "NextToken", json_object_new_string(t));
		free(t);
	}
	return 0;
}

int act_describe_tags(struct api_req *r)
{
	static const char *const allowed[] = {"Filters", "MaxResults", "NextToken", "DryRun", NULL};
	struct dtags_ctx c = {.r = r};
	int ret;

	if (params_allow(r, allowed) || filters_parse(r, tag_filters, &c.filters))
		return -1;
	c.out = json_object_new_array();
	ret = cat_tags_each(r->d->cat, describe_tag_one, &c);
	json_object_put(c.all);
	if (ret) {
		json_object_put(c.out);
		return api_error(r, "InternalError", "catalog read failed: %s", strerror(-ret));
	}
	ret = describe_tags_page(r, c.out);
	json_object_put(c.out);
	return ret;
}
