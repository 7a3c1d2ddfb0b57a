//! The workers of a run and the check that the cluster has converged.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use parti::store::Bucket;
use parti::{Event, Manager, State};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::task::AbortOnDropHandle;

use super::memlog::Reader;
use super::shared::Shared;
use super::transport::Attachment;

/// One running worker.
pub(crate) struct Worker {
    /// Its start number (worker IDs can be reused after a crash; this cannot).
    pub(crate) n: usize,
    /// Its manager.
    pub(crate) manager: Arc<Manager>,
    /// What else it runs (the in-memory reader).
    attachment: Attachment,
    /// Follows its events (the terms it leads under).
    _listener: AbortOnDropHandle<()>,
}

impl Worker {
    pub(crate) fn new(
        n: usize,
        manager: Arc<Manager>,
        attachment: Attachment,
        shared: Arc<Shared>,
    ) -> Self {
        let listener = tokio::spawn(listen(n, manager.events(), shared));
        Self {
            n,
            manager,
            attachment,
            _listener: AbortOnDropHandle::new(listener),
        }
    }

    /// Everything stops at once, nothing is released (as a killed process). Returns once
    /// nothing of the worker runs any more: a kill stamped after it is after its last handling.
    pub(crate) async fn crash(self) {
        if let Attachment::Memory(reader) = self.attachment {
            reader.kill().await;
        }
        self.manager.kill().await;
    }

    /// Stops processing, then leaves gracefully.
    pub(crate) async fn stop(self) -> parti::Result<()> {
        if let Attachment::Memory(reader) = self.attachment {
            Reader::close(reader).await;
        }
        self.manager.stop().await
    }
}

/// The live workers.
#[derive(Default)]
pub(crate) struct Workers(Mutex<Vec<Worker>>);

impl Workers {
    fn lock(&self) -> MutexGuard<'_, Vec<Worker>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add(&self, worker: Worker) {
        self.lock().push(worker);
    }

    /// Removes a worker from the live set and hands it over.
    pub(crate) fn take(&self, n: usize) -> Option<Worker> {
        let mut workers = self.lock();
        let at = workers.iter().position(|w| w.n == n)?;
        Some(workers.remove(at))
    }

    pub(crate) fn take_all(&self) -> Vec<Worker> {
        std::mem::take(&mut *self.lock())
    }

    /// (start number, manager) of every live worker.
    pub(crate) fn live(&self) -> Vec<(usize, Arc<Manager>)> {
        self.lock()
            .iter()
            .map(|w| (w.n, Arc::clone(&w.manager)))
            .collect()
    }
}

/// Follows one worker's events: the terms it leads under.
async fn listen(
    n: usize,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    shared: Arc<Shared>,
) {
    loop {
        match events.recv().await {
            Ok(Event::LeadershipChanged {
                is_leader: true,
                term: Some(term),
            }) => shared.leader_term(term, n),
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Why the cluster has not converged (empty when it has): the committed map covers exactly the
/// live workers and every partition, each live worker is `Stable` and applied its share, and
/// exactly one of them leads.
pub(crate) async fn problems(
    bucket: &dyn Bucket,
    live: &[(usize, Arc<Manager>)],
    partitions: usize,
) -> Vec<String> {
    let published = match parti::records::read_published(bucket).await {
        Ok(published) => published,
        Err(e) => return vec![format!("cannot read the assignment: {e}")],
    };
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for (n, manager) in live {
        let id = manager.worker_id();
        if !ids.insert(id.clone()) {
            problems.push(format!("two live workers hold {id}"));
        }
        let state = manager.state();
        if state != State::Stable {
            problems.push(format!("{id} (#{n}) is {state}"));
        }
        let mine: Vec<String> = published
            .map
            .partitions_of(&id)
            .iter()
            .map(parti::Partition::id)
            .collect();
        let applied: Vec<String> = manager
            .assignment()
            .partitions
            .iter()
            .map(parti::Partition::id)
            .collect();
        if mine != applied {
            problems.push(format!(
                "{id} applied {} partitions, the map v{} gives it {}",
                applied.len(),
                published.version(),
                mine.len()
            ));
        }
    }
    let mapped: BTreeSet<_> = published.map.workers().cloned().collect();
    if mapped != ids {
        let names = |set: &BTreeSet<parti::WorkerId>| -> String {
            set.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(",")
        };
        problems.push(format!(
            "the map is over [{}], the live workers are [{}]",
            names(&mapped),
            names(&ids)
        ));
    }
    let owned = published
        .map
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(parti::Partition::id))
        .collect::<BTreeSet<_>>()
        .len();
    if owned != partitions {
        problems.push(format!("the map owns {owned} of {partitions} partitions"));
    }
    let leaders = live.iter().filter(|(_, m)| m.is_leader()).count();
    if leaders != 1 {
        problems.push(format!("{leaders} live workers lead"));
    }
    problems
}
