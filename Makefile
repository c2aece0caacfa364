# herald - build, test and benchmark.
#
#   make up          build and run the whole system (herald up) on the embedded log
#   make             build build/herald
#   make test        build and run every test (C unit tests, then end-to-end)
#   make bench       run the benchmarks (medians of several runs)
#   make SANITIZE=1 test   the same suite under AddressSanitizer + UBSan
#
# scripts/deps.sh installs the Debian packages needed; it is a no-op when
# they are present.

SANITIZE ?= 0
ifeq ($(SANITIZE),1)
BUILD ?= build-asan
SAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
OPT ?= -O1 -g
else
BUILD ?= build
SAN_FLAGS =
OPT ?= -O2 -g
endif

PKGS = sqlite3 jansson yajl libmicrohttpd nettle libcurl rdkafka
CC ?= cc
CFLAGS_BASE = -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
	-Wno-unused-parameter -D_GNU_SOURCE -Isrc -pthread
CFLAGS += $(CFLAGS_BASE) $(OPT) $(SAN_FLAGS) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread -lm
LDFLAGS += $(SAN_FLAGS)

LIB_SRC := $(filter-out src/cli/main.c,$(wildcard src/*/*.c))
CLI_SRC := src/cli/main.c
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOL_SRC := $(wildcard tests/tools/*.c)
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tools/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_SHARED := $(wildcard bench/shared/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
# helpers for the unit tests and benchmarks (tests/support/*.h)
SUPPORT_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/support/*.c))
PYTHON := /usr/bin/python3

.PHONY: all deps test unit e2e memcheck bench clean format up
all: deps $(BUILD)/herald

deps:
	@scripts/deps.sh

LISTEN ?= $(or $(HERALD_LISTEN),127.0.0.1:8080)
up: all
	@echo "herald: Task API on http://$(LISTEN), data in $(or $(HERALD_DATA_DIR),./herald-data) (Ctrl-C stops it)"
	@echo "try:    curl -s -X POST http://$(LISTEN)/tasks -H 'Content-Type: application/json' \\"
	@echo "          -d '{\"title\": \"Review quarterly report\", \"owner_id\": \"user-456\", \"priority\": 2}'"
	@HERALD_LISTEN=$(LISTEN) exec $(BUILD)/herald up

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libherald.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/herald: $(CLI_OBJ) $(BUILD)/libherald.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(SUPPORT_OBJ) $(BUILD)/libherald.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(SUPPORT_OBJ) $(BUILD)/libherald.a $(LDFLAGS) $(LDLIBS) -lcmocka -lcrypto

$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/libherald.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libherald.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BENCH_SHARED) $(wildcard bench/shared/*.h) $(SUPPORT_OBJ) $(BUILD)/libherald.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Ibench -Itests -o $@ $< $(BENCH_SHARED) $(SUPPORT_OBJ) $(BUILD)/libherald.a $(LDFLAGS) $(LDLIBS)

unit: all $(UNIT_BIN) $(BUILD)/tools/kafka_mock
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

# The end-to-end files run E2E_JOBS at a time (pytest-xdist): most of their
# time is spent waiting (group joins, retries, SMTP), not on the CPU.
E2E_JOBS ?= 3
e2e: all $(TOOL_BIN)
	HERALD_BIN=$(abspath $(BUILD)/herald) HERALD_TOOLS=$(abspath $(BUILD)/tools) \
		$(PYTHON) -m pytest -q -p no:cacheprovider -n $(E2E_JOBS) tests/e2e

test: unit e2e

# Valgrind over the unit tests and a normal run of the binary.
memcheck: all $(UNIT_BIN) $(BUILD)/tools/kafka_mock
	@scripts/memcheck.sh $(BUILD)

bench: all $(BENCH_BIN) $(BUILD)/tools/kafka_mock
	@scripts/bench.sh $(BUILD)

format:
	clang-format -i $(wildcard src/*/*.c src/*/*.h tests/*/*.c tests/*/*.h bench/*.c bench/shared/*.[ch])

clean:
	rm -rf build build-asan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
