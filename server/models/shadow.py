"""The shadow of a model: a version that scores sampled calls beside the served one, its answer
never sent (docs/operations.md, "Shadow").

An operator marks it with a file `shadow` in the model's directory (NAME/shadow, beside the
numbered version directories) holding the version's number. Calls that name no version then
get the newest other version; the model directory scan (hot reload) reads the file each time,
so promotion is rewriting it with the served version's number (written whole, renamed in):
the shadow becomes the served version and the old one its shadow, both loaded throughout.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

SHADOW_FILE = "shadow"
MAX_BYTES = 64


def read_shadow(directory: Path) -> str:
    """The version number in directory/shadow ("" when there is none, or it is not a whole
    number: logged)."""
    path = directory / SHADOW_FILE
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return ""
    except OSError as error:
        log.warning("%s: cannot read it (%s); no shadow", path, error.strerror)
        return ""
    text = raw.decode("utf-8", "replace").strip()
    if len(raw) > MAX_BYTES or not (text.isascii() and text.isdigit()):
        log.warning("%s: %.40r is not a version number; no shadow", path, text)
        return ""
    return str(int(text))
