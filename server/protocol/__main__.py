"""``python -m server.protocol``: print the close-code block ``static/switchboard.js`` carries
(tests/test_close_codes_js.py fails until it is pasted over the old one)."""

from .codes import js_catalogue

print(js_catalogue())
