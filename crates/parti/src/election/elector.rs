//! The election loop around an [`ElectionAgent`].
//!
//! Follower: request every `ttl/3`, and at once when a watch on the leader key sees it deleted or
//! expired (hand-over within one poll, not a TTL). Leader: renew every `ttl/3`; a renewal that
//! reports the lease lost means `Follower` at once; a renewal error is retried quickly while the
//! lease, counted from the start of the last successful renewal, has more than a safety margin
//! left; after that the worker steps down, so it never believes it leads past its lease.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{ElectionAgent, LEADER_KEY, Leadership};
use crate::error::Result;
use crate::store::{Bucket, WatchEvent, WatchStream};

/// The shortest request/renew period accepted.
const MIN_PERIOD: Duration = Duration::from_millis(10);
/// The longest pause between retries of a failed renewal.
const MAX_RETRY: Duration = Duration::from_millis(250);

/// Runs the election for one worker in the background.
#[derive(Debug)]
pub struct Elector {
    agent: Arc<dyn ElectionAgent>,
    leadership: watch::Receiver<Leadership>,
    cancel: CancellationToken,
    task: AbortOnDropHandle<Result<()>>,
}

impl Elector {
    /// Starts the loop. With `bucket_for_watch` (the election bucket) a follower reacts to a
    /// vacated leader key at once; without it, it notices at its next poll.
    ///
    /// Dropping the returned value stops the loop without releasing (like [`abort`](Self::abort)).
    pub fn spawn(agent: Arc<dyn ElectionAgent>, bucket_for_watch: Option<Arc<dyn Bucket>>) -> Self {
        let (tx, leadership) = watch::channel(Leadership::Follower);
        let ttl = agent.lease_ttl();
        let period = (ttl / 3).max(MIN_PERIOD);
        let runner = Runner {
            agent: agent.clone(),
            watch: bucket_for_watch.map(LeaderWatch::new),
            tx,
            period,
            lease: ttl.saturating_sub(ttl / 5),
            retry: (period / 4).clamp(MIN_PERIOD, MAX_RETRY),
        };
        let cancel = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(runner.run(cancel.clone())));
        Self {
            agent,
            leadership,
            cancel,
            task,
        }
    }

    /// Whether this worker leads, and under which term.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// The agent the loop drives.
    pub fn agent(&self) -> &Arc<dyn ElectionAgent> {
        &self.agent
    }

    /// Stops the loop and releases the lease if this worker leads (announcing `Follower` first),
    /// so that a follower takes over within one poll.
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "election task failed");
                Ok(())
            }
        }
    }

    /// Stops the loop without releasing, as a crash would: the lease runs out by itself.
    pub fn abort(self) {
        self.task.abort();
    }
}

struct Runner {
    agent: Arc<dyn ElectionAgent>,
    watch: Option<LeaderWatch>,
    tx: watch::Sender<Leadership>,
    period: Duration,
    /// How long a successful request or renewal is trusted: the TTL less a safety margin.
    lease: Duration,
    retry: Duration,
}

impl Runner {
    /// Runs until cancelled; store calls in flight are finished, not dropped, so the agent's view
    /// of the lease stays exact for the final release.
    async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        let mut next_request = Instant::now();
        while let Some((term, since)) = self.follow(&cancel, next_request).await {
            self.tx.send_replace(Leadership::Leader { term });
            tracing::info!(term, "leading");
            let Some(reason) = self.lead(&cancel, since).await else {
                break;
            };
            self.tx.send_replace(Leadership::Follower);
            tracing::warn!(term, reason, "stepped down");
            if self.agent.is_leader() {
                // Make the agent forget a lease we no longer trust; bounded, the store may be down.
                match tokio::time::timeout(self.period, self.agent.release()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "release after stepping down failed"),
                    Err(_) => tracing::warn!("release after stepping down timed out"),
                }
            }
            // The key may be free (it expired while we were cut off): try again at once.
            next_request = Instant::now();
        }
        if self.agent.is_leader() {
            self.tx.send_replace(Leadership::Follower);
            return self.agent.release().await;
        }
        Ok(())
    }

    /// Requests leadership until granted (`Some((term, time of the request))`) or cancelled.
    async fn follow(
        &mut self,
        cancel: &CancellationToken,
        mut next_request: Instant,
    ) -> Option<(u64, Instant)> {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep_until(next_request) => {}
                () = vacancy(&mut self.watch) => tracing::debug!("leader key vacant; requesting"),
            }
            let started = Instant::now();
            let result = self.agent.request().await;
            next_request = Instant::now() + self.period;
            if cancel.is_cancelled() {
                // A lease won just now is released by the caller.
                return None;
            }
            match result {
                Ok(Some(term)) => return Some((term, started)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "leadership request failed"),
            }
        }
    }

    /// Renews until the lease is lost (`Some(reason)`) or the loop is cancelled (`None`).
    async fn lead(&mut self, cancel: &CancellationToken, since: Instant) -> Option<&'static str> {
        let mut deadline = since + self.lease;
        let mut next_renew = since + self.period;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep_until(next_renew.min(deadline)) => {}
                // Our key vanished: check at once rather than at the next renewal.
                () = vacancy(&mut self.watch) => {}
            }
            if Instant::now() >= deadline {
                return Some("the lease ran out without a successful renewal");
            }
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.agent.renew()).await {
                Ok(Ok(true)) => {
                    deadline = started + self.lease;
                    next_renew = started + self.period;
                }
                Ok(Ok(false)) => return Some("the lease was lost (renewal refused)"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lease renewal failed; retrying within the lease");
                    next_renew = Instant::now() + self.retry;
                }
                Err(_) => return Some("the lease ran out during a renewal"),
            }
        }
    }
}

/// Waits for a sign that the leader key is vacant; never returns without a watch.
async fn vacancy(watch: &mut Option<LeaderWatch>) {
    match watch {
        Some(watch) => watch.vacancy().await,
        None => std::future::pending().await,
    }
}

/// A watch on the leader key, reopened when it ends.
struct LeaderWatch {
    bucket: Arc<dyn Bucket>,
    stream: Option<WatchStream>,
    reopen_at: Instant,
    /// Whether the snapshot in progress contained a leader.
    saw_leader: bool,
}

impl LeaderWatch {
    fn new(bucket: Arc<dyn Bucket>) -> Self {
        Self {
            bucket,
            stream: None,
            reopen_at: Instant::now(),
            saw_leader: false,
        }
    }

    /// Cancel-safe: every state change is made before an await point.
    async fn vacancy(&mut self) {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                tokio::time::sleep_until(self.reopen_at).await;
                match self.bucket.watch(LEADER_KEY).await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot watch the leader key");
                        self.reopen_at = Instant::now() + Duration::from_millis(500);
                    }
                }
                continue;
            };
            match stream.next().await {
                Some(Ok(WatchEvent::Init)) => self.saw_leader = false,
                Some(Ok(WatchEvent::InitApply(_))) => self.saw_leader = true,
                Some(Ok(WatchEvent::InitDone)) if !self.saw_leader => return,
                Some(Ok(WatchEvent::Deleted { .. } | WatchEvent::Expired { .. })) => return,
                Some(Ok(WatchEvent::InitDone | WatchEvent::Put(_))) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "leader watch error"),
                None => {
                    self.stream = None;
                    self.reopen_at = Instant::now() + Duration::from_millis(500);
                }
            }
        }
    }
}
