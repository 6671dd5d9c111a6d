//! A container's output written as CRI log lines, rotated.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, stream::BoxStream};
use tokio::{fs::File, io::AsyncWriteExt};

use super::{ContainerLogError, MAX_PIECE, rotated};
use crate::runtime::{LogOutput, LogRotation, RuntimeError};

/// Buffered lines are written out once this many bytes are waiting, so a
/// large chunk of output does not sit in memory twice.
const BUFFER: usize = 64 * 1024;

/// Consumes a container's output until it ends, appending it to the log at
/// `path` (created with its directories, appended to if it exists, as after
/// an agent restart) and rotating as `rotation` says.
///
/// Every line is stamped with the time its end was received. A piece of a
/// line without its newline waits (per output, so stdout and stderr pieces
/// never merge) until its newline arrives or it reaches [`MAX_PIECE`], as
/// containerd's log writer does: small writes do not break lines into many
/// `P` pieces. What was received is on disk once the next chunk is awaited.
///
/// An error from `output` ends keeping with [`ContainerLogError::Output`],
/// after writing everything received before it. A log that cannot be
/// written (disk full, directory gone) fails with its error only once the
/// output has ended: the rest is read and dropped meanwhile, so a runtime's
/// pipe never fills up and blocks the container.
pub async fn keep(
    mut output: BoxStream<'static, Result<(LogOutput, Bytes), RuntimeError>>,
    path: PathBuf,
    rotation: LogRotation,
) -> Result<(), ContainerLogError> {
    let written = write(&mut output, path, rotation).await;
    if written.is_err() {
        while output.next().await.is_some() {}
    }
    written
}

async fn write(
    output: &mut BoxStream<'static, Result<(LogOutput, Bytes), RuntimeError>>,
    path: PathBuf,
    rotation: LogRotation,
) -> Result<(), ContainerLogError> {
    let mut log = Log::open(path, rotation).await?;
    while let Some(item) = output.next().await {
        match item {
            Ok((out, data)) => log.chunk(out, &data).await?,
            Err(source) => {
                log.finish().await?;
                return Err(ContainerLogError::Output {
                    path: log.path,
                    source,
                });
            }
        }
    }
    log.finish().await
}

/// The log being written.
struct Log {
    path: PathBuf,
    rotation: LogRotation,
    file: File,
    /// Bytes in the current file, counting those still in `buf`.
    size: u64,
    /// Lines not written to `file` yet.
    buf: Vec<u8>,
    /// Per output (stdout, stderr): the line received so far, without its
    /// newline; at most [`MAX_PIECE`] bytes between chunks.
    partial: [Vec<u8>; 2],
}

fn index(out: LogOutput) -> usize {
    match out {
        LogOutput::Stdout => 0,
        LogOutput::Stderr => 1,
    }
}

fn name(out: LogOutput) -> &'static [u8] {
    match out {
        LogOutput::Stdout => b"stdout",
        LogOutput::Stderr => b"stderr",
    }
}

/// RFC 3339 in UTC with all nine fractional digits: one width for every line.
fn stamp() -> String {
    format!("{:.9}", jiff::Timestamp::now())
}

async fn open_append(path: &Path) -> Result<File, ContainerLogError> {
    let write = |source| ContainerLogError::Write {
        path: path.to_path_buf(),
        source,
    };
    // As a pod's other files on the device: not for every local user.
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .await
        .map_err(write)
}

/// Whether the file of `size` bytes at `path` ends with a newline (a file
/// that cannot be read is taken as ending well).
fn ends_with_newline(path: &Path, size: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut last, size - 1))
        .map_or(true, |()| last[0] == b'\n')
}

impl Log {
    async fn open(path: PathBuf, rotation: LogRotation) -> Result<Self, ContainerLogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .await
                .map_err(|source| ContainerLogError::Write {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let mut file = open_append(&path).await?;
        let size = file
            .metadata()
            .await
            .map_err(|source| ContainerLogError::Write {
                path: path.clone(),
                source,
            })?
            .len();
        // An agent that died mid-line left a line without its end: end it,
        // so the next line does not continue it.
        let mut size = size;
        if size > 0 && !ends_with_newline(&path, size) {
            file.write_all(b"\n")
                .await
                .map_err(|source| ContainerLogError::Write {
                    path: path.clone(),
                    source,
                })?;
            size += 1;
        }
        Ok(Self {
            path,
            rotation,
            file,
            size,
            buf: Vec::with_capacity(BUFFER),
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Writes the lines `data` completes, keeps the rest for later.
    async fn chunk(&mut self, out: LogOutput, data: &[u8]) -> Result<(), ContainerLogError> {
        let stamp = stamp();
        let i = index(out);
        let mut rest = data;
        while !rest.is_empty() {
            let (segment, ends) = match rest.iter().position(|b| *b == b'\n') {
                Some(n) => {
                    let segment = &rest[..n];
                    rest = &rest[n + 1..];
                    (segment, true)
                }
                None => (std::mem::take(&mut rest), false),
            };
            let mut partial = std::mem::take(&mut self.partial[i]);
            if partial.is_empty() {
                // The common case: a whole line within the chunk, not copied.
                let left = self.pieces(&stamp, out, segment, ends).await?;
                partial.extend_from_slice(left);
            } else {
                partial.extend_from_slice(segment);
                let left = self.pieces(&stamp, out, &partial, ends).await?.len();
                partial.drain(..partial.len() - left);
            }
            self.partial[i] = partial;
        }
        self.flush().await
    }

    /// Writes `text` as `P` pieces of [`MAX_PIECE`] and, when `ends`, a final
    /// `F`; returns what is left to wait for its line's end.
    async fn pieces<'t>(
        &mut self,
        stamp: &str,
        out: LogOutput,
        text: &'t [u8],
        ends: bool,
    ) -> Result<&'t [u8], ContainerLogError> {
        let mut text = text;
        // Only a piece known not to be the last is a `P`: a line of exactly
        // MAX_PIECE bytes stays one `F`.
        while text.len() > MAX_PIECE {
            let (piece, rest) = text.split_at(MAX_PIECE);
            self.line(stamp, out, b'P', piece).await?;
            text = rest;
        }
        if ends {
            self.line(stamp, out, b'F', text).await?;
            return Ok(&[]);
        }
        Ok(text)
    }

    async fn line(
        &mut self,
        stamp: &str,
        out: LogOutput,
        tag: u8,
        text: &[u8],
    ) -> Result<(), ContainerLogError> {
        // "<stamp> stdout F <text>\n": three spaces, six, one, one newline.
        let len = (stamp.len() + 11 + text.len()) as u64;
        // A line longer than the limit on its own still goes into a fresh file.
        if self.size > 0 && self.size + len > self.rotation.max_size {
            self.rotate().await?;
        }
        self.buf.extend_from_slice(stamp.as_bytes());
        self.buf.push(b' ');
        self.buf.extend_from_slice(name(out));
        self.buf.extend_from_slice(&[b' ', tag, b' ']);
        self.buf.extend_from_slice(text);
        self.buf.push(b'\n');
        self.size += len;
        if self.buf.len() >= BUFFER {
            self.write_out().await?;
        }
        Ok(())
    }

    async fn write_out(&mut self) -> Result<(), ContainerLogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buf).await;
        self.buf.clear();
        result.map_err(|source| ContainerLogError::Write {
            path: self.path.clone(),
            source,
        })
    }

    async fn flush(&mut self) -> Result<(), ContainerLogError> {
        self.write_out().await?;
        self.file
            .flush()
            .await
            .map_err(|source| ContainerLogError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// `path.{max-1}` (and any older, left by a larger `maxFiles`) goes,
    /// `path.{k}` becomes `path.{k+1}`, `path` becomes `path.1`, and a new
    /// `path` starts. Everything is flushed to the old file first, so a reader
    /// that finishes it after seeing the rename misses nothing.
    async fn rotate(&mut self) -> Result<(), ContainerLogError> {
        self.flush().await?;
        let keep = self.rotation.max_files.max(1);
        let mut stale = keep;
        while remove(&rotated(&self.path, stale)).await? {
            stale += 1;
        }
        // With one file kept, this removes `path` itself.
        remove(&rotated(&self.path, keep - 1)).await?;
        for k in (0..keep.saturating_sub(1)).rev() {
            let from = rotated(&self.path, k);
            match tokio::fs::rename(&from, rotated(&self.path, k + 1)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ContainerLogError::Rotate { path: from, source }),
            }
        }
        self.file = open_append(&self.path).await?;
        self.size = 0;
        tracing::debug!(path = %self.path.display(), "container log rotated");
        Ok(())
    }

    /// Writes the lines still waiting for their newline and flushes. A line
    /// cut off by the end of the output is written as `F`: nothing will
    /// continue it, so the reader hands it back ending with a newline the
    /// container never wrote.
    async fn finish(&mut self) -> Result<(), ContainerLogError> {
        let stamp = stamp();
        for out in [LogOutput::Stdout, LogOutput::Stderr] {
            let partial = std::mem::take(&mut self.partial[index(out)]);
            if !partial.is_empty() {
                self.pieces(&stamp, out, &partial, true).await?;
            }
        }
        self.flush().await
    }
}

/// Removes `path`; whether it was there.
async fn remove(path: &Path) -> Result<bool, ContainerLogError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ContainerLogError::Rotate {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;

    use super::*;

    type Chunk = Result<(LogOutput, Bytes), RuntimeError>;

    fn out(text: &'static str) -> Chunk {
        Ok((LogOutput::Stdout, Bytes::from_static(text.as_bytes())))
    }

    fn err(text: &'static str) -> Chunk {
        Ok((LogOutput::Stderr, Bytes::from_static(text.as_bytes())))
    }

    async fn keep_all(chunks: Vec<Chunk>, path: &Path, rotation: LogRotation) {
        keep(stream::iter(chunks).boxed(), path.to_path_buf(), rotation)
            .await
            .expect("keep");
    }

    /// The file's lines without their timestamps, after checking each has one
    /// of the fixed width.
    fn lines(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).expect("read log");
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| {
                let (time, rest) = line.split_once(' ').expect("a time");
                assert_eq!(time.len(), 30, "{time}");
                assert!(time.ends_with('Z'), "{time}");
                time.parse::<jiff::Timestamp>().expect("RFC 3339 time");
                rest.to_string()
            })
            .collect()
    }

    #[tokio::test]
    async fn lines_are_written_in_cri_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pods/c/0.log");
        keep_all(
            vec![out("hello\n\n"), err("oops\n"), out("a\nb\n")],
            &path,
            LogRotation::default(),
        )
        .await;
        assert_eq!(
            lines(&path),
            [
                "stdout F hello",
                "stdout F ",
                "stderr F oops",
                "stdout F a",
                "stdout F b"
            ]
        );
    }

    #[tokio::test]
    async fn pieces_of_one_output_join_and_outputs_do_not_mix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        keep_all(
            vec![
                out("hel"),
                err("err"),
                out("lo\nwor"),
                err("or\n"),
                out("ld\n"),
            ],
            &path,
            LogRotation::default(),
        )
        .await;
        assert_eq!(
            lines(&path),
            ["stdout F hello", "stderr F error", "stdout F world"]
        );
    }

    #[tokio::test]
    async fn output_ending_without_a_newline_is_written_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        keep_all(vec![out("a\nb"), err("c")], &path, LogRotation::default()).await;
        assert_eq!(lines(&path), ["stdout F a", "stdout F b", "stderr F c"]);
    }

    #[tokio::test]
    async fn a_long_line_is_split_into_partial_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let long = "x".repeat(2 * MAX_PIECE + 100);
        let exact = "y".repeat(MAX_PIECE);
        let chunks: Vec<Chunk> = vec![
            // Arriving in pieces that do not line up with MAX_PIECE.
            Ok((LogOutput::Stdout, Bytes::from(long[..1000].to_string()))),
            Ok((
                LogOutput::Stdout,
                Bytes::from(format!("{}\n", &long[1000..])),
            )),
            Ok((LogOutput::Stdout, Bytes::from(format!("{exact}\n")))),
        ];
        keep_all(chunks, &path, LogRotation::default()).await;
        let x = |n: usize| "x".repeat(n);
        assert_eq!(
            lines(&path),
            [
                format!("stdout P {}", x(MAX_PIECE)),
                format!("stdout P {}", x(MAX_PIECE)),
                format!("stdout F {}", x(100)),
                format!("stdout F {exact}"),
            ]
        );
    }

    #[tokio::test]
    async fn each_chunk_is_written_before_the_next_arrives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let writer = tokio::spawn(keep(rx.boxed(), path.clone(), LogRotation::default()));
        tx.unbounded_send(out("a\nb")).expect("send");
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !path.exists() || lines(&path).is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the first line is written while the output goes on");
        // The unfinished line waits for its end.
        assert_eq!(lines(&path), ["stdout F a"]);
        drop(tx);
        writer.await.expect("writer task").expect("keep");
        assert_eq!(lines(&path), ["stdout F a", "stdout F b"]);
    }

    #[tokio::test]
    async fn an_existing_log_is_appended_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        keep_all(vec![out("one\n")], &path, LogRotation::default()).await;
        keep_all(vec![out("two\n")], &path, LogRotation::default()).await;
        assert_eq!(lines(&path), ["stdout F one", "stdout F two"]);
    }

    #[tokio::test]
    async fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        // Left by an earlier, larger maxFiles.
        std::fs::write(rotated(&path, 3), "stale\n").expect("write");
        std::fs::write(rotated(&path, 4), "stale\n").expect("write");
        // Each line is 30 + 11 + 7 = 48 bytes: two fit in 100.
        let rotation = LogRotation {
            max_size: 100,
            max_files: 3,
        };
        let chunks: Vec<Chunk> = (0..10)
            .map(|i| Ok((LogOutput::Stdout, Bytes::from(format!("line {i:02}\n")))))
            .collect();
        keep_all(chunks, &path, rotation).await;
        assert_eq!(lines(&path), ["stdout F line 08", "stdout F line 09"]);
        assert_eq!(
            lines(&rotated(&path, 1)),
            ["stdout F line 06", "stdout F line 07"]
        );
        assert_eq!(
            lines(&rotated(&path, 2)),
            ["stdout F line 04", "stdout F line 05"]
        );
        assert!(!rotated(&path, 3).exists());
        assert!(!rotated(&path, 4).exists());
        for n in 0..3 {
            let len = std::fs::metadata(rotated(&path, n)).expect("stat").len();
            assert!(len <= 100, "{n}: {len}");
        }
    }

    #[tokio::test]
    async fn a_line_larger_than_max_size_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let rotation = LogRotation {
            max_size: 50,
            max_files: 2,
        };
        keep_all(
            vec![
                out("a\n"),
                out("a line too long for one file\n"),
                out("b\n"),
            ],
            &path,
            rotation,
        )
        .await;
        assert_eq!(lines(&path), ["stdout F b"]);
        assert_eq!(
            lines(&rotated(&path, 1)),
            ["stdout F a line too long for one file"]
        );
        assert!(!rotated(&path, 2).exists());
    }

    #[tokio::test]
    async fn an_output_error_ends_keeping_after_writing_what_came() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let chunks = vec![
            out("a\nb"),
            Err(RuntimeError::failed("attach", "connection reset")),
            out("never\n"),
        ];
        let got = keep(
            stream::iter(chunks).boxed(),
            path.clone(),
            LogRotation::default(),
        )
        .await;
        assert!(
            matches!(&got, Err(ContainerLogError::Output { path: p, .. }) if *p == path),
            "{got:?}"
        );
        assert_eq!(lines(&path), ["stdout F a", "stdout F b"]);
    }

    #[tokio::test]
    async fn no_file_grows_past_max_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        // Three 48-byte lines are 144 bytes: one more than allowed.
        let rotation = LogRotation {
            max_size: 143,
            max_files: 10,
        };
        let chunks: Vec<Chunk> = (0..9)
            .map(|i| Ok((LogOutput::Stdout, Bytes::from(format!("line {i:02}\n")))))
            .collect();
        keep_all(chunks, &path, rotation).await;
        let len = |n| std::fs::metadata(rotated(&path, n)).expect("stat").len();
        for n in 1..5 {
            assert_eq!(len(n), 96, "file {n} holds two lines");
        }
        assert_eq!(len(0), 48, "the ninth line");
    }

    #[tokio::test]
    async fn a_log_that_cannot_be_written_still_drains_the_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Its directory is a file: nothing can be written.
        std::fs::write(dir.path().join("pods"), "").expect("write");
        let path = dir.path().join("pods/0.log");
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = read.clone();
        let output = stream::iter(vec![out("a\n"), out("b\n"), out("c\n")])
            .inspect(move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .boxed();
        let got = keep(output, path, LogRotation::default()).await;
        assert!(
            matches!(got, Err(ContainerLogError::Write { .. })),
            "{got:?}"
        );
        assert_eq!(
            read.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "all read"
        );
    }

    #[tokio::test]
    async fn a_line_an_earlier_run_left_unended_is_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let cut = "2026-12-06T20:03:00.123456789Z stdout P cut sho";
        std::fs::write(&path, cut).expect("write");
        keep_all(vec![out("next\n")], &path, LogRotation::default()).await;
        let text = std::fs::read_to_string(&path).expect("read");
        let (first, second) = text.split_once('\n').expect("two lines");
        assert_eq!(first, cut);
        assert!(second.ends_with(" stdout F next\n"), "{second:?}");
    }

    #[tokio::test]
    async fn logs_are_not_for_other_users() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pods/0.log");
        keep_all(vec![out("secret\n")], &path, LogRotation::default()).await;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path) & 0o007, 0, "{:o}", mode(&path));
        assert_eq!(mode(&dir.path().join("pods")) & 0o007, 0);
    }
}
