"""`python -m inference_service`: serve the REST API on INFERENCE_HOST:INFERENCE_PORT (default 0.0.0.0:8084).

The socket is bound before anything else: a port in use ends the process at once with a message naming it
(and what holds it, when that can be found), exit code 2. "listening" is printed once the server accepts
connections, never before.
"""

from __future__ import annotations

import logging
import socket
import sys
from types import FrameType

import uvicorn

from credit_service import logs
from credit_service.ports import bind_error

from .settings import Settings

log = logging.getLogger("inference_service")


class _Server(uvicorn.Server):
    """uvicorn's server, saying "listening" once its socket accepts connections, and exiting 0 after a stop
    on SIGINT or SIGTERM (uvicorn raises the signal again once shut down: the process would end killed by it,
    a Ctrl-C with a KeyboardInterrupt traceback)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            config = self.config
            print(f"inference service listening on {config.host}:{config.port}", flush=True)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error("inference service cannot listen: %s", bind_error(host, port, exc, "INFERENCE_PORT"),
                  extra={"port": port})
        sys.exit(2)
    sock.set_inheritable(True)
    return sock


def main() -> None:
    logs.configure(service="rest")
    settings = Settings.from_env()
    if not settings.service_token:
        sys.exit("CREDIT_SERVICE_TOKEN is required (make run writes one to .data/demo.env)")
    sock = bind(settings.host, settings.port)  # before the slow imports: a taken port fails at once
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)  # no line per call
    import litellm

    litellm.suppress_debug_info = True
    from .app import create_app  # the slow imports, after the socket is ours

    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=15)
    _Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
