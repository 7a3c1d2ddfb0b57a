//! JSON encoding of KV values with a schema version (`"v": 1`).
//!
//! A value that does not parse, or carries another schema version, is a
//! [`Error::Decode`]: callers log it, count it and ignore it, never panic
//! and never take it as valid.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The schema version written into every value.
pub const SCHEMA_VERSION: u64 = 1;

#[derive(Serialize)]
struct Out<'a, T> {
    v: u64,
    #[serde(flatten)]
    value: &'a T,
}

#[derive(serde::Deserialize)]
struct In<T> {
    v: u64,
    #[serde(flatten)]
    value: T,
}

/// Encodes a value as JSON with `"v": 1`.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Beat { ts: u64 }
/// let bytes = parti::store::codec::encode(&Beat { ts: 7 }).unwrap();
/// assert_eq!(&bytes[..], br#"{"v":1,"ts":7}"#);
/// let back: Beat = parti::store::codec::decode("parti-heartbeat", "worker-0", &bytes).unwrap();
/// assert_eq!(back, Beat { ts: 7 });
/// assert!(parti::store::codec::decode::<Beat>("b", "k", b"\xff garbage").is_err());
/// ```
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(&Out {
        v: SCHEMA_VERSION,
        value,
    })
    .map(Bytes::from)
    .map_err(|e| Error::Decode {
        bucket: String::new(),
        key: String::new(),
        reason: format!("cannot encode value: {e}"),
    })
}

/// Decodes a value written by [`encode`]; `bucket` and `key` name it in the error.
pub fn decode<T: DeserializeOwned>(bucket: &str, key: &str, bytes: &[u8]) -> Result<T> {
    let err = |reason: String| Error::Decode {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let parsed: In<T> = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    if parsed.v != SCHEMA_VERSION {
        return Err(err(format!(
            "schema version {} is not supported (expected {SCHEMA_VERSION})",
            parsed.v
        )));
    }
    Ok(parsed.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct V {
        a: u32,
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        assert!(decode::<V>("b", "k", br#"{"v":2,"a":1}"#).is_err());
        assert!(decode::<V>("b", "k", br#"{"a":1}"#).is_err());
        assert!(decode::<V>("b", "k", b"").is_err());
        let e = decode::<V>("bkt", "key", b"{").unwrap_err();
        assert!(e.to_string().contains("bkt/key"), "{e}");
        assert_eq!(
            decode::<V>("b", "k", br#"{"v":1,"a":3}"#).unwrap(),
            V { a: 3 }
        );
    }
}
