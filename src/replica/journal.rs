//! The write-ahead journal in front of sled: a commit is one `pwrite` and one `fdatasync` on
//! the committing thread.
//!
//! sled 0.34 makes a batch durable with `flush`, which hands its log buffers to its own thread
//! pool and waits, and its `apply_batch` alone already writes and syncs its log buffer twice
//! through that pool. Instead, `Storage::commit` appends the batch to this journal and syncs
//! it, then writes its keys into sled one by one without a flush; sled writes them out in its
//! own time (its background flush, or a checkpoint here).
//!
//! Files: `journal/<number>.wal` in the store's directory, each a segment allocated whole when
//! it is begun (so that syncing a record does not also have to grow the file), holding
//! records back to back and zeros after the last. A record:
//!
//! ```text
//! length u32 LE | crc32 u32 LE (of the sequence number and the payload) | sequence u64 LE | payload
//! payload: per write, 1 key-length u32 LE key value-length u32 LE value (insert)
//!                  or 2 key-length u32 LE key                          (remove)
//! ```
//!
//! The journal holds every write to the tree since sled's last flush, in order: it is emptied
//! (`clear`, `Journal::start`) only when sled holds everything durably. At open, every record
//! is applied again in order (`recover`) and flushed: a write sled had already is written again with the
//! same value, and whatever sled lost of the others, in whatever order, comes back. So a batch
//! need not be atomic in sled, nor sled's recovery a prefix of its writes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
#[cfg(target_os = "linux")]
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The size each segment is allocated at (disk space the store holds beyond its data). A full
/// segment is checkpointed (one sled flush) and a new one begun: with small writes, once every
/// few thousand commits.
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Larger batches (a compaction of a big document, a part of an ingest) skip the journal and
/// are made durable by sled's flush, which costs them little next to their size.
pub const MAX_RECORD: usize = 1024 * 1024;

const HEADER: usize = 16;
const INSERT: u8 = 1;
const REMOVE: u8 = 2;

/// One write of a batch: a key and its new value, or its removal (`None`).
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A journaled batch, read back at open.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub writes: Vec<Write>,
}

/// What a journal directory held.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every intact record, in the order written.
    pub records: Vec<Record>,
    /// Why the records stop before the end of what was written, when they do: a record
    /// damaged after it was acknowledged (not a write cut short by a crash, which was never
    /// acknowledged and is left out silently).
    pub damage: Option<String>,
}

/// The bytes of one record.
pub fn encode(seq: u64, writes: &[Write]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (key, value) in writes {
        payload.push(if value.is_some() { INSERT } else { REMOVE });
        put_bytes(&mut payload, key);
        if let Some(value) = value {
            put_bytes(&mut payload, value);
        }
    }
    let mut record = Vec::with_capacity(HEADER + payload.len());
    record.extend_from_slice(&length_u32(payload.len()).to_le_bytes());
    record.extend_from_slice(&checksum(seq, &payload).to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

/// Reads every segment of `dir` (none when it does not exist).
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    let segments = segments(dir)?;
    let mut recovered = Recovered::default();
    for (position, (_, path)) in segments.iter().enumerate() {
        let bytes = fs::read(path)?;
        let is_last = position + 1 == segments.len();
        let before = recovered.records.len();
        let read = read_segment(&bytes, is_last, &mut recovered.records);
        let damage = read
            .err()
            .or_else(|| cut_at_gap(&mut recovered.records, before));
        if let Some(damage) = damage {
            recovered.damage = Some(format!("{}: {damage}", path.display()));
            break;
        }
    }
    Ok(recovered)
}

/// Why a journal could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Old segments are still there: their records would be applied again at the next open,
    /// over later writes.
    #[error("cannot remove the old journal segments: {0}")]
    Clear(#[source] io::Error),
    /// The journal is empty, but no segment could be begun (a full disk).
    #[error("cannot begin a journal segment: {0}")]
    Begin(#[source] io::Error),
}

/// The segment being written.
pub struct Journal {
    file: File,
    used: u64,
}

impl Journal {
    /// Removes every segment of `dir` and begins segment `number`. Call it only once what the
    /// old segments hold is durable in sled.
    pub fn start(dir: &Path, number: u64) -> Result<Journal, StartError> {
        clear(dir).map_err(StartError::Clear)?;
        Journal::begin(dir, number).map_err(StartError::Begin)
    }

    fn begin(dir: &Path, number: u64) -> io::Result<Journal> {
        create_dir(dir)?;
        let path = dir.join(segment_name(number));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        allocate(&file)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Journal { file, used: 0 })
    }

    /// Whether `record` fits in what is left of this segment.
    pub fn fits(&self, record: &[u8]) -> bool {
        self.used + record.len() as u64 <= SEGMENT_BYTES
    }

    /// Writes `record` after the last one and waits until it is on disk.
    pub fn append(&mut self, record: &[u8]) -> io::Result<()> {
        self.file.write_all_at(record, self.used)?;
        self.file.sync_data()?;
        self.used += record.len() as u64;
        Ok(())
    }
}

/// Removes every segment of `dir`, durably; with none there, touches nothing (a one-shot
/// read opens the store without a write to the disk for the journal).
pub fn clear(dir: &Path) -> io::Result<()> {
    let segments = segments(dir)?;
    if segments.is_empty() {
        return Ok(());
    }
    for (_, path) in segments {
        fs::remove_file(path)?;
    }
    File::open(dir)?.sync_all()
}

/// Creates `dir` if it is missing, durably (its entry in the store's directory too).
fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Allocates a segment whole. A file system that cannot (`EOPNOTSUPP`) grows the file as
/// records are written instead: slower to sync, as correct.
#[cfg(target_os = "linux")]
fn allocate(file: &File) -> io::Result<()> {
    let length = libc::off_t::try_from(SEGMENT_BYTES).unwrap_or(libc::off_t::MAX);
    // SAFETY: `fallocate` on a file descriptor this `File` owns and keeps open.
    match unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) } {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            unsupported if unsupported.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            error => Err(error),
        },
    }
}

/// Elsewhere (macOS has no `fallocate`) the file grows as records are written.
#[cfg(not(target_os = "linux"))]
fn allocate(_file: &File) -> io::Result<()> {
    Ok(())
}

/// The segments of `dir`, by number; other files are left alone.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(missing) if missing.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let number = (path.extension()).is_some_and(|ext| ext == "wal").then(|| {
            (path.file_stem())
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<u64>().ok())
        });
        if let Some(Some(number)) = number {
            segments.push((number, path));
        }
    }
    segments.sort();
    Ok(segments)
}

fn segment_name(number: u64) -> String {
    format!("{number:020}.wal")
}

/// Records are numbered one after the other: a number skipped means records lost, and those
/// after them are not applied without them. Looks from `from` (the first record of the
/// segment just read) on.
fn cut_at_gap(records: &mut Vec<Record>, from: usize) -> Option<String> {
    let start = from.saturating_sub(1);
    let at =
        (records[start..].windows(2)).position(|pair| pair[1].seq != pair[0].seq + 1)? + start + 1;
    let damage = format!(
        "record {} follows record {}: the records between are missing",
        records[at].seq,
        records[at - 1].seq
    );
    records.truncate(at);
    Some(damage)
}

/// Appends the intact records of one segment to `records`. A record cut short by a crash
/// ends the segment quietly: nothing was written after it, and it was never acknowledged.
/// Anything else that does not read back is damage.
fn read_segment(bytes: &[u8], is_last: bool, records: &mut Vec<Record>) -> Result<(), String> {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let length = u32::from_le_bytes(field(header, 0)) as usize;
        let crc = u32::from_le_bytes(field(header, 4));
        let seq = u64::from_le_bytes(field(header, 8));
        if length == 0 && crc == 0 && seq == 0 {
            return after_the_last(&bytes[at..], at);
        }
        let end = at + HEADER + length;
        let intact = (bytes.get(at + HEADER..end))
            .filter(|payload| checksum(seq, payload) == crc)
            .and_then(|payload| decode(payload).ok());
        match intact {
            Some(writes) => records.push(Record { seq, writes }),
            None if is_last && bytes.get(end..).is_none_or(all_zero) => return Ok(()),
            None => return Err(format!("the record at byte {at} does not read back")),
        }
        at = end;
    }
    after_the_last(&bytes[at..], at)
}

/// The bytes after the last record are zeros, or the segment holds more than it says.
fn after_the_last(rest: &[u8], at: usize) -> Result<(), String> {
    match all_zero(rest) {
        true => Ok(()),
        false => Err(format!("bytes after the last record, at byte {at}")),
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&byte| byte == 0)
}

fn field<const N: usize>(header: &[u8], at: usize) -> [u8; N] {
    let mut bytes = [0; N];
    bytes.copy_from_slice(&header[at..at + N]);
    bytes
}

fn decode(mut payload: &[u8]) -> Result<Vec<Write>, ()> {
    let mut writes = Vec::new();
    while let Some((&tag, rest)) = payload.split_first() {
        payload = rest;
        let key = take_bytes(&mut payload)?;
        let value = match tag {
            INSERT => Some(take_bytes(&mut payload)?),
            REMOVE => None,
            _ => return Err(()),
        };
        writes.push((key, value));
    }
    Ok(writes)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&length_u32(bytes.len()).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take_bytes(input: &mut &[u8]) -> Result<Vec<u8>, ()> {
    let (length, rest) = input.split_first_chunk::<4>().ok_or(())?;
    let length = u32::from_le_bytes(*length) as usize;
    let bytes = rest.get(..length).ok_or(())?;
    *input = &rest[length..];
    Ok(bytes.to_vec())
}

/// Records are at most `MAX_RECORD` long, far below `u32::MAX`; `encode` is not called for
/// larger ones.
fn length_u32(length: usize) -> u32 {
    u32::try_from(length).unwrap_or(u32::MAX)
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn writes(n: u8) -> Vec<Write> {
        vec![
            (vec![b'k', n], Some(vec![n; n as usize])),
            (vec![b'r', n], None),
        ]
    }

    fn journal_with(dir: &Path, count: u8) -> Journal {
        let mut journal = Journal::start(dir, 1).unwrap();
        for n in 1..=count {
            journal.append(&encode(n.into(), &writes(n))).unwrap();
        }
        journal
    }

    fn segment_path(dir: &Path) -> PathBuf {
        segments(dir).unwrap().pop().unwrap().1
    }

    #[test]
    fn records_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        journal_with(dir.path(), 3);
        let recovered = recover(dir.path()).unwrap();
        let expected: Vec<Record> = (1..=3)
            .map(|n| Record {
                seq: n.into(),
                writes: writes(n),
            })
            .collect();
        assert_eq!(recovered.records, expected);
        assert!(recovered.damage.is_none());
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_left_out_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_with(dir.path(), 2);
        let third = encode(3, &writes(3));
        journal
            .file
            .write_all_at(&third[..third.len() - 2], journal.used)
            .unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.records.len(), 2);
        assert!(recovered.damage.is_none(), "{:?}", recovered.damage);
    }

    #[test]
    fn a_flipped_byte_in_an_acknowledged_record_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        journal_with(dir.path(), 3);
        let path = segment_path(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 3] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert!(recovered.records.is_empty());
        let damage = recovered.damage.expect("damage reported");
        assert!(damage.contains("at byte 0"), "{damage}");
    }

    #[test]
    fn bytes_after_the_last_record_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_with(dir.path(), 1);
        journal.file.write_all_at(b"x", journal.used + 100).unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.records.len(), 1);
        assert!(recovered.damage.is_some());
    }

    #[test]
    fn a_start_begins_an_empty_segment_and_removes_the_old() {
        let dir = tempfile::tempdir().unwrap();
        journal_with(dir.path(), 2);
        let mut journal = Journal::start(dir.path(), 2).unwrap();
        journal.append(&encode(3, &writes(3))).unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.records.len(), 1);
        assert_eq!(recovered.records[0].seq, 3);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn records_after_a_missing_one_are_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::start(dir.path(), 1).unwrap();
        for seq in [4, 5, 7] {
            journal.append(&encode(seq, &writes(1))).unwrap();
        }
        let recovered = recover(dir.path()).unwrap();
        let seqs: Vec<u64> = recovered.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert!(recovered
            .damage
            .unwrap()
            .contains("record 7 follows record 5"));
    }

    #[test]
    fn a_segment_holds_what_fits_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::start(dir.path(), 1).unwrap();
        journal.used = SEGMENT_BYTES - 20;
        assert!(journal.fits(&[0; 20]));
        assert!(!journal.fits(&[0; 21]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
        ))]

        /// Whatever a damaged segment holds, reading it never panics, and what it returns is
        /// a prefix of what was written.
        #[test]
        fn a_damaged_segment_reads_as_a_prefix(
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..4),
            cut in 0usize..400,
        ) {
            let written: Vec<Record> = (1..=5).map(|n| Record { seq: n.into(), writes: writes(n) }).collect();
            let mut bytes: Vec<u8> = written.iter().flat_map(|r| encode(r.seq, &r.writes)).collect();
            bytes.truncate(cut.min(bytes.len()));
            for (at, byte) in flips {
                if let Some(slot) = bytes.get_mut(at) {
                    *slot ^= byte;
                }
            }
            let mut records = Vec::new();
            let _ = read_segment(&bytes, true, &mut records);
            prop_assert!(records.len() <= written.len());
            prop_assert_eq!(&records[..], &written[..records.len()]);
        }
    }
}
