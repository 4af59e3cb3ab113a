/* SPDX-License-Identifier: MIT */
/*
 * ctl_proto.h - the control-socket protocol between the ebsim CLI and ebsimd.
 *
 * Design notes
 * ------------
 * Transport: a SOCK_STREAM Unix socket at <home>/ebsimd.sock, mode 0600 (root only).
 * One request per connection:
 *
 *   client -> daemon   one JSON object, then '\n':
 *       {"Action": "CreateVolume",          EC2 API action name (PascalCase)
 *        "Account": "123456789012",        12 digits
 *        "Region": "us-east-1",
 *        "Params": { ... }}                 EC2 API parameter names, e.g. "Size", "VolumeIds"
 *
 *   daemon -> client   one JSON object, then '\n', then the daemon closes:
 *       {"Result": { ... }}                 awscli-shaped output, printed as is
 *   or  {"Error": {"Code": "InvalidVolume.NotFound", "Message": "..."}}
 *
 * Parameter values are JSON strings, integers, booleans, arrays or objects, named as the
 * EC2 API names them (awscli's --volume-ids becomes "VolumeIds"). The CLI does no semantic
 * validation: an integer option whose text is not an integer is sent as the raw string, and
 * the daemon answers InvalidParameterValue, so there is one place where rules live.
 *
 * A request is at most CTL_MAX_MSG bytes; a longer one is refused with
 * InvalidParameterValue.
 *
 * Exit codes of the CLI (awscli's): 0 success, 252 usage error (unknown verb or option,
 * missing required option), 254 service error (an {"Error"} reply), 255 no daemon or a
 * broken reply.
 */
#ifndef EBSIM_CTL_PROTO_H
#define EBSIM_CTL_PROTO_H

#define CTL_SOCK_NAME "ebsimd.sock"
#define CTL_MAX_MSG (4 << 20)

#define EBSIM_DEFAULT_HOME "/var/lib/ebsim"
#define EBSIM_DEFAULT_REGION "us-east-1"
#define EBSIM_DEFAULT_ACCOUNT "123456789012"
/* The account that owns the base AMIs (ImageOwnerAlias "amazon"), as on EC2. */
#define EBSIM_AMAZON_ACCOUNT "137112412989"
#define EBSIM_AMAZON_ALIAS "amazon"

#define EXIT_USAGE 252
#define EXIT_SERVICE 254
#define EXIT_NODAEMON 255

#endif
