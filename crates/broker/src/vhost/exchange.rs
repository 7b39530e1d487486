//! Exchanges and how each kind matches a binding against a published message.

use amq_protocol_types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};

use super::message::value_as_str;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(kind: &str) -> Option<ExchangeKind> {
        Some(match kind {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// Where a binding delivers: a queue, or another exchange (exchange.bind).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub source: String,
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

impl Binding {
    /// Whether this binding of an exchange of `kind` takes a message with these routing key and
    /// headers.
    pub fn matches(
        &self,
        kind: ExchangeKind,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> bool {
        match kind {
            ExchangeKind::Fanout => true,
            ExchangeKind::Direct => self.routing_key == routing_key,
            ExchangeKind::Topic => topic_matches(&self.routing_key, routing_key),
            ExchangeKind::Headers => headers_match(&self.arguments, headers),
        }
    }
}

/// AMQP topic matching: words split on '.', `*` is exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    // An empty routing key is zero words, not one empty word.
    let key: &[&str] = if routing_key.is_empty() { &[] } else { &key };
    let pattern: &[&str] = if pattern == [""] { &[] } else { &pattern };
    match_words(pattern, key)
}

/// Dynamic programming over (pattern word, key word), as bit sets: bit `j` of `reachable` says
/// whether the pattern words seen so far can consume exactly the first `j` key words. A `#`
/// sets every bit from the lowest one up; any other word shifts the set by one and keeps the
/// positions whose key word it matches. O(pattern x key / 64) word operations plus one string
/// comparison per distinct pattern word and key word, so an adversarial binding such as
/// `#.a.#.a.#...` cannot make routing exponential (backtracking at every `#` did).
fn match_words(pattern: &[&str], key: &[&str]) -> bool {
    let positions = key.len() + 1;
    let blocks = positions.div_ceil(64);
    let mut reachable = vec![0u64; blocks];
    reachable[0] = 1;
    // Masks of the key positions each pattern word can end at, one per distinct word.
    let mut masks: Vec<(&str, Vec<u64>)> = Vec::new();
    for &word in pattern {
        if word == "#" {
            let Some(first) = lowest_bit(&reachable) else {
                return false;
            };
            for bit in first..positions {
                reachable[bit / 64] |= 1 << (bit % 64);
            }
            continue;
        }
        let mask = match masks.iter().position(|(w, _)| *w == word) {
            Some(index) => &masks[index].1,
            None => {
                let mut mask = vec![0u64; blocks];
                for (index, key_word) in key.iter().enumerate() {
                    if word == "*" || word == *key_word {
                        let bit = index + 1;
                        mask[bit / 64] |= 1 << (bit % 64);
                    }
                }
                masks.push((word, mask));
                &masks[masks.len() - 1].1
            }
        };
        let mut carry = 0;
        let mut any = false;
        for (block, mask) in reachable.iter_mut().zip(mask) {
            let shifted = (*block << 1) | carry;
            carry = *block >> 63;
            *block = shifted & mask;
            any |= *block != 0;
        }
        if !any {
            return false;
        }
    }
    let last = positions - 1;
    reachable[last / 64] & (1 << (last % 64)) != 0
}

fn lowest_bit(bits: &[u64]) -> Option<usize> {
    bits.iter()
        .enumerate()
        .find(|(_, block)| **block != 0)
        .map(|(index, block)| index * 64 + block.trailing_zeros() as usize)
}

/// Headers-exchange matching: `x-match` = all (default) or any (also `all-with-x` /
/// `any-with-x`, which compare `x-` keys too, as RabbitMQ 3.10 does).
pub fn headers_match(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = binding_args
        .inner()
        .get("x-match")
        .and_then(value_as_str)
        .unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    let mut wanted = binding_args
        .inner()
        .iter()
        .filter(|(k, _)| with_x && k.as_str() != "x-match" || !k.as_str().starts_with("x-"));
    let matches_one =
        |(k, v): (&amq_protocol_types::ShortString, &AMQPValue)| match headers.get(k.as_str()) {
            None => false,
            // A void binding value matches the mere presence of the header.
            Some(_) if matches!(v, AMQPValue::Void) => true,
            Some(h) => values_equal(h, v),
        };
    if any {
        wanted.any(matches_one)
    } else {
        wanted.all(matches_one)
    }
}

/// Header equality across AMQP's string and integer encodings (clients differ in which they use).
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (value_as_str(a), value_as_str(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (
        super::message::value_as_i64(a),
        super::message::value_as_i64(b),
    ) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_as_rabbitmq_does() {
        assert!(topic_matches("a.*.c", "a.b.c"));
        assert!(!topic_matches("a.*.c", "a.c"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(!topic_matches("a.#", "b.a"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#", "x.y"));
        assert!(topic_matches("#.c", "c"));
        assert!(topic_matches("a.#.c", "a.c"));
        assert!(topic_matches("a.#.c", "a.b.b.c"));
        assert!(!topic_matches("a.#.c", "a.b.d"));
        assert!(topic_matches("*", "word"));
        assert!(!topic_matches("*", "two.words"));
        assert!(topic_matches("a.b", "a.b"));
        assert!(topic_matches("#.#", "a"));
        assert!(topic_matches("#.*", "a"));
        assert!(!topic_matches("#.*", ""));
        assert!(topic_matches("*.#", "a"));
        assert!(!topic_matches("a.*.#.c", "a.c"));
        assert!(topic_matches("a.*.#.c", "a.b.x.y.c"));
        assert!(!topic_matches("", "a"));
        assert!(topic_matches("", ""));
        assert!(!topic_matches("a", ""));
        assert!(topic_matches("#.a.#", "b.a.c"));
        assert!(!topic_matches("#.a.#", "b.c"));
    }

    /// The backtracking matcher this replaced (correct, exponential): the reference.
    fn match_words_backtracking(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => {
                (0..=key.len()).any(|taken| match_words_backtracking(rest, &key[taken..]))
            }
            Some((&"*", rest)) => !key.is_empty() && match_words_backtracking(rest, &key[1..]),
            Some((word, rest)) => {
                key.first() == Some(word) && match_words_backtracking(rest, &key[1..])
            }
        }
    }

    fn sequences<'a>(alphabet: &[&'a str], length_max: usize) -> Vec<Vec<&'a str>> {
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..length_max {
            last = last
                .iter()
                .flat_map(|s: &Vec<&str>| {
                    alphabet.iter().map(move |w| {
                        let mut next = s.clone();
                        next.push(w);
                        next
                    })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn topic_matching_agrees_with_backtracking_on_every_small_case() {
        let patterns = sequences(&["a", "b", "*", "#"], 5);
        let keys = sequences(&["a", "b", "c"], 5);
        for pattern in &patterns {
            for key in &keys {
                assert_eq!(
                    match_words(pattern, key),
                    match_words_backtracking(pattern, key),
                    "{pattern:?} against {key:?}"
                );
            }
        }
    }

    /// The worst bindings the 255-byte limits allow: `#.a.#.a....c` (127 words) against a
    /// 255-byte key of `a.a...` that fails on its last word. Backtracking took exponential time.
    #[test]
    fn adversarial_topic_patterns_route_in_polynomial_time() {
        let pattern = (0..63).map(|_| "#.a").collect::<Vec<_>>().join(".") + ".c";
        assert!(pattern.len() <= 255, "{}", pattern.len());
        let key = (0..126).map(|_| "a").collect::<Vec<_>>().join(".") + ".b.b";
        assert!(key.len() <= 255, "{}", key.len());
        let pattern_stars = (0..63).map(|_| "#.*").collect::<Vec<_>>().join(".") + ".b.a";
        assert!(pattern_stars.len() <= 255);
        let iterations = 1_000;
        let started = std::time::Instant::now();
        for _ in 0..iterations {
            assert!(!topic_matches(&pattern, &key));
            assert!(!topic_matches(&pattern_stars, &key));
        }
        let average = started.elapsed() / (2 * iterations);
        // Generous for a debug build on a busy machine; microseconds in practice.
        assert!(
            average < std::time::Duration::from_millis(1),
            "{average:?} per route"
        );
    }

    #[test]
    fn headers_match_all_and_any_ignoring_x_keys() {
        let mut args = FieldTable::default();
        args.insert("format".into(), AMQPValue::LongString("pdf".into()));
        args.insert("type".into(), AMQPValue::LongString("report".into()));
        let mut headers = FieldTable::default();
        headers.insert("format".into(), AMQPValue::LongString("pdf".into()));
        assert!(!headers_match(&args, Some(&headers)));
        args.insert("x-match".into(), AMQPValue::LongString("any".into()));
        assert!(headers_match(&args, Some(&headers)));
        assert!(!headers_match(&args, None));
        headers.insert("type".into(), AMQPValue::ShortString("report".into()));
        args.insert("x-match".into(), AMQPValue::LongString("all".into()));
        args.insert("x-ignored".into(), AMQPValue::LongString("zzz".into()));
        assert!(headers_match(&args, Some(&headers)));
    }
}
