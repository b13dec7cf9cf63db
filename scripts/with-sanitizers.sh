#!/bin/sh
# Run a command whose ASan and UBSan binaries report into a folder.
#
#   scripts/with-sanitizers.sh DIR COMMAND [ARG...]
#
# Sets ASAN_OPTIONS, UBSAN_OPTIONS and LSAN_OPTIONS so that every
# sanitizer report of an instrumented process goes to a file of its own
# in DIR (DIR/san.EXE.PID) instead of stderr, where a test may not look,
# or that a daemon's test may not keep, and exports QCURL_SANITIZER_LOGS=DIR,
# where scripts/check.py looks for them: each one fails its layer.  The
# first error ends the process with SIGABRT (abort_on_error), so that the
# test that ran it fails too, unless it expects a crash.
#
# GCC links ASan and UBSan as two runtimes, and UBSan's log_path is not its
# own: when UBSan starts (at its first report) it sets ASan's report file
# to UBSan's log_path, and keeps writing its own reports to stderr.  So
# both get the same log_path, and ASan's handle_abort turns the abort that
# ends a UBSan report into an ASan "ABRT" report in the file, with the
# stack (the __ubsan_handle_* frame says which check); the UBSan message
# itself is on the process's stderr.  handle_abort also reports any other
# abort(), such as a failed assertion, which is a bug too.
#
# fast_unwind_on_malloc=0: glib, libcurl and the C library have no frame
# pointers, and without it the stacks of allocations and frees (of leaks,
# of use-after-free) stop at g_malloc(), which says nothing.  That unwinder
# costs in proportion to the depth: malloc_context_size=10 (30 by default)
# is enough to reach the caller of the caller of g_malloc(), and made the
# iotest curl-basic run in 7 s instead of 17 (2.4 s with the fast unwinder).
#
# Leaks are reported (LeakSanitizer, at each process's exit), except those
# of QEMU itself listed with their reasons in scripts/lsan.supp.  Options
# already in ASAN_OPTIONS, UBSAN_OPTIONS or LSAN_OPTIONS come after ours,
# so they win.
set -eu
die() { echo "with-sanitizers: error: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 DIR COMMAND [ARG...]"
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
logs=$(cd "$1" && pwd)
shift
common="log_path=$logs/san:log_exe_name=1:halt_on_error=1:abort_on_error=1"
export ASAN_OPTIONS="$common:handle_abort=1:detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=10${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="$common:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$top/scripts/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export QCURL_SANITIZER_LOGS="$logs"
exec "$@"
