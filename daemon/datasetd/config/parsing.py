"""Manifest v1: TOML in, a typed frozen Manifest (config.manifest) out, every error with its key path.

First in the flow: `load` is what cli, the daemon and the demo call. Each table is read here through
config.reader; `expect`, `classes` and `arrange` by config.dataset; the checks that need every component
at once by config.crosscheck. The schema is documented in manifests/README.md; keep the two in step.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path, PurePosixPath

from datasetd.config.crosscheck import check_components
from datasetd.config.dataset import read_arrange, read_classes, read_expect
from datasetd.config.manifest import (
    STATE_DIR,
    Component,
    DaemonSettings,
    FileSource,
    HttpAuth,
    HttpSource,
    Manifest,
    Source,
    TorrentSettings,
    TorrentSource,
)
from datasetd.config.reader import Reader
from datasetd.errors import ManifestError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def load(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest file; raise ManifestError naming the key and the fix."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ManifestError(str(p), "", f"cannot read: {e.strerror}", "check the path") from e
    return parse(raw, p)


def parse(raw: bytes, path: Path) -> Manifest:
    fname = str(path)
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ManifestError(fname, "", f"not UTF-8 at byte {e.start}", "save it as UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(fname, "", f"TOML syntax error: {e}", "fix the TOML syntax") from e
    top = Reader(fname, "", data)
    # Unknown keys first, in every table: a typo (`unpak`, `intoo`) must get its "did you mean",
    # not an error about the key that its absence then seems to break.
    top.done({"version", "root", "daemon", "torrent", "components"})
    version = top.integer("version", required=True)
    if version != 1:
        raise ManifestError(fname, "version", f"unsupported version {version}", "use version = 1")
    root = _root(top, path)
    daemon = _daemon(top.table("daemon"))
    torrent = _torrent(top.table("torrent"))
    comps_reader = top.table("components")
    components: dict[str, Component] = {}
    for name in comps_reader.keys():  # noqa: SIM118 (Reader is not a mapping)
        if not NAME_RE.fullmatch(name):  # match() would let a trailing newline through `$`
            raise ManifestError(
                fname, comps_reader.key(name), "invalid component name",
                "use letters, digits, '_' and '-', starting with a letter or digit",
            )
        components[name] = _component(comps_reader.table(name), name, root, path.resolve().parent)
    comps_reader.done(set(components))
    if not components:
        raise ManifestError(fname, "components", "no components", "add a [components.NAME] table")
    check_components(fname, components)
    return Manifest(
        path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest(), root=root,
        daemon=daemon, torrent=torrent, components=components,
    )


def _root(top: Reader, manifest_path: Path) -> Path:
    value = top.string("root", required=True)
    assert value is not None
    root = Path(value)
    if not root.is_absolute():
        root = manifest_path.resolve().parent / root
    root = Path(os.path.normpath(root))
    if str(root).startswith("//"):  # POSIX leaves a leading `//` implementation-defined; on Linux it is `/`
        root = Path("/" + str(root).lstrip("/"))
    # Resolved once, here: root may be a symlink, but nothing below it may be (state/safedir.py).
    for candidate in (root, Path(os.path.realpath(root))):  # /bin is a link to /usr/bin
        if candidate == Path("/") or (candidate.parent in (Path("/"), Path("/usr")) and candidate.name in _SYSTEM_DIRS):
            raise ManifestError(
                top.file, "root", f"{root} is a system directory", "use a dedicated data directory"
            )
    return Path(os.path.realpath(root))


_SYSTEM_DIRS = {"bin", "boot", "dev", "etc", "lib", "lib64", "proc", "run", "sbin", "sys", "usr", "var"}


def _daemon(r: Reader) -> DaemonSettings:
    r.done({"workers", "reconcile_every", "deep_verify_every", "stop_timeout", "metrics", "web",
            "on_ready", "on_error", "hook_timeout"})
    d = DaemonSettings()
    workers = r.integer("workers", minimum=1, maximum=256)
    return DaemonSettings(
        workers=workers if workers is not None else d.workers,
        reconcile_every=r.duration("reconcile_every", d.reconcile_every),
        deep_verify_every=r.duration("deep_verify_every", d.deep_verify_every),
        stop_timeout=r.duration("stop_timeout", d.stop_timeout),
        metrics=r.string("metrics"),
        web=r.string("web"),
        on_ready=_hook(r, "on_ready"),
        on_error=_hook(r, "on_error"),
        hook_timeout=r.duration("hook_timeout", d.hook_timeout),
    )


def _hook(r: Reader, key: str) -> tuple[str, ...]:
    argv = r.strings(key)
    if argv and not Path(argv[0]).is_absolute():
        raise ManifestError(r.file, r.key(key), f"{argv[0]!r} is not an absolute path",
                            'hooks run without a shell or PATH: e.g. ["/usr/local/bin/notify", "--done"]')
    return argv


def _torrent(r: Reader) -> TorrentSettings:
    d = TorrentSettings()
    seed = r.table("seed_after_download")
    ratio = seed.number("ratio")
    seed_time = seed.duration("time", 0.0) or None
    seed.done({"ratio", "time"})
    out = TorrentSettings(
        listen_interfaces=r.string("listen_interfaces") or d.listen_interfaces,
        dht=r.boolean("dht", d.dht),
        lsd=r.boolean("lsd", d.lsd),
        upnp=r.boolean("upnp", d.upnp),
        natpmp=r.boolean("natpmp", d.natpmp),
        utp=r.boolean("utp", d.utp),
        download_rate_limit=r.integer("download_rate_limit", minimum=0) or 0,
        upload_rate_limit=r.integer("upload_rate_limit", minimum=0) or 0,
        trackers=r.strings("trackers"),
        dht_bootstrap_nodes=r.strings("dht_bootstrap_nodes"),
        peers=r.strings("peers"),
        seed_ratio=ratio,
        seed_time=seed_time,
        stall_timeout=r.duration("stall_timeout", d.stall_timeout),
    )
    r.done({
        "listen_interfaces", "dht", "lsd", "upnp", "natpmp", "utp", "download_rate_limit",
        "upload_rate_limit", "trackers", "dht_bootstrap_nodes", "peers",
        "seed_after_download", "stall_timeout",
    })
    return out


_COMMON = {"source", "size", "sha256", "md5", "unpack", "into", "after", "enabled", "keep_archive", "expect",
           "classes", "arrange", "labels", "cross_check"}
_BY_SOURCE = {
    "file": {"path"},
    "http": {"url", "mirrors", "file", "auth", "connections", "segment_threshold", "stall_timeout"},
    "torrent": {"torrent", "file", "save_path", "web_seeds", "mirrors"},
}


def _component(r: Reader, name: str, root: Path, manifest_dir: Path) -> Component:
    kind = r.choice("source", ("file", "http", "torrent"), required=True)
    assert kind is not None
    r.done(_COMMON | _BY_SOURCE[kind])
    source = _source(r, kind, root)
    unpack = r.choice("unpack", ("none", "tar", "class-tars")) or "none"
    into_raw = r.string("into")
    if unpack != "none" and into_raw is None:
        raise ManifestError(r.file, r.key("into"), f"required when unpack = {unpack!r}",
                            'name a directory under root, e.g. into = "train"')
    if unpack == "none" and into_raw is not None:
        raise ManifestError(r.file, r.key("into"), 'only meaningful with unpack = "tar" or "class-tars"',
                            "remove it or set unpack")
    into = _under_root(r, "into", into_raw, root) if into_raw is not None else None
    if into is not None and into == root:
        raise ManifestError(r.file, r.key("into"), "must be a directory below root, not root itself",
                            'e.g. into = "train"')
    return Component(
        name=name, source=source, unpack=unpack, into=into,  # type: ignore[arg-type]
        size=r.integer("size", minimum=0), sha256=r.hexdigest("sha256", 64),
        md5=r.hexdigest("md5", 32), after=r.strings("after"),
        enabled=r.boolean("enabled", True), keep_archive=r.boolean("keep_archive", True),
        expect=read_expect(r, unpack, arranged="arrange" in r.data), classes=read_classes(r, unpack, manifest_dir),
        arrange=read_arrange(r, unpack, lambda t, k, raw: _under_root(t, k, raw, root)),
    )


def _source(r: Reader, kind: str, root: Path) -> Source:
    if kind == "file":
        raw = r.string("path", required=True)
        assert raw is not None
        p = Path(raw)
        path = p if p.is_absolute() else _under_root(r, "path", raw, root)
        return FileSource(path=Path(os.path.normpath(path)))
    if kind == "http":
        url = r.url("url", required=True)
        assert url is not None
        file = _under_root(r, "file", r.string("file", required=True), root)
        auth_r = r.table("auth")
        auth = None
        if auth_r.keys():
            auth = HttpAuth(bearer_env=auth_r.env_name("bearer_env"),
                            user_env=auth_r.env_name("user_env"),
                            password_env=auth_r.env_name("password_env"))
            auth_r.done({"bearer_env", "user_env", "password_env"})
            if (auth.user_env is None) != (auth.password_env is None):
                raise ManifestError(r.file, r.key("auth"), "user_env and password_env go together",
                                    "set both, or use bearer_env")
        return HttpSource(
            url=url, file=file, mirrors=r.urls("mirrors"), auth=auth,
            connections=r.integer("connections", minimum=1, maximum=32) or 4,
            segment_threshold=r.integer("segment_threshold", minimum=0) or 64 * 1024 * 1024,
            stall_timeout=r.duration("stall_timeout", 60.0),
        )
    torrent = r.string("torrent", required=True)
    inner_name = r.string("file", required=True)
    assert torrent is not None and inner_name is not None
    inner = PurePosixPath(inner_name)
    if inner.is_absolute() or ".." in inner.parts:
        raise ManifestError(r.file, r.key("file"), "must be a relative path inside the torrent",
                            "give the file's path as the torrent lists it")
    save_raw = r.string("save_path")
    save_path = _under_root(r, "save_path", "downloads" if save_raw is None else save_raw, root)
    return TorrentSource(torrent=torrent, file=inner_name, save_path=save_path,
                         web_seeds=r.urls("web_seeds"), mirrors=r.urls("mirrors"))


def _under_root(r: Reader, key: str, raw: str | None, root: Path) -> Path:
    assert raw is not None
    p = PurePosixPath(raw)
    full = Path(os.path.normpath(root / p))
    if p.is_absolute() and not full.is_relative_to(root):
        raise ManifestError(r.file, r.key(key), f"{raw!r} is outside root {root}",
                            "use a path relative to root")
    if not full.is_relative_to(root) or raw.strip() == "":
        raise ManifestError(r.file, r.key(key), f"{raw!r} escapes root {root}",
                            "use a path relative to root without '..'")
    rel = full.relative_to(root)
    _check_os_limits(r, key, raw, full)
    if rel.parts and rel.parts[0] == STATE_DIR:
        raise ManifestError(r.file, r.key(key), f"{raw!r} is inside datasetd's state directory",
                            "choose another directory")
    return full


# Linux's NAME_MAX and PATH_MAX; room is kept below PATH_MAX for the class folder and member names.
_NAME_MAX, _PATH_ROOM = 255, 4096 - 2 * 256


def _check_os_limits(r: Reader, key: str, raw: str, full: Path) -> None:
    shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
    if any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in full.parts):
        raise ManifestError(r.file, r.key(key), f"{shown!r} has a name longer than {_NAME_MAX} bytes",
                            "the OS refuses it; use a shorter directory name")
    if len(str(full).encode("utf-8", "surrogateescape")) > _PATH_ROOM:
        raise ManifestError(r.file, r.key(key), f"{shown!r} makes a path longer than {_PATH_ROOM} bytes",
                            "the OS refuses paths that long once files are added; use a shorter path")

