//! `parti plan` against real `parti worker` processes: the moves it predicts for a joining
//! worker are exactly those the next publish makes, and a hypothetical drain moves exactly the
//! drained worker's partitions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Files, Proc, run, status_until};
use parti::records::read_published;
use parti::store::{BucketSpec, NatsStore, Store};
use parti_testkit::{NatsServer, wait_until};

/// (partition, from, to) of every move of a `plan --json`.
fn planned(out: &common::Output) -> BTreeSet<(String, String, String)> {
    assert_eq!(out.code, Some(0), "{out:?}");
    out.json()["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["partition"].as_str().unwrap().to_owned(),
                m["from"].as_str().unwrap_or("").to_owned(),
                m["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_plan_for_a_join_is_what_the_next_publish_does() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let files = Files::new(30);
    let config = files.config();
    let cfg = Some(config.as_path());

    let out = run(&url, cfg, &["plan"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no Parti cluster"), "{out:?}");

    let workers: Vec<Proc> = (0..3).map(|_| Proc::worker(&url, &files, &[])).collect();
    let mut ids = BTreeSet::new();
    for w in &workers {
        ids.insert(w.id().await);
    }
    let cfg_arg = ["--config", config.to_str().unwrap()];
    status_until(&url, &cfg_arg, "three workers own everything", |s| {
        s["cluster"]["workers"] == 3 && s["cluster"]["ownedPartitions"] == 30
    })
    .await;
    let js = async_nats::jetstream::new(server.client().await.unwrap());
    let bucket = NatsStore::new(js)
        .bucket(&BucketSpec::new("parti-assignment"))
        .await
        .unwrap();
    let before = read_published(&*bucket).await.unwrap();

    // Nothing changes: nothing moves.
    let out = run(&url, cfg, &["plan", "--json"]).await;
    assert_eq!(planned(&out), BTreeSet::new(), "{out:?}");
    assert_eq!(out.json()["steps"], 0);

    // A drain moves exactly the drained worker's partitions, each for that reason.
    let drained = ids.iter().next().unwrap().clone();
    let out = run(&url, cfg, &["plan", "--drain", &drained, "--json"]).await;
    let moves = planned(&out);
    let held: BTreeSet<String> = before
        .map
        .partitions_of(&parti::WorkerId::new(drained.clone()))
        .iter()
        .map(parti::Partition::subject_key)
        .collect();
    assert_eq!(
        moves
            .iter()
            .map(|(p, _, _)| p.clone())
            .collect::<BTreeSet<_>>(),
        held
    );
    assert!(
        out.json()["moves"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["reason"] == format!("drain of {drained}").as_str()),
        "{out:?}"
    );

    // The join of the next worker of the pool: predicted, then done.
    let next = (0..)
        .map(|i| format!("worker-{i}"))
        .find(|id| !ids.contains(id))
        .unwrap();
    let predicted = planned(&run(&url, cfg, &["plan", "--add-worker", &next, "--json"]).await);
    assert!(!predicted.is_empty());
    let joiner = Proc::worker(&url, &files, &[]);
    assert_eq!(joiner.id().await, next);
    wait_until(
        Duration::from_secs(20),
        "the join to be published",
        || async {
            read_published(&*bucket)
                .await
                .is_ok_and(|p| p.map.workers().count() == 4)
        },
    )
    .await
    .unwrap();
    let after = read_published(&*bucket).await.unwrap();
    let before_owners = before.map.owners();
    let done: BTreeSet<(String, String, String)> = after
        .map
        .iter()
        .flat_map(|(to, held)| {
            let before_owners = &before_owners;
            held.iter().filter_map(move |p| {
                let from = before_owners.get(p.keys())?;
                (*from != to).then(|| (p.subject_key(), from.to_string(), to.to_string()))
            })
        })
        .collect();
    assert_eq!(done, predicted, "the publish made other moves than planned");

    // The history shows that publish, each move with its reason (written just after it; the
    // hand-off republishes that follow change no owner and are not recorded).
    let version = before.record.as_ref().map(|(r, _)| r.version).unwrap();
    wait_until(Duration::from_secs(10), "the history entry", || async {
        parti::records::read_history(&*bucket)
            .await
            .is_ok_and(|(h, _)| h.last().is_some_and(|e| e.version > version))
    })
    .await
    .unwrap();
    let out = run(&url, cfg, &["history", "-n", "1", "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let entry = out.json();
    assert_eq!(entry["reason"], "scale_up", "{out:?}");
    let joined = format!("{next} joined");
    let recorded: BTreeSet<(String, String, String)> = entry["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["why"], joined.as_str(), "{m}");
            (
                m["partition"].as_str().unwrap().to_owned(),
                m["from"].as_str().unwrap_or("").to_owned(),
                m["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(recorded, predicted);
    let text = run(&url, cfg, &["history"]).await;
    assert!(
        text.stdout.contains("cold_start") && text.stdout.contains("scale_up"),
        "{text:?}"
    );
    drop(workers);
    drop(joiner);
}
