"""The tests' OpenID provider (provider.js, panva/oidc-provider on Node.js) as a child process, and a
programmatic authorization-code flow (PKCE) that gets a user's real access token from it.

The provider listens on `localhost` and the REST services on 127.0.0.1: two sites, as a browser
sees a real identity provider and the console, so the session cookie's SameSite rule is exercised.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from conftest import free_port

OIDC_DIR = Path(__file__).resolve().parent
CLIENT_ID = "credit-console"
SHORT_CLIENT_ID = f"{CLIENT_ID}-short"  # its access tokens live 1 second
AUDIENCE = "https://credits.test/api"
OTHER_AUDIENCE = "https://other.test/api"
FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


def install() -> None:
    """`make test` installs the provider (npm ci in tests/oidc); a copy of the checkout without it, such as
    the mutation gate's scratch tree, installs it the same way (from npm's cache when it can)."""
    if (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"], cwd=OIDC_DIR,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"npm ci in tests/oidc failed (`make test` installs it): {done.stderr[-2000:]}")


class OidcProvider:
    """provider.js with clients whose redirect URIs are `<base>/auth/oidc/callback` for each base."""

    def __init__(self, bases: list[str]):
        self.port = free_port()
        self.issuer = f"http://localhost:{self.port}"
        self.client_secret = secrets.token_urlsafe(24)
        self.bases = bases
        self.log_path = Path(tempfile.mkstemp(prefix="oidc-provider-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> OidcProvider:
        install()
        env = {**os.environ, "OIDC_PORT": str(self.port), "OIDC_ISSUER": self.issuer, "OIDC_CLIENT_ID": CLIENT_ID,
               "OIDC_CLIENT_SECRET": self.client_secret, "OIDC_AUDIENCE": AUDIENCE,
               "OIDC_OTHER_AUDIENCE": OTHER_AUDIENCE,
               "OIDC_REDIRECT_URIS": ",".join(f"{b}/auth/oidc/callback" for b in self.bases),
               "OIDC_POST_LOGOUT_URIS": ",".join(f"{b}/console/" for b in self.bases)}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(["node", "provider.js"], cwd=OIDC_DIR, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the OpenID provider exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the OpenID provider did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def sso_env(self, *, auto_create: bool) -> dict[str, str]:
        """The REST service's settings for this provider (README, "Signing in")."""
        return {"OIDC_ISSUER": self.issuer, "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": self.client_secret,
                "OIDC_PROVIDER_NAME": "Test IdP", "OIDC_USER_CLAIM": "preferred_username",
                "OIDC_AUTO_CREATE_USERS": "1" if auto_create else "0", "OIDC_AUDIENCE": AUDIENCE,
                "OIDC_LEEWAY_SECONDS": "0", "CONSOLE_SESSION_SECRET": secrets.token_urlsafe(40)}

    def access_token(self, login: str, *, resource: str = AUDIENCE, client_id: str = CLIENT_ID) -> str:
        """A real access token for `login`: the authorization-code flow with PKCE, the way an app would."""
        redirect_uri = f"{self.bases[0]}/auth/oidc/callback"
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        with httpx.Client(base_url=self.issuer, timeout=10) as http:
            response = http.get("/auth", params={
                "client_id": client_id, "response_type": "code", "scope": "openid api", "redirect_uri": redirect_uri,
                "code_challenge": challenge, "code_challenge_method": "S256", "state": secrets.token_hex(8),
                "resource": resource})
            while response.is_redirect:
                location = urljoin(self.issuer, response.headers["location"])
                if location.startswith(redirect_uri):
                    break
                response = http.get(location)
                if response.status_code == 200 and (form := FORM_ACTION.search(response.text)):
                    response = http.post(form[1], data={"prompt": "login", "login": login, "password": "any"})
            query = parse_qs(urlsplit(response.headers.get("location", "")).query)
            assert "code" in query, f"no code from the provider: {response.status_code} {query or response.text[:500]}"
            token = http.post("/token", auth=(client_id, self.client_secret), data={
                "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect_uri,
                "code_verifier": verifier, "resource": resource})
            assert token.status_code == 200, token.text
            return token.json()["access_token"]
