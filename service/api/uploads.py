"""A classification request's body to the image bytes it carries: a raw image, or multipart files.

The multipart body is parsed as it streams in, straight into memory, with the `multipart` package
that Litestar itself uses. Litestar's own `request.form()` would spool every file over 1 MB into a
temporary file on disk and read it back, a cost a 12 MP upload should not pay; the body limit
already bounds the memory.
"""

from __future__ import annotations

from typing import AsyncIterator

from multipart import ParserError, ParserLimitReached, PushMultipartParser

from service.errors import BadImage, BodyTooLarge, TooManyImages, UnsupportedMediaType
from artifact.preprocess import MEDIA_TYPES

MULTIPART = "multipart/form-data"
EXTRA_PARTS = 16  # form fields without a file that an upload may carry beside its images (ignored)
_ACCEPTED = (
    f"image/jpeg, image/png, image/gif, image/bmp, image/tiff, image/webp, application/octet-stream or {MULTIPART}"
)


def body_kind(content_type: str) -> str:
    """'raw' or 'multipart' for a request's (lower-cased, parameter-free) Content-Type; 415 otherwise."""
    if content_type in MEDIA_TYPES:
        return "raw"
    if content_type == MULTIPART:
        return "multipart"
    shown = content_type or "no Content-Type"
    raise UnsupportedMediaType(
        f"unsupported media type {shown!r}: send {_ACCEPTED}", accepted=sorted(MEDIA_TYPES | {MULTIPART})
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
