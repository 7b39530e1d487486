//! One AMQP consumer: its own connection and channel, basic.qos(prefetch) and basic.consume with
//! manual acks. Records end-to-end latency from the publish time in each body and which
//! sequence numbers arrived, and acknowledges every message (or every Nth with `multiple`)
//! without waiting for the ack to reach the socket.

use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use anyhow::{Context, Result};
use futures_core::Stream;
use hdrhistogram::Histogram;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use crate::amqp_load::{self, AmqpShared, CLOSE_TIMEOUT};
use crate::payload_header::SequencedHeader;
use crate::report::latency_histogram_us;
use crate::seq_set::{SeqSet, SEQUENCE_MAX};

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub index: usize,
    pub url: String,
    pub queue: String,
    pub prefetch: u16,
    pub ack_every: u16,
    /// Publishers in the run: the range of publisher indexes a body may carry.
    pub publishers: usize,
}

pub struct ConsumerOutcome {
    pub end_to_end_latency_us: Histogram<u64>,
    /// Per publisher, the sequence numbers this consumer received.
    pub seen_by_publisher: Vec<SeqSet>,
}

/// Consumes until `stop_consuming`. Marks itself ready (even when setup fails, so the run never
/// waits on it) once basic.consume is answered.
pub async fn run(settings: ConsumerSettings, shared: Arc<AmqpShared>) -> Result<ConsumerOutcome> {
    let setup = set_up(&settings).await;
    shared.consumers_ready.fetch_add(1, Ordering::SeqCst);
    let (connection, channel, mut consumer) = setup?;
    let mut stop = shared.stop_consuming.subscribe();

    let mut end_to_end_latency_us = latency_histogram_us();
    let mut seen_by_publisher = vec![SeqSet::default(); settings.publishers];
    let mut unacked: u16 = 0;
    let mut last_delivery_tag = 0;
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            delivery = next_delivery(&mut consumer) => delivery,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                shared.record_error(&shared.consume_errors, format!("consume: {error}"));
                break;
            }
            None => {
                shared.record_error(
                    &shared.consume_errors,
                    "the broker cancelled the consumer".to_string(),
                );
                break;
            }
        };
        record_delivery(
            &delivery,
            &shared,
            &mut end_to_end_latency_us,
            &mut seen_by_publisher,
        );

        last_delivery_tag = delivery.delivery_tag;
        unacked += 1;
        if unacked >= settings.ack_every {
            start_ack(&channel, last_delivery_tag, settings.ack_every > 1, &shared).await;
            unacked = 0;
        }
    }

    if unacked > 0 {
        let ack = channel.basic_ack(last_delivery_tag, BasicAckOptions { multiple: true });
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, ack).await {
            shared.record_error(&shared.ack_errors, format!("basic.ack: {error}"));
        }
    }
    // Closing the connection returns anything delivered but not acknowledged to the queue.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "OK".into())).await;
    Ok(ConsumerOutcome {
        end_to_end_latency_us,
        seen_by_publisher,
    })
}

async fn set_up(settings: &ConsumerSettings) -> Result<(Connection, Channel, Consumer)> {
    let connection = amqp_load::connect(
        &settings.url,
        format!("sluice-bench-consumer-{}", settings.index),
    )
    .await?;
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .context("basic.qos")?;
    let consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            format!("sluice-bench-{}", settings.index).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    Ok((connection, channel, consumer))
}

/// The next delivery; `None` once the consumer is cancelled. Cancel-safe: a delivery is only
/// taken when this resolves.
async fn next_delivery(consumer: &mut Consumer) -> Option<lapin::Result<Delivery>> {
    std::future::poll_fn(|cx| Pin::new(&mut *consumer).poll_next(cx)).await
}

fn record_delivery(
    delivery: &Delivery,
    shared: &AmqpShared,
    end_to_end_latency_us: &mut Histogram<u64>,
    seen_by_publisher: &mut [SeqSet],
) {
    let received_ns = shared.clock.now_ns();
    let header = SequencedHeader::read_from(&delivery.data).filter(|h| {
        h.header.run_id == shared.run_id
            && (h.publisher as usize) < seen_by_publisher.len()
            && h.sequence < SEQUENCE_MAX
    });
    let Some(header) = header else {
        shared.foreign_msgs.fetch_add(1, Ordering::Relaxed);
        return;
    };
    end_to_end_latency_us
        .saturating_record(received_ns.saturating_sub(header.header.sent_ns) / 1000);
    if seen_by_publisher[header.publisher as usize].insert(header.sequence) {
        shared.consumed_first_msgs.fetch_add(1, Ordering::Relaxed);
    }
    shared.consumed_msgs.fetch_add(1, Ordering::Relaxed);
    shared
        .consumed_bytes
        .fetch_add(delivery.data.len() as u64, Ordering::Relaxed);
    shared
        .last_consumed_ns
        .fetch_max(received_ns, Ordering::Relaxed);
}

/// Queues a basic.ack (up to `delivery_tag` when `multiple`) without waiting for the socket.
async fn start_ack(channel: &Channel, delivery_tag: u64, multiple: bool, shared: &AmqpShared) {
    let mut ack = pin!(channel.basic_ack(delivery_tag, BasicAckOptions { multiple }));
    if let Poll::Ready(Err(error)) = amqp_load::poll_once(&mut ack).await {
        shared.record_error(&shared.ack_errors, format!("basic.ack: {error}"));
    }
}
