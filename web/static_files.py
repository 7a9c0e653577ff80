"""The dashboard's static files: read once at start, each served at a URL holding a hash of
its content (`/static/<hash>/<name>`), so a browser may keep it a year and still never runs
an old script after an upgrade. A URL with another hash (a page of an older or newer node
behind the same proxy) gets the current file, not cached."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from api.errors import NotFound

FOLDER = Path(__file__).parent / "static"
IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}


@dataclass(frozen=True)
class StaticFile:
    content: bytes
    digest: str  # the first 16 hex digits of its SHA-256
    media_type: str


def _load(folder: Path) -> dict[str, StaticFile]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            content = path.read_bytes()
            kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
            digest = hashlib.sha256(content).hexdigest()[:16]
            files[path.name] = StaticFile(content, digest, kind or "application/octet-stream")
    return files


FILES = _load(FOLDER)


def url(name: str) -> str:
    """The URL of a static file (a KeyError for a name that is none: a template bug)."""
    return f"/static/{FILES[name].digest}/{name}"


async def serve(request: Request) -> Response:
    found = FILES.get(request.path_params["name"])
    if found is None:
        raise NotFound("no such file")
    current = request.path_params["digest"] == found.digest
    headers = {"Cache-Control": IMMUTABLE if current else "no-cache"}
    return Response(found.content, media_type=found.media_type, headers=headers)
