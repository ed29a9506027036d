//! Runs a site's background duties and keeps them running.
//!
//! Every duty (the event cursor, the download scheduler, the verifiers,
//! the sweeper, ...) is started by [`Supervisor::spawn`] under a name. The
//! supervisor runs it in its own task and watches it: a panic, or a return
//! before shutdown, is logged with the duty's name, counted
//! ([`crate::health::DutyBoard`]) and followed by a restart after a backoff
//! (1 s, doubling to 60 s; back to 1 s after a run of 10 minutes). Duties
//! also report their rounds (`health::round_ok`, `health::round_failed`),
//! so one that keeps failing without crashing shows too. Repeated failure
//! makes the site unhealthy, naming the duty (status API, `/metrics`,
//! admin page).
//!
//! Erlang/OTP's one-for-one supervision with restart intensity is the
//! model; here a duty is never given up on (each is needed for the site to
//! converge), it is only reported.

use crate::health::{CURRENT, CurrentDuty, DutyBoard};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// First pause before a restart.
pub const RESTART_BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest pause before a restart.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(600);

/// The duties of one site.
pub struct Supervisor {
    board: DutyBoard,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    first_backoff: Duration,
}

impl Supervisor {
    /// A supervisor reporting to `board`, whose duties stop when
    /// `shutdown` is cancelled.
    pub fn new(board: DutyBoard, shutdown: CancellationToken) -> Supervisor {
        Supervisor {
            board,
            shutdown,
            tasks: JoinSet::new(),
            first_backoff: RESTART_BACKOFF_START,
        }
    }

    /// Starts duty `name`: `duty()` makes one run of it, called again for
    /// each restart. A run must return only when `shutdown` is cancelled.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, duty: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let board = self.board.clone();
        let shutdown = self.shutdown.clone();
        let first_backoff = self.first_backoff;
        self.tasks.spawn(async move {
            let mut backoff = first_backoff;
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                board.started(name);
                let current = CurrentDuty {
                    board: board.clone(),
                    name,
                };
                let inject = board.take_injected_panic(name);
                let run = duty();
                let started = Instant::now();
                let outcome = tokio::spawn(CURRENT.scope(current, async move {
                    if inject {
                        panic!("test hook: duty {name} made to panic");
                    }
                    run.await
                }))
                .await;
                if shutdown.is_cancelled() {
                    return;
                }
                let error = match outcome {
                    Ok(()) => "stopped before shutdown".to_string(),
                    Err(error) if error.is_panic() => {
                        format!("panicked: {}", panic_text(error.into_panic()))
                    }
                    Err(error) => format!("task failed: {error}"),
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = first_backoff;
                }
                tracing::error!(duty = name, %error, restart_in = ?backoff, "background duty failed; restarting it");
                board.failed(name, &error, true);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                board.restarted(name);
            }
        });
    }

    /// Waits for every duty to stop (after `shutdown` was cancelled).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The text of a panic's payload.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => text.to_string(),
            Err(_) => "a non-text panic".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_duty_that_panics_or_stops_is_restarted_and_reported() {
        let board = DutyBoard::new("unit");
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(board.clone(), shutdown.clone());
        supervisor.first_backoff = Duration::from_millis(10);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let stop = shutdown.clone();
        supervisor.spawn("flaky", move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                match run {
                    0 => panic!("first run breaks"),
                    1 => {} // returns early
                    _ => {
                        crate::health::round_ok();
                        stop.cancelled().await
                    }
                }
            }
        });
        board.inject_panics("hooked", 1);
        let stop = shutdown.clone();
        supervisor.spawn("hooked", move || {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 || board.reports().iter().any(|r| r.restarts == 0) {
            assert!(Instant::now() < deadline, "{:?}", board.reports());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reports = board.reports();
        let flaky = reports.iter().find(|r| r.name == "flaky").unwrap();
        assert_eq!((flaky.failures, flaky.restarts), (2, 2));
        assert_eq!(flaky.state, "running", "a good round clears it");
        assert!(
            flaky.last_error.as_deref() == Some("stopped before shutdown"),
            "{flaky:?}"
        );
        let hooked = reports.iter().find(|r| r.name == "hooked").unwrap();
        assert_eq!(hooked.restarts, 1);
        assert!(
            hooked
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("test hook")),
            "{hooked:?}"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), supervisor.join())
            .await
            .expect("duties stop on shutdown");
    }
}
