//! Cron math: a parsed expression in an IANA time zone and its next nominal fire time.
//!
//! Pure: no clock, no I/O. The scheduler seeds every search with the previous nominal instant
//! (never with "now"), so each tick is produced exactly once.
//!
//! Parsing and the wall-clock walk are `croner`'s; the DST policy (DESIGN §10, Vixie cron) is
//! enforced here, because croner only partly applies it:
//! - spring-forward gap: every tick whose local time does not exist fires once, at the first
//!   instant after the gap (croner does this only for jobs whose second, minute and hour are all
//!   single values and silently drops the others, e.g. `30 * * * *` at 02:30);
//! - fall-back overlap: when the hour field is fixed (a number, list or range) a tick fires only
//!   at its first occurrence (croner decides by second+minute+hour, so `*/15 1 * * *` would fire
//!   in both passes); with a wildcard or step hour (`*`, `*/2`) ticks follow real elapsed time
//!   and fire in both passes, which croner already does.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Why an expression or zone was refused. The message is stored as the schedule's
/// `disabled_reason`, so it names the input and says what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression is empty; use e.g. \"*/5 * * * *\" or \"@daily\"")]
    Empty,
    #[error("{expr:?}: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found {found}")]
    FieldCount { expr: String, found: usize },
    #[error("{expr:?}: unknown alias {alias}; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly")]
    UnknownAlias { expr: String, alias: String },
    #[error("{expr:?}: {field} {value} is out of range {min}-{max}")]
    OutOfRange {
        expr: String,
        field: &'static str,
        value: u64,
        min: u32,
        max: u32,
    },
    #[error("{expr:?}: {message}")]
    Invalid { expr: String, message: String },
    #[error("time zone {zone:?} is not an IANA zone name; use e.g. \"Europe/Berlin\" or \"UTC\"")]
    UnknownZone { zone: String },
}

/// A parsed cron expression bound to a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    zone: Tz,
    cron: Cron,
    /// The hour field names fixed hours (no `*`, no `/`): such ticks fire once in an overlap.
    fixed_hour: bool,
}

/// Parsed schedules by expression and zone, shared by a scheduler's batches.
///
/// Parsing is the scheduler's main CPU cost (croner builds its bit sets one value at a time):
/// without this cache, 10,000 `* * * * *` schedules firing in one minute spent ~40% of the
/// daemon's CPU there, on the same two cores PostgreSQL needs for the writes. Errors are cached
/// too. The cache is cleared when it holds [`ParseCache::CAPACITY`] distinct pairs, which bounds
/// its memory whatever the schedules table holds.
#[derive(Debug, Default)]
pub struct ParseCache {
    parsed: std::sync::Mutex<HashMap<(String, String), Parsed>>,
}

/// What [`ParseCache::parse`] returns (and caches) for one expression and zone.
type Parsed = Result<Arc<Schedule>, ScheduleError>;

impl ParseCache {
    pub const CAPACITY: usize = 10_000;

    /// [`Schedule::parse`], or the cached result of the same `(expr, tz_name)`.
    pub fn parse(&self, expr: &str, tz_name: &str) -> Parsed {
        let key = (expr.to_owned(), tz_name.to_owned());
        if let Some(hit) = self.parsed.lock().unwrap().get(&key) {
            return hit.clone();
        }
        // Parsed outside the lock; two batches racing on a new pair both parse it, harmlessly.
        let result = Schedule::parse(expr, tz_name).map(Arc::new);
        let mut parsed = self.parsed.lock().unwrap();
        if parsed.len() >= Self::CAPACITY {
            parsed.clear();
        }
        parsed.insert(key, result.clone());
        result
    }
}

/// Field names and ranges in order, seconds first (5-field forms get `0` seconds prepended).
const FIELDS: [(&str, u32, u32); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// Longest search for the end of a gap, in minutes (real gaps are 30 min to 2 h; Samoa 2011 a day).
const GAP_SEARCH_MINUTES: i64 = 26 * 60;
/// Bound on skipped later-pass candidates (a per-second fixed-hour job over a 2 h overlap).
const MAX_SKIPS: usize = 20_000;

impl Schedule {
    /// Parses a 5-field crontab expression (minute first), a 6-field one (seconds first) or an
    /// alias, in the IANA zone `tz_name`. Weekdays are crontab's: 0 and 7 are Sunday.
    pub fn parse(expr: &str, tz_name: &str) -> Result<Self, ScheduleError> {
        let zone: Tz = tz_name
            .trim()
            .parse()
            .map_err(|_| ScheduleError::UnknownZone {
                zone: tz_name.to_owned(),
            })?;
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let expanded = if trimmed.starts_with('@') {
            expand_alias(trimmed).ok_or_else(|| ScheduleError::UnknownAlias {
                expr: expr.to_owned(),
                alias: trimmed.to_owned(),
            })?
        } else {
            trimmed
        };
        let mut fields: Vec<&str> = expanded.split_whitespace().collect();
        match fields.len() {
            5 => fields.insert(0, "0"),
            6 => {}
            found => {
                return Err(ScheduleError::FieldCount {
                    expr: expr.to_owned(),
                    found,
                })
            }
        }
        for (field, &(name, min, max)) in fields.iter().zip(FIELDS.iter()) {
            check_range(expr, field, name, min, max)?;
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build()
            .parse(&fields.join(" "))
            .map_err(|e| ScheduleError::Invalid {
                expr: expr.to_owned(),
                message: lowercase_first(&e.to_string()),
            })?;
        let hour = fields[2];
        Ok(Self {
            expression: expr.to_owned(),
            zone,
            cron,
            fixed_hour: !hour.contains('*') && !hour.contains('/') && !hour.contains('?'),
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The next nominal fire time strictly after `after`, `None` if there is none (a pattern
    /// such as `0 0 30 2 *` that never matches).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole seconds, so "strictly after" the floored second is the same set.
        let mut from = after.with_nanosecond(0)?;
        for _ in 0..MAX_SKIPS {
            let local = from.with_timezone(&self.zone);
            // A tick in a gap: croner would drop it unless fully fixed; it fires at the gap's end.
            let naive = self
                .cron
                .find_next_occurrence(&local.naive_local(), false)
                .ok()?;
            if let LocalResult::None = self.zone.from_local_datetime(&naive) {
                return gap_end(self.zone, naive).filter(|t| *t > after);
            }
            let next = self
                .cron
                .find_next_occurrence(&local, false)
                .ok()?
                .with_timezone(&Utc);
            if self.fixed_hour && self.is_second_pass(next) {
                from = next;
                continue;
            }
            return Some(next);
        }
        None
    }

    /// Whether `instant` is the later of two instants sharing its wall-clock time.
    fn is_second_pass(&self, instant: DateTime<Utc>) -> bool {
        let naive = instant.with_timezone(&self.zone).naive_local();
        match self.zone.from_local_datetime(&naive) {
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc) < instant,
            _ => false,
        }
    }
}

fn expand_alias(alias: &str) -> Option<&'static str> {
    Some(match alias.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// Checks every number in one field against its range, so the error names the field; croner's
/// own message says only "position 61 is out of bounds".
fn check_range(
    expr: &str,
    field: &str,
    name: &'static str,
    min: u32,
    max: u32,
) -> Result<(), ScheduleError> {
    for item in field.split(',') {
        // A step (`*/61`) is a count, not a position; `5#2` names the 2nd Friday.
        let values = item.split('/').next().unwrap_or("");
        let values = values.split('#').next().unwrap_or("");
        for part in values.split('-') {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() {
                continue;
            }
            let value: u64 = digits.parse().unwrap_or(u64::MAX);
            if value < u64::from(min) || value > u64::from(max) {
                return Err(ScheduleError::OutOfRange {
                    expr: expr.to_owned(),
                    field: name,
                    value,
                    min,
                    max,
                });
            }
        }
    }
    Ok(())
}

/// The first real instant after the spring-forward gap that swallowed the wall time `naive`.
fn gap_end(zone: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    let start = naive.with_second(0)?;
    let first_valid_minute = (1..=GAP_SEARCH_MINUTES)
        .map(|m| start + Duration::minutes(m))
        .find(|t| !matches!(zone.from_local_datetime(t), LocalResult::None))?;
    // Transitions fall on whole minutes in today's tzdb; step back anyway in case one does not.
    let mut first = first_valid_minute;
    for _ in 0..59 {
        let earlier = first - Duration::seconds(1);
        if matches!(zone.from_local_datetime(&earlier), LocalResult::None) {
            break;
        }
        first = earlier;
    }
    zone.from_local_datetime(&first)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

fn lowercase_first(message: &str) -> String {
    let message = message.trim_end_matches('.');
    let mut chars = message.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// The next `n` fire times after `after`, as RFC 3339 UTC strings.
    fn fires(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(expr, zone).unwrap();
        let mut at = utc(after);
        let mut out = Vec::new();
        for _ in 0..n {
            at = schedule.next_after(at).unwrap();
            out.push(at.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        out
    }

    fn error(expr: &str, zone: &str) -> String {
        Schedule::parse(expr, zone).unwrap_err().to_string()
    }

    #[test]
    fn a_fixed_time_in_the_spring_gap_fires_once_right_after_it() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
    }

    #[test]
    fn a_fixed_time_around_the_fall_back_fires_once_a_day() {
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 02:30 happens once, 01:30 twice.
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T06:30:00Z",
                "2026-11-01T07:30:00Z",
                "2026-11-02T07:30:00Z"
            ]
        );
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn an_hourly_tick_follows_real_time_across_both_changes() {
        assert_eq!(
            fires("0 * * * *", "America/New_York", "2026-03-08T05:00:00Z", 3),
            [
                "2026-03-08T06:00:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T08:00:00Z"
            ]
        );
        // 01:00 EDT (05:00Z) and 01:00 EST (06:00Z) both fire.
        assert_eq!(
            fires("0 * * * *", "America/New_York", "2026-11-01T03:30:00Z", 4),
            [
                "2026-11-01T04:00:00Z",
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z"
            ]
        );
    }

    #[test]
    fn a_wildcard_hour_tick_inside_the_gap_moves_to_its_end() {
        // croner alone drops 02:30; the policy fires it at 03:00 EDT.
        assert_eq!(
            fires("30 * * * *", "America/New_York", "2026-03-08T06:00:00Z", 3),
            [
                "2026-03-08T06:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:30:00Z"
            ]
        );
    }

    #[test]
    fn a_fixed_hour_with_stepped_minutes_fires_only_in_the_first_pass() {
        // croner alone repeats 01:00-01:45 in EST; the hour field is fixed, so it does not.
        assert_eq!(
            fires(
                "*/15 1 * * *",
                "America/New_York",
                "2026-11-01T04:50:00Z",
                5
            ),
            [
                "2026-11-01T05:00:00Z",
                "2026-11-01T05:15:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T05:45:00Z",
                "2026-11-02T06:00:00Z"
            ]
        );
        // Seeded inside the second pass (a daemon started then), it still waits for tomorrow.
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-11-01T06:10:00Z", 1),
            ["2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn quarter_hours_in_lord_howe_survive_its_half_hour_shifts() {
        // 2026-10-04 02:00 LHST (+10:30) jumps to 02:30 LHDT (+11): 02:00 and 02:15 merge into 02:30.
        assert_eq!(
            fires(
                "*/15 * * * *",
                "Australia/Lord_Howe",
                "2026-10-03T15:00:00Z",
                3
            ),
            [
                "2026-10-03T15:15:00Z",
                "2026-10-03T15:30:00Z",
                "2026-10-03T15:45:00Z"
            ]
        );
        // 2026-04-05 02:00 LHDT falls back to 01:30 LHST: 01:30 and 01:45 happen twice.
        assert_eq!(
            fires(
                "*/15 * * * *",
                "Australia/Lord_Howe",
                "2026-04-04T14:20:00Z",
                5
            ),
            [
                "2026-04-04T14:30:00Z",
                "2026-04-04T14:45:00Z",
                "2026-04-04T15:00:00Z",
                "2026-04-04T15:15:00Z",
                "2026-04-04T15:30:00Z"
            ]
        );
    }

    #[test]
    fn a_midnight_swallowed_by_the_gap_fires_at_one_in_sao_paulo() {
        // 2018-11-04 00:00 (-03:00) jumped to 01:00 (-02:00): the day still gets its run.
        assert_eq!(
            fires("@daily", "America/Sao_Paulo", "2018-11-02T12:00:00Z", 3),
            [
                "2018-11-03T03:00:00Z",
                "2018-11-04T03:00:00Z",
                "2018-11-05T02:00:00Z"
            ]
        );
    }

    #[test]
    fn kathmandu_quarter_offset_is_honoured() {
        // +05:45: 09:00 local is 03:15 UTC.
        assert_eq!(
            fires("0 9 * * *", "Asia/Kathmandu", "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T03:15:00Z", "2026-01-02T03:15:00Z"]
        );
    }

    #[test]
    fn february_29_fires_only_in_leap_years() {
        assert_eq!(
            fires("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
    }

    #[test]
    fn daily_in_london_is_local_midnight_across_both_changes() {
        assert_eq!(
            fires("@daily", "Europe/London", "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T00:00:00Z",
                "2026-03-29T00:00:00Z",
                "2026-03-29T23:00:00Z"
            ]
        );
        assert_eq!(
            fires("@midnight", "Europe/London", "2026-10-24T12:00:00Z", 2),
            ["2026-10-24T23:00:00Z", "2026-10-26T00:00:00Z"]
        );
    }

    #[test]
    fn six_fields_put_seconds_first() {
        assert_eq!(
            fires("*/20 * * * * *", "UTC", "2026-05-01T12:00:05.500Z", 3),
            [
                "2026-05-01T12:00:20Z",
                "2026-05-01T12:00:40Z",
                "2026-05-01T12:01:00Z"
            ]
        );
        // A seconds tick inside the gap fires at the gap's first instant, 03:00:00 EDT.
        assert_eq!(
            fires(
                "30 0 2 * * *",
                "America/New_York",
                "2026-03-08T05:00:00Z",
                1
            ),
            ["2026-03-08T07:00:00Z"]
        );
    }

    #[test]
    fn weekday_0_and_7_are_sunday_and_aliases_expand() {
        // 2026-11-23 is a Monday.
        for expr in ["0 12 * * 0", "0 12 * * 7", "0 12 * * SUN"] {
            assert_eq!(
                fires(expr, "UTC", "2026-11-23T00:00:00Z", 1),
                ["2026-11-29T12:00:00Z"],
                "{expr}"
            );
        }
        assert_eq!(
            fires("@weekly", "UTC", "2026-11-23T00:00:00Z", 1),
            ["2026-11-29T00:00:00Z"]
        );
        assert_eq!(
            fires("@hourly", "UTC", "2026-11-23T00:00:00Z", 1),
            ["2026-11-23T01:00:00Z"]
        );
        assert_eq!(
            fires("@yearly", "UTC", "2026-11-23T00:00:00Z", 1),
            fires("@annually", "UTC", "2026-11-23T00:00:00Z", 1)
        );
        assert_eq!(
            fires("@monthly", "UTC", "2026-11-23T00:00:00Z", 1),
            ["2026-12-01T00:00:00Z"]
        );
    }

    #[test]
    fn an_out_of_range_field_is_named_with_its_range() {
        assert_eq!(
            error("61 * * * *", "UTC"),
            "\"61 * * * *\": minute 61 is out of range 0-59"
        );
        assert!(error("0 24 * * *", "UTC").contains("hour 24 is out of range 0-23"));
        assert!(error("0 0 * * 8", "UTC").contains("day-of-week 8 is out of range 0-7"));
    }

    #[test]
    fn wrong_field_counts_and_empty_expressions_are_refused() {
        let three = error("* * *", "UTC");
        assert!(
            three.contains("\"* * *\"") && three.contains("found 3"),
            "{three}"
        );
        // 7 fields (a year) are Quartz's form, not ours.
        assert!(error("0 0 0 1 1 * 2030", "UTC").contains("found 7"));
        assert!(error("", "UTC").contains("empty"));
        assert!(error("   ", "UTC").contains("empty"));
        assert!(error("@fortnightly", "UTC").contains("unknown alias"));
        let junk = error("x * * * *", "UTC");
        assert!(junk.starts_with("\"x * * * *\": "), "{junk}");
    }

    #[test]
    fn an_unknown_zone_is_named_and_an_example_given() {
        assert_eq!(
            error("* * * * *", "Mars/Olympus"),
            "time zone \"Mars/Olympus\" is not an IANA zone name; use e.g. \"Europe/Berlin\" or \"UTC\""
        );
    }

    #[test]
    fn a_pattern_that_never_matches_has_no_next_time() {
        let schedule = Schedule::parse("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(schedule.next_after(utc("2026-01-01T00:00:00Z")), None);
    }

    #[test]
    fn the_parse_cache_returns_what_parse_returns_and_stays_bounded() {
        let cache = ParseCache::default();
        let first = cache.parse("30 2 * * *", "America/New_York").unwrap();
        let again = cache.parse("30 2 * * *", "America/New_York").unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second lookup is a hit");
        let after = utc("2026-03-08T00:00:00Z");
        assert_eq!(
            first.next_after(after),
            Schedule::parse("30 2 * * *", "America/New_York")
                .unwrap()
                .next_after(after)
        );
        // The zone is part of the key; errors are returned (and cached) as parse returns them.
        let utc_one = cache.parse("30 2 * * *", "UTC").unwrap();
        assert_ne!(first.next_after(after), utc_one.next_after(after));
        for _ in 0..2 {
            assert_eq!(
                cache.parse("61 * * * *", "UTC").unwrap_err(),
                Schedule::parse("61 * * * *", "UTC").unwrap_err()
            );
        }
        for minute in 0..ParseCache::CAPACITY + 5 {
            let _ = cache.parse(
                &format!("{} * * * *", minute % 60),
                &format!("Zone/{minute}"),
            );
        }
        assert!(cache.parsed.lock().unwrap().len() <= ParseCache::CAPACITY);
    }
}
