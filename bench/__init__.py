"""Issue 5's measurement harness: every contender measured by one load
generator on one machine, in turns; `python -m bench` (or `make bench`) prints
a table and writes bench/results.json. Figures, not tests: nothing in tests/
imports this package.
"""

import os

# The harness forks pg_ctl, pgbench and servers from processes that may hold
# gRPC channels; gRPC's fork handlers are not needed for that (as in tests/).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
