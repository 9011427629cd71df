"""The wire protocol (PROTOCOL.md): the envelope (``envelope``) and the catalogue of error and
close codes with the reconnect rule (``codes``). A leaf package: it imports nothing of the
project but ``server.errors``."""

from .codes import (CLOSE_CODES, ERROR_CODES, CloseCode, CloseInfo, ErrorCode, close_action,
                    close_backoff, close_catalogue, close_info)
from .envelope import (Envelope, encode, envelope, error_frame, frame, frame_id, json_type, new_id,
                       now_ts, parse_json, text_frame)

__all__ = [
    "CLOSE_CODES", "ERROR_CODES", "CloseCode", "CloseInfo", "ErrorCode", "close_action",
    "close_backoff", "close_catalogue", "close_info", "Envelope", "encode", "envelope",
    "error_frame", "frame", "frame_id", "json_type", "new_id", "now_ts", "parse_json", "text_frame",
]
