//! Completion index sets as the Job status spells them (`"0-2,5,7-9"`).
use std::collections::BTreeSet;

/// Parses `"1,3-5"`; malformed parts are skipped (the status is ours to write).
pub fn parse(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(n) = part.parse() {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// Formats a set with runs compressed; None for an empty set (the field is then absent).
pub fn format(set: &BTreeSet<i32>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_compress_and_parse_back() {
        let set: BTreeSet<i32> = [0, 1, 2, 5, 7, 8, 9].into();
        assert_eq!(format(&set).as_deref(), Some("0-2,5,7-9"));
        assert_eq!(parse("0-2,5,7-9"), set);
        assert_eq!(format(&BTreeSet::new()), None);
        assert_eq!(parse("3,x,1-1"), [1, 3].into());
    }
}
