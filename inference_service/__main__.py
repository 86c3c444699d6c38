"""`python -m inference_service`: serve the REST API on INFERENCE_HOST:INFERENCE_PORT (default 0.0.0.0:8084)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from credit_service import logs

from .app import create_app
from .settings import Settings


def main() -> None:
    logs.configure()
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)  # no line per call
    import litellm

    litellm.suppress_debug_info = True
    settings = Settings.from_env()
    if not settings.service_token:
        sys.exit("CREDIT_SERVICE_TOKEN is required (make run writes one to .data/demo.env)")
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=15)
    server = uvicorn.Server(config)
    print(f"inference service listening on {settings.host}:{settings.port}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
