//! Gauges that describe state rather than count events: consumer-group lag and members, AMQP
//! queue depths, resource alarms, disk and memory use. The server samples them on a timer
//! (`GaugeSampler::sample`); the offset-commit path refreshes the lag of what it committed
//! (`record_committed_lag`), so a dashboard sees a commit without waiting for the next tick.
//!
//! Label sets come and go (a group is deleted, a queue too). The `metrics` facade cannot remove
//! a series, so a series that disappears is set to 0 once and then left alone. To bound the
//! series count, lag is published for at most `GROUP_LAG_SERIES_MAX` (group, topic, partition)
//! triples; beyond that the rest are skipped with a warning.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use crate::group_coordinator::TopicPartition;
use crate::vhost::VirtualHost;
use crate::Broker;

/// Most (group, topic, partition) lag series published per sample.
pub const GROUP_LAG_SERIES_MAX: usize = 10_000;

type LagKey = (String, String, i32);

/// Remembers the label sets it published, so the ones that vanish are zeroed.
#[derive(Default)]
pub struct GaugeSampler {
    lag_series: HashSet<LagKey>,
    group_series: HashSet<String>,
    /// (vhost, queue) of the queue gauges set last time.
    queue_series: HashSet<(String, String)>,
    lag_capped_warned: bool,
}

impl GaugeSampler {
    pub fn new() -> GaugeSampler {
        GaugeSampler::default()
    }

    /// Sets every sampled gauge. Does file-system calls (statvfs, a walk of the data
    /// directory, /proc): call it from a blocking thread.
    pub fn sample(&mut self, broker: &Broker, vhosts: &[Arc<VirtualHost>]) {
        self.sample_groups(broker);
        self.sample_queues(vhosts);
        // The alarms are the node's: any vhost shows them.
        if let Some(vhost) = vhosts.first() {
            let alarms = vhost.alarms();
            metrics::gauge!("sluice_alarm", "kind" => "memory")
                .set(f64::from(u8::from(alarms.memory)));
            metrics::gauge!("sluice_alarm", "kind" => "disk").set(f64::from(u8::from(alarms.disk)));
        }
        let data_dir = &broker.config().data_dir;
        if let Some(space) = crate::disk_space(data_dir) {
            metrics::gauge!("sluice_disk_free_bytes").set(space.usable_bytes as f64);
        }
        metrics::gauge!("sluice_disk_used_bytes").set(directory_bytes(data_dir) as f64);
        if let Some(resident) = resident_memory_bytes() {
            metrics::gauge!("sluice_process_resident_memory_bytes").set(resident as f64);
        }
    }

    fn sample_groups(&mut self, broker: &Broker) {
        let coordinator = broker.group_coordinator();
        let mut lag_series = HashSet::new();
        let mut group_series = HashSet::new();
        for overview in coordinator.list_groups() {
            let group = overview.group_id;
            let members = coordinator.describe_group(&group).members.len();
            metrics::gauge!("sluice_group_members", "group" => group.clone()).set(members as f64);
            for (partition, committed) in coordinator.fetch_offsets(&group, None) {
                let Some(committed) = committed else { continue };
                if lag_series.len() >= GROUP_LAG_SERIES_MAX {
                    if !self.lag_capped_warned {
                        tracing::warn!(
                            series_max = GROUP_LAG_SERIES_MAX,
                            "more committed group partitions than lag series published: the rest have no sluice_group_lag"
                        );
                        self.lag_capped_warned = true;
                    }
                    break;
                }
                if let Some(lag) = group_lag(broker, &partition, committed.offset) {
                    lag_gauge(&group, &partition.topic, partition.partition).set(lag as f64);
                    lag_series.insert((group.clone(), partition.topic, partition.partition));
                }
            }
            group_series.insert(group);
        }
        for (group, topic, partition) in self.lag_series.difference(&lag_series) {
            lag_gauge(group, topic, *partition).set(0.0);
        }
        for group in self.group_series.difference(&group_series) {
            metrics::gauge!("sluice_group_members", "group" => group.clone()).set(0.0);
        }
        self.lag_series = lag_series;
        self.group_series = group_series;
    }

    fn sample_queues(&mut self, vhosts: &[Arc<VirtualHost>]) {
        let mut queue_series = HashSet::new();
        for vhost in vhosts {
            for queue in vhost.classic_queues() {
                if queue.is_deleted() {
                    continue;
                }
                set_queue_gauges(
                    vhost.vhost_name(),
                    &queue.name,
                    f64::from(queue.message_count()),
                    queue.unacked_count() as f64,
                    f64::from(queue.consumer_count()),
                );
                queue_series.insert((vhost.vhost_name().to_string(), queue.name.clone()));
            }
        }
        for (vhost, name) in self.queue_series.difference(&queue_series) {
            set_queue_gauges(vhost, name, 0.0, 0.0, 0.0);
        }
        self.queue_series = queue_series;
    }
}

/// Sets the lag of partitions a group has just committed (the commit path calls this), so the
/// gauge follows commits between samples.
pub fn record_committed_lag(broker: &Broker, group: &str, committed: &[(TopicPartition, i64)]) {
    for (partition, offset) in committed {
        if let Some(lag) = group_lag(broker, partition, *offset) {
            lag_gauge(group, &partition.topic, partition.partition).set(lag as f64);
        }
    }
}

/// Records between the committed offset and the end of the partition as consumers see it
/// (the high watermark, which Kafka's tools call the log end offset); `None` for a partition
/// that no longer exists.
fn group_lag(broker: &Broker, partition: &TopicPartition, committed: i64) -> Option<i64> {
    let log = broker
        .partition(&partition.topic, partition.partition)
        .ok()?;
    Some((log.high_watermark() - committed).max(0))
}

fn lag_gauge(group: &str, topic: &str, partition: i32) -> metrics::Gauge {
    metrics::gauge!(
        "sluice_group_lag",
        "group" => group.to_string(),
        "topic" => topic.to_string(),
        "partition" => partition.to_string()
    )
}

fn set_queue_gauges(vhost: &str, queue: &str, ready: f64, unacked: f64, consumers: f64) {
    let labels = [("vhost", vhost.to_string()), ("queue", queue.to_string())];
    metrics::gauge!("sluice_queue_messages_ready", &labels).set(ready);
    metrics::gauge!("sluice_queue_messages_unacked", &labels).set(unacked);
    metrics::gauge!("sluice_queue_consumers", &labels).set(consumers);
}

/// Bytes of the files under `dir` (their lengths; sparse files count whole). Entries that
/// vanish during the walk (retention, a deleted topic) are skipped.
fn directory_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if let Ok(metadata) = entry.metadata() {
                total += metadata.len();
            }
        }
    }
    total
}

/// The process's resident set, from /proc/self/statm (Linux); `None` elsewhere.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page_bytes)
        .ok()
        .map(|page| resident_pages * page)
}
