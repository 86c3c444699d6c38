"""Secrets at rest (webhook signing secrets): encrypted with Fernet (`cryptography`), several keys for rotation.

CREDIT_SECRETS_KEYS="newkey,oldkey": the first key encrypts, every key decrypts; at start the authority
re-encrypts every stored secret under the first key (storage/alerts.py, `encrypt_webhook_secrets`), after
which an old key can be dropped. Unset (the zero-setup `make run`): a key is generated once into
<CREDIT_DATA_DIR>/secrets.key (mode 0600) and used from then on — with several authority hosts, set the
same keys on each. Stored values carry a `fernet:` prefix; a value without it is a secret written before
encryption, read as it is and encrypted at the next start.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger("credit_service.secrets")

PREFIX = "fernet:"
KEY_FILE = "secrets.key"


class SecretBox:
    def __init__(self, keys: list[bytes]):
        if not keys:
            raise ValueError("at least one key")
        self._primary = Fernet(keys[0])
        self._all = MultiFernet([Fernet(k) for k in keys])

    def encrypt(self, secret: str) -> str:
        return PREFIX + self._primary.encrypt(secret.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before encryption; encrypt_webhook_secrets() rewrites it
        return self._all.decrypt(stored[len(PREFIX):].encode()).decode()

    def readable(self, stored: str) -> str:
        """The secret, or "" when none of the keys decrypts it (a host with other keys: the delivery is
        recorded as `secret_unreadable` instead of signed with anything else)."""
        try:
            return self.decrypt(stored)
        except InvalidToken:
            return ""

    def current(self, stored: str) -> bool:
        """Whether `stored` is encrypted under the first key (nothing to rewrite)."""
        if not stored.startswith(PREFIX):
            return False
        try:
            self._primary.decrypt(stored[len(PREFIX):].encode())
        except InvalidToken:
            return False
        return True


def write_private(path: Path, data: str) -> None:
    """Writes a file only its owner can read (mode 0600 from creation, not chmod-ed afterwards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(data)
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT


def load_secret_box(keys: str, data_dir: Path) -> SecretBox:
    """The box of CREDIT_SECRETS_KEYS, or of <data_dir>/secrets.key (generated, mode 0600, when missing)."""
    given = [k.strip().encode() for k in keys.split(",") if k.strip()]
    if given:
        return SecretBox(given)
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return SecretBox([_read_key(path)])
    with os.fdopen(fd, "w") as out:
        out.write(Fernet.generate_key().decode() + "\n")
    log.warning("CREDIT_SECRETS_KEYS is not set: generated a key for secrets at rest into %s (mode 0600); "
                "keep it with the database, or set CREDIT_SECRETS_KEYS", path)
    return SecretBox([_read_key(path)])


def _read_key(path: Path) -> bytes:
    for _ in range(100):  # another process may have created the file an instant before writing it
        key = path.read_text().strip()
        if key:
            return key.encode()
        time.sleep(0.02)
    raise ValueError(f"{path} is empty")
