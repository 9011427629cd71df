"""The OpenAPI 3.1 document of the HTTP API (``GET /api/openapi.json``), generated at request
time from the application's router: each route's :class:`~server.http.routes.Operation`, which
:class:`~server.http.routes.Routes` attached when the route was declared, or :func:`describe`
for a handler registered another way (the WebSocket upgrade, the demo page)."""

from __future__ import annotations

import http
import re
from dataclasses import dataclass, field
from typing import Any, Callable, cast

from aiohttp import hdrs, web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..keys import NODE
from .errors import ErrorBody
from .routes import JSON, OPERATION_ATTR, Access, Handler, Operation

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{(\w+)\}")


def describe(summary: str, **op: Any) -> Callable[[Handler], Handler]:
    """Document a handler registered without :class:`~server.http.routes.Routes`; nothing is
    parsed or checked for it (the handler does its own)."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, OPERATION_ATTR, Operation(summary, **op))
        return handler

    return mark


# --- the document -----------------------------------------------------------------------------
_SCHEMES = {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
_SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    "anyone": [], "user": [{"bearerAuth": []}, {"apiKey": []}], "bearer": [{"bearerAuth": []}],
    "admin": [{"bearerAuth": []}, {"apiKey": []}],
}
_AUTH_ERRORS: dict[Access, tuple[int, ...]] = {"anyone": (), "user": (401,), "bearer": (401,),
                                               "admin": (401, 403)}


@dataclass
class _Entry:
    path: str
    method: str
    name: str
    op: Operation
    access: Access
    refs: dict[str, Any] = field(default_factory=dict)


_STATIC = Operation("A file of this directory", content_type="application/octet-stream",
                    tags=("pages",))


def route_path(route: web.AbstractRoute) -> str | None:
    """The OpenAPI path of ``route`` (``/static/{filename}`` for a static directory)."""
    if route.resource is None:
        return None
    path = route.resource.canonical
    if isinstance(route.resource, web.StaticResource):
        return path.rstrip("/") + "/{filename}"
    return path


def _entries(app: web.Application) -> list[_Entry]:
    config = app[NODE].config
    found = []
    for route in app.router.routes():
        static = isinstance(route.resource, web.StaticResource)
        op = _STATIC if static else getattr(route.handler, OPERATION_ATTR, None)
        path = route_path(route)
        if route.method == hdrs.METH_HEAD or op is None or path is None:
            continue
        name = f"static_{path.strip('/').split('/')[0]}" if static else \
            getattr(route.handler, "__name__", "handler")
        found.append(_Entry(path, route.method.lower(), name, op, op.access_for(config)))
    return found


def _parameters(entry: _Entry) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "minLength": 1, "pattern": "^[^{}/]+$"}}
        for name in _PATH_PARAM.findall(entry.path)]
    query = entry.op.query
    if query is not None:
        schema = query.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                     "schema": _not_null(prop)}
            if prop.get("description"):
                param["description"] = prop["description"]
            params.append(param)
    return params


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: without its description, and ``X`` for ``X | None`` (a
    parameter is absent, never null)."""
    schema = {k: v for k, v in prop.items() if k != "description"}
    options = [o for o in schema.pop("anyOf", ()) if o.get("type") != "null"]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _operation(entry: _Entry, refs: dict[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    op = entry.op
    out: dict[str, Any] = {"operationId": entry.name, "summary": op.summary, "tags": list(op.tags)}
    if op.description:
        out["description"] = op.description
    params = _parameters(entry)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": bool(op.body.model_json_schema().get("required")),
            "content": {JSON: {"schema": refs[(op.body, "validation")]}}}
    success: dict[str, Any] = {"description": http.HTTPStatus(op.status).phrase}
    if op.response is not None:
        success["content"] = {op.content_type: {"schema": refs[(op.response, "serialization")]}}
    elif op.status != 101:
        success["content"] = {op.content_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(op.status): success}
    errors = set(op.errors) | set(_AUTH_ERRORS[entry.access])
    if op.query is not None or op.body is not None:
        errors.add(400)
    if op.body is not None:
        errors.add(413)
    for status in sorted(errors):
        responses[str(status)] = {"description": http.HTTPStatus(status).phrase,
                                  "content": {JSON: {"schema": refs[(ErrorBody, "serialization")]}}}
    if op is _STATIC:  # aiohttp's file response: an empty 404
        responses["404"] = {"description": http.HTTPStatus.NOT_FOUND.phrase}
    out["responses"] = responses
    security = _SECURITY[entry.access]
    if security:
        out["security"] = security
    return out


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented route of ``app``."""
    entries = _entries(app)
    wanted: dict[tuple[type[BaseModel], str], None] = {(ErrorBody, "serialization"): None}
    for entry in entries:
        if entry.op.body is not None:
            wanted[(entry.op.body, "validation")] = None
        if entry.op.response is not None:
            wanted[(entry.op.response, "serialization")] = None
    found, top = models_json_schema(list(wanted), ref_template=_REF)  # type: ignore[arg-type]
    refs = cast(dict[tuple[type[BaseModel], str], Any], found)
    paths: dict[str, dict[str, Any]] = {}
    for entry in sorted(entries, key=lambda e: (e.path, e.method)):
        paths.setdefault(entry.path, {})[entry.method] = _operation(entry, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchboard HTTP API", "version": __version__,
                 "description": "The HTTP API of a Switchboard server (docs/api.md)."},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}), "securitySchemes": _SCHEMES},
    }
