//! The replica's data directory (SPEC §7): sealed ledger blocks, appended to one file.
//!
//! The broker is untrusted and the blocks are sealed by the Execution enclave, so this is
//! plain storage: it frames each record and appends it. One file, buffered (not one file
//! or one syscall per block: a busy cluster closes about 10,000 blocks a second). A
//! durable replica (SPEC §10) writes it on the group-commit thread ([`crate::commit`]) and
//! `fdatasync`s it with the round, before the round's outputs leave; without durability it
//! is flushed once per drained round and a host crash may lose the unflushed tail.
//!
//! File format: a sequence of records, each
//! `u32 big-endian length of what follows · version byte · u64 big-endian height · sealed ·
//! u32 big-endian CRC-32 of version, height and sealed`. On open every record is read back
//! and checked: a damaged record with nothing valid after it is a torn tail and is cut; one
//! followed by valid records is a startup error naming the file and offset.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the block file inside a replica's data directory.
pub const BLOCK_FILE: &str = "ledger.blocks";
/// Version byte of every record (2: with a checksum).
pub const RECORD_VERSION: u8 = 2;
/// Bytes of a record's header after its length: version and height.
const RECORD_HEADER: usize = 1 + 8;
/// Bytes of a record's trailer: the CRC-32.
const RECORD_TRAILER: usize = 4;
/// Largest record read back. A sealed block holds 5 ops and 5 results; an op is bounded by
/// the request size and a result by the reply frame (16 MiB), so 5 * 2 * 16 MiB bounds
/// any honest record; a larger length is corruption.
pub const MAX_RECORD_BYTES: usize = 5 * 2 * 16 * 1024 * 1024 + RECORD_HEADER + RECORD_TRAILER + 64;
/// Write buffer: many records per `write` syscall.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The encoding of one record, length prefix included.
pub fn encode_record(height: u64, sealed: &[u8]) -> Vec<u8> {
    let len = RECORD_HEADER + sealed.len() + RECORD_TRAILER;
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&u32::try_from(len).expect("a record is far below 4 GiB (MAX_RECORD_BYTES)").to_be_bytes());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(sealed);
    let crc = crc32fast::hash(&out[4..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Whether `body` (a record after its length) ends with the CRC-32 of the rest.
fn checksum_ok(body: &[u8]) -> bool {
    body.len() >= RECORD_HEADER + RECORD_TRAILER && {
        let (data, crc) = body.split_at(body.len() - RECORD_TRAILER);
        crc32fast::hash(data).to_be_bytes() == crc
    }
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
    /// appending, reading every record back. A torn or corrupt last record — the process
    /// died mid-write — is cut off first (durably), so that new records stay framed; a
    /// damaged record with valid ones after it is an error naming the file and offset.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(BLOCK_FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let end = file.seek(SeekFrom::End(0))?;
        let (complete, highest) = complete_prefix(&mut file, end)?;
        if complete < end {
            file.seek(SeekFrom::Start(complete))?;
            let mut rest = Vec::new();
            file.read_to_end(&mut rest)?;
            if any_valid_record_in(&rest[1.min(rest.len())..]) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: damaged block record at byte {complete} with valid records after it; refusing to start from a corrupt ledger",
                        path.display()
                    ),
                ));
            }
            file.set_len(complete)?;
            file.sync_all()?;
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

    /// Appends one record (buffered).
    pub fn append(&mut self, height: u64, sealed: &[u8]) -> io::Result<()> {
        if RECORD_HEADER + sealed.len() > MAX_RECORD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "record exceeds MAX_RECORD_BYTES"));
        }
        self.highest = Some(self.highest.map_or(height, |h| h.max(height)));
        self.writer.write_all(&encode_record(height, sealed))
    }

    /// Appends a record unless its height is already stored (returns false then): a
    /// restarted Execution enclave replays its batches and seals those blocks again.
    pub fn append_new(&mut self, height: u64, sealed: &[u8]) -> io::Result<bool> {
        if self.highest.is_some_and(|h| height <= h) {
            return Ok(false);
        }
        self.append(height, sealed).map(|()| true)
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

/// Length of the longest prefix of `file` made of whole records whose checksums hold, and
/// the highest height among them.
fn complete_prefix(file: &mut File, end: u64) -> io::Result<(u64, Option<u64>)> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = io::BufReader::new(file);
    let mut at = 0u64;
    let mut highest: Option<u64> = None;
    let mut body = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if end - at < 4 || reader.read_exact(&mut len).is_err() {
            return Ok((at, highest));
        }
        let len = u64::from(u32::from_be_bytes(len));
        if len > end - at - 4 || len < (RECORD_HEADER + RECORD_TRAILER) as u64 || len > MAX_RECORD_BYTES as u64 {
            return Ok((at, highest));
        }
        body.resize(len as usize, 0);
        reader.read_exact(&mut body)?;
        if body[0] != RECORD_VERSION || !checksum_ok(&body) {
            return Ok((at, highest));
        }
        let height = u64::from_be_bytes(body[1..RECORD_HEADER].try_into().expect("8 bytes"));
        highest = Some(highest.map_or(height, |h| h.max(height)));
        at += 4 + len;
    }
}

/// Whether a whole record with a valid checksum starts anywhere in `bytes`: if so, damage
/// before it is in the middle of the file, not a torn tail.
fn any_valid_record_in(bytes: &[u8]) -> bool {
    (0..bytes.len().saturating_sub(4)).any(|at| {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        (RECORD_HEADER + RECORD_TRAILER..=MAX_RECORD_BYTES).contains(&len)
            && len <= bytes.len() - at - 4
            && bytes[at + 4] == RECORD_VERSION
            && checksum_ok(&bytes[at + 4..at + 4 + len])
    })
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
    /// A record whose checksum does not hold.
    #[error("{path}: record {index} at byte {offset} fails its checksum")]
    BadChecksum {
        /// File.
        path: PathBuf,
        /// Record index.
        index: u64,
        /// Byte offset.
        offset: u64,
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
        if !(RECORD_HEADER + RECORD_TRAILER..=MAX_RECORD_BYTES).contains(&len) {
            return Err(RecordError::BadLength { path, index, offset, len: len as u64 });
        }
        let mut body = vec![0u8; len];
        if read_full(&mut self.reader, &mut body).map_err(io)? < len {
            return Err(RecordError::Truncated { path, index, offset });
        }
        if body[0] != RECORD_VERSION {
            return Err(RecordError::BadVersion { path, index, offset, version: body[0] });
        }
        if !checksum_ok(&body) {
            return Err(RecordError::BadChecksum { path, index, offset });
        }
        let height = u64::from_be_bytes(body[1..RECORD_HEADER].try_into().expect("8 header bytes"));
        self.index += 1;
        self.offset += 4 + len as u64;
        body.truncate(len - RECORD_TRAILER);
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
        assert_eq!(records[1].offset, 4 + 9 + 4 + 4);
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
    fn a_corrupt_tail_is_cut_and_a_corrupt_middle_is_an_error_naming_the_file() {
        let dir = dir("crc");
        let mut file = BlockFile::open(&dir).unwrap();
        for h in 0..3 {
            file.append(h, b"sealed block").unwrap();
        }
        file.sync().unwrap();
        let path = file.path().to_owned();
        drop(file);
        let whole = std::fs::read(&path).unwrap();
        let record = whole.len() / 3;
        // A flipped byte inside the last record: its length still fits, its checksum does not.
        let mut bad_tail = whole.clone();
        bad_tail[2 * record + 10] ^= 1;
        std::fs::write(&path, &bad_tail).unwrap();
        assert!(matches!(read_all(&path)[2], Err(RecordError::BadChecksum { index: 2, .. })));
        let file = BlockFile::open(&dir).unwrap();
        assert_eq!(file.torn_tail_bytes, record as u64);
        assert_eq!(file.highest, Some(1));
        drop(file);
        // The same damage in the first record, with good records after it: refused.
        let mut bad_middle = whole.clone();
        bad_middle[10] ^= 1;
        std::fs::write(&path, &bad_middle).unwrap();
        let err = BlockFile::open(&dir).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()) && err.to_string().contains("byte 0"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bad_middle, "nothing cut from a corrupt middle");
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
        std::fs::write(&path, [0, 0, 0, 2, RECORD_VERSION, 0]).unwrap();
        assert!(matches!(read_all(&path)[..], [Err(RecordError::BadLength { len: 2, .. })]));
        std::fs::write(&path, [0xff, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(read_all(&path)[..], [Err(RecordError::BadLength { .. })]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
