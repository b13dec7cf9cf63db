# The QEMU curl series: build it on a QEMU 10.0 base, run it, test it.
#
#   make            build the patched and the stock QEMU binaries
#   make convert    setup, then the main job (see README.rst)
#   make check      setup, then every test
#   make check-asan setup, then every test against the patched binaries
#                   built with ASan and UBSan (in $(BUILD)/qemu-asan)
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

.PHONY: all build build-asan deps deps-test deps-bench convert check check-asan \
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
	@scripts/build.sh
	@scripts/check.sh $(ARGS)

build-asan: deps
	@scripts/build.sh --asan

check-asan: deps-test
	@scripts/build.sh --asan
	@scripts/check-asan.sh $(ARGS)

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
