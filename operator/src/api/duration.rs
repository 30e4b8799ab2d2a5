//! The one parser for the durations our specs and cert-manager's carry:
//! Go-style `720h`, `1h30m`, `90s`, `1.5h`. Units h, m and s, each at most
//! once and in that order; a bare number is refused (no unit is guessed).

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a duration such as 90s, 5m, 1h30m or 720h")]
pub struct DurationError(pub String);

pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(text.to_string());
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0_f64;
    let mut number = String::new();
    // Units seen so far must come in the order h, m, s.
    let mut last_rank = 0;
    for ch in text.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            number.push(ch);
            continue;
        }
        let (rank, scale) = match ch {
            'h' => (1, 3600.0),
            'm' => (2, 60.0),
            's' => (3, 1.0),
            _ => return Err(bad()),
        };
        let n: f64 = number.parse().map_err(|_| bad())?;
        if rank <= last_rank {
            return Err(bad());
        }
        last_rank = rank;
        number.clear();
        total += n * scale;
    }
    if !number.is_empty() || !total.is_finite() || total > u32::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_refused() {
        for bad in ["", "12", "5x", "h", "1m1h", "1h1h", "1..5h", "-5m", "5 m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse_duration("5x").unwrap_err().to_string(),
            "\"5x\" is not a duration such as 90s, 5m, 1h30m or 720h"
        );
    }
}
