//! Fresh object ids and the wall clock (the only sources of randomness and time in the root's
//! request handling, kept here so the rest stays deterministic).

/// A new 24-hex-digit id (ObjectId-sized, random), never derived from names.
pub fn new_id() -> String {
    let mut bytes = [0u8; 12];
    random_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn random_bytes(buf: &mut [u8]) {
    // The OS random source failing is unrecoverable for a security-relevant process.
    getrandom::getrandom(buf).expect("the operating system's random source is unavailable");
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `dd/mm/YYYY HH:MM` in UTC, the original's `created_at` format.
pub fn created_at_now() -> String {
    let secs = now() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{d:02}/{m:02}/{y:04} {:02}:{:02}", rem / 3600, (rem % 3600) / 60)
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_000), (2024, 10, 4));
        assert_eq!(super::new_id().len(), 24);
    }
}
