#!/usr/bin/env python3
"""Drops FILE's pages from the page cache (written back first), as after a boot.

    scripts/uncache.py FILE...

The resident size of a program's code depends on how its file got into the page cache:
read(2) fills it in large folios, and a page fault then maps a whole folio, where pages
brought in by the faults themselves are mapped 64 KiB at a time. The memory figures
(scripts/memory-check.sh, scripts/bench.sh memory) start each binary from a cold cache, so
they do not depend on what read the file before (a build, a packaging step, a grep).
Pages another process has mapped stay; the scripts run nothing else from the file.
"""
import os
import sys

for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
