//! HTTP/1.1 and h2c through the proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Version};
use http_body_util::BodyExt;
use hyper::body::Frame;

use crate::support::client::{channel_body, full};
use crate::support::config;
use crate::support::{eventually, free_port, get_with, Conn, Proto, Proxy, Upstream};

fn listener_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn proxy_to(upstreams: &[&Upstream], protocol: &str) -> (Proxy, SocketAddr) {
    let port = free_port();
    let eps: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let proxy = Proxy::start(&config::simple(port, protocol, &eps, None)).await;
    (proxy, listener_addr(port))
}

fn xff_parts(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_passes_status_body_and_headers() {
    let up = Upstream::http("u1").await;
    let (_proxy, addr) = proxy_to(&[&up], "HTTP").await;

    let r = get_with(
        addr,
        "backend.local",
        "/hello?x=1",
        &[
            ("x-custom", "kept"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
        ],
    )
    .await
    .expect("request through the proxy");
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(r.upstream(), Some("u1"));
    assert_eq!(r.reason(), None, "a proxied response carries no x-tripline-reason");
    let seen = r.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/hello?x=1");
    assert_eq!(seen["version"], "HTTP/1.1", "upstream protocol HTTP means HTTP/1.1 upstream");
    assert_eq!(r.seen_header("x-custom").as_deref(), Some("kept"));
    let xff = r.seen_header("x-forwarded-for").expect("x-forwarded-for reaches the upstream");
    assert_eq!(xff_parts(&xff), ["10.0.0.1", "127.0.0.1"], "client address appended to x-forwarded-for");
    assert!(r.seen_header("x-hop").is_none(), "header named in Connection must be removed");
    assert!(r.seen_header("keep-alive").is_none(), "keep-alive is hop-by-hop");
    if let Some(c) = r.seen_header("connection") {
        assert!(!c.contains("x-hop"), "client's Connection header forwarded: {c}");
    }
    let rid = r.seen_header("x-request-id").expect("x-request-id generated when absent");
    assert!(!rid.is_empty());
    // Hop-by-hop headers of the upstream's response do not reach the client.
    assert!(r.header("x-up-hop").is_none(), "response header named in Connection leaked");
    assert!(r.header("keep-alive").is_none(), "response keep-alive leaked");

    // A second request gets a different id; at this edge Gateway, a client-supplied one is
    // replaced (see `an_edge_gateway_sets_the_scheme_and_request_id_and_a_trusted_one_keeps_them`).
    let r2 = get_with(addr, "backend.local", "/", &[]).await.unwrap();
    let rid2 = r2.seen_header("x-request-id").expect("x-request-id on the second request");
    assert_ne!(rid, rid2, "x-request-id must be unique per request");
    // Without a client x-forwarded-for, the proxy sets it.
    assert_eq!(r2.seen_header("x-forwarded-for").map(|v| xff_parts(&v)), Some(vec!["127.0.0.1".to_owned()]));

    // Upstream statuses pass through untouched, without a local reason.
    for code in [201u16, 404, 418, 503] {
        let r = get_with(addr, "backend.local", &format!("/status/{code}"), &[]).await.unwrap();
        assert_eq!(r.status.as_u16(), code);
        assert_eq!(r.upstream(), Some("u1"));
        assert_eq!(r.reason(), None, "upstream {code} must not look locally generated");
    }

    // A POST with a content-length body.
    let mut conn = Conn::connect(addr, Proto::H1).await.unwrap();
    let req = conn
        .request(Method::POST, "backend.local", "/upload")
        .header("content-length", "1000")
        .body(full(vec![b'a'; 1000]))
        .unwrap();
    let r = conn.call(req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 1000);
    assert_eq!(r.json()["method"], "POST");
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_chunked_5mb_round_trip() {
    let up = Upstream::http("u1").await;
    let (_proxy, addr) = proxy_to(&[&up], "HTTP").await;
    check_5mb_round_trip(addr, &up, Proto::H1).await;
}

/// Both directions at once over one HTTP/2 connection: flow control in both windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_5mb_round_trip() {
    let up = Upstream::http("u1").await;
    let (_proxy, addr) = proxy_to(&[&up], "HTTP").await;
    check_5mb_round_trip(addr, &up, Proto::H2).await;
}

pub async fn check_5mb_round_trip(addr: SocketAddr, up: &Upstream, proto: Proto) {
    let data = Bytes::from(pattern(5 * 1024 * 1024));
    let mut conn = Conn::connect(addr, proto).await.unwrap();
    let (tx, body) = channel_body(4);
    let req = conn.request(Method::POST, "backend.local", "/echo-body").body(body).unwrap();
    let sent = data.clone();
    let feeder = tokio::spawn(async move {
        for chunk in sent.chunks(100_000) {
            if tx.send(Frame::data(Bytes::copy_from_slice(chunk))).await.is_err() {
                return false;
            }
        }
        true
    });
    let r = conn.call(req).await.expect("5 MB round trip");
    assert!(feeder.await.unwrap(), "the proxy stopped reading the request body");
    assert_eq!(r.status, 200);
    assert_eq!(up.body_bytes(), data.len() as u64, "upstream received the whole chunked body");
    assert_eq!(r.body.len(), data.len(), "echoed body length");
    assert!(r.body == data, "echoed body differs from what was sent");

    // The connection is still usable afterwards.
    let r = conn.get("backend.local", "/after").await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_before_it_ends() {
    // HTTP/1.1 and h2c clients, each to an HTTP/1.1 and an h2c upstream.
    for (client, upstream) in
        [(Proto::H1, "HTTP"), (Proto::H2, "HTTP"), (Proto::H1, "HTTP2"), (Proto::H2, "HTTP2")]
    {
        check_upload_streams(client, upstream).await;
    }
}

async fn check_upload_streams(client: Proto, upstream: &str) {
    let up = Upstream::http("u1").await;
    let (_proxy, addr) = proxy_to(&[&up], upstream).await;

    let mut conn = Conn::connect(addr, client).await.unwrap();
    let (tx, body) = channel_body(4);
    let req = conn.request(Method::POST, "backend.local", "/sink").body(body).unwrap();
    let call = tokio::spawn(async move { conn.call(req).await.map_err(|e| e.to_string()) });
    tx.send(Frame::data(Bytes::from(vec![b'x'; 32 * 1024]))).await.unwrap();
    // The upstream sees the first chunk while the client has not finished the body.
    let what = format!("the first chunk to reach the upstream ({client:?} client, {upstream} upstream)");
    eventually(&what, Duration::from_secs(5), || async { up.body_bytes() >= 32 * 1024 }).await;
    tx.send(Frame::data(Bytes::from(vec![b'y'; 32 * 1024]))).await.unwrap();
    drop(tx);
    let r = call.await.unwrap().expect("streamed upload");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 64 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_response_body_streams() {
    let up = Upstream::http("u1").await;
    let (_proxy, addr) = proxy_to(&[&up], "HTTP").await;
    check_drip(addr).await;
}

pub async fn check_drip(addr: SocketAddr) {
    for proto in [Proto::H1, Proto::H2] {
        let mut conn = Conn::connect(addr, proto).await.unwrap();
        let req = conn
            .request(Method::GET, "backend.local", "/drip")
            .body(crate::support::client::empty())
            .unwrap();
        let resp = conn.send(req).await.expect("drip response head");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut first_at = None;
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(frame) =
            tokio::time::timeout_at(deadline.into(), body.frame()).await.expect("drip body")
        {
            if let Ok(data) = frame.unwrap().into_data() {
                first_at.get_or_insert_with(Instant::now);
                all.extend_from_slice(&data);
            }
        }
        let gap = first_at.expect("some data").elapsed();
        assert_eq!(all, b"first;last", "{proto:?}");
        assert!(
            gap >= Duration::from_millis(250),
            "{proto:?}: the first chunk arrived only {gap:?} before the end: response buffered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_reuses_connections() {
    // Content-length responses (`/r`) and chunked responses (`/echo-body`) alike.
    let mut problems = Vec::new();
    for path in ["/r", "/echo-body"] {
        let up = Upstream::http("u1").await;
        let (_proxy, addr) = proxy_to(&[&up], "HTTP").await;
        let mut conn = Conn::connect(addr, Proto::H1).await.unwrap();
        for i in 0..5 {
            let req = conn
                .request(Method::POST, "backend.local", path)
                .header("content-length", "2")
                .body(full(format!("{i}{i}")))
                .unwrap();
            let r = conn.call(req).await.expect("request on a kept-alive client connection");
            assert_eq!(r.status, 200);
        }
        if up.connections() != 1 {
            problems.push(format!(
                "{path}: 5 sequential requests opened {} upstream connections",
                up.connections()
            ));
        }
    }
    assert!(problems.is_empty(), "upstream keep-alive not reused: {problems:?}");
}

async fn h2c_multiplexed(addr: SocketAddr, expect_upstream_version: &str) {
    let conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut c = conn.clone_h2();
        tasks.push(tokio::spawn(async move {
            c.get_with("backend.local", &format!("/h2/{i}"), &[("x-delay-ms", "100")])
                .await
                .map_err(|e| e.to_string())
        }));
    }
    // (That the ten are served at once, all at 100 ms: `crates/tripline-proxy/tests/streaming.rs`.)
    for t in tasks {
        let r = t.await.unwrap().expect("h2c request");
        assert_eq!(r.status, 200);
        assert_eq!(r.version, Version::HTTP_2);
        let seen = r.json();
        assert_eq!(seen["version"], expect_upstream_version);
        assert!(seen["path"].as_str().unwrap().starts_with("/h2/"));
        assert!(r.seen_header("x-request-id").is_some());
    }
}

/// Sends `request` on a fresh connection and reads until the proxy closes it (or 5 s pass).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    raw_exchange_then(addr, request, false).await
}

/// [`raw_exchange`], closing the client's side after the request if `close`.
async fn raw_exchange_then(addr: SocketAddr, request: &[u8], close: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    if close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy kept the connection open: {}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that sends the start of the HTTP/2 preface ("P", "PR", "PRI") and closes its side
/// will send no more: the proxy lets it go at once, where it used to wait for the request-head
/// timeout (30 s) to tell HTTP/1.1 from HTTP/2 (found by the `client_h1` fuzz target). A whole
/// preface followed by the close is let go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_mid_preface_is_let_go() {
    let up = Upstream::http("u1").await;
    let (_proxy, addr) = proxy_to(&[&up], "HTTP").await;
    for start in ["P", "PR", "PRI", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        // `raw_exchange_then` fails the test if the connection stays open for 5 s.
        let answer = raw_exchange_then(addr, start.as_bytes(), true).await;
        assert!(!answer.contains("200"), "{start:?}: {answer}");
    }
    assert_eq!(up.requests(), 0);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` (also in absolute form), or with two,
/// gets 400, is not forwarded, and ends its connection; so does `*` as the target of anything
/// but OPTIONS. `Connection: host` does not take the host away. HTTP/1.0 may leave `Host` out:
/// the upstream (HTTP/1.1 or HTTP/2) then gets the destination's host and the request's own
/// path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_host_is_refused_on_http11_and_given_one_on_http10() {
    for upstream_protocol in ["HTTP", "HTTP2"] {
        let up = Upstream::http("u1").await;
        let (_proxy, addr) = proxy_to(&[&up], upstream_protocol).await;

        let bad: [&[u8]; 6] = [
            b"GET /no-host HTTP/1.1\r\n\r\n",
            b"GET http://backend.local/absolute HTTP/1.1\r\n\r\n",
            b"GET /two HTTP/1.1\r\nhost: backend.local\r\nhost: other.local\r\n\r\n",
            // Found by the `client_h1` fuzz target: an empty Host was forwarded.
            b"GET /empty HTTP/1.1\r\nhost: \r\n\r\n",
            b"GET /space HTTP/1.1\r\nhost: backend local\r\n\r\n",
            b"GET /user HTTP/1.1\r\nhost: user@backend.local\r\n\r\n",
        ];
        for head in bad {
            let what = String::from_utf8_lossy(head).lines().next().unwrap_or_default().to_owned();
            let next = b"GET /next HTTP/1.1\r\nhost: backend.local\r\n\r\n";
            let refused = raw_exchange(addr, &[head, &next[..]].concat()).await;
            assert!(refused.starts_with("HTTP/1.1 400 "), "{what}: {refused}");
            assert!(refused.contains("needs exactly one valid Host"), "{what}: {refused}");
            assert!(
                !refused.contains("HTTP/1.1 200"),
                "{what}: the connection must close after the 400: {refused}"
            );
            assert_eq!(up.requests(), 0, "{what} reached the upstream");
        }

        // RFC 9112 §3.2.4: the target `*` is for OPTIONS only (found by the `client_h1` fuzz
        // target, which saw `HEAD *` forwarded).
        let star = raw_exchange(addr, b"HEAD * HTTP/1.1\r\nhost: backend.local\r\n\r\n").await;
        assert!(star.starts_with("HTTP/1.1 400 "), "{star}");
        assert_eq!(up.requests(), 0, "HEAD * reached the upstream");

        // `Connection` may not name `Host` away (nor `Content-Length`): the upstream still gets
        // the client's host.
        let named = raw_exchange(
            addr,
            b"GET /named HTTP/1.1\r\nhost: backend.local\r\nconnection: close, host, content-length\r\n\r\n",
        )
        .await;
        assert!(named.starts_with("HTTP/1.1 200 "), "{named}");
        let json: serde_json::Value = serde_json::from_str(named.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["authority"], "backend.local", "{upstream_protocol} upstream: {json}");

        let old = raw_exchange(addr, b"GET /old/client?q=1 HTTP/1.0\r\n\r\n").await;
        assert!(old.starts_with("HTTP/1.0 200 "), "{old}");
        let json: serde_json::Value = serde_json::from_str(old.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["authority"], "backend.local", "{upstream_protocol} upstream: {json}");
        assert_eq!(json["path"], "/old/client?q=1", "{upstream_protocol} upstream: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_http1_upstream() {
    let up = Upstream::http("u1").await;
    let (_proxy, addr) = proxy_to(&[&up], "HTTP").await;
    h2c_multiplexed(addr, "HTTP/1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_h2c_upstream() {
    let up = Upstream::http("u1").await;
    let (_proxy, addr) = proxy_to(&[&up], "HTTP2").await;
    h2c_multiplexed(addr, "HTTP/2.0").await;
    // HTTP/1.1 client to an h2c upstream works too.
    let r = get_with(addr, "backend.local", "/from-h1", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_get_requests_reuse_one_upstream_connection() {
    // Requests without a body take the lean HTTP/1.1 client; its connections are pooled too.
    let up = Upstream::http("u1").await;
    let port = free_port();
    // One worker: with more, each keeps its own idle connections (see `workers::`).
    let _proxy = Proxy::start_single(&config::simple(port, "HTTP", &[up.addr], None)).await;
    let addr = listener_addr(port);
    for proto in [Proto::H1, Proto::H2] {
        let mut conn = Conn::connect(addr, proto).await.unwrap();
        for _ in 0..10 {
            let r = conn.get("backend.local", "/r").await.expect("request through the proxy");
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(up.connections(), 1, "20 sequential GETs should share one upstream connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_retires_upstream_connections() {
    for protocol in ["HTTP", "HTTP2"] {
        let up = Upstream::http("u1").await;
        let port = free_port();
        let policy = "    connectionPool:\n      http: {maxRequestsPerConnection: 2}\n";
        let _proxy = Proxy::start_single(&config::simple(port, protocol, &[up.addr], Some(policy))).await;
        let mut conn = Conn::connect(listener_addr(port), Proto::H1).await.unwrap();
        let mut served_on = Vec::new();
        for _ in 0..5 {
            let r = conn.get("backend.local", "/r").await.expect("request through the proxy");
            assert_eq!(r.status, 200);
            served_on.push(r.json()["conn"].as_u64().unwrap());
        }
        assert_eq!(served_on, [1, 1, 2, 2, 3], "{protocol} upstream: two requests per connection");
    }
}

/// An upstream that answers one request per connection and then closes it, while the
/// response says nothing of closing: each kept-alive connection is dead by the time the
/// proxy reuses it. Returns its address and the number of connections it accepted.
pub(crate) async fn closing_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
}

/// An upstream that answers the first request head on each connection with `response`, byte
/// for byte, and then closes the connection. Returns its address and the number of
/// connections it accepted.
pub(crate) async fn scripted_upstream(
    response: &'static [u8],
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response).await;
                // Dropping the socket closes it right after the response.
            });
        }
    });
    (addr, accepted)
}

/// RFC 9110 §8.6: a 1xx or 204 response has no `Content-Length`. An upstream that sends one
/// anyway (found by the `upstream_h1` fuzz target: hyper's encoder trusted the header, and a
/// debug build panicked) must not pass it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_on_101_and_204_is_not_passed_on() {
    let cases: [(&[u8], &[u8], &str); 2] = [
        (
            b"GET /ws HTTP/1.1\r\nhost: backend.local\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 101 ",
        ),
        (
            b"GET /empty HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 204 ",
        ),
    ];
    for (request, response, status) in cases {
        let got = through_scripted_upstream(request, response).await;
        assert!(got.starts_with(status), "{status}: {got}");
        let head = got.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
        assert!(!head.contains("content-length"), "{status} passed on a Content-Length: {got}");
    }
}

/// A response without a body (to HEAD, or a 304) still carries the Content-Length the body
/// would have had. Repeated values reach the client as one field; an invalid or conflicting
/// one is the upstream's bad framing, a 502. The client used to get nothing at all: hyper's
/// encoder refuses a second Content-Length by closing the connection (found by the
/// `upstream_h1` fuzz target, as it found the same with an empty Content-Length beside
/// `Transfer-Encoding: chunked` on hyper's client). Checked on the lean client (a HEAD without
/// a body) and on hyper's (a HEAD with a body, a POST, an upgrade the upstream declines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_without_a_body_reaches_the_client_once_or_is_a_502() {
    let head = b"HEAD /h HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n";
    let head_with_body =
        b"HEAD /h HTTP/1.1\r\nhost: backend.local\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
    let post = b"POST /p HTTP/1.1\r\nhost: backend.local\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
    let twice: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n";
    let list: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n";
    // A status with no standard reason phrase keeps the upstream's (hyper's server would
    // write `<none>`).
    let odd: &[u8] = b"HTTP/1.1 535 Odd Thing\r\ncontent-length: 5\r\n\r\n";
    let got = through_scripted_upstream(head, odd).await;
    assert!(got.starts_with("HTTP/1.1 535 Odd Thing\r\n"), "{got:?}");
    for (request, response) in [(&head[..], twice), (head, list), (head_with_body, twice)] {
        let got = through_scripted_upstream(request, response).await;
        assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
        let fields = got.to_ascii_lowercase().matches("\r\ncontent-length: 5\r\n").count();
        assert_eq!(fields, 1, "{got:?}");
    }
    // hyper's client (an upgrade the upstream declines, a POST) passes on the Content-Length
    // as it came, even beside a Transfer-Encoding, which framed the body: it goes.
    let upgrade =
        b"GET /ws HTTP/1.1\r\nhost: backend.local\r\nconnection: upgrade, close\r\nupgrade: echo\r\n\r\n";
    let chunked: &[&'static [u8]] = &[
        b"HTTP/1.1 200 OK\r\ncontent-length: \r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for (request, response) in [(&upgrade[..], chunked[0]), (post, chunked[0]), (post, chunked[1])] {
        let got = through_scripted_upstream(request, response).await;
        assert!(got.starts_with("HTTP/1.1 200 ") && got.ends_with("hello\r\n0\r\n\r\n"), "{got:?}");
        assert!(!got.to_ascii_lowercase().contains("content-length"), "{got:?}");
    }
    let got = through_scripted_upstream(
        post,
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 ") && got.ends_with("\r\n\r\nhello"), "{got:?}");
    assert_eq!(got.matches("content-length: 5\r\n").count(), 1, "{got:?}");
    let bad: [(&[u8], &'static [u8]); 4] = [
        (head, b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n"),
        (head, b"HTTP/1.1 535 Odd\r\ncontent-length: 1, 2\r\n\r\n"),
        (head_with_body, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"),
        (post, b"HTTP/1.1 304 Not Modified\r\ncontent-length: x\r\n\r\n"),
    ];
    for (request, response) in bad {
        let got = through_scripted_upstream(request, response).await;
        assert!(got.starts_with("HTTP/1.1 502 "), "{:?}: {got:?}", String::from_utf8_lossy(response));
        assert!(got.contains("x-tripline-reason: upstream-reset"), "{got:?}");
    }
}

/// A body framed by a repeated Content-Length (a list, or two fields, all equal) reaches the
/// client with one clean value. The lean client passed the list on as it came (`5, 5`), which
/// a recipient may accept or reject (RFC 9110 §8.6): two hops that read one message's length
/// differently is how request smuggling starts (found by the in-memory `upstream_h1` target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_content_length_framing_a_body_reaches_the_client_once() {
    let get = b"GET /r HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n";
    let replies: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    ];
    for response in replies {
        let got = through_scripted_upstream(get, response).await;
        assert!(got.starts_with("HTTP/1.1 200 ") && got.ends_with("\r\n\r\nhello"), "{got:?}");
        assert_eq!(got.to_ascii_lowercase().matches("\r\ncontent-length: 5\r\n").count(), 1, "{got:?}");
    }
}

/// Sends `request` through a proxy in front of a [`scripted_upstream`] answering `response`.
async fn through_scripted_upstream(request: &[u8], response: &'static [u8]) -> String {
    let (up, _) = scripted_upstream(response).await;
    let port = free_port();
    let _proxy = Proxy::start(&config::simple(port, "HTTP", &[up], None)).await;
    raw_exchange(listener_addr(port), request).await
}

/// An upstream that sends a head and part of the body and then closes, all at once: the
/// client gets the head and those bytes, then the close (a body shorter than its length: a
/// cut it can tell). It used to get nothing at all: hyper's server dropped its unsent buffer,
/// head included, when the body failed in the same turn (found by the `upstream_h1` fuzz
/// target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_at_once_still_delivers_the_head() {
    let got = through_scripted_upstream(
        b"GET /cut HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nthe first bytes",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert!(got.contains("content-length: 100000"), "{got:?}");
    assert!(got.ends_with("\r\n\r\nthe first bytes"), "{got:?}");
}

/// An upstream that answers a request and then, unasked, sends a second response on the
/// kept-alive connection: that response must never reach the next request (a desync), which
/// gets the upstream's own answer instead. Checked on a pooled connection that has served a
/// request already, for a request that takes hyper's client (an upgrade the upstream declines,
/// handed over from the lean client) and for one that takes the lean client. (The
/// `upstream_h1` fuzz target once reported such a desync. The cause was in its upstream:
/// Nagle's algorithm held the second response until the proxy's next request acknowledged the
/// first, so it arrived after that request, where no proxy can tell it from the answer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_response_never_reaches_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let first_requests: [&[u8]; 2] = [
        b"GET /ws HTTP/1.1\r\nhost: backend.local\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n",
        b"GET /plain HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n",
    ];
    for first in first_requests {
        let what = String::from_utf8_lossy(first).lines().next().unwrap_or_default().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
        // Answers a request with `first`, then 20 ms later with a second response nobody asked
        // for, and tells the test; answers `/canary` with `canary`.
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                // Without it, Nagle's algorithm holds the second response until the proxy's
                // next segment acknowledges the first: it would arrive after the next request
                // went out, where no proxy can tell it from that request's answer.
                let _ = s.set_nodelay(true);
                let sent = sent_tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let canary = buf.starts_with(b"GET /canary ") || buf.starts_with(b"GET /warm ");
                        buf.drain(..end);
                        if canary {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ncanary").await;
                            continue;
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst").await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nunasked!").await;
                        let _ = sent.send(());
                    }
                });
            }
        });
        let port = free_port();
        let _proxy = Proxy::start_single(&config::simple(port, "HTTP", &[up], None)).await;
        // A kept-alive connection in the pool first, which the request below reuses (the lean
        // client's, handed to hyper for the upgrade).
        let warm = raw_exchange(
            listener_addr(port),
            b"GET /warm HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(warm.ends_with("canary"), "{warm}");
        let got = raw_exchange(listener_addr(port), first).await;
        assert!(got.contains("first"), "{what}: {got}");
        tokio::time::timeout(Duration::from_secs(5), sent_rx.recv())
            .await
            .expect("the upstream answered twice");
        let canary = raw_exchange(
            listener_addr(port),
            b"GET /canary HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(canary.ends_with("\r\n\r\ncanary"), "{what}: the next request got {canary:?}");
    }
}

/// RFC 9110 §15.2.2: a 101 must answer an HTTP/1.1 request that asked to switch, and name the
/// protocol in `Upgrade`. Otherwise the upstream connection is in an unknown state: the client
/// gets a 502 `upstream-reset`, not a switch (found by the `upstream_h1` fuzz target: an
/// HTTP/1.0 101 was passed on as `HTTP/1.0 101`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_is_not_one_is_a_502() {
    // `close`, so that the proxy ends the connection after its 502.
    let upgrade =
        b"GET /ws HTTP/1.1\r\nhost: backend.local\r\nconnection: upgrade, close\r\nupgrade: echo\r\n\r\n";
    let plain =
        b"POST /form HTTP/1.1\r\nhost: backend.local\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
    let cases: [(&[u8], &'static [u8]); 3] = [
        (upgrade, b"HTTP/1.0 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"),
        (upgrade, b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
        (plain, b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"),
    ];
    for (request, response) in cases {
        let what = String::from_utf8_lossy(response).lines().next().unwrap_or_default().to_owned();
        let got = through_scripted_upstream(request, response).await;
        assert!(got.starts_with("HTTP/1.1 502 "), "{what}: {got}");
        assert!(got.contains("x-tripline-reason: upstream-reset"), "{what}: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_kept_alive_connections_fails_no_request() {
    let (up, accepted) = closing_upstream().await;
    let port = free_port();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up], None)).await;
    let mut conn = Conn::connect(listener_addr(port), Proto::H1).await.unwrap();
    let mut failed = Vec::new();
    for i in 0..50 {
        let r = conn.get("backend.local", "/").await.expect("request through the proxy");
        if r.status != 200 {
            failed.push((i, r.status, r.reason().map(str::to_owned)));
        }
    }
    assert!(failed.is_empty(), "requests failed on connections the upstream had closed: {failed:?}");
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n >= 50, "each request needed a fresh connection, yet the upstream accepted only {n}");
    drop(proxy);
}

/// A GET with a chunked body keeps its body, as one with `Content-Length` does (hyper's client
/// drops a body of unknown length on GET and HEAD unless told it is chunked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_chunked_body_keeps_its_body() {
    for upstream_protocol in ["HTTP", "HTTP2"] {
        let up = Upstream::http("u1").await;
        let (_proxy, addr) = proxy_to(&[&up], upstream_protocol).await;
        for (framing, body) in [
            ("transfer-encoding: chunked", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            ("content-length: 11", "hello world"),
        ] {
            let req = format!(
                "GET /search HTTP/1.1\r\nhost: backend.local\r\n{framing}\r\nconnection: close\r\n\r\n{body}"
            );
            let answer = raw_exchange(addr, req.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 200 "), "{upstream_protocol} {framing}: {answer}");
            let json: serde_json::Value =
                serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            assert_eq!(json["body_len"], 11, "{upstream_protocol} upstream, {framing}: {json}");
        }
    }
}

/// At a Gateway that is the edge, a client cannot pose as having come over TLS or choose its
/// request id: the upstream gets `x-forwarded-proto: http` and a fresh `x-request-id`. Behind
/// trusted proxies (`gatewayTopology.numTrustedProxies`), what they set is passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_gateway_sets_the_scheme_and_request_id_and_a_trusted_one_keeps_them() {
    for trusted in [false, true] {
        let up = Upstream::http("u1").await;
        let port = free_port();
        let mut yaml = config::simple(port, "HTTP", &[up.addr], None);
        if trusted {
            yaml = yaml.replace(
                "metadata: {name: edge}",
                "metadata:\n  name: edge\n  annotations:\n    proxy.istio.io/config: '{gatewayTopology: {numTrustedProxies: 1}}'",
            );
        }
        let _proxy = Proxy::start(&yaml).await;
        let headers = [("x-forwarded-proto", "https"), ("x-request-id", "chosen-by-the-client")];
        let r = get_with(listener_addr(port), "backend.local", "/", &headers).await.unwrap();
        let seen = r.json()["headers"].clone();
        let id = seen["x-request-id"].as_str().unwrap_or_default().to_owned();
        if trusted {
            assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
            assert_eq!(id, "chosen-by-the-client", "{seen}");
        } else {
            assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
            assert_ne!(id, "chosen-by-the-client", "{seen}");
            assert_eq!(id.len(), 36, "a fresh UUID: {seen}");
        }
    }
}
