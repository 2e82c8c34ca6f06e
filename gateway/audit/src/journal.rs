//! The write-ahead journal: the record's first durable home.
//!
//! The writer seals, chains and encodes each group of records, appends the group to this
//! file with one `write(2)` and acknowledges the callers; the rows reach SQLite later, in large
//! batches ("ingestion"), off the statement's critical path. A record acknowledged is in the
//! journal (in the kernel's page cache at least, which survives a SIGKILL of the gateway), and
//! after `fdatasync` (at once in strict mode, within the sync window in bounded mode) on disk.
//!
//! The journal is replayed into SQLite whenever the store opens, and by
//! [`crate::recover`] when no writer is running; it is emptied only after the SQLite WAL
//! holding its rows has been fsynced, so a power loss never loses a row the journal held.
//!
//! It is two files, *segments*: `<db>.journal` and `<db>.journal.1`. Appends go to the
//! active one; once it has grown past the segment size and the other is empty, appends
//! move to the other, and the retired segment is emptied by the background thread as soon
//! as everything in it is in SQLite. A single file could only be emptied at a moment when
//! nothing was waiting for ingestion, which under sustained load never comes: the journal
//! grew by hundreds of MB a minute, and every reader's [`crate::recover`] read it whole.
//! Replay reads both segments and orders their rows by seq.
//!
//! ```text
//! file  = frame*
//! frame = version (1 byte, = 2) || len (u32 LE) || CRC-32 (IEEE) of payload (u32 LE)
//!         || payload (len bytes)
//! (version 1 frames, still read after an upgrade: version (= 1) || len (u32 LE)
//!  || the first 8 bytes of SHA-256(payload) || payload)
//! payload = postcard((seq, prev_hash, hash, key_id, sealed))
//!           || the clear record's canonical encoding (`Record::encode_canonical`)
//! ```
//!
//! A frame that is short or whose check does not match ends the journal: it is the torn tail
//! of a write that never returned (and so was never acknowledged), and is cut off. The check
//! only has to find torn writes (a CRC, cheap on the statement's path); tampering is found by
//! the hash chain, the seal and the signed checkpoints once the rows are in SQLite.
//!
//! The writer holds an exclusive `flock` on the first segment for as long as it runs: a
//! second writer is refused, and [`crate::recover`] knows whether a live writer will ingest
//! the journal itself.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{AuditError, Record, Seq};
use ring::digest;

const FRAME_VERSION: u8 = 2;
const HEADER: usize = 1 + 4 + 4;
/// Version 1 frames (SHA-256 check) are still read, so an upgrade replays an old journal.
const FRAME_V1: u8 = 1;
const HEADER_V1: usize = 1 + 4 + 8;
// No bound on a frame's length but the format's own (u32): the reader accepts every frame the
// writer can write. (It used to stop at 64 MiB, so a larger record was acknowledged, then taken
// for a torn tail at replay and cut off with every record after it.) We chose this over refusing
// such frames on write because a refusal would be a new way for an append to fail, and a
// refused *deferred* record (a statement's outcome, a session's end) is retried with every later
// append, refusing them all. The reader needs no smaller bound: nothing is allocated from the
// length (the segment is already in memory), a length past the end of the file is a torn tail,
// and a corrupted length that stays inside the file fails the CRC. Record size is bounded
// upstream (the codec's message limit), not here.

/// One record as it is stored: what SQLite's columns hold.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub seq: Seq,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    /// Sealing key id (sealed stores).
    pub key_id: Option<String>,
    /// `nonce || AES-256-GCM(postcard(record))` (sealed stores).
    pub sealed: Option<Vec<u8>>,
    /// The clear columns: the whole record in an unsealed store, its clear view in a sealed
    /// one (never a sensitive field in the clear).
    pub clear: Record,
}

/// The frame payload's fixed part: seq, prev_hash, hash, key_id, sealed.
type Header = (Seq, [u8; 32], [u8; 32], Option<String>, Option<Vec<u8>>);

/// The journal's segment paths for the database at `db`: `<db>.journal` (which also
/// carries the lock) and `<db>.journal.1`.
pub(crate) fn paths_for(db: &Path) -> [PathBuf; 2] {
    let mut p = db.as_os_str().to_owned();
    p.push(".journal");
    let first = PathBuf::from(p.clone());
    p.push(".1");
    [first, PathBuf::from(p)]
}

/// Appends `row` as one frame to `out`.
pub(crate) fn encode_frame(row: &Row, out: &mut Vec<u8>) -> Result<(), AuditError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    let mut buf = std::mem::take(out);
    buf = postcard::to_extend(
        &(row.seq, &row.prev_hash, &row.hash, &row.key_id, &row.sealed),
        buf,
    )?;
    buf = row.clear.encode_canonical(buf)?;
    let len = buf.len() - start - HEADER;
    let len32 = u32::try_from(len).map_err(|_| AuditError::Corrupt {
        seq: row.seq,
        reason: "record too large for the journal".into(),
    })?;
    let check = crc32fast::hash(&buf[start + HEADER..]);
    buf[start] = FRAME_VERSION;
    buf[start + 1..start + 5].copy_from_slice(&len32.to_le_bytes());
    buf[start + 5..start + HEADER].copy_from_slice(&check.to_le_bytes());
    *out = buf;
    Ok(())
}

/// Decodes the valid frames at the start of `bytes`; returns them and the length of that
/// valid prefix.
fn decode_frames(bytes: &[u8]) -> (Vec<Row>, usize) {
    let mut rows = Vec::new();
    let mut at = 0usize;
    while let Some(&version) = bytes.get(at) {
        let header = match version {
            FRAME_VERSION => HEADER,
            FRAME_V1 => HEADER_V1,
            _ => break,
        };
        if bytes.len() - at < header {
            break;
        }
        let h = &bytes[at..at + header];
        let mut len4 = [0u8; 4];
        len4.copy_from_slice(&h[1..5]);
        let len = u32::from_le_bytes(len4) as usize;
        if bytes.len() - at - header < len {
            break;
        }
        let payload = &bytes[at + header..at + header + len];
        let intact = if version == FRAME_VERSION {
            crc32fast::hash(payload).to_le_bytes()[..] == h[5..header]
        } else {
            digest::digest(&digest::SHA256, payload).as_ref()[..8] == h[5..header]
        };
        if !intact {
            break;
        }
        match decode_payload(payload) {
            Some(row) => rows.push(row),
            None => break,
        }
        at += header + len;
    }
    (rows, at)
}

/// The highest seq in the journal of `db`, read without its lock (the writer may be
/// appending; a frame cut short by that is simply not counted). `None` if empty or absent.
pub(crate) fn last_seq_unlocked(db: &Path) -> Result<Option<Seq>, AuditError> {
    let mut last = None;
    for path in paths_for(db) {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        }
        let (rows, _) = decode_frames(&bytes);
        last = last.max(rows.last().map(|r| r.seq));
    }
    Ok(last)
}

/// True if a segment of the journal of `db` holds any bytes.
pub(crate) fn any_unlocked(db: &Path) -> Result<bool, AuditError> {
    for path in paths_for(db) {
        match std::fs::metadata(path) {
            Ok(m) if m.len() > 0 => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

fn decode_payload(payload: &[u8]) -> Option<Row> {
    let ((seq, prev_hash, hash, key_id, sealed), rest): (Header, &[u8]) =
        postcard::take_from_bytes(payload).ok()?;
    let clear = Record::decode_canonical(rest).ok()?;
    Some(Row {
        seq,
        prev_hash,
        hash,
        key_id,
        sealed,
        clear,
    })
}

/// One journal file.
struct Segment {
    /// Opened for appending (`O_APPEND`: a truncation through another descriptor moves the
    /// next write back to the start).
    file: File,
    path: PathBuf,
    /// Bytes of whole frames in the file.
    len: u64,
    /// The highest seq in the file, once known (`None` when empty).
    last_seq: Option<Seq>,
}

impl Segment {
    fn open(path: PathBuf) -> Result<Segment, AuditError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        let len = file.metadata()?.len();
        Ok(Segment {
            file,
            path,
            len,
            last_seq: None,
        })
    }

    /// Reads every whole frame; cuts a torn tail off the file (with a warning).
    fn read_all(&mut self) -> Result<Vec<Row>, AuditError> {
        let mut bytes = Vec::new();
        // A second descriptor: the locked one is append-only for writes but reads from 0.
        File::open(&self.path)?.read_to_end(&mut bytes)?;
        let (rows, valid) = decode_frames(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                segment = %self.path.display(),
                valid_bytes = valid,
                torn_bytes = bytes.len() - valid,
                "audit journal ends in a torn frame (a write cut short by a crash); cut off"
            );
            self.file.set_len(valid as u64)?;
            self.file.sync_data()?;
        }
        self.len = valid as u64;
        self.last_seq = rows.iter().map(|r| r.seq).max();
        Ok(rows)
    }

    fn reset(&mut self) -> Result<(), AuditError> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
        self.last_seq = None;
        Ok(())
    }
}

/// The open, locked journal of a running writer.
pub(crate) struct Journal {
    segments: [Segment; 2],
    /// The segment appends go to.
    active: usize,
    /// Set when a failed append could not be cut back: nothing more may be appended.
    poisoned: bool,
}

/// Why the journal could not be locked.
pub(crate) enum LockOutcome {
    Locked(Journal),
    /// Another process (a running gateway) holds it.
    Busy,
}

impl Journal {
    /// Opens (creating, 0600) both segments of the journal of `db` and locks it.
    pub(crate) fn lock(db: &Path) -> Result<LockOutcome, AuditError> {
        let [first, second] = paths_for(db);
        let first = Segment::open(first)?;
        match rustix::fs::flock(
            &first.file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(LockOutcome::Busy),
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
        let second = Segment::open(second)?;
        Ok(LockOutcome::Locked(Journal {
            segments: [first, second],
            active: 0,
            poisoned: false,
        }))
    }

    /// Reads every whole frame of both segments, in seq order; cuts torn tails off.
    pub(crate) fn read_all(&mut self) -> Result<Vec<Row>, AuditError> {
        let mut rows = self.segments[0].read_all()?;
        rows.extend(self.segments[1].read_all()?);
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    }

    /// Appends whole frames, whose highest seq is `last`, to the active segment with one
    /// `write(2)` (more only if the kernel writes short). On failure the segment is cut back
    /// to its last whole frame, so a later append never lands behind garbage; if even that
    /// fails the journal refuses every later append.
    pub(crate) fn append(&mut self, frames: &[u8], last: Seq) -> Result<(), AuditError> {
        if self.poisoned {
            return Err(AuditError::Io(std::io::Error::other(
                "audit journal is unusable after a failed write",
            )));
        }
        let seg = &mut self.segments[self.active];
        match seg.file.write_all(frames) {
            Ok(()) => {
                seg.len += frames.len() as u64;
                seg.last_seq = Some(last);
                Ok(())
            }
            Err(e) => {
                if let Err(e) = seg.file.set_len(seg.len) {
                    tracing::error!(error = %e, "audit journal could not be cut back; refusing appends");
                    self.poisoned = true;
                }
                Err(e.into())
            }
        }
    }

    /// Bytes of whole frames in both segments.
    pub(crate) fn len(&self) -> u64 {
        self.segments[0].len + self.segments[1].len
    }

    /// Bytes of whole frames in each segment (for the fsync of what was written).
    pub(crate) fn lens(&self) -> [u64; 2] {
        [self.segments[0].len, self.segments[1].len]
    }

    /// Moves appends to the other segment if the active one holds at least `size` bytes and
    /// the other is empty. Returns whether it did.
    pub(crate) fn rotate(&mut self, size: u64) -> bool {
        let other = 1 - self.active;
        if self.segments[self.active].len >= size && self.segments[other].len == 0 {
            self.active = other;
            true
        } else {
            false
        }
    }

    /// The segment appends no longer go to, if it holds frames: its index and highest seq.
    pub(crate) fn retired(&self) -> Option<(usize, Option<Seq>)> {
        let other = 1 - self.active;
        let seg = &self.segments[other];
        (seg.len > 0).then_some((other, seg.last_seq))
    }

    /// Notes that the retired segment `index` was emptied (by the background thread,
    /// through its own descriptor, after everything in it reached SQLite).
    pub(crate) fn emptied(&mut self, index: usize) {
        debug_assert_ne!(
            index, self.active,
            "the active segment is never emptied alone"
        );
        if index != self.active {
            self.segments[index].len = 0;
            self.segments[index].last_seq = None;
        }
    }

    /// Empties both segments. Only after every row in them is in SQLite and the WAL is
    /// fsynced.
    pub(crate) fn reset(&mut self) -> Result<(), AuditError> {
        self.segments[0].reset()?;
        self.segments[1].reset()?;
        self.active = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::EventKind;

    fn row(seq: Seq) -> Row {
        Row {
            seq,
            prev_hash: [seq as u8; 32],
            hash: [seq as u8 + 1; 32],
            key_id: None,
            sealed: Some(vec![1, 2, 3]),
            clear: Record {
                policy_hash: Some("ab".repeat(32)),
                payload: Some(vec![seq as u8; 3]),
                ..Record::new(EventKind::Statement, "gw", seq)
            },
        }
    }

    #[test]
    fn frames_round_trip_and_torn_tails_are_cut() {
        let mut bytes = Vec::new();
        for s in 1..=3 {
            encode_frame(&row(s), &mut bytes).unwrap();
        }
        let whole = bytes.len();
        let (rows, valid) = decode_frames(&bytes);
        assert_eq!(rows, vec![row(1), row(2), row(3)]);
        assert_eq!(valid, whole);
        // Every proper prefix decodes to the whole frames it holds, never more.
        for cut in 0..whole {
            let (rows, valid) = decode_frames(&bytes[..cut]);
            assert!(valid <= cut);
            assert!(rows.len() < 3);
            assert_eq!(rows, (1..=rows.len() as Seq).map(row).collect::<Vec<_>>());
        }
        // A flipped byte inside the second frame ends the journal after the first.
        let (_, first) = decode_frames(&bytes[..whole / 3 + 1]);
        let mut bad = bytes.clone();
        bad[first + HEADER + 2] ^= 0x40;
        let (rows, valid) = decode_frames(&bad);
        assert_eq!(rows, vec![row(1)]);
        assert_eq!(valid, first);
    }

    /// A record larger than the reader's old 64 MiB bound, then a small one: both replay
    /// after a reopen (the first used to be taken for a torn tail and cut off with the second).
    #[test]
    fn frames_over_64_mib_are_replayed_with_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let LockOutcome::Locked(mut j) = Journal::lock(&db).unwrap() else {
            panic!("fresh journal is busy")
        };
        let mut big = row(1);
        big.sealed = Some(vec![0x5a; (64 << 20) + 1]);
        let mut frames = Vec::new();
        encode_frame(&big, &mut frames).unwrap();
        assert!(frames.len() > (64 << 20) + HEADER);
        encode_frame(&row(2), &mut frames).unwrap();
        j.append(&frames, 2).unwrap();
        drop(j);
        let LockOutcome::Locked(mut j) = Journal::lock(&db).unwrap() else {
            panic!("journal still busy after its holder closed it")
        };
        let rows = j.read_all().unwrap();
        assert_eq!(rows.len(), 2, "both records replayed");
        assert!(rows[0] == big && rows[1] == row(2));
        assert_eq!(j.len(), frames.len() as u64, "nothing cut off");
    }

    /// A journal written by the previous frame version (SHA-256 check) is still replayed.
    #[test]
    fn version_1_frames_are_read() {
        let mut v1 = Vec::new();
        for s in 1..=2 {
            let mut f = Vec::new();
            encode_frame(&row(s), &mut f).unwrap();
            let payload = &f[HEADER..];
            v1.push(FRAME_V1);
            v1.extend_from_slice(&f[1..5]);
            v1.extend_from_slice(&digest::digest(&digest::SHA256, payload).as_ref()[..8]);
            v1.extend_from_slice(payload);
        }
        let mut both = v1.clone();
        encode_frame(&row(3), &mut both).unwrap();
        let (rows, valid) = decode_frames(&both);
        assert_eq!(rows, vec![row(1), row(2), row(3)]);
        assert_eq!(valid, both.len());
        let mut bad = v1;
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(decode_frames(&bad).0, vec![row(1)]);
    }

    #[test]
    fn a_second_lock_is_refused_and_reading_cuts_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let LockOutcome::Locked(mut j) = Journal::lock(&db).unwrap() else {
            panic!("fresh journal is busy")
        };
        assert!(matches!(Journal::lock(&db).unwrap(), LockOutcome::Busy));
        let mut frames = Vec::new();
        encode_frame(&row(1), &mut frames).unwrap();
        encode_frame(&row(2), &mut frames).unwrap();
        j.append(&frames, 2).unwrap();
        j.append(&frames[..7], 2).unwrap(); // a torn tail, as a crash mid-write leaves it
        drop(j);
        let LockOutcome::Locked(mut j) = Journal::lock(&db).unwrap() else {
            panic!("journal still busy after its holder closed it")
        };
        assert_eq!(j.read_all().unwrap(), vec![row(1), row(2)]);
        assert_eq!(
            std::fs::metadata(&paths_for(&db)[0]).unwrap().len(),
            frames.len() as u64
        );
        j.reset().unwrap();
        assert!(j.read_all().unwrap().is_empty());
    }

    /// Appends move to the other segment once the active one is full and the other empty;
    /// a retired segment reports its highest seq; replay reads both in seq order; a torn
    /// tail in either is cut off without touching the other.
    #[test]
    fn segments_rotate_and_replay_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let LockOutcome::Locked(mut j) = Journal::lock(&db).unwrap() else {
            panic!("fresh journal is busy")
        };
        let frame = |s: Seq| {
            let mut f = Vec::new();
            encode_frame(&row(s), &mut f).unwrap();
            f
        };
        let one = frame(1).len() as u64;
        j.append(&frame(1), 1).unwrap();
        assert!(!j.rotate(2 * one), "below the segment size");
        j.append(&frame(2), 2).unwrap();
        assert_eq!(j.retired(), None);
        assert!(j.rotate(2 * one));
        assert_eq!(j.retired(), Some((0, Some(2))));
        j.append(&frame(3), 3).unwrap();
        j.append(&frame(4), 4).unwrap();
        // The other segment still holds rows: no rotation back onto them.
        assert!(!j.rotate(one));
        assert_eq!(j.lens(), [2 * one, 2 * one]);
        let [first, second] = paths_for(&db);
        assert_eq!(std::fs::metadata(&second).unwrap().len(), 2 * one);
        // The background thread empties the retired segment through its own descriptor;
        // the next rotation goes back to it and appends start at its beginning.
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(0)
            .unwrap();
        j.emptied(0);
        assert_eq!(j.retired(), None);
        assert!(j.rotate(one));
        j.append(&frame(5), 5).unwrap();
        assert_eq!(std::fs::metadata(&first).unwrap().len(), one);
        assert_eq!(j.retired(), Some((1, Some(4))));
        assert_eq!(last_seq_unlocked(&db).unwrap(), Some(5));
        // A crash: the newer segment ends in a torn frame.
        j.append(&frame(6)[..5], 6).unwrap();
        drop(j);
        let LockOutcome::Locked(mut j) = Journal::lock(&db).unwrap() else {
            panic!("journal still busy after its holder closed it")
        };
        assert_eq!(j.read_all().unwrap(), vec![row(3), row(4), row(5)]);
        assert_eq!(std::fs::metadata(&first).unwrap().len(), one);
        assert_eq!(j.len(), 3 * one);
        j.reset().unwrap();
        assert!(!any_unlocked(&db).unwrap());
    }
}
