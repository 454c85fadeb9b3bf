//! How the in-process loops are doing, for /readyz: each controller and the scheduler
//! reports whether it is leading, standing by (another server holds its Lease) or failing
//! (its watches refused or erroring, or its writes forbidden), and since when.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loop that keeps failing this long makes its check fail (a blip does not).
const FAILING_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum State {
    Standby,
    Running,
    Failing { since: Instant, reason: String },
}

/// Every loop's state by check name (`controller/deployment`, `scheduler`).
#[derive(Debug, Clone, Default)]
pub struct LoopHealth(Arc<Mutex<BTreeMap<String, State>>>);

impl LoopHealth {
    /// The handle a loop reports through; the loop starts on standby.
    pub fn reporter(&self, check: &str) -> HealthReporter {
        self.set(check, State::Standby);
        HealthReporter {
            check: check.to_string(),
            health: self.clone(),
        }
    }

    fn set(&self, check: &str, state: State) {
        if let Ok(mut m) = self.0.lock() {
            let keep_since = matches!(
                (m.get(check), &state),
                (Some(State::Failing { .. }), State::Failing { .. })
            );
            if keep_since {
                if let (Some(State::Failing { reason, .. }), State::Failing { reason: new, .. }) =
                    (m.get_mut(check), state)
                {
                    *reason = new;
                }
                return;
            }
            m.insert(check.to_string(), state);
        }
    }

    /// Each check: Ok, or why it fails.
    pub fn checks(&self) -> Vec<(String, Result<(), String>)> {
        let Ok(m) = self.0.lock() else {
            return Vec::new();
        };
        m.iter()
            .map(|(name, state)| {
                let r = match state {
                    State::Failing { since, reason } if since.elapsed() >= FAILING_FOR => {
                        Err(reason.clone())
                    }
                    _ => Ok(()),
                };
                (name.clone(), r)
            })
            .collect()
    }
}

/// One loop's side of `LoopHealth`.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    check: String,
    health: LoopHealth,
}

impl HealthReporter {
    pub fn running(&self) {
        self.health.set(&self.check, State::Running);
    }

    pub fn standby(&self) {
        self.health.set(&self.check, State::Standby);
    }

    pub fn failing(&self, reason: impl Into<String>) {
        self.health.set(
            &self.check,
            State::Failing {
                since: Instant::now(),
                reason: reason.into(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_fails_its_check_only_after_failing_for_a_while() {
        let h = LoopHealth::default();
        let r = h.reporter("controller/x");
        assert_eq!(h.checks(), vec![("controller/x".to_string(), Ok(()))]);
        r.failing("forbidden");
        assert!(h.checks()[0].1.is_ok(), "a blip is not a failure");
        if let Ok(mut m) = h.0.lock() {
            m.insert(
                "controller/x".into(),
                State::Failing {
                    since: Instant::now() - FAILING_FOR,
                    reason: "forbidden".into(),
                },
            );
        }
        r.failing("still forbidden");
        assert_eq!(h.checks()[0].1, Err("still forbidden".to_string()));
        r.running();
        assert!(h.checks()[0].1.is_ok());
    }
}
