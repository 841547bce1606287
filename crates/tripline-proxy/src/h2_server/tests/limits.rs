//! The limits: request header size and count (431), the abuse limits that close a connection
//! with GOAWAY ENHANCE_YOUR_CALM (each counted in `tripline_downstream_http2_floods`), and the
//! backpressure that bounds what a client that does not read can make the server hold.

use h2::frame::{Reason, StreamId, WindowUpdate};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::*;
use crate::stats::Http2Flood;

fn limits(kb: u32, count: u32) -> Options {
    Options { limits: HeaderLimits::new(kb, count), ..Options::default() }
}

fn fields(n: usize, value_len: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    for i in 0..n {
        let name = HeaderName::try_from(format!("x-meta-{i}")).unwrap();
        h.insert(name, HeaderValue::from_str(&"v".repeat(value_len)).unwrap());
    }
    h
}

fn floods(c: &Client, kind: Http2Flood) -> u64 {
    c.stats.http2.floods(kind)
}

#[tokio::test(start_paused = true)]
async fn the_header_list_size_is_advertised_and_a_larger_request_gets_431() {
    let mut c = Client::with(ok(), limits(2, 100)).await;
    assert_eq!(c.server_settings.max_header_list_size(), Some(2048));
    // Under: 10 fields of 100 bytes (+ 32 each, + the pseudo-header fields) is about 1.5 KiB.
    c.send(request(1, Method::GET, "/", fields(10, 100), true)).await;
    assert_eq!(c.response(1).await.status, StatusCode::OK);
    // Over: 20 such fields.
    c.send(request(3, Method::GET, "/", fields(20, 100), true)).await;
    let refused = c.response(3).await;
    assert_eq!(refused.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(refused.headers["x-tripline-reason"], "request-headers-too-large");
    let counted = c.stats.local.get(crate::reason::Reason::RequestHeadersTooLarge);
    assert_eq!(counted, 1, "counted with the other local replies");
    // With a body to come: 431, and the stream reset so that the client stops sending it.
    c.send(request(5, Method::POST, "/", fields(20, 100), false)).await;
    assert_eq!(c.response(5).await.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(c.reset(5).await.reason(), Reason::NO_ERROR);
    c.send(data(5, "ignored", true)).await;
    c.send(get(7, "/")).await;
    assert_eq!(c.response(7).await.status, StatusCode::OK, "the connection serves on");
}

#[tokio::test(start_paused = true)]
async fn more_header_fields_than_the_limit_get_431() {
    let mut c = Client::with(ok(), limits(60, 5)).await;
    c.send(request(1, Method::GET, "/", fields(5, 1), true)).await;
    assert_eq!(c.response(1).await.status, StatusCode::OK, "pseudo-header fields are not counted");
    c.send(request(3, Method::GET, "/", fields(6, 1), true)).await;
    assert_eq!(c.response(3).await.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test(start_paused = true)]
async fn the_default_limits_take_20_kib_of_grpc_metadata() {
    let mut c = Client::start(ok()).await;
    c.send(request(1, Method::POST, "/pkg.Service/Call", fields(20, 1024), true)).await;
    assert_eq!(c.response(1).await.status, StatusCode::OK);
    c.send(request(3, Method::POST, "/pkg.Service/Call", fields(61, 1024), true)).await;
    assert_eq!(c.response(3).await.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    c.send(request(5, Method::POST, "/pkg.Service/Call", fields(101, 1), true)).await;
    assert_eq!(c.response(5).await.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test(start_paused = true)]
async fn a_client_resetting_most_of_its_streams_is_told_to_calm_down() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    for i in 0..100u32 {
        let id = 2 * i + 1;
        c.send(get(id, "/")).await;
        if i % 2 == 0 || i > 90 {
            c.send(rst(id, Reason::CANCEL)).await;
        }
    }
    let g = c.goaway().await;
    assert_eq!(g.reason(), Reason::ENHANCE_YOUR_CALM);
    assert_eq!(floods(&c, Http2Flood::RapidReset), 1);
    assert_eq!(c.stats.http2.connection_errors(Reason::ENHANCE_YOUR_CALM.into()), 1);
    assert!(exchanges.pending() <= 100);
}

#[tokio::test(start_paused = true)]
async fn a_well_behaved_client_resetting_some_streams_is_not() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    // 300 streams, a third of them cancelled before their answer.
    for i in 0..300u32 {
        let id = 2 * i + 1;
        c.send(get(id, "/")).await;
        let ex = exchanges.next().await;
        if i % 3 == 0 {
            c.send(rst(id, Reason::CANCEL)).await;
        } else {
            ex.respond.ok("ok");
            c.response(id).await;
        }
    }
    c.send(get(601, "/")).await;
    exchanges.next().await.respond.ok("still");
    assert_eq!(c.response(601).await.body, b"still");
    assert!(Http2Flood::ALL.iter().all(|&k| floods(&c, k) == 0));
}

/// Envoy's `max_consecutive_inbound_frames_with_empty_payload` (1).
#[tokio::test(start_paused = true)]
async fn empty_frames_in_a_row_close_the_connection() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(post(1)).await;
    let _held = exchanges.next().await;
    // One empty DATA frame between frames with a payload is allowed.
    c.send(data(1, "", false)).await;
    c.send(data(1, "x", false)).await;
    c.send(data(1, "", false)).await;
    c.quiet().await;
    // Two in a row (an empty HEADERS block counts as well) are not.
    c.raw(HEADERS, END_HEADERS, 1, &[]).await;
    assert_eq!(c.goaway().await.reason(), Reason::ENHANCE_YOUR_CALM);
    assert_eq!(floods(&c, Http2Flood::EmptyFrames), 1);
}

#[tokio::test(start_paused = true)]
async fn padding_alone_is_an_empty_frame() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(post(1)).await;
    let _held = exchanges.next().await;
    c.raw(DATA, PADDED, 1, &[3, 0, 0, 0]).await;
    c.raw(DATA, PADDED, 1, &[3, 0, 0, 0]).await;
    assert_eq!(c.goaway().await.reason(), Reason::ENHANCE_YOUR_CALM);
    assert_eq!(floods(&c, Http2Flood::EmptyFrames), 1);
}

/// Envoy's `max_inbound_priority_frames_per_stream` (100): 100 × (1 + streams opened).
#[tokio::test(start_paused = true)]
async fn priority_frames_beyond_100_per_stream_close_the_connection() {
    let mut c = Client::start(ok()).await;
    let priority = [0, 0, 0, 0, 16];
    for _ in 0..100 {
        c.raw(PRIORITY, 0, 3, &priority).await;
    }
    c.send(get(1, "/")).await;
    c.response(1).await;
    for _ in 0..100 {
        c.raw(PRIORITY, 0, 3, &priority).await;
    }
    c.quiet().await;
    c.raw(PRIORITY, 0, 3, &priority).await;
    assert_eq!(c.goaway().await.reason(), Reason::ENHANCE_YOUR_CALM);
    assert_eq!(floods(&c, Http2Flood::Priority), 1);
}

/// Envoy's `max_inbound_window_update_frames_per_data_frame_sent` (10): 5 + 2 × (streams
/// opened + 10 × DATA frames sent).
#[tokio::test(start_paused = true)]
async fn window_updates_beyond_10_per_data_frame_sent_close_the_connection() {
    let mut c = Client::start(ok()).await;
    c.send(get(1, "/")).await;
    c.response(1).await; // one DATA frame: 5 + 2 × (1 + 10) = 27 allowed
    for _ in 0..27 {
        c.send(WindowUpdate::new(StreamId::zero(), 1)).await;
    }
    c.quiet().await;
    c.send(WindowUpdate::new(StreamId::from(1), 1)).await;
    assert_eq!(c.goaway().await.reason(), Reason::ENHANCE_YOUR_CALM);
    assert_eq!(floods(&c, Http2Flood::WindowUpdate), 1);
}

#[tokio::test(start_paused = true)]
async fn a_long_download_s_window_updates_are_not_a_flood() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(1, "/")).await;
    exchanges.next().await.respond.ok(vec![b'a'; 4 << 20]);
    // `response` gives back both windows after every DATA frame: two updates a frame.
    assert_eq!(c.response(1).await.body.len(), 4 << 20);
    assert_eq!(floods(&c, Http2Flood::WindowUpdate), 0);
}

#[tokio::test(start_paused = true)]
async fn resets_of_closed_streams_are_allowed_once_per_stream_and_a_hundred_more() {
    let mut c = Client::start(ok()).await;
    for id in [1, 3] {
        c.send(get(id, "/")).await;
        c.response(id).await;
    }
    // Two streams, two resets after their responses (the race RFC 9113 §5.1 allows), and
    // the hundred spare.
    for _ in 0..102 {
        c.send(rst(1, Reason::CANCEL)).await;
    }
    c.quiet().await;
    c.send(rst(3, Reason::CANCEL)).await;
    assert_eq!(c.goaway().await.reason(), Reason::ENHANCE_YOUR_CALM);
    assert_eq!(floods(&c, Http2Flood::ClosedStreamResets), 1);
}

/// DATA on closed streams: each answered with RST_STREAM STREAM_CLOSED and counted with the
/// other resets for the client's errors: past 1,024 (`h2`'s limit) the connection closes.
#[tokio::test(start_paused = true)]
async fn data_on_closed_streams_counts_toward_the_stream_error_limit() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    // Opening stream 2,051 closes every lower id for good.
    c.send(get(2051, "/")).await;
    let _held = exchanges.next().await;
    for i in 0..1024u32 {
        c.send(data(2 * i + 1, "x", false)).await;
        assert_eq!(c.reset(2 * i + 1).await.reason(), Reason::STREAM_CLOSED);
    }
    // Each stream is answered once; what follows on it was sent before the answer arrived.
    c.send(data(1, "x", false)).await;
    c.quiet().await;
    c.send(data(2049, "x", false)).await;
    assert_eq!(c.goaway().await.reason(), Reason::ENHANCE_YOUR_CALM);
    assert_eq!(floods(&c, Http2Flood::StreamErrors), 1);
}

/// A client that floods PINGs and never reads the answers: once 1,024 answers wait, the server
/// stops reading (Envoy closes such a connection; backpressure is enough here), so the client
/// cannot write either and the server holds a bounded amount. Once the client reads, every
/// answer arrives, in order.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_not_read_either() {
    const PINGS: u64 = 20_000;
    let served = serve(ok(), Options { pipe: 16 * 1024, ..Options::default() });
    let (mut rd, mut wr) = tokio::io::split(served.io);
    let writer = tokio::spawn(async move {
        let mut out = vec![0, 0, 0, 4, 0, 0, 0, 0, 0]; // SETTINGS, empty
        for i in 0..PINGS {
            out.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&i.to_be_bytes());
        }
        wr.write_all(&out).await.expect("the server reads everything in the end");
        wr
    });
    // Paused time: this returns once every task is waiting.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert!(!writer.is_finished(), "the server kept reading PINGs it could not answer");
    assert!(!served.server.is_finished(), "the connection stays open");
    let mut next = 0;
    while next < PINGS {
        let (ty, flags, payload) = read_raw(&mut rd).await;
        if ty == 6 {
            assert_eq!(flags, 1, "a PING ACK");
            assert_eq!(payload, next.to_be_bytes(), "answers in order, none lost");
            next += 1;
        }
    }
    writer.await.expect("the writer finished");
}

/// One frame read off the pipe: its type, flags and payload.
async fn read_raw(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u8, u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await.expect("a frame");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    rd.read_exact(&mut payload).await.expect("its payload");
    (head[3], head[4], payload)
}
