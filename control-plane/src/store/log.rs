//! The write-ahead log: one framed record per registry write, appended to
//! `wal-<generation>.log` and fsynced before the write is published.
//!
//! A file starts with the header line [`HEADER_PREFIX`]` <version>\n`. Each
//! record is `length (u32 LE) | first 8 bytes of SHA-256(payload) | payload`
//! (the payload is a JSON [`LogRecord`]). A crash in the middle of an append
//! leaves a short or mismatching last record, which recovery cuts off; a bad
//! record followed by more data is damage, and refuses the start.
//!
//! Group commit: appends only `write(2)`; [`Log::sync`] makes every record up
//! to a ticket durable. One caller at a time runs the `fdatasync`, covering
//! every record appended before it began; the others wait for it and return
//! at once if it covered them. So concurrent writers share fsyncs, and the
//! cost of a write stays the size of its record, whatever the registry's.

use super::LogRecord;
use crate::error::Error;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The first bytes of every log file, before the version.
pub(super) const HEADER_PREFIX: &str = "sane-mesh state log";

/// Version of the log format, bumped on incompatible changes.
pub const LOG_VERSION: u32 = 1;

/// Bytes before a record's payload: length and checksum.
const FRAME_HEAD: usize = 4 + 8;

/// Position of a record in the log: records up to it are durable once
/// [`Log::sync`] of it returned.
pub type Ticket = u64;

/// The log being written.
#[derive(Debug)]
pub(super) struct Log {
    dir: PathBuf,
    writer: Mutex<Writer>,
    commit: Mutex<Commit>,
    committed: Condvar,
}

#[derive(Debug)]
struct Writer {
    /// `None` until [`Log::start`].
    file: Option<Arc<File>>,
    path: PathBuf,
    generation: u64,
    /// Bytes of the current file that hold whole records.
    len: u64,
    /// Ticket of the last appended record.
    appended: Ticket,
}

#[derive(Debug, Default)]
struct Commit {
    synced: Ticket,
    syncing: bool,
    /// A failed fsync: what is in the page cache is unknown from then on, so
    /// every later write fails until a restart recovers from the disk.
    failed: Option<(PathBuf, io::ErrorKind, String)>,
}

/// What reading one log file found.
#[derive(Debug)]
pub(super) struct ReadLog {
    /// Every whole record, in order.
    pub(super) records: Vec<LogRecord>,
    /// Bytes cut off at the end: a record torn by a crash.
    pub(super) torn: u64,
}

// === impl Log ===

impl Log {
    pub(super) fn new(dir: &Path) -> Log {
        Log {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer {
                file: None,
                path: PathBuf::new(),
                generation: 0,
                len: 0,
                appended: 0,
            }),
            commit: Mutex::new(Commit::default()),
            committed: Condvar::new(),
        }
    }

    /// The file of `generation`.
    pub(super) fn path_of(dir: &Path, generation: u64) -> PathBuf {
        dir.join(format!("wal-{generation}.log"))
    }

    /// The generation of a log file name (`wal-<n>.log`).
    pub(super) fn generation_of(name: &str) -> Option<u64> {
        name.strip_prefix("wal-")?
            .strip_suffix(".log")?
            .parse()
            .ok()
    }

    /// Starts writing a new, empty file of `generation`.
    pub(super) fn start(&self, generation: u64) -> Result<(), Error> {
        let (file, path, len) = create(&self.dir, generation)?;
        let mut w = lock(&self.writer);
        w.file = Some(Arc::new(file));
        w.path = path;
        w.generation = generation;
        w.len = len;
        Ok(())
    }

    /// Appends `record` (not yet durable: see [`Log::sync`]). On failure
    /// the file is cut back to its last whole record.
    pub(super) fn append(&self, record: &LogRecord) -> Result<Ticket, Error> {
        let mut w = lock(&self.writer);
        self.check_failed()?;
        let frame = encode(record).ok_or_else(|| Error::StateWrite {
            path: w.path.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "a single write is over 4 GiB, the largest log record",
            ),
        })?;
        let Some(file) = w.file.clone() else {
            return Err(Error::StateWrite {
                path: self.dir.clone(),
                source: io::Error::other("the state log was not started"),
            });
        };
        // O_APPEND: every write lands at the end, also after a cut.
        if let Err(source) = (&*file).write_all(&frame) {
            if let Err(cut) = file.set_len(w.len) {
                self.fail(&w.path, &cut);
            }
            return Err(Error::StateWrite {
                path: w.path.clone(),
                source,
            });
        }
        w.len += frame.len() as u64;
        w.appended += 1;
        Ok(w.appended)
    }

    /// Returns once every record up to `ticket` is on disk.
    pub(super) fn sync(&self, ticket: Ticket) -> Result<(), Error> {
        let mut c = lock(&self.commit);
        loop {
            if let Some(e) = failed_error(&c) {
                return Err(e);
            }
            if c.synced >= ticket {
                return Ok(());
            }
            if c.syncing {
                c = self.committed.wait(c).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            c.syncing = true;
            drop(c);
            let (file, path, target) = {
                let w = lock(&self.writer);
                (w.file.clone(), w.path.clone(), w.appended)
            };
            let result = match &file {
                Some(f) => f.sync_data(),
                None => Ok(()),
            };
            c = lock(&self.commit);
            c.syncing = false;
            match result {
                Ok(()) => c.synced = c.synced.max(target),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e,
                        "fsync of the state log failed; writes fail until a restart");
                    c.failed = Some((path, e.kind(), e.to_string()));
                }
            }
            self.committed.notify_all();
        }
    }

    /// The last durable ticket.
    pub(super) fn synced(&self) -> Ticket {
        lock(&self.commit).synced
    }

    /// Bytes in the current file.
    pub(super) fn len(&self) -> u64 {
        lock(&self.writer).len
    }

    /// Makes everything appended durable, then continues in a new file.
    /// Returns the generation of the file left behind. The caller keeps
    /// appends out meanwhile.
    pub(super) fn rotate(&self) -> Result<u64, Error> {
        let (appended, generation) = {
            let w = lock(&self.writer);
            (w.appended, w.generation)
        };
        self.sync(appended)?;
        let (file, path, len) = create(&self.dir, generation + 1)?;
        let mut w = lock(&self.writer);
        w.file = Some(Arc::new(file));
        w.path = path;
        w.generation = generation + 1;
        w.len = len;
        Ok(generation)
    }

    fn check_failed(&self) -> Result<(), Error> {
        match failed_error(&lock(&self.commit)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fail(&self, path: &Path, e: &io::Error) {
        let mut c = lock(&self.commit);
        c.failed = Some((path.to_path_buf(), e.kind(), e.to_string()));
        self.committed.notify_all();
    }

    /// Test hook: swaps the file for a read-only handle, so appends fail.
    #[cfg(test)]
    pub(super) fn break_for_test(&self) {
        let mut w = lock(&self.writer);
        let file = File::open(&w.path).unwrap();
        w.file = Some(Arc::new(file));
    }
}

fn failed_error(c: &Commit) -> Option<Error> {
    c.failed
        .as_ref()
        .map(|(path, kind, text)| Error::StateWrite {
            path: path.clone(),
            source: io::Error::new(
                *kind,
                format!("an earlier fsync failed ({text}); restart the control plane"),
            ),
        })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every await-free step.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates the file of `generation` with its header, durable (the file and
/// its directory entry). Returns it open for appending, and its length.
fn create(dir: &Path, generation: u64) -> Result<(File, PathBuf, u64), Error> {
    let path = Log::path_of(dir, generation);
    let err = |source| Error::StateWrite {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(err)?;
    let header = format!("{HEADER_PREFIX} {LOG_VERSION}\n");
    file.write_all(header.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    super::sync_dir(dir).map_err(err)?;
    Ok((file, path, header.len() as u64))
}

/// One record, framed; `None` if it is too long for its length field.
fn encode(record: &LogRecord) -> Option<Vec<u8>> {
    // Serializing plain data into a Vec cannot fail.
    let payload = serde_json::to_vec(record).unwrap_or_default();
    let len = u32::try_from(payload.len()).ok()?;
    let mut frame = Vec::with_capacity(FRAME_HEAD + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&checksum(&payload));
    frame.extend_from_slice(&payload);
    Some(frame)
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Reads a log file. A torn last record is reported in `torn`, not an
/// error; a damaged record before the end, or an unknown header, is.
pub(super) fn read(path: &Path) -> Result<ReadLog, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::StateRead {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |offset: usize, reason: String| Error::StateCorrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let header_end = match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => i + 1,
        // Cut short while being created: it never held a record.
        None if format!("{HEADER_PREFIX} {LOG_VERSION}\n")
            .as_bytes()
            .starts_with(&bytes) =>
        {
            return Ok(ReadLog {
                records: Vec::new(),
                torn: bytes.len() as u64,
            })
        }
        None => return Err(corrupt(0, "no header line".into())),
    };
    let header = String::from_utf8_lossy(&bytes[..header_end - 1]);
    let version = header
        .strip_prefix(HEADER_PREFIX)
        .map(str::trim)
        .ok_or_else(|| corrupt(0, format!("{header:?} is not a state log header")))?;
    if version != LOG_VERSION.to_string() {
        return Err(Error::StateFormat {
            path: path.to_path_buf(),
            found: version.to_string(),
            supported: LOG_VERSION,
        });
    }
    let mut records = Vec::new();
    let mut at = header_end;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEAD {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(payload) = rest.get(FRAME_HEAD..FRAME_HEAD + len) else {
            break;
        };
        let last = at + FRAME_HEAD + len == bytes.len();
        if checksum(payload) != rest[4..FRAME_HEAD] {
            if last {
                break;
            }
            return Err(corrupt(at, "checksum mismatch".into()));
        }
        let record = serde_json::from_slice(payload)
            .map_err(|e| corrupt(at, format!("record does not parse: {e}")))?;
        records.push(record);
        at += FRAME_HEAD + len;
    }
    Ok(ReadLog {
        records,
        torn: (bytes.len() - at) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LogOp;

    fn record(revision: u64) -> LogRecord {
        LogRecord {
            revision,
            ops: vec![LogOp::Delete {
                kind: crate::resource::Kind::Service,
                key: format!("default/s{revision}"),
            }],
        }
    }

    #[test]
    fn appended_records_read_back_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::new(dir.path());
        log.start(1).unwrap();
        for rev in 1..=3 {
            let t = log.append(&record(rev)).unwrap();
            log.sync(t).unwrap();
        }
        let path = Log::path_of(dir.path(), 1);
        let whole = std::fs::read(&path).unwrap();
        let read_back = read(&path).unwrap();
        assert_eq!(read_back.records, vec![record(1), record(2), record(3)]);
        assert_eq!(read_back.torn, 0);

        // Every cut inside the last record (a crash mid-append) loses that
        // record only; the acknowledged ones before it all come back.
        let last_start = whole.len() - encode(&record(3)).unwrap().len();
        for cut in last_start + 1..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let r = read(&path).unwrap();
            assert_eq!(r.records, vec![record(1), record(2)], "cut at {cut}");
            assert_eq!(r.torn, (cut - last_start) as u64);
        }
        // A last record whose bytes are all there but wrong (the length was
        // written, the payload not yet) is torn too.
        let mut garbled = whole.clone();
        let n = garbled.len();
        garbled[n - 2] ^= 0xff;
        std::fs::write(&path, &garbled).unwrap();
        assert_eq!(read(&path).unwrap().records.len(), 2);
        // The same damage in a record with more after it is not a crash.
        let mut garbled = whole.clone();
        garbled[last_start - 2] ^= 0xff;
        std::fs::write(&path, &garbled).unwrap();
        let err = read(&path).unwrap_err();
        assert!(matches!(err, Error::StateCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("wal-1.log"), "{err}");
    }

    #[test]
    fn unknown_log_version_is_refused_naming_file_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = Log::path_of(dir.path(), 7);
        std::fs::write(&path, format!("{HEADER_PREFIX} 9\n")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("wal-7.log") && err.contains("version 9"),
            "{err}"
        );
    }

    #[test]
    fn concurrent_writers_share_fsyncs_and_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::new(dir.path()));
        log.start(1).unwrap();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let t = log.append(&record(w * 100 + i)).unwrap();
                        log.sync(t).unwrap();
                        assert!(log.synced() >= t);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let r = read(&Log::path_of(dir.path(), 1)).unwrap();
        assert_eq!(r.records.len(), 200);
    }

    #[test]
    fn a_failed_append_leaves_no_partial_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::new(dir.path());
        log.start(1).unwrap();
        log.append(&record(1)).unwrap();
        log.break_for_test();
        let err = log.append(&record(2)).unwrap_err();
        assert!(matches!(err, Error::StateWrite { .. }), "{err}");
        let r = read(&Log::path_of(dir.path(), 1)).unwrap();
        assert_eq!((r.records.len(), r.torn), (1, 0));
    }
}
