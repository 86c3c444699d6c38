"""Logs of both services: one readable line per event on a terminal (time, level, service, message, key
fields), one JSON object per line otherwise — or as LOG_FORMAT says (text, json). The same events either way.

The request id of the call being served (REST X-Request-Id, carried to the
authority as gRPC metadata `x-request-id`) is added to every line, so one id
finds one call in both services' logs and on its attribution row. Messages
never contain API keys or tokens; nothing here logs request headers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import logging
import sys
import time

from .settings import OutputSettings

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


_service = ""  # which process writes: "authority", "rest", "up" (configure())
_json = True


def _entry(record: logging.LogRecord) -> dict[str, object]:
    entry: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if _service:
        entry["service"] = _service
    rid = request_id.get()
    if rid:
        entry["request_id"] = rid
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            entry[key] = value
    return entry


def text_line(entry: dict[str, object]) -> str:
    """One event for a person: local time, level, service, message, then the other fields as key=value."""
    stamp = time.strftime("%H:%M:%S", time.localtime())
    level = str(entry.get("level", "info")).upper()
    source = str(entry.get("service") or entry.get("logger", ""))
    skip = {"ts", "level", "service", "msg", "exc"}
    if entry.get("logger") in ("credit_service", "inference_service", source, "access"):
        skip.add("logger")
    fields = " ".join(f"{k}={v}" for k, v in entry.items() if k not in skip)
    line = f"{stamp} {level:<7} {source:<9} {entry.get('msg', '')}" + (f"  {fields}" if fields else "")
    return line + (f"\n{entry['exc']}" if entry.get("exc") else "")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return text_line(entry)


_access_stream = sys.stderr
_access_lines: list[str] = []
_ACCESS_FLUSH_LINES = 256
_ACCESS_FLUSH_SECONDS = 0.05


def access(**fields: object) -> None:
    """One access-log line, without the logging machinery (it runs for every RPC).

    Lines are written in bursts: at 256 lines or 50 ms after the first unwritten one
    (at once outside an event loop, and flush_access() at shutdown). One write per
    line cost the authority 9 % of its Reserve/Commit throughput: each write lets
    the gRPC threads take the GIL."""
    entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "level": "info", "logger": "access",
             **({"service": _service} if _service else {}), **fields}
    rid = request_id.get()
    if rid:
        entry["request_id"] = rid
    _access_lines.append((json.dumps(entry, default=str) if _json else text_line(entry)) + "\n")
    if len(_access_lines) >= _ACCESS_FLUSH_LINES:
        flush_access()
    elif len(_access_lines) == 1:
        try:
            asyncio.get_running_loop().call_later(_ACCESS_FLUSH_SECONDS, flush_access)
        except RuntimeError:  # no event loop: write now
            flush_access()


def flush_access() -> None:
    if _access_lines:
        text = "".join(_access_lines)
        _access_lines.clear()
        _access_stream.write(text)
        _access_stream.flush()


atexit.register(flush_access)


def wants_json(output: OutputSettings, stream: object = None) -> bool:
    """JSON unless a person reads: LOG_FORMAT=text, or auto (the default) with the stream on a terminal."""
    if output.log_format not in ("auto", "text", "json"):
        raise ValueError(f"LOG_FORMAT must be auto, text or json, not {output.log_format!r}")
    if output.log_format != "auto":
        return output.log_format == "json"
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return not (isatty is not None and isatty())


def configure(level: int = logging.INFO, service: str = "") -> None:
    """Logs of this process to stderr, tagged with `service` (authority, rest, up)."""
    global _service, _json
    _service = service
    _json = wants_json(OutputSettings.from_env())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
