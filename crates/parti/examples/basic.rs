//! A worker that prints its partitions.
//!
//! ```sh
//! nats-server -js &
//! cargo run -p parti --example basic -- nats://127.0.0.1:4222
//! ```
//! Start it several times to watch the partitions spread; stop one with Ctrl-C to watch them
//! come back.

use std::time::Duration;

use parti::{Config, Manager, Partition, source::Static};

/// Runs one worker until Ctrl-C (or for `run_for`), printing every assignment it gets.
/// Returns the number of partitions it held last.
pub async fn run(
    url: &str,
    config: Config,
    run_for: Option<Duration>,
) -> Result<usize, Box<dyn std::error::Error>> {
    let nats = async_nats::connect(url).await?;
    let partitions = (0..32)
        .map(|i| Partition::new(["sensor", &format!("s{i:02}")], 100))
        .collect::<Result<Vec<_>, _>>()?;
    let manager = Manager::builder(async_nats::jetstream::new(nats))
        .config(config)
        .source(Static::new(partitions))
        .start()
        .await?;
    println!(
        "{} started (leader: {})",
        manager.worker_id(),
        manager.is_leader()
    );

    let mut assignment = manager.watch_assignment();
    let deadline = tokio::time::sleep(run_for.unwrap_or(Duration::MAX));
    tokio::pin!(deadline);
    loop {
        let current = assignment.borrow_and_update().clone();
        let keys: Vec<_> = current
            .partitions
            .iter()
            .map(Partition::subject_key)
            .collect();
        println!(
            "v{} {:?}: {}",
            current.version,
            manager.state(),
            keys.join(" ")
        );
        tokio::select! {
            changed = assignment.changed() => changed?,
            _ = tokio::signal::ctrl_c() => break,
            () = &mut deadline => break,
        }
    }
    let held = manager.assignment().partitions.len();
    manager.stop().await?;
    Ok(held)
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let config = Config::default().with_env_overrides()?;
    run(&url, config, None).await?;
    Ok(())
}
