//! Leader election against a real nats-server (SPEC §5.3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parti::WorkerId;
use parti::election::{
    self, ElectionAgent, Elector, LEADER_KEY, LeaderRecord, Leadership, NatsLeaseElection,
};
use parti::store::{Bucket, Entry, NatsStore, Store, StoreError};
use parti_testkit::{BucketHooks, HookedBucket, NatsServer, Write, wait_until};
use tokio::time::Instant;

const BUCKET: &str = "parti-election";
const TTL: Duration = Duration::from_secs(2);

async fn bucket(server: &NatsServer) -> Arc<dyn Bucket> {
    let store = NatsStore::new(async_nats::jetstream::new(server.client().await.unwrap()));
    store
        .bucket(&election::bucket_spec(BUCKET, TTL, 1))
        .await
        .unwrap()
}

fn contender(bucket: Arc<dyn Bucket>, i: usize) -> Elector {
    let agent = NatsLeaseElection::new(
        bucket.clone(),
        WorkerId::new(format!("worker-{i}")),
        format!("instance-{i}"),
        TTL,
    );
    Elector::spawn(Arc::new(agent), Some(bucket))
}

async fn contenders(server: &NatsServer, n: usize) -> Vec<Elector> {
    let mut all = Vec::new();
    for i in 0..n {
        // One connection each, as separate processes would have.
        all.push(contender(bucket(server).await, i));
    }
    all
}

/// Indices and terms of the electors that currently believe they lead.
fn leaders(electors: &[Option<Elector>]) -> Vec<(usize, u64)> {
    electors
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, e.as_ref()?.leadership().borrow().term()?)))
        .collect()
}

async fn one_leader(
    electors: &[Option<Elector>],
    within: Duration,
    what: &str,
) -> ((usize, u64), Duration) {
    let took = wait_until(within, what, || {
        let n = leaders(electors).len();
        async move { n == 1 }
    })
    .await
    .unwrap();
    (leaders(electors)[0], took)
}

#[tokio::test]
async fn ten_contenders_have_exactly_one_leader_at_every_instant() {
    let server = NatsServer::start().await.unwrap();
    let electors: Vec<_> = contenders(&server, 10)
        .await
        .into_iter()
        .map(Some)
        .collect();
    let ((first, term), _) = one_leader(&electors, Duration::from_secs(3), "a first leader").await;

    let observer = bucket(&server).await;
    let record = election::current_leader(&*observer).await.unwrap().unwrap();
    assert_eq!(
        (record.worker.as_str(), record.term),
        (format!("worker-{first}").as_str(), term)
    );

    let start = Instant::now();
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(leaders(&electors), [(first, term)], "sample {samples}");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 100);
    for e in electors.into_iter().flatten() {
        e.stop().await.unwrap();
    }
}

#[tokio::test]
async fn an_aborted_leader_is_replaced_within_ttl_plus_1s_by_a_larger_term() {
    let server = NatsServer::start().await.unwrap();
    let mut electors: Vec<_> = contenders(&server, 3).await.into_iter().map(Some).collect();
    let ((old, old_term), _) =
        one_leader(&electors, Duration::from_secs(3), "a first leader").await;

    electors[old].take().unwrap().abort();
    let ((new, new_term), took) = one_leader(
        &electors,
        TTL + Duration::from_secs(1),
        "a new leader after the crash",
    )
    .await;
    assert_ne!(new, old);
    assert!(
        new_term > old_term,
        "term {new_term} must exceed {old_term}"
    );
    println!("MEASURE election: failover after abort {took:?} (TTL {TTL:?})");
    for e in electors.into_iter().flatten() {
        e.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_released_leader_hands_over_within_1s_by_a_larger_term() {
    let server = NatsServer::start().await.unwrap();
    let mut electors: Vec<_> = contenders(&server, 3).await.into_iter().map(Some).collect();
    let ((old, old_term), _) =
        one_leader(&electors, Duration::from_secs(3), "a first leader").await;

    let stopping = Instant::now();
    let leader = electors[old].take().unwrap();
    let leadership = leader.leadership();
    leader.stop().await.unwrap();
    assert_eq!(
        *leadership.borrow(),
        Leadership::Follower,
        "a stopped leader announces it"
    );
    let ((new, new_term), _) = one_leader(
        &electors,
        Duration::from_secs(1),
        "a new leader after the release",
    )
    .await;
    let took = stopping.elapsed();
    assert_ne!(new, old);
    assert!(
        new_term > old_term,
        "term {new_term} must exceed {old_term}"
    );
    println!("MEASURE election: hand-over after release {took:?}");
    for e in electors.into_iter().flatten() {
        e.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_steps_down_at_once() {
    let server = NatsServer::start().await.unwrap();
    let electors = vec![Some(contender(bucket(&server).await, 0))];
    let ((_, term), _) = one_leader(&electors, Duration::from_secs(3), "a leader").await;

    let intruder = bucket(&server).await;
    intruder
        .put(
            LEADER_KEY,
            Bytes::from_static(br#"{"v":1,"worker":"x","instance":"x","term":1,"acquiredAt":1}"#),
        )
        .await
        .unwrap();
    let elector = electors.into_iter().flatten().next().unwrap();
    let leadership = elector.leadership();
    let took = wait_until(
        TTL / 3 + Duration::from_millis(300),
        "the leader to step down",
        || {
            let follower = *leadership.borrow() == Leadership::Follower;
            async move { follower }
        },
    )
    .await
    .unwrap();
    println!("MEASURE election: overwritten lease noticed after {took:?} (term {term})");
    assert!(!elector.agent().is_leader());
    elector.stop().await.unwrap();
}

/// A bucket that counts its calls, and whose writes fail while `failing` is set, as a store
/// with transient errors would.
type FlakyBucket = HookedBucket<Flaky>;

/// Wraps `inner` with every switch off and every counter at zero.
fn flaky_bucket(inner: Arc<dyn Bucket>) -> Arc<FlakyBucket> {
    Arc::new(HookedBucket::new(inner, Flaky::default()))
}

/// The switches and counters of a [`FlakyBucket`].
#[derive(Debug, Default)]
struct Flaky {
    failing: AtomicBool,
    /// Creates are applied but report a timeout (a lost reply).
    losing_replies: AtomicBool,
    /// Updates are applied but report a timeout (a lost reply).
    losing_updates: AtomicBool,
    /// `create`, `update`, `put` and `delete` calls (a refused create counts: it is a round trip
    /// to the stream's leader all the same).
    writes: AtomicU64,
    gets: AtomicU64,
}

impl BucketHooks for Flaky {
    fn get(&self, _key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        None
    }

    /// Counts a write; fails it while `failing` is set.
    fn before_write(&self, write: Write<'_>) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(write.timeout());
        }
        Ok(())
    }

    fn after_write(&self, write: Write<'_>) -> Result<(), StoreError> {
        let lost = match write.op {
            "create" => self.losing_replies.load(Ordering::SeqCst),
            "update" => self.losing_updates.load(Ordering::SeqCst),
            _ => false,
        };
        if lost {
            return Err(write.timeout());
        }
        Ok(())
    }
}

#[tokio::test]
async fn transient_renewal_errors_are_retried_within_the_lease_and_never_trusted_past_it() {
    let server = NatsServer::start().await.unwrap();
    let flaky = flaky_bucket(bucket(&server).await);
    let agent = Arc::new(NatsLeaseElection::new(
        flaky.clone(),
        "worker-0".into(),
        "i0".into(),
        TTL,
    ));
    let elector = Elector::spawn(agent.clone(), Some(flaky.clone()));
    let mut leadership = elector.leadership();
    leadership.wait_for(Leadership::is_leader).await.unwrap();
    let term = agent.term().unwrap();
    // Let the term be written and one renewal pass, so the failure window starts after a success.
    let renewed_at = wait_for_renewal(&*flaky).await;

    // A failure shorter than the lease: still the leader, same term, no step-down in between.
    flaky.hooks().failing.store(true, Ordering::SeqCst);
    let mut stepped_down = false;
    while renewed_at.elapsed() < TTL / 2 {
        stepped_down |= !leadership.borrow_and_update().is_leader();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flaky.hooks().failing.store(false, Ordering::SeqCst);
    let renewed_again = wait_for_renewal(&*flaky).await;
    assert!(
        !stepped_down,
        "a transient error must not cost the leadership"
    );
    assert_eq!(*elector.leadership().borrow(), Leadership::Leader { term });

    // A failure that outlasts the lease: the leader steps down before the lease would run out.
    flaky.hooks().failing.store(true, Ordering::SeqCst);
    wait_until(TTL, "the leader to step down within its lease", || {
        let follower = !leadership.borrow().is_leader();
        async move { follower }
    })
    .await
    .unwrap();
    let stepped_after = renewed_again.elapsed();
    assert!(
        stepped_after < TTL,
        "stepped down {stepped_after:?} after the last renewal"
    );
    println!(
        "MEASURE election: stepped down {stepped_after:?} after the last successful renewal (TTL {TTL:?})"
    );
    flaky.hooks().failing.store(false, Ordering::SeqCst);
    elector.stop().await.unwrap();
}

/// Waits until the leader key's revision moves, and returns when that was seen.
async fn wait_for_renewal(bucket: &dyn Bucket) -> Instant {
    let before = bucket.get(LEADER_KEY).await.unwrap().unwrap().revision;
    wait_until(TTL, "a renewal", || async move {
        bucket
            .get(LEADER_KEY)
            .await
            .ok()
            .flatten()
            .is_some_and(|e| e.revision > before)
    })
    .await
    .unwrap();
    Instant::now()
}

#[tokio::test]
async fn one_leader_again_after_a_server_restart() {
    let mut server = NatsServer::start().await.unwrap();
    let electors: Vec<_> = contenders(&server, 3).await.into_iter().map(Some).collect();
    one_leader(&electors, Duration::from_secs(3), "a first leader").await;

    server.restart().await.unwrap();
    let back = Instant::now();
    let observer = bucket(&server).await;
    wait_until(
        Duration::from_secs(5),
        "exactly one leader, matching the leader key",
        || {
            let leaders = leaders(&electors);
            let observer = observer.clone();
            async move {
                let Ok(Some(record)) = election::current_leader(&*observer).await else {
                    return false;
                };
                leaders.len() == 1
                    && record.worker.as_str() == format!("worker-{}", leaders[0].0)
                    && record.term == leaders[0].1
            }
        },
    )
    .await
    .unwrap();
    println!(
        "MEASURE election: one leader again {:?} after the server came back",
        back.elapsed()
    );
    for e in electors.into_iter().flatten() {
        e.stop().await.unwrap();
    }
}

/// A create that landed although its reply was lost wins within the same request: left
/// unclaimed, the seat would keep every contender out (this one included) for a whole TTL.
#[tokio::test]
async fn a_create_whose_reply_was_lost_still_wins_the_lease_in_the_same_request() {
    let server = NatsServer::start().await.unwrap();
    let flaky = flaky_bucket(bucket(&server).await);
    let agent = NatsLeaseElection::new(flaky.clone(), WorkerId::new("worker-0"), "i-0".into(), TTL);
    flaky.hooks().losing_replies.store(true, Ordering::SeqCst);
    let term = agent.request().await.unwrap();
    flaky.hooks().losing_replies.store(false, Ordering::SeqCst);
    let created = flaky.get(LEADER_KEY).await.unwrap().unwrap();
    let record: LeaderRecord =
        parti::store::codec::decode("election", LEADER_KEY, &created.value).unwrap();
    assert!(term.is_some(), "the create landed: the lease is ours");
    assert_eq!(
        term,
        Some(record.term),
        "the term written is the one announced"
    );
    assert!(agent.is_leader());
    assert!(agent.renew().await.unwrap());
    // Another contender still sees a leader.
    let other = NatsLeaseElection::new(flaky.clone(), WorkerId::new("worker-1"), "i-1".into(), TTL);
    assert_eq!(other.request().await.unwrap(), None);
}

/// A create that failed without landing is an error still: nothing of ours is in the key.
#[tokio::test]
async fn a_create_that_failed_is_an_error_and_takes_no_seat() {
    let server = NatsServer::start().await.unwrap();
    let flaky = flaky_bucket(bucket(&server).await);
    let agent = NatsLeaseElection::new(flaky.clone(), WorkerId::new("worker-0"), "i-0".into(), TTL);
    flaky.hooks().failing.store(true, Ordering::SeqCst);
    assert!(agent.request().await.is_err(), "the create failed");
    flaky.hooks().failing.store(false, Ordering::SeqCst);
    assert!(!agent.is_leader());
    assert!(flaky.get(LEADER_KEY).await.unwrap().is_none());
    assert!(
        agent.request().await.unwrap().is_some(),
        "free: the next request wins"
    );
}

#[tokio::test]
async fn a_renewal_that_finds_its_own_earlier_write_writes_again() {
    let server = NatsServer::start().await.unwrap();
    let flaky = flaky_bucket(bucket(&server).await);
    let agent = NatsLeaseElection::new(flaky.clone(), WorkerId::new("worker-0"), "i-0".into(), TTL);
    assert!(agent.request().await.unwrap().is_some());
    // A renewal lands but its reply is lost: the key was renewed then, not later.
    flaky.hooks().losing_updates.store(true, Ordering::SeqCst);
    assert!(agent.renew().await.is_err(), "the reply was lost");
    flaky.hooks().losing_updates.store(false, Ordering::SeqCst);
    let landed = flaky.get(LEADER_KEY).await.unwrap().unwrap().revision;
    // The next renewal conflicts, finds the key still ours, and must renew it from now: a new
    // write (the key's expiry counts from the last write, which the elector's deadline assumes
    // started within this renewal).
    assert!(agent.renew().await.unwrap());
    let now = flaky.get(LEADER_KEY).await.unwrap().unwrap().revision;
    assert!(
        now > landed,
        "no fresh write: revision {now} after {landed}"
    );
    assert!(
        agent.renew().await.unwrap(),
        "and the next renewal goes through as usual"
    );
}

/// `n` contenders, each on its own connection and counting bucket.
async fn counted_contenders(
    server: &NatsServer,
    n: usize,
) -> (Vec<Option<Elector>>, Vec<Arc<FlakyBucket>>) {
    let mut electors = Vec::new();
    let mut counters = Vec::new();
    for i in 0..n {
        let counting = flaky_bucket(bucket(server).await);
        electors.push(Some(contender(counting.clone(), i)));
        counters.push(counting);
    }
    (electors, counters)
}

fn writes(counters: &[Arc<FlakyBucket>]) -> Vec<u64> {
    counters
        .iter()
        .map(|c| c.hooks().writes.load(Ordering::SeqCst))
        .collect()
}

fn gets(counters: &[Arc<FlakyBucket>]) -> Vec<u64> {
    counters
        .iter()
        .map(|c| c.hooks().gets.load(Ordering::SeqCst))
        .collect()
}

/// Each contender's writes since `before`.
fn writes_since(counters: &[Arc<FlakyBucket>], before: &[u64]) -> Vec<u64> {
    writes(counters)
        .iter()
        .zip(before)
        .map(|(now, then)| now - then)
        .collect()
}

/// Steady state costs the leader's renewals and nothing per follower.
///
/// Before followers watched the leader key, each one polled: a refused `create` plus a `get`
/// every TTL/3. Measured with this test: 90 writes in the 6 s window (15/s), of which the
/// leader's renewals were 9 and the 9 followers' refused creates 81 (plus 81 gets) — a load
/// that grew with the number of workers. Now the followers make none.
#[tokio::test]
async fn followers_make_no_election_writes_in_steady_state() {
    const N: usize = 10;
    let server = NatsServer::start().await.unwrap();
    let (electors, counters) = counted_contenders(&server, N).await;
    let ((leader, _), _) = one_leader(&electors, Duration::from_secs(3), "a first leader").await;
    // Let the start-up requests and the term write pass.
    tokio::time::sleep(TTL / 2).await;

    let (writes_before, gets_before) = (writes(&counters), gets(&counters));
    let window = 3 * TTL;
    tokio::time::sleep(window).await;
    let made = writes_since(&counters, &writes_before);
    let read: u64 = gets(&counters)
        .iter()
        .zip(&gets_before)
        .map(|(now, then)| now - then)
        .sum();
    let total: u64 = made.iter().sum();
    let by_leader = made[leader];
    println!(
        "MEASURE election: {N} contenders made {total} election writes in {window:?} \
         ({:.1}/s; leader {by_leader}, followers {}) and {read} gets",
        total as f64 / window.as_secs_f64(),
        total - by_leader,
    );
    // One renewal every TTL/3.
    let renewals = (window.as_millis() / (TTL / 3).as_millis()) as u64;
    assert!(
        (renewals - 1..=renewals + 1).contains(&by_leader),
        "the leader renewed {by_leader} times, expected ~{renewals}"
    );
    assert!(
        total <= by_leader + 2,
        "followers wrote {made:?} (leader {leader}): they must not poll"
    );
    assert_eq!(leaders(&electors).len(), 1);
    for e in electors.into_iter().flatten() {
        e.stop().await.unwrap();
    }
}

/// For one TTL, asserts that no follower of `leader` (index, term) writes; then aborts the
/// leader and waits for a new one with a higher term. Returns the new leader, how long the
/// failover took and the writes each contender made during it.
async fn quiet_then_failover(
    electors: &mut [Option<Elector>],
    counters: &[Arc<FlakyBucket>],
    (old, old_term): (usize, u64),
) -> (usize, Duration, Vec<u64>) {
    let quiet_from = writes(counters);
    tokio::time::sleep(TTL).await;
    let made = writes_since(counters, &quiet_from);
    for (i, n) in made.iter().enumerate() {
        if i != old {
            assert_eq!(*n, 0, "follower {i} wrote while the leader lived: {made:?}");
        }
    }
    let before_abort = writes(counters);
    electors[old].take().unwrap().abort();
    let ((new, new_term), took) = one_leader(
        electors,
        TTL + Duration::from_secs(1),
        "a new leader after the crash",
    )
    .await;
    assert_ne!(new, old);
    assert!(
        new_term > old_term,
        "term {new_term} must exceed {old_term}"
    );
    (new, took, writes_since(counters, &before_abort))
}

/// Failover driven by the watch alone: no follower writes while the leader lives, and the
/// expiry of the aborted leader's key is what sets them contending.
#[tokio::test]
async fn an_aborted_leader_is_replaced_through_the_watch_within_ttl_plus_1s() {
    let server = NatsServer::start().await.unwrap();
    let (mut electors, counters) = counted_contenders(&server, 3).await;
    let ((old, old_term), _) =
        one_leader(&electors, Duration::from_secs(3), "a first leader").await;
    tokio::time::sleep(TTL / 2).await;

    let (new, took, made) = quiet_then_failover(&mut electors, &counters, (old, old_term)).await;
    // Polling every TTL/3 would have made ~3 refused creates per follower by now. A follower
    // contends on the expiry (one create, plus the winner's term write), or at most once more
    // through the staleness safety net.
    for (i, n) in made.iter().enumerate() {
        if i != old && i != new {
            assert!(*n <= 2, "follower {i} wrote {n} times during the failover");
        }
    }
    println!(
        "MEASURE election: failover after abort through the watch {took:?} (TTL {TTL:?}; writes {made:?})"
    );
    for e in electors.into_iter().flatten() {
        e.stop().await.unwrap();
    }
}

/// The election bucket's stream is deleted and recreated under the watches: its revisions start
/// again, so the ordered consumers behind the watches sit past the new stream's end and go
/// quiet. Leadership still converges (the leader's renewal is refused, it contends again), and
/// the followers notice their quiet watches, reopen them and stop writing again.
#[tokio::test]
async fn leadership_converges_and_watches_recover_after_the_stream_is_recreated() {
    let server = NatsServer::start().await.unwrap();
    let (electors, counters) = counted_contenders(&server, 3).await;
    one_leader(&electors, Duration::from_secs(3), "a first leader").await;
    tokio::time::sleep(TTL / 2).await;

    let js = async_nats::jetstream::new(server.client().await.unwrap());
    js.delete_key_value(BUCKET).await.unwrap();
    let observer = bucket(&server).await;
    let recreated = Instant::now();
    let converged = wait_until(
        3 * TTL,
        "exactly one leader, matching the leader key of the new bucket",
        || {
            let leaders = leaders(&electors);
            let observer = observer.clone();
            async move {
                let Ok(Some(record)) = election::current_leader(&*observer).await else {
                    return false;
                };
                leaders.len() == 1
                    && record.worker.as_str() == format!("worker-{}", leaders[0].0)
                    && record.term == leaders[0].1
            }
        },
    )
    .await
    .unwrap();

    // Within two TTLs every follower has noticed a quiet watch (if its watch went quiet) and
    // reopened it; after that, steady state again: only the leader writes.
    tokio::time::sleep((2 * TTL).saturating_sub(recreated.elapsed()) + TTL / 2).await;
    let before = writes(&counters);
    tokio::time::sleep(TTL).await;
    let made = writes_since(&counters, &before);
    let leaders_now = leaders(&electors);
    assert_eq!(leaders_now.len(), 1, "{leaders_now:?}");
    let leader = leaders_now[0].0;
    for (i, n) in made.iter().enumerate() {
        if i != leader {
            assert_eq!(*n, 0, "follower {i} still writes: {made:?}");
        }
    }
    println!(
        "MEASURE election: one leader {converged:?} after the stream was recreated; steady writes {made:?}"
    );
    for e in electors.into_iter().flatten() {
        e.stop().await.unwrap();
    }
}

/// After a server restart the watches resume (the client recreates their consumers on
/// reconnect): followers stop writing again, and a later crash of the leader is still noticed
/// through them.
#[tokio::test]
async fn watches_resume_after_a_server_restart() {
    let mut server = NatsServer::start().await.unwrap();
    let (mut electors, counters) = counted_contenders(&server, 3).await;
    one_leader(&electors, Duration::from_secs(3), "a first leader").await;
    // Let every watch open and sync first.
    tokio::time::sleep(TTL / 2).await;

    server.restart().await.unwrap();
    let observer = bucket(&server).await;
    let converged = wait_until(
        Duration::from_secs(5),
        "exactly one leader, matching the leader key",
        || {
            let leaders = leaders(&electors);
            let observer = observer.clone();
            async move {
                let Ok(Some(record)) = election::current_leader(&*observer).await else {
                    return false;
                };
                leaders.len() == 1
                    && record.worker.as_str() == format!("worker-{}", leaders[0].0)
                    && record.term == leaders[0].1
            }
        },
    )
    .await
    .unwrap();

    // Give every client time to reconnect and every watch to see a renewal again.
    tokio::time::sleep(TTL).await;
    let leader = leaders(&electors)[0];
    let (_, took, made) = quiet_then_failover(&mut electors, &counters, leader).await;
    println!(
        "MEASURE election: one leader {converged:?} after the restart; failover after abort \
         {took:?} (writes {made:?})"
    );
    for e in electors.into_iter().flatten() {
        e.stop().await.unwrap();
    }
}
