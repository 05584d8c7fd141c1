"""The typed, frozen Manifest every other package reads: sources, components, daemon and torrent settings.

Built from the TOML file by config.parsing; nothing here reads a file. The `expect` and `arrange`
values are config.dataset's. manifests/README.md documents every field: keep it in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from datasetd.config.dataset import Arrange, Expect

Unpack = Literal["none", "tar", "class-tars"]
STATE_DIR = ".datasetd"


@dataclass(frozen=True)
class FileSource:
    kind: ClassVar[str] = "file"  # the key of sources.registry
    path: Path


@dataclass(frozen=True)
class HttpAuth:
    bearer_env: str | None = None
    user_env: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class HttpSource:
    kind: ClassVar[str] = "http"
    url: str
    file: Path
    mirrors: tuple[str, ...] = ()
    auth: HttpAuth | None = None
    connections: int = 4
    segment_threshold: int = 64 * 1024 * 1024
    stall_timeout: float = 60.0


@dataclass(frozen=True)
class TorrentSource:
    kind: ClassVar[str] = "torrent"
    torrent: str
    file: str
    save_path: Path
    web_seeds: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()


Source = FileSource | HttpSource | TorrentSource


@dataclass(frozen=True)
class Component:
    name: str
    source: Source
    unpack: Unpack
    into: Path | None
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    after: tuple[str, ...] = ()
    enabled: bool = True
    keep_archive: bool = True
    expect: Expect | None = None
    classes: tuple[str, ...] | None = None  # a subset of class folders (sorted); None: every class
    arrange: Arrange | None = None  # flat val files moved into class folders

    def selected(self, unit: str) -> bool:
        return self.classes is None or unit in self.classes

    @property
    def archive(self) -> Path:
        """Where the archive is (file source) or lands (downloads)."""
        src = self.source
        if isinstance(src, FileSource):
            return src.path
        if isinstance(src, HttpSource):
            return src.file
        return src.save_path / src.file

    @property
    def downloaded(self) -> bool:
        return not isinstance(self.source, FileSource)


@dataclass(frozen=True)
class DaemonSettings:
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    reconcile_every: float = 600.0
    deep_verify_every: float = 7 * 86400.0
    stop_timeout: float = 30.0
    metrics: str | None = None
    web: str | None = None  # HOST:PORT of the read-only status page (service/web.py)
    on_ready: tuple[str, ...] = ()  # argv run (no shell) when a component becomes ready (service/hooks.py)
    on_error: tuple[str, ...] = ()  # argv run when a component fails
    hook_timeout: float = 60.0


@dataclass(frozen=True)
class TorrentSettings:
    listen_interfaces: str = "0.0.0.0:6881,[::]:6881"
    dht: bool = True
    lsd: bool = True
    upnp: bool = False
    natpmp: bool = False
    utp: bool = True
    download_rate_limit: int = 0
    upload_rate_limit: int = 0
    trackers: tuple[str, ...] = ()
    dht_bootstrap_nodes: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    seed_ratio: float | None = None
    seed_time: float | None = None
    stall_timeout: float = 1800.0


@dataclass(frozen=True)
class Manifest:
    path: Path
    sha256: str
    root: Path
    daemon: DaemonSettings
    torrent: TorrentSettings
    components: Mapping[str, Component]

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def enabled(self) -> list[Component]:
        return [c for c in self.components.values() if c.enabled]
