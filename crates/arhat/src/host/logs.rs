//! The host's log files read as one log: the configured files concatenated in
//! order, optionally only their last lines, optionally followed.
//!
//! Following polls every file for appended data. A file replaced under its
//! path (rotated by rename) is read to its end first, since the writer may
//! have appended to it before switching, then the new file from its start; a
//! file that shrank (truncated in place) is read again from its start. A
//! missing file is skipped, and read from its start once it appears.

use std::{
    fs::File,
    io,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, stream::BoxStream};
use tracing::{debug, warn};

/// How often followed files are looked at when nothing is new.
pub const POLL: Duration = Duration::from_millis(200);
/// Most bytes one read returns.
const CHUNK: usize = 32 * 1024;
/// Block size when scanning backwards for the last lines.
const TAIL_BLOCK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HostLogsError {
    /// Every configured file is missing or unreadable.
    #[error("none of the host log files can be read: {0}")]
    NoneReadable(String),
    #[error("reading the host log files: {0}")]
    Io(#[from] io::Error),
}

/// What [`Reader::next_chunk`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// Following, and nothing new yet: look again after [`POLL`].
    Idle,
    /// Everything asked for was read.
    End,
}

/// One configured file and how far it was read.
#[derive(Debug)]
struct Tracked {
    path: PathBuf,
    file: Option<File>,
    /// Device and inode of `file`: a different one under the path means rotation.
    identity: Option<(u64, u64)>,
    /// The next byte to read.
    offset: u64,
    /// Read up to here before looking at the file again.
    until: u64,
    /// A problem with the path was logged, so polling does not repeat it.
    warned: bool,
}

impl Tracked {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            identity: None,
            offset: 0,
            until: 0,
            warned: false,
        }
    }

    fn open(&mut self) -> io::Result<()> {
        let file = File::open(&self.path)?;
        let meta = file.metadata()?;
        self.identity = Some((meta.dev(), meta.ino()));
        self.file = Some(file);
        self.offset = 0;
        self.until = meta.len();
        self.warned = false;
        Ok(())
    }

    /// The next bytes up to `until`, if any.
    fn read_pending(&mut self) -> io::Result<Option<Bytes>> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        if self.offset >= self.until {
            return Ok(None);
        }
        let want = usize::try_from(self.until - self.offset).map_or(CHUNK, |n| n.min(CHUNK));
        let mut buf = vec![0; want];
        let n = file.read_at(&mut buf, self.offset)?;
        if n == 0 {
            // Shrank since it was measured; the next look sorts it out.
            self.until = self.offset;
            return Ok(None);
        }
        buf.truncate(n);
        self.offset += n as u64;
        Ok(Some(buf.into()))
    }

    /// Looks at the path again and sets what to read next.
    fn refresh(&mut self) {
        let current = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(meta),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound && !self.warned {
                    warn!(path = %self.path.display(), error = %e, "host log file");
                    self.warned = true;
                }
                None
            }
        };
        if let Some(meta) = &current
            && self.identity == Some((meta.dev(), meta.ino()))
        {
            if meta.len() < self.offset {
                debug!(path = %self.path.display(), "host log file truncated; reading it from its start");
                self.offset = 0;
            }
            self.until = meta.len();
            return;
        }
        // Gone or replaced. The file still open may have grown before the
        // writer moved on, and a writer that has not reopened yet still
        // writes to it: that data is owed first.
        if let Some(len) = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            && len > self.offset
        {
            self.until = len;
            return;
        }
        if current.is_none() {
            return;
        }
        let had = self.file.is_some();
        match self.open() {
            Ok(()) => debug!(
                path = %self.path.display(),
                rotated = had,
                "host log file opened"
            ),
            Err(e) => {
                if !self.warned {
                    warn!(path = %self.path.display(), error = %e, "host log file");
                    self.warned = true;
                }
            }
        }
    }
}

/// The host log files as one sequence of chunks. Blocking: run it off the
/// async threads (as [`open`] does).
#[derive(Debug)]
pub struct Reader {
    files: Vec<Tracked>,
    follow: bool,
    /// The file being read of what was there at the start; `None` once done.
    initial: Option<usize>,
    /// While following: the file being read up to its last measured size.
    draining: Option<usize>,
    /// While following: the file to look at first next time, so a busy file
    /// does not starve the others.
    next: usize,
}

impl Reader {
    /// Opens the files (in this order), positioned so that the existing
    /// content yields only the last `tail_lines` lines of the concatenation.
    pub fn open(
        paths: &[PathBuf],
        follow: bool,
        tail_lines: Option<u64>,
    ) -> Result<Self, HostLogsError> {
        let mut files: Vec<Tracked> = paths.iter().map(|p| Tracked::new(p)).collect();
        let mut problems = Vec::new();
        for f in &mut files {
            if let Err(e) = f.open() {
                if e.kind() == io::ErrorKind::NotFound {
                    debug!(path = %f.path.display(), "host log file missing; skipped");
                } else {
                    warn!(path = %f.path.display(), error = %e, "host log file unreadable; skipped");
                }
                f.warned = true;
                problems.push(format!("{}: {e}", f.path.display()));
            }
        }
        if files.iter().all(|f| f.file.is_none()) {
            return Err(HostLogsError::NoneReadable(problems.join("; ")));
        }
        if let Some(n) = tail_lines {
            tail(&mut files, n)?;
        }
        Ok(Self {
            initial: (!files.is_empty()).then_some(0),
            files,
            follow,
            draining: None,
            next: 0,
        })
    }

    pub fn next_chunk(&mut self) -> io::Result<Step> {
        while let Some(i) = self.initial {
            if let Some(data) = self.files[i].read_pending()? {
                return Ok(Step::Data(data));
            }
            self.initial = (i + 1 < self.files.len()).then_some(i + 1);
        }
        if !self.follow || self.files.is_empty() {
            return Ok(Step::End);
        }
        let n = self.files.len();
        if let Some(i) = self.draining {
            if let Some(data) = self.files[i].read_pending()? {
                return Ok(Step::Data(data));
            }
            self.draining = None;
            self.next = (i + 1) % n;
        }
        for k in 0..n {
            let i = (self.next + k) % n;
            self.files[i].refresh();
            if let Some(data) = self.files[i].read_pending()? {
                self.draining = Some(i);
                return Ok(Step::Data(data));
            }
        }
        Ok(Step::Idle)
    }
}

/// Moves the read offsets so that only the last `n` lines of the files'
/// concatenation remain, scanning backwards from the end (a large file costs
/// only the blocks holding those lines). The concatenation's final newline
/// ends its last line; a last line without one counts as a line too.
fn tail(files: &mut [Tracked], n: u64) -> io::Result<()> {
    let mut start: Option<(usize, u64)> = None;
    let mut needed = n;
    let mut first_byte = true;
    let mut buf = vec![0; TAIL_BLOCK];
    'files: for i in (0..files.len()).rev() {
        if needed == 0 {
            start = Some((files.len(), 0));
            break;
        }
        let Some(file) = &files[i].file else {
            continue;
        };
        let mut end = files[i].until;
        while end > 0 {
            let begin = end.saturating_sub(TAIL_BLOCK as u64);
            let len = usize::try_from(end - begin).unwrap_or(TAIL_BLOCK);
            let block = &mut buf[..len];
            file.read_exact_at(block, begin)?;
            for (j, b) in block.iter().enumerate().rev() {
                let ends_last_line = first_byte;
                first_byte = false;
                if *b != b'\n' || ends_last_line {
                    continue;
                }
                needed -= 1;
                if needed == 0 {
                    start = Some((i, begin + j as u64 + 1));
                    break 'files;
                }
            }
            end = begin;
        }
    }
    // Fewer lines than asked: everything.
    let (first, offset) = start.unwrap_or((0, 0));
    for (i, f) in files.iter_mut().enumerate() {
        f.offset = match i.cmp(&first) {
            std::cmp::Ordering::Less => f.until,
            std::cmp::Ordering::Equal => offset,
            std::cmp::Ordering::Greater => 0,
        };
    }
    Ok(())
}

/// The host log files as a stream of chunks; following, it ends only when
/// dropped.
pub async fn open(
    paths: Vec<PathBuf>,
    follow: bool,
    tail_lines: Option<u64>,
) -> Result<BoxStream<'static, io::Result<Bytes>>, HostLogsError> {
    let reader = tokio::task::spawn_blocking(move || Reader::open(&paths, follow, tail_lines))
        .await
        .map_err(io::Error::other)??;
    Ok(futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        loop {
            let blocking = tokio::task::spawn_blocking(move || {
                let step = reader.next_chunk();
                (reader, step)
            });
            let step = match blocking.await {
                Ok((back, step)) => {
                    reader = back;
                    step
                }
                Err(e) => return Some((Err(io::Error::other(e)), None)),
            };
            match step {
                Ok(Step::Data(data)) => return Some((Ok(data), Some(reader))),
                Ok(Step::Idle) => tokio::time::sleep(POLL).await,
                Ok(Step::End) => return None,
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
    .boxed())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("append");
    }

    /// Everything the reader yields until it would wait or ends.
    fn drain(reader: &mut Reader) -> (String, Step) {
        let mut out = Vec::new();
        loop {
            match reader.next_chunk().expect("read") {
                Step::Data(d) => out.extend_from_slice(&d),
                other => return (String::from_utf8(out).expect("utf-8"), other),
            }
        }
    }

    fn read(paths: &[PathBuf], tail: Option<u64>) -> String {
        let mut reader = Reader::open(paths, false, tail).expect("open");
        let (text, step) = drain(&mut reader);
        assert_eq!(step, Step::End);
        text
    }

    fn two_files(a: &str, b: &str) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = vec![dir.path().join("a.log"), dir.path().join("b.log")];
        write(&paths[0], a);
        write(&paths[1], b);
        (dir, paths)
    }

    #[test]
    fn files_are_concatenated_in_order() {
        let (_dir, paths) = two_files("a1\na2\n", "b1\n");
        assert_eq!(read(&paths, None), "a1\na2\nb1\n");
    }

    #[test]
    fn tail_counts_lines_across_files() {
        let (_dir, paths) = two_files("a1\na2\na3\n", "b1\nb2\n");
        assert_eq!(read(&paths, Some(1)), "b2\n");
        assert_eq!(read(&paths, Some(2)), "b1\nb2\n");
        assert_eq!(read(&paths, Some(3)), "a3\nb1\nb2\n");
        assert_eq!(read(&paths, Some(5)), "a1\na2\na3\nb1\nb2\n");
        assert_eq!(read(&paths, Some(50)), "a1\na2\na3\nb1\nb2\n");
        assert_eq!(read(&paths, Some(0)), "");
    }

    #[test]
    fn tail_counts_an_unterminated_last_line() {
        let (_dir, paths) = two_files("a1\na2\n", "b1\nb2");
        assert_eq!(read(&paths, Some(1)), "b2");
        assert_eq!(read(&paths, Some(2)), "b1\nb2");
        // A file without a final newline runs into the next one's first line.
        let (_dir, paths) = two_files("a1\na2", "b1\n");
        assert_eq!(read(&paths, Some(1)), "a2b1\n");
    }

    #[test]
    fn tail_skips_empty_and_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = ["a", "missing", "b"]
            .iter()
            .map(|n| dir.path().join(n))
            .collect();
        write(&paths[0], "a1\na2\n");
        write(&paths[2], "");
        assert_eq!(read(&paths, Some(1)), "a2\n");
        assert_eq!(read(&paths, None), "a1\na2\n");
    }

    #[test]
    fn tail_of_a_large_file_spans_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.log");
        let lines: Vec<String> = (0..50_000).map(|i| format!("line {i:06}\n")).collect();
        write(&path, &lines.concat());
        let got = read(&[path], Some(20_000));
        assert_eq!(got, lines[30_000..].concat());
    }

    #[test]
    fn none_readable_is_an_error_naming_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.log");
        let err = Reader::open(&[path], true, None).expect_err("nothing to read");
        assert!(
            matches!(&err, HostLogsError::NoneReadable(m) if m.contains("nope.log")),
            "{err}"
        );
    }

    #[test]
    fn follow_sees_appends_in_every_file() {
        let (_dir, paths) = two_files("a1\n", "b1\n");
        let mut reader = Reader::open(&paths, true, Some(1)).expect("open");
        assert_eq!(drain(&mut reader), ("b1\n".into(), Step::Idle));
        append(&paths[0], "a2\n");
        append(&paths[1], "b2\n");
        assert_eq!(drain(&mut reader), ("a2\nb2\n".into(), Step::Idle));
        assert_eq!(drain(&mut reader), (String::new(), Step::Idle));
    }

    #[test]
    fn follow_rereads_a_truncated_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        write(&path, "old 1\nold 2\n");
        let mut reader = Reader::open(std::slice::from_ref(&path), true, None).expect("open");
        assert_eq!(drain(&mut reader).0, "old 1\nold 2\n");
        // copytruncate: emptied in place, then written again.
        write(&path, "new\n");
        assert_eq!(drain(&mut reader), ("new\n".into(), Step::Idle));
    }

    #[test]
    fn follow_finishes_a_rotated_file_then_reads_its_successor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        write(&path, "one\n");
        let mut reader = Reader::open(std::slice::from_ref(&path), true, None).expect("open");
        assert_eq!(drain(&mut reader).0, "one\n");
        // Rotation by rename: the writer adds a last line to the old file,
        // then starts a new one under the path.
        append(&path, "two\n");
        std::fs::rename(&path, dir.path().join("x.log.1")).expect("rename");
        assert_eq!(drain(&mut reader), ("two\n".into(), Step::Idle));
        append(&dir.path().join("x.log.1"), "three\n");
        write(&path, "four\n");
        assert_eq!(drain(&mut reader), ("three\nfour\n".into(), Step::Idle));
        append(&path, "five\n");
        assert_eq!(drain(&mut reader), ("five\n".into(), Step::Idle));
    }

    #[test]
    fn follow_picks_up_a_file_that_appears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = vec![dir.path().join("late.log"), dir.path().join("b.log")];
        write(&paths[1], "b1\n");
        let mut reader = Reader::open(&paths, true, None).expect("open");
        assert_eq!(drain(&mut reader), ("b1\n".into(), Step::Idle));
        write(&paths[0], "late 1\n");
        assert_eq!(drain(&mut reader), ("late 1\n".into(), Step::Idle));
    }

    #[test]
    fn a_busy_file_does_not_starve_the_next() {
        let (_dir, paths) = two_files("", "");
        let mut reader = Reader::open(&paths, true, None).expect("open");
        assert_eq!(drain(&mut reader).1, Step::Idle);
        append(&paths[0], "a1\n");
        append(&paths[1], "b1\n");
        let first = reader.next_chunk().expect("read");
        assert_eq!(first, Step::Data(Bytes::from_static(b"a1\n")));
        // a grows again before the next read: b still comes next.
        append(&paths[0], "a2\n");
        assert_eq!(
            reader.next_chunk().expect("read"),
            Step::Data(Bytes::from_static(b"b1\n"))
        );
        assert_eq!(
            reader.next_chunk().expect("read"),
            Step::Data(Bytes::from_static(b"a2\n"))
        );
    }

    #[tokio::test]
    async fn the_stream_follows_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        write(&path, "first\n");
        let mut stream = open(vec![path.clone()], true, None).await.expect("open");
        assert_eq!(
            stream.next().await.expect("chunk").expect("ok"),
            Bytes::from_static(b"first\n")
        );
        let later = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(POLL).await;
                append(&path, "second\n");
            })
        };
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("appended data within a few polls");
        assert_eq!(
            next.expect("chunk").expect("ok"),
            Bytes::from_static(b"second\n")
        );
        later.await.expect("writer");
    }
}
