"""ZeroMQ order entry: the server loop and the client SDK (sync and asyncio)."""
