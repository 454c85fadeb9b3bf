//! The cron schedule parser and search against the cases kube and Vixie cron define.
use super::*;

fn parse(s: &str) -> Schedule {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn err(s: &str) -> String {
    match s.parse::<Schedule>() {
        Ok(schedule) => panic!("{s:?} should be rejected, got {schedule:?}"),
        Err(e) => e.to_string(),
    }
}

fn set(values: &[u8]) -> u64 {
    values.iter().fold(0, |m, v| m | 1 << v)
}

fn zoned(s: &str) -> Zoned {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should be a zoned datetime: {e}"))
}

fn ts(s: &str) -> Timestamp {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should be a timestamp: {e}"))
}

fn next(schedule: &str, after: &str) -> Option<String> {
    parse(schedule)
        .next_after(zoned(after))
        .map(|z| z.to_string())
}

/// The first `n` times after `after`, as zoned strings.
fn sequence(schedule: &str, after: &str, n: usize) -> Vec<String> {
    let schedule = parse(schedule);
    let mut cursor = zoned(after);
    let mut out = Vec::new();
    for _ in 0..n {
        cursor = schedule
            .next_after(cursor)
            .expect("schedule should keep firing");
        out.push(cursor.to_string());
    }
    out
}

// ---- syntax ----

#[test]
fn parses_star_and_question_mark() {
    let s = parse("* * * * *");
    assert_eq!(s.minute, bits(0, 59));
    assert_eq!(s.hour, bits(0, 23));
    assert_eq!(s.dom, bits(1, 31));
    assert_eq!(s.month, bits(1, 12));
    assert_eq!(s.dow, bits(0, 6));
    assert!(s.dom_star && s.dow_star);
    assert_eq!(parse("? ? ? ? ?"), s);
    assert_eq!(parse("0 0 ? * MON").dow, set(&[1]));
    assert!(parse("0 0 ? * MON").dom_star);
}

#[test]
fn parses_numbers_and_whitespace() {
    let s = parse("  5\t4  3 2\t\t1 ");
    assert_eq!(s.minute, set(&[5]));
    assert_eq!(s.hour, set(&[4]));
    assert_eq!(s.dom, set(&[3]));
    assert_eq!(s.month, set(&[2]));
    assert_eq!(s.dow, set(&[1]));
    assert!(!s.dom_star && !s.dow_star);
    // Leading zeros are plain decimal numbers.
    assert_eq!(parse("08 09 * * *").hour, set(&[9]));
    assert_eq!(parse("08 09 * * *").minute, set(&[8]));
}

#[test]
fn parses_names_case_insensitively() {
    assert_eq!(parse("0 0 * JAN *").month, set(&[1]));
    assert_eq!(parse("0 0 * dec *").month, set(&[12]));
    assert_eq!(parse("0 0 * Jun-aUg *").month, set(&[6, 7, 8]));
    assert_eq!(parse("0 0 * * SUN").dow, set(&[0]));
    assert_eq!(parse("0 0 * * sat").dow, set(&[6]));
    assert_eq!(parse("0 0 * * Mon-Fri").dow, set(&[1, 2, 3, 4, 5]));
    assert_eq!(parse("0 0 * * mon,WED,fri").dow, set(&[1, 3, 5]));
    assert_eq!(parse("0 0 * jan,3,MAY-jun *").month, set(&[1, 3, 5, 6]));
}

#[test]
fn seven_is_not_a_day_of_week_as_kube_parses_it() {
    for s in ["0 0 * * 7", "0 0 * * 5-7", "0 0 * * 0-7", "0 0 * * 0,7"] {
        assert!(err(s).contains("day of week"), "{s}");
    }
}

#[test]
fn parses_ranges_steps_and_lists() {
    assert_eq!(parse("10-15 * * * *").minute, bits(10, 15));
    assert_eq!(parse("*/15 * * * *").minute, set(&[0, 15, 30, 45]));
    assert_eq!(parse("?/20 * * * *").minute, set(&[0, 20, 40]));
    assert_eq!(parse("0 10-20/5 * * *").hour, set(&[10, 15, 20]));
    assert_eq!(parse("0 10-21/5 * * *").hour, set(&[10, 15, 20]));
    // a/n: from a to the field maximum.
    assert_eq!(parse("5/20 * * * *").minute, set(&[5, 25, 45]));
    assert_eq!(parse("0 0 */10 * *").dom, set(&[1, 11, 21, 31]));
    assert_eq!(parse("0 0 * */3 *").month, set(&[1, 4, 7, 10]));
    assert_eq!(parse("0 0 * * MON/2").dow, set(&[1, 3, 5]));
    assert_eq!(parse("0 0 * * 1/2").dow, set(&[1, 3, 5]));
    // Steps larger than the range select only the start.
    assert_eq!(parse("*/100 * * * *").minute, set(&[0]));
    // Single-value ranges and lists combining every form.
    assert_eq!(parse("7-7 * * * *").minute, set(&[7]));
    assert_eq!(
        parse("1,2-4,*/30,50/5 * * * *").minute,
        set(&[0, 1, 2, 3, 4, 30, 50, 55])
    );
}

#[test]
fn star_detection_follows_robfig() {
    // Stepped stars with a step > 1 are restrictions; `*/1` is not.
    assert!(!parse("0 0 */2 * *").dom_star);
    assert!(parse("0 0 */1 * *").dom_star);
    assert!(parse("0 0 1,* * *").dom_star);
    assert!(!parse("0 0 1-31 * *").dom_star);
    assert!(!parse("0 0 * * 0-6").dow_star);
}

#[test]
fn parses_descriptors() {
    assert_eq!(parse("@yearly"), parse("0 0 1 1 *"));
    assert_eq!(parse("@annually"), parse("0 0 1 1 *"));
    assert_eq!(parse("@monthly"), parse("0 0 1 * *"));
    assert_eq!(parse("@weekly"), parse("0 0 * * 0"));
    assert_eq!(parse("@daily"), parse("0 0 * * *"));
    assert_eq!(parse("@midnight"), parse("0 0 * * *"));
    assert_eq!(parse("@hourly"), parse("0 * * * *"));
}

// ---- rejections ----

#[test]
fn rejects_out_of_range_values_naming_the_field() {
    assert_eq!(
        err("61 * * * *"),
        r#"invalid value "61" for the minute field (0-59)"#
    );
    assert_eq!(
        err("0 24 * * *"),
        r#"invalid value "24" for the hour field (0-23)"#
    );
    assert_eq!(
        err("0 0 0 * *"),
        r#"invalid value "0" for the day of month field (1-31)"#
    );
    assert_eq!(
        err("0 0 32 * *"),
        r#"invalid value "32" for the day of month field (1-31)"#
    );
    assert_eq!(
        err("0 0 * 13 *"),
        r#"invalid value "13" for the month field (1-12 or JAN-DEC)"#
    );
    assert_eq!(
        err("0 0 * 0 *"),
        r#"invalid value "0" for the month field (1-12 or JAN-DEC)"#
    );
    assert_eq!(
        err("0 0 * * 8"),
        r#"invalid value "8" for the day of week field (0-6 or SUN-SAT)"#
    );
    assert_eq!(
        err("0 0 * * 1-8"),
        r#"invalid value "8" for the day of week field (0-6 or SUN-SAT)"#
    );
    assert_eq!(
        err("99999999999999999999 * * * *"),
        r#"invalid value "99999999999999999999" for the minute field (0-59)"#
    );
}

#[test]
fn rejects_bad_names_and_garbage() {
    assert_eq!(
        err("0 0 * JANUARY *"),
        r#"invalid value "JANUARY" for the month field (1-12 or JAN-DEC)"#
    );
    assert_eq!(
        err("0 0 * * FRY"),
        r#"invalid value "FRY" for the day of week field (0-6 or SUN-SAT)"#
    );
    // Names only belong to their own field.
    assert_eq!(
        err("0 0 * MON *"),
        r#"invalid value "MON" for the month field (1-12 or JAN-DEC)"#
    );
    assert_eq!(
        err("x * * * *"),
        r#"invalid value "x" for the minute field (0-59)"#
    );
    assert_eq!(
        err("+5 * * * *"),
        r#"invalid value "+5" for the minute field (0-59)"#
    );
    assert_eq!(
        err("*-5 * * * *"),
        r#"invalid value "*" for the minute field (0-59)"#
    );
}

#[test]
fn rejects_wrong_field_counts() {
    assert_eq!(
        err("* * * *"),
        r#"expected exactly 5 fields (minute hour day-of-month month day-of-week), found 4 in "* * * *""#
    );
    assert_eq!(
        err("0 * * * * *"),
        r#"expected exactly 5 fields (minute hour day-of-month month day-of-week), found 6 in "0 * * * * *""#
    );
    assert_eq!(
        err(""),
        "empty schedule: expected 5 fields (minute hour day-of-month month day-of-week) or a descriptor such as @daily"
    );
    assert_eq!(err("   \t"), err(""));
}

#[test]
fn rejects_empty_items() {
    assert_eq!(
        err("1,,2 * * * *"),
        r#"empty value in the minute field "1,,2""#
    );
    assert_eq!(err("0 1, * * *"), r#"empty value in the hour field "1,""#);
    assert_eq!(
        err("0 0 -5 * *"),
        r#"empty value in the day of month field "-5""#
    );
    assert_eq!(err("0 0 * 1- *"), r#"empty value in the month field "1-""#);
    assert_eq!(err("/5 * * * *"), r#"empty value in the minute field "/5""#);
}

#[test]
fn rejects_bad_steps() {
    assert_eq!(
        err("*/0 * * * *"),
        r#"invalid step "0" in the minute field item "*/0": the step must be a positive integer"#
    );
    assert_eq!(
        err("0 1-5/0 * * *"),
        r#"invalid step "0" in the hour field item "1-5/0": the step must be a positive integer"#
    );
    assert_eq!(
        err("*/ * * * *"),
        r#"invalid step "" in the minute field item "*/": the step must be a positive integer"#
    );
    assert_eq!(
        err("*/-1 * * * *"),
        r#"invalid step "-1" in the minute field item "*/-1": the step must be a positive integer"#
    );
    assert_eq!(
        err("*/x * * * *"),
        r#"invalid step "x" in the minute field item "*/x": the step must be a positive integer"#
    );
    assert_eq!(
        err("*/2/3 * * * *"),
        r#"malformed item "*/2/3" in the minute field: more than one '/'"#
    );
    assert_eq!(
        err("1-2-3 * * * *"),
        r#"malformed item "1-2-3" in the minute field: more than one '-'"#
    );
}

#[test]
fn rejects_reversed_ranges() {
    assert_eq!(
        err("0 5-1 * * *"),
        r#"invalid range "5-1" in the hour field: start 5 is after end 1"#
    );
    assert_eq!(
        err("0 0 * * FRI-MON"),
        r#"invalid range "FRI-MON" in the day of week field: start 5 is after end 1"#
    );
    assert_eq!(
        err("0 0 * DEC-JAN/2 *"),
        r#"invalid range "DEC-JAN/2" in the month field: start 12 is after end 1"#
    );
}

#[test]
fn rejects_every_and_unknown_descriptors() {
    assert_eq!(
        err("@every 5m"),
        r#""@every 5m" is not supported: Kubernetes CronJob schedules do not accept @every; use a 5-field schedule such as "*/5 * * * *""#
    );
    assert_eq!(
        err("@every"),
        r#""@every" is not supported: Kubernetes CronJob schedules do not accept @every; use a 5-field schedule such as "*/5 * * * *""#
    );
    assert_eq!(
        err("@fortnightly"),
        r#"unknown descriptor "@fortnightly": expected one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"#
    );
    // Descriptors are matched exactly, as robfig/cron does.
    assert!(err("@DAILY").starts_with(r#"unknown descriptor "@DAILY""#));
    assert!(err("@daily ").starts_with(r#"unknown descriptor "@daily ""#));
}

#[test]
fn rejects_time_zone_prefixes() {
    assert_eq!(
        err("TZ=Europe/Berlin 0 9 * * *"),
        r#"time zone prefix "TZ=Europe/Berlin" is not allowed in spec.schedule; use spec.timeZone instead"#
    );
    assert_eq!(
        err("CRON_TZ=America/New_York @daily"),
        r#"time zone prefix "CRON_TZ=America/New_York" is not allowed in spec.schedule; use spec.timeZone instead"#
    );
    assert!(err(" TZ=UTC 0 0 * * *").contains("use spec.timeZone instead"));
}

#[test]
fn errors_are_matchable() {
    assert_eq!(
        "0 0 * * 9".parse::<Schedule>(),
        Err(ScheduleError::InvalidValue {
            field: "day of week",
            value: "9".to_owned(),
            allowed: "0-6 or SUN-SAT",
        })
    );
}

// ---- next_after ----

#[test]
fn every_fifteen_minutes() {
    assert_eq!(
        sequence("*/15 * * * *", "2025-01-01T23:07:31+00:00[UTC]", 5),
        [
            "2025-01-01T23:15:00+00:00[UTC]",
            "2025-01-01T23:30:00+00:00[UTC]",
            "2025-01-01T23:45:00+00:00[UTC]",
            "2025-01-02T00:00:00+00:00[UTC]",
            "2025-01-02T00:15:00+00:00[UTC]",
        ]
    );
}

#[test]
fn next_is_strictly_after_and_drops_seconds() {
    assert_eq!(
        next("* * * * *", "2025-01-01T10:00:00+00:00[UTC]").as_deref(),
        Some("2025-01-01T10:01:00+00:00[UTC]")
    );
    assert_eq!(
        next("* * * * *", "2025-01-01T10:00:59.999+00:00[UTC]").as_deref(),
        Some("2025-01-01T10:01:00+00:00[UTC]")
    );
    assert_eq!(
        next("0 0 1 1 *", "2025-12-31T23:59:00+00:00[UTC]").as_deref(),
        Some("2026-01-01T00:00:00+00:00[UTC]")
    );
    assert_eq!(
        next("59 23 31 12 *", "2025-01-01T00:00:00+00:00[UTC]").as_deref(),
        Some("2025-12-31T23:59:00+00:00[UTC]")
    );
}

#[test]
fn weekdays_at_nine() {
    // 2025-01-03 is a Friday.
    assert_eq!(
        sequence("0 9 * * MON-FRI", "2025-01-03T08:00:00+00:00[UTC]", 3),
        [
            "2025-01-03T09:00:00+00:00[UTC]",
            "2025-01-06T09:00:00+00:00[UTC]",
            "2025-01-07T09:00:00+00:00[UTC]",
        ]
    );
    assert_eq!(
        next("0 9 * * MON-FRI", "2025-01-04T12:00:00+00:00[UTC]").as_deref(),
        Some("2025-01-06T09:00:00+00:00[UTC]")
    );
}

#[test]
fn hourly() {
    assert_eq!(
        sequence("@hourly", "2025-06-30T22:00:00+00:00[UTC]", 3),
        [
            "2025-06-30T23:00:00+00:00[UTC]",
            "2025-07-01T00:00:00+00:00[UTC]",
            "2025-07-01T01:00:00+00:00[UTC]",
        ]
    );
}

#[test]
fn other_descriptors_fire_when_expected() {
    let after = "2025-01-01T12:00:00+00:00[UTC]"; // a Wednesday
    assert_eq!(
        next("@yearly", after).as_deref(),
        Some("2026-01-01T00:00:00+00:00[UTC]")
    );
    assert_eq!(
        next("@monthly", after).as_deref(),
        Some("2025-02-01T00:00:00+00:00[UTC]")
    );
    assert_eq!(
        next("@weekly", after).as_deref(),
        Some("2025-01-05T00:00:00+00:00[UTC]")
    );
    assert_eq!(
        next("@daily", after).as_deref(),
        Some("2025-01-02T00:00:00+00:00[UTC]")
    );
}

#[test]
fn day_of_month_or_day_of_week() {
    // January 2025: Fridays are 3, 10, 17, 24, 31; the 13th is a Monday.
    assert_eq!(
        sequence("0 0 13 * 5", "2025-01-01T00:00:00+00:00[UTC]", 7),
        [
            "2025-01-03T00:00:00+00:00[UTC]",
            "2025-01-10T00:00:00+00:00[UTC]",
            "2025-01-13T00:00:00+00:00[UTC]",
            "2025-01-17T00:00:00+00:00[UTC]",
            "2025-01-24T00:00:00+00:00[UTC]",
            "2025-01-31T00:00:00+00:00[UTC]",
            "2025-02-07T00:00:00+00:00[UTC]",
        ]
    );
    // Only one field restricted: the other does not widen the match.
    assert_eq!(
        sequence("0 0 13 * *", "2025-01-01T00:00:00+00:00[UTC]", 2),
        [
            "2025-01-13T00:00:00+00:00[UTC]",
            "2025-02-13T00:00:00+00:00[UTC]",
        ]
    );
    assert_eq!(
        sequence("0 0 ? * FRI", "2025-01-01T00:00:00+00:00[UTC]", 2),
        [
            "2025-01-03T00:00:00+00:00[UTC]",
            "2025-01-10T00:00:00+00:00[UTC]",
        ]
    );
    // `*/2` restricts (OR rule), `*/1` does not (AND rule).
    assert_eq!(
        next("0 0 */2 * 4", "2025-01-01T00:00:00+00:00[UTC]").as_deref(),
        Some("2025-01-02T00:00:00+00:00[UTC]")
    );
    assert_eq!(
        next("0 0 */1 * 5", "2025-01-01T00:00:00+00:00[UTC]").as_deref(),
        Some("2025-01-03T00:00:00+00:00[UTC]")
    );
}

#[test]
fn leap_day_and_impossible_dates() {
    assert_eq!(
        next("0 0 29 2 *", "2025-03-01T00:00:00+00:00[UTC]").as_deref(),
        Some("2028-02-29T00:00:00+00:00[UTC]")
    );
    assert_eq!(next("0 0 30 2 *", "2025-03-01T00:00:00+00:00[UTC]"), None);
    assert_eq!(
        next("0 0 31 4,6,9,11 *", "2025-01-01T00:00:00+00:00[UTC]"),
        None
    );
    // Beyond the five-year horizon.
    assert_eq!(next("0 0 29 2 *", "2096-03-01T00:00:00+00:00[UTC]"), None);
    // Near the end of jiff's supported range: no panic, just None.
    assert_eq!(next("0 0 30 2 *", "9998-01-01T00:00:00+00:00[UTC]"), None);
}

#[test]
fn computed_in_the_zone_of_after() {
    assert_eq!(
        next("0 9 * * *", "2025-06-01T08:00:00+02:00[Europe/Berlin]").as_deref(),
        Some("2025-06-01T09:00:00+02:00[Europe/Berlin]")
    );
    assert_eq!(
        next("0 9 * * *", "2025-06-01T08:00:00+00:00[UTC]").as_deref(),
        Some("2025-06-01T09:00:00+00:00[UTC]")
    );
    // Same instant, different zone: the local day decides.
    assert_eq!(
        next("0 0 * * SAT", "2025-01-03T23:30:00-05:00[America/New_York]").as_deref(),
        Some("2025-01-04T00:00:00-05:00[America/New_York]")
    );
}

#[test]
fn spring_forward_skips_missing_local_time() {
    // 2025-03-09 02:00 EST -> 03:00 EDT in New York.
    assert_eq!(
        sequence(
            "30 2 * * *",
            "2025-03-08T00:00:00-05:00[America/New_York]",
            3
        ),
        [
            "2025-03-08T02:30:00-05:00[America/New_York]",
            "2025-03-10T02:30:00-04:00[America/New_York]",
            "2025-03-11T02:30:00-04:00[America/New_York]",
        ]
    );
    assert_eq!(
        next("* * * * *", "2025-03-09T01:59:00-05:00[America/New_York]").as_deref(),
        Some("2025-03-09T03:00:00-04:00[America/New_York]")
    );
}

#[test]
fn fall_back_fires_once_at_first_occurrence() {
    // 2025-11-02 02:00 EDT -> 01:00 EST in New York: 01:xx happens twice.
    assert_eq!(
        sequence(
            "30 1 * * *",
            "2025-11-01T12:00:00-04:00[America/New_York]",
            3
        ),
        [
            "2025-11-02T01:30:00-04:00[America/New_York]",
            "2025-11-03T01:30:00-05:00[America/New_York]",
            "2025-11-04T01:30:00-05:00[America/New_York]",
        ]
    );
    // Starting inside the fold, after the first 01:30 but before the second.
    assert_eq!(
        next("30 1 * * *", "2025-11-02T01:45:00-04:00[America/New_York]").as_deref(),
        Some("2025-11-03T01:30:00-05:00[America/New_York]")
    );
    assert_eq!(
        next("30 1 * * *", "2025-11-02T01:10:00-05:00[America/New_York]").as_deref(),
        Some("2025-11-03T01:30:00-05:00[America/New_York]")
    );
    // Wall-clock times in the repeated hour fire once.
    let tz = time_zone(Some("America/New_York")).expect("zone");
    let times = parse("*/30 * * * *").times_between(
        ts("2025-11-02T04:45:00Z"),
        ts("2025-11-02T08:15:00Z"),
        &tz,
        100,
    );
    let local: Vec<String> = times
        .iter()
        .map(|t| t.to_zoned(tz.clone()).to_string())
        .collect();
    assert_eq!(
        local,
        [
            "2025-11-02T01:00:00-04:00[America/New_York]",
            "2025-11-02T01:30:00-04:00[America/New_York]",
            "2025-11-02T02:00:00-05:00[America/New_York]",
            "2025-11-02T02:30:00-05:00[America/New_York]",
            "2025-11-02T03:00:00-05:00[America/New_York]",
        ]
    );
}

/// Reference for the search: walks every minute (as an instant) and keeps
/// the first whose local wall-clock time matches and is that wall-clock
/// time's first occurrence.
fn brute_force_next(
    s: &Schedule,
    after: Timestamp,
    tz: &TimeZone,
    minutes: i64,
) -> Option<Timestamp> {
    let minute = jiff::SignedDuration::from_mins(1);
    let local = tz.to_datetime(after);
    let start_local = local
        .with()
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .expect("valid");
    let mut t = after
        - jiff::SignedDuration::from_secs(i64::from(local.second()))
        - jiff::SignedDuration::from_nanos(i64::from(local.subsec_nanosecond()));
    assert_eq!(
        tz.to_datetime(t),
        start_local,
        "zone offsets are whole minutes"
    );
    for _ in 0..minutes {
        t = t.checked_add(minute).expect("in range");
        let dt = tz.to_datetime(t);
        let first = tz.to_ambiguous_timestamp(dt).earlier().expect("exists");
        let matches = has(s.minute, u8::try_from(dt.minute()).expect("u8"))
            && has(s.hour, u8::try_from(dt.hour()).expect("u8"))
            && has(s.month, u8::try_from(dt.month()).expect("u8"))
            && s.day_matches(
                dt.year(),
                u8::try_from(dt.month()).expect("u8"),
                u8::try_from(dt.day()).expect("u8"),
            ) == Some(true);
        if matches && first == t && t > after {
            return Some(t);
        }
    }
    None
}

/// Deterministic pseudo-random number below `n` (a 64-bit LCG).
fn random_below(rng: &mut u64, n: u64) -> u64 {
    *rng = rng
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*rng >> 33) % n
}

/// Deterministic pseudo-random field text for the cross-check.
fn random_field(rng: &mut u64, min: u8, max: u8) -> String {
    let span = u64::from(max - min) + 1;
    let pick = |rng: &mut u64| min + u8::try_from(random_below(rng, span)).expect("u8");
    match random_below(rng, 6) {
        0 | 1 => "*".to_owned(),
        2 => pick(rng).to_string(),
        3 => {
            let (a, b) = (pick(rng), pick(rng));
            format!("{}-{}", a.min(b), a.max(b))
        }
        4 => format!("*/{}", 1 + random_below(rng, span.min(12))),
        _ => format!("{},{}", pick(rng), pick(rng)),
    }
}

#[test]
fn search_agrees_with_minute_by_minute_reference() {
    let zones = [
        TimeZone::UTC,
        time_zone(Some("America/New_York")).expect("zone"),
        time_zone(Some("Europe/Berlin")).expect("zone"),
    ];
    // 40-day windows from these cover the 2025 spring and autumn
    // transitions of both New York and Berlin, and a year end.
    let starts = [
        ts("2025-03-08T05:17:42Z"),
        ts("2025-10-20T03:59:00Z"),
        ts("2025-12-30T22:00:00Z"),
    ];
    let window = 40 * 24 * 60;
    let mut rng = 0x5eed_u64;
    let mut compared = 0;
    for case in 0..60 {
        let text = format!(
            "{} {} {} {} {}",
            random_field(&mut rng, 0, 59),
            random_field(&mut rng, 0, 23),
            random_field(&mut rng, 1, 31),
            random_field(&mut rng, 1, 12),
            random_field(&mut rng, 0, 6),
        );
        let schedule = parse(&text);
        let tz = &zones[case % zones.len()];
        let mut after = starts[(case / zones.len()) % starts.len()];
        for _ in 0..3 {
            let expected = brute_force_next(&schedule, after, tz, window);
            let actual = schedule.next_timestamp(after, tz);
            match expected {
                Some(e) => {
                    assert_eq!(actual, Some(e), "{text:?} after {after} in {tz:?}");
                    compared += 1;
                }
                None => {
                    let horizon = after + jiff::SignedDuration::from_mins(window);
                    assert!(actual.is_none_or(|a| a > horizon), "{text:?} after {after}");
                    break;
                }
            }
            after = expected.unwrap_or(after);
        }
    }
    assert!(compared >= 90, "only {compared} non-empty comparisons");
}

// ---- times_between ----

#[test]
fn times_between_bounds_and_limit() {
    let s = parse("*/15 * * * *");
    let start = ts("2025-01-01T00:00:00Z");
    let end = ts("2025-01-01T01:00:00Z");
    let utc = TimeZone::UTC;
    // start is exclusive, end inclusive.
    assert_eq!(
        s.times_between(start, end, &utc, 100),
        [
            ts("2025-01-01T00:15:00Z"),
            ts("2025-01-01T00:30:00Z"),
            ts("2025-01-01T00:45:00Z"),
            ts("2025-01-01T01:00:00Z"),
        ]
    );
    // The limit keeps the earliest times.
    assert_eq!(
        s.times_between(start, end, &utc, 2),
        [ts("2025-01-01T00:15:00Z"), ts("2025-01-01T00:30:00Z")]
    );
    assert!(s.times_between(start, end, &utc, 0).is_empty());
    assert!(s.times_between(end, start, &utc, 100).is_empty());
    assert!(s.times_between(start, start, &utc, 100).is_empty());
    // A controller-style cap: 101 requested, more exist.
    let day_later = ts("2025-01-02T00:00:00Z");
    let capped = parse("* * * * *").times_between(start, day_later, &utc, 101);
    assert_eq!(capped.len(), 101);
    assert_eq!(capped.last(), Some(&ts("2025-01-01T01:41:00Z")));
}

#[test]
fn times_between_uses_the_zone() {
    let berlin = time_zone(Some("Europe/Berlin")).expect("zone");
    let times = parse("0 9 * * *").times_between(
        ts("2025-03-29T00:00:00Z"),
        ts("2025-03-31T00:00:00Z"),
        &berlin,
        10,
    );
    // Berlin switches from +01 to +02 on 2025-03-30.
    assert_eq!(
        times,
        [ts("2025-03-29T08:00:00Z"), ts("2025-03-30T07:00:00Z")]
    );
}

// ---- time_zone ----

#[test]
fn time_zone_resolution() {
    assert_eq!(time_zone(None).expect("UTC"), TimeZone::UTC);

    let berlin = time_zone(Some("Europe/Berlin")).expect("Europe/Berlin is in the tzdb");
    assert_eq!(berlin.iana_name(), Some("Europe/Berlin"));
    let summer = ts("2025-07-01T12:00:00Z").to_zoned(berlin.clone());
    assert_eq!(summer.offset(), jiff::tz::offset(2));
    let winter = ts("2025-01-01T12:00:00Z").to_zoned(berlin);
    assert_eq!(winter.offset(), jiff::tz::offset(1));

    let unknown = time_zone(Some("Mars/Olympus_Mons")).expect_err("unknown zone");
    assert!(matches!(
        &unknown,
        ScheduleError::UnknownTimeZone { name, .. } if name == "Mars/Olympus_Mons"
    ));
    assert!(
        unknown
            .to_string()
            .starts_with(r#"unknown time zone "Mars/Olympus_Mons" in spec.timeZone: "#),
        "{unknown}"
    );

    assert_eq!(
        time_zone(Some("")).expect_err("empty").to_string(),
        r#"unknown time zone "" in spec.timeZone: the name is empty; leave spec.timeZone unset for UTC"#
    );
    assert_eq!(
        time_zone(Some("europe/berlin"))
            .expect_err("wrong case")
            .to_string(),
        r#"unknown time zone "europe/berlin" in spec.timeZone: time zone names are case-sensitive; did you mean "Europe/Berlin"?"#
    );
    assert_eq!(
        time_zone(Some("UTC")).expect("UTC").iana_name(),
        Some("UTC")
    );
    assert!(time_zone(Some("Local"))
        .expect_err("Local")
        .to_string()
        .contains("use an explicit IANA time zone name"));
}
