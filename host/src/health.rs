//! The health of a site's background duties: what the supervisor
//! (`supervisor.rs`) and the duties themselves report, read by the status
//! API, `/metrics` and the admin page.
//!
//! A duty fails when it panics, returns before shutdown, or reports a
//! failed round ([`round_failed`]: a consistency pass, a cursor batch, a
//! status report that failed). [`FAILING_AFTER`] failures in a row without
//! a good round ([`round_ok`]) make the duty *failing*, and the site
//! unhealthy with a message naming it, until it works again.
//!
//! Counters are also Prometheus metrics: `geohost_duty_failures_total`,
//! `geohost_duty_restarts_total` and `geohost_duty_up` (1 working, 0
//! failing), labelled with the site and the duty.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Failures in a row that make a duty failing (and the site unhealthy).
pub const FAILING_AFTER: u32 = 3;
/// Longest error text kept per duty.
const MAX_ERROR_CHARS: usize = 500;

/// One duty as reported (`duties` of the status API).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DutyReport {
    pub name: String,
    /// `running`, `restarting` or `failing`.
    pub state: &'static str,
    /// Failures since the site started (panics, early returns, failed rounds).
    pub failures: u64,
    /// Restarts after a panic or an early return.
    pub restarts: u64,
    /// Failures since the last good round.
    pub failures_in_a_row: u32,
    pub last_error: Option<String>,
    pub last_failure_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Duty {
    report: DutyReport,
    /// Test hook: panics still to inject at the duty's next starts.
    injected_panics: u32,
}

/// The duties of one site and how they are doing; cheap to clone.
#[derive(Debug, Clone)]
pub struct DutyBoard {
    site: Arc<str>,
    duties: Arc<Mutex<BTreeMap<String, Duty>>>,
}

impl DutyBoard {
    /// The board of site `site` (its name labels the metrics).
    pub fn new(site: &str) -> DutyBoard {
        DutyBoard {
            site: site.into(),
            duties: Arc::default(),
        }
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Duty) -> R) -> R {
        let mut duties = self.duties.lock().unwrap_or_else(|e| e.into_inner());
        let duty = duties.entry(name.to_string()).or_insert_with(|| Duty {
            report: DutyReport {
                name: name.to_string(),
                state: "running",
                ..DutyReport::default()
            },
            injected_panics: 0,
        });
        f(duty)
    }

    fn set_up(&self, name: &str, up: bool) {
        crate::metrics::DUTY_UP
            .with_label_values(&[&*self.site, name])
            .set(i64::from(up));
    }

    /// A duty starts (or starts again).
    pub fn started(&self, name: &str) {
        let failing = self.with(name, |d| {
            let failing = d.report.failures_in_a_row >= FAILING_AFTER;
            d.report.state = if failing { "failing" } else { "running" };
            failing
        });
        self.set_up(name, !failing);
    }

    /// A duty failed (`error` says how); `restarting` when the supervisor
    /// restarts it.
    pub fn failed(&self, name: &str, error: &str, restarting: bool) {
        let failing = self.with(name, |d| {
            let r = &mut d.report;
            r.failures += 1;
            r.failures_in_a_row = r.failures_in_a_row.saturating_add(1);
            r.last_error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
            r.last_failure_at = Some(Utc::now());
            let failing = r.failures_in_a_row >= FAILING_AFTER;
            r.state = match (failing, restarting) {
                (true, _) => "failing",
                (false, true) => "restarting",
                (false, false) => "running",
            };
            failing
        });
        crate::metrics::DUTY_FAILURES
            .with_label_values(&[&*self.site, name])
            .inc();
        self.set_up(name, !failing);
    }

    /// A duty was restarted by the supervisor.
    pub fn restarted(&self, name: &str) {
        self.with(name, |d| d.report.restarts += 1);
        crate::metrics::DUTY_RESTARTS
            .with_label_values(&[&*self.site, name])
            .inc();
    }

    /// A duty completed a round: it works.
    pub fn ok(&self, name: &str) {
        let was_failing = self.with(name, |d| {
            let was = d.report.failures_in_a_row > 0;
            d.report.failures_in_a_row = 0;
            d.report.state = "running";
            was
        });
        if was_failing {
            self.set_up(name, true);
        }
    }

    /// Every duty, by name.
    pub fn reports(&self) -> Vec<DutyReport> {
        let duties = self.duties.lock().unwrap_or_else(|e| e.into_inner());
        duties.values().map(|d| d.report.clone()).collect()
    }

    /// The health problem of the failing duties, if any: one sentence per
    /// duty, naming it.
    pub fn problem(&self) -> Option<String> {
        let failing: Vec<String> = self
            .reports()
            .into_iter()
            .filter(|r| r.failures_in_a_row >= FAILING_AFTER)
            .map(|r| {
                format!(
                    "Background duty {} is failing ({} failures in a row): {}",
                    r.name,
                    r.failures_in_a_row,
                    r.last_error.as_deref().unwrap_or("no error text")
                )
            })
            .collect();
        (!failing.is_empty()).then(|| failing.join("; "))
    }

    /// Test hook: duty `name` panics `times` times, at its next starts or
    /// rounds.
    #[doc(hidden)]
    pub fn inject_panics(&self, name: &str, times: u32) {
        self.with(name, |d| d.injected_panics = times);
    }

    /// Whether this start of `name` must panic (the test hook).
    pub fn take_injected_panic(&self, name: &str) -> bool {
        self.with(name, |d| {
            let inject = d.injected_panics > 0;
            d.injected_panics = d.injected_panics.saturating_sub(1);
            inject
        })
    }
}

/// The duty a task runs for, set by the supervisor.
#[derive(Debug, Clone)]
pub struct CurrentDuty {
    pub board: DutyBoard,
    pub name: &'static str,
}

tokio::task_local! {
    /// The duty the current task runs (unset outside the supervisor).
    pub static CURRENT: CurrentDuty;
}

/// The current duty completed a round. Outside a supervised duty (tests
/// calling a loop directly), nothing.
pub fn round_ok() {
    let _ = CURRENT.try_with(|d| {
        injected_panic(d);
        d.board.ok(d.name)
    });
}

/// The current duty's round failed with `error` (it goes on by itself).
pub fn round_failed(error: &dyn std::fmt::Display) {
    let _ = CURRENT.try_with(|d| {
        injected_panic(d);
        d.board.failed(d.name, &error.to_string(), false)
    });
}

/// The test hook, in the middle of a running duty.
fn injected_panic(duty: &CurrentDuty) {
    if duty.board.take_injected_panic(duty.name) {
        panic!("test hook: duty {} made to panic", duty.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_make_a_duty_failing_until_a_good_round() {
        let board = DutyBoard::new("unit");
        board.started("cursor");
        assert_eq!(board.problem(), None);
        for i in 1..FAILING_AFTER {
            board.failed("cursor", &format!("boom {i}"), true);
            assert_eq!(board.problem(), None, "{i}");
        }
        board.restarted("cursor");
        board.failed("cursor", "boom last", false);
        let problem = board.problem().unwrap();
        assert!(
            problem.contains("cursor") && problem.contains("boom last"),
            "{problem}"
        );
        let report = board.reports().pop().unwrap();
        assert_eq!(
            (report.state, report.failures, report.restarts),
            ("failing", 3, 1)
        );
        board.ok("cursor");
        assert_eq!(board.problem(), None);
        assert_eq!(board.reports()[0].state, "running");
        assert_eq!(board.reports()[0].failures, 3);
    }

    #[test]
    fn injected_panics_are_counted_down() {
        let board = DutyBoard::new("unit");
        board.inject_panics("d", 2);
        assert!(board.take_injected_panic("d"));
        assert!(board.take_injected_panic("d"));
        assert!(!board.take_injected_panic("d"));
    }

    #[tokio::test]
    async fn rounds_report_to_the_current_duty_only() {
        let board = DutyBoard::new("unit");
        round_failed(&"ignored outside a duty");
        let duty = CurrentDuty {
            board: board.clone(),
            name: "d",
        };
        CURRENT
            .scope(duty, async {
                round_failed(&"bad");
                round_ok();
                round_failed(&"worse");
            })
            .await;
        let report = board.reports().pop().unwrap();
        assert_eq!((report.failures, report.failures_in_a_row), (2, 1));
        assert_eq!(report.last_error.as_deref(), Some("worse"));
    }
}
