"""FastAGI: the AGI protocol (sans-IO), its asyncio transport, and the server."""
