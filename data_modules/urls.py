"""Shard locations: local paths, brace patterns, globs, dataset directories, ``pipe:`` commands and fsspec URLs.

A dataset directory written by ``jepa data convert`` holds a ``manifest.json`` with the sample count of every shard;
the epoch planner needs those counts to give every rank the same number of batches without reading a sample twice.
Without a manifest, local shards are counted by scanning their tar headers (seeks, no data reads).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from braceexpand import braceexpand

from jepa_platform.errors import DataError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def is_remote(url: str) -> bool:
    """``pipe:`` commands and ``scheme://`` URLs (``file://`` included) are opened without local checks."""
    return url.startswith("pipe:") or "://" in url


def _fsspec_open(url: str, mode: str = "rb") -> IO:
    import fsspec

    return fsspec.open(url, mode).open()


def open_url(url: str) -> IO[bytes]:
    """A readable binary stream for a shard: local file, ``pipe:cmd`` (stdout of a shell command) or any fsspec URL."""
    if url.startswith("pipe:"):
        import webdataset as wds

        return wds.gopen(url, "rb")
    if "://" in url:
        return _fsspec_open(url)
    return open(url, "rb")


def read_text(url: str) -> str | None:
    """The text of a small file beside the shards (local or fsspec), ``None`` if absent or unreadable."""
    try:
        if "://" in url:
            with _fsspec_open(url, "rt") as f:
                return f.read()
        path = Path(url)
        return path.read_text() if path.is_file() else None
    except (OSError, ImportError, ValueError):
        return None


def join_url(directory: str, name: str) -> str:
    """``name`` inside ``directory``: a URL path join for ``scheme://`` URLs, a filesystem join otherwise."""
    return posixpath.join(directory, name) if "://" in directory else str(Path(directory) / name)


def parent_url(url: str) -> str:
    """The directory holding ``url`` (inverse of :func:`join_url`)."""
    return posixpath.dirname(url) if "://" in url else str(Path(url).parent)


def read_manifest(directory: str) -> dict | None:
    text = read_text(join_url(directory, MANIFEST))
    return json.loads(text) if text else None


def _split_urls(directory: str, split: dict) -> list[str]:
    return [join_url(directory, name) for name in braceexpand(split["pattern"])]


def dataset_split(directory: str, split: str, manifest: dict | None = None) -> list[str] | None:
    """The shard URLs of ``split`` in a dataset directory with a manifest (read unless given), or ``None``."""
    manifest = manifest or read_manifest(directory)
    if not manifest or split not in manifest.get("splits", {}):
        return None
    return _split_urls(directory, manifest["splits"][split])


def expand_urls(spec: str | Sequence[str], what: str = "data.urls", split: str = "train") -> list[str]:
    """Shard URLs from paths, brace patterns, globs, dataset directories (their ``split`` shards) or remote URLs.

    Raises :class:`DataError` naming ``what`` when nothing is found. Listed local shards that are missing while
    others exist are kept (with a warning): reading skips and counts them, as it does shards lost mid-run.
    """
    specs = [spec] if isinstance(spec, str) else [str(s) for s in spec]
    urls: list[str] = []
    for item in specs:
        expanded = list(braceexpand(str(item)))
        missing = []
        for url in expanded:
            if is_remote(url):
                is_dir_url = "://" in url and not url.endswith(".tar")
                urls.extend((dataset_split(url, split) if is_dir_url else None) or [url])
                continue
            path = Path(url).expanduser()
            if path.is_dir():
                found = dataset_split(str(path), split) or sorted(str(p) for p in path.glob("*.tar"))
            elif any(c in url for c in "*?["):
                found = sorted(glob.glob(str(path)))
            else:
                found = [str(path)]
                if not path.is_file():
                    missing.append(url)
            urls.extend(found)
        if missing and len(missing) == len(expanded):
            raise DataError(f"{what}: no shard at '{missing[0]}' (from '{item}'): fix the path or write the shards first")
        if missing:
            log.warning(
                "%s: %d of %d shards are missing (first: %s); they will be skipped and counted as data/skipped",
                what,
                len(missing),
                len(expanded),
                missing[0],
            )
    if not urls:
        raise DataError(f"{what} matched no shards: give a shard path, brace pattern, glob, dataset directory or URL")
    return urls


def sample_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: ``dir/key.field.ext`` -> (``dir/key``, ``field.ext``)."""
    directory, base = posixpath.split(member_name)
    key, _, field = base.partition(".")
    return posixpath.join(directory, key) if directory else key, field


def count_tar_samples(path: str) -> int:
    """Samples in a local uncompressed tar, from its headers only."""
    keys = 0
    last = None
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isfile():
                key = sample_key(member.name)[0]
                if key != last:
                    keys, last = keys + 1, key
    return keys


def tar_has_end(path: str) -> bool:
    """Whether a local uncompressed tar ends with the end-of-archive marker (two zero blocks), which every tar writer
    appends: a file cut short (an interrupted copy or write) lacks it, and ``tarfile`` reads such a file to its cut
    without a word. Compressed or non-local shards are not checked (``True``)."""
    if is_remote(path) or not path.endswith(".tar"):
        return True
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(max(size - 1024, 0))
            tail = f.read(1024)
    except OSError:
        return True  # unreadable shards are reported where they are opened
    return size % 512 == 0 and len(tail) == 1024 and not tail.strip(b"\0")


def shard_sizes(urls: Sequence[str]) -> list[int] | None:
    """Samples per shard from the manifests beside the shards, else by scanning local tars; ``None`` when unknown."""
    known: dict[str, int] = {}
    for directory in {parent_url(u) for u in urls if not u.startswith("pipe:")}:
        manifest = read_manifest(directory) or {}
        for split in manifest.get("splits", {}).values():
            counts = split.get("shard_samples")
            if counts:
                known.update(zip(_split_urls(directory, split), counts, strict=True))
    sizes = []
    for url in urls:
        if url in known:
            sizes.append(known[url])
        elif not is_remote(url):
            try:
                sizes.append(count_tar_samples(url))
            except (OSError, tarfile.TarError):
                sizes.append(0)  # missing or unreadable: reading it later counts and warns
        else:
            return None
    return sizes


def iter_tar(stream: IO[bytes]) -> Iterator[dict]:
    """Samples of a tar stream as ``{"__key__": key, field: bytes, ...}``; files of one sample are adjacent."""
    current: dict | None = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, field = sample_key(member.name)
            if key.startswith("__") or not field:
                continue
            data = tar.extractfile(member).read()
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[field] = data
    if current is not None:
        yield current
