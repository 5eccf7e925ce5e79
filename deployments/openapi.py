"""The classify routes' request bodies as OpenAPI sees them (multipart or JSON): FastAPI cannot
infer them, since the routes read the body themselves."""

from __future__ import annotations

from classifiers.schemas import ClassifyBatchJsonRequest, ClassifyJsonRequest

MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "classifiers": {"type": "array", "items": {"type": "string"}},
        "labels": {"type": "array", "items": {"type": "string"}},
        "unsafe_labels": {"type": "array", "items": {"type": "string"}},
        "threshold": {"type": "number"},
    },
}


def _inlined(schema: dict) -> dict:
    """A JSON schema with its ``$defs`` written in place: OpenAPI resolves ``#/$defs/...``
    against the document's root, where they are not."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(schema)


BATCH_MULTIPART_SCHEMA = {
    **MULTIPART_SCHEMA,
    "properties": {**MULTIPART_SCHEMA["properties"],
                   "file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": BATCH_MULTIPART_SCHEMA},
            "application/json": {"schema": _inlined(ClassifyBatchJsonRequest.model_json_schema())},
        },
    }
}
CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            "application/json": {"schema": ClassifyJsonRequest.model_json_schema()},
        },
    }
}
