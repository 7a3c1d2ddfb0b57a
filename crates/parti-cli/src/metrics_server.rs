//! The worker's HTTP endpoints (`--metrics-addr`): Prometheus `/metrics`, `/healthz`, `/readyz`.
//!
//! The library only emits through the `metrics` facade; the Prometheus recorder is installed
//! here, in the binary, and rendered on each scrape.
//!
//! - `/healthz` — 200 while the process serves requests.
//! - `/readyz` — 200 when the worker is `Stable` or `Degraded` and holds an assignment (version
//!   ≥ 1, possibly with no partitions), else 503; the body says why.
//! - `/metrics` — the `parti_*` metrics in the Prometheus text format.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parti::{Assignment, State};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How often histograms are compacted (the recorder needs it when it has no listener of its own).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The worker's state and assignment, once its manager exists; shared with `/readyz`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness(Arc<OnceLock<Probe>>);

#[derive(Debug)]
struct Probe {
    state: watch::Receiver<State>,
    assignment: watch::Receiver<Arc<Assignment>>,
}

impl Readiness {
    /// Connects the probe to a started manager (later calls are ignored).
    pub(crate) fn set(&self, manager: &parti::Manager) {
        let _ = self.0.set(Probe {
            state: manager.watch_state(),
            assignment: manager.watch_assignment(),
        });
    }

    /// Whether the worker is ready, and why.
    fn check(&self) -> (bool, String) {
        let Some(probe) = self.0.get() else {
            return (false, "not ready: starting".to_owned());
        };
        let state = *probe.state.borrow();
        let version = probe.assignment.borrow().version;
        judge(state, version)
    }
}

/// Ready = `Stable` or `Degraded` with an assignment.
fn judge(state: State, version: u64) -> (bool, String) {
    let ready = matches!(state, State::Stable | State::Degraded) && version > 0;
    if ready {
        (true, format!("ready: {state}, assignment v{version}"))
    } else if version == 0 {
        (false, format!("not ready: {state}, no assignment yet"))
    } else {
        (false, format!("not ready: {state}"))
    }
}

/// Installs the global Prometheus recorder (once per process).
pub(crate) fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the Prometheus recorder")
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// A running HTTP server; stops when `cancel` fires or when dropped.
pub(crate) struct MetricsServer {
    /// The address actually bound (useful with port 0).
    pub(crate) addr: SocketAddr,
    _server: AbortOnDropHandle<()>,
    _upkeep: AbortOnDropHandle<()>,
}

/// Binds `addr` and serves the three endpoints in the background.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    readiness: Readiness,
    cancel: CancellationToken,
) -> anyhow::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState {
            metrics: metrics.clone(),
            readiness,
        });
    let stop = cancel.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => metrics.run_upkeep(),
            }
        }
    });
    Ok(MetricsServer {
        addr,
        _server: AbortOnDropHandle::new(server),
        _upkeep: AbortOnDropHandle::new(upkeep),
    })
}

async fn render_metrics(AxumState(app): AxumState<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn ready(AxumState(app): AxumState<AppState>) -> impl IntoResponse {
    let (ready, why) = app.readiness.check();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{why}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_rule() {
        assert!(judge(State::Stable, 1).0);
        assert!(judge(State::Degraded, 4).0);
        assert!(!judge(State::Stable, 0).0, "no assignment yet");
        assert!(!judge(State::Scaling, 3).0);
        assert!(!judge(State::WaitingAssignment, 0).0);
        assert!(!Readiness::default().check().0, "no manager yet");
    }
}
