//! Range checks for config values. Every number and duration a component
//! takes has a range checked at validation, with its key path: a value that
//! validates never overflows later (a deadline `now + timeout`, a channel
//! or semaphore sized from it, a gRPC timeout header).

use std::fmt::Display;
use std::time::Duration;

use crate::FieldError;

/// The longest any timeout or interval may be: far past any real need,
/// far below where deadlines overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Collects the problems of one config, every one with its key.
#[derive(Debug, Default)]
pub struct Checks(Vec<FieldError>);

impl Checks {
    /// Continues the problems found so far.
    pub fn new(found: Vec<FieldError>) -> Self {
        Self(found)
    }

    /// A problem found otherwise.
    pub fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// `value` of `key` lies within `min..=max`.
    pub fn duration(&mut self, key: &str, value: Duration, min: Duration, max: Duration) {
        if !(min..=max).contains(&value) {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            self.0.push(FieldError::new(
                key,
                format!(
                    "must be between {} and {} (is {})",
                    show(min),
                    show(max),
                    show(value)
                ),
            ));
        }
    }

    /// `value` of `key` lies within `min..=max`.
    pub fn number<T: PartialOrd + Display>(&mut self, key: &str, value: T, min: T, max: T) {
        if value < min || value > max {
            self.0.push(FieldError::new(
                key,
                format!("must be between {min} and {max} (is {value})"),
            ));
        }
    }

    /// Every problem found.
    pub fn finish(self) -> Vec<FieldError> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_named_with_the_range() {
        let mut checks = Checks::default();
        checks.duration(
            "timeout",
            Duration::ZERO,
            Duration::from_millis(1),
            MAX_DURATION,
        );
        checks.duration("ok", Duration::from_secs(1), Duration::ZERO, MAX_DURATION);
        checks.number("queue_size", usize::MAX, 1, 1 << 20);
        checks.number("fine", 5u64, 1, 10);
        let errors = checks.finish();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].field, "timeout");
        assert_eq!(errors[0].message, "must be between 1ms and 7days (is 0s)");
        assert_eq!(errors[1].field, "queue_size");
        assert!(errors[1]
            .message
            .starts_with("must be between 1 and 1048576 (is 18446744073709551615)"));
    }
}
