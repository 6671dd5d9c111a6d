//! The session frame types generated from `proto/session.proto` (package `arhat.session`),
//! plus exact encoded-size helpers used to keep every frame within `max_frame_size`.

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/arhat.session.rs"));
}
pub use generated::*;

use prost::Message;

/// Bytes `item` adds to a [`Frame`] (field tag, length prefix, body).
pub(crate) fn item_len(item: &Item) -> usize {
    let body = item.encoded_len();
    1 + prost::length_delimiter_len(body) + body
}

/// Bytes of a [`Frame`] with this epoch and no items.
pub(crate) fn frame_base_len(epoch: u64) -> usize {
    if epoch == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(epoch)
    }
}

impl Item {
    pub(crate) fn chunk(c: Chunk) -> Self {
        Item {
            kind: Some(item::Kind::Chunk(c)),
        }
    }
    pub(crate) fn ack(a: Ack) -> Self {
        Item {
            kind: Some(item::Kind::Ack(a)),
        }
    }
    pub(crate) fn reset(r: Reset) -> Self {
        Item {
            kind: Some(item::Kind::Reset(r)),
        }
    }
    pub(crate) fn reset_ack(stream_id: u64) -> Self {
        Item {
            kind: Some(item::Kind::ResetAck(ResetAck { stream_id })),
        }
    }
    pub(crate) fn ping(p: Ping) -> Self {
        Item {
            kind: Some(item::Kind::Ping(p)),
        }
    }
    pub(crate) fn pong(p: Pong) -> Self {
        Item {
            kind: Some(item::Kind::Pong(p)),
        }
    }
}

/// Builds one frame without ever exceeding a byte budget.
#[derive(Debug)]
pub(crate) struct FrameBuilder {
    frame: Frame,
    len: usize,
    max: usize,
}

impl FrameBuilder {
    pub(crate) fn new(epoch: u64, max: usize) -> Self {
        Self {
            frame: Frame {
                epoch,
                items: Vec::new(),
            },
            len: frame_base_len(epoch),
            max,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frame.items.is_empty()
    }

    /// Bytes still available for items.
    pub(crate) fn remaining(&self) -> usize {
        self.max.saturating_sub(self.len)
    }

    /// Adds `item` if it fits; otherwise hands it back.
    pub(crate) fn push(&mut self, item: Item) -> Result<(), Item> {
        let n = item_len(&item);
        if self.len + n > self.max {
            return Err(item);
        }
        self.len += n;
        self.frame.items.push(item);
        Ok(())
    }

    /// The frame's exact encoded length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Encodes the frame at the end of `buf`.
    pub(crate) fn finish_into(self, buf: &mut bytes::BytesMut) {
        debug_assert_eq!(self.frame.encoded_len(), self.len);
        buf.reserve(self.len);
        self.frame.encode_raw(buf);
    }

    #[cfg(test)]
    pub(crate) fn finish(self) -> bytes::Bytes {
        let mut buf = bytes::BytesMut::new();
        self.finish_into(&mut buf);
        buf.freeze()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn builder_tracks_exact_length() {
        let mut b = FrameBuilder::new(u64::MAX, 10_000);
        b.push(Item::ping(Ping {
            nonce: 7,
            initial_window: 1 << 20,
        }))
        .unwrap();
        b.push(Item::chunk(Chunk {
            stream_id: 300,
            offset: 1 << 40,
            data: Bytes::from(vec![1u8; 5000]),
            fin: true,
            open: Some(Open {
                header: Bytes::from_static(b"hdr"),
                idle_timeout_ms: 5,
            }),
        }))
        .unwrap();
        let expected = 10_000 - b.remaining();
        let bytes = b.finish();
        assert_eq!(bytes.len(), expected);
        let f = Frame::decode(bytes).unwrap();
        assert_eq!(f.epoch, u64::MAX);
        assert_eq!(f.items.len(), 2);
    }

    #[test]
    fn builder_refuses_items_that_do_not_fit() {
        let mut b = FrameBuilder::new(1, 100);
        let big = Item::chunk(Chunk {
            stream_id: 1,
            offset: 0,
            data: Bytes::from(vec![0u8; 100]),
            fin: false,
            open: None,
        });
        assert!(b.push(big).is_err());
        assert!(b.is_empty());
    }
}
