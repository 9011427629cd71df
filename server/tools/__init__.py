"""The terminal tools: ``switchboard client`` and ``switchboard bench`` (with its raw-aiohttp
baseline server). Clients of the wire protocol like any other: they import ``server.protocol``
and ``server.errors`` and nothing else of the server; ``server/cli.py`` wires their commands."""
