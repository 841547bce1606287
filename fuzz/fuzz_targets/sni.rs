//! Any bytes as a client's first bytes on a passthrough listener: reading the ClientHello's
//! SNI must say `More` (wait for more bytes), `NotTls`, or the name, never panic; `More` only
//! while fewer than `MAX_PEEK` bytes are there (a client cannot make the proxy wait for more
//! than it looks at); and a name it reads is the same once more bytes follow it (what the
//! proxy decides does not depend on how the bytes were split).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripline_proxy::sni::{parse, Hello, Parsed, MAX_PEEK};

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    if parsed == Parsed::More {
        assert!(data.len() < MAX_PEEK, "More after {} bytes", data.len());
    }
    if let Parsed::Done(Hello::Tls(Some(name))) = &parsed {
        assert!(!name.is_empty());
        assert_eq!(name, &name.to_ascii_lowercase(), "names are lower-cased");
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        assert_eq!(parse(&longer), parsed, "bytes after the ClientHello change nothing");
    }
});
