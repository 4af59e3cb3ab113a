/* SPDX-License-Identifier: MIT */
/*
 * api.c - request plumbing for ebsimd: the action table, EC2-style errors, parameter
 * accessors and the common checks (account, region) every request passes first.
 *
 * Design notes
 * ------------
 * Every rule about what a request may contain lives here or in the action, never in the
 * CLI. Parameters arrive as JSON values named as the EC2 API names them; a value of the
 * wrong JSON type is InvalidParameterValue, an unknown name UnknownParameter, a missing
 * required one MissingParameter. IDs pass check_id() before anything touches the disk.
 */
#include "daemon/daemon_i.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

const char *const regions[] = {
	"us-east-1",	  "us-east-2",	    "us-west-1",      "us-west-2",
	"ca-central-1",	  "sa-east-1",	    "eu-west-1",      "eu-west-2",
	"eu-west-3",	  "eu-central-1",   "eu-north-1",     "ap-south-1",
	"ap-northeast-1", "ap-northeast-2", "ap-southeast-1", "ap-southeast-2",
	NULL,
};

struct action {
	const char *name;
	int (*fn)(struct api_req *r);
};

static const struct action actions[] = {
	{"CreateVolume", act_create_volume},
	{"DescribeVolumes", act_describe_volumes},
	{"DeleteVolume", act_delete_volume},
	{"ModifyVolume", act_modify_volume},
	{"CreateSnapshot", act_create_snapshot},
	{"DescribeSnapshots", act_describe_snapshots},
	{"DeleteSnapshot", act_delete_snapshot},
	{"CopySnapshot", act_copy_snapshot},
	{"ListSnapshotBlocks", act_list_snapshot_blocks},
	{"ListChangedBlocks", act_list_changed_blocks},
	{"InitializeVolume", act_initialize_volume},
	{"CheckStore", act_check_store},
	{"CreateTags", act_create_tags},
	{"DeleteTags", act_delete_tags},
	{"DescribeTags", act_describe_tags},
	{"RegisterImage", act_register_image},
	{"DescribeImages", act_describe_images},
	{"DeregisterImage", act_deregister_image},
	{"CreateImage", act_create_image},
	{"CopyImage", act_copy_image},
	{"ModifyImageAttribute", act_modify_image_attribute},
	{"DescribeImageAttribute", act_describe_image_attribute},
	{"ResetImageAttribute", act_reset_image_attribute},
	{"RunInstances", act_run_instances},
	{"DescribeInstances", act_describe_instances},
	{"StopInstances", act_stop_instances},
	{"StartInstances", act_start_instances},
	{"RebootInstances", act_reboot_instances},
	{"TerminateInstances", act_terminate_instances},
	{"ModifyInstanceAttribute", act_modify_instance_attribute},
	{"AttachVolume", act_attach_volume},
	{"DetachVolume", act_detach_volume},
	{"BuildBaseImages", act_build_base_images},
};

int api_error(struct api_req *r, const char *code, const char *fmt, ...)
{
	va_list ap;

	snprintf(r->code, sizeof(r->code), "%s", code);
	va_start(ap, fmt);
	vsnprintf(r->message, sizeof(r->message), fmt, ap);
	va_end(ap);
	/* messages quote user input: never let control characters reach a terminal */
	for (char *p = r->message; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return -1;
}

static json_object *param_get(struct api_req *r, const char *name)
{
	json_object *v = NULL;

	json_object_object_get_ex(r->params, name, &v);
	return v;
}

int param_str(struct api_req *r, const char *name, bool required, const char **out)
{
	json_object *v = param_get(r, name);

	*out = NULL;
	if (!v) {
		if (required)
			return api_error(r, "MissingParameter",
					 "The request must contain the parameter %s", name);
		return 0;
	}
	if (!json_object_is_type(v, json_type_string))
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: expected a string", name);
	*out = json_object_get_string(v);
	if (strlen(*out) != (size_t)json_object_get_string_len(v))
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: contains a NUL character", name);
	return 1;
}

int param_int(struct api_req *r, const char *name, bool required, int64_t *out)
{
	json_object *v = param_get(r, name);

	if (!v) {
		if (required)
			return api_error(r, "MissingParameter",
					 "The request must contain the parameter %s", name);
		return 0;
	}
	if (!json_object_is_type(v, json_type_int)) {
		const char *s = json_object_get_string(v);
		return api_error(r, "InvalidParameterValue",
				 "Invalid value '%.64s' for parameter %s: expected an integer",
				 s ? s : "", name);
	}
	errno = 0;
	*out = json_object_get_int64(v);
	if (errno == EINVAL || *out == INT64_MAX || *out == INT64_MIN)
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: out of range", name);
	return 1;
}

int param_bool(struct api_req *r, const char *name, bool *out)
{
	json_object *v = param_get(r, name);

	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: expected true or false", name);
	*out = json_object_get_boolean(v);
	return 1;
}

int param_str_list(struct api_req *r, const char *name, json_object **out)
{
	json_object *v = param_get(r, name);

	*out = NULL;
	if (!v)
		return 0;
	if (json_object_is_type(v, json_type_string)) {
		/* one value: wrap it so callers see a list */
		json_object *a = json_object_new_array();
		json_object_array_add(a, json_object_get(v));
		json_object_object_add(r->params, name, a);
		v = a;
	}
	if (!json_object_is_type(v, json_type_array))
		return api_error(r, "InvalidParameterValue",
				 "Invalid value for parameter %s: expected a list of strings", name);
	for (size_t i = 0; i < json_object_array_length(v); i++) {
		json_object *e = json_object_array_get_idx(v, i);
		if (!json_object_is_type(e, json_type_string))
			return api_error(r, "InvalidParameterValue",
					 "Invalid value for parameter %s: expected a list of strings",
					 name);
		/* as param_str: "vol-...\0/../x" must not pass for "vol-..." */
		if (strlen(json_object_get_string(e)) != (size_t)json_object_get_string_len(e))
			return api_error(r, "InvalidParameterValue",
					 "Invalid value for parameter %s: contains a NUL character",
					 name);
	}
	*out = v;
	return 1;
}

int params_allow(struct api_req *r, const char *const *names)
{
	json_object_object_foreach(r->params, key, val)
	{
		bool ok = false;
		(void)val;
		for (const char *const *n = names; *n && !ok; n++)
			ok = !strcmp(*n, key);
		if (!ok)
			return api_error(r, "UnknownParameter",
					 "The parameter %.64s is not recognized by %s", key, r->action);
	}
	return 0;
}

bool glob_match(const char *pat, const char *s)
{
	/* iterative, with one backtrack point: linear in practice, no recursion to exhaust */
	const char *star = NULL, *retry = NULL;

	while (*s) {
		if (*pat == '*') {
			star = pat++;
			retry = s;
		} else if (*pat == '?' || *pat == *s) {
			pat++;
			s++;
		} else if (star) {
			pat = star + 1;
			s = ++retry;
		} else {
			return false;
		}
	}
	while (*pat == '*')
		pat++;
	return !*pat;
}

static const char *filter_field(const struct filter_map *map, const char *name)
{
	for (; map->filter; map++)
		if (!strcmp(map->filter, name))
			return map->field;
	return NULL;
}

int filters_parse(struct api_req *r, const struct filter_map *map, json_object **out)
{
	json_object *f = NULL;

	*out = NULL;
	if (!json_object_object_get_ex(r->params, "Filters", &f))
		return 0;
	if (!json_object_is_type(f, json_type_array))
		goto bad;
	for (size_t i = 0; i < json_object_array_length(f); i++) {
		json_object *e = json_object_array_get_idx(f, i), *name, *values;
		if (!json_object_is_type(e, json_type_object) ||
		    !json_object_object_get_ex(e, "Name", &name) ||
		    !json_object_is_type(name, json_type_string) ||
		    !json_object_object_get_ex(e, "Values", &values) ||
		    !json_object_is_type(values, json_type_array))
			goto bad;
		for (size_t k = 0; k < json_object_array_length(values); k++)
			if (!json_object_is_type(json_object_array_get_idx(values, k),
						 json_type_string))
				goto bad;
		const char *n = json_object_get_string(name);
		if (!filter_field(map, n) && strncmp(n, "tag:", 4) && strcmp(n, "tag-key"))
			return api_error(r, "InvalidParameterValue", "The filter '%.64s' is invalid", n);
	}
	*out = f;
	return 0;
bad:
	return api_error(r, "InvalidParameterValue",
			 "Filters must be a list of {\"Name\": ..., \"Values\": [...]}");
}

/* Whether any of the filter's values matches s (NULL never matches). */
static bool values_match(json_object *values, const char *s)
{
	for (size_t k = 0; s && k < json_object_array_length(values); k++)
		if (glob_match(json_object_get_string(json_object_array_get_idx(values, k)), s))
			return true;
	return false;
}

/* tag:<key> (the value of the object's tag <key>) and tag-key (any of its keys), on the
 * object's "Tags": [{"Key", "Value"}]. An object without tags matches neither. */
static bool tag_filter_match(const char *name, json_object *values, json_object *obj)
{
	json_object *tags;

	if (!json_object_object_get_ex(obj, "Tags", &tags) ||
	    !json_object_is_type(tags, json_type_array))
		return false;
	for (size_t i = 0; i < json_object_array_length(tags); i++) {
		json_object *t = json_object_array_get_idx(tags, i), *k, *v;
		const char *key;

		if (!json_object_object_get_ex(t, "Key", &k))
			continue;
		key = json_object_get_string(k);
		if (!strcmp(name, "tag-key")) {
			if (values_match(values, key))
				return true;
		} else if (!strcmp(name + 4, key)) {
			/* keys are unique: this is the one tag that can match */
			return json_object_object_get_ex(t, "Value", &v) &&
			       values_match(values, json_object_get_string(v));
		}
	}
	return false;
}

bool filters_match(json_object *filters, const struct filter_map *map, json_object *obj)
{
	for (size_t i = 0; filters && i < json_object_array_length(filters); i++) {
		json_object *f = json_object_array_get_idx(filters, i), *name, *values, *fv;
		const char *n, *field, *val = NULL;

		json_object_object_get_ex(f, "Name", &name);
		json_object_object_get_ex(f, "Values", &values);
		n = json_object_get_string(name);
		field = filter_field(map, n);
		if (!field) {
			/* filters_parse let only tag:<key> and tag-key through */
			if (!tag_filter_match(n, values, obj))
				return false;
			continue;
		}
		if (json_object_object_get_ex(obj, field, &fv))
			val = json_object_get_string(fv);
		if (!values_match(values, val))
			return false;
	}
	return true;
}

int paginate(struct api_req *r, json_object *all, const char *idkey, int64_t min, int64_t max,
	     json_object **page, json_object **next)
{
	const char *token = NULL;
	int64_t want = 0;
	int has_max;
	size_t n = json_object_array_length(all), start = 0, end;

	*page = all;
	*next = NULL;
	if ((has_max = param_int(r, "MaxResults", false, &want)) < 0 ||
	    param_str(r, "NextToken", false, &token) < 0)
		goto out_err;
	if (has_max && (want < min || want > max)) {
		api_error(r, "InvalidParameterValue",
			  "Value (%lld) for parameter maxResults is invalid. Expecting a value "
			  "between %lld and %lld.",
			  (long long)want, (long long)min, (long long)max);
		goto out_err;
	}
	if (!has_max && !token)
		return 0;
	if (token) {
		while (start < n && strcmp(json_object_get_string(json_object_object_get(
						   json_object_array_get_idx(all, start), idkey)),
					   token))
			start++;
		if (start == n) {
			api_error(r, "InvalidParameterValue", "Invalid NextToken");
			goto out_err;
		}
	}
	end = has_max ? MIN(n, start + (size_t)want) : n;
	*page = json_object_new_array();
	for (size_t i = start; i < end; i++)
		json_object_array_add(*page, json_object_get(json_object_array_get_idx(all, i)));
	if (end < n)
		*next = json_object_get(
			json_object_object_get(json_object_array_get_idx(all, end), idkey));
	json_object_put(all);
	return 0;
out_err:
	json_object_put(all);
	*page = NULL;
	return -1;
}

int check_id(struct api_req *r, const char *prefix, const char *kind, const char *id)
{
	char code[64];

	if (id_valid(prefix, id))
		return 0;
	snprintf(code, sizeof(code), "%sID.Malformed", kind);
	return api_error(r, code, "Invalid id: \"%.80s\" (expecting \"%s-...\")", id, prefix);
}

static bool account_ok(const char *a)
{
	if (!a || strlen(a) != 12)
		return false;
	for (int i = 0; i < 12; i++)
		if (a[i] < '0' || a[i] > '9')
			return false;
	return true;
}

int api_dispatch(struct api_req *r)
{
	bool region_ok = false;

	if (!account_ok(r->account))
		return api_error(r, "AuthFailure",
				 "The account '%.64s' is not valid: an account ID is 12 digits",
				 r->account ? r->account : "");
	for (size_t i = 0; r->region && regions[i]; i++)
		region_ok |= !strcmp(regions[i], r->region);
	if (!region_ok)
		return api_error(r, "InvalidParameterValue",
				 "The region '%.64s' does not exist in ebsim", r->region ? r->region : "");
	for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
		if (!strcmp(actions[i].name, r->action)) {
			base_ensure(r->d, r->region); /* a region's first request offers them */
			return actions[i].fn(r);
		}
	return api_error(r, "InvalidAction", "The action %.64s is not valid for this web service.",
			 r->action);
}
