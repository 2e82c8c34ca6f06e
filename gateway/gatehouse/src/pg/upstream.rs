//! The upstream side: connect to the target PostgreSQL, negotiate TLS per connection, and log
//! in with the vaulted credential (SCRAM-SHA-256, md5 or cleartext, as the server asks).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use gatehouse_pgwire::{
    decode_backend_key_data, decode_error_fields, encode_password, encode_sasl_initial_response,
    encode_sasl_response, encode_ssl_request, encode_startup, next_frame, Authentication,
    CancelKey, PQ_SMALL_MESSAGE_LIMIT,
};
use gatehouse_vault::Credential;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::error::SessionError;
use crate::config::ConnectionConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A byte stream to or from a peer, with or without TLS.
#[derive(Debug)]
pub enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// Only while the plain stream is moved into a TLS handshake.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream detached")
}

impl<T: AsyncRead + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Detached => false,
        }
    }
}

pub type UpstreamStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

/// An upstream session that has finished its startup.
#[derive(Debug)]
pub struct Upstream {
    pub stream: UpstreamStream,
    /// The upstream's own cancel key (never shown to the client).
    pub key: CancelKey,
    /// Startup-tail frames to forward to the client (ParameterStatus, NoticeResponse),
    /// followed by ReadyForQuery; BackendKeyData is removed.
    pub tail: BytesMut,
}

/// Opens a TCP (and, per the connection's TLS mode, TLS) stream to the upstream.
pub async fn open(conn: &ConnectionConfig) -> Result<UpstreamStream, SessionError> {
    let addr = (conn.host.as_str(), conn.port);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            SessionError::UpstreamConnect(format!("{}:{}: connect timed out", conn.host, conn.port))
        })?
        .map_err(|e| SessionError::UpstreamConnect(format!("{}:{}: {e}", conn.host, conn.port)))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = crate::tls::upstream_config(conn)
        .map_err(|e| SessionError::UpstreamConnect(format!("TLS setup: {e:#}")))?
    else {
        return Ok(Stream::Plain(tcp));
    };
    let mut tcp = tcp;
    let mut b = BytesMut::new();
    encode_ssl_request(&mut b);
    tcp.write_all(&b)
        .await
        .map_err(|e| SessionError::UpstreamConnect(e.to_string()))?;
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| SessionError::UpstreamConnect(e.to_string()))?;
    if answer != b'S' {
        return Err(SessionError::UpstreamConnect(format!(
            "{}:{} does not accept TLS (tls = \"{}\")",
            conn.host,
            conn.port,
            conn.tls.as_str()
        )));
    }
    let name = crate::tls::server_name(&conn.host)
        .map_err(|e| SessionError::UpstreamConnect(format!("{e:#}")))?;
    let s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            SessionError::UpstreamConnect(format!(
                "TLS handshake with {}:{}: {e}",
                conn.host, conn.port
            ))
        })?;
    Ok(Stream::Tls(Box::new(s)))
}

/// Connects and logs in. `params` are the client's startup parameters to pass on
/// (application_name, client_encoding, ...).
pub async fn connect(
    conn: &ConnectionConfig,
    cred: &Credential,
    params: &[(String, String)],
) -> Result<Upstream, SessionError> {
    let stream = open(conn).await?;
    tokio::time::timeout(LOGIN_TIMEOUT, login(stream, conn, cred, params))
        .await
        .map_err(|_| SessionError::UpstreamAuth("login timed out".into()))?
}

async fn login(
    mut stream: UpstreamStream,
    conn: &ConnectionConfig,
    cred: &Credential,
    params: &[(String, String)],
) -> Result<Upstream, SessionError> {
    let mut all: Vec<(&str, &str)> = vec![
        ("user", cred.user.as_str()),
        ("database", conn.database.as_str()),
    ];
    all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut out = BytesMut::new();
    encode_startup(&mut out, &all);
    write(&mut stream, &mut out).await?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut tail = BytesMut::new();
    let mut key = None;
    loop {
        let frame = read_frame(&mut stream, &mut buf).await?;
        let (tag, body) = (frame[0], &frame[5..]);
        match tag {
            b'R' => {
                let f = gatehouse_pgwire::Frame { tag, body };
                match Authentication::decode(f)
                    .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?
                {
                    Authentication::Ok => {}
                    Authentication::CleartextPassword => {
                        encode_password(&mut out, cred.password.expose());
                        write(&mut stream, &mut out).await?;
                    }
                    Authentication::Md5Password { salt } => {
                        let h = postgres_protocol::authentication::md5_hash(
                            cred.user.as_bytes(),
                            cred.password.expose().as_bytes(),
                            salt,
                        );
                        encode_password(&mut out, &h);
                        write(&mut stream, &mut out).await?;
                    }
                    Authentication::Sasl { mechanisms } => {
                        if !mechanisms.contains(&"SCRAM-SHA-256") {
                            return Err(SessionError::UpstreamAuth(format!(
                                "no supported SASL mechanism in {mechanisms:?}"
                            )));
                        }
                        let s = ScramSha256::new(
                            cred.password.expose().as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        encode_sasl_initial_response(&mut out, "SCRAM-SHA-256", s.message());
                        write(&mut stream, &mut out).await?;
                        scram = Some(s);
                    }
                    Authentication::SaslContinue { data } => {
                        let s = scram.as_mut().ok_or_else(|| {
                            SessionError::UpstreamProtocol("SASL continue without SASL".into())
                        })?;
                        s.update(data)
                            .map_err(|e| SessionError::UpstreamAuth(format!("SCRAM: {e}")))?;
                        encode_sasl_response(&mut out, s.message());
                        write(&mut stream, &mut out).await?;
                    }
                    Authentication::SaslFinal { data } => {
                        let mut s = scram.take().ok_or_else(|| {
                            SessionError::UpstreamProtocol("SASL final without SASL".into())
                        })?;
                        s.finish(data).map_err(|e| {
                            SessionError::UpstreamAuth(format!("SCRAM server signature: {e}"))
                        })?;
                    }
                    Authentication::Other(code) => {
                        return Err(SessionError::UpstreamAuth(format!(
                            "unsupported authentication method {code}"
                        )));
                    }
                }
            }
            b'E' => {
                let f = decode_error_fields(body)
                    .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?;
                return Err(SessionError::UpstreamAuth(format!(
                    "{} {}",
                    f.code.unwrap_or("?????"),
                    f.message.unwrap_or("")
                )));
            }
            b'K' => {
                key = Some(
                    decode_backend_key_data(body)
                        .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?,
                );
            }
            b'S' | b'N' => tail.extend_from_slice(&frame),
            b'Z' => {
                tail.extend_from_slice(&frame);
                let key =
                    key.ok_or_else(|| SessionError::UpstreamProtocol("no BackendKeyData".into()))?;
                if !buf.is_empty() {
                    return Err(SessionError::UpstreamProtocol(
                        "data after ReadyForQuery during startup".into(),
                    ));
                }
                return Ok(Upstream { stream, key, tail });
            }
            b'v' => {
                return Err(SessionError::UpstreamProtocol(
                    "server requires protocol negotiation".into(),
                ));
            }
            other => {
                return Err(SessionError::UpstreamProtocol(format!(
                    "unexpected message {:?} during startup",
                    other as char
                )));
            }
        }
    }
}

async fn write(stream: &mut UpstreamStream, out: &mut BytesMut) -> Result<(), SessionError> {
    stream
        .write_all(out)
        .await
        .map_err(|_| SessionError::UpstreamLost)?;
    stream
        .flush()
        .await
        .map_err(|_| SessionError::UpstreamLost)?;
    out.clear();
    Ok(())
}

/// Reads one whole frame (header included) during startup.
async fn read_frame(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
) -> Result<BytesMut, SessionError> {
    loop {
        match next_frame(buf, PQ_SMALL_MESSAGE_LIMIT)
            .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?
        {
            Some(f) => {
                let n = f.wire_len();
                return Ok(buf.split_to(n));
            }
            None => {
                let n = stream
                    .read_buf(buf)
                    .await
                    .map_err(|_| SessionError::UpstreamLost)?;
                if n == 0 {
                    return Err(SessionError::UpstreamLost);
                }
            }
        }
    }
}

/// Sends a CancelRequest for `key` to the connection's upstream, in its TLS mode.
pub async fn cancel(conn: Arc<ConnectionConfig>, key: CancelKey) -> Result<(), SessionError> {
    let mut stream = open(&conn).await?;
    let mut b = BytesMut::new();
    gatehouse_pgwire::encode_cancel_request(&mut b, key);
    stream
        .write_all(&b)
        .await
        .map_err(|_| SessionError::UpstreamLost)?;
    stream
        .flush()
        .await
        .map_err(|_| SessionError::UpstreamLost)?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    b.advance(b.len());
    Ok(())
}
