//! Waiting for the signals that ask a command to stop.

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM, with the signal's name. If the handlers
/// cannot be installed, it never resolves (the process can still be killed).
pub(crate) async fn stop_requested() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                return interrupt().await;
            }
        };
        tokio::select! {
            name = interrupt() => name,
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        interrupt().await
    }
}

async fn interrupt() -> &'static str {
    match tokio::signal::ctrl_c().await {
        Ok(()) => "SIGINT",
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending().await
        }
    }
}
