//! Durations as Go writes them (`2m0s`, `1h30m`, `300ms`, `1.5h`): the kubelet settings'
//! form.
use std::time::Duration;

/// Parses a Go duration; a bare `0` is zero, as in Go. Negative durations are refused.
pub fn parse_go(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration (such as 90s, 2m0s or 1h30m)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go("2m0s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_go("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "-1s", "1d", "s", "1h30"] {
            assert!(parse_go(bad).is_err(), "{bad}");
        }
    }
}
