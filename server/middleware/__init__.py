"""Pipeline stages (one module each, built from its config section) and the aiohttp
middlewares that guard the WebSocket upgrade."""
