//! Points in time given on the command line: ms since the epoch (`1700000000000`), an RFC 3339
//! date (`2026-11-30T10:00:00Z`; without an offset it is UTC), or a time ago (`-15m`, `-2h`,
//! `-1day`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Parses `text` to ms since the epoch, `now_ms` being the present.
pub fn parse_time_ms(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        if ms < 0 {
            return Err(format!(
                "'{text}': a time in ms since the epoch must not be negative (a time ago is written -15m)"
            ));
        }
        return Ok(ms);
    }
    if let Some(ago) = text.strip_prefix('-') {
        let duration = humantime::parse_duration(ago)
            .map_err(|error| format!("'{text}': not a duration ago ({error})"))?;
        let ago_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(ago_ms).max(0));
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|error| {
        format!(
            "'{text}': expected ms since the epoch, an RFC 3339 time (2026-11-30T10:00:00Z) or a time ago (-15m): {error}"
        )
    })?;
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("'{text}' is before 1970"))?;
    Ok(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// clap's value parser: a time now.
pub fn parse_time_arg(text: &str) -> Result<i64, String> {
    parse_time_ms(text, now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn epoch_ms_dates_and_times_ago_are_understood() {
        assert_eq!(parse_time_ms("1700000000000", NOW), Ok(1_700_000_000_000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:01Z", NOW), Ok(1000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:01.5Z", NOW), Ok(1500));
        assert_eq!(parse_time_ms("1970-01-01 00:01:00", NOW), Ok(60_000));
        assert_eq!(parse_time_ms("-15m", NOW), Ok(NOW - 15 * 60_000));
        assert_eq!(parse_time_ms("-1h 30m", NOW), Ok(NOW - 90 * 60_000));
    }

    #[test]
    fn nonsense_is_refused_with_the_text() {
        for bad in ["yesterday", "-", "-15x", "2026-13-01T00:00:00Z", "-5"] {
            let error = parse_time_ms(bad, NOW).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }
}
