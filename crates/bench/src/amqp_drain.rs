//! The `amqp-drain` subcommand: one consumer empties an existing queue (a backlog published
//! earlier, for example before a broker restart) and reports how fast. Nothing is declared or
//! deleted, and the payloads are not checked.

use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_core::Stream;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::amqp_load;

pub struct AmqpDrainConfig {
    pub url: String,
    pub queue: String,
    pub prefetch: u16,
    /// Acknowledge every Nth delivery with `multiple`.
    pub ack_every: u16,
    /// The queue counts as drained once no delivery came for this long.
    pub idle_timeout: Duration,
}

/// Messages consumed and how long it took (from the first delivery to the last).
pub struct AmqpDrainReport {
    pub ready_at_start: u32,
    pub consumed_msgs: u64,
    pub consumed_bytes: u64,
    pub elapsed: Duration,
}

impl AmqpDrainReport {
    pub fn print_text(&self) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        println!(
            "  drained {} msgs ({} ready at start) in {:.2} s: {:.0} msgs/s {:.1} MB/s",
            self.consumed_msgs,
            self.ready_at_start,
            secs,
            self.consumed_msgs as f64 / secs,
            self.consumed_bytes as f64 / secs / 1e6
        );
    }
}

pub fn run(config: &AmqpDrainConfig) -> Result<AmqpDrainReport> {
    if config.ack_every == 0 || (config.prefetch != 0 && config.ack_every > config.prefetch) {
        bail!("--ack-every must be between 1 and --prefetch");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(drain(config))
}

async fn drain(config: &AmqpDrainConfig) -> Result<AmqpDrainReport> {
    let connection = amqp_load::connect(&config.url, "sluice-bench-drain".to_string()).await?;
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let ready_at_start = channel
        .queue_declare(
            config.queue.as_str().into(),
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue {} must exist", config.queue))?
        .message_count();
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .context("basic.qos")?;
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            "sluice-bench-drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    let mut consumed_msgs = 0u64;
    let mut consumed_bytes = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut unacked = 0u16;
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx));
        let delivery = match tokio::time::timeout(config.idle_timeout, next).await {
            Err(_) => break,
            Ok(None) => bail!("the broker cancelled the consumer"),
            Ok(Some(delivery)) => delivery.context("consume")?,
        };
        last = Instant::now();
        first.get_or_insert(last);
        consumed_msgs += 1;
        consumed_bytes += delivery.data.len() as u64;
        unacked += 1;
        if unacked >= config.ack_every {
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await
                .context("basic.ack")?;
            unacked = 0;
        }
    }
    let _ = connection.close(200, "OK".into()).await;
    Ok(AmqpDrainReport {
        ready_at_start,
        consumed_msgs,
        consumed_bytes,
        elapsed: first.map_or(Duration::ZERO, |first| last - first),
    })
}
