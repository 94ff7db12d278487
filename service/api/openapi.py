"""The classify routes' request body in the OpenAPI document, as the service really reads it.

The routes read their body themselves (service/api/uploads.py, streamed, against the read budget), so
Litestar sees no `data` parameter and declared no body: the schema said a POST without a body was
valid (it gets 415), and the /schema UI could not send an image (Schemathesis found it).
This operation class declares what uploads.body_kind accepts: one raw image of a served media type,
multipart/form-data whose file parts are images, or a JSON object of base64 strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import Encoding, OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType

from artifact.preprocess import MEDIA_TYPES
from service.api.uploads import JSON, MULTIPART

_BINARY = Schema(type=OpenAPIType.STRING, format="binary")
_MULTIPART = Schema(
    type=OpenAPIType.OBJECT,
    properties={"images": Schema(type=OpenAPIType.ARRAY, items=_BINARY, min_items=1)},
    required=["images"],
)
_BASE64 = Schema(
    type=OpenAPIType.STRING, format="byte",
    description="an image file, base64-encoded (RFC 4648, padded); a data:image/...;base64, URL also works",
)  # fmt: skip
_JSON = Schema(
    one_of=[
        Schema(
            type=OpenAPIType.OBJECT, properties={"images": Schema(type=OpenAPIType.ARRAY, items=_BASE64, min_items=1)},
            required=["images"], additional_properties=False,
        ),
        Schema(type=OpenAPIType.OBJECT, properties={"image": _BASE64}, required=["image"], additional_properties=False),
    ]
)  # fmt: skip

CLASSIFY_BODY = RequestBody(
    required=True,
    description=(
        "One image as the raw body, multipart/form-data with one or more image files, or JSON: "
        '{"images": [base64, ...]} or {"image": base64}.'
    ),
    content={
        **{media: OpenAPIMediaType(schema=_BINARY) for media in sorted(MEDIA_TYPES)},
        MULTIPART: OpenAPIMediaType(
            schema=_MULTIPART, encoding={"images": Encoding(content_type=", ".join(sorted(MEDIA_TYPES)))}
        ),
        JSON: OpenAPIMediaType(schema=_JSON),
    },
)


@dataclass
class ClassifyOperation(Operation):
    """An Operation whose request body is the classify routes' (Litestar leaves it empty)."""

    def __post_init__(self) -> None:
        if self.request_body is None:
            self.request_body = CLASSIFY_BODY
