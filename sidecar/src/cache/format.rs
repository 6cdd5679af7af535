//! The on-disk format of one cached block (version 2: sparse blocks).
//!
//! ```text
//! magic      8 bytes  "S3MBLOCK"
//! version    u32 LE   FORMAT_VERSION
//! bucket     u32 LE length, then UTF-8 bytes
//! key        u32 LE length, then UTF-8 bytes
//! etag       u32 LE length, then UTF-8 bytes
//! index      u64 LE   block index in the object
//! offset     u64 LE   byte offset of the block in the object
//! block_len  u32 LE   length of the whole block (the block size, less for the last block)
//! ranges     u32 LE   number of stored ranges, then for each:
//!   start    u32 LE     offset of the range in the block
//!   length   u32 LE     its length
//! checksum   u32 LE   CRC32C of every byte above and of the data
//! data       the ranges' bytes, in order
//! ```
//!
//! A block written whole holds one range `0..block_len`. A random read caches only the bytes it
//! fetched, so a block may hold several ranges: they are sorted, non-empty, within `block_len`,
//! and neither overlap nor touch (touching ranges are merged before encoding).
//!
//! Version 1 had no `block_len` and no range list (the data was always the whole block).
//!
//! Any change to this layout must bump [`FORMAT_VERSION`]; the format test in this module fails
//! otherwise.

use std::ops::Range;

/// Magic bytes at the start of every block file.
pub const MAGIC: &[u8; 8] = b"S3MBLOCK";
/// Version of the layout above.
pub const FORMAT_VERSION: u32 = 2;

/// What identifies a block: the object version and its place in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockId {
    /// Bucket (or any namespace that tells stores apart).
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// Object ETag (a changed object never serves old blocks).
    pub etag: String,
    /// Block index (offset / block size).
    pub index: u64,
}

/// Why a block file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header or than the length it declares.
    #[error("truncated block file")]
    Truncated,
    /// Not a block file.
    #[error("bad magic")]
    BadMagic,
    /// Written by another format version.
    #[error("format version {0}, expected {FORMAT_VERSION}")]
    Version(u32),
    /// Header names another block (hash collision or a misplaced file).
    #[error("header names another block")]
    WrongBlock,
    /// The range list is not sorted, overlaps, or leaves the block.
    #[error("bad range list")]
    BadRanges,
    /// Checksum mismatch.
    #[error("checksum mismatch")]
    Checksum,
    /// Longer than the length it declares.
    #[error("trailing bytes after the data")]
    Trailing,
}

/// A decoded block file: which bytes of the block it holds and where they are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Length of the whole block.
    pub block_len: u32,
    /// Each stored range of the block, with the range of the file buffer that holds its bytes.
    pub ranges: Vec<(Range<u32>, Range<usize>)>,
}

impl Decoded {
    /// Whether the file holds the whole block.
    pub fn is_complete(&self) -> bool {
        match self.ranges.as_slice() {
            [] => self.block_len == 0,
            [(r, _)] => r.start == 0 && r.end == self.block_len,
            _ => false,
        }
    }

    /// Where in the file buffer the block bytes `want` are, if one stored range covers them.
    pub fn find(&self, want: &Range<u32>) -> Option<Range<usize>> {
        self.ranges.iter().find_map(|(r, data)| {
            (r.start <= want.start && want.end <= r.end).then(|| {
                let from = data.start + (want.start - r.start) as usize;
                from..from + (want.end - want.start) as usize
            })
        })
    }
}

/// Encodes a block file holding `pieces` (block offset, bytes) of a block of `block_len` bytes.
/// The pieces must be sorted, disjoint, not touching and within the block (see [`merge`]).
pub fn encode(id: &BlockId, offset: u64, block_len: u32, pieces: &[(u32, &[u8])]) -> Vec<u8> {
    let mut out = encode_header(id, offset, block_len, pieces);
    for (_, data) in pieces {
        out.extend_from_slice(data);
    }
    out
}

/// What [`encode`] writes before the data (the checksum included): a writer that sends the data
/// after it from the pieces themselves saves copying a block.
pub fn encode_header(id: &BlockId, offset: u64, block_len: u32, pieces: &[(u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(72 + id.bucket.len() + id.key.len() + id.etag.len() + 8 * pieces.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for s in [&id.bucket, &id.key, &id.etag] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&id.index.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&block_len.to_le_bytes());
    out.extend_from_slice(&(pieces.len() as u32).to_le_bytes());
    for (start, data) in pieces {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    }
    let mut crc = crc32c::crc32c(&out);
    for (_, data) in pieces {
        crc = crc32c::crc32c_append(crc, data);
    }
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Merges `new` (block offset, bytes) into the sorted pieces `old`; the result is sorted,
/// disjoint and has no two touching pieces. Overlapping bytes come from one object version (the
/// block id names the ETag), so which copy is kept does not matter.
pub fn merge(old: Vec<(u32, Vec<u8>)>, new: (u32, Vec<u8>)) -> Vec<(u32, Vec<u8>)> {
    let mut all = old;
    all.push(new);
    all.sort_by_key(|(start, _)| *start);
    let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
    for (start, data) in all {
        match out.last_mut() {
            Some((s, d)) if *s as usize + d.len() >= start as usize => {
                let at = (start - *s) as usize;
                let end = at + data.len();
                if end > d.len() {
                    d.resize(end, 0);
                }
                d[at..end].copy_from_slice(&data);
            }
            _ => out.push((start, data)),
        }
    }
    out
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| DecodeError::Truncated)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| DecodeError::Truncated)?,
        ))
    }
}

/// Decodes a block file and checks it is the block `id` at `offset`.
pub fn decode(buf: &[u8], id: &BlockId, offset: u64) -> Result<Decoded, DecodeError> {
    let mut c = Cursor { buf, pos: 0 };
    if c.take(8)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = c.u32()?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    for expected in [&id.bucket, &id.key, &id.etag] {
        let len = c.u32()? as usize;
        if c.take(len)? != expected.as_bytes() {
            return Err(DecodeError::WrongBlock);
        }
    }
    if c.u64()? != id.index || c.u64()? != offset {
        return Err(DecodeError::WrongBlock);
    }
    let block_len = c.u32()?;
    let count = c.u32()? as usize;
    let mut ranges = Vec::with_capacity(count.min(1024));
    let mut prev_end: Option<u32> = None;
    for _ in 0..count {
        let start = c.u32()?;
        let len = c.u32()?;
        let end = start.checked_add(len).ok_or(DecodeError::BadRanges)?;
        if len == 0 || end > block_len || prev_end.is_some_and(|p| start <= p) {
            return Err(DecodeError::BadRanges);
        }
        prev_end = Some(end);
        ranges.push(start..end);
    }
    let header_end = c.pos;
    let crc = c.u32()?;
    let mut at = c.pos;
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let len = (r.end - r.start) as usize;
        c.take(len)?;
        out.push((r, at..at + len));
        at += len;
    }
    if c.pos != buf.len() {
        return Err(DecodeError::Trailing);
    }
    let data_start = header_end + 4;
    if crc32c::crc32c_append(crc32c::crc32c(&buf[..header_end]), &buf[data_start..]) != crc {
        return Err(DecodeError::Checksum);
    }
    Ok(Decoded {
        block_len,
        ranges: out,
    })
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// Every format version ever released with the SHA-256 of the fixed block below.
    /// Changing the encoding needs a new version and a new line here, never an edited line.
    const KNOWN_FORMATS: &[(u32, &str)] = &[
        (
            1,
            "67964eef374fc97d413f826be16ecc49270de2d99e3e5cd9c75e322221896925",
        ),
        (
            2,
            "71c8cda4e03a772626d545ae411ce4c7e7a88803c5017d3f8981e8156fbeea2e",
        ),
    ];

    fn fixed() -> (BlockId, u64, Vec<u8>) {
        let id = BlockId {
            bucket: "bkt".into(),
            key: "dir/é file".into(),
            etag: "\"0123abcd\"".into(),
            index: 3,
        };
        (id, 3 * 1024 * 1024, (0..=255u8).collect())
    }

    /// The fixed block as two pieces of a 1 KiB block, so the range list is part of the hash.
    fn fixed_encoding() -> Vec<u8> {
        let (id, offset, data) = fixed();
        encode(&id, offset, 1024, &[(0, &data[..100]), (512, &data[100..])])
    }

    #[test]
    fn on_disk_format_does_not_change_without_a_version_bump() {
        let hash = hex::encode(Sha256::digest(fixed_encoding()));
        let known = KNOWN_FORMATS.iter().find(|(v, _)| *v == FORMAT_VERSION);
        let Some((_, expected)) = known else {
            panic!(
                "FORMAT_VERSION {FORMAT_VERSION} has no entry in KNOWN_FORMATS; add ({FORMAT_VERSION}, \"{hash}\")"
            );
        };
        assert_eq!(
            &hash, expected,
            "the block encoding changed: bump FORMAT_VERSION and add a KNOWN_FORMATS entry, do not edit old ones"
        );
        let mut hashes: Vec<_> = KNOWN_FORMATS.iter().map(|(_, h)| *h).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(
            hashes.len(),
            KNOWN_FORMATS.len(),
            "two versions with one encoding"
        );
    }

    #[test]
    fn a_block_decodes_only_as_itself_and_any_flipped_byte_is_rejected() {
        let (id, offset, data) = fixed();
        let buf = fixed_encoding();
        let decoded = decode(&buf, &id, offset).unwrap();
        assert!(!decoded.is_complete());
        assert_eq!(&buf[decoded.find(&(0..100)).unwrap()], &data[..100]);
        assert_eq!(&buf[decoded.find(&(512..668)).unwrap()], &data[100..]);
        assert_eq!(decoded.find(&(90..110)), None, "a gap is not served");
        let other = BlockId {
            etag: "\"other\"".into(),
            ..id.clone()
        };
        assert_eq!(decode(&buf, &other, offset), Err(DecodeError::WrongBlock));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, &id, offset).is_err(), "flipped byte {i} accepted");
        }
        for cut in 0..buf.len() {
            assert!(
                decode(&buf[..cut], &id, offset).is_err(),
                "truncated to {cut} accepted"
            );
        }
        let whole = encode(&id, offset, 256, &[(0, &data)]);
        assert!(decode(&whole, &id, offset).unwrap().is_complete());
    }

    #[test]
    fn merged_pieces_are_sorted_disjoint_and_hold_every_byte() {
        let merged = merge(vec![(0, vec![1; 10]), (30, vec![2; 10])], (8, vec![3; 4]));
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].0, 0);
        assert_eq!(&merged[0].1[..], &[1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3][..]);
        let merged = merge(merged, (12, vec![4; 18]));
        assert_eq!(merged.len(), 1, "touching pieces join: {merged:?}");
        assert_eq!(merged[0].1.len(), 40);
        assert_eq!(merged[0].1[12..30], [4; 18]);
        assert_eq!(merged[0].1[30..], [2; 10]);
        let covered = merge(vec![(5, vec![9; 5])], (0, vec![9; 20]));
        assert_eq!(covered, vec![(0, vec![9; 20])]);
    }
}
