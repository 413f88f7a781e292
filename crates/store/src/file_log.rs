//! The command log in files of its own: what a durable write costs on one
//! machine.
//!
//! A log is appended at its end, read from a position once at start, and
//! dropped from its front after a checkpoint — a file does each of these in
//! one system call, where an ordered key-value store pays per key (sled:
//! inserts and a flush per group commit, a scan and a delete per trimmed
//! frame). Keeping the log out of sled also leaves sled to the checkpoints
//! alone, so a checkpoint can be written beside the writer's appends (see
//! the hub's writer) without two threads writing and flushing one sled
//! database.
//!
//! The log lives in *segments*: files `<floor>.log` in one directory, each
//! a magic header and then records `[length u32][crc32 u32][position
//! u64][bytes]` (little-endian; the CRC covers position and bytes), at
//! contiguous positions. A segment's name is its *floor*: entries below it
//! were trimmed (a trim that falls inside a segment renames it — one atomic
//! step — instead of rewriting it). A new segment starts when the last one
//! passes [`SEGMENT_BYTES`], or after everything was trimmed.
//!
//! Durability: [`FileLog::flush`] is `fdatasync` of the last segment; a
//! segment is synced before the next one starts, and the directory after a
//! segment is created, renamed or deleted. A crash can leave a torn record
//! at the end of the last segment; opening cuts the log before it (it was
//! never acknowledged). A bad record anywhere else is corruption and
//! opening fails, naming the file and offset. After a failed write or
//! flush the log refuses appends until [`FileLog::recover`] has re-read the
//! last segment from disk: what was not flushed may be lost, and the
//! writer appends it again.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::backend::Appended;
use super::engine::store_io_error;
use crate::error::{Error, Result};

/// The first bytes of every segment: what it is, and its format version.
const MAGIC: &[u8; 8] = b"LHCLOG\x00\x01";
/// Length, CRC and position in front of each entry's bytes.
const RECORD_HEADER: usize = 16;
/// A segment this large is closed and the next append starts a new one.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Every this many entries a segment remembers where one starts, so that
/// reading after a position seeks instead of reading the segment from its
/// start.
const INDEX_EVERY: u64 = 1024;
/// No entry is larger than this (a command is kilobytes at most): a length
/// beyond it is a torn or corrupt header, not a reason to allocate.
const MAX_ENTRY_BYTES: u32 = 64 * 1024 * 1024;

/// One segment file, as far as the log knows it.
#[derive(Debug)]
struct Segment {
    /// Entries below this were trimmed (the file's name).
    floor: u64,
    /// The position of the file's first record.
    first: u64,
    /// The position of its last record.
    last: u64,
    /// Bytes in the file (header included).
    len: u64,
    /// (position, offset) of every [`INDEX_EVERY`]th record, ascending.
    index: Vec<(u64, u64)>,
}

impl Segment {
    /// The first entry not trimmed.
    fn start(&self) -> u64 {
        self.first.max(self.floor)
    }

    fn entries(&self) -> usize {
        usize::try_from(self.last + 1 - self.start()).unwrap_or(usize::MAX)
    }

    /// The offset of a record at or before `position`, and its position.
    fn seek_point(&self, position: u64) -> (u64, u64) {
        match self.index.partition_point(|&(p, _)| p <= position) {
            0 => (self.first, MAGIC.len() as u64),
            i => self.index[i - 1],
        }
    }

    fn note(&mut self, position: u64, offset: u64) {
        if (position - self.first) % INDEX_EVERY == 0 {
            self.index.push((position, offset));
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// In position order; appends go to the last.
    segments: Vec<Segment>,
    /// The last segment, open for appending (`None` when there is none, or
    /// after a failure until `recover`).
    file: Option<File>,
    /// Why appends are refused (a write or flush failed).
    broken: Option<Error>,
    /// The head at the last successful flush.
    durable: u64,
}

/// The command log in segment files under one directory.
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn segment_name(floor: u64) -> String {
    format!("{floor:020}.log")
}

fn io_error(action: &str, path: &Path, e: &io::Error) -> Error {
    store_io_error(&format!("{action} of {}", path.display()), e)
}

fn corrupt(path: &Path, offset: u64, what: &str) -> Error {
    Error::Internal(format!(
        "corrupt command log: {} at byte {offset}: {what}",
        path.display()
    ))
}

fn encode_record(out: &mut Vec<u8>, position: u64, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&l| l <= MAX_ENTRY_BYTES)
        .ok_or_else(|| {
            Error::Internal(format!(
                "command at position {position} is {} bytes, over the log's limit",
                bytes.len()
            ))
        })?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&position.to_le_bytes());
    crc.update(bytes);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// What reading a segment's records found.
enum Record {
    Entry(Appended),
    /// The file ends here, cleanly.
    End,
    /// A record that is cut short or fails its CRC starts here.
    Bad(&'static str),
}

/// Reads the record at the reader's position.
fn read_record(reader: &mut impl Read) -> io::Result<Record> {
    let mut header = [0u8; RECORD_HEADER];
    let mut filled = 0;
    while filled < RECORD_HEADER {
        match reader.read(&mut header[filled..])? {
            0 if filled == 0 => return Ok(Record::End),
            0 => return Ok(Record::Bad("a record header cut short")),
            n => filled += n,
        }
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let position = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if len > MAX_ENTRY_BYTES {
        return Ok(Record::Bad("a record length out of range"));
    }
    let mut bytes = vec![0u8; len as usize];
    if let Err(e) = reader.read_exact(&mut bytes) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(Record::Bad("a record cut short"))
        } else {
            Err(e)
        };
    }
    let mut check = crc32fast::Hasher::new();
    check.update(&position.to_le_bytes());
    check.update(&bytes);
    if check.finalize() != crc {
        return Ok(Record::Bad("a record whose checksum does not match"));
    }
    Ok(Record::Entry(Appended { position, bytes }))
}

/// Where a bad record starts, and what is wrong with it.
type Damage = (u64, &'static str);

/// A segment read whole at open: its index, and where a bad record starts
/// (if one does).
fn scan_segment(path: &Path, floor: u64) -> Result<(Option<Segment>, Option<Damage>)> {
    let file = File::open(path).map_err(|e| io_error("read", path, &e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut magic = [0u8; MAGIC.len()];
    match reader.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => {}
        // A segment created but never written (a crash right after).
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok((None, Some((0, "no header"))));
        }
        Ok(()) => return Err(corrupt(path, 0, "not a command log segment")),
        Err(e) => return Err(io_error("read", path, &e)),
    }
    let mut offset = MAGIC.len() as u64;
    let mut segment: Option<Segment> = None;
    loop {
        let record = read_record(&mut reader).map_err(|e| io_error("read", path, &e))?;
        match record {
            Record::End => return Ok((segment, None)),
            Record::Bad(what) => return Ok((segment, Some((offset, what)))),
            Record::Entry(entry) => {
                match &mut segment {
                    None => {
                        segment = Some(Segment {
                            floor,
                            first: entry.position,
                            last: entry.position,
                            len: 0,
                            index: vec![(entry.position, offset)],
                        })
                    }
                    Some(s) => {
                        if entry.position != s.last + 1 {
                            return Err(corrupt(
                                path,
                                offset,
                                &format!("position {} follows {}", entry.position, s.last),
                            ));
                        }
                        s.last = entry.position;
                        s.note(entry.position, offset);
                    }
                }
                offset += (RECORD_HEADER + entry.bytes.len()) as u64;
                if let Some(s) = &mut segment {
                    s.len = offset;
                }
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, &e))
}

impl FileLog {
    /// Opens the log in `dir` (created if missing): reads every segment,
    /// cuts a torn record off the end of the last, and fails on any other
    /// damage.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| io_error("creation", dir, &e))?;
        let inner = Self::read_dir(dir)?;
        Ok(FileLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
        })
    }

    fn read_dir(dir: &Path) -> Result<Inner> {
        let mut floors = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_error("listing", dir, &e))? {
            let entry = entry.map_err(|e| io_error("listing", dir, &e))?;
            let name = entry.file_name();
            let Some(floor) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            floors.push(floor);
        }
        floors.sort_unstable();
        let mut segments: Vec<Segment> = Vec::new();
        let count = floors.len();
        for (i, floor) in floors.into_iter().enumerate() {
            let path = dir.join(segment_name(floor));
            let (segment, bad) = scan_segment(&path, floor)?;
            if let Some((offset, what)) = bad {
                if i + 1 < count {
                    return Err(corrupt(&path, offset, what));
                }
                // The end of the last segment: a write the crash cut short,
                // never acknowledged. Cut it off so appends follow clean
                // records.
                tracing::warn!(file = %path.display(), offset, what, "cutting a torn write off the command log");
                let keep = if segment.is_some() { offset } else { 0 };
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_error("repair", &path, &e))?;
                file.set_len(keep)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error("repair", &path, &e))?;
            }
            match segment {
                Some(segment) if segment.last >= floor => {
                    if let Some(previous) = segments.last()
                        && segment.start() != previous.last + 1
                    {
                        return Err(corrupt(
                            &path,
                            0,
                            &format!(
                                "starts at {} after a segment ending at {}",
                                segment.start(),
                                previous.last
                            ),
                        ));
                    }
                    segments.push(segment);
                }
                // Nothing left in it: trimmed whole, or torn before its
                // first record.
                _ => {
                    fs::remove_file(&path).map_err(|e| io_error("removal", &path, &e))?;
                }
            }
        }
        let file = match segments.last() {
            Some(last) => Some(Self::open_append(dir, last.floor)?),
            None => None,
        };
        let durable = segments.last().map_or(0, |s| s.last);
        Ok(Inner {
            segments,
            file,
            broken: None,
            durable,
        })
    }

    fn open_append(dir: &Path, floor: u64) -> Result<File> {
        let path = dir.join(segment_name(floor));
        OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, &e))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last position (0: empty).
    pub fn head(&self) -> u64 {
        self.lock().segments.last().map_or(0, |s| s.last)
    }

    /// Appends `entries` (positions following the head without a gap, or
    /// anywhere when the log is empty). Durable after [`FileLog::flush`].
    pub fn append(&self, entries: &[Appended]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.position == 0 {
            return Err(Error::Internal("log positions start at 1".into()));
        }
        let mut inner = self.lock();
        if let Some(e) = &inner.broken {
            return Err(e.clone());
        }
        let next = inner.segments.last().map_or(first.position, |s| s.last + 1);
        let mut bytes =
            Vec::with_capacity(entries.iter().map(|e| RECORD_HEADER + e.bytes.len()).sum());
        for (expected, entry) in (next..).zip(entries) {
            if entry.position != expected {
                return Err(Error::Internal(format!(
                    "log append at position {} where {expected} is next",
                    entry.position
                )));
            }
            encode_record(&mut bytes, entry.position, &entry.bytes)?;
        }
        let start_new = inner.segments.last().is_none_or(|s| s.len >= SEGMENT_BYTES);
        if start_new {
            self.start_segment(&mut inner, first.position)?;
        }
        let file = inner
            .file
            .as_mut()
            .expect("a segment is open after start_segment");
        if let Err(e) = file.write_all(&bytes) {
            let path = self
                .dir
                .join(segment_name(inner.segments.last().expect("open").floor));
            return Err(Self::broke(&mut inner, io_error("write", &path, &e)));
        }
        let segment = inner.segments.last_mut().expect("a segment is open");
        let mut offset = segment.len;
        for entry in entries {
            segment.last = entry.position;
            segment.note(entry.position, offset);
            offset += (RECORD_HEADER + entry.bytes.len()) as u64;
        }
        segment.len = offset;
        Ok(())
    }

    /// Closes the last segment (synced) and starts one at `floor`.
    fn start_segment(&self, inner: &mut Inner, floor: u64) -> Result<()> {
        if let Some(file) = inner.file.take()
            && let Err(e) = file.sync_data()
        {
            let old = inner.segments.last().map_or(floor, |s| s.floor);
            let path = self.dir.join(segment_name(old));
            return Err(Self::broke(inner, io_error("flush", &path, &e)));
        }
        let path = self.dir.join(segment_name(floor));
        let created = (|| {
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            file.write_all(MAGIC)?;
            Ok::<_, io::Error>(file)
        })();
        let file = match created {
            Ok(file) => file,
            Err(e) => return Err(Self::broke(inner, io_error("creation", &path, &e))),
        };
        if let Err(e) = sync_dir(&self.dir) {
            return Err(Self::broke(inner, e));
        }
        inner.segments.push(Segment {
            floor,
            first: floor,
            last: floor - 1,
            len: MAGIC.len() as u64,
            index: Vec::new(),
        });
        inner.file = Some(file);
        Ok(())
    }

    fn broke(inner: &mut Inner, error: Error) -> Error {
        inner.broken.get_or_insert_with(|| error.clone());
        error
    }

    /// Makes every appended entry durable.
    pub fn flush(&self) -> Result<()> {
        let mut inner = self.lock();
        if let Some(e) = &inner.broken {
            return Err(e.clone());
        }
        let head = inner.segments.last().map_or(0, |s| s.last);
        let Some(file) = &inner.file else {
            inner.durable = head;
            return Ok(());
        };
        if let Err(e) = file.sync_data() {
            let path = self
                .dir
                .join(segment_name(inner.segments.last().map_or(0, |s| s.floor)));
            return Err(Self::broke(&mut inner, io_error("flush", &path, &e)));
        }
        inner.durable = head;
        Ok(())
    }

    /// Makes the entries up to `position` durable, if they are not yet.
    pub fn flush_through(&self, position: u64) -> Result<()> {
        if self.lock().durable >= position {
            return Ok(());
        }
        self.flush()
    }

    /// Up to `limit` entries after `after`, in position order.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Appended>> {
        let inner = self.lock();
        let mut found = Vec::new();
        for segment in inner.segments.iter().filter(|s| s.last > after) {
            let from = after.saturating_add(1).max(segment.start());
            let (_, offset) = segment.seek_point(from);
            let path = self.dir.join(segment_name(segment.floor));
            let read = (|| {
                let mut file = File::open(&path)?;
                file.seek(SeekFrom::Start(offset))?;
                let mut reader = BufReader::with_capacity(1 << 16, file.take(segment.len - offset));
                while found.len() < limit {
                    match read_record(&mut reader)? {
                        Record::Entry(entry) if entry.position > segment.last => break,
                        Record::Entry(entry) => {
                            if entry.position >= from {
                                found.push(entry);
                            }
                        }
                        Record::End => break,
                        Record::Bad(what) => {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, what));
                        }
                    }
                }
                Ok(())
            })();
            read.map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => corrupt(&path, offset, &e.to_string()),
                _ => io_error("read", &path, &e),
            })?;
            if found.len() >= limit {
                break;
            }
        }
        Ok(found)
    }

    /// Removes every entry after `position`.
    pub fn discard_after(&self, position: u64) -> Result<()> {
        let mut inner = self.lock();
        while let Some(segment) = inner.segments.last() {
            if segment.last <= position {
                break;
            }
            let path = self.dir.join(segment_name(segment.floor));
            if position < segment.start() {
                // Nothing of it stays.
                inner.file = None;
                fs::remove_file(&path).map_err(|e| io_error("removal", &path, &e))?;
                inner.segments.pop();
                sync_dir(&self.dir)?;
                continue;
            }
            // Cut it after `position`: find where `position + 1` starts.
            let (mut at, mut offset) = segment.seek_point(position + 1);
            let cut = (|| {
                let mut file = File::open(&path)?;
                file.seek(SeekFrom::Start(offset))?;
                let mut reader = BufReader::new(file);
                while at <= position {
                    match read_record(&mut reader)? {
                        Record::Entry(entry) => {
                            offset += (RECORD_HEADER + entry.bytes.len()) as u64;
                            at = entry.position + 1;
                        }
                        _ => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "record missing",
                            ));
                        }
                    }
                }
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(offset)?;
                file.sync_all()
            })();
            cut.map_err(|e| io_error("truncation", &path, &e))?;
            let segment = inner.segments.last_mut().expect("checked above");
            segment.last = position;
            segment.len = offset;
            segment.index.retain(|&(p, _)| p <= position);
            break;
        }
        // Appends go to the end of what is left.
        inner.file = match inner.segments.last() {
            Some(last) => Some(Self::open_append(&self.dir, last.floor)?),
            None => None,
        };
        Ok(())
    }

    /// Removes the entries before `before`; how many. Whole segments are
    /// deleted; one that `before` falls inside is renamed to it.
    pub fn trim(&self, before: u64) -> Result<usize> {
        let mut inner = self.lock();
        let mut removed = 0;
        let mut changed = false;
        while let Some(segment) = inner.segments.first() {
            if segment.start() >= before {
                break;
            }
            let path = self.dir.join(segment_name(segment.floor));
            if segment.last < before {
                removed += segment.entries();
                fs::remove_file(&path).map_err(|e| io_error("removal", &path, &e))?;
                inner.segments.remove(0);
                if inner.segments.is_empty() {
                    inner.file = None;
                }
                changed = true;
                continue;
            }
            removed += usize::try_from(before - segment.start()).unwrap_or(usize::MAX);
            let to = self.dir.join(segment_name(before));
            fs::rename(&path, &to).map_err(|e| io_error("rename", &path, &e))?;
            inner.segments[0].floor = before;
            changed = true;
            break;
        }
        if changed {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Bytes in the segment files.
    pub fn size(&self) -> u64 {
        self.lock().segments.iter().map(|s| s.len).sum()
    }

    /// After a failed write or flush: reads the log back from disk (what
    /// was not flushed may be gone) and takes appends again.
    pub fn recover(&self) -> Result<()> {
        let mut inner = self.lock();
        if inner.broken.is_none() {
            return Ok(());
        }
        inner.file = None;
        *inner = Self::read_dir(&self.dir)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Log entries at `range`, each its own bytes.
    pub(crate) fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Appended> {
        range
            .map(|position| Appended {
                position,
                bytes: format!("command {position}").into_bytes(),
            })
            .collect()
    }

    fn positions(log: &FileLog, after: u64) -> Vec<u64> {
        log.after(after, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.position)
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn appends_read_back_after_reopen_from_any_position() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), 0);
        log.append(&entries(1..=3000)).unwrap();
        log.flush().unwrap();
        drop(log);
        let log = FileLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), 3000);
        assert_eq!(positions(&log, 2047), (2048..=3000).collect::<Vec<_>>());
        let some = log.after(10, 2).unwrap();
        assert_eq!(some, entries(11..=12));
        assert!(log.after(3000, 10).unwrap().is_empty());
        let err = log.append(&entries(3002..=3002)).unwrap_err();
        assert!(err.to_string().contains("3001 is next"), "{err}");
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_appends_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path()).unwrap();
        log.append(&entries(5..=9)).unwrap();
        log.flush().unwrap();
        drop(log);
        let path = dir.path().join(segment_name(5));
        let len = fs::metadata(&path).unwrap().len();
        // Half of the last record reached the disk.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let log = FileLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), 8);
        log.append(&entries(9..=10)).unwrap();
        drop(log);
        let log = FileLog::open(dir.path()).unwrap();
        assert_eq!(positions(&log, 0), (5..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_bad_checksum_inside_the_log_fails_the_open_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path()).unwrap();
        log.append(&entries(1..=4)).unwrap();
        log.flush().unwrap();
        drop(log);
        // A second segment after the damaged one makes it not the tail.
        let first = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&first).unwrap();
        bytes[MAGIC.len() + RECORD_HEADER] ^= 0xFF;
        fs::write(&first, bytes).unwrap();
        let mut second = MAGIC.to_vec();
        encode_record(&mut second, 5, b"five").unwrap();
        fs::write(dir.path().join(segment_name(5)), second).unwrap();
        let err = FileLog::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("corrupt command log") && err.contains("checksum"),
            "{err}"
        );
        assert!(err.contains(&segment_name(1)), "{err}");
    }

    #[test]
    fn trims_delete_whole_segments_and_rename_the_one_they_fall_in() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path()).unwrap();
        log.append(&entries(1..=10)).unwrap();
        assert_eq!(log.trim(4).unwrap(), 3);
        assert_eq!(files(dir.path()), [segment_name(4)]);
        assert_eq!(positions(&log, 0), (4..=10).collect::<Vec<_>>());
        assert_eq!(log.trim(4).unwrap(), 0);
        log.append(&entries(11..=11)).unwrap();
        log.flush().unwrap();
        drop(log);
        let log = FileLog::open(dir.path()).unwrap();
        assert_eq!(positions(&log, 0), (4..=11).collect::<Vec<_>>());
        assert_eq!(log.trim(100).unwrap(), 8);
        assert!(files(dir.path()).is_empty());
        assert_eq!(log.head(), 0);
        // Empty again: the next append may start anywhere.
        log.append(&entries(200..=201)).unwrap();
        assert_eq!(positions(&log, 0), [200, 201]);
    }

    #[test]
    fn discarding_cuts_inside_a_segment_and_drops_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path()).unwrap();
        log.append(&entries(1..=2500)).unwrap();
        {
            // Force a second segment.
            let mut inner = log.lock();
            inner.segments.last_mut().unwrap().len = SEGMENT_BYTES;
        }
        log.append(&entries(2501..=2600)).unwrap();
        assert_eq!(files(dir.path()).len(), 2);
        log.discard_after(2100).unwrap();
        assert_eq!(files(dir.path()), [segment_name(1)]);
        assert_eq!(log.head(), 2100);
        log.append(&entries(2101..=2102)).unwrap();
        log.flush().unwrap();
        drop(log);
        let log = FileLog::open(dir.path()).unwrap();
        assert_eq!(positions(&log, 2095), (2096..=2102).collect::<Vec<_>>());
        log.discard_after(0).unwrap();
        assert_eq!(log.head(), 0);
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn segments_roll_over_and_read_as_one_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path()).unwrap();
        for chunk in 0..4u64 {
            log.append(&entries(chunk * 100 + 1..=chunk * 100 + 100))
                .unwrap();
            log.lock().segments.last_mut().unwrap().len = SEGMENT_BYTES;
        }
        assert_eq!(files(dir.path()).len(), 4);
        assert_eq!(log.trim(150).unwrap(), 149);
        drop(log);
        let log = FileLog::open(dir.path()).unwrap();
        assert_eq!(positions(&log, 0), (150..=400).collect::<Vec<_>>());
        assert_eq!(log.after(199, 3).unwrap(), entries(200..=202));
    }
}
