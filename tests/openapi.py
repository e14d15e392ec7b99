"""docs/openapi.yaml as a checker of real responses (integration and end-to-end tests)."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .conftest import REPO

BASE = "urn:callmfa-openapi"


@functools.cache
def spec() -> dict[str, Any]:
    """The parsed document."""
    doc: dict[str, Any] = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
    return doc


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def check(method: str, path: str, status: int, body: Any) -> None:
    """Fail unless ``body`` is what the document says ``method path`` answers with
    ``status`` (``path`` as the document writes it: /v1/verifications/{id})."""
    doc = spec()
    operation = doc["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {path}: {status} is not documented"
    where = ["paths", path, method.lower(), "responses", str(status)]
    response = responses[str(status)]
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[1]
        where = ["components", "responses", name]
        response = doc["components"]["responses"][name]
    assert "application/json" in response["content"], f"{method} {path} {status}: not JSON"
    registry: Registry[Any] = Registry().with_resource(
        BASE, Resource.from_contents(doc, default_specification=DRAFT202012))
    schema = {"$ref": f"{BASE}#/{_pointer(*where, 'content', 'application/json', 'schema')}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(body)
