//! The line formats of container log files: the CRI format a kubelet reads
//! (and arhat writes), and Docker's json-file.
//!
//! ```text
//! 2026-12-06T20:03:00.123456789Z stdout F hello
//! {"log":"hello\n","stream":"stdout","time":"2026-12-06T20:03:00.123456789Z"}
//! ```
//!
//! Both store a line longer than 16 KiB as pieces: CRI tags them `P` then `F`,
//! json-file leaves the newline off all but the last.

use std::{borrow::Cow, fs::File, io, os::unix::fs::FileExt};

use bytes::{Bytes, BytesMut};
use jiff::Timestamp;
use serde::Deserialize;

use crate::runtime::LogOutput;

/// How the lines of a log file are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cri,
    /// Docker's json-file driver, for a container without a terminal (with
    /// one, its entries are chunks of the terminal's output, not lines).
    DockerJson,
}

/// One line of a file, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Piece {
    pub time: Timestamp,
    pub output: LogOutput,
    /// The piece ends its line.
    pub full: bool,
    /// With its newline when `full`.
    pub text: Bytes,
}

impl Format {
    pub(super) fn name(self) -> &'static str {
        match self {
            Format::Cri => "CRI",
            Format::DockerJson => "Docker json-file",
        }
    }

    /// `line`: one line of a file, with its newline when `terminated`.
    pub(super) fn parse(self, line: &Bytes, terminated: bool) -> Option<Piece> {
        let body = if terminated {
            &line[..line.len() - 1]
        } else {
            &line[..]
        };
        match self {
            Format::Cri => {
                let head = parse_head(body)?;
                let text = match (head.full, terminated) {
                    // The file's newline is the line's.
                    (true, true) => line.slice(head.text..),
                    (true, false) => {
                        let mut text = BytesMut::with_capacity(body.len() - head.text + 1);
                        text.extend_from_slice(&body[head.text..]);
                        text.extend_from_slice(b"\n");
                        text.freeze()
                    }
                    (false, _) => line.slice(head.text..body.len()),
                };
                Some(Piece {
                    time: head.time,
                    output: head.output,
                    full: head.full,
                    text,
                })
            }
            Format::DockerJson => parse_json(body),
        }
    }

    /// Whether the line of `file` at `start..end` (`end` past its newline)
    /// ends its log line; `head` holds at least the line's first
    /// [`HEAD`] bytes (or all of it). For counting lines from the end.
    pub(super) fn ends_line(
        self,
        file: &File,
        start: u64,
        end: u64,
        head: &[u8],
    ) -> io::Result<bool> {
        match self {
            Format::Cri => {
                let line = head
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(head, |i| &head[..i]);
                Ok(parse_head(line).is_some_and(|h| h.full))
            }
            // Whether the newline is there shows only at the text's end.
            Format::DockerJson => {
                let len = usize::try_from(end - start).map_err(io::Error::other)?;
                let mut line = vec![0; len];
                file.read_exact_at(&mut line, start)?;
                let body = line.strip_suffix(b"\n").unwrap_or(&line);
                Ok(parse_json(body).is_some_and(|p| p.full))
            }
        }
    }
}

/// Enough of a CRI line to hold "<time> <stream> <tag> ".
pub(super) const HEAD: usize = 64;

/// The fields before a CRI line's text.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub time: Timestamp,
    pub output: LogOutput,
    /// `F`: the piece ends its line.
    pub full: bool,
    /// Where the text starts.
    pub text: usize,
}

/// Parses `<time> <stdout|stderr> <F|P>[:more tags] <text>` (a line without
/// its newline, or its start). An empty text may lack its separating space.
pub(super) fn parse_head(line: &[u8]) -> Option<Head> {
    let space = line.iter().position(|b| *b == b' ')?;
    let time = std::str::from_utf8(&line[..space]).ok()?.parse().ok()?;
    let rest = &line[space + 1..];
    let output = match rest.get(..7)? {
        b"stdout " => LogOutput::Stdout,
        b"stderr " => LogOutput::Stderr,
        _ => return None,
    };
    let tags = &rest[7..];
    let tags_len = tags.iter().position(|b| *b == b' ').unwrap_or(tags.len());
    // The tag list is ':'-separated; the first says full or partial.
    let full = match tags[..tags_len].split(|b| *b == b':').next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let text = (space + 1 + 7 + tags_len + 1).min(line.len());
    Some(Head {
        time,
        output,
        full,
        text,
    })
}

/// One json-file entry; other fields (`attrs`) are not ours.
#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

fn parse_json(body: &[u8]) -> Option<Piece> {
    let line: JsonLine<'_> = serde_json::from_slice(body).ok()?;
    let output = match &*line.stream {
        "stdout" => LogOutput::Stdout,
        "stderr" => LogOutput::Stderr,
        _ => return None,
    };
    Some(Piece {
        time: line.time.parse().ok()?,
        output,
        full: line.log.ends_with('\n'),
        text: Bytes::from(line.log.into_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(line: &str) -> Option<Piece> {
        Format::DockerJson.parse(&Bytes::from(format!("{line}\n")), true)
    }

    #[test]
    fn heads_parse() {
        let head = parse_head(b"2026-12-06T20:03:00.5+01:00 stderr P x y").expect("parses");
        assert_eq!(
            head,
            Head {
                time: "2026-12-06T19:03:00.5Z".parse().expect("time"),
                output: LogOutput::Stderr,
                full: false,
                text: 37,
            }
        );
        assert_eq!(parse_head(b"2026-12-06T20:03:00Z stdout  x"), None);
        assert_eq!(parse_head(b"2026-12-06T20:03:00Z stdout FP x"), None);
        assert_eq!(parse_head(b"2026-12-06T20:03:00Z"), None);
    }

    #[test]
    fn a_json_file_line_and_its_pieces() {
        let piece = json(
            r#"{"log":"tab\there \"quoted\" \u00e9\n","stream":"stderr","time":"2026-12-06T20:03:00.123456789Z"}"#,
        )
        .expect("parses");
        assert_eq!(
            piece,
            Piece {
                time: "2026-12-06T20:03:00.123456789Z".parse().expect("time"),
                output: LogOutput::Stderr,
                full: true,
                text: Bytes::from("tab\there \"quoted\" é\n"),
            }
        );
        let part = json(r#"{"log":"no newline","stream":"stdout","time":"2026-12-06T20:03:00Z","attrs":{"a":"b"}}"#)
            .expect("parses");
        assert!(!part.full);
        assert_eq!(part.text, Bytes::from("no newline"));
        // An escaped backslash before an `n` is not a newline.
        let slash =
            json(r#"{"log":"ends in \\n","stream":"stdout","time":"2026-12-06T20:03:00Z"}"#)
                .expect("parses");
        assert!(!slash.full);
    }

    #[test]
    fn json_file_lines_that_are_not_entries() {
        assert_eq!(
            json(r#"{"log":"x\n","stream":"stdin","time":"2026-12-06T20:03:00Z"}"#),
            None
        );
        assert_eq!(
            json(r#"{"log":"x\n","stream":"stdout","time":"yesterday"}"#),
            None
        );
        assert_eq!(json(r#"{"log":"x\n","stream":"stdout""#), None);
        assert_eq!(json("2026-12-06T20:03:00Z stdout F x"), None);
    }

    #[test]
    fn a_json_file_line_ends_its_line_only_with_its_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let lines = [
            r#"{"log":"piece","stream":"stdout","time":"2026-12-06T20:03:00Z"}"#,
            r#"{"log":"end\n","stream":"stdout","time":"2026-12-06T20:03:00Z"}"#,
        ];
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[1])).expect("write");
        let file = File::open(&path).expect("open");
        let first = lines[0].len() as u64 + 1;
        let second = first + lines[1].len() as u64 + 1;
        let ends = |start, end| Format::DockerJson.ends_line(&file, start, end, b"");
        assert!(!ends(0, first).expect("read"));
        assert!(ends(first, second).expect("read"));
    }
}
