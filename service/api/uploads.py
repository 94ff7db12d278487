"""A classification request's body to the image bytes it carries: a raw image, multipart files, or a
JSON object of base64 strings (what a browser's `fetch()` or a web developer sends most easily).

The multipart body is parsed as it streams in, straight into memory, with the `multipart` package
that Litestar itself uses. Litestar's own `request.form()` would spool every file over 1 MB into a
temporary file on disk and read it back, a cost a 12 MP upload should not pay; the body limit
already bounds the memory.
"""

from __future__ import annotations

import asyncio
import binascii
import math
from typing import AsyncIterator

import msgspec
from multipart import ParserError, ParserLimitReached, PushMultipartParser

from service.errors import BadImage, BadJson, BodyTooLarge, TooManyImages, UnsupportedMediaType
from artifact.preprocess import MEDIA_TYPES

MULTIPART = "multipart/form-data"
JSON = "application/json"
EXTRA_PARTS = 16  # form fields without a file that an upload may carry beside its images (ignored)
# What a JSON body may hold beyond the base64 itself: per image its padding, quotes, comma, a
# `data:image/...;base64,` prefix and some whitespace; once, the object around the list.
JSON_BYTES_PER_IMAGE = 128
JSON_ENVELOPE_BYTES = 1024
INLINE_JSON_BYTES = 1 << 20  # decoded on the event loop up to here (about 1 ms), in a thread beyond
_ACCEPTED = (
    "image/jpeg, image/png, image/gif, image/bmp, image/tiff, image/webp, application/octet-stream, "
    f"{MULTIPART} or {JSON}"
)
_JSON_SHAPE = '{"images": ["<base64>", ...]} or {"image": "<base64>"}'


def body_kind(content_type: str) -> str:
    """'raw', 'multipart' or 'json' for a request's (lower-cased, parameter-free) Content-Type; 415 otherwise."""
    if content_type in MEDIA_TYPES:
        return "raw"
    if content_type == MULTIPART:
        return "multipart"
    if content_type == JSON:
        return "json"
    shown = content_type or "no Content-Type"
    raise UnsupportedMediaType(
        f"unsupported media type {shown!r}: send {_ACCEPTED}", accepted=sorted(MEDIA_TYPES | {MULTIPART, JSON})
    )


async def read_raw(stream: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes max_bytes."""
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"the request body is over the limit of {max_bytes} bytes", max_body_bytes=max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_multipart(
    stream: AsyncIterator[bytes], boundary: str | None, max_bytes: int, max_images: int
) -> list[bytes]:
    """The files of a multipart/form-data body, in upload order; form fields without a file are ignored."""
    if not boundary:
        raise BadImage("the multipart/form-data Content-Type has no boundary parameter")
    images: list[bytes] = []
    current: bytearray | None = None
    size = 0
    try:
        with PushMultipartParser(boundary, max_segment_count=max_images + EXTRA_PARTS) as parser:
            async for chunk in stream:
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge(
                        f"the request body is over the limit of {max_bytes} bytes", max_body_bytes=max_bytes
                    )
                for event in parser.parse(chunk):
                    if event is None:  # end of a part
                        if current is not None:
                            images.append(bytes(current))
                            current = None
                    elif isinstance(event, (bytes, bytearray, memoryview)):
                        if current is not None:
                            current += event
                    else:  # a new part's headers
                        current = _start_part(event, len(images), max_images)
                if parser.closed:
                    break
            if not parser.closed:
                list(parser.parse(b""))  # end of input: raises on a truncated body
    except ParserLimitReached as error:
        if "segment count" not in str(error):  # a part's headers are too long or too many
            raise BadImage(f"the multipart/form-data body is malformed: {error}") from None
        # Thousands of plain form fields beside one image must not read "too many images".
        raise TooManyImages(
            f"a multipart upload holds at most {max_images + EXTRA_PARTS} parts: up to {max_images} images "
            f"and {EXTRA_PARTS} other form fields",
            max_images=max_images,
            max_parts=max_images + EXTRA_PARTS,
        ) from None
    except ParserError as error:
        raise BadImage(f"the multipart/form-data body is malformed: {error}") from None
    if not images:
        raise BadImage("the multipart/form-data body holds no file: send each image as a file part")
    return images


def _start_part(segment, count: int, max_images: int) -> bytearray | None:
    """A buffer for a file part (checked for type and count), None for a plain form field."""
    content_type = (segment.content_type or "").lower()
    if not segment.filename and not content_type.startswith("image/"):
        return None
    if content_type and content_type not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"file {segment.filename or segment.name!r} has unsupported media type {content_type!r}: send {_ACCEPTED}",
            accepted=sorted(MEDIA_TYPES),
        )
    if count >= max_images:
        raise TooManyImages(f"a multipart upload holds at most {max_images} images", max_images=max_images)
    return bytearray()


def json_body_limit(max_body_bytes: int, max_images: int, read_budget_bytes: int) -> int:
    """The largest JSON body: max_body_bytes of images once base64-encoded (4/3), plus the JSON around
    them; never more than the read budget, which could otherwise never admit it (503 forever)."""
    encoded = 4 * math.ceil(max_body_bytes / 3)
    return min(encoded + max_images * JSON_BYTES_PER_IMAGE + JSON_ENVELOPE_BYTES, read_budget_bytes)


def check_json_length(content_length: int | None, limit: int, max_bytes: int) -> None:
    """413 from the headers for a JSON body that announces more than `limit` (json_body_limit)."""
    if (content_length or 0) > limit:
        raise _json_too_large(limit, max_bytes)


def _json_too_large(limit: int, max_bytes: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the JSON body is over the limit of {limit} bytes "
        f"(max_body_bytes = {max_bytes} of images, base64-encoded, plus the JSON around them)",
        max_body_bytes=max_bytes, max_json_body_bytes=limit,
    )  # fmt: skip


class _JsonImages(msgspec.Struct, forbid_unknown_fields=True):
    """The body, with msgspec decoding the base64 itself: in C, while parsing (several times binascii's speed)."""

    images: list[bytes] | None = None
    image: bytes | None = None


class _JsonText(msgspec.Struct, forbid_unknown_fields=True):
    """The same body as text: for data: URLs, and to say why a string is not base64."""

    images: list[str] | None = None
    image: str | None = None


async def read_json(stream: AsyncIterator[bytes], limit: int, max_bytes: int, max_images: int) -> list[bytes]:
    """The images of a JSON body, in order: 413 past `limit` bytes of JSON (json_body_limit), past
    max_bytes decoded, or past max_images; 400 `bad_json` naming what is wrong with the body."""
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _json_too_large(limit, max_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    if len(body) > INLINE_JSON_BYTES:  # a large body decodes off the event loop
        return await asyncio.to_thread(decode_json, body, max_bytes, max_images)
    return decode_json(body, max_bytes, max_images)


def decode_json(body: bytes, max_bytes: int, max_images: int) -> list[bytes]:
    """The image bytes in a JSON body (see read_json); a `data:...;base64,` URL is allowed for each."""
    try:
        parsed = msgspec.json.decode(body, type=_JsonImages)
    except msgspec.ValidationError as error:
        if "base64" not in str(error):  # msgspec names the JSON type it expected by the Python one
            why = str(error).replace("`bytes`", "a base64 `str`")
            raise BadJson(f"the JSON body must be {_JSON_SHAPE}: {why}") from None
        parsed = _from_text(body)
    except msgspec.DecodeError as error:
        raise BadJson(f"the body is not valid JSON: {error}") from None
    if (parsed.images is None) == (parsed.image is None):
        raise BadJson(f"the JSON body must be {_JSON_SHAPE}, with exactly one of the two keys")
    images = [parsed.image] if parsed.image is not None else parsed.images
    if not images:
        raise BadJson('the JSON body\'s "images" list is empty: send at least one image')
    if len(images) > max_images:
        raise TooManyImages(f"a JSON body holds at most {max_images} images, got {len(images)}", max_images=max_images)
    if sum(map(len, images)) > max_bytes:
        raise BodyTooLarge(f"the decoded images are over the limit of {max_bytes} bytes", max_body_bytes=max_bytes)
    return images


def _from_text(body: bytes) -> _JsonImages:
    """The body decoded string by string: data: URLs, and the first string that is not base64 named."""
    parsed = msgspec.json.decode(body, type=_JsonText)
    if parsed.image is not None:
        return _JsonImages(image=_base64("image", parsed.image), images=None if parsed.images is None else [])
    return _JsonImages(images=[_base64(f"images[{i}]", text) for i, text in enumerate(parsed.images)])


def _base64(name: str, text: str) -> bytes:
    """One image's bytes from standard base64 (RFC 4648 section 4, padded), or a base64 data: URL."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadJson(f"{name} is a data: URL without ';base64,': send the image base64-encoded")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as error:  # ValueError: a non-ASCII character
        raise BadJson(f"{name} is not valid base64 ({error}); {len(text)} characters") from None
