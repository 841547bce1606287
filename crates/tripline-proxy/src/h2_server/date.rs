//! The `date` header value, formatted once a second per thread rather than per response.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

thread_local! {
    static CACHED: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
}

/// The current time as an HTTP date (RFC 9110 §5.6.7).
pub fn now() -> HeaderValue {
    let at = SystemTime::now();
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHED.with_borrow_mut(|(cached_at, value)| {
        if *cached_at != secs || value.is_none() {
            let text = httpdate::fmt_http_date(at);
            *value = Some(HeaderValue::from_str(&text).expect("an HTTP date is a valid header value"));
            *cached_at = secs;
        }
        value.clone().expect("set above")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_date_is_an_http_date_of_now() {
        let v = super::now();
        let parsed = httpdate::parse_http_date(v.to_str().unwrap()).unwrap();
        let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() <= 1, "{v:?}");
    }
}
