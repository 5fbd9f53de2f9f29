//! The replica's data directory (SPEC §7): sealed ledger blocks, appended to one file.
//!
//! The broker is untrusted and the blocks are sealed by the Execution enclave, so this is
//! plain storage: it frames each record and appends it. One file, buffered, flushed once
//! per drained round of outputs (not one file or one syscall per block: a busy cluster
//! closes about 10,000 blocks a second). No fsync: a host crash may lose the unflushed
//! tail, which a restarted replica rewrites byte for byte when it re-executes.
//!
//! File format: a sequence of records, each
//! `u32 big-endian length of what follows · version byte · u64 big-endian height · sealed`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the block file inside a replica's data directory.
pub const BLOCK_FILE: &str = "ledger.blocks";
/// Version byte of every record.
pub const RECORD_VERSION: u8 = 1;
/// Bytes of a record's header after its length: version and height.
const RECORD_HEADER: usize = 1 + 8;
/// Largest record read back. A sealed block holds 5 ops and 5 results; an op is bounded by
/// the request size and a result by the reply frame (16 MiB), so 5 * 2 * 16 MiB bounds
/// any honest record; a larger length is corruption.
pub const MAX_RECORD_BYTES: usize = 5 * 2 * 16 * 1024 * 1024 + RECORD_HEADER + 64;
/// Write buffer: many records per `write` syscall.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The encoding of one record, length prefix included.
pub fn encode_record(height: u64, sealed: &[u8]) -> Vec<u8> {
    let len = RECORD_HEADER + sealed.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&u32::try_from(len).expect("a record is far below 4 GiB (MAX_RECORD_BYTES)").to_be_bytes());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(sealed);
    out
}

/// An append-only block file.
#[derive(Debug)]
pub struct BlockFile {
    path: PathBuf,
    writer: BufWriter<File>,
    /// Bytes cut from the end on open: a record torn by a crash mid-write.
    pub torn_tail_bytes: u64,
    /// Highest height stored: a restarted Execution enclave replays its batches and seals
    /// those blocks again, byte for byte; they are not written twice (SPEC §10).
    highest: Option<u64>,
}

impl BlockFile {
    /// Opens (creating it and the directory if needed) `data_dir/ledger.blocks` for
    /// appending. A torn last record — the process died mid-write — is cut off first, so
    /// that new records stay framed.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(BLOCK_FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let end = file.seek(SeekFrom::End(0))?;
        let (complete, highest) = complete_prefix(&mut file, end)?;
        if complete < end {
            file.set_len(complete)?;
        }
        file.seek(SeekFrom::Start(complete))?;
        Ok(BlockFile {
            path,
            writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            torn_tail_bytes: end - complete,
            highest,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (buffered); returns false for a height already stored.
    pub fn append(&mut self, height: u64, sealed: &[u8]) -> io::Result<bool> {
        if RECORD_HEADER + sealed.len() > MAX_RECORD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "record exceeds MAX_RECORD_BYTES"));
        }
        if self.highest.is_some_and(|h| height <= h) {
            return Ok(false);
        }
        self.highest = Some(height);
        self.writer.write_all(&encode_record(height, sealed))?;
        Ok(true)
    }

    /// Flushes and `fdatasync`s the file (SPEC §10: before the sealed state that could
    /// rebuild these blocks is compacted away).
    pub fn sync(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        self.writer.get_ref().sync_data()
    }

    /// Writes everything buffered to the operating system.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Length of the longest prefix of `file` made of whole records (by their length fields),
/// and the highest height among them.
fn complete_prefix(file: &mut File, end: u64) -> io::Result<(u64, Option<u64>)> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = io::BufReader::new(file);
    let mut at = 0u64;
    let mut highest: Option<u64> = None;
    loop {
        let mut len = [0u8; 4];
        if end - at < 4 || reader.read_exact(&mut len).is_err() {
            return Ok((at, highest));
        }
        let len = u64::from(u32::from_be_bytes(len));
        if len > end - at - 4 || len < RECORD_HEADER as u64 {
            return Ok((at, highest));
        }
        let mut header = [0u8; RECORD_HEADER];
        reader.read_exact(&mut header)?;
        let height = u64::from_be_bytes(header[1..].try_into().expect("8 bytes"));
        highest = Some(highest.map_or(height, |h| h.max(height)));
        reader.seek_relative(len as i64 - RECORD_HEADER as i64)?;
        at += 4 + len;
    }
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Position in the file, from 0.
    pub index: u64,
    /// Byte offset of its length prefix.
    pub offset: u64,
    /// The height written beside it (untrusted: the AEAD binds the real one).
    pub height: u64,
    /// The sealed bytes.
    pub sealed: Vec<u8>,
}

/// Why a block file does not read back as records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The file ends inside a record.
    #[error("{path}: record {index} at byte {offset} is truncated")]
    Truncated {
        /// File.
        path: PathBuf,
        /// Record index.
        index: u64,
        /// Byte offset.
        offset: u64,
    },
    /// A length field that no record can have.
    #[error("{path}: record {index} at byte {offset} claims {len} bytes")]
    BadLength {
        /// File.
        path: PathBuf,
        /// Record index.
        index: u64,
        /// Byte offset.
        offset: u64,
        /// The claimed length.
        len: u64,
    },
    /// An unknown record version.
    #[error("{path}: record {index} at byte {offset} has version {version}, expected {RECORD_VERSION}")]
    BadVersion {
        /// File.
        path: PathBuf,
        /// Record index.
        index: u64,
        /// Byte offset.
        offset: u64,
        /// The version found.
        version: u8,
    },
}

/// Reads the records of a block file one by one.
pub struct RecordReader {
    path: PathBuf,
    reader: io::BufReader<File>,
    index: u64,
    offset: u64,
    failed: bool,
}

impl RecordReader {
    /// Opens `path` (a `ledger.blocks` file).
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let file = File::open(path).map_err(|source| RecordError::Io { path: path.to_owned(), source })?;
        Ok(RecordReader { path: path.to_owned(), reader: io::BufReader::new(file), index: 0, offset: 0, failed: false })
    }

    fn next_record(&mut self) -> Result<Option<StoredRecord>, RecordError> {
        let (path, index, offset) = (self.path.clone(), self.index, self.offset);
        let io = |source| RecordError::Io { path: path.clone(), source };
        let mut len = [0u8; 4];
        match read_full(&mut self.reader, &mut len).map_err(io)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(RecordError::Truncated { path, index, offset }),
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(RECORD_HEADER..=MAX_RECORD_BYTES).contains(&len) {
            return Err(RecordError::BadLength { path, index, offset, len: len as u64 });
        }
        let mut body = vec![0u8; len];
        if read_full(&mut self.reader, &mut body).map_err(io)? < len {
            return Err(RecordError::Truncated { path, index, offset });
        }
        if body[0] != RECORD_VERSION {
            return Err(RecordError::BadVersion { path, index, offset, version: body[0] });
        }
        let height = u64::from_be_bytes(body[1..RECORD_HEADER].try_into().expect("8 header bytes"));
        self.index += 1;
        self.offset += 4 + len as u64;
        Ok(Some(StoredRecord { index, offset, height, sealed: body.split_off(RECORD_HEADER) }))
    }
}

impl Iterator for RecordReader {
    type Item = Result<StoredRecord, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_record().transpose();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("splitbft-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn read_all(path: &Path) -> Vec<Result<StoredRecord, RecordError>> {
        RecordReader::open(path).unwrap().collect()
    }

    #[test]
    fn records_round_trip_and_appends_survive_reopening() {
        let dir = dir("roundtrip");
        let mut file = BlockFile::open(&dir).unwrap();
        file.append(0, b"zero").unwrap();
        file.append(1, b"").unwrap();
        file.flush().unwrap();
        drop(file);
        let mut file = BlockFile::open(&dir).unwrap();
        assert_eq!(file.torn_tail_bytes, 0);
        file.append(0, b"again").unwrap();
        file.flush().unwrap();
        let records: Vec<StoredRecord> = read_all(file.path()).into_iter().map(Result::unwrap).collect();
        let summary: Vec<(u64, u64, &[u8])> =
            records.iter().map(|r| (r.index, r.height, r.sealed.as_slice())).collect();
        assert_eq!(summary, [(0, 0, &b"zero"[..]), (1, 1, &b""[..]), (2, 0, &b"again"[..])]);
        assert_eq!(records[1].offset, 4 + 9 + 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_on_open_and_reported_by_the_reader() {
        let dir = dir("torn");
        let mut file = BlockFile::open(&dir).unwrap();
        file.append(0, b"whole").unwrap();
        file.flush().unwrap();
        let path = file.path().to_owned();
        drop(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&encode_record(1, b"torn record")[..7]);
        std::fs::write(&path, &bytes).unwrap();
        let results = read_all(&path);
        assert!(matches!(results.last(), Some(Err(RecordError::Truncated { index: 1, .. }))), "{results:?}");
        let file = BlockFile::open(&dir).unwrap();
        assert_eq!(file.torn_tail_bytes, 7);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_lengths_and_versions_are_typed_errors() {
        let dir = dir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(BLOCK_FILE);
        let mut bad_version = encode_record(3, b"x");
        bad_version[4] = 9;
        std::fs::write(&path, &bad_version).unwrap();
        assert!(matches!(read_all(&path)[..], [Err(RecordError::BadVersion { version: 9, .. })]));
        std::fs::write(&path, [0, 0, 0, 2, 1, 0]).unwrap();
        assert!(matches!(read_all(&path)[..], [Err(RecordError::BadLength { len: 2, .. })]));
        std::fs::write(&path, [0xff, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(read_all(&path)[..], [Err(RecordError::BadLength { .. })]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
