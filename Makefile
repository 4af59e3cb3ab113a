# SPDX-License-Identifier: MIT
# ebsim build: plain GNU make.
#   make            build ebsimd, ebsim, ebsim-ami into build/
#   make check      build and run the C unit tests
#   make test       everything: unit tests (plain + ASan/UBSan) and the pytest integration suite
#   make demo       build, then tell an instance's storage story (tools/demo.sh) on the default home
#   make bench      the fio benchmark matrix (QUICK=1 for a short run)
#   make deps       install missing Debian packages (does nothing when all are present)
#   make fuzz       build the libFuzzer targets (tests/fuzz/) and fuzz each for FUZZ_SECONDS
#   SAN=1           build with ASan+UBSan into build-asan/
#   V=1             show the commands

ifeq ($(SAN),1)
B       ?= build-asan
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
else ifeq ($(SAN),thread)
B       ?= build-tsan
SANFLAGS = -fsanitize=thread
else
B       ?= build
SANFLAGS =
endif
# Test-only variants: CRASH=1 compiles the named crash points in (build-crash/);
# LYING=1 plants a flush that reports success without syncing (build-lying/), which the
# crash suite must catch.
ifeq ($(CRASH),1)
B       := $(B)-crash
EXTRA_CFLAGS += -DEBSIM_CRASH_POINTS
endif
ifeq ($(LYING),1)
B       := $(B)-lying
EXTRA_CFLAGS += -DEBSIM_LYING_FSYNC
endif

ifneq ($(V),1)
Q = @
endif

PKGS     = fuse3 liburing json-c openssl sqlite3 libxml-2.0 libarchive zlib
CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -pthread -I. $(SANFLAGS) \
           $(EXTRA_CFLAGS) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -laio -pthread
LDFLAGS += $(SANFLAGS)

LIB_SRCS = $(wildcard common/*.c blockdev/*.c snapshot/*.c persistence/*.c fuse/*.c)
LIB_OBJS = $(LIB_SRCS:%.c=$(B)/%.o)
DAEMON_OBJS = $(patsubst %.c,$(B)/%.o,$(wildcard daemon/*.c))
UNIT_SRCS = $(wildcard tests/unit/test_*.c)
UNIT_BINS = $(UNIT_SRCS:tests/unit/%.c=$(B)/tests/%)

BINS = $(B)/ebsimd $(B)/ebsim $(B)/ebsim-ami

all: $(BINS)

$(B)/%.o: %.c $(wildcard */*.h)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(B)/libebsim.a: $(LIB_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/ebsimd: $(DAEMON_OBJS) $(B)/libebsim.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/ebsim: $(B)/tools/ebsim.o $(B)/libebsim.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/ebsim-ami: $(B)/tools/ebsim-ami.o $(B)/libebsim.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/%: $(B)/tests/unit/%.o $(B)/libebsim.a
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

unit: $(UNIT_BINS)

# Run every unit test program; exit codes 0 pass, 1 fail, 77 skip.
check: all unit
	@fail=0; for t in $(UNIT_BINS); do \
		$$t >/dev/null 2>$$t.log; rc=$$?; \
		case $$rc in 0) echo "PASS $$t";; 77) echo "SKIP $$t";; \
		*) echo "FAIL $$t (rc=$$rc)"; cat $$t.log; fail=1;; esac; done; exit $$fail

asan:
	$(MAKE) SAN=1 all unit

PYTEST = /usr/bin/python3 -m pytest

# The test-only variants the crash suite (tests/test_crash.py) runs: build-crash/, build-lying/.
variants:
	$(MAKE) SAN= LYING= CRASH=1 all
	$(MAKE) SAN= CRASH= LYING=1 all

# The whole suite, twice: against build/ and against the ASan+UBSan build (build-asan/).
# pytest-xdist runs test files in parallel (PYTEST_WORKERS; most tests wait on daemons,
# mounts and fsyncs, not on the CPU). In the sanitizer pass every process logs its
# sanitizer reports under SAN_LOGS and a report fails the test that was running
# (tests/conftest.py); test_unit and test_fuzz are left out of it because the first pass
# already runs their sanitized programs (every unit test under build-asan/ too; the fuzz
# targets are ASan+UBSan builds).
PYTEST_WORKERS ?= 3
SAN_LOGS = $(CURDIR)/build-asan/sanitizer-reports
test: all unit asan variants fuzz-build
	$(PYTEST) -ra -n $(PYTEST_WORKERS) --dist loadfile tests/ $(PYTEST_ARGS)
	@echo "==> the same suite against the ASan+UBSan build (build-asan/)"
	rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	EBSIM_BUILD=$(CURDIR)/build-asan EBSIM_SAN_LOG_DIR=$(SAN_LOGS) $(PYTEST) -ra -n $(PYTEST_WORKERS) --dist loadfile tests/ \
		--deselect tests/test_unit.py --deselect tests/test_fuzz.py $(PYTEST_ARGS)

stress: all unit variants fuzz-build
	EBSIM_STRESS=1 $(PYTEST) -ra tests/ $(PYTEST_ARGS)

demo: all
	bash tools/demo.sh

bench: all
	bash bench/run.sh $(if $(QUICK),--quick)

# Fuzzing (tests/fuzz/README.md): libFuzzer targets built by clang with ASan+UBSan into
# build-fuzz/. `make test` replays their seed corpus and fuzzes each for 30 s
# (tests/test_fuzz.py); `make fuzz` fuzzes each for FUZZ_SECONDS. FUZZ_CC=afl-clang-fast
# FUZZ_B=build-afl builds the same targets for AFL++.
FUZZ_CC      ?= clang
FUZZ_B       ?= build-fuzz
FUZZ_SECONDS ?= 600
FUZZ_TARGETS  = fuzz_ctl fuzz_manifest fuzz_volhdr fuzz_cli fuzz_bundle
FUZZ_CFLAGS   = -O1 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -pthread -I. -DEBSIM_FUZZ \
		-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
		$(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# every module but the FUSE frontend (fuzz_ctl stubs it) and ebsimd's main
FUZZ_OBJS     = $(patsubst %.c,$(FUZZ_B)/%.o,$(filter-out fuse/%,$(LIB_SRCS)) \
		$(filter-out daemon/ebsimd.c,$(wildcard daemon/*.c)))

$(FUZZ_B)/%.o: %.c $(wildcard */*.h)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_B)/libebsim.a: $(FUZZ_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^

$(FUZZ_B)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h $(FUZZ_B)/libebsim.a tools/ebsim.c
	@$(if $(Q),echo "  FUZZLD  $@")
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_B)/libebsim.a $(LDLIBS)

$(FUZZ_B)/mkseeds: tests/fuzz/mkseeds.c $(B)/libebsim.a
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Build the targets when the compiler has libFuzzer; otherwise say so and build nothing
# (tests/test_fuzz.py then skips, naming the reason).
fuzz-build:
	@if echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }' \
		| $(FUZZ_CC) -x c -fsanitize=fuzzer -o /dev/null - >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(FUZZ_TARGETS:%=$(FUZZ_B)/%); \
	else echo "fuzz: $(FUZZ_CC) cannot link -fsanitize=fuzzer (libFuzzer missing): targets not built"; fi

# Fuzz each target for FUZZ_SECONDS, new inputs into $(FUZZ_B)/corpus/<target>/ (the
# committed seeds in tests/fuzz/corpus/ are read, never written), crashes into
# $(FUZZ_B)/artifacts/.
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		n=$${t#fuzz_}; mkdir -p $(FUZZ_B)/corpus/$$n $(FUZZ_B)/artifacts; \
		opts=; [ $$n = volhdr ] && opts=-max_len=16384; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		$(FUZZ_B)/$$t $$opts -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -close_fd_mask=3 \
			-rss_limit_mb=4096 \
			-dict=tests/fuzz/$$n.dict -artifact_prefix=$(FUZZ_B)/artifacts/$$n- \
			$(FUZZ_B)/corpus/$$n tests/fuzz/corpus/$$n || exit 1; done

DEB_PKGS = build-essential pkg-config libfuse3-dev fuse3 liburing-dev libaio-dev libssl-dev xfsprogs \
	   libsqlite3-dev libjson-c-dev python3-pytest python3-pytest-xdist e2fsprogs fio qemu-utils qemu-system-common \
	   util-linux sqlite3 gnuplot-nox clang fiu-utils \
	   libxml2-dev libarchive-dev zlib1g-dev busybox-static openssl
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	else echo "all Debian packages present"; fi

fmt:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-*

.PHONY: all unit check asan variants test stress demo bench deps fmt clean fuzz fuzz-build
.SECONDARY:
