//! A custom assignment strategy: every partition of a tenant goes to the same worker (tenant
//! affinity), tenants spread by weight. Plugged in through the `AssignmentStrategy` trait.
//!
//! ```sh
//! cargo run -p parti --example custom_strategy -- nats://127.0.0.1:4222
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use parti::{
    AssignmentMap, AssignmentStrategy, Config, Error, Manager, Partition, WorkerId, source::Static,
};

/// Places whole tenants (the first key of a partition), heaviest first, on the least loaded
/// worker. Pure and deterministic, as the trait requires.
#[derive(Debug, Default)]
pub struct TenantAffinity;

impl AssignmentStrategy for TenantAffinity {
    fn name(&self) -> &str {
        "tenant_affinity"
    }

    fn assign(
        &self,
        workers: &[WorkerId],
        partitions: &[Partition],
        _previous: Option<&AssignmentMap>,
    ) -> parti::Result<AssignmentMap> {
        if workers.is_empty() {
            return Err(Error::Strategy("no workers to assign to".into()));
        }
        parti::partition::check_unique(partitions)?;
        let mut tenants: BTreeMap<&str, Vec<&Partition>> = BTreeMap::new();
        for p in partitions {
            tenants.entry(p.keys()[0].as_str()).or_default().push(p);
        }
        let mut tenants: Vec<_> = tenants.into_iter().collect();
        let weight = |ps: &[&Partition]| ps.iter().map(|p| p.effective_weight()).sum::<u64>();
        tenants.sort_by(|a, b| weight(&b.1).cmp(&weight(&a.1)).then(a.0.cmp(b.0)));

        let mut workers = workers.to_vec();
        workers.sort();
        workers.dedup();
        let mut map = AssignmentMap::with_workers(&workers);
        for (_, parts) in tenants {
            let lightest = workers
                .iter()
                .min_by_key(|w| (map.load(w), (*w).clone()))
                .ok_or_else(|| Error::Strategy("no workers".into()))?
                .clone();
            for p in parts {
                map.push(&lightest, p.clone());
            }
        }
        map.normalize();
        Ok(map)
    }
}

/// Runs one worker with the custom strategy; returns the tenants it was given.
pub async fn run(
    url: &str,
    config: Config,
    run_for: Duration,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let nats = async_nats::connect(url).await?;
    let partitions = ["acme", "globex", "initech", "umbrella"]
        .iter()
        .flat_map(|tenant| (0..4).map(move |i| Partition::new([*tenant, &format!("q{i}")], 100)))
        .collect::<Result<Vec<_>, _>>()?;
    let manager = Manager::builder(async_nats::jetstream::new(nats))
        .config(config)
        .source(Static::new(partitions))
        .strategy(TenantAffinity)
        .start()
        .await?;
    tokio::time::sleep(run_for).await;
    let mut tenants: Vec<String> = manager
        .assignment()
        .partitions
        .iter()
        .map(|p| p.keys()[0].clone())
        .collect();
    tenants.dedup();
    println!("{} serves tenants {:?}", manager.worker_id(), tenants);
    manager.stop().await?;
    Ok(tenants)
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    run(
        &url,
        Config::default().with_env_overrides()?,
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}
