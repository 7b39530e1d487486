//! One AMQP publisher: its own connection and channel in confirm mode, publishing to the queue
//! through the default exchange. Publishes are pipelined: each one is handed to lapin without
//! waiting for the socket or the confirm, and a second task awaits the confirms in publish
//! order, recording publish->confirm latency. A semaphore bounds the unconfirmed publishes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::amqp_load::{self, AmqpShared, CLOSE_TIMEOUT};
use crate::payload_header::{PayloadHeader, SequencedHeader};
use crate::report::latency_histogram_us;
use crate::seq_set::SeqSet;

/// Longest a paced publisher sleeps before looking at the clock and the stop flag again.
const PACING_SLEEP_MAX: Duration = Duration::from_millis(1);
/// How often a publisher waiting for an in-flight slot checks the stop flag.
const PERMIT_WAIT: Duration = Duration::from_millis(100);
/// Unpaced publishers yield to the runtime this often, so the confirm task is never starved.
const PUBLISHES_PER_YIELD: u64 = 64;

#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub index: usize,
    pub url: String,
    pub queue: String,
    pub message_bytes: usize,
    pub persistent: bool,
    pub max_in_flight: usize,
    /// This publisher's share of the total rate; 0 means as fast as confirms allow.
    pub rate_msgs_per_sec: f64,
    pub confirm_timeout: Duration,
}

pub struct PublisherOutcome {
    pub confirm_latency_us: Histogram<u64>,
    /// Sequence numbers the broker confirmed with basic.ack.
    pub confirmed: SeqSet,
}

/// What the confirm task has recorded; shared so it survives the task being aborted.
struct ConfirmRecord {
    confirm_latency_us: Histogram<u64>,
    confirmed: SeqSet,
}

type PublishFuture = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// A publish on its way: lapin has its frames; the future resolves to the confirm once they
/// have been written.
enum StartedPublish {
    Writing(PublishFuture),
    Written(lapin::Result<PublisherConfirm>),
}

struct InFlight {
    sequence: u64,
    sent_ns: u64,
    publish: StartedPublish,
    /// Returned to the semaphore when the confirm (or an error) arrives.
    _slot: OwnedSemaphorePermit,
}

/// Publishes until `stop_publishing`, then waits up to the confirm timeout for outstanding
/// confirms. Marks itself ready (even when setup fails, so the run never waits on it) once its
/// channel is in confirm mode.
pub async fn run(settings: PublisherSettings, shared: Arc<AmqpShared>) -> Result<PublisherOutcome> {
    let setup = set_up(&settings).await;
    shared.publishers_ready.fetch_add(1, Ordering::SeqCst);
    let (connection, channel) = setup?;
    let mut start = shared.start_publishing.subscribe();
    let _ = start.wait_for(|start| *start).await;

    let record = Arc::new(Mutex::new(ConfirmRecord {
        confirm_latency_us: latency_histogram_us(),
        confirmed: SeqSet::default(),
    }));
    let slots = Arc::new(Semaphore::new(settings.max_in_flight));
    let (in_flight_tx, in_flight_rx) = mpsc::unbounded_channel();
    let mut confirm_task = tokio::spawn(await_confirms(
        in_flight_rx,
        Arc::clone(&shared),
        Arc::clone(&record),
    ));

    let channel = Arc::new(channel);
    let queue = ShortString::from(settings.queue.as_str());
    let properties =
        BasicProperties::default().with_delivery_mode(if settings.persistent { 2 } else { 1 });
    // Incompressible data is not the point; a fixed pattern behind the header is what most load
    // generators send.
    let mut payload: Vec<u8> = (0..settings.message_bytes)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let started = Instant::now();
    let mut sequence: u64 = 0;

    'publishing: while !shared.stop_publishing.load(Ordering::Relaxed) {
        if settings.rate_msgs_per_sec > 0.0 {
            let due_msgs = (started.elapsed().as_secs_f64() * settings.rate_msgs_per_sec) as u64;
            if sequence >= due_msgs {
                let next_due =
                    Duration::from_secs_f64((sequence + 1) as f64 / settings.rate_msgs_per_sec);
                let wait = next_due
                    .saturating_sub(started.elapsed())
                    .min(PACING_SLEEP_MAX);
                tokio::time::sleep(wait).await;
                continue;
            }
        } else if sequence % PUBLISHES_PER_YIELD == PUBLISHES_PER_YIELD - 1 {
            tokio::task::yield_now().await;
        }

        let slot = loop {
            match tokio::time::timeout(PERMIT_WAIT, Arc::clone(&slots).acquire_owned()).await {
                Ok(slot) => break slot.expect("the in-flight semaphore is never closed"),
                Err(_) if shared.stop_publishing.load(Ordering::Relaxed) => break 'publishing,
                Err(_) => {}
            }
        };
        let sent_ns = shared.clock.now_ns();
        SequencedHeader {
            header: PayloadHeader {
                sent_ns,
                run_id: shared.run_id,
            },
            publisher: settings.index as u32,
            sequence,
        }
        .write_to(&mut payload);
        let publish = start_publish(&channel, &queue, &payload, &properties).await;
        let channel_failed = matches!(publish, StartedPublish::Written(Err(_)));
        shared.published_msgs.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight {
            sequence,
            sent_ns,
            publish,
            _slot: slot,
        };
        sequence += 1;
        if in_flight_tx.send(in_flight).is_err() || channel_failed {
            // The channel is gone: every further publish would fail the same way.
            break;
        }
    }

    drop(in_flight_tx);
    if tokio::time::timeout(settings.confirm_timeout, &mut confirm_task)
        .await
        .is_err()
    {
        confirm_task.abort();
        shared.first_error.record(format!(
            "publisher {}: confirms still outstanding {:?} after the run",
            settings.index, settings.confirm_timeout
        ));
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "OK".into())).await;

    let record = record.lock().expect("confirm record lock poisoned");
    Ok(PublisherOutcome {
        confirm_latency_us: record.confirm_latency_us.clone(),
        confirmed: record.confirmed.clone(),
    })
}

async fn set_up(settings: &PublisherSettings) -> Result<(lapin::Connection, Channel)> {
    let connection = amqp_load::connect(
        &settings.url,
        format!("sluice-bench-publisher-{}", settings.index),
    )
    .await?;
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("confirm.select")?;
    Ok((connection, channel))
}

/// Hands one basic.publish to lapin (its frames are queued on the first poll, in call order,
/// together with the confirm's delivery tag) without waiting for the socket.
async fn start_publish(
    channel: &Arc<Channel>,
    queue: &ShortString,
    payload: &[u8],
    properties: &BasicProperties,
) -> StartedPublish {
    let channel = Arc::clone(channel);
    let queue = queue.clone();
    let payload = payload.to_vec();
    let properties = properties.clone();
    let mut publish: PublishFuture = Box::pin(async move {
        channel
            .basic_publish(
                ShortString::from(""),
                queue,
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
    });
    match amqp_load::poll_once(&mut publish).await {
        Poll::Ready(result) => StartedPublish::Written(result),
        Poll::Pending => StartedPublish::Writing(publish),
    }
}

/// Awaits each publish's confirm in publish order (the order the broker confirms in) and
/// records it.
async fn await_confirms(
    mut in_flight_rx: mpsc::UnboundedReceiver<InFlight>,
    shared: Arc<AmqpShared>,
    record: Arc<Mutex<ConfirmRecord>>,
) {
    while let Some(in_flight) = in_flight_rx.recv().await {
        let written = match in_flight.publish {
            StartedPublish::Writing(publish) => publish.await,
            StartedPublish::Written(result) => result,
        };
        let confirm = match written {
            Ok(confirm) => confirm,
            Err(error) => {
                shared.record_error(&shared.publish_errors, format!("basic.publish: {error}"));
                continue;
            }
        };
        match confirm.await {
            Ok(Confirmation::Ack(_)) => {
                let confirmed_ns = shared.clock.now_ns();
                {
                    let mut record = record.lock().expect("confirm record lock poisoned");
                    record
                        .confirm_latency_us
                        .saturating_record(confirmed_ns.saturating_sub(in_flight.sent_ns) / 1000);
                    record.confirmed.insert(in_flight.sequence);
                }
                shared.confirmed_msgs.fetch_add(1, Ordering::Relaxed);
                shared
                    .last_confirmed_ns
                    .fetch_max(confirmed_ns, Ordering::Relaxed);
            }
            Ok(Confirmation::Nack(_)) => {
                shared.nacked_msgs.fetch_add(1, Ordering::Relaxed);
                shared
                    .first_error
                    .record("broker nacked a publish (basic.nack)".to_string());
            }
            Ok(Confirmation::NotRequested) => shared.record_error(
                &shared.confirm_errors,
                "the channel is not in confirm mode".to_string(),
            ),
            Err(error) => {
                shared.record_error(&shared.confirm_errors, format!("confirm: {error}"));
            }
        }
    }
}
