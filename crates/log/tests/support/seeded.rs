//! The seed runner of the simulations (the log's and, included with `#[path]`, the broker's):
//! fixed seeds by default, `SLUICE_SIM_SEEDS=N` for a long run, `SLUICE_SIM_SEED=S` to replay
//! one seed verbosely; a failure names its seed, its last steps and the replay command.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// One seeded run: it panics on a broken invariant and keeps a log of its steps.
pub trait SeededRun {
    fn run(&mut self);
    fn steps(&self) -> &[String];
}

/// Runs the seeds the environment asks for (see the module documentation); `name` and
/// `replay` (the cargo command that runs this test) go into a failure's message.
pub fn run_seeds<S: SeededRun>(
    name: &str,
    replay: &str,
    seeds_default: u64,
    recent_steps: usize,
    simulation: impl Fn(u64, bool) -> S,
) {
    let env_u64 = |key: &str| std::env::var(key).ok().and_then(|s| s.parse::<u64>().ok());
    if let Some(seed) = env_u64("SLUICE_SIM_SEED") {
        run_seed(name, replay, recent_steps, simulation(seed, true), seed);
        return;
    }
    for seed in 0..env_u64("SLUICE_SIM_SEEDS").unwrap_or(seeds_default) {
        run_seed(name, replay, recent_steps, simulation(seed, false), seed);
    }
}

fn run_seed<S: SeededRun>(name: &str, replay: &str, recent_steps: usize, mut run: S, seed: u64) {
    let result = catch_unwind(AssertUnwindSafe(|| run.run()));
    if let Err(panic) = result {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let steps = run.steps();
        let recent = &steps[steps.len().saturating_sub(recent_steps)..];
        panic!(
            "{name} seed {seed} failed after {} steps: {message}\nlast steps:\n  {}\nreplay with SLUICE_SIM_SEED={seed} {replay} -- --nocapture",
            steps.len(),
            recent.join("\n  ")
        );
    }
}
