/* SPDX-License-Identifier: MIT */
/*
 * fuzz_bundle.c - libFuzzer target for the AMI bundle manifest parser and its signature
 * check (snapshot/bundle.c): bundle_manifest_parse() then bundle_verify_signature().
 *
 * Design notes
 * ------------
 * Input: the manifest bytes as they would be read from a bucket. The seeds in
 * tests/fuzz/corpus/bundle/ are real manifests written by `ebsim-ami bundle-image` and
 * signed with the key of FUZZ_CERT below (the private key is not kept), so the fuzzer
 * starts on the signature-valid path and every mutation of the signed elements must fail
 * the check.
 *
 * Oracles beyond "no crash, no sanitizer report, no leak": a manifest that parses has
 * 1..BUNDLE_MAX_PARTS parts, each a valid one-component part name (no '/' or ".."), with
 * index = position and no duplicates; parsing is deterministic (the same bytes give the
 * same signed bytes); a signature that verifies still verifies on the re-parse.
 */
#include "snapshot/bundle.h"
#include "tests/fuzz/fuzz_util.h"

static const char FUZZ_CERT[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIC/zCCAeegAwIBAgIUb5EZJ00sJL2uYJyw1e2hVSXyNDcwDQYJKoZIhvcNAQEL\n"
    "BQAwDzENMAsGA1UEAwwEZnV6ejAeFw0yNjExMjgyMTAwMDNaFw0zNjExMjUyMTAw\n"
    "MDNaMA8xDTALBgNVBAMMBGZ1enowggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEK\n"
    "AoIBAQC1rbWsCXbGwr4lrEItzMpjnto85hTtvDWcAdgifEWaLKMkKalhr29P5GcX\n"
    "j27iuoAXXIOqzbSOInBMeQdNE0Ijkjh9g1NVfKri7NoJTF/3plstMiWCOo8xbeBb\n"
    "OhquD7HL+tAwjgx3pwoe248XdcQX/pjiFm7Hoye8732jqvkVTCfJqoSyiH7/R+ac\n"
    "dheuD4garHQJFrIHZcEXCz185PKpIwC83UWY6gVXsmiJ0Tcls5FXoQILBNA+HfMb\n"
    "+vX+4VBgUgghfc0TbFF5xQODk5rzlVS6Pi7XqyeT1ckNVYNTmMBSzWk0YqlUEuj7\n"
    "NtrczrCwXrQ0wiJHbd2x8Jau4bA7AgMBAAGjUzBRMB0GA1UdDgQWBBT+gBsfWwod\n"
    "CKthn9HEI+LYIsgePjAfBgNVHSMEGDAWgBT+gBsfWwodCKthn9HEI+LYIsgePjAP\n"
    "BgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4IBAQBiVyTvjlUv/p3P2+KP\n"
    "TfcLeeIq0Jh76tK89P17ewN4GmURr+YrysBw46DyZL9T26lxRQCpL0mwMzYbog9Y\n"
    "vZ8GT646pMBS9Q+EUVt+5w8diPmKR7cT8fnpBjod0W9zAzLN/1V3fk8Kb2+B+WWD\n"
    "irjjANRDmDXQK29cX4P/vSjegkHt/kgnOq2rpI1jJMp64yow5WM+A7S6nhcqwmUn\n"
    "XK1DHMY4lFtt+buR0kIFpPTG7qrzY7GMdHvDc8OYI4ZjXRt+02ih95SBd/96GWda\n"
    "pY00+KzbMUqqEvUhStqp8CZROj1lCfa1EQTQ45DVbVDI+6V+2F9A56GFFuOJVNpD\n"
    "p8ZT\n"
    "-----END CERTIFICATE-----\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bundle_manifest *m = NULL, *m2 = NULL;
	char err[BUNDLE_ERR_MAX];
	int ret, ret2;

	ret = bundle_manifest_parse((const char *)data, size, &m, err);
	if (ret) {
		FUZZ_ASSERT(!m, "failed parse returned a manifest");
		FUZZ_ASSERT(ret < 0 && err[0], "parse failed without a message (%d)", ret);
		return 0;
	}
	FUZZ_ASSERT(m->n_parts >= 1 && m->n_parts <= BUNDLE_MAX_PARTS, "%zu parts", m->n_parts);
	for (size_t i = 0; i < m->n_parts; i++) {
		FUZZ_ASSERT(bundle_valid_part_name(m->parts[i].filename), "part name %s",
			    m->parts[i].filename);
		FUZZ_ASSERT(!strchr(m->parts[i].filename, '/') &&
				    strcmp(m->parts[i].filename, ".."),
			    "part name %s", m->parts[i].filename);
		for (size_t j = 0; j < i; j++)
			FUZZ_ASSERT(strcmp(m->parts[i].filename, m->parts[j].filename),
				    "duplicate part %s", m->parts[i].filename);
	}
	FUZZ_ASSERT(bundle_valid_arch(m->arch), "arch %s", m->arch);
	FUZZ_ASSERT(m->signed_data && m->signed_len && m->signature_len, "no signed bytes");
	ret = bundle_verify_signature(m, FUZZ_CERT, sizeof(FUZZ_CERT) - 1, err);
	FUZZ_ASSERT(ret == 0 || ret == -EBADMSG, "verify returned %d", ret);
	ret2 = bundle_manifest_parse((const char *)data, size, &m2, err);
	FUZZ_ASSERT(ret2 == 0, "second parse failed: %s", err);
	FUZZ_ASSERT(m2->signed_len == m->signed_len &&
			    !memcmp(m2->signed_data, m->signed_data, m->signed_len),
		    "parse is not deterministic");
	if (ret == 0)
		FUZZ_ASSERT(bundle_verify_signature(m2, FUZZ_CERT, sizeof(FUZZ_CERT) - 1, err) == 0,
			    "signature verified once, not twice");
	bundle_manifest_free(m2);
	bundle_manifest_free(m);
	return 0;
}
