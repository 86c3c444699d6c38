"""The Python client now lives in its own package, `credit_client` (clients/python); this name stays for
code that imported it from here."""

from credit_client import *  # noqa: F403
from credit_client import __all__  # noqa: F401
