"""The manifests we ship parse, and pin what ILSVRC2012 publishes (sizes, md5, sha256, info-hashes)."""

from __future__ import annotations

from pathlib import Path

from datasetd.config.manifest import FileSource, TorrentSource
from datasetd.config.parsing import load

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def test_imagenet_manifest_pins_the_published_archives() -> None:
    m = load(MANIFESTS / "imagenet.toml")
    train, val, devkit = (m.components[n] for n in ("train", "val", "devkit"))
    assert (train.size, train.md5) == (147_897_477_120, "1d675b47d978889d74fa0da5fadfb00e")
    assert train.sha256 == "b08200a27a8e34218a0e58fde36b0fe8f73bc377f4acea2d91602057c3ca45bb"
    assert (val.size, val.md5) == (6_744_924_160, "29b22e2961454d5413ddabcf34fc5622")
    assert (devkit.size, devkit.md5) == (2_568_145, "fa75699e90414af021442c21a62c3abf")
    assert isinstance(train.source, TorrentSource) and isinstance(val.source, TorrentSource)
    assert "a306397ccf9c2ead27155983c254227c0fd938e2" in train.source.torrent
    assert "5d6d0df7ed81efd49ca99ea4737e0ae5e3a5f2e5" in val.source.torrent
    assert isinstance(devkit.source, FileSource)
    assert (train.unpack, val.unpack, devkit.unpack) == ("class-tars", "tar", "tar")
    assert not m.torrent.upnp and not m.torrent.natpmp


def test_demo_manifest_parses() -> None:
    m = load(MANIFESTS / "demo.toml")
    assert set(m.components) == {"train", "val", "devkit"}


def test_imagenet_manifest_expects_the_published_counts() -> None:
    m = load(MANIFESTS / "imagenet.toml")
    train, val = m.components["train"].expect, m.components["val"].expect
    assert train is not None and val is not None
    assert (train.classes, train.files, train.per_class_min, train.per_class_max) == (1000, 1_281_167, 732, 1300)
    assert (val.classes, val.files, val.per_class) == (1000, 50_000, 50)
    arrange = m.components["val"].arrange
    assert arrange is not None and arrange.devkit == "devkit" and "devkit" in m.components["val"].after


def test_every_shipped_manifest_validates() -> None:
    shipped = sorted(MANIFESTS.glob("*.toml"))
    assert len(shipped) >= 2
    for path in shipped:
        assert load(path).components, path


def test_cls_loc_manifest_is_http_with_env_credentials_and_arranges_val() -> None:
    from datasetd.config.manifest import HttpSource

    m = load(MANIFESTS / "ilsvrc2015-cls-loc.toml")
    comp = m.components["cls-loc"]
    assert isinstance(comp.source, HttpSource) and comp.source.auth is not None
    assert (comp.source.auth.user_env, comp.source.auth.password_env) == ("IMAGENET_USER", "IMAGENET_PASSWORD")
    assert str(comp.archive).endswith("ILSVRC2015_CLS-LOC.tar.gz") and comp.unpack == "tar"
    assert comp.arrange is not None and comp.arrange.devkit == "devkit"
