//! Measures what write coalescing saves: N idle groups (default 1000) between 3 nodes in one
//! process, heartbeats only, counted in the transport with coalescing on and then off.
//!
//! `cargo run --release -p sluice-cluster --example heartbeat_coalescing -- [groups] [heartbeat_ms] [seconds]`

#[path = "../tests/support/many_groups.rs"]
mod many_groups;

use std::time::Duration;

use sluice_cluster::node::RaftTimings;

fn arg(position: usize, default: u64) -> u64 {
    std::env::args()
        .nth(position)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let groups = arg(1, 1000) as usize;
    let heartbeat_ms = arg(2, 100);
    let seconds = arg(3, 5);
    // Heartbeats set the traffic measured; generous election timeouts keep a loaded machine
    // from turning the idle cluster into an election storm.
    let timings = RaftTimings {
        heartbeat_interval: Duration::from_millis(heartbeat_ms),
        election_timeout_min: Duration::from_millis((heartbeat_ms * 10).max(1000)),
        election_timeout_max: Duration::from_millis((heartbeat_ms * 20).max(2000)),
        ..RaftTimings::default()
    };
    println!("{groups} groups x 3 nodes, heartbeat {heartbeat_ms} ms, {seconds} s windows");
    for coalesce in [true, false] {
        let cluster = many_groups::start(groups, coalesce, timings).await;
        cluster.wait_all_led(Duration::from_secs(120)).await;
        // Let the start-up replication settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let term = cluster.max_term();
        let window = many_groups::measure(&cluster, Duration::from_secs(seconds)).await;
        println!(
            "coalescing {}: {:>8.0} frames/s, {:>8.0} writes/s, {:>5.1} frames/write, {:>8.0} bytes/s, elections during window: {}",
            if coalesce { "on " } else { "off" },
            window.frames_per_second(),
            window.writes_per_second(),
            window.frames as f64 / window.writes.max(1) as f64,
            window.bytes as f64 / window.seconds,
            cluster.max_term() - term,
        );
        cluster.shutdown().await;
    }
}
