"""The page at `/`: a person drops, picks, pastes or clicks images and sees the top-5 of any served
model or of `auto`, in a browser, with nothing to install.

    GET /                        the page (service/web/static/index.html)
    GET /ui/{file}               its script, styles and example images (service/web/static/)

The page calls only the public API (`GET /models`, `POST /classify` with the raw image as the body),
so it cannot drift from what a client sees. Its files are package data, read into memory when the
app is built: nothing is fetched from another origin (the Content-Security-Policy says so to the
browser) and no path from the request reaches the filesystem.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from litestar import Response, Router, get

from service.errors import NotFound

# The page's own origin only: no CDN, no inline script; blob: previews the images the person chose.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # small files, revalidated: a new release shows at once
}
MEDIA_TYPES = {  # Litestar adds "; charset=utf-8" to text types
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".jpg": "image/jpeg",
}


def static_files(root: Traversable | None = None) -> dict[str, tuple[bytes, str]]:
    """Every file under service/web/static/ (or `root`), by its path there: (content, media type)."""
    root = root or files("service.web") / "static"
    found: dict[str, tuple[bytes, str]] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
            elif (suffix := "." + entry.name.rpartition(".")[2]) in MEDIA_TYPES:
                found[name] = (entry.read_bytes(), MEDIA_TYPES[suffix])

    walk(root, "")
    if "index.html" not in found:
        raise FileNotFoundError(f"{root} has no index.html: the package was installed without its page")
    return found


def router() -> Router:
    """The routes of the page, over the files read now (left out of the OpenAPI document: not API)."""
    pages = static_files()

    def answer(name: str) -> Response[bytes]:
        if name not in pages:
            raise NotFound(f"no file {name!r} in the page's files")
        content, media_type = pages[name]
        return Response(content, media_type=media_type, headers=HEADERS)

    @get("/", include_in_schema=False)
    async def index() -> Response[bytes]:
        return answer("index.html")

    @get("/ui/{name:path}", include_in_schema=False)
    async def asset(name: str) -> Response[bytes]:
        return answer(name.lstrip("/"))

    return Router(path="", route_handlers=[index, asset])
