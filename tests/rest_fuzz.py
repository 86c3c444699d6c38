"""One-field mutations of valid REST requests, sent over HTTP and checked by schemathesis.

A fuzzer built on this starts from a request the service accepts and changes exactly one
thing: one body field (at any depth), query parameter, path parameter or header is replaced
or removed. The replacement is a value schemathesis generates for that field from the
OpenAPI schema, an edge of the field's documented range, or any JSON value; one request in ten
goes unchanged. Most requests therefore stay valid and reach the billed path; the others probe
one field's validation at a time. Every response goes through schemathesis's checks: no 5xx, no status the schema does
not document for the operation.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

Where = tuple[str | int, ...]  # ("body", "messages", 0, "content"), ("query", "limit"), ("headers", "X")

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                      st.text(max_size=30))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                    max_leaves=8)
# Query parameters and headers are text on the wire.
QUERY_VALUE = st.one_of(st.text(max_size=30), st.integers().map(str), st.sampled_from(["", "true", "null", "-1"]))
# Header values as HTTP allows them: visible ASCII and Latin-1, inner spaces, no edge whitespace.
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                       max_size=40).map(str.strip)

MISSING = object()


@dataclass
class Request:
    body: Any = MISSING  # a JSON value (MISSING: no body)
    query: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    path: dict[str, Any] = field(default_factory=dict)
    mutation: str = "none"

    def __repr__(self) -> str:
        return f"Request({self.mutation})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how Hypothesis prints a falsifying example
        printer.text(repr(self))

    def part(self, name: str) -> Any:
        return {"body": self.body, "query": self.query, "headers": self.headers, "path": self.path}[name]


@dataclass(frozen=True)
class Target:
    """One operation to fuzz: a valid request (made fresh for each example) and the fields to mutate."""

    name: str
    method: str
    path: str  # the OpenAPI path, e.g. /api/v1/console/keys/{key_id}
    base: Callable[[], Request]
    fields: tuple[Where, ...]
    edges: dict[Where, list[Any]] = field(default_factory=dict)


def _lookup(container: Any, where: Where) -> Any:
    for step in where:
        if isinstance(container, dict) and step in container:
            container = container[step]
        elif isinstance(container, list) and isinstance(step, int) and step < len(container):
            container = container[step]
        else:
            return MISSING
    return container


def _parent(container: Any, where: Where) -> Any:
    parent = _lookup(container, where[:-1])
    return parent if isinstance(parent, (dict, list)) else MISSING


def one_field_mutations(target: Target, operation: Any) -> st.SearchStrategy[Request]:
    """A valid request for `target` with one field changed (the schemathesis `operation` supplies schema values)."""
    cases = operation.as_strategy()

    def value_from(draw: st.DrawFn, source: str, where: Where) -> Any:
        part, inner = where[0], where[1:]
        if source == "schema":  # the field's value in a case schemathesis generated (if it made one)
            case = draw(cases)
            generated = {"body": case.body, "query": case.query, "headers": case.headers,
                         "path": case.path_parameters}[part]
            return _lookup(generated, inner)
        if source == "edge":
            return draw(st.sampled_from(target.edges[where])) if target.edges.get(where) else MISSING
        return draw(JSON if part == "body" else QUERY_VALUE if part in ("query", "path") else HEADER_VALUE)

    @st.composite
    def build(draw: st.DrawFn) -> Request:
        request = target.base()
        where = draw(st.sampled_from(target.fields))
        part, inner = where[0], where[1:]
        # Weighted toward changes a client could mean (edges, a field left out), so most requests stay valid;
        # one in ten goes as it is (the control: a valid request must succeed).
        how = draw(st.sampled_from(["schema", "schema", "edge", "edge", "edge", "json", "delete", "delete", "whole",
                                    "none"]))
        if how == "none":
            request.mutation = "no mutation"
            return request
        if how == "whole" and part == "body":  # a body schemathesis made from the schema, as is
            request.body = draw(cases).body
            request.mutation = "body ← schemathesis case"
            return request
        container = request.part(part)
        parent = _parent(container, inner)
        if parent is MISSING:
            raise AssertionError(f"{target.name}: the valid request has no {'.'.join(map(str, where[:-1]))}")
        if how == "delete" and _lookup(container, inner) is not MISSING:
            del parent[inner[-1]]
            request.mutation = f"{'.'.join(map(str, where))} deleted"
            return request
        # A source with nothing for this field falls back to the next: schema, edges, any JSON value.
        sources = {"schema": ["schema", "edge"], "edge": ["edge", "schema"], "json": []}.get(how, ["schema", "edge"])
        value: Any = MISSING
        for how in [*sources, "json"]:
            value = value_from(draw, how, where)
            if value is not MISSING:
                break
        if part in ("query", "path") and not isinstance(value, str):
            value = value if isinstance(value, (int, float)) and not isinstance(value, bool) else json.dumps(value)
        if part == "path" and value == "":  # an empty segment names another route (FastAPI redirects it: 307)
            value = " "
        if part == "headers":
            value = "".join(c for c in str(value) if " " <= c <= "\xff" and c != "\x7f").strip()
        parent[inner[-1]] = value
        request.mutation = f"{'.'.join(map(str, where))} ← {how} {json.dumps(value, default=str)[:80]}"
        return request

    return build()


def send(client: httpx.Client, operation: Any, target: Target, request: Request,
         headers: dict[str, str]) -> httpx.Response:
    """Sends the request and has schemathesis check the response (no 5xx, a documented status)."""
    url = target.path
    for name, value in request.path.items():
        url = url.replace("{" + name + "}", quote(str(value), safe=""))
    sent_headers = {**headers, **request.headers}
    content = None
    if request.body is not MISSING:
        # ensure_ascii: lone surrogates travel as \\ud800 escapes, which the service must refuse with a 400.
        content = json.dumps(request.body).encode()
        sent_headers.setdefault("Content-Type", "application/json")
    wire_headers = {name: value.encode("latin-1") for name, value in sent_headers.items()}
    response = client.request(target.method, url, params=request.query, headers=wire_headers, content=content)
    body = {"body": copy.deepcopy(request.body), "media_type": "application/json"} if content is not None else {}
    case = operation.Case(query=request.query, headers=sent_headers, path_parameters=request.path, **body)
    try:
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
    except BaseException as failure:
        raise AssertionError(f"{target.name}: {request.mutation} → {response.status_code} "
                             f"{response.text[:300]}") from failure
    return response


def find_operation(schema: Any, method: str, path: str) -> Any:
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == path and operation.method.upper() == method.upper():
            return operation
    raise AssertionError(f"{method} {path} is not in the OpenAPI schema")


def status_table(counts: Counter[tuple[str, int]]) -> str:
    names = sorted({name for name, _ in counts})
    return "\n".join(f"  {name:<22} " + ", ".join(f"{status}: {n}" for (target, status), n in sorted(counts.items())
                                                 if target == name) for name in names)
