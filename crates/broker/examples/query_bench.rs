//! Message query at scale: appends N messages (default 10,000,000) to a one-partition topic
//! through the broker, then times lookups by key and by message id through
//! `Broker::query_messages`, and reports the key index's size on disk and the append cost.
//!
//! ```sh
//! cargo run --release -p sluice-broker --example query_bench -- [messages] [on|off]
//! ```
//! `QUERY_BENCH_DIR` sets the data directory (default: a temporary one, removed at the end).
//! Record `n` has key `key-{n}`, a `message-id` header `id-{n}` and a 100-byte value; batches
//! of 200 records, as a producer with linger would send them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use rand::Rng;
use sluice_broker::{Broker, BrokerConfig, MessageQuery};
use sluice_log::{Record, RecordBatchBuilder, MESSAGE_ID_HEADER};

const TOPIC: &str = "query-bench";
const BATCH_RECORDS: u64 = 200;
const VALUE_BYTES: usize = 100;
const LOOKUPS: usize = 1000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args.next().map_or(Ok(10_000_000), |a| a.parse())?;
    let key_index = args.next().is_none_or(|a| a != "off");
    let temporary = tempfile::tempdir()?;
    let dir = std::env::var_os("QUERY_BENCH_DIR")
        .map_or_else(|| temporary.path().to_path_buf(), Into::into);
    let runtime = tokio::runtime::Runtime::new()?;
    let _guard = runtime.enter();

    let broker = Broker::open(BrokerConfig::new(dir.clone()))?;
    let overrides = BTreeMap::from([
        ("fsync".to_string(), "never".to_string()),
        (
            "message.key.index.enable".to_string(),
            key_index.to_string(),
        ),
    ]);
    broker.create_topic(TOPIC, 1, overrides, false)?;
    let partition = broker.partition(TOPIC, 0)?;

    let value = vec![b'v'; VALUE_BYTES];
    let mut appending = Duration::ZERO;
    // The slowest append is the one that rolls a segment (and writes its key index).
    let mut append_max = Duration::ZERO;
    let mut append_latencies_us = Vec::with_capacity((messages / BATCH_RECORDS + 1) as usize);
    let started = Instant::now();
    let mut n = 0;
    while n < messages {
        let mut builder = RecordBatchBuilder::new();
        for m in n..(n + BATCH_RECORDS).min(messages) {
            builder.push(Record {
                timestamp: 1_700_000_000_000 + m as i64,
                key: Some(format!("key-{m}").into_bytes()),
                value: Some(value.clone()),
                headers: vec![(
                    MESSAGE_ID_HEADER.to_string(),
                    Some(format!("id-{m}").into_bytes()),
                )],
                ..Default::default()
            });
        }
        let batch = BytesMut::from(&builder.build()[..]);
        let append_started = Instant::now();
        // fsync=never: durable at once, nothing to wait for.
        drop(partition.append_unsequenced(batch)?);
        appending += append_started.elapsed();
        append_max = append_max.max(append_started.elapsed());
        append_latencies_us.push(append_started.elapsed().as_micros() as u64);
        n += BATCH_RECORDS;
    }
    append_latencies_us.sort_unstable();
    let append_percentile_us = |p: f64| {
        append_latencies_us
            .get(((append_latencies_us.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "appended {messages} messages (key index {}) in {:.1} s: {:.0} msgs/s in append, {:.0} msgs/s with batch building, append p50 {} us, p99 {} us, p99.99 {} us, slowest append {} ms",
        if key_index { "on" } else { "off" },
        started.elapsed().as_secs_f64(),
        messages as f64 / appending.as_secs_f64(),
        messages as f64 / started.elapsed().as_secs_f64(),
        append_percentile_us(0.5),
        append_percentile_us(0.99),
        append_percentile_us(0.9999),
        append_max.as_millis(),
    );
    drop(partition);
    broker.shutdown();
    drop(broker);
    report_sizes(&dir)?;

    let reopened = Instant::now();
    let broker = Broker::open(BrokerConfig::new(dir.clone()))?;
    println!(
        "reopened (clean) in {:.2} s",
        reopened.elapsed().as_secs_f64()
    );
    if key_index {
        lookups(&broker, messages, "key", |n| {
            MessageQuery::Key(format!("key-{n}").into_bytes())
        })?;
        lookups(&broker, messages, "message id", |n| {
            MessageQuery::MessageId(format!("id-{n}"))
        })?;
        let missing = Instant::now();
        let found = broker.query_messages(TOPIC, &MessageQuery::Key(b"absent".to_vec()), 10)?;
        println!(
            "absent key: {} found in {} us",
            found.messages.len(),
            missing.elapsed().as_micros()
        );
    }
    Ok(())
}

fn lookups(
    broker: &Broker,
    messages: u64,
    label: &str,
    query: impl Fn(u64) -> MessageQuery,
) -> anyhow::Result<()> {
    let mut rng = rand::thread_rng();
    let mut latencies_us = Vec::with_capacity(LOOKUPS);
    for _ in 0..LOOKUPS {
        let n = rng.gen_range(0..messages);
        let started = Instant::now();
        let found = broker.query_messages(TOPIC, &query(n), 10)?;
        latencies_us.push(started.elapsed().as_micros() as u64);
        if found.messages.len() != 1 || found.messages[0].offset != n as i64 {
            bail!(
                "lookup by {label} of message {n} found {:?}",
                found.messages
            );
        }
    }
    latencies_us.sort_unstable();
    let percentile = |p: f64| latencies_us[((latencies_us.len() - 1) as f64 * p) as usize];
    println!(
        "{LOOKUPS} random lookups by {label}: p50 {} us, p99 {} us, max {} us",
        percentile(0.5),
        percentile(0.99),
        percentile(1.0)
    );
    Ok(())
}

fn report_sizes(dir: &Path) -> anyhow::Result<()> {
    // (log, key index, offset + time index) bytes under `dir`, recursively.
    fn walk(dir: &Path, sizes: &mut [u64; 3]) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, sizes)?;
                continue;
            }
            let bytes = path.metadata()?.len();
            match path.extension().and_then(|e| e.to_str()) {
                Some("log") => sizes[0] += bytes,
                Some("keyindex" | "keyruns") => sizes[1] += bytes,
                Some("index" | "timeindex") => sizes[2] += bytes,
                _ => {}
            }
        }
        Ok(())
    }
    let mut sizes = [0u64; 3];
    walk(dir, &mut sizes)?;
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    println!(
        "on disk: log {:.1} MiB, key index {:.1} MiB ({:.1}% of the log), offset+time index {:.1} MiB",
        mib(sizes[0]),
        mib(sizes[1]),
        100.0 * sizes[1] as f64 / sizes[0].max(1) as f64,
        mib(sizes[2])
    );
    Ok(())
}
