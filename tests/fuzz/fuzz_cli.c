/* SPDX-License-Identifier: MIT */
/*
 * fuzz_cli.c - libFuzzer target for the ebsim CLI (tools/ebsim.c): its command-line parser
 * (verbs, --opt value / --opt=value, lists, JSON and awscli shorthand values, filters,
 * help) and its reading of ebsimd's replies (cli_answer, the Result printer, check's
 * verdict) - the two places where it reads text it did not write.
 *
 * Design notes
 * ------------
 * The CLI is one file whose functions are static, so this target includes it with its
 * main() renamed (#define main before the #include): no change to tools/ebsim.c, no
 * socket. Nothing is sent anywhere: cli_run (connect, send) is never called.
 *
 * Input: byte 0 chooses the mode.
 *   even  argv: the rest, split at NUL bytes, is argv[1..] (at most MAX_ARGS words); then
 *         parse, check, and for a runnable command build and serialise the request that
 *         would be sent. Help text goes to stdout (run with -close_fd_mask=3).
 *   odd   reply: byte 1 picks a verb, the rest is the reply line from "ebsimd"; then
 *         cli_answer and the verb's printer (check's verdict hook; initialize-volume's hook
 *         only when stderr is not a terminal, where it just prints; bench's never: it runs
 *         fio).
 *
 * Oracles: a request that is built is a JSON object with string Action/Account/Region and
 * an object Params; exit codes stay within awscli's set (0, 2, 3, 252, 254, 255).
 */
#define main ebsim_cli_main
#include "tools/ebsim.c"
#undef main

#include "tests/fuzz/fuzz_util.h"

#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fz_check_exit(int ret)
{
	FUZZ_ASSERT(ret == 0 || ret == CLI_EXIT_CORRUPT || ret == CLI_EXIT_LEAKS ||
			    ret == EXIT_USAGE || ret == EXIT_SERVICE || ret == EXIT_NODAEMON,
		    "exit code %d", ret);
}

static void fz_argv(const char *buf, size_t len)
{
	char *argv[MAX_ARGS + 2];
	int argc = 0;
	struct cli c = {
	    .home = "/nonexistent/ebsim-fuzz",
	    .region = EBSIM_DEFAULT_REGION,
	    .account = EBSIM_DEFAULT_ACCOUNT,
	};
	int ret;

	argv[argc++] = "ebsim";
	for (size_t i = 0; i < len && argc <= MAX_ARGS;) {
		const char *nul = memchr(buf + i, '\0', len - i);
		argv[argc++] = (char *)buf + i;
		if (!nul)
			break;
		i = (size_t)(nul - buf) + 1;
	}
	argv[argc] = NULL;
	if (cli_parse(&c, argc, argv) < 0)
		goto out;
	if (c.version) {
		ret = 0;
	} else if (c.help && c.verb_word && !c.verb) {
		ret = cli_bad_verb(c.verb_word);
	} else if (c.help) {
		ret = c.verb ? cli_help_verb(c.verb) : cli_help_overview();
	} else {
		ret = cli_check(&c);
		if (!ret) {
			struct json_object *req = cli_request(&c), *v;
			size_t n;
			if (req) {
				const char *text = json_object_to_json_string_length(
				    req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
				FUZZ_ASSERT(text && !memchr(text, '\n', n), "request is not one line");
				FUZZ_ASSERT(json_object_object_get_ex(req, "Action", &v) &&
						    json_object_is_type(v, json_type_string) &&
						    json_object_object_get_ex(req, "Params", &v) &&
						    json_object_is_type(v, json_type_object),
					    "request shape");
				json_object_put(req);
			}
		}
	}
	fz_check_exit(ret);
out:
	cli_free(&c);
}

static void fz_reply(uint8_t pick, const char *text, size_t len)
{
	const struct cli_verb *verb = &cli_verbs[pick % ARRAY_SIZE(cli_verbs)];
	struct cli c = {
	    .home = "/nonexistent/ebsim-fuzz",
	    .region = EBSIM_DEFAULT_REGION,
	    .account = EBSIM_DEFAULT_ACCOUNT,
	};
	struct json_object *res = NULL;
	int ret;

	if (cli_set_verb(&c, verb->name) < 0)
		goto out;
	ret = cli_answer(verb->action, "/nonexistent/ebsim-fuzz/ebsimd.sock", text, len, &res);
	if (!ret) {
		if (verb->finish == cli_finish_check ||
		    (verb->finish == cli_finish_init && !isatty(STDERR_FILENO)))
			ret = verb->finish(&c, res);
		else
			ret = cli_print_result(res);
	}
	fz_check_exit(ret);
	json_object_put(res);
out:
	cli_free(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf;

	if (size < 2)
		return 0;
	/* a private, NUL-terminated copy: argv words must be strings */
	buf = malloc(size + 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = 0;
	if (data[0] & 1)
		fz_reply(data[1], buf + 2, size - 2);
	else
		fz_argv(buf + 1, size - 1);
	free(buf);
	return 0;
}
