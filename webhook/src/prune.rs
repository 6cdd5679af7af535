//! Reads a JSON document into a `serde_json::Value` that holds only the parts a [`Shape`] names,
//! in one pass over the bytes.
//!
//! Everything else is still parsed and checked exactly as `serde_json::Value` would check it (the
//! same parser, the same number, string, escape and nesting rules), so a document is accepted here
//! exactly when `serde_json::from_slice::<Value>` accepts it; it is just not kept. Whatever is kept
//! is the very `Value` the full parse would give for that part. A kept key whose value does not
//! have the expected kind (an array where an object was expected, ...) is kept whole.
//!
//! This is what keeps an admission request cheap: the webhook reads a few fields of the pod, but a
//! full `Value` of a pod allocates a node for every one of its strings.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Which parts of a value are kept.
#[derive(Debug)]
pub enum Shape {
    /// The whole value.
    All,
    /// An object of which only the listed keys are kept, each read with its own shape.
    Object(&'static [(&'static str, Shape)]),
    /// An object of which every key is kept: the listed ones read with their own shape, the
    /// others whole.
    Rest(&'static [(&'static str, Shape)]),
    /// Nothing (checked, not kept): for a key of [`Shape::Rest`] to leave out.
    Drop,
    /// An array whose elements have this shape.
    Array(&'static Shape),
}

/// Parses `bytes` keeping what `shape` names. `None` when the bytes are not UTF-8 (then they are
/// not JSON either; the caller's full parse names the error).
pub fn from_slice(bytes: &[u8], shape: &'static Shape) -> Option<serde_json::Result<Value>> {
    // One check of the whole input instead of one per string (serde_json checks every string
    // of a byte slice as it decodes it, but trusts a str).
    let text = std::str::from_utf8(bytes).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    Some(
        Pruned(shape)
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v)),
    )
}

/// The seed reading one value with a shape.
#[derive(Debug, Clone, Copy)]
struct Pruned(&'static Shape);

impl<'de> DeserializeSeed<'de> for Pruned {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Shape::All => serde::Deserialize::deserialize(d),
            Shape::Drop => {
                <Checked as serde::Deserialize>::deserialize(d)?;
                Ok(Value::Null)
            }
            shape => d.deserialize_any(PrunedVisitor(shape)),
        }
    }
}

struct PrunedVisitor(&'static Shape);

impl<'de> Visitor<'de> for PrunedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    // Scalars become what serde_json's own Value visitor makes of them.
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Pruned(self.0).deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        match self.0 {
            Shape::Array(element) => {
                while let Some(v) = seq.next_element_seed(Pruned(element))? {
                    out.push(v);
                }
            }
            _ => {
                while let Some(v) = seq.next_element::<Value>()? {
                    out.push(v);
                }
            }
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        match self.0 {
            Shape::Object(keys) | Shape::Rest(keys) => {
                let rest = matches!(self.0, Shape::Rest(_));
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match keys.iter().find(|(k, _)| *k == key.as_ref()) {
                        Some((_, Shape::Drop)) => {
                            map.next_value::<Checked>()?;
                        }
                        Some((k, shape)) => {
                            let v = map.next_value_seed(Pruned(shape))?;
                            out.insert((*k).to_owned(), v);
                        }
                        None if rest => {
                            let v = map.next_value::<Value>()?;
                            out.insert(key.into_owned(), v);
                        }
                        None => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
            }
            _ => {
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.insert(k, v);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// An object key, borrowed from the input when it has no escapes.
#[derive(serde::Deserialize)]
struct Key<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// A value that is parsed and checked like a `Value` and then dropped. It goes through
/// `deserialize_any`, so numbers and strings are fully decoded and validated: serde's
/// `IgnoredAny` would skip them unchecked and accept documents that a `Value` refuses (a lone
/// surrogate escape, a number out of range).
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_none<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Checked, D::Error> {
        serde::Deserialize::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        // Keys are decoded as strings, like a Value's keys.
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SHAPE: Shape = Shape::Object(&[
        ("a", Shape::All),
        ("b", Shape::Object(&[("x", Shape::All)])),
        ("c", Shape::Array(&Shape::Object(&[("name", Shape::All)]))),
    ]);

    #[test]
    fn keeps_the_named_parts_as_a_full_parse_would() {
        let text = r#"{"a": {"deep": [1, 2.5, -3, "s\u00e9"]}, "b": {"x": null, "y": 1}, "zz": {"big": [1,2,3]},
            "c": [{"name": "one", "image": "i"}, 7, {"other": true}], "a": "last wins"}"#;
        let v = from_slice(text.as_bytes(), &SHAPE).unwrap().unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": "last wins", "b": {"x": null}, "c": [{"name": "one"}, 7, {}]})
        );
        // A kept key of another kind than expected is kept whole.
        let v = from_slice(br#"{"b": [1, {"y": 2}], "c": {"name": 1, "k": 2}}"#, &SHAPE)
            .unwrap()
            .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"b": [1, {"y": 2}], "c": {"name": 1, "k": 2}})
        );
        assert_eq!(
            from_slice(b"[1]", &SHAPE).unwrap().unwrap(),
            serde_json::json!([1])
        );
        assert_eq!(
            from_slice(b"\"s\"", &SHAPE).unwrap().unwrap(),
            serde_json::json!("s")
        );
    }

    #[test]
    fn rest_keeps_every_other_key_whole_and_drop_leaves_one_out() {
        static REST: Shape =
            Shape::Rest(&[("b", Shape::Object(&[("x", Shape::All)])), ("gone", Shape::Drop)]);
        let text =
            r#"{"a": {"deep": [1, "s\u00e9"]}, "b": {"x": 1, "y": 2}, "gone": {"big": [1]}, "z": null}"#;
        assert_eq!(
            from_slice(text.as_bytes(), &REST).unwrap().unwrap(),
            serde_json::json!({"a": {"deep": [1, "s\u{e9}"]}, "b": {"x": 1}, "z": null})
        );
        // A dropped part is still checked.
        assert!(from_slice(br#"{"gone": "\ud800"}"#, &REST).unwrap().is_err());
    }

    #[test]
    fn refuses_exactly_what_a_value_refuses_even_in_dropped_parts() {
        for bad in [
            &br#"{"zz": 1e400}"#[..],
            br#"{"zz": "\ud800"}"#,
            br#"{"zz": {"\ud800": 1}}"#,
            b"{\"zz\": \"\xff\"}",
            b"{\"zz\": \"a\x01\"}",
            br#"{"zz": [1,]}"#,
            br#"{"zz": 1} x"#,
            br#"{"zz": tru}"#,
            br#"{"zz": "\q"}"#,
        ] {
            assert!(serde_json::from_slice::<Value>(bad).is_err());
            assert!(
                from_slice(bad, &SHAPE).is_none_or(|r| r.is_err()),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{{\"zz\": {}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_slice::<Value>(deep.as_bytes()).is_err());
        assert!(from_slice(deep.as_bytes(), &SHAPE).unwrap().is_err());
        let good = br#"{"zz": 1e300, "y": "\ud83d\ude00", "n": 18446744073709551616}"#;
        assert!(serde_json::from_slice::<Value>(good).is_ok());
        assert!(from_slice(good, &SHAPE).unwrap().is_ok());
    }
}
