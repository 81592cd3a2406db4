//! Human durations ("250ms", "10s", "1m 30s") for config files, env and flags.

use std::time::Duration;

/// Parses a human duration; a bare number is refused because its unit would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{s:?} has no unit; write e.g. \"{t}ms\" or \"{t}s\""));
    }
    humantime::parse_duration(t).map_err(|e| format!("{s:?} is not a duration like \"250ms\" or \"10s\": {e}"))
}

/// Milliseconds as a float, the unit the seed's API uses for `responseTime`.
pub fn as_millis_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_strings() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration(" 1m 30s ").unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn refuses_bare_numbers_and_garbage() {
        assert!(parse_duration("100").unwrap_err().contains("no unit"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
    }
}
