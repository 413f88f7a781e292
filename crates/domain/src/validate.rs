//! The rules every input obeys, in one place, each failing with an
//! [`Error::InvalidArgument`] that names the offending field. The gRPC
//! conversions (`api::convert`), certificate identities (`auth`) and the
//! CLI all check names with these functions, so a name accepted anywhere is
//! accepted everywhere.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Longest name (instance id, metric, strategy, context key …).
pub const MAX_NAME_LEN: usize = 128;
/// Longest title.
pub const MAX_TITLE_LEN: usize = 256;
/// Longest attribute value or short string parameter.
pub const MAX_VALUE_LEN: usize = 256;
/// Longest free text.
pub const MAX_TEXT_LEN: usize = 4096;
/// Most entries in a map.
pub const MAX_MAP_ENTRIES: usize = 32;
/// Most items in a list.
pub const MAX_LIST_ITEMS: usize = 32;

/// Shows the start of a rejected value, escaped, in at most 40 characters
/// (plus quotes and an ellipsis), so an error message never echoes a
/// megabyte back — nor 40 characters that each escape to ten.
pub fn preview(value: &str) -> String {
    const MAX: usize = 40;
    let (mut shown, mut width) = (String::new(), 0);
    for c in value.chars() {
        let escaped = c.escape_debug();
        width += escaped.len();
        if width > MAX {
            shown.push('…');
            break;
        }
        shown.extend(escaped);
    }
    format!("\"{shown}\"")
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// A required name: 1 to 128 characters of `[A-Za-z0-9._:-]`.
pub fn name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    // Characters first: a valid name is ASCII, so its byte length is also
    // its length in characters.
    if !value.chars().all(is_name_char) {
        return Err(Error::invalid(
            field,
            format!("may only contain [A-Za-z0-9._:-], got {}", preview(value)),
        ));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "must be at most {MAX_NAME_LEN} characters, got {}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// An optional name: empty, or a valid [`name`].
pub fn optional_name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        Ok(())
    } else {
        name(field, value)
    }
}

/// Text of at most `max` characters without NUL bytes.
pub fn text(field: &str, value: &str, max: usize) -> Result<()> {
    let len = value.chars().count();
    if len > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters, got {len}"),
        ));
    }
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// Bytes of at most `max`.
pub fn max_bytes(field: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} bytes, got {len}"),
        ));
    }
    Ok(())
}

/// Non-empty text of at most `max` characters.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    text(field, value, max)
}

/// A finite number (no NaN, no infinity).
pub fn finite(field: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::invalid(
            field,
            format!("must be a finite number, got {value}"),
        ))
    }
}

/// A finite number within `[min, max]`.
pub fn within(field: &str, value: f64, min: f64, max: f64) -> Result<f64> {
    finite(field, value)?;
    if value < min || value > max {
        return Err(Error::invalid(
            field,
            format!("must be within [{min}, {max}], got {value}"),
        ));
    }
    Ok(value)
}

/// A value in `[0, 1]`.
pub fn unit(field: &str, value: f64) -> Result<f64> {
    within(field, value, 0.0, 1.0)
}

/// At most [`MAX_LIST_ITEMS`] items.
pub fn list_len(field: &str, len: usize) -> Result<()> {
    if len > MAX_LIST_ITEMS {
        return Err(Error::invalid(
            field,
            format!("must have at most {MAX_LIST_ITEMS} items, got {len}"),
        ));
    }
    Ok(())
}

/// At most [`MAX_MAP_ENTRIES`] entries (and at least one if `required`).
pub fn map_len(field: &str, len: usize, required: bool) -> Result<()> {
    if required && len == 0 {
        return Err(Error::invalid(field, "must have at least one entry"));
    }
    if len > MAX_MAP_ENTRIES {
        return Err(Error::invalid(
            field,
            format!("must have at most {MAX_MAP_ENTRIES} entries, got {len}"),
        ));
    }
    Ok(())
}

/// Attributes (context, environment): names as keys, short texts as values.
pub fn attributes<'a>(
    field: &str,
    entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<BTreeMap<String, String>> {
    map_len(field, entries.len(), false)?;
    entries
        .map(|(k, v)| {
            name(&format!("{field} key"), k)?;
            text(&format!("{field}[{k}]"), v, MAX_VALUE_LEN)?;
            Ok((k.clone(), v.clone()))
        })
        .collect()
}

/// A page size: 0 means `default`; more than `max` is refused.
pub fn limit(field: &str, value: u32, default: usize, max: usize) -> Result<usize> {
    match value as usize {
        0 => Ok(default),
        n if n > max => Err(Error::invalid(
            field,
            format!("must be at most {max}, got {n}"),
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn names() {
        assert!(name("f", "us-east-1").is_ok());
        assert!(name("f", "learningVelocity").is_ok());
        assert_eq!(reason(name("f", "")), "f: is required");
        assert!(reason(name("f", "a b")).contains("may only contain"));
        assert!(reason(name("f", &"x".repeat(129))).contains("at most 128"));
        assert!(reason(name("f", "a\0b")).contains("may only contain"));
        assert!(optional_name("f", "").is_ok());
    }

    #[test]
    fn numbers() {
        assert!(unit("v", 0.0).is_ok() && unit("v", 1.0).is_ok());
        assert!(reason(unit("v", 1.5)).contains("within [0, 1]"));
        assert!(reason(unit("v", f64::NAN)).contains("finite"));
        assert!(reason(finite("v", f64::INFINITY)).contains("finite"));
    }

    #[test]
    fn previews_are_short() {
        let msg = reason(name("f", &"é".repeat(10_000)));
        assert!(msg.len() < 200, "{msg}");
        // Each of these escapes to `\u{e0001}`: 40 of them were 400 bytes.
        let msg = reason(name("f", &"\u{e0001}".repeat(100)));
        assert!(msg.len() < 120, "{} bytes: {msg}", msg.len());
        assert!(msg.ends_with("…\""), "{msg}");
        assert_eq!(preview("a b"), "\"a b\"");
        assert_eq!(preview("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn limits() {
        assert_eq!(limit("limit", 0, 10, 100).unwrap(), 10);
        assert_eq!(limit("limit", 7, 10, 100).unwrap(), 7);
        assert!(limit("limit", 101, 10, 100).is_err());
    }
}
