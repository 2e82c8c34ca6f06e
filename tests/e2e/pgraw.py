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

    def login(self, user: str | None, password: str | None, database: str | None,
              extra: dict[str, str] | None = None) -> LoginResult:
        params: dict[str, str] = {}
        if user is not None:
            params["user"] = user
        if database is not None:
            params["database"] = database
        params["application_name"] = "pgraw"
        params.update(extra or {})
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

    def query(self, sql: str | bytes) -> tuple[list[Message], Message | None]:
        """Simple query; returns (messages up to ReadyForQuery, first ErrorResponse or None)."""
        self.send_msg(b"Q", (sql if isinstance(sql, bytes) else sql.encode()) + b"\x00")
        return self.until_ready()

    def until_ready(self) -> tuple[list[Message], Message | None]:
        """Messages up to the next ReadyForQuery, and the first ErrorResponse among them."""
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

    # -- extended protocol (raw, for tests that need exact control) --------------------
    @staticmethod
    def parse_msg(name: str, sql: str | bytes, types: list[int] | None = None) -> bytes:
        body = name.encode() + b"\x00" + (sql if isinstance(sql, bytes) else sql.encode()) + b"\x00"
        types = types or []
        body += struct.pack("!h", len(types)) + b"".join(struct.pack("!i", t) for t in types)
        return b"P" + struct.pack("!I", len(body) + 4) + body

    @staticmethod
    def bind_msg(portal: str, stmt: str, params: list[bytes | None] | None = None,
                 result_formats: list[int] | None = None) -> bytes:
        params = params or []
        result_formats = result_formats or []
        body = portal.encode() + b"\x00" + stmt.encode() + b"\x00" + struct.pack("!h", 0)
        body += struct.pack("!h", len(params))
        for p in params:
            body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
        body += struct.pack("!h", len(result_formats)) + b"".join(struct.pack("!h", f) for f in result_formats)
        return b"B" + struct.pack("!I", len(body) + 4) + body

    @staticmethod
    def describe_msg(kind: str, name: str) -> bytes:
        body = kind.encode() + name.encode() + b"\x00"
        return b"D" + struct.pack("!I", len(body) + 4) + body

    @staticmethod
    def execute_msg(portal: str = "", max_rows: int = 0) -> bytes:
        body = portal.encode() + b"\x00" + struct.pack("!i", max_rows)
        return b"E" + struct.pack("!I", len(body) + 4) + body

    @staticmethod
    def sync_msg() -> bytes:
        return b"S\x00\x00\x00\x04"

    @staticmethod
    def function_call_msg(oid: int, args: list[bytes | None], result_format: int = 0) -> bytes:
        body = struct.pack("!i", oid) + struct.pack("!h", 0) + struct.pack("!h", len(args))
        for a in args:
            body += struct.pack("!i", -1) if a is None else struct.pack("!i", len(a)) + a
        body += struct.pack("!h", result_format)
        return b"F" + struct.pack("!I", len(body) + 4) + body

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
