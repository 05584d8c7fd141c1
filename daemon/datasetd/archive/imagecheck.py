"""Odd image files, found by reading JPEG markers (no decoder): for the acceptance report.

Sits after verification: the files are known to be the archive's bytes; this
says which of them a training loader will trip on (imagenet-facts.md, "Odd
files"): CMYK JPEGs (4 components in the SOF marker; torchvision's
decode_jpeg cannot convert them), files named .JPEG that are not JPEG (the
PNG in ILSVRC2012 train), and JPEGs with no EOI marker (truncated).
"""

from __future__ import annotations

from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length
IMAGE_SUFFIXES = (".jpeg", ".jpg")


def odd_image(path: Path) -> str | None:
    """Why a file named like a JPEG is odd, or None for a plain (1 or 3 component) complete JPEG."""
    data = path.read_bytes()
    if data.startswith(PNG_SIGNATURE):
        return "PNG named as a JPEG"
    if data[:2] != b"\xff\xd8":
        return "not a JPEG (no SOI marker)"
    return _walk(data)


def _walk(data: bytes) -> str | None:
    pos, components = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return f"bad JPEG marker at byte {pos}"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in SOF_MARKERS and pos + 9 < len(data):
            components = data[pos + 9]
        if marker == SOS:
            # entropy-coded data follows; a complete file ends with EOI (some encoders pad after it)
            if data.rfind(b"\xff\xd9", pos + 2 + length) < 0:
                return "truncated JPEG (no EOI marker)"
            return "CMYK JPEG (4 components)" if components == 4 else None
        if marker == EOI:
            break
        pos += 2 + length
    return "truncated JPEG (no EOI marker)"  # the file ends before the image data does
