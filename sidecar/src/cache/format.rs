//! The on-disk format of one cached block (version 1).
//!
//! ```text
//! magic      8 bytes  "S3MBLOCK"
//! version    u32 LE   FORMAT_VERSION
//! bucket     u32 LE length, then UTF-8 bytes
//! key        u32 LE length, then UTF-8 bytes
//! etag       u32 LE length, then UTF-8 bytes
//! index      u64 LE   block index in the object
//! offset     u64 LE   byte offset of the block in the object
//! length     u32 LE   data length
//! checksum   u32 LE   CRC32C of every byte above and of the data
//! data       `length` bytes
//! ```
//!
//! Any change to this layout must bump [`FORMAT_VERSION`]; the format test in this module fails
//! otherwise.

/// Magic bytes at the start of every block file.
pub const MAGIC: &[u8; 8] = b"S3MBLOCK";
/// Version of the layout above.
pub const FORMAT_VERSION: u32 = 1;

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
    /// Checksum mismatch.
    #[error("checksum mismatch")]
    Checksum,
    /// Longer than the length it declares.
    #[error("trailing bytes after the data")]
    Trailing,
}

/// Encodes a block file.
pub fn encode(id: &BlockId, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + id.bucket.len() + id.key.len() + id.etag.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for s in [&id.bucket, &id.key, &id.etag] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&id.index.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
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

/// Decodes a block file and checks it is the block `id` at `offset`; returns the data range.
pub fn decode(buf: &[u8], id: &BlockId, offset: u64) -> Result<std::ops::Range<usize>, DecodeError> {
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
    let len = c.u32()? as usize;
    let header_end = c.pos;
    let crc = c.u32()?;
    let data_start = c.pos;
    let data = c.take(len)?;
    if c.pos != buf.len() {
        return Err(DecodeError::Trailing);
    }
    if crc32c::crc32c_append(crc32c::crc32c(&buf[..header_end]), data) != crc {
        return Err(DecodeError::Checksum);
    }
    Ok(data_start..data_start + len)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// Every format version ever released with the SHA-256 of the fixed block below.
    /// Changing the encoding needs a new version and a new line here, never an edited line.
    const KNOWN_FORMATS: &[(u32, &str)] = &[(
        1,
        "67964eef374fc97d413f826be16ecc49270de2d99e3e5cd9c75e322221896925",
    )];

    fn fixed() -> (BlockId, u64, Vec<u8>) {
        let id = BlockId {
            bucket: "bkt".into(),
            key: "dir/é file".into(),
            etag: "\"0123abcd\"".into(),
            index: 3,
        };
        (id, 3 * 1024 * 1024, (0..=255u8).collect())
    }

    #[test]
    fn on_disk_format_does_not_change_without_a_version_bump() {
        let (id, offset, data) = fixed();
        let hash = hex::encode(Sha256::digest(encode(&id, offset, &data)));
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
        let buf = encode(&id, offset, &data);
        let range = decode(&buf, &id, offset).unwrap();
        assert_eq!(&buf[range], &data[..]);
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
    }
}
