//! What a schedule's `config` jsonb asks for when ticks were missed (catch-up) or when its
//! previous run is still active (overlap), and the pure decision of which due ticks fire.
//!
//! No I/O: the scheduler reads the row, asks [`plan`], and writes what it says.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// What to do with ticks missed while no daemon was evaluating the schedule (more than one
/// nominal tick is due at once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// Fire none of them; record every one as skipped (`downtime`).
    Skip,
    /// Fire the most recent one; record the older ones as skipped (`downtime`).
    #[default]
    Once,
    /// Fire every one, newest `catch_up_cap` only; older ones are skipped (`catch_up_cap`).
    All,
}

/// What to do when the schedule's previous run is still `pending` or `running`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overlap {
    /// Do not fire; record the tick as skipped (`overlap`).
    #[default]
    Skip,
    /// Insert the run pending anyway; the queue runs it after the active one as far as the
    /// queue's per-app limits serialise them. The tick's detail names the active run.
    Queue,
    /// Insert the run regardless.
    Allow,
}

/// The policies of one schedule, read from its `config` jsonb.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub catch_up: CatchUp,
    pub overlap: Overlap,
    /// `config->'input'`, the run's `input_data` (`{}` when absent).
    pub input: Value,
}

/// The reasons `app_cron_ticks.reason` accepts, as the scheduler uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Overlap,
    Downtime,
    CatchUpCap,
    InvalidSchedule,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::Downtime => "downtime",
            SkipReason::CatchUpCap => "catch_up_cap",
            SkipReason::InvalidSchedule => "invalid_schedule",
        }
    }
}

impl Policy {
    /// Reads `catch_up`, `overlap` and `input`; an unknown policy value is an error naming the
    /// key and the accepted values (the schedule is then disabled with that reason).
    pub fn from_config(config: &Value) -> Result<Self, String> {
        let text = |key: &str| config.get(key).filter(|v| !v.is_null());
        let catch_up = match text("catch_up") {
            None => CatchUp::default(),
            Some(v) => match v.as_str() {
                Some("skip") => CatchUp::Skip,
                Some("once") => CatchUp::Once,
                Some("all") => CatchUp::All,
                _ => {
                    return Err(format!(
                        "config.catch_up = {v}: use \"skip\", \"once\" or \"all\""
                    ))
                }
            },
        };
        let overlap = match text("overlap") {
            None => Overlap::default(),
            Some(v) => match v.as_str() {
                Some("skip") => Overlap::Skip,
                Some("queue") => Overlap::Queue,
                Some("allow") => Overlap::Allow,
                _ => {
                    return Err(format!(
                        "config.overlap = {v}: use \"skip\", \"queue\" or \"allow\""
                    ))
                }
            },
        };
        let input = config
            .get("input")
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()));
        Ok(Self {
            catch_up,
            overlap,
            input,
        })
    }
}

/// Which of the due ticks fire and which are skipped, before the overlap check.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub fire: Vec<DateTime<Utc>>,
    pub skip: Vec<(DateTime<Utc>, SkipReason)>,
}

/// Applies the catch-up policy to `due` (every nominal tick not after now, oldest first). One
/// due tick is the normal case and always fires; more means ticks were missed.
pub fn plan(due: &[DateTime<Utc>], catch_up: CatchUp, cap: usize) -> Plan {
    let mut plan = Plan::default();
    if due.len() <= 1 {
        plan.fire = due.to_vec();
        return plan;
    }
    let (older, newest) = due.split_at(due.len() - 1);
    match catch_up {
        CatchUp::Skip => plan.skip = tagged(due, SkipReason::Downtime),
        CatchUp::Once => {
            plan.skip = tagged(older, SkipReason::Downtime);
            plan.fire = newest.to_vec();
        }
        CatchUp::All => {
            let keep = cap.max(1).min(due.len());
            let (beyond, fired) = due.split_at(due.len() - keep);
            plan.skip = tagged(beyond, SkipReason::CatchUpCap);
            plan.fire = fired.to_vec();
        }
    }
    plan
}

fn tagged(ticks: &[DateTime<Utc>], reason: SkipReason) -> Vec<(DateTime<Utc>, SkipReason)> {
    ticks.iter().map(|t| (*t, reason)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ticks(n: i64) -> Vec<DateTime<Utc>> {
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        (0..n)
            .map(|i| start + chrono::Duration::minutes(i))
            .collect()
    }

    #[test]
    fn one_due_tick_fires_whatever_the_policy() {
        for catch_up in [CatchUp::Skip, CatchUp::Once, CatchUp::All] {
            assert_eq!(plan(&ticks(1), catch_up, 100).fire, ticks(1));
        }
    }

    #[test]
    fn missed_ticks_follow_the_catch_up_policy() {
        let due = ticks(10);
        let skip = plan(&due, CatchUp::Skip, 100);
        assert!(skip.fire.is_empty());
        assert_eq!(skip.skip.len(), 10);
        let once = plan(&due, CatchUp::Once, 100);
        assert_eq!(once.fire, vec![due[9]]);
        assert!(once.skip.iter().all(|(_, r)| *r == SkipReason::Downtime));
        assert_eq!(plan(&due, CatchUp::All, 100).fire, due);
        let capped = plan(&due, CatchUp::All, 4);
        assert_eq!(capped.fire, due[6..].to_vec());
        assert_eq!(capped.skip.len(), 6);
        assert!(capped
            .skip
            .iter()
            .all(|(_, r)| *r == SkipReason::CatchUpCap));
    }

    #[test]
    fn config_defaults_are_once_and_skip_and_bad_values_are_named() {
        let policy = Policy::from_config(&json!({})).unwrap();
        assert_eq!(
            (policy.catch_up, policy.overlap),
            (CatchUp::Once, Overlap::Skip)
        );
        assert_eq!(policy.input, json!({}));
        let policy =
            Policy::from_config(&json!({"catch_up": "all", "overlap": "queue", "input": {"a": 1}}))
                .unwrap();
        assert_eq!(
            (policy.catch_up, policy.overlap, policy.input),
            (CatchUp::All, Overlap::Queue, json!({"a": 1}))
        );
        let err = Policy::from_config(&json!({"catch_up": "sometimes"})).unwrap_err();
        assert!(
            err.contains("config.catch_up") && err.contains("sometimes"),
            "{err}"
        );
        let err = Policy::from_config(&json!({"overlap": 3})).unwrap_err();
        assert!(err.contains("config.overlap = 3"), "{err}");
    }
}
