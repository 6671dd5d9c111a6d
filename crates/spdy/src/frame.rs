//! SPDY/3 frames and their codec. Decoding takes bytes as they come (a frame
//! split across reads at any byte is fine) and yields whole frames; encoding
//! appends to an output buffer. Header blocks go through the direction's
//! compression context, so one [`Decoder`] and one [`Encoder`] serve a
//! connection for its whole life.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{
    error::Malformed,
    headers::{Deflater, Headers, Inflater},
};

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const FLAG_CLEAR_SETTINGS: u8 = 0x01;
const HEAD: usize = 8;

mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RstStatus {
    ProtocolError,
    InvalidStream,
    RefusedStream,
    UnsupportedVersion,
    Cancel,
    InternalError,
    FlowControlError,
    StreamInUse,
    StreamAlreadyClosed,
    FrameTooLarge,
    Other(u32),
}

impl RstStatus {
    pub fn code(self) -> u32 {
        match self {
            Self::ProtocolError => 1,
            Self::InvalidStream => 2,
            Self::RefusedStream => 3,
            Self::UnsupportedVersion => 4,
            Self::Cancel => 5,
            Self::InternalError => 6,
            Self::FlowControlError => 7,
            Self::StreamInUse => 8,
            Self::StreamAlreadyClosed => 9,
            Self::FrameTooLarge => 11,
            Self::Other(code) => code,
        }
    }

    pub fn from_code(code: u32) -> Self {
        match code {
            1 => Self::ProtocolError,
            2 => Self::InvalidStream,
            3 => Self::RefusedStream,
            4 => Self::UnsupportedVersion,
            5 => Self::Cancel,
            6 => Self::InternalError,
            7 => Self::FlowControlError,
            8 => Self::StreamInUse,
            9 => Self::StreamAlreadyClosed,
            11 => Self::FrameTooLarge,
            other => Self::Other(other),
        }
    }
}

/// GOAWAY status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GoAwayStatus {
    Ok,
    ProtocolError,
    InternalError,
    Other(u32),
}

impl GoAwayStatus {
    pub fn code(self) -> u32 {
        match self {
            Self::Ok => 0,
            Self::ProtocolError => 1,
            Self::InternalError => 2,
            Self::Other(code) => code,
        }
    }

    pub fn from_code(code: u32) -> Self {
        match code {
            0 => Self::Ok,
            1 => Self::ProtocolError,
            2 => Self::InternalError,
            other => Self::Other(other),
        }
    }
}

/// One SETTINGS entry, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: RstStatus,
    },
    Settings {
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: GoAwayStatus,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type SPDY/3 does not define: to be ignored.
    Unknown {
        kind: u16,
    },
}

impl Frame {
    /// The frame's type, as the specification names it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SynStream { .. } => "SYN_STREAM",
            Self::SynReply { .. } => "SYN_REPLY",
            Self::RstStream { .. } => "RST_STREAM",
            Self::Settings { .. } => "SETTINGS",
            Self::Ping { .. } => "PING",
            Self::GoAway { .. } => "GOAWAY",
            Self::Headers { .. } => "HEADERS",
            Self::WindowUpdate { .. } => "WINDOW_UPDATE",
            Self::Data { .. } => "DATA",
            Self::Unknown { .. } => "unknown control frame",
        }
    }
}

/// Turns the bytes one side receives into frames.
#[derive(Debug)]
pub struct Decoder {
    inflater: Inflater,
    max_frame: usize,
}

impl Decoder {
    /// `max_frame`: the longest frame payload accepted; `max_headers`: the
    /// largest inflated header block.
    pub fn new(max_frame: usize, max_headers: usize) -> Self {
        Self {
            inflater: Inflater::new(max_headers),
            max_frame,
        }
    }

    /// The next whole frame in `buf`, consumed from it; `None` until one has
    /// fully arrived.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Malformed> {
        let Some(head) = buf.first_chunk::<HEAD>() else {
            return Ok(None);
        };
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > self.max_frame {
            return Err(Malformed::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if buf.len() < HEAD + len {
            return Ok(None);
        }
        buf.advance(HEAD);
        let body = buf.split_to(len).freeze();
        let fin = flags & FLAG_FIN != 0;
        if word & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: word,
                fin,
                data: body,
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(Malformed::UnsupportedVersion(version));
        }
        self.control((word & 0xffff) as u16, flags, body).map(Some)
    }

    fn control(&mut self, kind: u16, flags: u8, mut body: Bytes) -> Result<Frame, Malformed> {
        let fin = flags & FLAG_FIN != 0;
        let len = body.len();
        let at_least = |kind_name, min| {
            if len < min {
                Err(Malformed::TooShort {
                    kind: kind_name,
                    len,
                })
            } else {
                Ok(())
            }
        };
        let exactly = |kind_name, expected| {
            if len != expected {
                Err(Malformed::WrongLength {
                    kind: kind_name,
                    expected,
                    len,
                })
            } else {
                Ok(())
            }
        };
        Ok(match kind {
            kind::SYN_STREAM => {
                at_least("SYN_STREAM", 10)?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let associated_to = body.get_u32() & 0x7fff_ffff;
                let priority = body.get_u8() >> 5;
                let slot = body.get_u8();
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.inflater.inflate(&body)?,
                }
            }
            kind::SYN_REPLY | kind::HEADERS => {
                let reply = kind == kind::SYN_REPLY;
                at_least(if reply { "SYN_REPLY" } else { "HEADERS" }, 4)?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let headers = self.inflater.inflate(&body)?;
                if reply {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            kind::RST_STREAM => {
                exactly("RST_STREAM", 8)?;
                Frame::RstStream {
                    stream_id: body.get_u32() & 0x7fff_ffff,
                    status: RstStatus::from_code(body.get_u32()),
                }
            }
            kind::SETTINGS => {
                at_least("SETTINGS", 4)?;
                let count = body.get_u32() as usize;
                if count.checked_mul(8) != Some(body.len()) {
                    return Err(Malformed::WrongLength {
                        kind: "SETTINGS",
                        expected: 4 + count.saturating_mul(8),
                        len,
                    });
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = body.get_u32();
                        Setting {
                            flags: (word >> 24) as u8,
                            id: word & 0x00ff_ffff,
                            value: body.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            kind::PING => {
                exactly("PING", 4)?;
                Frame::Ping { id: body.get_u32() }
            }
            kind::GOAWAY => {
                exactly("GOAWAY", 8)?;
                Frame::GoAway {
                    last_good_stream_id: body.get_u32() & 0x7fff_ffff,
                    status: GoAwayStatus::from_code(body.get_u32()),
                }
            }
            kind::WINDOW_UPDATE => {
                exactly("WINDOW_UPDATE", 8)?;
                Frame::WindowUpdate {
                    stream_id: body.get_u32() & 0x7fff_ffff,
                    delta: body.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { kind: other },
        })
    }
}

/// Turns frames into the bytes one side sends.
#[derive(Debug, Default)]
pub struct Encoder {
    deflater: Deflater,
}

impl Encoder {
    /// Appends `frame` to `out`. DATA payloads longer than a frame can carry
    /// (16 MiB) must be split by the caller.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                let block = self.deflater.compress(headers);
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                control_head(out, kind::SYN_STREAM, flags, 10 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(associated_to & 0x7fff_ffff);
                out.put_u8((priority & 0x7) << 5);
                out.put_u8(*slot);
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let block = self.deflater.compress(headers);
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    kind::SYN_REPLY
                } else {
                    kind::HEADERS
                };
                control_head(out, kind, flag(*fin, FLAG_FIN), 4 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control_head(out, kind::RST_STREAM, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(status.code());
            }
            Frame::Settings { clear, entries } => {
                control_head(
                    out,
                    kind::SETTINGS,
                    flag(*clear, FLAG_CLEAR_SETTINGS),
                    4 + 8 * entries.len(),
                );
                out.put_u32(entries.len() as u32);
                for e in entries {
                    out.put_u32((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff));
                    out.put_u32(e.value);
                }
            }
            Frame::Ping { id } => {
                control_head(out, kind::PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control_head(out, kind::GOAWAY, 0, 8);
                out.put_u32(last_good_stream_id & 0x7fff_ffff);
                out.put_u32(status.code());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_head(out, kind::WINDOW_UPDATE, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => data_frame(out, *stream_id, *fin, data),
            Frame::Unknown { .. } => {}
        }
    }
}

/// Appends one DATA frame without building a [`Frame`] (no copy of `data`
/// beyond the one into `out`).
pub fn data_frame(out: &mut BytesMut, stream_id: u32, fin: bool, data: &[u8]) {
    out.reserve(HEAD + data.len());
    out.put_u32(stream_id & 0x7fff_ffff);
    out.put_u32((u32::from(flag(fin, FLAG_FIN)) << 24) | (data.len() as u32 & 0x00ff_ffff));
    out.put_slice(data);
}

fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

fn control_head(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.reserve(HEAD + len);
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | (len as u32 & 0x00ff_ffff));
}

#[cfg(test)]
mod tests;
