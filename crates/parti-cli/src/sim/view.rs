//! The live progress view on stderr: redrawn in place on a terminal, one line a second
//! otherwise (a log, a CI job).

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::cluster::Workers;
use super::ledger::Ledger;
use super::shared::{Latest, Shared};

/// Workers shown per line on a terminal.
const PER_LINE: usize = 4;

/// What one frame shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Frame {
    pub(crate) elapsed: Duration,
    pub(crate) transport: &'static str,
    pub(crate) phase: String,
    pub(crate) latest: Latest,
    /// (worker ID, leads, state, partitions), sorted by ID.
    pub(crate) workers: Vec<(String, bool, String, usize)>,
    pub(crate) sent: u64,
    pub(crate) processed: u64,
}

impl Frame {
    fn leader(&self) -> &str {
        self.workers
            .iter()
            .find(|w| w.1)
            .map_or("none", |w| w.0.as_str())
    }

    fn cluster(&self) -> String {
        if self.latest.version == 0 {
            return "no assignment yet".into();
        }
        format!(
            "v{} term {} {} (last publish: {})",
            self.latest.version, self.latest.term, self.latest.phase, self.latest.reason
        )
    }

    /// The frame drawn on a terminal.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "parti sim  {:>6.1}s  {}  {}",
                self.elapsed.as_secs_f64(),
                self.transport,
                self.phase
            ),
            format!("cluster   {}, leader {}", self.cluster(), self.leader()),
            format!(
                "messages  sent {}  processed {}  backlog {}",
                self.sent,
                self.processed,
                self.sent.saturating_sub(self.processed)
            ),
        ];
        let names: Vec<String> = self
            .workers
            .iter()
            .map(|(id, leads, _, _)| format!("{id}{}", if *leads { "*" } else { " " }))
            .collect();
        let name_width = names.iter().map(String::len).max().unwrap_or(0);
        let cells: Vec<String> = names
            .iter()
            .zip(&self.workers)
            .map(|(name, (_, _, state, count))| format!("{name:<name_width$}{count:>5} {state}"))
            .collect();
        let width = cells.iter().map(String::len).max().unwrap_or(0);
        for (i, row) in cells.chunks(PER_LINE).enumerate() {
            let mut line = if i == 0 { "workers   " } else { "          " }.to_owned();
            for cell in row {
                let _ = write!(line, "{cell:<width$}   ");
            }
            lines.push(line.trim_end().to_owned());
        }
        lines
    }

    /// The line logged every second when stderr is not a terminal.
    pub(crate) fn line(&self) -> String {
        let loads: Vec<String> = self
            .workers
            .iter()
            .map(|(id, leads, _, count)| format!("{id}{}:{count}", if *leads { "*" } else { "" }))
            .collect();
        let loads = if loads.is_empty() {
            "no workers".to_owned()
        } else {
            loads.join(" ")
        };
        format!(
            "[{:>6.1}s] {} | {} | sent {} processed {} | {loads}",
            self.elapsed.as_secs_f64(),
            self.phase,
            self.cluster(),
            self.sent,
            self.processed,
        )
    }
}

/// The view task; [`finish`](Self::finish) draws the last frame and stops it.
pub(crate) struct View {
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl View {
    pub(crate) fn spawn(
        transport: &'static str,
        shared: Arc<Shared>,
        workers: Arc<Workers>,
        ledger: Arc<Ledger>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let every = if terminal { 250 } else { 1000 };
            let mut tick = tokio::time::interval(Duration::from_millis(every));
            let mut drawn = 0;
            loop {
                let last = tokio::select! {
                    () = token.cancelled() => true,
                    _ = tick.tick() => false,
                };
                let frame = capture(transport, &shared, &workers, &ledger);
                let mut err = std::io::stderr().lock();
                if terminal {
                    if drawn > 0 {
                        // Back to the first line of the previous frame, and clear below.
                        let _ = write!(err, "\x1b[{drawn}F\x1b[J");
                    }
                    let lines = frame.lines();
                    drawn = lines.len();
                    for line in lines {
                        let _ = writeln!(err, "{line}");
                    }
                } else {
                    let _ = writeln!(err, "{}", frame.line());
                }
                let _ = err.flush();
                if last {
                    return;
                }
            }
        });
        Self {
            cancel,
            task: AbortOnDropHandle::new(task),
        }
    }

    pub(crate) async fn finish(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

fn capture(transport: &'static str, shared: &Shared, workers: &Workers, ledger: &Ledger) -> Frame {
    let mut rows: Vec<(String, bool, String, usize)> = workers
        .live()
        .iter()
        .map(|(_, m)| {
            (
                m.worker_id().to_string(),
                m.is_leader(),
                m.state().to_string(),
                m.assignment().partitions.len(),
            )
        })
        .collect();
    rows.sort();
    Frame {
        elapsed: shared.elapsed(),
        transport,
        phase: shared.phase(),
        latest: shared.latest(),
        workers: rows,
        sent: ledger.sent_total(),
        processed: ledger.processed_total(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            elapsed: Duration::from_millis(12_345),
            transport: "nats",
            phase: "recovering from crash of worker-3".into(),
            latest: Latest {
                version: 7,
                term: 12,
                phase: "stable".into(),
                reason: "emergency".into(),
            },
            workers: (0..5)
                .map(|i| (format!("worker-{i}"), i == 1, "stable".into(), 200))
                .collect(),
            sent: 6150,
            processed: 6100,
        }
    }

    #[test]
    fn the_terminal_frame_shows_leader_version_load_and_messages() {
        let lines = frame().lines();
        assert_eq!(
            lines[..3],
            [
                "parti sim    12.3s  nats  recovering from crash of worker-3",
                "cluster   v7 term 12 stable (last publish: emergency), leader worker-1",
                "messages  sent 6150  processed 6100  backlog 50",
            ]
        );
        assert_eq!(lines.len(), 5, "four workers a line: {lines:#?}");
        assert_eq!(
            lines[3],
            "workers   worker-0   200 stable   worker-1*  200 stable   \
             worker-2   200 stable   worker-3   200 stable"
        );
        assert_eq!(lines[4], "          worker-4   200 stable");
    }

    #[test]
    fn the_log_line_has_everything_on_one_line() {
        assert_eq!(
            frame().line(),
            "[  12.3s] recovering from crash of worker-3 | v7 term 12 stable (last publish: emergency) \
             | sent 6150 processed 6100 | worker-0:200 worker-1*:200 worker-2:200 worker-3:200 worker-4:200"
        );
    }
}
