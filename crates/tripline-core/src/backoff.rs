//! Retry delays: exponential backoff with *full jitter*, and `Retry-After` handling.
//!
//! Full jitter (a uniform draw in `[0, min(cap, base·2^attempt)]`) rather than "exponential plus
//! a little noise": retries from many clients that failed at the same instant spread over the
//! whole interval instead of arriving together again, which is what turns a blip into a storm.
//! The base is 25 ms like Envoy; the cap defaults to 10 × base, also like Envoy.
//!
//! A server's `Retry-After` wins over our own delay when it asks for longer, and a retry whose
//! wait would end after the request's deadline is not worth making at all ([`Backoff::delay_for`]
//! returns `None`).

use crate::rng::Rng;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(25), cap: Duration::from_millis(250) }
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap: cap.max(base) }
    }

    /// The upper bound of the delay before retry number `attempt` (0 = first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A full-jitter delay for retry number `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &dyn Rng) -> Duration {
        let ceiling = crate::clock::nanos(self.ceiling(attempt));
        Duration::from_nanos(rng.below(ceiling.saturating_add(1)))
    }

    /// The delay before retry `attempt`, honouring the upstream's `retry_after`, or `None` when
    /// waiting would overrun `remaining` (the time left before the request's deadline).
    pub fn delay_for(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        remaining: Duration,
        rng: &dyn Rng,
    ) -> Option<Duration> {
        let own = self.delay(attempt, rng);
        let wait = retry_after.map_or(own, |ra| ra.max(own));
        (wait < remaining).then_some(wait)
    }
}

/// Parses a `Retry-After` header value: delay-seconds (`"120"`) or an IMF-fixdate
/// (`"Sun, 06 Nov 1994 08:49:37 GMT"`), relative to `now`. A date in the past gives zero.
/// Anything else gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = parse_imf_fixdate(v)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an IMF-fixdate (RFC 9110 §5.6.7).
fn parse_imf_fixdate(v: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = v.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let year: i64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || s > 60
        || !(1970..=9999).contains(&year)
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let ms = |a| b.ceiling(a).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3), ms(4), ms(100)], [25, 50, 100, 200, 250, 250]);
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_interval() {
        let b = Backoff::default();
        let rng = SplitMix::seeded(3);
        let draws: Vec<_> = (0..1000).map(|_| b.delay(2, &rng)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(100)));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(10)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(90)));
        // Seeded: reproducible.
        let again = SplitMix::seeded(3);
        assert_eq!(b.delay(2, &again), draws[0]);
    }

    #[test]
    fn retry_after_wins_when_longer_and_deadline_is_respected() {
        let b = Backoff::default();
        let rng = SplitMix::seeded(1);
        let long = Some(Duration::from_secs(2));
        assert_eq!(b.delay_for(0, long, Duration::from_secs(5), &rng), long);
        assert_eq!(b.delay_for(0, long, Duration::from_secs(1), &rng), None);
        let d = b.delay_for(0, None, Duration::from_secs(1), &rng).unwrap();
        assert!(d <= Duration::from_millis(25));
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770); // Sun, 06 Nov 1994 08:49:30 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:00 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(1_767_225_600))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 99999999999999 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}
