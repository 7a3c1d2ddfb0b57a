//! Takes the Go library's keys out of a YAML document while it is deserialised.
//!
//! The derived `Deserialize` impls deny unknown fields, so a key of the Go library that has no
//! field here (`enableTwoPhaseHandoff`, `kvBuckets.handoffTtl`, …) must never reach them. This
//! wrapper sits between `serde_path_to_error` and the YAML deserializer and, in the maps it
//! watches (the document, `kvBuckets`, `assignment`), removes those keys with their values and
//! notes which of our own keys were present. Everything else — values, error messages with their
//! line and column — is the YAML deserializer's own.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

use super::compat;

/// A map of the document that the filter watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    /// The document itself.
    Root,
    /// `kvBuckets`.
    KvBuckets,
    /// `assignment`.
    Assignment,
}

impl Level {
    /// The path prefix of this map's keys.
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Level::Root => "",
            Level::KvBuckets => "kvBuckets.",
            Level::Assignment => "assignment.",
        }
    }

    /// The watched map under `key`, if any.
    fn child(self, key: &str) -> Option<Level> {
        match (self, key) {
            (Level::Root, "kvBuckets") => Some(Level::KvBuckets),
            (Level::Root, "assignment") => Some(Level::Assignment),
            _ => None,
        }
    }
}

/// What the filter saw.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Go keys taken out, by full path (`kvBuckets.handoffTtl`), with their values, in document
    /// order.
    pub(super) go: Vec<(String, serde_yaml_ng::Value)>,
    /// Our keys that were present in a watched map, by full path as written (an alias stays an
    /// alias: `assignment.rebalanceCooldown`).
    pub(super) ours: BTreeSet<String>,
}

/// The deserializer wrapper: intercepts the struct of its level, forwards everything else.
pub(super) struct Filter<'s, D> {
    inner: D,
    level: Level,
    seen: &'s RefCell<Seen>,
}

impl<'s, D> Filter<'s, D> {
    pub(super) fn new(inner: D, level: Level, seen: &'s RefCell<Seen>) -> Self {
        Self { inner, level, seen }
    }
}

/// Forwards `deserialize_*` methods that take only a visitor.
macro_rules! forward {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.inner.$method(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Filter<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_option deserialize_unit
        deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = FilterVisitor {
            inner: visitor,
            level: self.level,
            seen: self.seen,
        };
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// The struct's visitor, handed a filtered map.
struct FilterVisitor<'s, V> {
    inner: V,
    level: Level,
    seen: &'s RefCell<Seen>,
}

/// Forwards `visit_*` methods that take one value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for FilterVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(FilterMap {
            inner: map,
            level: self.level,
            seen: self.seen,
            child: None,
        })
    }

    forward_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String) visit_bytes(&[u8])
        visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(deserializer)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(seq)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(data)
    }
}

/// A map with the Go keys of its level skipped.
struct FilterMap<'s, A> {
    inner: A,
    level: Level,
    seen: &'s RefCell<Seen>,
    /// The watched map the value about to be read is, if any.
    child: Option<Level>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FilterMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let mut seed = seed;
        loop {
            let key = self.inner.next_key_seed(KeySeed {
                inner: seed,
                level: self.level,
            })?;
            match key {
                None => return Ok(None),
                Some(Key::Ours { name, value }) => {
                    self.child = self.level.child(&name);
                    let path = format!("{}{name}", self.level.prefix());
                    self.seen.borrow_mut().ours.insert(path);
                    return Ok(Some(value));
                }
                Some(Key::Go { name, seed: unused }) => {
                    let value: serde_yaml_ng::Value = self.inner.next_value()?;
                    let path = format!("{}{name}", self.level.prefix());
                    self.seen.borrow_mut().go.push((path, value));
                    seed = unused;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.child.take() {
            Some(level) => self.inner.next_value_seed(FilterSeed {
                inner: seed,
                level,
                seen: self.seen,
            }),
            None => self.inner.next_value_seed(seed),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// The value of a watched map, deserialised through a [`Filter`] of its level.
struct FilterSeed<'s, S> {
    inner: S,
    level: Level,
    seen: &'s RefCell<Seen>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for FilterSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner
            .deserialize(Filter::new(deserializer, self.level, self.seen))
    }
}

/// A key read by [`KeySeed`].
enum Key<K, V> {
    /// One of ours, deserialised by the struct's own key seed.
    Ours { name: String, value: V },
    /// A Go key; the struct's key seed is handed back unused for the next key.
    Go { name: String, seed: K },
}

/// Reads a key through the YAML deserializer (so that an unknown key's error carries its
/// position) and hands it to the struct's key seed unless it is a Go key.
struct KeySeed<K> {
    inner: K,
    level: Level,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<K> {
    type Value = Key<K, K::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> KeySeed<K> {
    fn key<E: de::Error>(
        self,
        name: &str,
        ours: impl FnOnce(K) -> Result<K::Value, E>,
    ) -> Result<Key<K, K::Value>, E> {
        if compat::is_go_key(self.level, name) {
            Ok(Key::Go {
                name: name.to_owned(),
                seed: self.inner,
            })
        } else {
            Ok(Key::Ours {
                name: name.to_owned(),
                value: ours(self.inner)?,
            })
        }
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeySeed<K> {
    type Value = Key<K, K::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.key(v, |seed| seed.deserialize(v.into_deserializer()))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.key(v, |seed| seed.deserialize(BorrowedStrDeserializer::new(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.visit_str(&v)
    }
}
