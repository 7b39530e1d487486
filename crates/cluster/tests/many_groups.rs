//! Hundreds of idle groups between three nodes: heartbeats flow through the shared connections
//! and leave in coalesced writes.

#[path = "support/many_groups.rs"]
mod many_groups;

use std::time::Duration;

use sluice_cluster::node::RaftTimings;

// Slow timers: the test runs unoptimised on a shared, often overloaded machine, where 3000 Raft
// instances with 100 ms heartbeats would starve; the release-mode measurement with the default
// timers is `examples/heartbeat_coalescing.rs`.
fn timings() -> RaftTimings {
    RaftTimings {
        heartbeat_interval: Duration::from_millis(1000),
        election_timeout_min: Duration::from_millis(5000),
        election_timeout_max: Duration::from_millis(8000),
        ..RaftTimings::default()
    }
}

// 300 groups (900 Raft instances) by default: enough for many heartbeats to share each write,
// few enough that an unoptimised build on a loaded 2-core CI machine keeps its timers. The
// 1,000-group figure comes from the release example; SLUICE_MANY_GROUPS=1000 runs it here too.
fn groups() -> usize {
    std::env::var("SLUICE_MANY_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_heartbeat_through_coalesced_writes() {
    let started = std::time::Instant::now();
    let cluster = many_groups::start(groups(), true, timings()).await;
    println!("started in {:?}", started.elapsed());
    cluster.wait_all_led(Duration::from_secs(60)).await;
    println!("all led after {:?}", started.elapsed());
    let term_before = cluster.max_term();
    let window = many_groups::measure(&cluster, Duration::from_secs(2)).await;
    println!(
        "{} groups, heartbeat 1 s, coalesced: {:.0} frames/s in {:.0} writes/s ({:.1} frames per write, {} bytes)",
        groups(),
        window.frames_per_second(),
        window.writes_per_second(),
        window.frames as f64 / window.writes.max(1) as f64,
        window.bytes
    );
    // Each leader heartbeats 2 followers once a second, each answered: 4 frames/s per group.
    // Allow for a starved machine, but the heartbeats must flow.
    assert!(window.frames_per_second() > groups() as f64, "{window:?}");
    // How many frames share a write depends on how the groups' timers line up and on load
    // (1,000 groups in release: ~14 per write); without coalescing it is exactly one.
    assert!(
        window.writes * 3 <= window.frames * 2,
        "writes were not coalesced: {window:?}"
    );
    assert_eq!(
        cluster.max_term(),
        term_before,
        "an election happened while idle"
    );
    assert_eq!(cluster.stats().bad_connections, 0);
    cluster.shutdown().await;
    println!("stopped after {:?}", started.elapsed());
}
