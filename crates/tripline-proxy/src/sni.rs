//! The server name (SNI) a TLS client asks for, read from its ClientHello without taking the
//! bytes off the socket: a passthrough listener (`tls.mode: PASSTHROUGH`) routes the
//! connection by it, then proxies every byte, the ClientHello included, untouched.
//!
//! The bytes are peeked (`recv(MSG_PEEK)`) until the TLS record that starts the connection is
//! all there (a header of type 22, handshake, then at most 16 KiB: [`MAX_PEEK`] bytes in all),
//! and rustls's own ClientHello parser ([`rustls::server::Acceptor`], given a copy) reads
//! them: no hand-written parser of untrusted lengths. A ClientHello longer than one record
//! (rare: a few post-quantum key shares) is read on from the records after it, within the
//! same bound. A leaf: the caller bounds the wait in time and decides what a name routes to.

use std::io;
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most bytes looked at: one TLS record of the largest size (2^14 bytes, RFC 8446 §5.1)
/// and its 5-byte header.
pub const MAX_PEEK: usize = (1 << 14) + RECORD_HEADER;
const RECORD_HEADER: usize = 5;
/// The record type of handshake messages, the first of which is the ClientHello.
const HANDSHAKE: u8 = 22;
/// What is peeked first: most ClientHellos fit.
const FIRST_PEEK: usize = 2048;

/// What a client's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A whole ClientHello, with the server name it asks for (lower-cased) if it names one.
    Tls(Option<String>),
    /// Not a TLS ClientHello: plaintext, a malformed record or message, or a ClientHello that
    /// does not fit in [`MAX_PEEK`] bytes.
    NotTls,
}

/// What [`parse`] makes of the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Done(Hello),
    /// They may be the start of a ClientHello: more are needed.
    More,
}

/// Whether a connection whose first byte is `first` begins with a TLS handshake record, as a
/// TLS client's does: what a PERMISSIVE listener tells TLS from plaintext by. No plaintext
/// protocol a mesh carries begins with 0x16 (HTTP/1 begins with a method's letter, HTTP/2
/// with `PRI`); a malformed TLS start then fails the handshake, counted as the client's.
pub fn starts_tls(first: u8) -> bool {
    first == HANDSHAKE
}

/// Reads `bytes`, the first a client sent, as a TLS ClientHello.
pub fn parse(bytes: &[u8]) -> Parsed {
    // The record header: type 22, version 3.x (3.1 in practice), and the length.
    match bytes {
        [] => return Parsed::More,
        [t, ..] if *t != HANDSHAKE => return Parsed::Done(Hello::NotTls),
        [_, major, ..] if *major != 3 => return Parsed::Done(Hello::NotTls),
        _ if bytes.len() < RECORD_HEADER => return Parsed::More,
        _ => {}
    }
    let length = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if length == 0 || length > MAX_PEEK - RECORD_HEADER {
        return Parsed::Done(Hello::NotTls);
    }
    if bytes.len() < RECORD_HEADER + length {
        return Parsed::More;
    }
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Parsed::Done(Hello::NotTls),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            Parsed::Done(Hello::Tls(accepted.client_hello().server_name().map(str::to_owned)))
        }
        // The ClientHello goes on in the next record.
        Ok(None) if bytes.len() < MAX_PEEK => Parsed::More,
        Ok(None) => Parsed::Done(Hello::NotTls),
        Err(_) => Parsed::Done(Hello::NotTls),
    }
}

/// Peeks at `client` until its first bytes are a whole ClientHello or cannot be one, leaving
/// them all unread. `Err`: the client closed (or the socket failed) before sending anything.
/// It waits as long as the client takes: the caller bounds it (the request-head timeout).
pub async fn peek_client_hello(client: &TcpStream) -> io::Result<Hello> {
    let mut buf = vec![0u8; FIRST_PEEK];
    let mut seen = 0;
    let mut wait = Duration::from_millis(1);
    loop {
        let n = client.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if n > seen {
            seen = n;
            if let Parsed::Done(hello) = parse(&buf[..n]) {
                return Ok(hello);
            }
            if n == buf.len() && n < MAX_PEEK {
                // More may be waiting already: look again at once, with room for all of it.
                buf.resize(MAX_PEEK, 0);
                continue;
            }
        }
        // Bytes left unread keep the socket readable, so `peek` returns at once with the same
        // bytes: wait a little before looking again (as `http_conn` does for the HTTP/2
        // preface). A client that closed its side after part of a ClientHello sends no more.
        if client.ready(Interest::READABLE).await?.is_read_closed() {
            return Ok(Hello::NotTls);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The first flight of a rustls client asking for `sni` (`None`: no SNI extension).
    #[allow(deprecated)] // ring's provider: see `tls::provider`
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.enable_sni = sni.is_some();
        let name = rustls::pki_types::ServerName::try_from(sni.unwrap_or("x.example").to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// `hello`'s handshake message framed again as records of at most `size` bytes.
    fn fragmented(hello: &[u8], size: usize) -> Vec<u8> {
        let message = &hello[RECORD_HEADER..];
        let mut out = Vec::new();
        for part in message.chunks(size) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn a_client_hello_gives_its_server_name_lower_cased() {
        let hello = client_hello(Some("db.example.com"));
        assert_eq!(parse(&hello), Parsed::Done(Hello::Tls(Some("db.example.com".into()))));
        let upper = client_hello(Some("DB.Example.COM"));
        assert_eq!(parse(&upper), Parsed::Done(Hello::Tls(Some("db.example.com".into()))));
        assert_eq!(parse(&client_hello(None)), Parsed::Done(Hello::Tls(None)), "no SNI extension");
        // Bytes after the ClientHello (0-RTT data, say) change nothing.
        let mut more = hello.clone();
        more.extend_from_slice(&[23, 3, 3, 0, 2, 0, 0]);
        assert_eq!(parse(&more), Parsed::Done(Hello::Tls(Some("db.example.com".into()))));
    }

    #[test]
    fn every_truncated_client_hello_asks_for_more() {
        let hello = client_hello(Some("a.example"));
        for n in 0..hello.len() {
            assert_eq!(parse(&hello[..n]), Parsed::More, "{n} of {} bytes", hello.len());
        }
    }

    #[test]
    fn a_client_hello_over_several_records_is_read_whole() {
        let hello = client_hello(Some("a.example"));
        let split = fragmented(&hello, 100);
        assert!(split.len() >= hello.len() + 2 * RECORD_HEADER, "three records or more");
        let first_record = RECORD_HEADER + 100;
        for n in 0..split.len() {
            assert_eq!(parse(&split[..n]), Parsed::More, "{n} bytes (the first record is {first_record})");
        }
        assert_eq!(parse(&split), Parsed::Done(Hello::Tls(Some("a.example".into()))));
    }

    #[test]
    fn plaintext_and_malformed_records_are_not_tls() {
        for bytes in [
            &b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n",
            b"\x16\x07",                  // handshake, but no TLS version
            b"\x80\x2e\x01\x03\x01",      // an SSLv2-compatible hello
            b"\x16\x03\x01\x00\x00",      // a record of no bytes
            b"\x16\x03\x01\x40\x01",      // a record longer than TLS allows (2^14 + 1)
            b"\x16\x03\x01\xff\xff",      // and the longest a length can say
            b"\x17\x03\x03\x00\x05hello", // application data first
        ] {
            assert_eq!(parse(bytes), Parsed::Done(Hello::NotTls), "{bytes:?}");
        }
        // A record of the right type and length whose message is not a ClientHello, or is one
        // whose lengths point past its end.
        let mut garbage = vec![HANDSHAKE, 3, 1, 0, 8];
        garbage.extend_from_slice(&[2, 0, 0, 4, 1, 2, 3, 4]); // a ServerHello
        assert_eq!(parse(&garbage), Parsed::Done(Hello::NotTls));
        let hello = client_hello(Some("a.example"));
        let mut lying = hello.clone();
        // The session id's length (after type, length, version and random) says 255 bytes.
        lying[RECORD_HEADER + 4 + 2 + 32] = 255;
        assert_eq!(parse(&lying), Parsed::Done(Hello::NotTls));
    }

    #[test]
    fn a_client_hello_that_never_ends_stops_at_the_bound() {
        // A handshake header announcing a 16 MiB ClientHello, then records of filler.
        let mut bytes = vec![HANDSHAKE, 3, 1, 0x40, 0x00, 1, 0xff, 0xff, 0xff];
        bytes.resize(MAX_PEEK, 0);
        assert_eq!(parse(&bytes[..MAX_PEEK - 1]), Parsed::More, "below the bound: it may still end");
        assert_eq!(parse(&bytes), Parsed::Done(Hello::NotTls), "at the bound: it does not fit");
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// The ClientHello arrives in pieces; what was peeked is then read, byte for byte.
    #[tokio::test]
    async fn the_client_hello_is_peeked_in_pieces_and_left_unread() {
        let (mut client, mut server) = pair().await;
        let hello = client_hello(Some("a.example"));
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(7) {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            client
        });
        let got = peek_client_hello(&server).await.unwrap();
        assert_eq!(got, Hello::Tls(Some("a.example".into())));
        let _client = writer.await.unwrap();
        let mut read = vec![0u8; hello.len()];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(read, hello, "every byte is still there for the upstream");
    }

    #[tokio::test]
    async fn plaintext_is_not_tls_and_a_client_that_leaves_is_an_error() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(peek_client_hello(&server).await.unwrap(), Hello::NotTls);

        let (client, server) = pair().await;
        drop(client);
        assert!(peek_client_hello(&server).await.is_err(), "nothing sent");

        let (mut client, server) = pair().await;
        client.write_all(&client_hello(Some("a.example"))[..20]).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(peek_client_hello(&server).await.unwrap(), Hello::NotTls, "part of one, then the close");
    }

    #[tokio::test]
    async fn a_stalled_client_waits_for_the_caller_s_deadline() {
        let (mut client, server) = pair().await;
        client.write_all(&client_hello(Some("a.example"))[..20]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), peek_client_hello(&server)).await;
        assert!(waited.is_err(), "still waiting: {waited:?}");
    }
}
