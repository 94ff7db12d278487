"""Files that appear whole or not at all, and the commit that made them: shared by every writer."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(file)` on a temp file beside `path`, fsync, then rename it over `path`: readers see
    the old file or the whole new one, never half of one. On any error the temp file is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask), so a
        # server running as another user (the container images' uid 10001) can read what we write.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def git_commit(folder: str | os.PathLike | None = None) -> str | None:
    """The git commit of the code in `folder` (default: this repository), with "-dirty" when tracked files
    differ from it; None when the code is not a git checkout (an installed wheel) or git is missing.
    Recorded in checkpoints, model cards and bench results, so every artifact names the code that made it."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent.parent
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=10)
        # A wheel unpacked inside some other repository is not a checkout of this code.
        if top.returncode or Path(top.stdout.strip()).resolve() != folder.resolve():
            return None
        done = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--dirty", "--abbrev=40",
                               "--match=^$"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None
