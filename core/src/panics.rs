//! The agent's one panic hook, installed by the binary: after the default
//! hook prints the panic, a reporter (the `parca_grpc` exporter's
//! `ReportPanic`) may send it on — at most once a minute, and never for a
//! panic the pipeline catches and counts itself (a processor's: reported
//! as that processor's error).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Sends a report: the panic as printed.
pub type Reporter = Box<dyn Fn(&str) + Send + Sync>;

/// At most one report per this interval (a panic on every batch must not
/// become a blocking network call on every batch).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

static REPORTER: Mutex<Option<Reporter>> = Mutex::new(None);
static LAST_REPORT: Mutex<Option<Instant>> = Mutex::new(None);

thread_local! {
    /// Set while this thread runs code whose panics are caught and counted.
    static CAUGHT: Cell<bool> = const { Cell::new(false) };
}

/// Sets the reporter; false (and unchanged) when one is set already: the
/// first component that asks reports, later ones do not fight over it.
pub fn set_reporter(reporter: Reporter) -> bool {
    let mut slot = REPORTER.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        return false;
    }
    *slot = Some(reporter);
    true
}

/// Runs `f`, catching a panic as an error its caller counts: the hook
/// prints it but sends no report.
pub fn catch_counted<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    let outer = CAUGHT.replace(true);
    let result = catch_unwind(AssertUnwindSafe(f));
    CAUGHT.set(outer);
    result
}

/// Installs the hook (once per process).
pub fn install_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if CAUGHT.get() {
                return;
            }
            // Held while a report is sent: a panic meanwhile (in the
            // reporting thread) is not reported, instead of waiting forever.
            let Ok(reporter) = REPORTER.try_lock() else {
                return;
            };
            if let Some(report) = reporter.as_ref() {
                if due(Instant::now()) {
                    report(&info.to_string());
                }
            }
        }));
    });
}

/// Whether a report may go at `now` (and then one just did).
fn due(now: Instant) -> bool {
    let mut last = LAST_REPORT.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|at| now.duration_since(at) < REPORT_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}
