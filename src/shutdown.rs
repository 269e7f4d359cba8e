//! OS signals → a cancellation token. The first SIGTERM or SIGINT asks for a drain (the token
//! fires); a second one exits the process at once, leaving held runs to be rescued by lease
//! expiry.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit status after a second signal cut the drain short.
pub const EXIT_FORCED: i32 = 1;

/// A token that fires on the first SIGTERM/SIGINT. Must be called inside a tokio runtime.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let fired = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutdown requested: draining (send the signal again to exit at once)");
        fired.cancel();
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::warn!(
            "second signal: exiting now; runs still held will be rescued when their leases expire"
        );
        std::process::exit(EXIT_FORCED);
    });
    Ok(token)
}
