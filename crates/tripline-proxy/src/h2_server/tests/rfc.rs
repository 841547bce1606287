//! RFC 9113 cases: stream states (§5.1, the h2spec cases among them, named by their h2spec
//! numbers), stream identifiers, trailers and malformed requests (§8.1), SETTINGS, PING,
//! GOAWAY and the drain.

use h2::frame::{Frame, GoAway, Ping, Reason, Settings, StreamId};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::*;

#[tokio::test(start_paused = true)]
async fn a_request_is_handed_to_the_handler_and_answered() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    let mut fields = HeaderMap::new();
    fields.insert("x-request", HeaderValue::from_static("1"));
    c.send(request(1, Method::POST, "/a?b=c", fields, false)).await;
    c.send(data(1, "hello", true)).await;
    let Exchange { mut request, respond } = exchanges.next().await;
    assert_eq!(request.method(), Method::POST);
    assert_eq!(request.uri(), "http://example.com/a?b=c");
    assert_eq!(request.headers()["x-request"], "1");
    assert_eq!(read_body(request.body_mut()).await.unwrap(), b"hello");
    let (tx, body) = TestBody::channel();
    respond.send(Response::new(body));
    tx.data("wor");
    tx.data("ld");
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    tx.trailers(t);
    let a = c.response(1).await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"world"[..]));
    assert_eq!(a.trailers.unwrap()["grpc-status"], "0");
    assert!(a.headers.contains_key("date"), "a response gets a date");
}

#[tokio::test(start_paused = true)]
async fn a_response_of_known_length_declares_it_and_a_head_response_has_no_body() {
    let mut c = Client::start(ok()).await;
    c.send(get(1, "/")).await;
    let a = c.response(1).await;
    assert_eq!(a.headers["content-length"], "2");
    assert_eq!(a.body, b"ok");
    c.send(request(3, Method::HEAD, "/", HeaderMap::new(), true)).await;
    let Frame::Headers(h) = c.until("the HEAD response", |f| stream_of(f) == Some(StreamId::from(3))).await
    else {
        panic!("a HEAD response starts with HEADERS")
    };
    assert!(h.is_end_stream(), "the head ends the stream: no DATA for HEAD");
}

/// h2spec http2/5.1/5: DATA on a half-closed (remote) stream is a stream error STREAM_CLOSED.
#[tokio::test(start_paused = true)]
async fn data_after_the_request_ended_is_a_stream_error() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(1, "/")).await;
    let _held = exchanges.next().await;
    c.send(data(1, "test", true)).await;
    assert_eq!(c.reset(1).await.reason(), Reason::STREAM_CLOSED);
}

/// h2spec http2/5.1/6: HEADERS on a half-closed (remote) stream is a stream error STREAM_CLOSED.
#[tokio::test(start_paused = true)]
async fn headers_after_the_request_ended_are_a_stream_error() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(1, "/")).await;
    let _held = exchanges.next().await;
    c.send(get(1, "/")).await;
    assert_eq!(c.reset(1).await.reason(), Reason::STREAM_CLOSED);
    // The connection serves on.
    c.send(get(3, "/")).await;
    exchanges.next().await.respond.ok("after");
    assert_eq!(c.response(3).await.body, b"after");
}

/// h2spec http2/5.1/8: DATA on a stream the client reset is a stream error STREAM_CLOSED.
#[tokio::test(start_paused = true)]
async fn data_after_the_client_reset_its_stream_is_a_stream_error() {
    let mut c = Client::start(ok()).await;
    c.send(post(1)).await;
    c.send(rst(1, Reason::CANCEL)).await;
    c.send(data(1, "test", true)).await;
    assert_eq!(c.reset(1).await.reason(), Reason::STREAM_CLOSED);
    assert_eq!(c.stats.http2.client_resets.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// h2spec http2/5.1/9: HEADERS on a stream the client reset: STREAM_CLOSED (the connection's,
/// since a closed stream's past is not kept).
#[tokio::test(start_paused = true)]
async fn headers_after_the_client_reset_its_stream_close_the_connection() {
    let mut c = Client::start(ok()).await;
    c.send(post(1)).await;
    c.send(rst(1, Reason::CANCEL)).await;
    c.send(get(1, "/")).await;
    assert_eq!(c.goaway().await.reason(), Reason::STREAM_CLOSED);
}

/// h2spec http2/5.1/11: DATA on a stream that closed normally is answered STREAM_CLOSED, and
/// the connection serves on.
#[tokio::test(start_paused = true)]
async fn data_on_a_closed_stream_is_a_stream_error() {
    let mut c = Client::start(ok()).await;
    c.send(get(1, "/")).await;
    c.response(1).await;
    c.send(data(1, "test", true)).await;
    assert_eq!(c.reset(1).await.reason(), Reason::STREAM_CLOSED);
    c.send(get(3, "/")).await;
    assert_eq!(c.response(3).await.body, b"ok");
}

/// h2spec http2/5.1/12: HEADERS on a stream that closed normally is a connection error
/// STREAM_CLOSED; the GOAWAY names the last stream taken up.
#[tokio::test(start_paused = true)]
async fn headers_on_a_closed_stream_close_the_connection() {
    let mut c = Client::start(ok()).await;
    c.send(get(1, "/")).await;
    c.response(1).await;
    c.send(get(1, "/")).await;
    let g = c.goaway().await;
    assert_eq!((g.reason(), g.last_stream_id()), (Reason::STREAM_CLOSED, StreamId::from(1)));
    let closed = c.stats.http2.connection_errors(Reason::STREAM_CLOSED.into());
    assert_eq!(closed, 1, "counted in tripline_downstream_http2_connection_errors");
}

/// h2spec http2/5.1.1/2: a stream id lower than one already used is a connection error
/// PROTOCOL_ERROR (the client would otherwise wait for an answer that never comes).
#[tokio::test(start_paused = true)]
async fn a_lower_stream_id_than_the_last_is_a_protocol_error() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(5, "/")).await;
    let _held = exchanges.next().await;
    c.send(get(3, "/")).await;
    let g = c.goaway().await;
    assert_eq!((g.reason(), g.last_stream_id()), (Reason::PROTOCOL_ERROR, StreamId::from(5)));
}

/// RFC 9113 §5.1: frames on a stream Tripline reset may have been sent before the client saw
/// the reset, and are ignored, DATA given back to the connection's window; until the record
/// of the reset expires.
#[tokio::test(start_paused = true)]
async fn late_frames_on_a_stream_tripline_reset_are_ignored_for_a_while() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    let mut fields = HeaderMap::new();
    fields.insert("content-length", HeaderValue::from_static("3"));
    c.send(request(1, Method::POST, "/", fields, false)).await;
    let _held = exchanges.next().await;
    c.send(data(1, "toolong", false)).await;
    assert_eq!(c.reset(1).await.reason(), Reason::PROTOCOL_ERROR);
    // In flight when the client saw the reset: most of a connection window of DATA, then
    // trailers. None of it is answered, and the window comes back.
    let sent = 60 * 16_000;
    for _ in 0..60 {
        c.send(data(1, vec![b'x'; 16_000], false)).await;
    }
    c.send(trailers(1, HeaderMap::new())).await;
    let mut given_back = 0;
    while given_back < sent / 2 {
        match c.next().await.expect("the connection stays open") {
            Frame::WindowUpdate(w) if w.stream_id().is_zero() => given_back += w.size_increment(),
            other => panic!("late frames answered: {other:?}"),
        }
    }
    c.quiet().await;
    // Once the record has expired, the stream is like any closed one.
    tokio::time::advance(super::super::closed::RESET_MEMORY).await;
    c.send(data(1, "late", false)).await;
    assert_eq!(c.reset(1).await.reason(), Reason::STREAM_CLOSED);
}

/// A response that ends before its request: RST_STREAM NO_ERROR tells the client to stop
/// (RFC 9113 §8.1), and what it sent meanwhile is ignored.
#[tokio::test(start_paused = true)]
async fn a_response_complete_before_its_request_resets_the_stream_with_no_error() {
    let mut c = Client::start(ok()).await;
    c.send(post(1)).await;
    let a = c.response(1).await;
    assert_eq!(a.body, b"ok");
    assert_eq!(c.reset(1).await.reason(), Reason::NO_ERROR);
    c.send(data(1, "more", false)).await;
    c.send(data(1, "end", true)).await;
    c.quiet().await;
    assert_eq!(
        c.stats.http2.proxy_resets.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "NO_ERROR is not counted as a reset for an error"
    );
}

#[tokio::test(start_paused = true)]
async fn frames_on_idle_streams_are_connection_errors() {
    // DATA, RST_STREAM, WINDOW_UPDATE on a stream never opened (h2spec http2/5.1/1 to 3).
    for frame in [
        Frame::from(data(1, "x", true)),
        Frame::from(rst(1, Reason::CANCEL)),
        Frame::from(h2::frame::WindowUpdate::new(StreamId::from(1), 100)),
    ] {
        let mut c = Client::start(ok()).await;
        c.send(frame).await;
        assert_eq!(c.goaway().await.reason(), Reason::PROTOCOL_ERROR);
    }
    // Only the server opens even streams (h2spec http2/5.1.1/1).
    let mut c = Client::start(ok()).await;
    c.raw(HEADERS, END_HEADERS | END_STREAM, 2, &[0x82]).await;
    assert_eq!(c.goaway().await.reason(), Reason::PROTOCOL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn trailers_reach_the_request_and_must_end_it() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(post(1)).await;
    c.send(data(1, "body", false)).await;
    let mut t = HeaderMap::new();
    t.insert("x-checksum", HeaderValue::from_static("7"));
    c.send(trailers(1, t)).await;
    let Exchange { mut request, respond } = exchanges.next().await;
    use http_body_util::BodyExt;
    let collected = request.body_mut().collect().await.expect("the body and its trailers");
    assert_eq!(collected.trailers().expect("trailers")["x-checksum"], "7");
    respond.ok("ok");
    c.response(1).await;
    // Trailers without END_STREAM (RFC 9113 §8.1) reset the stream.
    c.send(post(3)).await;
    let _held = exchanges.next().await;
    // `x: y` as an HPACK literal, in a HEADERS frame without END_STREAM.
    c.raw(HEADERS, END_HEADERS, 3, &[0x00, 1, b'x', 1, b'y']).await;
    assert_eq!(c.reset(3).await.reason(), Reason::PROTOCOL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn malformed_requests_reset_their_stream_only() {
    let mut c = Client::start(ok()).await;
    // A body longer than its content-length.
    let mut fields = HeaderMap::new();
    fields.insert("content-length", HeaderValue::from_static("1"));
    c.send(request(1, Method::POST, "/", fields.clone(), false)).await;
    c.send(data(1, "ab", true)).await;
    assert_eq!(c.reset(1).await.reason(), Reason::PROTOCOL_ERROR);
    // A content-length on a request that ends with its head.
    c.send(request(3, Method::POST, "/", fields, true)).await;
    assert_eq!(c.reset(3).await.reason(), Reason::PROTOCOL_ERROR);
    // A connection-specific field (the codec's check).
    let mut conn = HeaderMap::new();
    conn.insert("connection", HeaderValue::from_static("keep-alive"));
    c.send(request(5, Method::GET, "/", conn, true)).await;
    assert_eq!(c.reset(5).await.reason(), Reason::PROTOCOL_ERROR);
    // Without :path (a header block of `:method: GET` alone).
    c.raw(HEADERS, END_HEADERS | END_STREAM, 7, &[0x82]).await;
    assert_eq!(c.reset(7).await.reason(), Reason::PROTOCOL_ERROR);
    c.send(get(9, "/")).await;
    assert_eq!(c.response(9).await.body, b"ok");
}

#[tokio::test(start_paused = true)]
async fn streams_beyond_the_concurrency_limit_are_refused_and_their_frames_ignored() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    assert_eq!(c.server_settings.max_concurrent_streams(), Some(super::super::MAX_CONCURRENT_STREAMS));
    let n = super::super::MAX_CONCURRENT_STREAMS;
    for i in 0..n {
        c.send(post(2 * i + 1)).await;
    }
    let refused = 2 * n + 1;
    c.send(post(refused)).await;
    assert_eq!(c.reset(refused).await.reason(), Reason::REFUSED_STREAM);
    c.send(data(refused, "sent before the refusal arrived", true)).await;
    c.quiet().await;
    assert_eq!(exchanges.pending(), n as usize);
}

#[tokio::test(start_paused = true)]
async fn ping_and_settings_are_answered() {
    let mut c = Client::start(ok()).await;
    c.send(Ping::new(*b"tripline")).await;
    let Frame::Ping(p) = c.until("the PING ACK", |f| matches!(f, Frame::Ping(_))).await else {
        unreachable!()
    };
    assert!(p.is_ack());
    assert_eq!(p.payload(), b"tripline");
    let mut s = Settings::default();
    s.set_max_frame_size(Some(32_768));
    c.send(s).await;
    let Frame::Settings(ack) = c.until("the SETTINGS ACK", |f| matches!(f, Frame::Settings(_))).await else {
        unreachable!()
    };
    assert!(ack.is_ack());
}

#[tokio::test(start_paused = true)]
async fn push_promise_from_a_client_is_a_protocol_error() {
    let mut c = Client::start(ok()).await;
    c.send(get(1, "/")).await;
    c.response(1).await;
    // PUSH_PROMISE (5) on stream 1 promising stream 2, an empty header block.
    c.raw(0x5, END_HEADERS, 1, &[0, 0, 0, 2]).await;
    assert_eq!(c.goaway().await.reason(), Reason::PROTOCOL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn a_response_body_that_fails_after_its_head_resets_the_stream() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(1, "/")).await;
    let (tx, body) = TestBody::channel();
    exchanges.next().await.respond.send(Response::new(body));
    tx.data("partial");
    tx.fail();
    assert_eq!(c.reset(1).await.reason(), Reason::INTERNAL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn the_client_s_goaway_lets_streams_in_flight_finish_then_the_connection_closes() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(1, "/")).await;
    let ex = exchanges.next().await;
    c.send(GoAway::new(StreamId::zero(), Reason::NO_ERROR)).await;
    c.quiet().await;
    ex.respond.ok("last");
    assert_eq!(c.response(1).await.body, b"last");
    assert!(c.next().await.is_none(), "closed once the last stream ended");
}

/// The drain: GOAWAY with the largest id and a PING; a stream the client opened before it saw
/// the GOAWAY is served; the PING's answer brings the final GOAWAY naming the last stream.
#[tokio::test(start_paused = true)]
async fn the_drain_announces_itself_in_two_steps() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(1, "/")).await;
    let first = exchanges.next().await;
    c.drain();
    let Frame::GoAway(g) = c.next().await.unwrap() else { panic!("GOAWAY first") };
    assert_eq!((g.last_stream_id(), g.reason()), (StreamId::MAX, Reason::NO_ERROR));
    let Frame::Ping(ping) = c.next().await.unwrap() else { panic!("then a PING") };
    c.send(get(3, "/")).await;
    c.send(Ping::pong(*ping.payload())).await;
    let Frame::GoAway(g) = c.until("the final GOAWAY", |f| matches!(f, Frame::GoAway(_))).await else {
        unreachable!()
    };
    assert_eq!(g.last_stream_id(), StreamId::from(3));
    // A stream opened after the final GOAWAY is not taken up.
    c.send(get(5, "/")).await;
    exchanges.next().await.respond.ok("3");
    assert_eq!(c.response(3).await.body, b"3");
    first.respond.ok("1");
    assert_eq!(c.response(1).await.body, b"1");
    assert!(c.next().await.is_none());
    assert_eq!(exchanges.pending(), 0, "stream 5 never reached the handler");
}

/// A client that never answers the drain's PING gets the final GOAWAY after a second.
#[tokio::test(start_paused = true)]
async fn a_drain_the_client_never_acknowledges_still_ends() {
    let mut c = Client::start(ok()).await;
    c.drain();
    let started = tokio::time::Instant::now();
    let Frame::GoAway(_) = c.next().await.unwrap() else { panic!("GOAWAY first") };
    let Frame::Ping(_) = c.next().await.unwrap() else { panic!("then a PING") };
    let Frame::GoAway(g) = c.next().await.unwrap() else { panic!("then the final GOAWAY") };
    assert_eq!(started.elapsed(), super::super::DRAIN_PING_TIMEOUT);
    assert_eq!(g.last_stream_id(), StreamId::zero());
    assert!(c.next().await.is_none());
}

/// After closing its side, the server reads on for a while, so that the client's late bytes do
/// not make the kernel reset the connection under the last response.
#[tokio::test(start_paused = true)]
async fn the_server_lingers_after_closing_then_lets_go() {
    let mut c = Client::start(ok()).await;
    c.send(h2::frame::WindowUpdate::new(StreamId::from(7), 1)).await;
    assert_eq!(c.goaway().await.reason(), Reason::PROTOCOL_ERROR);
    let closed_at = tokio::time::Instant::now();
    // Late bytes are read, not refused.
    c.send(Ping::new(*b"latebyte")).await;
    c.server.await.expect("the server task ends");
    assert_eq!(closed_at.elapsed(), super::super::LINGER);
}
