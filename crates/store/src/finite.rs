//! Finds numbers JSON cannot hold. serde_json writes NaN and the infinities
//! as `null`, which then fails to decode as a number: a record holding one
//! would be written without complaint and make the store unloadable at the
//! next start. [`first_non_finite`] walks a value the way a serializer does
//! and names the first such number, so `encode` can refuse the record.

use std::fmt;

use serde::{Serialize, ser};

/// Where the first non-finite number of `value` is (`improvement.mean`,
/// `window[3].bands[0].improvement.m2`, `parameters[…]`) and what it is.
pub fn first_non_finite<T: Serialize + ?Sized>(value: &T) -> Option<(String, f64)> {
    match value.serialize(&mut Walk) {
        Err(Found::NonFinite { path, number }) => Some((path, number)),
        // Anything else is for the real serializer to report.
        Ok(()) | Err(Found::Other) => None,
    }
}

#[derive(Debug)]
enum Found {
    NonFinite { path: String, number: f64 },
    Other,
}

impl Found {
    /// Prefixes the path with the field or index it was found under.
    fn under(self, segment: &str) -> Self {
        match self {
            Found::NonFinite { path, number } => {
                let path = if path.is_empty() || path.starts_with('[') {
                    format!("{segment}{path}")
                } else {
                    format!("{segment}.{path}")
                };
                Found::NonFinite { path, number }
            }
            other => other,
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::NonFinite { path, number } => write!(f, "{path} is {number}"),
            Found::Other => f.write_str("not serializable"),
        }
    }
}

impl std::error::Error for Found {}

impl ser::Error for Found {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Found::Other
    }
}

fn number(value: f64) -> Result<(), Found> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Found::NonFinite {
            path: String::new(),
            number: value,
        })
    }
}

/// A serializer that writes nothing and stops at the first non-finite
/// number.
struct Walk;

/// A sequence, tuple or map being walked, counting its elements.
struct Elements<'a> {
    walk: &'a mut Walk,
    index: usize,
}

impl Elements<'_> {
    fn next<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
        let index = self.index;
        self.index += 1;
        value
            .serialize(&mut *self.walk)
            .map_err(|e| e.under(&format!("[{index}]")))
    }
}

impl<'a> ser::Serializer for &'a mut Walk {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Elements<'a>;
    type SerializeTuple = Elements<'a>;
    type SerializeTupleStruct = Elements<'a>;
    type SerializeTupleVariant = Elements<'a>;
    type SerializeMap = Elements<'a>;
    type SerializeStruct = &'a mut Walk;
    type SerializeStructVariant = &'a mut Walk;

    fn serialize_bool(self, _: bool) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_f32(self, value: f32) -> Result<(), Found> {
        number(f64::from(value))
    }
    fn serialize_f64(self, value: f64) -> Result<(), Found> {
        number(value)
    }
    fn serialize_char(self, _: char) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Found> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        value.serialize(self).map_err(|e| e.under(variant))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Elements<'a>, Found> {
        Ok(Elements {
            walk: self,
            index: 0,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Elements<'a>, Found> {
        self.serialize_seq(None)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Elements<'a>, Found> {
        self.serialize_seq(None)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Elements<'a>, Found> {
        self.serialize_seq(None)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Elements<'a>, Found> {
        self.serialize_seq(None)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<&'a mut Walk, Found> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<&'a mut Walk, Found> {
        Ok(self)
    }
}

/// Sequences, tuples and their struct/variant forms: every element is
/// walked the same way.
macro_rules! walk_elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Elements<'_> {
            type Ok = ();
            type Error = Found;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
                self.next(value)
            }
            fn end(self) -> Result<(), Found> {
                Ok(())
            }
        }
    )*};
}

walk_elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Elements<'_> {
    type Ok = ();
    type Error = Found;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Found> {
        // Keys are names; a float key is serde_json's to refuse.
        key.serialize(&mut *self.walk).map_err(|e| e.under("[key]"))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
        value.serialize(&mut *self.walk).map_err(|e| e.under("[…]"))
    }
    fn end(self) -> Result<(), Found> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Walk {
    type Ok = ();
    type Error = Found;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        value.serialize(&mut **self).map_err(|e| e.under(key))
    }
    fn end(self) -> Result<(), Found> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Walk {
    type Ok = ();
    type Error = Found;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        value.serialize(&mut **self).map_err(|e| e.under(key))
    }
    fn end(self) -> Result<(), Found> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::ParamValue;
    use crate::domain::stats::RunningStats;
    use std::collections::BTreeMap;

    #[test]
    fn names_where_the_number_is() {
        let mut stats = RunningStats::default();
        assert_eq!(first_non_finite(&stats), None);
        stats.m2 = f64::INFINITY;
        assert_eq!(first_non_finite(&stats), Some(("m2".into(), f64::INFINITY)));
        let nested = vec![(1u64, Some(vec![RunningStats::default(), stats]))];
        assert_eq!(
            first_non_finite(&nested),
            Some(("[0][1][1].m2".into(), f64::INFINITY))
        );
        let params = BTreeMap::from([("x".to_string(), ParamValue::Number(f64::NAN))]);
        let (path, number) = first_non_finite(&params).unwrap();
        assert!(number.is_nan());
        assert_eq!(path, "[…]");
    }
}
