//! The CronJob `spec.schedule` grammar (robfig/cron v3's standard parser, as kube-apiserver
//! validates it and kube-controller-manager evaluates it) and run times in a `spec.timeZone`.
//!
//! # Accepted syntax
//!
//! A schedule is either one of the descriptors `@yearly`/`@annually`,
//! `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly` (exact, lower case,
//! as robfig/cron matches them) or exactly five whitespace-separated fields:
//!
//! | field        | values                                          |
//! |--------------|-------------------------------------------------|
//! | minute       | `0-59`                                          |
//! | hour         | `0-23`                                          |
//! | day of month | `1-31`                                          |
//! | month        | `1-12` or `JAN`-`DEC` (case-insensitive)        |
//! | day of week  | `0-6` or `SUN`-`SAT` (case-insensitive)         |
//!
//! Each field is a comma-separated list of items; an item is `*` or `?` (the
//! whole field range), a value, a range `a-b`, or one of those followed by a
//! step `/n` (`*/n`, `a-b/n`, and `a/n`, which means `a` through the field
//! maximum in steps of `n`). `?` is accepted in every field, as robfig/cron
//! does, and means the same as `*`.
//!
//! Rejected: wrong field counts, empty list items, out-of-range values, unknown
//! names, steps that are not positive integers, reversed ranges, `@every`
//! (Kubernetes CronJobs do not support it) and a leading `TZ=`/`CRON_TZ=`
//! prefix (Kubernetes requires `spec.timeZone` instead).
//!
//! # Day matching
//!
//! As in Vixie cron and robfig/cron: a day-of-month or day-of-week field is
//! "unrestricted" when one of its items is a bare `*` or `?` (or `*/1`,
//! `?/1`). When both fields are restricted a day matches if **either** matches
//! (`0 0 13 * 5` fires on every 13th and on every Friday); otherwise a day must
//! match both, which means only the restricted one matters.
//!
//! # Time zones and daylight-saving changes
//!
//! Schedules are evaluated on local wall-clock time in the given zone, at
//! minute resolution (seconds are always zero):
//!
//! * a local time that does not exist (skipped by a spring-forward gap) is not
//!   run at all that day — `30 2 * * *` does not fire in America/New_York on
//!   the day clocks jump from 02:00 to 03:00;
//! * a local time that occurs twice (a fall-back fold) fires **once**, at its
//!   first (pre-transition) occurrence; the second pass over the repeated
//!   wall-clock times never fires. This also applies to schedules such as
//!   `*/15 * * * *`, which therefore do not fire again during the repeated
//!   hour. (robfig/cron, which steps by absolute durations, can fire a second
//!   time in the repeated hour; this module deliberately does not.)
//!
//! A search gives up after five years past the starting point's local year
//! (e.g. `0 0 30 2 *` never matches).

use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, Zoned};

/// How many years past the starting year a search may look before giving up.
const SEARCH_YEARS: i16 = 5;

/// Why a schedule or a time zone name was rejected.
///
/// Every message names the field and the offending text, so it can be shown
/// to the user as-is (for example in a CronJob event or status condition).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule is empty or only whitespace.
    #[error(
        "empty schedule: expected 5 fields (minute hour day-of-month month day-of-week) or a descriptor such as @daily"
    )]
    Empty,

    /// The schedule does not have exactly five fields.
    #[error(
        "expected exactly 5 fields (minute hour day-of-month month day-of-week), found {found} in {schedule:?}"
    )]
    FieldCount {
        /// Number of whitespace-separated fields found.
        found: usize,
        /// The schedule as given.
        schedule: String,
    },

    /// A list item or range endpoint is empty (e.g. `1,,2`, `-5`, `1,`).
    #[error("empty value in the {field} field {text:?}")]
    EmptyValue {
        /// Field name, e.g. `minute`.
        field: &'static str,
        /// The whole text of the field.
        text: String,
    },

    /// A value is not a number or name valid for its field, or is out of range.
    #[error("invalid value {value:?} for the {field} field ({allowed})")]
    InvalidValue {
        /// Field name, e.g. `minute`.
        field: &'static str,
        /// The offending value.
        value: String,
        /// The values the field accepts, e.g. `0-59`.
        allowed: &'static str,
    },

    /// A step (`/n`) is not a positive integer.
    #[error(
        "invalid step {step:?} in the {field} field item {item:?}: the step must be a positive integer"
    )]
    InvalidStep {
        /// Field name, e.g. `minute`.
        field: &'static str,
        /// The list item containing the step, e.g. `*/0`.
        item: String,
        /// The step text, e.g. `0`.
        step: String,
    },

    /// A range whose start is after its end, e.g. `5-1`.
    #[error("invalid range {item:?} in the {field} field: start {start} is after end {end}")]
    ReversedRange {
        /// Field name, e.g. `hour`.
        field: &'static str,
        /// The offending list item.
        item: String,
        /// Range start.
        start: u8,
        /// Range end.
        end: u8,
    },

    /// An item with more than one `-` or `/`.
    #[error("malformed item {item:?} in the {field} field: {reason}")]
    Malformed {
        /// Field name, e.g. `minute`.
        field: &'static str,
        /// The offending list item.
        item: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// `@every <duration>` was used; Kubernetes CronJobs do not accept it.
    #[error(
        "{schedule:?} is not supported: Kubernetes CronJob schedules do not accept @every; use a 5-field schedule such as \"*/5 * * * *\""
    )]
    EveryNotSupported {
        /// The schedule as given.
        schedule: String,
    },

    /// An `@` descriptor other than the supported ones.
    #[error(
        "unknown descriptor {descriptor:?}: expected one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
    )]
    UnknownDescriptor {
        /// The descriptor as given.
        descriptor: String,
    },

    /// The schedule starts with a `TZ=` or `CRON_TZ=` prefix.
    #[error(
        "time zone prefix {prefix:?} is not allowed in spec.schedule; use spec.timeZone instead"
    )]
    TimeZoneInSchedule {
        /// The prefix as given, e.g. `CRON_TZ=Europe/Berlin`.
        prefix: String,
    },

    /// The `spec.timeZone` name is empty, `Local`, or not in the time zone database.
    #[error("unknown time zone {name:?} in spec.timeZone: {reason}")]
    UnknownTimeZone {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// A parsed CronJob schedule.
///
/// Each field is a bitmask: bit `n` is set when value `n` matches (day of week
/// uses bits 0-6 with 0 = Sunday; `7` is folded into bit 0 while parsing).
/// Obtain one with [`str::parse`] / [`FromStr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Day of month is unrestricted (`*`/`?`), so the AND rule applies.
    dom_star: bool,
    /// Day of week is unrestricted (`*`/`?`), so the AND rule applies.
    dow_star: bool,
}

/// Static description of one of the five fields.
struct FieldSpec {
    name: &'static str,
    min: u8,
    /// Upper end for `*` and for `a/n`.
    max: u8,
    /// Largest literal value accepted (differs from `max` only for day of week).
    max_literal: u8,
    /// Three-letter names, lower case; `names[i]` means `names_base + i`.
    names: &'static [&'static str],
    names_base: u8,
    allowed: &'static str,
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    max_literal: 59,
    names: &[],
    names_base: 0,
    allowed: "0-59",
};

const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    max_literal: 23,
    names: &[],
    names_base: 0,
    allowed: "0-23",
};

const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day of month",
    min: 1,
    max: 31,
    max_literal: 31,
    names: &[],
    names_base: 0,
    allowed: "1-31",
};

const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    max_literal: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    names_base: 1,
    allowed: "1-12 or JAN-DEC",
};

const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day of week",
    min: 0,
    max: 6,
    // kube's parser (robfig/cron v3) takes 0-6 only.
    max_literal: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    names_base: 0,
    allowed: "0-6 or SUN-SAT",
};

/// Bitmask with bits `lo..=hi` set.
const fn bits(lo: u8, hi: u8) -> u64 {
    let mut mask = 0u64;
    let mut v = lo;
    while v <= hi {
        mask |= 1 << v;
        v += 1;
    }
    mask
}

impl FieldSpec {
    /// Parses one whole field; returns its bitmask and whether it is unrestricted.
    fn parse(&self, text: &str) -> Result<(u64, bool), ScheduleError> {
        let mut mask = 0u64;
        let mut star = false;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(self.empty(text));
            }
            let (range, step) = match item.split_once('/') {
                Some((range, step_text)) => {
                    if step_text.contains('/') {
                        return Err(self.malformed(item, "more than one '/'"));
                    }
                    (range, Some(self.parse_step(item, step_text)?))
                }
                None => (item, None),
            };
            let (start, end, is_star) = if range == "*" || range == "?" {
                (self.min, self.max, true)
            } else if let Some((lo, hi)) = range.split_once('-') {
                if hi.contains('-') {
                    return Err(self.malformed(item, "more than one '-'"));
                }
                (
                    self.parse_value(lo, text)?,
                    self.parse_value(hi, text)?,
                    false,
                )
            } else {
                let start = self.parse_value(range, text)?;
                // `a/n` runs from `a` to the field maximum.
                let end = if step.is_some() { self.max } else { start };
                (start, end, false)
            };
            if start > end {
                return Err(ScheduleError::ReversedRange {
                    field: self.name,
                    item: item.to_owned(),
                    start,
                    end,
                });
            }
            let step = step.unwrap_or(1);
            if is_star && step == 1 {
                star = true;
            }
            for v in (start..=end).step_by(step) {
                mask |= 1u64 << v;
            }
        }
        if self.max_literal > self.max {
            // A field whose literals go past its values folds the extra one onto the first
            // (none does now: kube's day of week takes 0-6 only).
            let extra = mask & !bits(self.min, self.max);
            if extra != 0 {
                mask = (mask & bits(self.min, self.max)) | (1 << self.min);
            }
        }
        Ok((mask, star))
    }

    /// Parses a number or three-letter name and checks its range.
    fn parse_value(&self, value: &str, text: &str) -> Result<u8, ScheduleError> {
        if value.is_empty() {
            return Err(self.empty(text));
        }
        let invalid = || ScheduleError::InvalidValue {
            field: self.name,
            value: value.to_owned(),
            allowed: self.allowed,
        };
        if value.bytes().all(|b| b.is_ascii_digit()) {
            let n: u32 = value.parse().map_err(|_| invalid())?;
            if n < u32::from(self.min) || n > u32::from(self.max_literal) {
                return Err(invalid());
            }
            return u8::try_from(n).map_err(|_| invalid());
        }
        self.names
            .iter()
            .zip(self.names_base..)
            .find(|(name, _)| name.eq_ignore_ascii_case(value))
            .map(|(_, n)| n)
            .ok_or_else(invalid)
    }

    /// Parses the `n` of `/n`: a positive integer (it may exceed the field range).
    fn parse_step(&self, item: &str, step: &str) -> Result<usize, ScheduleError> {
        let invalid = || ScheduleError::InvalidStep {
            field: self.name,
            item: item.to_owned(),
            step: step.to_owned(),
        };
        if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        match step.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid()),
        }
    }

    fn empty(&self, text: &str) -> ScheduleError {
        ScheduleError::EmptyValue {
            field: self.name,
            text: text.to_owned(),
        }
    }

    fn malformed(&self, item: &str, reason: &'static str) -> ScheduleError {
        ScheduleError::Malformed {
            field: self.name,
            item: item.to_owned(),
            reason,
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// Parses a CronJob `spec.schedule` as described in the module documentation.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim_start();
        if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
            let prefix = trimmed.split_whitespace().next().unwrap_or(trimmed);
            return Err(ScheduleError::TimeZoneInSchedule {
                prefix: prefix.to_owned(),
            });
        }
        if s.trim().is_empty() {
            return Err(ScheduleError::Empty);
        }
        if s.starts_with('@') {
            return Self::descriptor(s);
        }

        let fields: Vec<&str> = s.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
                schedule: s.to_owned(),
            });
        };
        let (minute, _) = MINUTE.parse(minute)?;
        let (hour, _) = HOUR.parse(hour)?;
        let (dom, dom_star) = DAY_OF_MONTH.parse(dom)?;
        let (month, _) = MONTH.parse(month)?;
        let (dow, dow_star) = DAY_OF_WEEK.parse(dow)?;
        Ok(Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_star,
            dow_star,
        })
    }
}

impl Schedule {
    /// Expands an `@` descriptor.
    fn descriptor(s: &str) -> Result<Self, ScheduleError> {
        let all_dom = bits(1, 31);
        let all_month = bits(1, 12);
        let all_dow = bits(0, 6);
        let at = |minute: u64, hour: u64, dom: u64, month: u64, dow: u64| Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_star: dom == all_dom,
            dow_star: dow == all_dow,
        };
        // Bit 0 of the minute and hour masks is minute 0 / hour 0.
        match s {
            "@yearly" | "@annually" => Ok(at(1, 1, 1 << 1, 1 << 1, all_dow)),
            "@monthly" => Ok(at(1, 1, 1 << 1, all_month, all_dow)),
            "@weekly" => Ok(at(1, 1, all_dom, all_month, 1)),
            "@daily" | "@midnight" => Ok(at(1, 1, all_dom, all_month, all_dow)),
            "@hourly" => Ok(at(1, bits(0, 23), all_dom, all_month, all_dow)),
            _ if s.starts_with("@every") => Err(ScheduleError::EveryNotSupported {
                schedule: s.to_owned(),
            }),
            _ => Err(ScheduleError::UnknownDescriptor {
                descriptor: s.to_owned(),
            }),
        }
    }

    /// Returns the first scheduled time strictly after `after`, in `after`'s
    /// time zone, or `None` if nothing matches within five years of `after`'s
    /// local year (e.g. `0 0 30 2 *`).
    ///
    /// The result always has zero seconds in local time. Daylight-saving
    /// changes follow the module rules: non-existent local times are skipped,
    /// repeated local times fire once, at their first occurrence.
    pub fn next_after(&self, after: Zoned) -> Option<Zoned> {
        let tz = after.time_zone().clone();
        let next = self.next_timestamp(after.timestamp(), &tz)?;
        Some(next.to_zoned(tz))
    }

    /// Returns the scheduled times `t` with `start < t <= end`, evaluated in
    /// `tz`, in ascending order, and at most `limit` of them (the earliest
    /// ones).
    ///
    /// For a CronJob controller: the last element is the most recent missed
    /// time and the length is the number of missed times, unless the result
    /// was capped. To detect "more than N missed" (Kubernetes uses N = 100),
    /// pass `limit = N + 1` and check whether `N + 1` times came back. Each
    /// step searches at most five years ahead of the previous time, like
    /// [`Schedule::next_after`].
    pub fn times_between(
        &self,
        start: Timestamp,
        end: Timestamp,
        tz: &TimeZone,
        limit: usize,
    ) -> Vec<Timestamp> {
        let mut times = Vec::new();
        let mut cursor = start;
        while times.len() < limit {
            match self.next_timestamp(cursor, tz) {
                Some(t) if t <= end => {
                    times.push(t);
                    cursor = t;
                }
                _ => break,
            }
        }
        times
    }

    /// The first scheduled instant strictly after `after`, evaluated in `tz`.
    fn next_timestamp(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = tz.to_datetime(after);
        let year_limit = local.year().checked_add(SEARCH_YEARS)?;
        let mut cursor = Civil::from_datetime(local).next_minute();
        loop {
            let candidate = self.next_local_match(cursor, year_limit)?;
            let dt = candidate.to_datetime()?;
            let offset = match tz.to_ambiguous_timestamp(dt).offset() {
                // The wall-clock time does not exist today: skip it.
                AmbiguousOffset::Gap { .. } => None,
                AmbiguousOffset::Unambiguous { offset } => Some(offset),
                // Repeated wall-clock time: only its first occurrence counts.
                AmbiguousOffset::Fold { before, .. } => Some(before),
            };
            if let Some(offset) = offset {
                let t = offset.to_timestamp(dt).ok()?;
                // Within a fold, an earlier wall-clock time's first occurrence
                // may lie before `after`; it has already fired, so move on.
                if t > after {
                    return Some(t);
                }
            }
            cursor = candidate.next_minute();
        }
    }

    /// The first local wall-clock minute at or after `c` matching every field,
    /// jumping whole months, days and hours when a coarser field fails.
    fn next_local_match(&self, mut c: Civil, year_limit: i16) -> Option<Civil> {
        loop {
            c.normalize();
            if c.year > year_limit {
                return None;
            }
            if !has(self.month, c.month) {
                (c.day, c.hour, c.minute) = (1, 0, 0);
                c.month = next_bit(self.month, c.month).unwrap_or(13);
                continue;
            }
            if !self.day_matches(c.year, c.month, c.day)? {
                (c.day, c.hour, c.minute) = (c.day + 1, 0, 0);
                continue;
            }
            if !has(self.hour, c.hour) {
                c.minute = 0;
                c.hour = next_bit(self.hour, c.hour).unwrap_or(24);
                continue;
            }
            if !has(self.minute, c.minute) {
                c.minute = next_bit(self.minute, c.minute).unwrap_or(60);
                continue;
            }
            return Some(c);
        }
    }

    /// Applies the day-of-month / day-of-week AND/OR rule to a valid date.
    fn day_matches(&self, year: i16, month: u8, day: u8) -> Option<bool> {
        let date = Date::new(year, i8::try_from(month).ok()?, i8::try_from(day).ok()?).ok()?;
        let weekday = u8::try_from(date.weekday().to_sunday_zero_offset()).ok()?;
        let dom_match = has(self.dom, day);
        let dow_match = has(self.dow, weekday);
        Some(if self.dom_star || self.dow_star {
            dom_match && dow_match
        } else {
            dom_match || dow_match
        })
    }
}

/// Resolves a `spec.timeZone` value.
///
/// `None` (the field is unset) gives UTC. Note that kube-controller-manager
/// itself uses its own local time zone in that case; this module chooses UTC
/// so results do not depend on the host the controller runs on.
///
/// `Some(name)` looks `name` up in the system IANA time zone database
/// (`/usr/share/zoneinfo` via jiff). Empty names and `Local` are rejected, as
/// Kubernetes validation does; so are names that match a zone only when case
/// is ignored (`europe/berlin`), because Kubernetes looks names up
/// case-sensitively. Unknown names give [`ScheduleError::UnknownTimeZone`].
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, ScheduleError> {
    let Some(name) = name else {
        return Ok(TimeZone::UTC);
    };
    let reject = |reason: String| ScheduleError::UnknownTimeZone {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(reject(
            "the name is empty; leave spec.timeZone unset for UTC".to_owned(),
        ));
    }
    if name.eq_ignore_ascii_case("local") {
        return Err(reject(
            "\"Local\" is not allowed; use an explicit IANA time zone name such as \"Europe/Berlin\"".to_owned(),
        ));
    }
    let tz = TimeZone::get(name).map_err(|e| reject(e.to_string()))?;
    // jiff looks names up case-insensitively; Kubernetes (Go's time.LoadLocation
    // on Linux) does not, so insist on the exact spelling.
    match tz.iana_name() {
        Some(canonical) if canonical != name && canonical.eq_ignore_ascii_case(name) => {
            Err(reject(format!(
                "time zone names are case-sensitive; did you mean {canonical:?}?"
            )))
        }
        _ => Ok(tz),
    }
}

/// Whether bit `n` is set.
fn has(mask: u64, n: u8) -> bool {
    n < 64 && mask & (1u64 << n) != 0
}

/// The lowest set bit at or above `from`.
fn next_bit(mask: u64, from: u8) -> Option<u8> {
    let rest = mask.checked_shr(u32::from(from)).unwrap_or(0);
    if rest == 0 {
        return None;
    }
    u8::try_from(rest.trailing_zeros()).ok().map(|tz| from + tz)
}

fn is_leap_year(year: i16) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i16, month: u8) -> u8 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A local wall-clock minute whose fields may temporarily overflow
/// (minute 60, hour 24, day 32, month 13) until [`Civil::normalize`] carries
/// them.
#[derive(Debug, Clone, Copy)]
struct Civil {
    year: i16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
}

impl Civil {
    fn from_datetime(dt: DateTime) -> Self {
        // jiff guarantees these ranges, so the conversions cannot fail.
        let small = |v: i8| u8::try_from(v).unwrap_or(0);
        Civil {
            year: dt.year(),
            month: small(dt.month()),
            day: small(dt.day()),
            hour: small(dt.hour()),
            minute: small(dt.minute()),
        }
    }

    /// The following minute (not yet normalized).
    fn next_minute(self) -> Self {
        Civil {
            minute: self.minute + 1,
            ..self
        }
    }

    /// Carries overflowing fields into the next larger unit; smaller units are
    /// already reset by whoever overflowed the larger one.
    fn normalize(&mut self) {
        if self.minute > 59 {
            self.minute = 0;
            self.hour += 1;
        }
        if self.hour > 23 {
            self.hour = 0;
            self.day += 1;
        }
        if self.month > 12 {
            self.month = 1;
            self.day = 1;
            self.year = self.year.saturating_add(1);
        }
        if self.day > days_in_month(self.year, self.month) {
            self.day = 1;
            self.month += 1;
            if self.month > 12 {
                self.month = 1;
                self.year = self.year.saturating_add(1);
            }
        }
    }

    fn to_datetime(self) -> Option<DateTime> {
        DateTime::new(
            self.year,
            i8::try_from(self.month).ok()?,
            i8::try_from(self.day).ok()?,
            i8::try_from(self.hour).ok()?,
            i8::try_from(self.minute).ok()?,
            0,
            0,
        )
        .ok()
    }
}

#[cfg(test)]
mod tests;
