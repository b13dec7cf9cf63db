# The QEMU curl series: build it on a QEMU 10.0 base, run it, test it.
#
#   make            build the patched and the stock QEMU binaries
#   make convert    setup, then the main job (see README.rst)
#   make check      setup, then every test, and the e2e tests again
#                   against the patched binaries linked to libcurl 8
#                   (in $(BUILD)/qemu-curl8)
#   make check-asan setup, then every test against the patched binaries
#                   built with ASan and UBSan (in $(BUILD)/qemu-asan)
#   make check-curl8 setup, then only those libcurl 8 tests
#   make bench      setup, then the benchmark (not part of check)
#
# ./configure writes config.mk; without it the defaults apply.

-include config.mk

BUILD ?= build
QEMU_SRC ?=
CACHE ?=
JOBS ?=
URL ?=
OPTS ?=
ARGS ?=

export BUILD QEMU_SRC JOBS
ifneq ($(CACHE),)
export CACHE
endif

.PHONY: all build build-asan build-curl8 deps deps-test deps-bench convert check \
	check-asan check-curl8 \
	series bench clean distclean

all: build

deps:
	@scripts/install-deps.sh build
deps-test:
	@scripts/install-deps.sh test
deps-bench:
	@scripts/install-deps.sh bench

build: deps
	@scripts/build.sh

convert: deps-test
	@scripts/build.sh
	@scripts/convert.sh $(if $(URL),--url '$(URL)') $(if $(OPTS),--opts '$(OPTS)') $(ARGS)

check: deps-test
	@scripts/build.sh --curl8
	@scripts/check.sh $(ARGS)

build-asan: deps
	@scripts/build.sh --asan

check-asan: deps-test
	@scripts/build.sh --asan
	@scripts/check-asan.sh $(ARGS)

build-curl8: deps-test
	@scripts/build.sh --curl8

check-curl8: deps-test
	@scripts/build.sh --curl8
	@scripts/check-curl8.sh $(ARGS)

series: deps
	@scripts/build.sh
	@scripts/series.py $(ARGS)

bench: deps-bench
	@scripts/build.sh
	@tests/bench/run $(ARGS)

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -f config.mk
