"""File modes of what training writes (a leaf: run directories, exports and the backbone cache use it)."""
from __future__ import annotations

import os
from pathlib import Path


def plain_modes(path: Path) -> Path:
    """Give `path` (and, for a directory, everything under it) the mode a plain open() or mkdir() gives:
    0666 / 0777 less the umask. safetensors' `save_file` writes 0600 and `tempfile` makes 0700
    directories, so without this another user, such as a container's non-root user reading a mounted
    export, could not read the weights. Returns `path`."""
    mask = os.umask(0o022)  # the only way to read the umask; restored at once
    os.umask(mask)
    path = Path(path)
    for p in [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    return path
