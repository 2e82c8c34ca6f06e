"""A minimal PostgreSQL wire-protocol (v3) client over a raw socket.

The real client libraries hide what we need to check in some tests: the SQLSTATE of an
ErrorResponse sent during the startup phase (libpq only turns it into a message), every byte
the gateway sends back (for the canary test), and the ability to send malformed messages.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field

SSL_REQUEST_CODE = 80877103
PROTOCOL_3_0 = 196608


@dataclass
class Message:
    type: str
    payload: bytes

    def error_fields(self) -> dict[str, str]:
        """Fields of an ErrorResponse ('E') or NoticeResponse ('N'), keyed by field code."""
        out: dict[str, str] = {}
        data = self.payload
        i = 0
        while i < len(data) and data[i] != 0:
            code = chr(data[i])
            end = data.index(b"\x00", i + 1)
            out[code] = data[i + 1 : end].decode("utf-8", "replace")
            i = end + 1
        return out


@dataclass
class LoginResult:
    ok: bool
    messages: list[Message] = field(default_factory=list)
    error: dict[str, str] | None = None
    closed: bool = False  # the server closed the connection without an ErrorResponse

    @property
    def sqlstate(self) -> str | None:
        return self.error.get("C") if self.error else None


class PgRaw:
    def __init__(self, host: str, port: int, *, tls: bool = True, timeout: float = 10.0):
        self.received = bytearray()  # every byte the server sent (plaintext, after TLS)
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._buf = bytearray()
        if tls:
            self.sock.sendall(struct.pack("!II", 8, SSL_REQUEST_CODE))
            answer = self._recv_exact_raw(1)
            self.received += answer
            if answer != b"S":
                raise ConnectionError(f"server refused SSLRequest: {answer!r}")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock, server_hostname=host)

    # -- low level -------------------------------------------------------------------
    def _recv_exact_raw(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("server closed the connection")
            data += chunk
        return data

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
                chunk = b""
            if not chunk:
                return False
            self.received += chunk
            self._buf += chunk
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_msg(self, mtype: bytes, payload: bytes) -> None:
        self.send(mtype + struct.pack("!I", len(payload) + 4) + payload)

    def read_msg(self) -> Message | None:
        """Next backend message, or None if the server closed the connection."""
        if not self._fill(5):
            return None
        mtype = chr(self._buf[0])
        (length,) = struct.unpack("!I", bytes(self._buf[1:5]))
        if length < 4 or length > 64 * 1024 * 1024:
            raise ValueError(f"bad backend message length {length} (type {mtype!r})")
        if not self._fill(1 + length):
            return None
        payload = bytes(self._buf[5 : 1 + length])
        del self._buf[: 1 + length]
        return Message(mtype, payload)

    def read_until_closed_or_error(self) -> tuple[list[Message], Message | None]:
        """Read messages until an ErrorResponse or EOF; returns (all messages, the error or None)."""
        msgs: list[Message] = []
        while True:
            try:
                m = self.read_msg()
            except (socket.timeout, TimeoutError):
                return msgs, None
            if m is None:
                return msgs, None
            msgs.append(m)
            if m.type == "E":
                return msgs, m

    # -- protocol --------------------------------------------------------------------
    def startup(self, params: dict[str, str], protocol: int = PROTOCOL_3_0) -> None:
        body = struct.pack("!I", protocol)
        for k, v in params.items():
            body += k.encode() + b"\x00" + v.encode() + b"\x00"
        body += b"\x00"
        self.send(struct.pack("!I", len(body) + 4) + body)

    def login(self, user: str | None, password: str | None, database: str | None) -> LoginResult:
        params: dict[str, str] = {}
        if user is not None:
            params["user"] = user
        if database is not None:
            params["database"] = database
        params["application_name"] = "pgraw"
        self.startup(params)
        result = LoginResult(ok=False)
        while True:
            m = self.read_msg()
            if m is None:
                result.closed = True
                return result
            result.messages.append(m)
            if m.type == "E":
                result.error = m.error_fields()
                return result
            if m.type == "R":
                (code,) = struct.unpack("!I", m.payload[:4])
                if code == 0:
                    continue
                if code == 3:  # AuthenticationCleartextPassword
                    if password is None:
                        self.terminate()
                        return result
                    self.send_msg(b"p", password.encode() + b"\x00")
                    continue
                raise AssertionError(f"unexpected authentication request {code}")
            if m.type == "Z":
                result.ok = True
                return result

    def query(self, sql: str) -> tuple[list[Message], Message | None]:
        """Simple query; returns (messages up to ReadyForQuery, first ErrorResponse or None)."""
        self.send_msg(b"Q", sql.encode() + b"\x00")
        msgs: list[Message] = []
        err = None
        while True:
            m = self.read_msg()
            if m is None:
                raise EOFError("server closed the connection during a query")
            msgs.append(m)
            if m.type == "E" and err is None:
                err = m
            if m.type == "Z":
                return msgs, err

    def terminate(self) -> None:
        try:
            self.send_msg(b"X", b"")
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "PgRaw":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def data_rows(msgs: list[Message]) -> list[list[str | None]]:
    """Decode DataRow ('D') messages of a text-format result."""
    rows = []
    for m in msgs:
        if m.type != "D":
            continue
        (n,) = struct.unpack("!H", m.payload[:2])
        i = 2
        row: list[str | None] = []
        for _ in range(n):
            (ln,) = struct.unpack("!i", m.payload[i : i + 4])
            i += 4
            if ln < 0:
                row.append(None)
            else:
                row.append(m.payload[i : i + ln].decode())
                i += ln
        rows.append(row)
    return rows
