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

/// Only the schema version of a value: every other field is skipped unparsed.
///
/// Decoding reads the version with this and then the value itself from the same bytes (where
/// `v` is an unknown field, ignored). A `#[serde(flatten)]` wrapper would do it in one pass but
/// buffers the whole value in serde's generic `Content` tree first: several times the
/// allocations, on the hottest path of a large fleet (every follower decodes every `cluster`
/// record, which names every worker).
///
/// Only a JSON object passes: a derived `Deserialize` would also take a struct written as an
/// array (`[1, …]`), which no writer produces.
struct Schema {
    v: u64,
}

impl<'de> serde::Deserialize<'de> for Schema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::{self, IgnoredAny, MapAccess, Visitor};

        #[derive(serde::Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            V,
            #[serde(other)]
            Other,
        }

        struct ObjectWithV;

        impl<'de> Visitor<'de> for ObjectWithV {
            type Value = Schema;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object with a schema version `v`")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Schema, A::Error> {
                let mut v = None;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::V if v.is_some() => return Err(de::Error::duplicate_field("v")),
                        Field::V => v = Some(map.next_value::<u64>()?),
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                v.map(|v| Schema { v })
                    .ok_or_else(|| de::Error::missing_field("v"))
            }
        }

        d.deserialize_map(ObjectWithV)
    }
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
///
/// `T` must accept the schema field `v` as an unknown field: a struct without
/// `#[serde(deny_unknown_fields)]` (every record of this crate is one). Fields `T` does not
/// know — written by a newer version — are skipped, not checked (not even for valid UTF-8);
/// every field `T` reads is checked in full.
pub fn decode<T: DeserializeOwned>(bucket: &str, key: &str, bytes: &[u8]) -> Result<T> {
    check_schema(bucket, key, bytes)?;
    serde_json::from_slice(bytes).map_err(|e| decode_error(bucket, key, e.to_string()))
}

/// Fails unless `bytes` carry the schema version this build writes.
fn check_schema(bucket: &str, key: &str, bytes: &[u8]) -> Result<()> {
    let schema: Schema =
        serde_json::from_slice(bytes).map_err(|e| decode_error(bucket, key, e.to_string()))?;
    if schema.v != SCHEMA_VERSION {
        return Err(decode_error(
            bucket,
            key,
            format!(
                "schema version {} is not supported (expected {SCHEMA_VERSION})",
                schema.v
            ),
        ));
    }
    Ok(())
}

fn decode_error(bucket: &str, key: &str, reason: String) -> Error {
    Error::Decode {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        reason,
    }
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
        assert!(decode::<V>("b", "k", br#"{"v":"1","a":1}"#).is_err());
        assert!(
            decode::<V>("b", "k", br#"{"v":1}"#).is_err(),
            "a missing field"
        );
        assert!(decode::<V>("b", "k", br#"{"v":1,"a":"x"}"#).is_err());
        assert!(
            decode::<V>("b", "k", b"[1,3]").is_err(),
            "an array, not an object"
        );
        assert!(decode::<V>("b", "k", br#"{"v":1,"v":1,"a":3}"#).is_err());
        let e = decode::<V>("bkt", "key", b"{").unwrap_err();
        assert!(e.to_string().contains("bkt/key"), "{e}");
        assert_eq!(
            decode::<V>("b", "k", br#"{"v":1,"a":3}"#).unwrap(),
            V { a: 3 }
        );
    }
}
