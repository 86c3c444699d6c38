"""Serving: health checking, reflection, TLS binding and the graceful serve() loop, which starts and stops
the background jobs (credit_service/jobs/: the expiry sweeper, alert delivery)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc

from .. import logs, metrics
from ..auth import CredentialCache, TokenAuthenticator
from ..authority import CreditAuthority
from ..embedded_db import ensure_database
from ..jobs import Sweeper, start_jobs
from ..migrate import migrate
from ..payments import Payments
from ..platforms import PlatformCredentials
from ..rate_limits import RateLimits
from ..reports import Reports
from ..secret_box import load_secret_box
from ..settings import Settings
from ..storage import Storage
from ..webhook_policy import parse_hosts
from .rpc import DATABASE_DOWN, MAX_MESSAGE_BYTES
from .servicers import AdminServicer, AuthorityServicer

log = logging.getLogger("credit_service")


def _health_reporter(health_servicer: health.aio.HealthServicer) -> Callable[[bool], Awaitable[None]]:
    """What the sweeper calls after each pass: every service SERVING when the database answered, else NOT_SERVING."""
    async def report(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", "credit.v1.CreditAuthority", "credit.v1.CreditAdmin"):
            await health_servicer.set(service, status)
    return report


def is_loopback(listen_addr: str) -> bool:
    """Whether host:port (host may be [v6], a name or empty) is reachable from this machine only."""
    host = listen_addr.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # empty (all interfaces) or a name: assume reachable from elsewhere
        return False


def _bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Plaintext, TLS (certificate and key set) or mutual TLS (client CA set too)."""
    if not settings.tls_cert_file:
        if settings.tls_client_ca_file:
            raise ValueError("CREDIT_TLS_CLIENT_CA_FILE needs CREDIT_TLS_CERT_FILE and CREDIT_TLS_KEY_FILE")
        if not is_loopback(settings.listen_addr):
            log.warning("PLAINTEXT gRPC on a non-loopback address (%s): tokens and balances cross the network "
                        "unencrypted; set CREDIT_TLS_CERT_FILE and CREDIT_TLS_KEY_FILE (and CREDIT_TLS_CLIENT_CA_FILE "
                        "for mutual TLS), or listen on 127.0.0.1", settings.listen_addr)
        return server.add_insecure_port(settings.listen_addr)
    key = Path(settings.tls_key_file).read_bytes()
    cert = Path(settings.tls_cert_file).read_bytes()
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                              require_client_auth=client_ca is not None)
    return server.add_secure_port(settings.listen_addr, credentials)


async def start_server(settings: Settings, storage: Storage,
                       auth: TokenAuthenticator) -> tuple[grpc.aio.Server, int, Sweeper]:
    storage.secret_box = load_secret_box(settings.secrets_keys, settings.data_dir)
    if rewritten := await storage.encrypt_webhook_secrets():
        log.info("encrypted %d webhook secrets under the first key of CREDIT_SECRETS_KEYS", rewritten)
    authority = CreditAuthority(storage, default_ttl_seconds=settings.default_ttl_seconds,
                                max_ttl_seconds=settings.max_ttl_seconds,
                                webhook_http_hosts=parse_hosts(settings.alerts.webhook_http_hosts))
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 1 if settings.reuse_port else 0)])
    authority_pb2_grpc.add_CreditAuthorityServicer_to_server(AuthorityServicer(authority, auth, settings.access_log),
                                                             server)
    payments = Payments(storage, settings.payments)
    admin = AdminServicer(authority, auth, settings.access_log, payments, Reports(storage),
                          RateLimits(storage), PlatformCredentials(storage, settings.platform_grace_seconds))
    admin_pb2_grpc.add_CreditAdminServicer_to_server(admin, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (authority_pb2.DESCRIPTOR.services_by_name["CreditAuthority"].full_name,
             admin_pb2.DESCRIPTOR.services_by_name["CreditAdmin"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = _bind(server, settings)
    if port == 0:
        raise RuntimeError(f"could not bind {settings.listen_addr}")
    await server.start()
    sweeper = Sweeper(authority, storage, _health_reporter(health_servicer), settings.sweep_interval_seconds,
                      settings.sweep_batch, DATABASE_DOWN)
    return server, port, sweeper


async def serve(settings: Settings) -> None:
    """Runs one authority process until SIGTERM/SIGINT."""
    if settings.read_pool_max < 1:
        raise ValueError("CREDIT_READ_POOL_MAX must be at least 1: slow reads never share the hot path's pool")
    if not settings.platform_unknown_lookups_per_second > 0:
        raise ValueError("CREDIT_PLATFORM_UNKNOWN_LOOKUPS_PER_SECOND must be above 0: at 0 no new platform "
                         "credential could ever be looked up")
    if settings.alerts.max_in_flight < 1 or settings.alerts.max_concurrent_per_org < 1:
        raise ValueError("CREDIT_ALERT_MAX_IN_FLIGHT and CREDIT_ALERT_MAX_CONCURRENT_PER_ORG must be at least 1")
    auth = TokenAuthenticator.from_settings(settings.auth_tokens, settings.auth_tokens_file)
    database_url = ensure_database(settings.database_url, settings.data_dir, settings.embedded_pg_port)
    if settings.migrate_on_start:
        applied = await migrate(database_url)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    storage = await Storage.connect(database_url, settings.db_pool_min, settings.db_pool_max,
                                    batch_max=settings.batch_max, batch_in_flight=settings.batch_in_flight,
                                    read_url=settings.database_read_url, read_max_size=settings.read_pool_max,
                                    read_timeout_seconds=settings.read_statement_timeout_seconds)
    # After the static tokens, platform credentials from the database (each lookup cached this long).
    auth.platforms = CredentialCache(storage.find_platform_grant, settings.platform_cache_seconds,
                                     settings.platform_unknown_lookups_per_second)
    server, port, sweeper = await start_server(settings, storage, auth)
    # the expiry sweeper, the read pool's gauges, alert delivery
    jobs = start_jobs(sweeper, database_url, storage, settings.alerts, settings.read_lag_interval_seconds)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    host = settings.listen_addr.rsplit(":", 1)[0]
    transport = "mTLS" if settings.tls_client_ca_file else "TLS" if settings.tls_cert_file else "plaintext"
    print(f"credit authority listening on {host}:{port} ({transport})", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight calls")
    await server.stop(grace=5)
    await jobs.stop()
    await storage.close()
    logs.flush_access()


def main() -> None:
    logs.configure()
    uvloop.run(serve(Settings.from_env()))
