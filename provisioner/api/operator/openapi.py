"""The OpenAPI 3.1 document of the operator API, written from the route table (table.py)."""

from __future__ import annotations

import re

from provisioner.policy.authz import Action

from .table import Route

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _path(rule: str) -> tuple[str, list[dict]]:
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "integer" if conv == "int" else "string"}} for conv, name in _PARAM.findall(rule)]
    return _PARAM.sub(r"{\2}", rule), params


def document(routes: list[Route], version: str) -> dict:
    paths: dict[str, dict] = {}
    for r in routes:
        path, params = _path(r.path)
        params += [{"name": q, "in": "query", "required": False, "schema": {"type": t}} for q, t in r.query.items()]
        action = r.action if isinstance(r.action, Action) else None
        op = {"operationId": r.endpoint, "summary": r.summary, "parameters": params,
              "x-authorisation": str(action) if action else ("none" if r.action is None else "depends on the body"),
              "responses": {str(r.status): {"description": "OK", "content": {
                  "text/event-stream" if r.stream else "application/json": {"schema": {}}}},
                  "default": {"description": "A problem (RFC 9457)",
                              "content": {"application/problem+json": {"schema": PROBLEM}}}}}
        if r.action is None:
            op["security"] = []
        if r.body:
            op["requestBody"] = {"required": any(req for _, req in r.body.values()), "content": {"application/json": {
                "schema": {"type": "object", "properties": {k: {"type": t} for k, (t, _) in r.body.items()},
                           "required": [k for k, (_, req) in r.body.items() if req]}}}}
        paths.setdefault(path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "provisioner operator API", "version": version,
                 "description": "Every operator command; authenticated by an API token or a session, "
                                "authorised by the roles matrix (README: Accounts and roles)."},
        "paths": paths,
        "security": [{"token": []}, {"session": []}],
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"},
                                "session": {"type": "apiKey", "in": "cookie", "name": "provisioner_session"}},
            "schemas": {"Problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}}}}},
    }
