"""Prometheus metrics of the credit authority, with stable names.

Served on CREDIT_METRICS_PORT (default 9464; 0 turns the endpoint off).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_REQUESTS = Counter("credit_rpc_requests_total", "RPCs served, by method and status code.", ["method", "code"])
RPC_LATENCY = Histogram("credit_rpc_latency_seconds", "RPC latency, by method.", ["method"],
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
RESERVED = Counter("credit_reserved_millicredits_total", "Millicredits placed on hold by new reservations.")
COMMITTED = Counter("credit_committed_millicredits_total", "Millicredits charged by commits.")
RELEASES = Counter("credit_releases_total", "Reservations released by callers.")
EXPIRED = Counter("credit_expired_holds_total", "Holds released by the sweeper after their TTL.")
SWEEPS = Counter("credit_sweeper_runs_total", "Sweeper passes.")
HOLDS_OUTSTANDING = Gauge("credit_holds_outstanding", "Reservations currently held.")
HELD_OUTSTANDING = Gauge("credit_held_millicredits", "Millicredits currently on hold.")
DB_POOL_SIZE = Gauge("credit_db_pool_connections", "Connections in the database pool.")
DB_POOL_IDLE = Gauge("credit_db_pool_idle_connections", "Idle connections in the database pool.")
READ_POOL_SIZE = Gauge("credit_read_pool_connections", "Connections in the slow reads' pool.")
READ_POOL_IDLE = Gauge("credit_read_pool_idle_connections", "Idle connections in the slow reads' pool.")
READ_REPLICA_LAG = Gauge("credit_read_replica_lag_seconds",
                         "Seconds the read pool's server (DATABASE_READ_URL) is behind its primary; 0 on a primary.")
PLATFORM_LOOKUPS_REFUSED = Counter(
    "credit_platform_lookups_refused_total",
    "Platform secrets never seen valid refused without a database lookup (CREDIT_PLATFORM_UNKNOWN_LOOKUPS_PER_SECOND).")
RESERVE_RETRIES = Counter("credit_reserve_retries_total",
                          "Reserves run again because a concurrent Reserve with the same request_id won the race"
                          " (the rerun replays it), by the path that lost: single or batch.", ["path"])
BATCH_SIZE = Histogram("credit_hot_path_batch_size", "Operations per hot-path transaction.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


def serve(port: int, addr: str = "127.0.0.1") -> None:
    if port:
        start_http_server(port, addr)
