"""The manifest the planner's tests plan for: one pinned tar of class tars from a file source."""

from __future__ import annotations

from pathlib import Path

from datasetd.config.manifest import Manifest
from datasetd.config.parsing import parse

ROOT = Path("/data/root")
SHA = "a" * 64


def manifest(extra: str = "", train: str = "") -> Manifest:
    """`train`: more keys of components.train; `extra`: more tables."""
    text = f"""
version = 1
root = "{ROOT}"
[components.train]
source = "file"
path = "/mnt/nas/train.tar"
sha256 = "{SHA}"
unpack = "class-tars"
into = "train"
{train}
{extra}
"""
    return parse(text.encode(), Path("/etc/datasetd/m.toml"))


def pinned_val(unpack: str, more: str = "") -> str:
    """A `components.val` table for `manifest(extra=...)`: a pinned tar from a file source."""
    return f"""
[components.val]
source = "file"
path = "/mnt/nas/val.tar"
sha256 = "{SHA}"
unpack = "{unpack}"
into = "val"
{more}
"""
