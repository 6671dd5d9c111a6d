//! Header blocks: name/value pairs, serialized as SPDY/3 lays them out and
//! zlib-compressed with the SPDY dictionary, one context per direction for
//! the life of the connection.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::{
    dictionary::{DICTIONARY, DICTIONARY_ID},
    error::Malformed,
};

/// A header block's pairs, in wire order. Names are matched without regard
/// to case: Go peers send them lowercased, in random order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair; SPDY/3 wants names lowercase, so they are stored so.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.0.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// The first value of `name`, any case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The uncompressed block: a pair count, then length-prefixed names and
    /// values, all lengths 32-bit big-endian.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + self
                .0
                .iter()
                .map(|(n, v)| 8 + n.len() + v.len())
                .sum::<usize>(),
        );
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (name, value) in &self.0 {
            for part in [name, value] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }

    /// Parses an uncompressed block, refusing anything that does not add up.
    pub fn parse(mut block: &[u8]) -> Result<Self, Malformed> {
        let count = take_u32(&mut block)? as usize;
        // Each pair takes at least 8 bytes: a count past that is a lie, and
        // checking it first bounds the allocation.
        if count > block.len() / 8 {
            return Err(Malformed::HeaderBlock("pair count exceeds the block"));
        }
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_str(&mut block)?;
            if name.is_empty() {
                return Err(Malformed::HeaderBlock("empty header name"));
            }
            let value = take_str(&mut block)?;
            pairs.push((name, value));
        }
        if !block.is_empty() {
            return Err(Malformed::HeaderBlock("bytes after the last pair"));
        }
        Ok(Self(pairs))
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        Self(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

fn take_u32(block: &mut &[u8]) -> Result<u32, Malformed> {
    let Some((head, rest)) = block.split_first_chunk::<4>() else {
        return Err(Malformed::HeaderBlock("truncated length"));
    };
    *block = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_str(block: &mut &[u8]) -> Result<String, Malformed> {
    let len = take_u32(block)? as usize;
    if len > block.len() {
        return Err(Malformed::HeaderBlock("length past the end of the block"));
    }
    let (bytes, rest) = block.split_at(len);
    *block = rest;
    String::from_utf8(bytes.to_vec()).map_err(|_| Malformed::HeaderBlock("not UTF-8"))
}

/// Compresses the header blocks one side sends. The zlib context (some
/// 300 KiB at the best level) is made with the first block, so a side that
/// sends none never pays for it.
#[derive(Default)]
pub struct Deflater {
    z: Option<Compress>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("total_out", &self.z.as_ref().map_or(0, Compress::total_out))
            .finish()
    }
}

impl Deflater {
    /// One block, ended by a sync flush so the peer can inflate it alone.
    pub fn compress(&mut self, headers: &Headers) -> Vec<u8> {
        let z = self.z.get_or_insert_with(|| {
            let mut z = Compress::new(Compression::best(), true);
            // Cannot fail on a fresh zlib stream.
            let id = z.set_dictionary(&DICTIONARY).unwrap_or(DICTIONARY_ID);
            debug_assert_eq!(id, DICTIONARY_ID);
            z
        });
        let input = headers.serialize();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = z.total_in();
            // Only stream misuse fails, which this loop does not do.
            let _ = z.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync);
            consumed += (z.total_in() - before) as usize;
            // Done once all input is in and the flush left room to spare.
            if consumed == input.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// Inflates the header blocks one side receives; like [`Deflater`], its
/// zlib context is made with the first block.
pub struct Inflater {
    z: Option<Decompress>,
    max: usize,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("total_in", &self.z.as_ref().map_or(0, Decompress::total_in))
            .field("max", &self.max)
            .finish()
    }
}

impl Inflater {
    /// `max`: the largest inflated block accepted.
    pub fn new(max: usize) -> Self {
        Self { z: None, max }
    }

    pub fn inflate(&mut self, input: &[u8]) -> Result<Headers, Malformed> {
        let block = self.inflate_raw(input)?;
        Headers::parse(&block)
    }

    fn inflate_raw(&mut self, input: &[u8]) -> Result<Vec<u8>, Malformed> {
        let z = self.z.get_or_insert_with(|| Decompress::new(true));
        let mut out = Vec::with_capacity((input.len() * 4).clamp(64, self.max));
        let mut consumed = 0;
        loop {
            if out.capacity() == out.len() {
                if out.len() >= self.max {
                    return Err(Malformed::HeaderBlockTooLarge { max: self.max });
                }
                out.reserve((out.len()).clamp(64, self.max - out.len()));
            }
            let before = z.total_in();
            let result = z.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (z.total_in() - before) as usize;
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(Malformed::Compression(
                        "the peer ended its zlib stream".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        z.set_dictionary(&DICTIONARY)
                            .map_err(|e| Malformed::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(other) => {
                        return Err(Malformed::Compression(format!(
                            "asks for dictionary {other:#010x}, not SPDY/3's"
                        )));
                    }
                    None => return Err(Malformed::Compression(e.to_string())),
                },
            }
            if out.len() > self.max {
                return Err(Malformed::HeaderBlockTooLarge { max: self.max });
            }
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_default())
            .collect()
    }

    #[test]
    fn inflates_a_real_kubelets_first_empty_reply() {
        // The block of the first SYN_REPLY a kubelet sent (golden transcript).
        let mut inflater = Inflater::new(1024);
        let headers = inflater.inflate(&hex("78f9e3c6a7c26260606000000000ffff"));
        assert_eq!(headers, Ok(Headers::new()));
        // Later empty blocks reuse the context.
        assert_eq!(
            inflater.inflate(&hex("026100000000ffff")),
            Ok(Headers::new())
        );
    }

    #[test]
    fn blocks_round_trip_through_one_context_per_direction() {
        let mut deflater = Deflater::default();
        let mut inflater = Inflater::new(64 * 1024);
        let blocks = [
            Headers::new().with("streamType", "error"),
            Headers::new(),
            Headers::new()
                .with("port", "8080")
                .with("requestid", "0")
                .with("streamtype", "data"),
        ];
        for (i, block) in blocks.iter().enumerate() {
            let wire = deflater.compress(block);
            if i == 0 {
                assert_eq!(
                    &wire[..6],
                    &hex("78f9e3c6a7c2")[..],
                    "zlib header naming the dictionary"
                );
            }
            assert!(wire.ends_with(&[0, 0, 0xff, 0xff]), "sync flush");
            assert_eq!(inflater.inflate(&wire).as_ref(), Ok(block));
        }
        assert_eq!(blocks[0].get("STREAMTYPE"), Some("error"));
    }

    #[test]
    fn a_bomb_is_refused_without_inflating_it_all() {
        let mut deflater = Deflater::default();
        let big = Headers::new().with("x", "a".repeat(1 << 20));
        let wire = deflater.compress(&big);
        assert!(wire.len() < 8 * 1024);
        let mut inflater = Inflater::new(16 * 1024);
        assert_eq!(
            inflater.inflate(&wire),
            Err(Malformed::HeaderBlockTooLarge { max: 16 * 1024 })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let mut inflater = Inflater::new(1024);
        assert!(matches!(
            inflater.inflate(b"not zlib at all"),
            Err(Malformed::Compression(_))
        ));
        assert!(
            Headers::parse(&[0, 0, 0, 9]).is_err(),
            "count beyond the block"
        );
        assert!(
            Headers::parse(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err(),
            "empty name"
        );
        assert!(Headers::parse(&[0, 0, 0, 0, 1]).is_err(), "trailing byte");
    }
}
