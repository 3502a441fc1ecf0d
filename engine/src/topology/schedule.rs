//! Timers: when they fire and what they run.

use std::sync::Arc;

use crate::context::Ctx;
use crate::{Error, Result};

/// When a timer fires.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// Every interval (after the task starts, then after each firing).
    Every(std::time::Duration),
    /// On a cron schedule (seconds minutes hours day-of-month month
    /// day-of-week, UTC), e.g. `0 */5 * * * *`.
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// Parses a cron expression.
    pub fn cron(expr: &str) -> Result<Schedule> {
        use std::str::FromStr;
        cron::Schedule::from_str(expr)
            .map(|s| Schedule::Cron(Box::new(s)))
            .map_err(|e| {
                Error::config(
                    "timer.schedule",
                    format!("{expr:?} is not a cron expression: {e}"),
                )
            })
    }

    /// The first firing strictly after `now`.
    pub fn next_after(&self, now: strata_state::Timestamp) -> Option<strata_state::Timestamp> {
        match self {
            Schedule::Every(d) => Some(strata_state::Timestamp(
                now.0 + (d.as_millis() as u64).max(1),
            )),
            Schedule::Cron(s) => {
                let at = chrono::DateTime::from_timestamp_millis(now.0 as i64)?;
                s.after(&at)
                    .next()
                    .map(|t| strata_state::Timestamp(t.timestamp_millis().max(0) as u64))
            }
        }
    }
}

/// A timer's body: runs on the task's thread with access to its tables.
pub(crate) type TimerFn =
    Arc<dyn Fn(&mut Ctx<'_>, strata_state::Timestamp) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct TimerSpec {
    pub name: Arc<str>,
    pub schedule: Schedule,
    pub run: TimerFn,
}
