"""OpenAI's error shape for requests too malformed to reach the app.

A bad request line, an invalid header or a bad Content-Length is caught by uvicorn's HTTP
parser before FastAPI sees anything, and uvicorn answers it with a plain-text
``400 Bad Request``. OpenAI clients parse every error as ``{"error": {...}}``, so this
subclass of uvicorn's h11 protocol answers those with the same JSON body the app gives every
other 4xx (`openai_api.ApiError`), naming what h11 found wrong. The server always runs on
this protocol (not "auto"), so the answer does not change when httptools is installed.
Requests the server cannot answer at all (a connection closed mid-headers) still get nothing.
"""

from __future__ import annotations

import http
import json
import re
import sys

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tinystories.infer.openai_api import ApiError


class OpenAIErrorH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this from inside its `except h11.RemoteProtocolError:`, so the parser's
        # own reason ("bad Content-Length", "illegal request line", ...) is the one in flight.
        exc = sys.exc_info()[1]
        reason = str(exc) if isinstance(exc, h11.RemoteProtocolError) and str(exc) else msg
        reason = re.sub(r"bytearray\((b'.*')\)", r"\1", reason)[:200]  # h11 quotes the bad line as a bytearray
        status = getattr(exc, "error_status_hint", 400) if isinstance(exc, h11.RemoteProtocolError) else 400
        status = status if 400 <= status < 500 else 400
        body = json.dumps(ApiError(status, f"malformed HTTP request: {reason}").body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
