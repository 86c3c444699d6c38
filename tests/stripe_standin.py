"""A local stand-in for the few Stripe API calls the REST service makes, so no test reaches Stripe.

A real HTTP server (stdlib, a thread, 127.0.0.1) that the official `stripe` SDK talks to through
STRIPE_API_BASE. It answers:

* POST /v1/checkout/sessions: a Checkout Session (`cs_test_…`) built from the form-encoded
  parameters as Stripe builds it (amount_total = unit_amount × quantity, metadata, URLs), whose
  `url` is the stand-in's own hosted page. It honours Idempotency-Key as Stripe does: the same key
  with the same parameters answers the same session (and `Idempotent-Replayed: true`), the same key
  with other parameters answers 400 `idempotency_error`. A wrong secret key answers 401.
* GET /v1/checkout/sessions/{id}: the session.
* GET /pay/{id}: the "hosted checkout page", with a link to pay (it goes to success_url, with
  {CHECKOUT_SESSION_ID} filled in, as Stripe does after a payment) and one to cancel.

Every API request is recorded (method, path, headers, the form fields flattened as Stripe's SDK
encodes them: `metadata[org_id]`, `line_items[0][price_data][unit_amount]`, …) so tests can assert
what was sent. `paid(session_id)` marks a session paid and returns it, to build the event Stripe
would then send (tests/stripe_events.py signs it).
"""

from __future__ import annotations

import html
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    form: dict[str, str]  # flattened: "metadata[org_id]" -> "…"


def session_of(form: dict[str, str], base_url: str) -> dict[str, Any]:
    """A Checkout Session as Stripe answers its creation (the fields the product and tests read)."""
    session_id = f"cs_test_{secrets.token_hex(12)}"
    quantity = int(form.get("line_items[0][quantity]", "1"))
    unit_amount = int(form["line_items[0][price_data][unit_amount]"])
    metadata = {key[len("metadata["):-1]: value for key, value in form.items() if key.startswith("metadata[")}
    now = int(time.time())
    return {"id": session_id, "object": "checkout.session", "mode": form.get("mode"), "livemode": False,
            "amount_subtotal": unit_amount * quantity, "amount_total": unit_amount * quantity,
            "currency": form["line_items[0][price_data][currency]"], "metadata": metadata,
            "client_reference_id": form.get("client_reference_id"), "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"), "status": "open", "payment_status": "unpaid",
            "payment_intent": None, "created": now, "expires_at": now + 86_400,
            "url": f"{base_url}/pay/{session_id}"}


class StripeStandIn:
    def __init__(self, secret_key: str):
        self.secret_key = secret_key
        self.requests: list[Recorded] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                standin.handle(self, "POST", dict(parse_qsl(body, keep_blank_values=True)))

            def do_GET(self):  # noqa: N802
                standin.handle(self, "GET", {})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> StripeStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def created(self) -> list[Recorded]:
        """The session creations asked for (replays of one Idempotency-Key included)."""
        with self.lock:
            return [r for r in self.requests if r.method == "POST" and r.path == "/v1/checkout/sessions"]

    def sessions_with(self, org_id: str) -> list[dict[str, Any]]:
        """The sessions created for this organization (metadata[org_id])."""
        with self.lock:
            return [s for s in self.sessions.values() if s["metadata"].get("org_id") == org_id]

    def paid(self, session_id: str) -> dict[str, Any]:
        """The session as Stripe has it once paid (the object of checkout.session.completed)."""
        with self.lock:
            session = self.sessions[session_id]
            session.update(status="complete", payment_status="paid",
                           payment_intent=session.get("payment_intent") or f"pi_test_{secrets.token_hex(12)}")
            return json.loads(json.dumps(session))

    # ---- the server side ----

    def handle(self, handler: BaseHTTPRequestHandler, method: str, form: dict[str, str]) -> None:
        path = handler.path.split("?", 1)[0]
        if path.startswith("/pay/"):
            return self.hosted_page(handler, path.removeprefix("/pay/"))
        if not path.startswith("/v1/"):  # e.g. the browser's /favicon.ico on the hosted page
            return reply(handler, 404, error("invalid_request_error", f"Unrecognized request URL ({path})."))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self.lock:
            self.requests.append(Recorded(method, path, headers, form))
        if headers.get("authorization") != f"Bearer {self.secret_key}":
            return reply(handler, 401, error("invalid_request_error", "Invalid API Key provided."))
        if method == "POST" and path == "/v1/checkout/sessions":
            return self.create(handler, headers.get("idempotency-key", ""), form)
        if method == "GET" and path.startswith("/v1/checkout/sessions/"):
            with self.lock:
                session = self.sessions.get(path.rsplit("/", 1)[1])
            if session:
                return reply(handler, 200, session)
            return reply(handler, 404, error("invalid_request_error", "No such checkout.session"))
        return reply(handler, 404, error("invalid_request_error", f"Unrecognized request URL ({method} {path})."))

    def create(self, handler: BaseHTTPRequestHandler, key: str, form: dict[str, str]) -> None:
        with self.lock:
            if key and key in self.by_key:
                first, session = self.by_key[key]
                if first != form:
                    return reply(handler, 400, error(
                        "idempotency_error", "Keys for idempotent requests can only be used with the same "
                                             "parameters they were first used with."))
                return reply(handler, 200, session, {"Idempotent-Replayed": "true"})
            session = session_of(form, self.url)
            self.sessions[session["id"]] = session
            if key:
                self.by_key[key] = (form, session)
        return reply(handler, 200, session)

    def hosted_page(self, handler: BaseHTTPRequestHandler, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return reply(handler, 404, error("invalid_request_error", "No such checkout.session"))
        success = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id)
        amount = f"{session['amount_total']} {session['currency']} (minor units)"
        page = (f"<!doctype html><title>Stand-in checkout</title><h1 id='standin'>Stand-in Stripe checkout</h1>"
                f"<p id='amount'>{html.escape(amount)}</p><p id='session'>{html.escape(session_id)}</p>"
                f"<a id='pay' href='{html.escape(success)}'>Pay</a> "
                f"<a id='cancel' href='{html.escape(session['cancel_url'])}'>Cancel</a>").encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Content-Length", str(len(page)))
        handler.end_headers()
        handler.wfile.write(page)


def error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def reply(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
          headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Request-Id", f"req_{secrets.token_hex(8)}")
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)
