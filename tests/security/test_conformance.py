"""RFC 6455 conformance: the Autobahn test suite's fuzzing-client cases (run by kosoku, a
native runner of the Autobahn case files) against the echo endpoint of
``server.conformance_echo``, compression off and on; then, with a raw-socket client of our own,
what the suite cannot send: close codes that must never be on the wire, unmasked client
frames, and broken opening handshakes. See docs/security.md, "Conformance"."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import make_token

IO_TIMEOUT = 5.0
#: the echo endpoint echoes Autobahn's largest messages (case 9.1.6: 16 MiB)
ECHO = {"server": {"conformance_echo": True, "max_message_size": 16 * 1024 * 1024 + 1024}}
#: the compression cases: offered permessage-deflate they need the server to take it
COMPRESSION_CASES = ["12.*", "13.*"]
#: with compression on, a sample of them (36 cases) in every pytest run; all 216 take about
#: 6 minutes: test_autobahn_every_compression_case, run by tests/run.sh beside the main run
COMPRESSION_SAMPLE = ["12.1.*", "13.1.*"]
#: every case that is not a compression case (Autobahn has no 8.x)
PLAIN_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]


# --- Autobahn -----------------------------------------------------------------------------------

#: kosoku's shim of the Autobahn case files leaves a test-data file open (its own leak)
KOSOKU_LEAK = ("ignore:Exception ignored in. <_io.FileIO name=.*kosoku/shim"
               ":pytest.PytestUnraisableExceptionWarning")


async def _autobahn(client: TestClient, cases: list[str] | None,
                    exclude: list[str] | None = None) -> list[Any]:
    import kosoku  # the test extra installs it (setup.cfg)
    url = f"ws://127.0.0.1:{client.port}/conformance/echo"
    try:
        results = await kosoku.run_fuzzingclient(url, cases=cases, exclude_cases=exclude)
    except kosoku.FailureError as exc:
        results = exc.results
    return list(results)


def _verdicts(results: list[Any]) -> list[str]:
    """Every case that is not a pass: FAILED, WRONG CODE, UNCLEAN, UNIMPLEMENTED, ERROR..."""
    return [f"{r.case_id}: {r.behavior.value}/{r.behavior_close.value} "
            f"(close {r.remote_close_code}) {r.result} {r.result_close}"
            for r in results if not r.passed]


async def test_autobahn_compression_off(make_server: Any) -> None:
    """Every case but the compression ones (they need permessage-deflate): 301 cases, ~15 s."""
    client = await make_server({"server": {**ECHO["server"], "compression": False}})
    results = await _autobahn(client, None, exclude=COMPRESSION_CASES)
    assert len(results) >= 300  # 517 in all, 216 of them 12.x and 13.x
    assert _verdicts(results) == []
    assert {r.case_id for r in results if r.case_id.startswith("7.9.")} >= {"7.9.5"}


@pytest.mark.timeout(150)
@pytest.mark.filterwarnings(KOSOKU_LEAK)
async def test_autobahn_compression_on(make_server: Any) -> None:
    """Compression on: every non-compression case again (a deflate-enabled socket must not
    change them) and a sample of the permessage-deflate cases, which the socket must now
    accept; ``test_autobahn_every_compression_case`` has the rest."""
    client = await make_server({"server": {**ECHO["server"], "compression": True}})
    results = await _autobahn(client, [*PLAIN_CASES, *COMPRESSION_SAMPLE])
    assert _verdicts(results) == []
    deflate = [r for r in results if r.case_id.startswith(("12.", "13."))]
    assert len(deflate) == 18 * len(COMPRESSION_SAMPLE)
    assert len(results) - len(deflate) >= 300


@pytest.mark.autobahn_full
@pytest.mark.timeout(900)
@pytest.mark.filterwarnings(KOSOKU_LEAK)
async def test_autobahn_every_compression_case(make_server: Any) -> None:
    """All 216 permessage-deflate cases (~6 minutes on 2 cores): deselected from pytest's
    default selection (setup.cfg); ``bash tests/run.sh`` runs it beside the main run."""
    client = await make_server({"server": {**ECHO["server"], "compression": True}})
    results = await _autobahn(client, COMPRESSION_CASES)
    assert _verdicts(results) == []
    assert len(results) == 216


async def test_echo_endpoint_is_off_by_default(client: TestClient) -> None:
    resp = await client.get("/conformance/echo")
    assert resp.status == 404


# --- a raw-socket client ------------------------------------------------------------------------

def frame(opcode: int, payload: bytes = b"", *, masked: bool = True, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n, bit = len(payload), 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason)


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 status: int, headers: dict[str, str], body: bytes) -> None:
        self.reader, self.writer = reader, writer
        self.status, self.headers, self.body = status, headers, body

    async def recv(self) -> tuple[int, bytes]:
        """The next frame the server sent: (opcode, payload); server frames are never masked."""
        async with asyncio.timeout(IO_TIMEOUT):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "a server frame must not be masked"
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def recv_close(self) -> int:
        """Skip data frames until the server's close; its code."""
        while True:
            opcode, payload = await self.recv()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0]

    async def at_eof(self) -> bool:
        async with asyncio.timeout(IO_TIMEOUT):
            return await self.reader.read() == b""


#: every raw socket a test opened; closed after the test, whatever its outcome
_OPEN: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_raw_sockets() -> Any:
    yield
    while _OPEN:
        writer = _OPEN.pop()
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def handshake(client: TestClient, path: str, *, key: str | None = "dGhlIHNhbXBsZSBub25jZQ==",
                    version: str | None = "13") -> Raw:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    _OPEN.append(writer)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{client.port}", "Upgrade: websocket",
             "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    async with asyncio.timeout(IO_TIMEOUT):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head.strip().split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, v in (h.split(":", 1) for h in header_lines)}
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
    return Raw(reader, writer, int(status_line.split()[1]), headers, body)


def ws_path(sub: str = "u1") -> str:
    return f"/ws?token={make_token(sub)}"


async def connected(client: TestClient) -> Raw:
    """A raw socket on the real endpoint, past its ``connected`` frame."""
    raw = await handshake(client, ws_path())
    assert raw.status == 101
    opcode, payload = await raw.recv()
    assert opcode == 0x1 and b'"connected"' in payload
    return raw


# (a) close codes no endpoint may send (RFC 6455 7.4.1): answered with 1002 -------------------------

@pytest.mark.parametrize("code", [1006, 1005, 1015])
async def test_a_close_code_never_sent_on_the_wire_is_answered_with_1002(
        client: TestClient, code: int) -> None:
    raw = await connected(client)
    raw.writer.write(close_frame(code, b"bogus"))
    assert await raw.recv_close() == 1002
    assert await raw.at_eof()


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
async def test_a_valid_close_code_is_answered_with_1000(client: TestClient, code: int) -> None:
    raw = await connected(client)
    raw.writer.write(close_frame(code))
    assert await raw.recv_close() == 1000


async def test_a_close_1006_before_the_auth_frame_is_answered_with_1002(client: TestClient) -> None:
    """The same rule on the first-frame-authentication path (an upgrade with no token)."""
    raw = await handshake(client, "/ws")
    assert raw.status == 101
    raw.writer.write(close_frame(1006))
    assert await raw.recv_close() == 1002


# (b) unmasked client frames (RFC 6455 5.1): refused with 1002 -------------------------------------

@pytest.mark.parametrize("opcode", [0x1, 0x2, 0x9, 0x8])
async def test_b_an_unmasked_frame_is_refused_with_1002(client: TestClient, opcode: int) -> None:
    raw = await connected(client)
    payload = b'{"type": "ping"}' if opcode != 0x8 else struct.pack("!H", 1000)
    raw.writer.write(frame(opcode, payload, masked=False))
    assert await raw.recv_close() == 1002
    assert await raw.at_eof()


async def test_b_unmasked_frame_before_the_auth_frame_is_refused(client: TestClient) -> None:
    raw = await handshake(client, "/ws")
    raw.writer.write(frame(0x1, b'{"type": "auth", "data": {"token": "x"}}', masked=False))
    assert await raw.recv_close() == 1002


async def test_b_the_mask_check_follows_frames_split_and_joined_across_reads(
        make_server: Any) -> None:
    """Masked frames of every length encoding (7-bit, 16-bit, 64-bit), written byte by byte and
    back to back, all echoed; an unmasked one after a masked one in the same write is refused."""
    client = await make_server(ECHO)
    raw = await handshake(client, "/conformance/echo")
    assert raw.status == 101
    messages = [b"a" * 5, b"b" * 300, b"c" * 70_000, b""]
    first = frame(0x2, messages[0])
    for i in range(len(first)):  # one byte per write: the guard sees a header in pieces
        raw.writer.write(first[i:i + 1])
        await raw.writer.drain()
        await asyncio.sleep(0.001)
    raw.writer.write(b"".join(frame(0x2, m) for m in messages[1:]))
    for m in messages:
        assert await raw.recv() == (0x2, m)
    # in one read: the masked frame reaches aiohttp, the close 1002 is written at once (its echo,
    # if any, is dropped: the socket is closing), the unmasked frame never reaches aiohttp
    raw.writer.write(frame(0x2, b"masked") + frame(0x2, b"unmasked", masked=False))
    assert await raw.recv_close() == 1002
    assert await raw.at_eof()


# (c) opening-handshake negatives (aiohttp's own checks; docs/security.md) -----------------------

@pytest.mark.parametrize("key", [None, "", "not-base64!", base64.b64encode(b"15 bytes only!!").decode()])
async def test_c_no_or_bad_key_is_400(client: TestClient, key: str | None) -> None:
    raw = await handshake(client, ws_path(), key=key)
    assert raw.status == 400


@pytest.mark.parametrize("version", [None, "", "12", "14", "9"])
async def test_c_a_version_other_than_13_is_400(client: TestClient, version: str | None) -> None:
    """aiohttp answers 400, not the 426 RFC 6455 4.2.2 suggests, and sends no
    Sec-WebSocket-Version header back."""
    raw = await handshake(client, ws_path(), version=version)
    assert raw.status == 400


@pytest.mark.parametrize("version", ["8", "7"])
async def test_c_aiohttp_also_accepts_the_draft_versions_7_and_8(client: TestClient,
                                                                 version: str) -> None:
    """Documented deviation (docs/security.md, "Conformance"): aiohttp upgrades hybi-07/08
    clients, whose framing is the same as version 13's."""
    raw = await handshake(client, ws_path(), version=version)
    assert raw.status == 101


async def test_c_the_valid_handshake_is_101_with_the_rfc_accept_value(client: TestClient) -> None:
    raw = await handshake(client, ws_path())
    assert raw.status == 101
    assert raw.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3
