//! AMQP field tables (arguments, headers) to and from JSON. JSON has no integer widths, so
//! numbers become signed 64-bit integers or doubles, as RabbitMQ's HTTP API does.

use amq_protocol_types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use base64::Engine;
use serde_json::{Map, Number, Value};

use crate::error::ApiError;

/// Nesting deeper than this is refused: the broker's own field-table limit (32) plus margin
/// is never needed by a real argument or header.
const DEPTH_MAX: usize = 16;

pub fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(key, value)| (key.as_str().to_string(), value_to_json(value)))
            .collect(),
    )
}

pub fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let value = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(value).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => bytes_to_json(s.as_bytes()),
        AMQPValue::ByteArray(b) => bytes_to_json(b.as_slice()),
        AMQPValue::FieldArray(array) => {
            Value::Array(array.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::FieldTable(table) => table_to_json(table),
        AMQPValue::Void => Value::Null,
    }
}

/// Text when the bytes are UTF-8, else `{"base64": ...}`.
fn bytes_to_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => {
            let mut object = Map::new();
            object.insert(
                "base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
            Value::Object(object)
        }
    }
}

pub fn json_to_table(object: &Map<String, Value>) -> Result<FieldTable, ApiError> {
    json_to_table_at(object, 0)
}

fn json_to_table_at(object: &Map<String, Value>, depth: usize) -> Result<FieldTable, ApiError> {
    if depth > DEPTH_MAX {
        return Err(ApiError::BadRequest(format!(
            "field table nested deeper than {DEPTH_MAX} levels"
        )));
    }
    let mut table = FieldTable::default();
    for (key, value) in object {
        let name = ShortString::try_new(key.as_str()).map_err(|_| {
            ApiError::BadRequest(format!("field name longer than 255 bytes: '{key:.40}...'"))
        })?;
        table.insert(name, json_to_value(value, depth + 1)?);
    }
    Ok(table)
}

fn json_to_value(value: &Value, depth: usize) -> Result<AMQPValue, ApiError> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(items) => {
            if depth > DEPTH_MAX {
                return Err(ApiError::BadRequest(format!(
                    "field array nested deeper than {DEPTH_MAX} levels"
                )));
            }
            AMQPValue::FieldArray(FieldArray::from(
                items
                    .iter()
                    .map(|item| json_to_value(item, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?,
            ))
        }
        Value::Object(object) => AMQPValue::FieldTable(json_to_table_at(object, depth)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_arguments_round_trip_through_a_field_table() {
        let json = serde_json::json!({
            "x-max-length": 10,
            "x-dead-letter-exchange": "dlx",
            "ratio": 0.5,
            "flag": true,
            "nested": {"list": [1, "two", null]},
        });
        let Value::Object(object) = &json else {
            unreachable!("a literal object")
        };
        let table = json_to_table(object).expect("valid table");
        assert_eq!(
            table.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(10))
        );
        assert_eq!(table_to_json(&table), json);
    }

    #[test]
    fn over_long_names_and_deep_nesting_are_bad_requests() {
        let mut object = Map::new();
        object.insert("k".repeat(256), Value::Bool(true));
        assert!(matches!(
            json_to_table(&object),
            Err(ApiError::BadRequest(_))
        ));
        let mut deep = Value::Bool(true);
        for _ in 0..40 {
            deep = Value::Array(vec![deep]);
        }
        let mut object = Map::new();
        object.insert("deep".into(), deep);
        assert!(matches!(
            json_to_table(&object),
            Err(ApiError::BadRequest(_))
        ));
    }
}
