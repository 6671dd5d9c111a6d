//! A container log file read back as [`LogEntry`]s, in either [`Format`]: the rotated files oldest first, then
//! the current one; optionally only the last lines; optionally followed.
//!
//! Following polls the current file. When `path` names another file, the one
//! being read was rotated away: it is read to its end (the writer flushes
//! before renaming, so nothing more comes to it), then the files that came
//! after it, oldest first. A file is known by its device and inode, not its
//! name, since names move on every rotation.

use std::{
    collections::VecDeque,
    fs::File,
    io,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::BytesMut;
use futures::{StreamExt, future::BoxFuture};
use jiff::Timestamp;
use tracing::{debug, warn};

use super::{
    ContainerLogError, MAX_PIECE,
    format::{Format, HEAD},
    rotated,
};
use crate::runtime::{LogEntry, LogOptions, LogOutput, LogStream, RuntimeError};

/// How often a followed log is looked at when nothing is new.
pub const POLL: Duration = Duration::from_millis(200);
/// Most bytes one read takes from a file.
const CHUNK: usize = 64 * 1024;
/// Text handed over per trip off the blocking pool.
const BATCH: usize = 32 * 1024;
/// Block size when scanning backwards for the last lines.
const TAIL_BLOCK: usize = 64 * 1024;
/// Longer than any line a writer writes (a piece of [`MAX_PIECE`] bytes,
/// escaped in JSON at worst as `\u00XX`): a line longer than this is not a log
/// line, and is skipped rather than buffered without bound.
const MAX_LINE: usize = 6 * MAX_PIECE + 1024;

/// Reads the container log at `path` (with its rotated files `path.1`, …),
/// written in `format`.
///
/// `tail_lines` counts entries that end a line (`F`); the `P` pieces before
/// such an entry belong to its line and come with it. `since` is honoured per
/// line: a line is dropped, all its pieces, when its first piece is older.
///
/// Following, the stream ends once `exited` has resolved (the container
/// exited and its output was written, e.g. the [`super::keep`] task ended)
/// and the log has been read to its end; not following, it ends at the end
/// of what is there now. `exited` is not polled when not following.
///
/// A piece continuing a line (after a `P` piece of the same output) has no
/// time, as [`LogEntry::time`] says. A line that does not parse is skipped
/// with a warning. Fails with [`ContainerLogError::NotFound`] when there is no
/// log at all.
pub async fn read(
    path: PathBuf,
    format: Format,
    options: &LogOptions,
    exited: BoxFuture<'static, ()>,
) -> Result<LogStream, ContainerLogError> {
    let opened = {
        let (path, options) = (path.clone(), options.clone());
        tokio::task::spawn_blocking(move || Reader::open(path, format, &options))
    };
    let reader = opened.await.map_err(|e| ContainerLogError::Read {
        path: path.clone(),
        source: io::Error::other(e),
    })??;
    let state = State {
        reader: Some(reader),
        path,
        exited: Some(exited),
        ready: VecDeque::new(),
        ended: false,
    };
    Ok(futures::stream::unfold(state, State::next).boxed())
}

/// The stream's side: hands the blocking reader to the blocking pool and
/// waits between polls.
struct State {
    /// `None` while on the blocking pool, or after it failed.
    reader: Option<Reader>,
    path: PathBuf,
    /// `None` once resolved.
    exited: Option<BoxFuture<'static, ()>>,
    ready: VecDeque<LogEntry>,
    ended: bool,
}

impl State {
    async fn next(mut self) -> Option<(Result<LogEntry, RuntimeError>, Self)> {
        loop {
            if let Some(entry) = self.ready.pop_front() {
                return Some((Ok(entry), self));
            }
            if self.ended {
                return None;
            }
            let mut reader = self.reader.take()?;
            // Seen before this pass started: a pass that then finds nothing
            // new has read everything the container wrote.
            let last = self.exited.is_none();
            let pass = tokio::task::spawn_blocking(move || {
                let step = reader.next_batch(last);
                (reader, step)
            });
            let step = match pass.await {
                Ok((reader, step)) => {
                    self.reader = Some(reader);
                    step
                }
                Err(e) => Err(ContainerLogError::Read {
                    path: self.path.clone(),
                    source: io::Error::other(e),
                }),
            };
            match step {
                Ok(Step::Entries(entries)) => self.ready.extend(entries),
                Ok(Step::End) => self.ended = true,
                Ok(Step::Idle) => {
                    let Some(exited) = self.exited.as_mut() else {
                        // Not reached: the last pass ends the read.
                        return None;
                    };
                    let resolved = tokio::select! {
                        () = tokio::time::sleep(POLL) => false,
                        () = exited => true,
                    };
                    if resolved {
                        self.exited = None;
                    }
                }
                Err(e) => {
                    self.ended = true;
                    self.reader = None;
                    let e = RuntimeError::failed("reading a container log", e);
                    return Some((Err(e), self));
                }
            }
        }
    }
}

/// What [`Reader::next_batch`] found.
#[derive(Debug)]
enum Step {
    Entries(Vec<LogEntry>),
    /// Following, and nothing new yet.
    Idle,
    End,
}

/// A file of the log and how far it was read.
#[derive(Debug)]
struct Opened {
    path: PathBuf,
    file: File,
    identity: (u64, u64),
    offset: u64,
}

impl Opened {
    fn open(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        let meta = file.metadata()?;
        Ok(Self {
            path,
            file,
            identity: (meta.dev(), meta.ino()),
            offset: 0,
        })
    }

    fn read_error(&self, source: io::Error) -> ContainerLogError {
        ContainerLogError::Read {
            path: self.path.clone(),
            source,
        }
    }
}

/// Where each output's line stands.
#[derive(Debug, Default, Clone, Copy)]
struct Line {
    /// A `P` piece was the output's last entry.
    continued: bool,
    /// The line began before `since`.
    dropped: bool,
}

/// The log's files as entries. Blocking: run off the async threads.
#[derive(Debug)]
struct Reader {
    path: PathBuf,
    format: Format,
    follow: bool,
    since: Option<Timestamp>,
    /// The files left to read, the one being read first; never empty. While
    /// following, the last one is the file last seen under `path`.
    files: VecDeque<Opened>,
    /// Read from the first file, not yet split into lines.
    pending: BytesMut,
    /// Discarding an overlong line up to its newline.
    skipping: bool,
    /// Stdout's and stderr's.
    lines: [Line; 2],
    /// Following: the file being read is no longer under `path`.
    rotated: bool,
}

impl Reader {
    fn open(
        path: PathBuf,
        format: Format,
        options: &LogOptions,
    ) -> Result<Self, ContainerLogError> {
        // The current file first: rotated while the others are opened, it
        // shows up again as `path.1`, and is recognised.
        let current = match Opened::open(path.clone()) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(ContainerLogError::Read { path, source }),
        };
        let mut seen: Vec<(u64, u64)> = current.iter().map(|f| f.identity).collect();
        let mut files = VecDeque::new();
        for (n, found) in rotated_files(&path) {
            let opened = match found {
                Ok(_) => Opened::open(rotated(&path, n)),
                Err(e) => Err(e),
            };
            match opened {
                Ok(f) if !seen.contains(&f.identity) => {
                    seen.push(f.identity);
                    files.push_front(f);
                }
                Ok(_) => {}
                // Rotated away between the look and the open.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ContainerLogError::Read {
                        path: rotated(&path, n),
                        source,
                    });
                }
            }
        }
        // Without `path` (between a rotation's rename and the new file) the
        // rotated files are still the log.
        files.extend(current);
        if files.is_empty() {
            return Err(ContainerLogError::NotFound { path });
        }
        if let Some(n) = options.tail_lines {
            tail(&mut files, format, n)?;
        }
        Ok(Self {
            path,
            format,
            follow: options.follow,
            since: options.since,
            files,
            pending: BytesMut::new(),
            skipping: false,
            lines: [Line::default(); 2],
            rotated: false,
        })
    }

    /// The next entries; `last` (following): the container is done writing,
    /// so the end of the log ends the read.
    fn next_batch(&mut self, last: bool) -> Result<Step, ContainerLogError> {
        let mut out = Vec::new();
        let mut size = 0;
        loop {
            self.split_lines(&mut out, &mut size);
            if size >= BATCH {
                return Ok(Step::Entries(out));
            }
            let Some(front) = self.files.front_mut() else {
                return Ok(Step::End);
            };
            let had = self.pending.len();
            self.pending.resize(had + CHUNK, 0);
            let n = match front.file.read_at(&mut self.pending[had..], front.offset) {
                Ok(n) => n,
                Err(e) => {
                    self.pending.truncate(had);
                    return Err(front.read_error(e));
                }
            };
            self.pending.truncate(had + n);
            if n > 0 {
                front.offset += n as u64;
                continue;
            }
            if self.files.len() > 1 {
                self.end_of_file(&mut out, &mut size);
                self.files.pop_front();
                continue;
            }
            if !self.follow {
                self.end_of_file(&mut out, &mut size);
                return Ok(if out.is_empty() {
                    Step::End
                } else {
                    Step::Entries(out)
                });
            }
            if self.rotated {
                // Read to its end after it was seen renamed: complete.
                self.rotated = false;
                self.end_of_file(&mut out, &mut size);
                if self.open_newer() {
                    continue;
                }
                // Nothing newer opens yet: look again after a pause.
                return Ok(if out.is_empty() {
                    Step::Idle
                } else {
                    Step::Entries(out)
                });
            }
            if self.replaced() {
                self.rotated = true;
                continue;
            }
            if last {
                self.follow = false;
                continue;
            }
            return Ok(if out.is_empty() {
                Step::Idle
            } else {
                Step::Entries(out)
            });
        }
    }

    /// Whether `path` now names another file than the one being read.
    fn replaced(&self) -> bool {
        let Some(front) = self.files.front() else {
            return false;
        };
        match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) != front.identity,
            // Mid-rotation, or removed: wait.
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    debug!(path = %self.path.display(), error = %e, "container log");
                }
                false
            }
        }
    }

    /// After the file being read was rotated away: queues the files that
    /// came after it, oldest first. More than one rotation may have happened
    /// since the last look; the read file's place among the rotated ones says
    /// which files are newer.
    /// Whether any file was queued.
    fn open_newer(&mut self) -> bool {
        let Some(front) = self.files.front() else {
            return false;
        };
        let identity = front.identity;
        // The writer may rotate between the listing and the opening, moving
        // names onto other files: the opened files must be those listed.
        let mut queued = Vec::new();
        for _ in 0..3 {
            let listed = rotated_files(&self.path);
            queued = Self::open_after(&self.path, &listed, identity);
            let opened: Vec<(u64, u64)> = queued.iter().map(|f| f.identity).collect();
            let now = rotated_files(&self.path);
            let place = now
                .iter()
                .position(|(_, f)| f.as_ref().is_ok_and(|id| *id == identity));
            let still: Vec<(u64, u64)> = now[..place.unwrap_or(0)]
                .iter()
                .rev()
                .filter_map(|(_, f)| f.as_ref().ok().copied())
                .collect();
            if opened.starts_with(&still) {
                break;
            }
        }
        if queued.is_empty() {
            // Gone again; the next look tries again.
            return false;
        }
        debug!(path = %self.path.display(), files = queued.len(), "following the container log into its next file");
        self.files.pop_front();
        self.files.extend(queued);
        true
    }

    /// Opens the files listed as newer than the one known by `identity`,
    /// oldest first, then `path`.
    fn open_after(
        path: &Path,
        listed: &[(u32, io::Result<(u64, u64)>)],
        identity: (u64, u64),
    ) -> Vec<Opened> {
        let place = listed
            .iter()
            .position(|(_, f)| f.as_ref().is_ok_and(|id| *id == identity));
        // Not found: deleted meanwhile, and nothing tells which files
        // followed it; `path` alone then.
        let newer = place.map_or(&listed[..0], |k| &listed[..k]);
        let mut queued = Vec::new();
        for n in newer.iter().rev().map(|(n, _)| *n).chain([0]) {
            match Opened::open(rotated(path, n)) {
                Ok(f) if f.identity != identity => queued.push(f),
                Ok(_) => {}
                Err(e) => {
                    debug!(path = %rotated(path, n).display(), error = %e, "container log")
                }
            }
        }
        queued
    }

    /// Turns the complete lines of `pending` into entries.
    fn split_lines(&mut self, out: &mut Vec<LogEntry>, size: &mut usize) {
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line = self.pending.split_to(end + 1).freeze();
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            self.entry(line, true, out, size);
        }
        if self.skipping {
            self.pending.clear();
        } else if self.pending.len() > MAX_LINE {
            warn!(path = %self.path.display(), "container log line too long; skipped");
            self.pending.clear();
            self.skipping = true;
        }
    }

    /// The file being read ends here: a last line without its newline (the
    /// writer stopped mid-line) is taken as it is.
    fn end_of_file(&mut self, out: &mut Vec<LogEntry>, size: &mut usize) {
        let rest = self.pending.split().freeze();
        if !std::mem::take(&mut self.skipping) && !rest.is_empty() {
            self.entry(rest, false, out, size);
        }
    }

    /// `line`: one line of the file, with its newline when `terminated`.
    fn entry(
        &mut self,
        line: bytes::Bytes,
        terminated: bool,
        out: &mut Vec<LogEntry>,
        size: &mut usize,
    ) {
        if !terminated && self.format == Format::DockerJson {
            // Docker writes each entry whole: this one was being written.
            debug!(path = %self.path.display(), "json-file line still being written; not read");
            return;
        }
        let Some(piece) = self.format.parse(&line, terminated) else {
            let shown = String::from_utf8_lossy(&line[..line.len().min(HEAD)]);
            warn!(path = %self.path.display(), line = %shown, format = self.format.name(), "container log line not in its format; skipped");
            return;
        };
        let state = &mut self.lines[match piece.output {
            LogOutput::Stdout => 0,
            LogOutput::Stderr => 1,
        }];
        let time = if state.continued {
            None
        } else {
            state.dropped = self.since.is_some_and(|since| piece.time < since);
            Some(piece.time)
        };
        state.continued = !piece.full;
        if state.dropped {
            return;
        }
        *size += piece.text.len();
        out.push(LogEntry {
            time,
            output: piece.output,
            text: piece.text,
        });
    }
}

/// The rotated files there are, `path.1` first, each with its device and
/// inode or why not. A single gap is looked past (a rotation in progress
/// renames from the oldest down), two end the list.
fn rotated_files(path: &Path) -> Vec<(u32, io::Result<(u64, u64)>)> {
    let mut found = Vec::new();
    let mut misses = 0;
    for n in 1.. {
        match std::fs::metadata(rotated(path, n)) {
            Ok(meta) => {
                misses = 0;
                found.push((n, Ok((meta.dev(), meta.ino()))));
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    found.push((n, Err(e)));
                }
                // Any failure counts, so a directory that refuses every
                // look ends the list too.
                misses += 1;
                if misses == 2 {
                    break;
                }
            }
        }
    }
    found
}

/// Moves the read offsets so that only the last `n` lines remain: the content
/// after the `n+1`th `F` from the end (so the `P` pieces of the `n`th come
/// along). Scans backwards from the end, so a large log costs only the blocks
/// holding those lines. Files wholly before the start are dropped, but the
/// last file stays.
fn tail(files: &mut VecDeque<Opened>, format: Format, n: u64) -> Result<(), ContainerLogError> {
    let mut start = None;
    if n == 0 {
        if let Some(last) = files.back() {
            let len = last.file.metadata().map_err(|e| last.read_error(e))?.len();
            start = Some((files.len() - 1, len));
        }
    } else {
        let mut full = 0;
        'files: for (i, f) in files.iter().enumerate().rev() {
            if let Some(end) = tail_in(f, format, n, &mut full).map_err(|e| f.read_error(e))? {
                start = Some((i, end));
                break 'files;
            }
        }
    }
    // Fewer lines than asked: everything.
    let (first, offset) = start.unwrap_or((0, 0));
    files.drain(..first);
    if let Some(f) = files.front_mut() {
        f.offset = offset;
    }
    Ok(())
}

/// Scans `f` backwards counting `F` lines in `full`; where the line after the
/// `n+1`th (from the end, over all files scanned) starts, if it is in `f`.
fn tail_in(f: &Opened, format: Format, n: u64, full: &mut u64) -> io::Result<Option<u64>> {
    let len = f.file.metadata()?.len();
    let mut window = Vec::with_capacity(TAIL_BLOCK + HEAD);
    // The start of what follows the block being scanned, for a line that
    // starts at the block's end.
    let mut head: Vec<u8> = Vec::new();
    // The end (after its newline) of the line whose start is looked for.
    let mut line_end = len;
    let mut end = len;
    // Whether the line at `start..end`, its first bytes `start_head`, is
    // the one wanted.
    let mut counts = |start: u64, end: u64, start_head: &[u8]| -> io::Result<bool> {
        if !format.ends_line(&f.file, start, end, start_head)? {
            return Ok(false);
        }
        if *full == n {
            return Ok(true);
        }
        *full += 1;
        Ok(false)
    };
    while end > 0 {
        let begin = end.saturating_sub(TAIL_BLOCK as u64);
        let block = usize::try_from(end - begin).unwrap_or(TAIL_BLOCK);
        window.clear();
        window.resize(block, 0);
        f.file.read_exact_at(&mut window, begin)?;
        window.extend_from_slice(&head);
        for j in (0..block).rev() {
            if window[j] != b'\n' {
                continue;
            }
            let start = begin + j as u64 + 1;
            if start < line_end
                && counts(
                    start,
                    line_end,
                    &window[j + 1..(j + 1 + HEAD).min(window.len())],
                )?
            {
                return Ok(Some(line_end));
            }
            line_end = start;
        }
        head = window[..HEAD.min(window.len())].to_vec();
        end = begin;
    }
    // The file's first line.
    if line_end > 0 && counts(0, line_end, &head)? {
        return Ok(Some(line_end));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::Bytes;
    use futures::{FutureExt, future, stream};

    use super::*;
    use crate::{containerlog::keep, runtime::LogRotation};

    const WAIT: Duration = Duration::from_secs(5);

    fn time(s: u32) -> String {
        format!("2026-12-06T20:03:{s:02}.000000000Z")
    }

    fn cri(s: u32, output: &str, tag: &str, text: &str) -> String {
        format!("{} {output} {tag} {text}\n", time(s))
    }

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

    fn options(follow: bool, tail_lines: Option<u64>) -> LogOptions {
        LogOptions {
            follow,
            tail_lines,
            since: None,
        }
    }

    /// "out@ text" for an entry with its time, "out+ text" for a continuation.
    fn summary(entries: &[LogEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                let output = match e.output {
                    LogOutput::Stdout => "out",
                    LogOutput::Stderr => "err",
                };
                let timed = if e.time.is_some() { "@" } else { "+" };
                format!("{output}{timed} {}", String::from_utf8_lossy(&e.text))
            })
            .collect()
    }

    async fn read_all(path: &Path, options: &LogOptions) -> Vec<LogEntry> {
        read_all_as(path, Format::Cri, options).await
    }

    async fn read_all_as(path: &Path, format: Format, options: &LogOptions) -> Vec<LogEntry> {
        let entries = read(
            path.to_path_buf(),
            format,
            options,
            future::ready(()).boxed(),
        )
        .await
        .expect("read");
        tokio::time::timeout(WAIT, entries.map(|e| e.expect("entry")).collect())
            .await
            .expect("the read ends")
    }

    async fn keep_all(chunks: Vec<(LogOutput, Bytes)>, path: &Path, rotation: LogRotation) {
        let chunks = stream::iter(chunks.into_iter().map(Ok)).boxed();
        keep(chunks, path.to_path_buf(), rotation)
            .await
            .expect("keep");
    }

    fn out(text: impl Into<Bytes>) -> (LogOutput, Bytes) {
        (LogOutput::Stdout, text.into())
    }

    fn err(text: impl Into<Bytes>) -> (LogOutput, Bytes) {
        (LogOutput::Stderr, text.into())
    }

    async fn next(entries: &mut LogStream) -> String {
        let entry = tokio::time::timeout(WAIT, entries.next())
            .await
            .expect("an entry in time")
            .expect("not the end")
            .expect("an entry");
        summary(&[entry]).concat()
    }

    #[tokio::test]
    async fn stdout_and_stderr_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let before = Timestamp::now();
        keep_all(
            vec![
                out("hello\n"),
                err("oops\n"),
                out("\n"),
                out("par"),
                err("e"),
                out("tial\nno newline"),
            ],
            &path,
            LogRotation::default(),
        )
        .await;
        let after = Timestamp::now();
        let entries = read_all(&path, &options(false, None)).await;
        assert_eq!(
            summary(&entries),
            [
                "out@ hello\n",
                "err@ oops\n",
                "out@ \n",
                "out@ partial\n",
                // Ended without a newline: stored as F, read back with one.
                "out@ no newline\n",
                "err@ e\n",
            ]
        );
        for e in &entries {
            let t = e.time.expect("a time");
            assert!(before <= t && t <= after, "{t}");
        }
    }

    #[tokio::test]
    async fn a_long_line_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let long: String = (0..2 * MAX_PIECE + 100)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let (first, rest) = long.split_at(MAX_PIECE + 10);
        // A stderr line between the pieces of the stdout one.
        keep_all(
            vec![
                out(first.to_string()),
                err("between\n"),
                out(format!("{rest}\n")),
            ],
            &path,
            LogRotation::default(),
        )
        .await;
        let entries = read_all(&path, &options(false, None)).await;
        let pieces: Vec<(LogOutput, bool, usize)> = entries
            .iter()
            .map(|e| (e.output, e.time.is_some(), e.text.len()))
            .collect();
        assert_eq!(
            pieces,
            [
                (LogOutput::Stdout, true, MAX_PIECE),
                (LogOutput::Stderr, true, 8),
                (LogOutput::Stdout, false, MAX_PIECE),
                (LogOutput::Stdout, false, 101),
            ]
        );
        let stdout: Vec<u8> = entries
            .iter()
            .filter(|e| e.output == LogOutput::Stdout)
            .flat_map(|e| e.text.to_vec())
            .collect();
        assert_eq!(
            String::from_utf8(stdout).expect("utf-8"),
            format!("{long}\n")
        );
        assert_eq!(entries[1].text, Bytes::from_static(b"between\n"));
    }

    fn numbered(range: std::ops::Range<u32>) -> Vec<(LogOutput, Bytes)> {
        range.map(|i| out(format!("line {i:04}\n"))).collect()
    }

    fn numbered_lines(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("out@ line {i:04}\n")).collect()
    }

    #[tokio::test]
    async fn rotated_files_are_read_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        // 49-byte lines, two to a file.
        let rotation = LogRotation {
            max_size: 100,
            max_files: 3,
        };
        keep_all(numbered(0..10), &path, rotation).await;
        assert!(rotated(&path, 2).exists() && !rotated(&path, 3).exists());
        let entries = read_all(&path, &options(false, None)).await;
        assert_eq!(summary(&entries), numbered_lines(4..10));
    }

    #[tokio::test]
    async fn a_log_between_rotation_steps_is_read_from_its_rotated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        write(&rotated(&path, 1), &cri(1, "stdout", "F", "old"));
        let entries = read_all(&path, &options(false, None)).await;
        assert_eq!(summary(&entries), ["out@ old\n"]);
    }

    #[tokio::test]
    async fn tail_counts_full_lines_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        write(&rotated(&path, 2), &cri(1, "stdout", "F", "a"));
        write(
            &rotated(&path, 1),
            &[cri(2, "stderr", "F", "b"), cri(3, "stdout", "P", "c1")].concat(),
        );
        write(
            &path,
            &[cri(4, "stdout", "F", "c2"), cri(5, "stdout", "F", "d")].concat(),
        );
        let tail = async |n| summary(&read_all(&path, &options(false, Some(n))).await);
        assert_eq!(tail(0).await, Vec::<String>::new());
        assert_eq!(tail(1).await, ["out@ d\n"]);
        // The P piece in the older file comes with its line.
        assert_eq!(tail(2).await, ["out@ c1", "out+ c2\n", "out@ d\n"]);
        assert_eq!(
            tail(3).await,
            ["err@ b\n", "out@ c1", "out+ c2\n", "out@ d\n"]
        );
        let all = ["out@ a\n", "err@ b\n", "out@ c1", "out+ c2\n", "out@ d\n"];
        assert_eq!(tail(4).await, all);
        assert_eq!(tail(50).await, all);
        assert_eq!(summary(&read_all(&path, &options(false, None)).await), all);
    }

    /// A line as Docker's json-file driver writes it.
    fn json(s: u32, output: &str, log: &str) -> String {
        let log = serde_json::to_string(log).expect("a string");
        format!(
            "{{\"log\":{log},\"stream\":\"{output}\",\"time\":\"{}\"}}\n",
            time(s)
        )
    }

    #[tokio::test]
    async fn a_json_file_log_reads_like_a_cri_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("id-json.log");
        write(&rotated(&path, 2), &json(1, "stdout", "a\n"));
        write(
            &rotated(&path, 1),
            &[json(2, "stderr", "b \"q\"\n"), json(3, "stdout", "c1")].concat(),
        );
        // The last entry is still being written.
        write(
            &path,
            &[
                json(4, "stdout", "c2\n"),
                json(5, "stdout", "d\n"),
                "{\"log\":\"e".into(),
            ]
            .concat(),
        );
        let tail = async |n| {
            summary(&read_all_as(&path, Format::DockerJson, &options(false, Some(n))).await)
        };
        assert_eq!(tail(0).await, Vec::<String>::new());
        assert_eq!(tail(1).await, ["out@ d\n"]);
        assert_eq!(tail(2).await, ["out@ c1", "out+ c2\n", "out@ d\n"]);
        let all = [
            "out@ a\n",
            "err@ b \"q\"\n",
            "out@ c1",
            "out+ c2\n",
            "out@ d\n",
        ];
        assert_eq!(tail(50).await, all);
        let entries = read_all_as(&path, Format::DockerJson, &options(false, None)).await;
        assert_eq!(summary(&entries), all);
        assert_eq!(entries[0].time, Some(time(1).parse().expect("time")));
    }

    #[tokio::test]
    async fn tail_of_a_large_log_spans_blocks_and_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let rotation = LogRotation {
            max_size: 100_000,
            max_files: 5,
        };
        // 49 bytes a line: about 245 KB in three files.
        keep_all(numbered(0..5000), &path, rotation).await;
        assert!(rotated(&path, 2).exists());
        let entries = read_all(&path, &options(false, Some(3000))).await;
        assert_eq!(summary(&entries), numbered_lines(2000..5000));
        let entries = read_all(&path, &options(false, Some(1))).await;
        assert_eq!(summary(&entries), numbered_lines(4999..5000));
    }

    #[tokio::test]
    async fn since_drops_lines_begun_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        write(
            &path,
            &[
                cri(1, "stdout", "F", "a"),
                cri(2, "stdout", "P", "b1"),
                cri(3, "stdout", "F", "b2"),
                cri(4, "stdout", "F", "c"),
            ]
            .concat(),
        );
        let since = |s| LogOptions {
            since: Some(time(s).parse().expect("time")),
            ..options(false, None)
        };
        assert_eq!(
            summary(&read_all(&path, &since(2)).await),
            ["out@ b1", "out+ b2\n", "out@ c\n"]
        );
        assert_eq!(summary(&read_all(&path, &since(3)).await), ["out@ c\n"]);
    }

    #[tokio::test]
    async fn an_unterminated_last_line_is_taken_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut text = cri(1, "stdout", "F", "a");
        text.push_str(&format!("{} stdout F cut", time(2)));
        write(&path, &text);
        let entries = read_all(&path, &options(false, None)).await;
        assert_eq!(summary(&entries), ["out@ a\n", "out@ cut\n"]);
        write(&path, &format!("{} stderr P cut", time(2)));
        let entries = read_all(&path, &options(false, None)).await;
        assert_eq!(summary(&entries), ["err@ cut"]);
    }

    #[tokio::test]
    async fn malformed_lines_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let too_long = format!("{}\n", "z".repeat(MAX_LINE + 10));
        write(
            &path,
            &[
                cri(1, "stdout", "F", "a"),
                "garbage\n".into(),
                "\n".into(),
                "2026-13-45T00:00:00Z stdout F bad time\n".into(),
                cri(2, "stdlog", "F", "bad output"),
                cri(3, "stdout", "X", "bad tag"),
                format!("{} stdout\n", time(4)),
                too_long,
                cri(5, "stderr", "F", "b"),
                // Further tags after the first are allowed.
                cri(6, "stdout", "F:x", "c"),
                // An empty line may lose its space.
                format!("{} stdout F\n", time(7)),
            ]
            .concat(),
        );
        let entries = read_all(&path, &options(false, None)).await;
        assert_eq!(
            summary(&entries),
            ["out@ a\n", "err@ b\n", "out@ c\n", "out@ \n"]
        );
        assert_eq!(entries[1].time, Some(time(5).parse().expect("time")),);
    }

    #[tokio::test]
    async fn a_missing_log_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        for follow in [false, true] {
            let got = read(
                path.clone(),
                Format::Cri,
                &options(follow, None),
                future::pending().boxed(),
            )
            .await;
            match got {
                Err(ContainerLogError::NotFound { path: p }) => assert_eq!(p, path),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("a stream for a missing log"),
            }
        }
    }

    #[tokio::test]
    async fn follow_sees_new_lines_and_ends_once_exited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        write(&path, &cri(1, "stdout", "F", "a"));
        let (exit, exited) = futures::channel::oneshot::channel::<()>();
        let mut entries = read(
            path.clone(),
            Format::Cri,
            &options(true, None),
            exited.map(|_| ()).boxed(),
        )
        .await
        .expect("read");
        assert_eq!(next(&mut entries).await, "out@ a\n");
        append(&path, &cri(2, "stderr", "F", "b"));
        assert_eq!(next(&mut entries).await, "err@ b\n");
        // A line's pieces are only handed over whole.
        append(&path, &format!("{} stdout F c", time(3)));
        let waited = tokio::time::timeout(3 * POLL, entries.next()).await;
        assert!(waited.is_err(), "nothing new yet, and not the end");
        append(&path, "\n");
        // Cut off by the container's end: still read once it has exited.
        append(&path, &format!("{} stdout F d", time(4)));
        exit.send(()).expect("exit");
        let rest: Vec<LogEntry> =
            tokio::time::timeout(WAIT, entries.map(|e| e.expect("entry")).collect())
                .await
                .expect("the read ends once exited");
        assert_eq!(summary(&rest), ["out@ c\n", "out@ d\n"]);
    }

    #[tokio::test]
    async fn follow_continues_across_rotations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let rename = |from: u32, to: u32| {
            std::fs::rename(rotated(&path, from), rotated(&path, to)).expect("rename");
        };
        write(&path, &cri(1, "stdout", "F", "one"));
        let (exit, exited) = futures::channel::oneshot::channel::<()>();
        let mut entries = read(
            path.clone(),
            Format::Cri,
            &options(true, Some(5)),
            exited.map(|_| ()).boxed(),
        )
        .await
        .expect("read");
        assert_eq!(next(&mut entries).await, "out@ one\n");
        // The last line written before the rename is read first.
        append(&path, &cri(2, "stdout", "F", "two"));
        rename(0, 1);
        write(&path, &cri(3, "stdout", "F", "three"));
        assert_eq!(next(&mut entries).await, "out@ two\n");
        assert_eq!(next(&mut entries).await, "out@ three\n");
        // Two rotations between looks: the file between is not missed.
        append(&path, &cri(4, "stdout", "P", "fo"));
        rename(1, 2);
        rename(0, 1);
        write(&path, &cri(5, "stdout", "F", "ur"));
        rename(2, 3);
        rename(1, 2);
        rename(0, 1);
        write(&path, &cri(6, "stdout", "F", "five"));
        assert_eq!(next(&mut entries).await, "out@ fo");
        assert_eq!(next(&mut entries).await, "out+ ur\n");
        assert_eq!(next(&mut entries).await, "out@ five\n");
        exit.send(()).expect("exit");
        let rest: Vec<LogEntry> =
            tokio::time::timeout(WAIT, entries.map(|e| e.expect("entry")).collect())
                .await
                .expect("the read ends once exited");
        assert_eq!(summary(&rest), Vec::<String>::new());
    }

    #[tokio::test]
    async fn follow_keeps_up_with_a_rotating_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        // 49-byte lines, twenty to a file; enough files that none is
        // deleted before the reader gets to it.
        let rotation = LogRotation {
            max_size: 1000,
            max_files: 20,
        };
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let writer = tokio::spawn(keep(rx.boxed(), path.clone(), rotation));
        tx.unbounded_send(Ok(out("line 0000\n"))).expect("send");
        tokio::time::timeout(WAIT, async {
            while std::fs::metadata(&path).map_or(true, |m| m.len() == 0) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the log is started");
        let exited = async move {
            let _ = writer.await;
        };
        let reading = read(
            path.clone(),
            Format::Cri,
            &options(true, None),
            exited.boxed(),
        )
        .await
        .expect("read");
        let reading = tokio::spawn(reading.map(|e| e.expect("entry")).collect::<Vec<_>>());
        for i in 1..300 {
            tx.unbounded_send(Ok(out(format!("line {i:04}\n"))))
                .expect("send");
            if i % 25 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        drop(tx);
        let entries = tokio::time::timeout(WAIT, reading)
            .await
            .expect("the read ends with the writer")
            .expect("reader task");
        assert_eq!(summary(&entries), numbered_lines(0..300));
        assert!(rotated(&path, 10).exists());
    }
}
