"""Prometheus metrics of the inference service (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("inference_http_requests_total", "HTTP requests, by route and status.", ["route", "status"])
HTTP_LATENCY = Histogram("inference_http_latency_seconds", "HTTP latency, by route.", ["route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
UPSTREAM_LATENCY = Histogram("inference_upstream_latency_seconds", "LLM call latency, by model.", ["model"],
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
RESERVED = Counter("inference_reserved_millicredits_total", "Worst-case estimates held, by model.", ["model"])
COMMITTED = Counter("inference_committed_millicredits_total", "Millicredits charged, by model.", ["model"])
RELEASED = Counter("inference_released_total", "Holds released after a failed call, by model.", ["model"])
OUTBOX_PENDING = Gauge("inference_outbox_pending", "Commits waiting in the outbox for the authority.")
OUTBOX_REFUSED = Gauge("inference_outbox_refused", "Commits the authority refused for good, kept for an operator.")
