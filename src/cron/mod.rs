//! Cron: schedules evaluated by the daemons themselves (no pg_cron).
//!
//! - [`schedule`]: parsing an expression in an IANA zone and the next nominal fire time, with
//!   the DST policy (pure).
//! - [`policy`]: catch-up and overlap policies from a schedule's `config` (pure).
//! - [`clock`]: the injectable clock ([`SystemClock`], [`ManualClock`] for tests).
//! - [`scheduler`]: the loop every daemon runs; its SQL lives in `db::schedule`.

pub mod clock;
pub mod policy;
pub mod schedule;
pub mod scheduler;
pub mod settings;

pub use clock::{Clock, DatabaseClock, ManualClock, SystemClock};
pub use schedule::{Schedule, ScheduleError};
pub use scheduler::Scheduler;
pub use settings::CronSettings;
