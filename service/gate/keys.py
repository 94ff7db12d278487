"""API keys: the keys file, the constant-time check, and re-reading the file when it changes.

    # NAME KEY, one per line; blank lines and # comments are skipped
    ci-pipeline   3f9c2a0e6b8d4c1fa7e5d2b9c8a1f0e4
    web-frontend  8d1b7c3e5a9f2d4b6c0e8a1f3d5b7c9e

A request names its key as `Authorization: Bearer KEY` (RFC 6750). The service keeps only each key's
SHA-256 and compares a presented key's digest with every listed one through `hmac.compare_digest`,
never stopping at the first match, so the answer's timing says nothing about which bytes were right.
A key's name is what logs and metrics show; the key itself is never logged.

The file is watched by polling (path, its target after symlinks, inode, size, mtime and ctime) once
a second: an edit in place, a rename over the file, and a Kubernetes Secret's update (the kubelet
swaps the `..data` symlink of the mounted folder) each change one of these. A file that cannot be
read or parsed at start-up is an error (resnet-serve exits 2); later, a bad edit keeps the last good
keys and logs one error line until the file changes again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from service.config import ConfigError

log = logging.getLogger("service.gate.keys")

POLL_S = 1.0  # how often the file is looked at: a change takes effect within about this
# A name shows up in logs and as a Prometheus label value: keep it plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# RFC 6750's b64token: what a Bearer credential may be made of.
_KEY = re.compile(r"[A-Za-z0-9._~+/-]+=*")
MIN_KEY_CHARS = 16  # 16 hex digits are 64 bits: short keys are typos or guessable, refused


class KeysFileError(ConfigError):
    """The keys file cannot be read or is not NAME KEY lines; the message names the file and line."""


@dataclass(frozen=True)
class Keys:
    """The listed keys, as (name, SHA-256 of the key) pairs."""

    digests: tuple[tuple[str, bytes], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.digests]

    def name_of(self, key: bytes) -> str | None:
        """The name of the listed key equal to `key`, else None; compares with every key, in constant time."""
        presented = hashlib.sha256(key).digest()
        found = None
        for name, digest in self.digests:
            if hmac.compare_digest(presented, digest) and found is None:
                found = name
        return found


def parse(text: str, source: str) -> Keys:
    """The keys in `text` (a keys file's content); raises KeysFileError naming the bad line. Messages
    name lines, never their fields: a line written KEY NAME by mistake must not put the key in a log."""
    seen_names, seen_digests, pairs = {}, {}, []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source}, line {number}"
        if len(fields) != 2:
            raise KeysFileError(f"{where}: expected NAME KEY separated by whitespace, got {len(fields)} fields")
        name, key = fields
        if not _NAME.fullmatch(name):
            raise KeysFileError(f"{where}: a name must be 1-64 letters, digits, '.', '_' or '-'")
        if not _KEY.fullmatch(key) or len(key) < MIN_KEY_CHARS:
            raise KeysFileError(
                f"{where}: a key must be at least {MIN_KEY_CHARS} characters of letters, digits and -._~+/ "
                "(a Bearer token)"
            )
        digest = hashlib.sha256(key.encode()).digest()
        if name in seen_names:
            raise KeysFileError(f"{where}: the name is also on line {seen_names[name]}")
        if digest in seen_digests:
            raise KeysFileError(f"{where}: the key is also on line {seen_digests[digest]}")
        seen_names[name], seen_digests[digest] = number, number
        pairs.append((name, digest))
    return Keys(tuple(pairs))


def _stamp(path: Path) -> tuple:
    """What changes when the file is edited, replaced or re-pointed (module docstring)."""
    info = path.stat()  # follows symlinks: a swapped ..data link gives another inode
    return os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class KeysFile:
    """The keys of one file, re-read when it changes; `keys` is always the last good content."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.stamp: tuple | None = None
        self.failed_stamp: tuple | None = None
        self.keys = self._read()  # raises KeysFileError: refused at start-up
        log.info("API keys: %d from %s", len(self.keys.digests), self.path,
                 extra={"keys_file": str(self.path), "key_names": self.keys.names})  # fmt: skip

    def _read(self) -> Keys:
        try:
            stamp = _stamp(self.path)
            text = self.path.read_text(encoding="utf-8")
            mode = self.path.stat().st_mode
        except (OSError, UnicodeDecodeError) as error:
            raise KeysFileError(f"cannot read the API keys file {self.path}: {error}") from None
        keys = parse(text, str(self.path))
        if mode & stat.S_IROTH:  # group-readable is what Kubernetes' fsGroup gives a mounted Secret
            log.warning("the API keys file %s is readable by every user of this machine (mode %o); "
                        "chmod o-r it", self.path, stat.S_IMODE(mode), extra={"keys_file": str(self.path)})  # fmt: skip
        if not keys.digests:
            log.warning("the API keys file %s lists no keys: every keyed route answers 401", self.path)
        self.stamp = stamp
        return keys

    def poll(self) -> bool:
        """Re-read the file if it changed; True if the keys were replaced. A bad file keeps the last
        good keys and logs one error line per change."""
        try:
            stamp = _stamp(self.path)
        except OSError as error:
            stamp = ("unreadable", str(error))
        if stamp == self.stamp or stamp == self.failed_stamp:
            return False
        try:
            keys = self._read()
        except KeysFileError as error:
            self.failed_stamp = stamp
            log.error("API keys not reloaded, the previous %d stay in force: %s", len(self.keys.digests), error,
                      extra={"keys_file": str(self.path)})  # fmt: skip
            return False
        self.failed_stamp = None
        before, self.keys = set(self.keys.names), keys
        after = set(keys.names)
        log.info("API keys reloaded from %s: %d keys", self.path, len(after), extra={
            "keys_file": str(self.path), "added": sorted(after - before), "removed": sorted(before - after),
        })  # fmt: skip
        return True

    async def watch(self, interval_s: float = POLL_S) -> None:
        """Poll forever (the app's lifespan owns and cancels this task); never dies of a bad poll."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.poll)  # a stat and a small read; off the loop all the same
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("API keys: polling %s failed; still watching", self.path)
