"""The shapes of identifiers, written once: the authority and the REST edge check ids with these."""

from __future__ import annotations

import re

# Users and organizations: 1-128 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit.
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
# A Reserve's request_id (its idempotency key): 1-128 printable ASCII characters, no space.
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# An API key's public id; the secret is "<key id>.<random>".
API_KEY_ID = re.compile(r"ck_[0-9a-f]{16}")
