"""The aiohttp serving helper every HTTP endpoint of the project uses (viewer, shim control, WebRTC)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["serve_app"]


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    """Start ``app`` on host:port (0 = any free port); returns the runner and the bound address.
    Raises OSError (runner cleaned up) when the address cannot be bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, site._server.sockets[0].getsockname()[:2]  # the real port when 0 was asked
