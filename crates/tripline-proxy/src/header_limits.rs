//! The limits on a request's header fields, `tripline run --max-request-headers-kb` and
//! `--max-request-headers` (Envoy's `max_request_headers_kb` and `max_request_headers_count`,
//! with Envoy's defaults). A request over either is answered `431` by the server that read it,
//! before it is routed: hyper's for HTTP/1.1 (`http_conn`), Tripline's own for HTTP/2
//! (`h2_server`).

use std::sync::atomic::{AtomicU32, Ordering};

use http::HeaderMap;

/// The limits one connection applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    max_bytes: u32,
    max_count: u32,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits::new(Self::DEFAULT_KB, Self::DEFAULT_COUNT)
    }
}

impl HeaderLimits {
    /// Envoy's defaults: 60 KiB, 100 fields.
    pub const DEFAULT_KB: u32 = 60;
    pub const DEFAULT_COUNT: u32 = 100;
    /// The largest size accepted (Envoy's bound for `max_request_headers_kb`).
    pub const MAX_KB: u32 = 8192;

    /// `kb` KiB of header fields and `count` fields at most (each at least 1; the size at most
    /// `MAX_KB`).
    pub fn new(kb: u32, count: u32) -> Self {
        HeaderLimits { max_bytes: kb.clamp(1, Self::MAX_KB) * 1024, max_count: count.max(1) }
    }

    /// The size limit in bytes. HTTP/1.1 counts the fields' names and values; HTTP/2 the header
    /// list as SETTINGS_MAX_HEADER_LIST_SIZE defines it (names, values and 32 bytes per field,
    /// pseudo-header fields included), which is what Tripline advertises there.
    pub fn max_bytes(self) -> u32 {
        self.max_bytes
    }

    /// The most header fields a request may have (HTTP/1.1's `Host` among them; HTTP/2's
    /// pseudo-header fields not counted).
    pub fn max_count(self) -> u32 {
        self.max_count
    }

    /// Whether an HTTP/1.1 request's fields are over the size limit. hyper's own limit is its
    /// read buffer, which a head arriving in one read can exceed (see `http_conn`).
    pub fn too_large(self, headers: &HeaderMap) -> bool {
        let size: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        size > self.max_bytes as usize
    }
}

/// The limits set for the process (`tripline run`'s flags), read by each listener as it
/// starts and each HTTP/2 connection as it opens.
#[derive(Debug)]
pub struct ConfiguredLimits {
    kb: AtomicU32,
    count: AtomicU32,
}

impl Default for ConfiguredLimits {
    fn default() -> Self {
        ConfiguredLimits {
            kb: AtomicU32::new(HeaderLimits::DEFAULT_KB),
            count: AtomicU32::new(HeaderLimits::DEFAULT_COUNT),
        }
    }
}

impl ConfiguredLimits {
    /// Sets the limits: before the config is applied, so that every listener starts with them.
    pub fn set(&self, kb: u32, count: u32) {
        self.kb.store(kb, Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
    }

    pub fn get(&self) -> HeaderLimits {
        HeaderLimits::new(self.kb.load(Ordering::Relaxed), self.count.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_size_counts_names_and_values() {
        let limits = HeaderLimits::new(1, 100);
        let mut h = HeaderMap::new();
        // 7 + 1,017 bytes: exactly 1 KiB.
        h.insert("x-bytes", HeaderValue::from_str(&"v".repeat(1017)).unwrap());
        assert!(!limits.too_large(&h));
        h.insert("x", HeaderValue::from_static(""));
        assert!(limits.too_large(&h), "one byte over");
    }

    #[test]
    fn out_of_range_settings_are_brought_into_range() {
        assert_eq!(HeaderLimits::new(0, 0), HeaderLimits::new(1, 1));
        assert_eq!(HeaderLimits::new(u32::MAX, 5).max_bytes(), HeaderLimits::MAX_KB * 1024);
        assert_eq!(HeaderLimits::default().max_bytes(), 60 * 1024);
        assert_eq!(HeaderLimits::default().max_count(), 100);
    }
}
