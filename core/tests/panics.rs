//! The panic hook, in a process of its own (it is process-wide).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use agent_core::panics::{catch_counted, install_hook, set_reporter};

#[test]
fn reports_skip_caught_panics_and_are_rate_limited() {
    let reports = Arc::new(AtomicUsize::new(0));
    let seen = reports.clone();
    assert!(set_reporter(Box::new(move |text| {
        if text.contains("boom") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    })));
    assert!(
        !set_reporter(Box::new(|_| {})),
        "a second reporter is refused"
    );
    install_hook();
    assert!(catch_counted(|| panic!("caught boom")).is_err());
    assert_eq!(
        reports.load(Ordering::SeqCst),
        0,
        "a caught panic is not reported"
    );
    for _ in 0..3 {
        assert!(std::thread::spawn(|| panic!("boom")).join().is_err());
    }
    assert_eq!(reports.load(Ordering::SeqCst), 1, "one report a minute");
}
