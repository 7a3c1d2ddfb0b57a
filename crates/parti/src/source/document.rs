//! The stored form of a partition list kept in a KV bucket (see [`NatsKv`](super::NatsKv)).
//!
//! The list lives under one *head* key. Its value is one of:
//!
//! - the document itself, `{"partitions": [{"keys": [...], "weight": N}, ...]}`, as JSON, or
//!   gzip-compressed JSON once the JSON is larger than the compression threshold;
//! - a manifest, `{"chunked": {"generation": "…", "count": N, "bytes": B}}`, when the (compressed)
//!   document is larger than one value may be: the bytes are then split over `N` chunk keys
//!   `<head>.chunk.<generation>.<i>`, written *before* the head points at them, so a reader that
//!   sees the manifest finds its chunks (unless a later edit replaced and removed them: the head
//!   has then moved on, and the reader starts over).
//!
//! Everything here is pure: encoding, decoding and the chunk layout. The I/O is in
//! [`NatsKv`](super::NatsKv).

use std::io::{Read as _, Write as _};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::partition::{Partition, check_unique};

/// The first two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Documents larger than this, stored or decompressed, are refused (a corrupt or hostile value
/// must not exhaust memory): 256 MiB, about six million partitions.
pub(crate) const MAX_DOCUMENT_BYTES: u64 = 256 << 20;

/// Manifests naming more chunks than this are refused (at the default 512 KiB a chunk, far
/// more than [`MAX_DOCUMENT_BYTES`] needs).
const MAX_CHUNKS: u32 = 1 << 16;

/// The JSON document.
#[derive(Serialize)]
struct DocumentRef<'a> {
    partitions: &'a [Partition],
}

/// What a head value holds: exactly one of the two fields. Unknown fields are ignored, so
/// that a later version may add some without breaking older readers.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    partitions: Option<Vec<Partition>>,
    #[serde(default)]
    chunked: Option<Manifest>,
}

/// Where a chunked document is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Names this write's chunk keys, so that two writers never share one.
    pub(crate) generation: String,
    /// Number of chunk keys.
    pub(crate) count: u32,
    /// Total length of the stored (compressed) document, checked when reassembling.
    pub(crate) bytes: u64,
}

#[derive(Serialize)]
struct ManifestHead<'a> {
    chunked: &'a Manifest,
}

/// A decoded head value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// The list was inline.
    Inline(Vec<Partition>),
    /// The list is in chunks.
    Chunked(Manifest),
}

/// How lists are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// JSON longer than this is gzip-compressed.
    pub(crate) compress_above: usize,
    /// A stored document longer than this goes into chunks of this size.
    pub(crate) chunk_bytes: usize,
}

/// What to write for a list: the head value and, for a chunked list, its chunks in order.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The head value.
    pub(crate) head: Bytes,
    /// The manifest and chunk values, when chunked.
    pub(crate) chunks: Option<(Manifest, Vec<Bytes>)>,
}

/// The key of chunk `index` of `generation` under `head_key`.
pub(crate) fn chunk_key(head_key: &str, generation: &str, index: u32) -> String {
    format!("{head_key}.chunk.{generation}.{index}")
}

/// Encodes `partitions` (already checked for duplicates) for `layout`; `generation` names the
/// chunks if there are any.
pub(crate) fn encode(
    partitions: &[Partition],
    layout: Layout,
    generation: &str,
) -> Result<Encoded, String> {
    let json = serde_json::to_vec(&DocumentRef { partitions })
        .map_err(|e| format!("cannot encode the partition list: {e}"))?;
    let stored = if json.len() > layout.compress_above {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json)
            .and_then(|()| gz.finish())
            .map_err(|e| format!("cannot compress the partition list: {e}"))?
    } else {
        json
    };
    if stored.len() <= layout.chunk_bytes {
        return Ok(Encoded {
            head: Bytes::from(stored),
            chunks: None,
        });
    }
    let stored = Bytes::from(stored);
    let chunk_bytes = layout.chunk_bytes.max(1);
    let chunks: Vec<Bytes> = (0..stored.len())
        .step_by(chunk_bytes)
        .map(|at| stored.slice(at..(at + chunk_bytes).min(stored.len())))
        .collect();
    let manifest = Manifest {
        generation: generation.to_owned(),
        count: u32::try_from(chunks.len())
            .map_err(|_| "the partition list needs more than 2^32 chunks".to_owned())?,
        bytes: stored.len() as u64,
    };
    let head = serde_json::to_vec(&ManifestHead { chunked: &manifest })
        .map_err(|e| format!("cannot encode the chunk manifest: {e}"))?;
    Ok(Encoded {
        head: Bytes::from(head),
        chunks: Some((manifest, chunks)),
    })
}

/// Decodes a head value: the inline list (checked for duplicates) or the manifest of a chunked
/// one. The error says what is wrong, for a [`Decode`](crate::Error::Decode) error.
pub(crate) fn decode_head(value: &[u8]) -> Result<Decoded, String> {
    let json = inflate(value)?;
    let head: Head = serde_json::from_slice(&json).map_err(|e| {
        format!(
            "not a partition list ({e}); expected {{\"partitions\": [{{\"keys\": [...], \"weight\": N}}, ...]}}"
        )
    })?;
    match (head.partitions, head.chunked) {
        (Some(partitions), None) => {
            check_unique(&partitions).map_err(|e| e.to_string())?;
            Ok(Decoded::Inline(partitions))
        }
        (None, Some(manifest)) => {
            if manifest.generation.is_empty()
                || !manifest
                    .generation
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "chunk manifest with an invalid generation {:?}",
                    manifest.generation
                ));
            }
            if manifest.count == 0 {
                return Err("chunk manifest with no chunks".into());
            }
            if manifest.bytes > MAX_DOCUMENT_BYTES
                || manifest.count > MAX_CHUNKS
                || u64::from(manifest.count) > manifest.bytes
            {
                return Err(format!(
                    "chunk manifest out of bounds: {} chunks, {} bytes (at most {MAX_CHUNKS} chunks, {MAX_DOCUMENT_BYTES} bytes, no chunk empty)",
                    manifest.count, manifest.bytes
                ));
            }
            Ok(Decoded::Chunked(manifest))
        }
        (Some(_), Some(_)) => Err("both `partitions` and `chunked` are set".into()),
        (None, None) => Err("neither `partitions` nor `chunked` is set".into()),
    }
}

/// Decodes a chunked document from its chunks, in order.
pub(crate) fn decode_chunks(
    manifest: &Manifest,
    chunks: &[Bytes],
) -> Result<Vec<Partition>, String> {
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    if total != manifest.bytes {
        return Err(format!(
            "the chunks of generation {} hold {total} bytes, the manifest says {}",
            manifest.generation, manifest.bytes
        ));
    }
    let mut stored = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for chunk in chunks {
        stored.extend_from_slice(chunk);
    }
    match decode_head(&stored)? {
        Decoded::Inline(partitions) => Ok(partitions),
        Decoded::Chunked(_) => Err("a chunked document holds another manifest".into()),
    }
}

/// The JSON of a stored value: gunzipped when it is gzip, as is otherwise.
fn inflate(value: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    inflate_within(value, MAX_DOCUMENT_BYTES)
}

/// [`inflate`], refusing more than `limit` decompressed bytes (reading stops there: a small
/// value that decompresses to gigabytes costs at most `limit`).
fn inflate_within(value: &[u8], limit: u64) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if !value.starts_with(&GZIP_MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(value));
    }
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(value)
        .take(limit.saturating_add(1))
        .read_to_end(&mut json)
        .map_err(|e| format!("corrupt gzip data: {e}"))?;
    if json.len() as u64 > limit {
        return Err(format!(
            "the decompressed list is larger than {limit} bytes"
        ));
    }
    Ok(std::borrow::Cow::Owned(json))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn list(n: usize) -> Vec<Partition> {
        (0..n)
            .map(|i| Partition::new([format!("tenant-{i}")], (i % 7) as u64 * 10).unwrap())
            .collect()
    }

    const SMALL: Layout = Layout {
        compress_above: 1024,
        chunk_bytes: 4096,
    };

    #[test]
    fn a_small_list_is_inline_json() {
        let parts = list(3);
        let enc = encode(&parts, SMALL, "g").unwrap();
        assert!(enc.chunks.is_none());
        assert!(enc.head.starts_with(b"{\"partitions\":["), "{:?}", enc.head);
        assert_eq!(decode_head(&enc.head).unwrap(), Decoded::Inline(parts));
    }

    #[test]
    fn a_larger_list_is_compressed_inline() {
        let parts = list(200);
        let enc = encode(&parts, SMALL, "g").unwrap();
        assert!(enc.chunks.is_none(), "{} bytes", enc.head.len());
        assert!(enc.head.starts_with(&GZIP_MAGIC));
        assert_eq!(decode_head(&enc.head).unwrap(), Decoded::Inline(parts));
    }

    #[test]
    fn a_list_over_one_value_is_chunked_and_reassembles() {
        let parts = list(20_000);
        let enc = encode(&parts, SMALL, "abc").unwrap();
        let (manifest, chunks) = enc.chunks.unwrap();
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() <= SMALL.chunk_bytes));
        assert_eq!(
            decode_head(&enc.head).unwrap(),
            Decoded::Chunked(manifest.clone())
        );
        assert_eq!(decode_chunks(&manifest, &chunks).unwrap(), parts);
        // A missing chunk is reported, not decoded into a shorter list.
        let err = decode_chunks(&manifest, &chunks[1..]).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
        assert_eq!(chunk_key("partitions", "abc", 2), "partitions.chunk.abc.2");
    }

    #[test]
    fn a_gzip_bomb_is_cut_off_at_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 4 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 16 << 10, "{} bytes", bomb.len());
        let err = inflate_within(&bomb, 1 << 20).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        assert_eq!(inflate_within(&bomb, 4 << 20).unwrap().len(), 4 << 20);
    }

    #[test]
    fn garbage_and_duplicates_are_refused_with_the_reason() {
        for (value, needle) in [
            (&b"not json"[..], "not a partition list"),
            (b"{}", "neither"),
            (
                b"{\"partitions\":[],\"chunked\":{\"generation\":\"g\",\"count\":1,\"bytes\":1}}",
                "both",
            ),
            (
                b"{\"partitions\":[{\"keys\":[\"a\"]},{\"keys\":[\"a\"],\"weight\":2}]}",
                "duplicate",
            ),
            (
                b"{\"partitions\":[{\"keys\":[\"a.b\"]}]}",
                "forbidden character",
            ),
            (
                b"{\"chunked\":{\"generation\":\"../x\",\"count\":1,\"bytes\":1}}",
                "invalid generation",
            ),
            (
                b"{\"chunked\":{\"generation\":\"g\",\"count\":0,\"bytes\":1}}",
                "no chunks",
            ),
            (
                b"{\"chunked\":{\"generation\":\"g\",\"count\":4294967295,\"bytes\":1}}",
                "out of bounds",
            ),
            (
                b"{\"chunked\":{\"generation\":\"g\",\"count\":2,\"bytes\":1}}",
                "out of bounds",
            ),
            (
                b"{\"chunked\":{\"generation\":\"g\",\"count\":1,\"bytes\":1099511627776}}",
                "out of bounds",
            ),
            (&[0x1f, 0x8b, 0, 1, 2][..], "corrupt gzip"),
        ] {
            let err = decode_head(value).unwrap_err();
            assert!(err.contains(needle), "{value:?}: {err}");
        }
    }
}
