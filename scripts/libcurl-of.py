#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Which libcurl a binary loads, and its version
#
# Copyright (C) 2026 The QEMU curl series authors
"""Print the version of the libcurl that a binary loads at run time.

    scripts/libcurl-of.py [--expect DIR] [--major N] BINARY

The dynamic loader (ldd, which follows the binary's rpath and the
environment as the binary itself would) says which libcurl.so.4 the
binary loads; that file's curl_version() says what it is.  Prints
"libcurl/8.14.1 OpenSSL/3.0.19 ... (PATH)".  Fails (exit 1) if the binary
loads no libcurl, if --expect is given and the library is not in DIR, or
if --major is given and the version's major number differs: both
libcurl 7 and 8 are libcurl.so.4.8.0, so the file name tells nothing.
"""

import argparse
import ctypes
import os
import re
import subprocess
import sys


def loaded_libcurl(binary: str) -> str:
    """The path of the libcurl that @binary loads (empty if none)."""
    out = subprocess.run(['ldd', binary], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         check=False).stdout
    match = re.search(r'^\s*libcurl[\w.-]*\.so[\w.]* => (\S+)', out, re.M)
    return os.path.realpath(match.group(1)) if match else ''


def curl_version(library: str) -> str:
    """curl_version() of the libcurl at @library."""
    lib = ctypes.CDLL(library)
    lib.curl_version.restype = ctypes.c_char_p
    return lib.curl_version().decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--expect', metavar='DIR',
                        help='the folder the library must be in')
    parser.add_argument('--major', type=int,
                        help="the libcurl version's major number")
    parser.add_argument('binary')
    args = parser.parse_args()
    library = loaded_libcurl(args.binary)
    if not library:
        print(f'{args.binary} loads no libcurl', file=sys.stderr)
        return 1
    version = curl_version(library)
    print(f'{version} ({library})')
    if args.expect and (os.path.dirname(library) !=
                        os.path.realpath(args.expect)):
        print(f'{args.binary} loads {library}, not the one in '
              f'{args.expect}', file=sys.stderr)
        return 1
    match = re.match(r'libcurl/(\d+)\.', version)
    if args.major is not None and (not match or
                                   int(match.group(1)) != args.major):
        print(f'{args.binary} loads {version}, not libcurl {args.major}.x',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
