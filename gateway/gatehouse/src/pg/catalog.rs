//! Source-column names, so that masking rules follow the column and not the alias.
//!
//! A RowDescription names each result column as the client chose (`SELECT ssn AS x` says
//! `x`), and also by its source: the table's OID and the column's attribute number (both 0
//! for a computed column). Column rules are written by column name; when the masking engine
//! has any, the relay asks this cache for the source column's name and plans the column by
//! both names (the source's rule wins).
//!
//! Names are read from the target's own catalog (`pg_attribute`) over one separate upstream
//! connection per configured connection, logged in with the vaulted credential like a
//! session's, and cached for [`TTL`]. A column renamed since is masked under its old name at
//! most that long. If the catalog cannot be read, the lookup fails and the session ends with
//! 54000 (fail closed): nothing is sent unplanned.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf as _, BytesMut};
use gatehouse_pgwire::{
    decode_data_row, decode_error_fields, encode_query, next_frame, PQ_LARGE_MESSAGE_LIMIT,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::error::SessionError;
use super::upstream::{self, UpstreamStream};
use crate::state::Gateway;

/// How long a looked-up name is trusted.
pub const TTL: Duration = Duration::from_secs(30);
/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most columns asked in one query.
const BATCH: usize = 512;

/// (table OID, attribute number).
pub type SourceColumn = (u32, i16);

/// The catalog caches of every configured connection.
#[derive(Debug, Default)]
pub struct Catalogs {
    by_connection: Mutex<HashMap<String, Arc<Catalog>>>,
}

/// One connection's cache and its lookup connection.
#[derive(Debug, Default)]
struct Catalog {
    names: Mutex<HashMap<SourceColumn, (Arc<str>, Instant)>>,
    link: tokio::sync::Mutex<Option<UpstreamStream>>,
}

fn failed(why: impl std::fmt::Display) -> SessionError {
    SessionError::MaskingFailed(format!(
        "source column names could not be read from the target's catalog: {why}"
    ))
}

impl Catalogs {
    /// The source-column names of `columns` on connection `connection` (absent: the column
    /// does not exist, e.g. dropped since).
    pub async fn names(
        &self,
        gw: &Gateway,
        connection: &str,
        columns: &[SourceColumn],
    ) -> Result<HashMap<SourceColumn, Arc<str>>, SessionError> {
        let catalog = {
            let mut m = self.by_connection.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(m.entry(connection.to_owned()).or_default())
        };
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let names = catalog.names.lock().unwrap_or_else(|p| p.into_inner());
            for c in columns {
                match names.get(c) {
                    Some((n, at)) if at.elapsed() < TTL => {
                        out.insert(*c, Arc::clone(n));
                    }
                    _ => missing.push(*c),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        missing.sort_unstable();
        missing.dedup();
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, catalog.lookup(gw, connection, &missing))
            .await
            .map_err(|_| failed("timed out"))??;
        let now = Instant::now();
        let mut names = catalog.names.lock().unwrap_or_else(|p| p.into_inner());
        for (c, n) in found {
            names.insert(c, (Arc::clone(&n), now));
            out.insert(c, n);
        }
        Ok(out)
    }
}

impl Catalog {
    async fn lookup(
        &self,
        gw: &Gateway,
        connection: &str,
        columns: &[SourceColumn],
    ) -> Result<Vec<(SourceColumn, Arc<str>)>, SessionError> {
        let mut link = self.link.lock().await;
        let mut found = Vec::new();
        for chunk in columns.chunks(BATCH) {
            if link.is_none() {
                *link = Some(open(gw, connection).await?);
            }
            let Some(stream) = link.as_mut() else {
                return Err(failed("no connection"));
            };
            match query(stream, chunk).await {
                Ok(rows) => found.extend(rows),
                Err(e) => {
                    // The link may be broken: the next lookup opens a new one.
                    *link = None;
                    return Err(e);
                }
            }
        }
        Ok(found)
    }
}

async fn open(gw: &Gateway, connection: &str) -> Result<UpstreamStream, SessionError> {
    let conn = gw
        .config
        .load()
        .config
        .connection(connection)
        .cloned()
        .ok_or_else(|| failed("connection no longer configured"))?;
    let cred = gw
        .vault
        .get(&conn.name)
        .map_err(|e| failed(format!("vault: {e}")))?
        .ok_or_else(|| failed("no credential"))?;
    let params = vec![(
        "application_name".to_owned(),
        "gatehouse-catalog".to_owned(),
    )];
    let up = upstream::connect(&conn, &cred, &params).await?;
    Ok(up.stream)
}

/// One simple Query on the lookup connection. The constants are integers from the server's
/// own RowDescription, written as numbers: nothing of the client's reaches this text.
async fn query(
    stream: &mut UpstreamStream,
    columns: &[SourceColumn],
) -> Result<Vec<(SourceColumn, Arc<str>)>, SessionError> {
    let mut sql = String::from(
        "SELECT attrelid::int8, attnum::int4, attname FROM pg_catalog.pg_attribute \
         WHERE NOT attisdropped AND (attrelid, attnum) IN (VALUES ",
    );
    for (i, (oid, att)) in columns.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        let _ = write!(sql, "({oid}::oid,{att}::int2)");
    }
    sql.push(')');
    let mut out = BytesMut::new();
    encode_query(&mut out, &sql);
    stream
        .write_all(&out)
        .await
        .map_err(|e| failed(format!("write: {e}")))?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        while let Some(f) = next_frame(&buf, PQ_LARGE_MESSAGE_LIMIT).map_err(failed)? {
            let n = f.wire_len();
            match f.tag {
                b'D' => {
                    let v = decode_data_row(f.body).map_err(failed)?;
                    let text = |i: usize| -> Option<&str> {
                        v.get(i)
                            .copied()
                            .flatten()
                            .and_then(|b| std::str::from_utf8(b).ok())
                    };
                    let (Some(oid), Some(att), Some(name)) = (text(0), text(1), text(2)) else {
                        return Err(failed("unexpected row"));
                    };
                    let (Ok(oid), Ok(att)) = (oid.parse::<u32>(), att.parse::<i16>()) else {
                        return Err(failed("unexpected row"));
                    };
                    rows.push(((oid, att), Arc::from(name)));
                }
                b'E' => {
                    let f = decode_error_fields(f.body).map_err(failed)?;
                    error = Some(f.code.unwrap_or("XX000").to_owned());
                }
                b'Z' => {
                    buf.advance(n);
                    return match error {
                        Some(code) => Err(failed(format!("SQLSTATE {code}"))),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
            buf.advance(n);
        }
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| failed(format!("read: {e}")))?
            == 0
        {
            return Err(failed("connection closed"));
        }
    }
}
