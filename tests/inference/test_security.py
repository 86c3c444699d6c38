"""Security: tenants kept apart, keys and tokens never logged, TLS and mutual
TLS to the authority, and brute force against keys refused per address."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from conftest import AuthorityProcess, Stub
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from credit.v1 import admin_pb2, authority_pb2, authority_pb2_grpc

from .conftest import InferenceProcess, make_key, sdk

MESSAGES = [{"role": "user", "content": "Hello"}]


# ---- tenancy -------------------------------------------------------------

@pytest.fixture(scope="module")
def tenants(world, admin):
    org_a = world.org(100_000)
    org_b = world.org(100_000)
    a_owner, a_member, b_member = world.user(), world.user(), world.user()
    solo = world.user(individual_mc=50_000)
    world.member(org_a, a_owner, 30_000, role=admin_pb2.MEMBER_ROLE_OWNER)
    world.member(org_a, a_member, 30_000)
    world.member(org_b, b_member, 30_000)
    keys = {
        "a_owner": make_key(admin, a_owner)[0],
        "a_member_bound": make_key(admin, a_member, org_a)[0],
        "a_service": make_key(admin, a_owner, org_a, service=True)[0],
        "b_member": make_key(admin, b_member)[0],
        "solo": make_key(admin, solo)[0],
    }
    users = {"a_owner": a_owner, "a_member": a_member, "b_member": b_member, "solo": solo}
    return {"orgs": {"A": org_a, "B": org_b}, "users": users, "keys": keys}


def _used(spend, user_id):
    return spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id)).used_millicredits


def test_no_key_reaches_another_tenants_credits_balance_or_usage(inference, tenants, spend, admin):
    users, orgs, keys = tenants["users"], tenants["orgs"], tenants["keys"]
    own = {"a_owner": ("a_owner", "A"), "a_member_bound": ("a_member", "A"), "a_service": ("a_owner", "A"),
           "b_member": ("b_member", "B"), "solo": ("solo", None)}
    refused = 0
    for key_name, key in keys.items():
        me, my_org = own[key_name]
        for org_name, org_id in orgs.items():
            if org_name == my_org:
                continue
            headers = {"Authorization": f"Bearer {key}", "OpenAI-Organization": org_id}
            # Spend in a foreign org: refused.
            with pytest.raises(openai.PermissionDeniedError):
                sdk(inference, key, organization=org_id).chat.completions.create(model="demo-chat",
                                                                                 messages=MESSAGES)
            # Read a foreign org's balance or usage: refused.
            for path in ("/api/v1/credits/balance", "/api/v1/usage"):
                assert httpx.get(inference.url + path, headers=headers).status_code == 403, (key_name, path)
            refused += 3
        for victim_name, victim in users.items():
            if victim_name == me:
                continue
            before = _used(spend, victim)
            try:
                raw = sdk(inference, key).chat.completions.with_raw_response.create(
                    model="demo-chat", messages=MESSAGES, user=victim)
                # Allowed only as "recorded end user" (billed to the caller), or a service key
                # billing a member of its own org.
                billed_victim = _used(spend, victim) != before
                assert not billed_victim or (key_name == "a_service" and victim_name == "a_member"), \
                    (key_name, victim_name)
                assert raw.http_response.status_code == 200
            except openai.PermissionDeniedError:
                assert key_name == "a_service", "only a service key is refused for foreign users"
                assert _used(spend, victim) == before
                refused += 1
    assert refused >= 20

    # Each key's usage lists exactly its own user's rows in its own org (or individual ones), as the
    # authority records who was charged.
    owners = {r.reservation_id: (r.user_id, r.org_id) for who in users.values()
              for r in admin.QueryUsage(admin_pb2.QueryUsageRequest(user_id=who, limit=1000)).records}
    for key_name, key in keys.items():
        me, my_org = users[own[key_name][0]], orgs.get(own[key_name][1] or "", "")
        rows = httpx.get(f"{inference.url}/api/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
        assert rows["data"], key_name
        listed = {r["reservation_id"]: owners.get(r["reservation_id"]) for r in rows["data"]}
        assert set(listed.values()) == {(me, my_org)}, (key_name, listed)
        assert set(listed) == {rid for rid, owner in owners.items() if owner == (me, my_org)}, key_name
        assert {r["funding_source"] for r in rows["data"]} == {f"org:{my_org}" if my_org else "individual"}
        balance = httpx.get(f"{inference.url}/api/v1/credits/balance",
                            headers={"Authorization": f"Bearer {key}"}).json()
        assert balance["user_id"] == me


# ---- secrets in logs -----------------------------------------------------

def test_keys_and_tokens_never_appear_in_logs(inference, authority, tokens, member):
    client = sdk(inference, member.key)
    client.chat.completions.create(model="demo-chat", messages=MESSAGES)
    wrong = member.key[:-4] + "zzzz"
    with pytest.raises(openai.AuthenticationError):
        sdk(inference, wrong).chat.completions.create(model="demo-chat", messages=MESSAGES)
    with grpc.insecure_channel(authority.addr) as channel:
        stub = authority_pb2_grpc.CreditAuthorityStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.GetBalance(authority_pb2.GetBalanceRequest(user_id="x"),
                            metadata=(("authorization", "Bearer not-a-token-0123456789"),))
    time.sleep(0.5)
    logs = inference.log_path.read_text(errors="replace") + authority.log_path.read_text(errors="replace")
    assert logs, "the services wrote no logs at all"
    secret_part = member.key.split(".", 1)[1]
    for secret in (secret_part, wrong.split(".", 1)[1], tokens.spend, tokens.admin, tokens.read,
                   "not-a-token-0123456789"):
        assert secret not in logs


# ---- TLS -------------------------------------------------------------------

def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(stem, key, cert):
        (directory / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca", ca_key, ca)
    for stem, sans in (("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       ("client", [x509.DNSName("inference.test")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write(stem, key, cert)
    return {p.stem + p.suffix: p for p in directory.iterdir()}


def _balance_over(channel, tokens, user):
    stub = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), tokens.spend)
    return stub.GetBalance(authority_pb2.GetBalanceRequest(user_id=user), timeout=5)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_authority_over_tls_and_mutual_tls(tmp_path, database_url, tokens, world, models_file, mutual):
    certs = _certificates(tmp_path)
    env = {"CREDIT_TLS_CERT_FILE": str(certs["server.pem"]), "CREDIT_TLS_KEY_FILE": str(certs["server.key"])}
    if mutual:
        env["CREDIT_TLS_CLIENT_CA_FILE"] = str(certs["ca.pem"])
    authority = AuthorityProcess(database_url, tokens, env)
    authority.wait_ready = lambda timeout=30: _wait_tls(authority, certs, mutual)
    authority.start()
    try:
        user = world.user(individual_mc=5_000)
        ca = certs["ca.pem"].read_bytes()
        client_pair = (certs["client.key"].read_bytes(), certs["client.pem"].read_bytes()) if mutual else (None, None)
        good = grpc.ssl_channel_credentials(ca, *client_pair)
        with grpc.secure_channel(authority.addr, good) as channel:
            assert _balance_over(channel, tokens, user).limit_millicredits == 5_000
        with grpc.insecure_channel(authority.addr) as channel, pytest.raises(grpc.RpcError):
            _balance_over(channel, tokens, user)  # plaintext is refused
        if mutual:
            with grpc.secure_channel(authority.addr, grpc.ssl_channel_credentials(ca)) as channel, \
                    pytest.raises(grpc.RpcError):
                _balance_over(channel, tokens, user)  # no client certificate, no service

        # The inference service talks to the authority over (m)TLS too.
        tls_env = {"CREDIT_AUTHORITY_TLS_CA_FILE": str(certs["ca.pem"])}
        if mutual:
            tls_env.update(CREDIT_AUTHORITY_TLS_CERT_FILE=str(certs["client.pem"]),
                           CREDIT_AUTHORITY_TLS_KEY_FILE=str(certs["client.key"]))
        inference = InferenceProcess(authority, tokens.spend, models_file, tls_env).start()
        try:
            key, _ = make_key(world.admin, user)
            raw = sdk(inference, key).chat.completions.with_raw_response.create(model="demo-chat", messages=MESSAGES)
            assert raw.headers["X-Funding-Source"] == "individual"
        finally:
            inference.stop()
    finally:
        authority.stop()


def _wait_tls(authority, certs, mutual, timeout=30):
    ca = certs["ca.pem"].read_bytes()
    pair = (certs["client.key"].read_bytes(), certs["client.pem"].read_bytes()) if mutual else (None, None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if authority.proc.poll() is not None:
            raise RuntimeError(authority.log_path.read_text()[-2000:])
        with grpc.secure_channel(authority.addr, grpc.ssl_channel_credentials(ca, *pair)) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                time.sleep(0.1)
    raise RuntimeError("TLS authority did not start")


# ---- brute force -------------------------------------------------------------

def test_repeated_bad_keys_from_one_address_get_429_without_hurting_others(authority, tokens, models_file, member):
    inference = InferenceProcess(authority, tokens.spend, models_file, {"INFERENCE_AUTH_FAILURE_LIMIT": "5",
                                                                       "INFERENCE_AUTH_FAILURE_WINDOW_SECONDS": "30"})
    inference.start()
    try:
        attacker = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
        statuses = []
        for i in range(8):
            response = attacker.post(f"{inference.base_url}/chat/completions",
                                     headers={"Authorization": f"Bearer ck_0123456789abcdef.guess{i}"},
                                     json={"model": "demo-chat", "messages": MESSAGES})
            statuses.append(response.status_code)
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
        # Everyone else is unaffected.
        raw = sdk(inference, member.key).chat.completions.with_raw_response.create(model="demo-chat",
                                                                                  messages=MESSAGES)
        assert raw.http_response.status_code == 200
    finally:
        inference.stop()


def test_a_valid_key_works_from_an_address_blocked_by_someone_elses_typos(authority, tokens, models_file, member):
    """The NAT case (issue 17): the key is checked before the limiter, which counts only failures, so a
    colleague's valid key from the blocked address is served while the bad key keeps getting 429."""
    inference = InferenceProcess(authority, tokens.spend, models_file, {"INFERENCE_AUTH_FAILURE_LIMIT": "3",
                                                                       "INFERENCE_AUTH_FAILURE_WINDOW_SECONDS": "300"})
    inference.start()
    try:
        shared = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=10)

        def post(key: str) -> httpx.Response:
            return shared.post(f"{inference.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                               json={"model": "demo-chat", "messages": MESSAGES})

        typos = [post(f"ck_0123456789abcdef.typo{i}").status_code for i in range(6)]
        assert typos == [401] * 3 + [429] * 3
        for _ in range(3):
            assert post(member.key).status_code == 200
            assert post("ck_0123456789abcdef.typo").status_code == 429
    finally:
        inference.stop()
