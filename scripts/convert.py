#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The main job: convert a qcow2 image from an https:// URL to a local file
#
# Copyright (C) 2026 The QEMU curl series authors
"""Convert an image from a URL with the series' qemu-img, and check it.

Without a URL, a sample qcow2 image (scattered data over a few hundred MiB)
is made once, served by a local nginx over HTTPS with a throwaway CA, and
converted from there.  With a URL, that image is converted; to check the
result, the file is also downloaded once with curl (not timed).  Prints the
time, the throughput, and the checksums of the output and of the source.
Run it through scripts/convert.sh, which sets up the trusted test CA.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP / 'tests' / 'e2e'))
# pylint: disable=wrong-import-position
import fixtures  # noqa: E402

MiB = 1024 * 1024
SAMPLE_SEED = 2026
SCHEMES = ('http', 'https', 'ftp', 'ftps')


class Failure(Exception):
    """What stops the job, said in one line (the tools it ran have printed
    their own error already)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert an image from an HTTP(S) or FTP(S) URL with '
                    'the curl driver of the series, and check the result.')
    parser.add_argument('--url', help='the image to convert (default: a '
                        'sample qcow2 served by a local nginx over HTTPS)')
    parser.add_argument('--opts', default='',
                        help='curl driver options, e.g. '
                        '"blocksize=4M,connections=8"')
    parser.add_argument('--format', dest='fmt', default=None,
                        help='format of the remote image (default: probed)')
    parser.add_argument('--output-format', default='raw',
                        help='format of the output (default: raw)')
    parser.add_argument('--output', help='output file (default: under the '
                        'build directory)')
    parser.add_argument('--size', default='384M',
                        help='virtual size of the sample image (default: '
                        '384M)')
    parser.add_argument('--stock', action='store_true',
                        help="use QEMU's stock driver instead")
    parser.add_argument('--no-verify', action='store_true',
                        help='do not download the file again to check it')
    return parser.parse_args()


def parse_size(text: str) -> int:
    units = {'K': 1024, 'M': MiB, 'G': 1024 * MiB}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def sample_image(build: Path, size: int) -> fixtures.TestImage:
    """The sample qcow2, made once and kept in the build directory."""
    directory = build / 'sample'
    directory.mkdir(parents=True, exist_ok=True)
    qcow2 = directory / f'sample-{size // MiB}M.qcow2'
    raw = directory / f'sample-{size // MiB}M.raw'
    stamp = directory / f'sample-{size // MiB}M.sha256'
    if not (qcow2.exists() and stamp.exists()):
        print(f'making a sample qcow2 image of {size // MiB} MiB with '
              'scattered data ...', flush=True)
        image = fixtures.make_test_image(raw, size, SAMPLE_SEED)
        fixtures.make_qcow2(image, qcow2)
        raw.unlink()
        stamp.write_text(image.sha256 + '\n')
    return fixtures.TestImage(qcow2, 'qcow2', size, stamp.read_text().strip())


def image_spec(url: str, fmt: str, opts: str) -> str:
    """A json: filename with the protocol node's options."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise Failure(f'the URL must start with http://, https://, ftp:// '
                      f'or ftps://, not {url!r}')
    file_opts = {'driver': scheme, 'url': url}
    for item in filter(None, opts.split(',')):
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise Failure(f'OPTS must be KEY=VALUE,..., not {item!r}')
        file_opts[key.strip()] = value.strip()
    spec = {'file': file_opts}
    if fmt:
        spec['driver'] = fmt
    return 'json:' + json.dumps(spec)


def remote_size(qemu_img: Path, spec: str) -> int:
    """The size of the remote file, as the driver sees it."""
    info = subprocess.run([str(qemu_img), 'info', '--output=json', spec],
                          stdout=subprocess.PIPE, text=True, check=False)
    if info.returncode != 0:
        raise Failure(f'qemu-img info could not open the image (exit code '
                      f'{info.returncode})')
    data = json.loads(info.stdout)
    child = data.get('children', [{}])[0].get('info', {})
    return int(child.get('virtual-size', data['virtual-size']))


def raw_sha256(qemu_img: Path, path: Path, fmt: str) -> str:
    """The checksum of an image's guest data, as qemu-img sees it.

    qemu-img pads a raw image to a multiple of 512 bytes, so a raw file
    of another size goes through qemu-img too.
    """
    if fmt == 'raw' and path.stat().st_size % 512 == 0:
        return fixtures.sha256_file(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / 'raw'
        subprocess.run([str(qemu_img), 'convert', '-O', 'raw', str(path),
                        str(out)], check=True)
        return fixtures.sha256_file(out)


def main() -> int:
    try:
        return convert(parse_args())
    except (Failure, fixtures.MissingPrerequisite) as err:
        print(f'convert: error: {err}', file=sys.stderr)
        return 1


def convert(args: argparse.Namespace) -> int:
    """The job; raises Failure when it cannot go on."""
    bins = fixtures.Binaries.from_env(stock=args.stock).require()
    build = fixtures.build_dir()
    workdir = build / 'convert'
    workdir.mkdir(parents=True, exist_ok=True)
    output = Path(args.output) if args.output else \
        workdir / f'output.{args.output_format}'

    server = None
    reference = None
    try:
        if args.url:
            url = args.url
        else:
            image = sample_image(build, parse_size(args.size))
            server = fixtures.Nginx(image.path.parent)
            server.start()
            url = server.https_url(image.name)
            reference = image
            print(f'serving {image.path} at {url}')

        spec = image_spec(url, args.fmt, args.opts)
        size = remote_size(bins.qemu_img, spec)
        cmd = [str(bins.qemu_img), 'convert', '-p', '-O', args.output_format,
               spec, str(output)]
        print(f'driver: {"stock" if args.stock else "series"} '
              f'({bins.qemu_img})')
        print('running: ' + ' '.join(cmd), flush=True)
        start = time.monotonic()
        proc = subprocess.run(cmd, check=False)
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            print(f'qemu-img convert failed (exit code {proc.returncode})',
                  file=sys.stderr)
            return 1
        print(f'\nconverted a remote file of {size / MiB:.1f} MiB in '
              f'{elapsed:.2f} s: {size / MiB / elapsed:.1f} MiB/s')

        if reference is None and not args.no_verify:
            ref_path = workdir / 'reference'
            print('downloading the file once more with curl, to check the '
                  'output ...', flush=True)
            if subprocess.run(['curl', '-sSfL', '-o', str(ref_path), url],
                              check=False).returncode != 0:
                raise Failure('curl could not download the file to check '
                              'the output (--no-verify skips that)')
            fmt = args.fmt or json.loads(subprocess.run(
                [str(bins.qemu_img), 'info', '--output=json', str(ref_path)],
                stdout=subprocess.PIPE, text=True,
                check=True).stdout)['format']
            reference = fixtures.TestImage(
                ref_path, fmt, 0, raw_sha256(bins.qemu_img, ref_path, fmt))
        if reference is None:
            print('output not checked (--no-verify)')
            return 0

        out_sum = raw_sha256(bins.qemu_img, output, args.output_format)
        print(f'sha256 of the source guest data: {reference.sha256}')
        print(f'sha256 of the output guest data: {out_sum}')
        compare = subprocess.run([str(bins.qemu_img), 'compare', '-f',
                                  reference.fmt, '-F', args.output_format,
                                  str(reference.path), str(output)],
                                 check=False)
        if out_sum != reference.sha256 or compare.returncode != 0:
            print('MISMATCH: the output differs from the source',
                  file=sys.stderr)
            return 1
        print('checksums match: the output is identical to the source')
        return 0
    finally:
        if server:
            server.stop()


if __name__ == '__main__':
    sys.exit(main())
