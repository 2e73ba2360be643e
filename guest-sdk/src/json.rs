//! Decoding JSON text into the types operations declare.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes `text` into `T`, reading a whole number written with a fraction
/// (`5.0`) as the integer it is wherever `T` wants an integer: JSON has one
/// kind of number, and JSON Schema's `integer`, which the host checked the
/// input against, accepts `5.0`. Text that decodes as it is costs nothing
/// more.
pub(crate) fn from_json<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    let first = match serde_json::from_str(text) {
        Ok(decoded) => return Ok(decoded),
        Err(e) => e,
    };
    let Ok(mut value) = serde_json::from_str::<Value>(text) else {
        return Err(first);
    };
    if !whole_numbers_as_integers(&mut value) {
        return Err(first);
    }
    serde_json::from_value(value)
}

/// Rewrites every whole-valued float in `value` that fits an `i64` or a
/// `u64` as that integer; whether it rewrote any.
fn whole_numbers_as_integers(value: &mut Value) -> bool {
    /// 2^64, the first float past `u64::MAX`.
    const TWO_TO_64: f64 = 18_446_744_073_709_551_616.0;
    /// -2^63, `i64::MIN` exactly.
    const MINUS_TWO_TO_63: f64 = -9_223_372_036_854_775_808.0;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() != 0.0 || !(MINUS_TWO_TO_63..TWO_TO_64).contains(&f) {
                return false;
            }
            *value = if f >= 0.0 {
                Value::from(f as u64)
            } else {
                Value::from(f as i64)
            };
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| {
            whole_numbers_as_integers(item) | changed
        }),
        Value::Object(map) => map.values_mut().fold(false, |changed, item| {
            whole_numbers_as_integers(item) | changed
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Count {
        to: u64,
        step: i32,
        scale: f64,
    }

    #[test]
    fn whole_floats_decode_as_integers() {
        let count: Count = from_json(r#"{"to": 1727.0, "step": -2.0, "scale": 1.0}"#).unwrap();
        assert_eq!(
            count,
            Count {
                to: 1727,
                step: -2,
                scale: 1.0
            }
        );
        assert!(from_json::<Count>(r#"{"to": 1.5, "step": 1, "scale": 1}"#).is_err());
        assert!(from_json::<Count>(r#"{"to": 1e30, "step": 1, "scale": 1}"#).is_err());
    }
}
