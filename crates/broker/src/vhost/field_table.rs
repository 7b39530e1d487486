//! A bound on the nesting of AMQP field tables, checked before the bytes reach amq-protocol's
//! parser. That parser is recursive (nom): a table holding a table holding a table... a few
//! thousand levels deep, which fits in one 128 KiB frame, overflows the stack and takes the
//! whole broker down, even from an unauthenticated `connection.start-ok`. This scanner walks
//! the same structure without recursion and only measures it.
//!
//! RabbitMQ (Erlang) documents no such limit; rabbitmq-c stops at 100. We allow 32 levels
//! (the outermost table is level 1, each nested table or array one more): far more than any
//! client sends (RabbitMQ's own `x-death` history is 3 deep), and inside half a tokio worker's
//! 2 MiB stack even in a debug build, where the parser takes about 10 KiB a level (64 levels
//! did not fit in 512 KiB).

/// Deepest nesting of tables and arrays accepted (the outermost table is 1).
pub const FIELD_TABLE_DEPTH_MAX: usize = 32;

/// Why a field table did not pass the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldTableError {
    #[error("field table nested deeper than {FIELD_TABLE_DEPTH_MAX} levels")]
    TooDeep,
    /// Not a well-formed table (truncated, an unknown value type...): the parser will say so.
    #[error("malformed field table")]
    Malformed,
}

/// Scans the field table at the start of `bytes` (its u32 length first) and returns how many
/// bytes it takes, or why it is refused.
pub fn scan_field_table(bytes: &[u8], depth_max: usize) -> Result<usize, FieldTableError> {
    let mut reader = Reader { bytes, at: 0 };
    let length = reader.u32()? as usize;
    let end = reader
        .at
        .checked_add(length)
        .ok_or(FieldTableError::Malformed)?;
    if end > bytes.len() {
        return Err(FieldTableError::Malformed);
    }
    if depth_max == 0 {
        return Err(FieldTableError::TooDeep);
    }
    // (end of the container, whether it is a table: entries have a key before the value).
    let mut open: Vec<(usize, bool)> = vec![(end, true)];
    while let Some(&(end, is_table)) = open.last() {
        if reader.at == end {
            open.pop();
            continue;
        }
        if is_table {
            let key_length = reader.u8()? as usize;
            reader.skip(key_length, end)?;
        }
        let value_end = match reader.u8()? {
            b'V' => reader.at,
            b't' | b'b' | b'B' => reader.at + 1,
            b's' | b'U' | b'u' => reader.at + 2,
            b'I' | b'i' | b'f' => reader.at + 4,
            b'D' => reader.at + 5,
            b'L' | b'l' | b'd' | b'T' => reader.at + 8,
            b'S' | b'x' => {
                let length = reader.u32()? as usize;
                reader.at.saturating_add(length)
            }
            kind @ (b'A' | b'F') => {
                let length = reader.u32()? as usize;
                let nested_end = reader.at.saturating_add(length);
                if nested_end > end {
                    return Err(FieldTableError::Malformed);
                }
                open.push((nested_end, kind == b'F'));
                if open.len() > depth_max {
                    return Err(FieldTableError::TooDeep);
                }
                continue;
            }
            _ => return Err(FieldTableError::Malformed),
        };
        if value_end > end {
            return Err(FieldTableError::Malformed);
        }
        reader.at = value_end;
    }
    Ok(reader.at)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, FieldTableError> {
        let value = *self.bytes.get(self.at).ok_or(FieldTableError::Malformed)?;
        self.at += 1;
        Ok(value)
    }
    fn u32(&mut self) -> Result<u32, FieldTableError> {
        let slice = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or(FieldTableError::Malformed)?;
        self.at += 4;
        Ok(u32::from_be_bytes([slice[0], slice[1], slice[2], slice[3]]))
    }
    fn skip(&mut self, count: usize, end: usize) -> Result<(), FieldTableError> {
        let to = self.at.saturating_add(count);
        if to > end {
            return Err(FieldTableError::Malformed);
        }
        self.at = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol_types::{AMQPValue, FieldArray, FieldTable, LongString};

    /// A table nested `depth` levels deep, tables and arrays alternating (the outermost, level
    /// 1, a table).
    fn nested(depth: usize) -> FieldTable {
        let mut value = AMQPValue::LongString(LongString::from("leaf"));
        for level in (1..=depth).rev() {
            value = if level % 2 == 1 {
                let mut table = FieldTable::default();
                table.insert("n".into(), AMQPValue::LongInt(level as i32));
                table.insert("t".into(), value);
                AMQPValue::FieldTable(table)
            } else {
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true), value]))
            };
        }
        match value {
            AMQPValue::FieldTable(table) => table,
            _ => FieldTable::default(),
        }
    }

    fn depth_of(table: &FieldTable) -> usize {
        1 + table
            .inner()
            .values()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => depth_of(t),
                AMQPValue::FieldArray(a) => array_depth(a),
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    fn array_depth(array: &FieldArray) -> usize {
        1 + array
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => depth_of(t),
                AMQPValue::FieldArray(a) => array_depth(a),
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn scan_measures_what_the_parser_reads() {
        let mut table = FieldTable::default();
        for (key, value) in [
            ("bool", AMQPValue::Boolean(true)),
            ("i8", AMQPValue::ShortShortInt(-1)),
            ("u16", AMQPValue::ShortUInt(7)),
            ("i32", AMQPValue::LongInt(-7)),
            ("i64", AMQPValue::LongLongInt(1 << 40)),
            ("f", AMQPValue::Float(1.5)),
            ("d", AMQPValue::Double(2.5)),
            ("ts", AMQPValue::Timestamp(42)),
            ("s", AMQPValue::LongString(LongString::from("text"))),
            ("bytes", AMQPValue::ByteArray(vec![1u8, 2, 3].into())),
            ("void", AMQPValue::Void),
            (
                "dec",
                AMQPValue::DecimalValue(amq_protocol_types::DecimalValue { scale: 2, value: 5 }),
            ),
        ] {
            table.insert(key.into(), value);
        }
        table.insert("nested".into(), AMQPValue::FieldTable(nested(5)));
        let mut bytes = super::super::message::encode_field_table(&table);
        let length = bytes.len();
        bytes.extend_from_slice(b"trailing");
        assert_eq!(scan_field_table(&bytes, FIELD_TABLE_DEPTH_MAX), Ok(length));
        assert_eq!(
            scan_field_table(&bytes[..length - 1], 64),
            Err(FieldTableError::Malformed)
        );
    }

    #[test]
    fn tables_deeper_than_the_limit_are_refused() {
        let at_limit = nested(FIELD_TABLE_DEPTH_MAX);
        assert_eq!(depth_of(&at_limit), FIELD_TABLE_DEPTH_MAX);
        let bytes = super::super::message::encode_field_table(&at_limit);
        assert_eq!(
            scan_field_table(&bytes, FIELD_TABLE_DEPTH_MAX),
            Ok(bytes.len())
        );
        let too_deep = nested(FIELD_TABLE_DEPTH_MAX + 1);
        let bytes = super::super::message::encode_field_table(&too_deep);
        assert_eq!(
            scan_field_table(&bytes, FIELD_TABLE_DEPTH_MAX),
            Err(FieldTableError::TooDeep)
        );
    }

    /// A table the scan lets through must parse on half a tokio worker's stack in a debug
    /// build.
    #[test]
    fn a_table_at_the_limit_parses_on_a_small_stack() {
        let bytes = super::super::message::encode_field_table(&nested(FIELD_TABLE_DEPTH_MAX));
        let parsed = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || super::super::message::decode_field_table(&bytes).is_some())
            .unwrap()
            .join()
            .unwrap();
        assert!(parsed);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let length = (seed % 64) as usize;
            bytes.extend_from_slice(&(length as u32).to_be_bytes());
            for i in 0..length {
                let byte = (seed >> (i % 8 * 8)) as u8;
                bytes.push(if i % 3 == 0 {
                    b"FAStV"[byte as usize % 5]
                } else {
                    byte % 8
                });
            }
            let _ = scan_field_table(&bytes, 4);
        }
    }
}
