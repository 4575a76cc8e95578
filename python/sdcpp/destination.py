"""Where a write may go: never onto or into the files it reads (a quantized copy must not replace its source),
and into a folder that exists (an error naming the destination, not a temporary file)."""

from __future__ import annotations

import errno
import os

from .errors import DestinationError


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and symlinks: the same inode
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_destination(dst, sources) -> str:
    """Return `dst` as a string if writing it leaves every path in `sources` (files or folders) untouched;
    raise DestinationError if it is one of them, a link to one, or lies inside a source folder, and
    FileNotFoundError / IsADirectoryError naming `dst` when it cannot be a file at all."""
    dst = os.fspath(dst)
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {dst}: folder {folder} does not exist", dst)
    if os.path.isdir(dst):
        raise IsADirectoryError(errno.EISDIR, f"cannot write {dst}: it is a folder", dst)
    real = os.path.realpath(dst)
    for src in sources:
        src = os.fspath(src)
        src_real = os.path.realpath(src)
        if real == src_real or _same_file(dst, src):
            raise DestinationError(f"{dst} is the input {src}; write the output to another file")
        if os.path.isdir(src_real):
            if _inside(real, src_real):
                raise DestinationError(f"{dst} lies inside the input folder {src}; write it elsewhere")
            if os.path.exists(dst):  # a hard link to a file of the folder, under another name
                for root, _, names in os.walk(src_real):
                    if any(_same_file(dst, os.path.join(root, n)) for n in names):
                        raise DestinationError(f"{dst} is a link to a file of the input folder {src}")
    return dst
