//! Calendar fields of a UTC time given as seconds since the Unix epoch, for the few timestamps
//! written as text (lease expiry labels, result and work-directory names); no date crate for that.

/// A UTC time split into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl UtcTime {
    /// The fields of `secs` seconds after 1970-01-01T00:00:00Z (negative: before).
    pub fn from_unix(secs: i64) -> Self {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let rem = rem as u32;
        UtcTime { year, month, day, hour: rem / 3600, minute: rem % 3600 / 60, second: rem % 60 }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn rfc3339(&self) -> String {
        let UtcTime { year, month, day, hour, minute, second } = *self;
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    }

    /// `YYYYMMDD<sep>HHMMSS` (file names).
    pub fn compact(&self, sep: &str) -> String {
        let UtcTime { year, month, day, hour, minute, second } = *self;
        format!("{year:04}{month:02}{day:02}{sep}{hour:02}{minute:02}{second:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::UtcTime;

    #[test]
    fn splits_known_times() {
        assert_eq!(UtcTime::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(UtcTime::from_unix(951_782_400).rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(UtcTime::from_unix(1_796_151_845).rfc3339(), "2026-12-01T19:04:05Z");
        assert_eq!(UtcTime::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
        assert_eq!(UtcTime::from_unix(1_796_151_845).compact("T"), "20261201T190405");
    }
}
