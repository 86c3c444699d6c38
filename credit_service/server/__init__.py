"""gRPC transport of the credit authority: rpc.py (auth per RPC, error mapping), servicers.py (the two
services and message conversion), serve.py (health, reflection, the serve() loop; starts and stops the jobs)."""

from .serve import main, serve, start_server

__all__ = ["main", "serve", "start_server"]
