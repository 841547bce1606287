//! Flow control both ways (RFC 9113 §5.2, §6.9): what the client's windows let the server send,
//! what the server's windows let the client send and how they are given back.

use std::sync::atomic::Ordering;

use h2::frame::{Frame, Reason, Settings, StreamId, WindowUpdate};

use super::*;

/// Connection options with the client's SETTINGS_INITIAL_WINDOW_SIZE.
fn window(size: u32) -> Options {
    let mut settings = Settings::default();
    settings.set_initial_window_size(Some(size));
    Options { settings, ..Options::default() }
}

/// Reads DATA on `id` until `n` bytes came or the stream ended; asserts nothing else arrives.
async fn read_data(c: &mut Client, id: u32, n: usize) -> (usize, bool) {
    let (mut got, mut end) = (0, false);
    while got < n && !end {
        match c.next().await.expect("open") {
            Frame::Data(d) if d.stream_id() == StreamId::from(id) => {
                got += d.payload().len();
                end = d.is_end_stream();
            }
            Frame::Headers(h) if h.stream_id() == StreamId::from(id) => end = h.is_end_stream(),
            other => panic!("unexpected {other:?}"),
        }
    }
    (got, end)
}

#[tokio::test(start_paused = true)]
async fn the_stream_window_bounds_every_data_byte() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::with(handler, window(16)).await;
    c.send(get(1, "/")).await;
    exchanges.next().await.respond.ok(vec![b'a'; 100]);
    let mut got = 0;
    while got < 100 {
        let (n, _) = read_data(&mut c, 1, 16.min(100 - got)).await;
        assert!(n <= 16, "{n} bytes on a 16-byte window");
        got += n;
        if got < 100 {
            // Window spent: nothing more comes until it is opened again.
            c.quiet().await;
            c.send(WindowUpdate::new(StreamId::from(1), 16)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_connection_window_is_shared_by_the_streams() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    // Two responses of 50,000 bytes against a connection window of 65,535.
    c.send(get(1, "/")).await;
    c.send(get(3, "/")).await;
    exchanges.next().await.respond.ok(vec![b'a'; 50_000]);
    exchanges.next().await.respond.ok(vec![b'b'; 50_000]);
    let (mut sent, mut ended) = (0, 0);
    let count = |f: Frame, sent: &mut usize, ended: &mut usize| match f {
        Frame::Data(d) => {
            *sent += d.payload().len();
            *ended += usize::from(d.is_end_stream());
        }
        Frame::Headers(_) => {}
        other => panic!("unexpected {other:?}"),
    };
    while let Ok(f) = tokio::time::timeout(std::time::Duration::from_millis(500), c.next()).await {
        count(f.expect("open"), &mut sent, &mut ended);
    }
    assert_eq!(sent, 65_535, "exactly the connection window, then nothing");
    c.send(WindowUpdate::new(StreamId::zero(), 100_000)).await;
    while ended < 2 {
        count(c.next().await.expect("open"), &mut sent, &mut ended);
    }
    assert_eq!(sent, 100_000);
}

#[tokio::test(start_paused = true)]
async fn a_larger_initial_window_applies_to_open_streams() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::with(handler, window(10)).await;
    c.send(get(1, "/")).await;
    exchanges.next().await.respond.ok(vec![b'a'; 30]);
    assert_eq!(read_data(&mut c, 1, 10).await, (10, false));
    c.quiet().await;
    // SETTINGS_INITIAL_WINDOW_SIZE from 10 to 30: the stream may take 20 more.
    let mut s = Settings::default();
    s.set_initial_window_size(Some(30));
    c.send(s).await;
    let (mut n, mut end) = (0, false);
    while !end {
        match c.next().await.expect("open") {
            Frame::Data(d) => {
                n += d.payload().len();
                end = d.is_end_stream();
            }
            Frame::Settings(ack) => assert!(ack.is_ack()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(n, 20);
}

#[tokio::test(start_paused = true)]
async fn data_frames_respect_the_client_s_max_frame_size() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(1, "/")).await;
    exchanges.next().await.respond.ok(vec![b'a'; 40_000]);
    let mut sizes = Vec::new();
    loop {
        match c.next().await.expect("open") {
            Frame::Data(d) => {
                sizes.push(d.payload().len());
                if d.is_end_stream() {
                    break;
                }
            }
            Frame::Headers(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sizes, vec![16_384, 16_384, 7_232], "frames of SETTINGS_MAX_FRAME_SIZE (16 KiB)");
}

#[tokio::test(start_paused = true)]
async fn the_request_body_s_windows_are_given_back_as_it_is_read() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    assert_eq!(c.server_settings.initial_window_size(), Some(shared_window()));
    c.send(post(1)).await;
    let Exchange { mut request, respond } = exchanges.next().await;
    // The whole window of the stream (and of the connection): 64 frames of 16 KiB.
    for i in 0..64 {
        c.send(data(1, vec![b'x'; 16_384], i == 63)).await;
    }
    // Nothing is given back before the body is read.
    c.quiet().await;
    assert_eq!(read_body(request.body_mut()).await.unwrap().len(), 1 << 20);
    // Read: the connection's window comes back (the stream's does not: it has ended).
    let mut conn = 0;
    while conn < 1 << 20 {
        match c.next().await.expect("open") {
            Frame::WindowUpdate(w) => {
                assert!(w.stream_id().is_zero(), "no update for a stream that has ended: {w:?}");
                conn += w.size_increment();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    respond.ok("done");
    assert_eq!(c.response(1).await.body, b"done");
}

fn shared_window() -> u32 {
    crate::h2_streams::RECV_WINDOW
}

#[tokio::test(start_paused = true)]
async fn padding_is_given_back_at_once() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(post(1)).await;
    let _held = exchanges.next().await;
    // 10 bytes of data padded with 200: 211 flow-controlled bytes, 201 of them never read.
    let mut payload = vec![200u8];
    payload.extend_from_slice(b"0123456789");
    payload.extend_from_slice(&[0; 200]);
    for _ in 0..2_700 {
        c.raw(DATA, PADDED, 1, &payload).await;
    }
    // 2,700 × 201 = 542,700 bytes of padding, and the body unread: the stream's window comes
    // back by the padding alone, once half a window of it is due.
    let mut stream = 0;
    while stream < shared_window() / 2 {
        match c.next().await.expect("open") {
            Frame::WindowUpdate(w) if !w.stream_id().is_zero() => stream += w.size_increment(),
            Frame::WindowUpdate(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(stream <= 542_700, "no more than the padding: {stream}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_beyond_its_window_is_stopped() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(post(1)).await;
    let _held = exchanges.next().await;
    // One byte past the stream's window (and the connection's, which is as large).
    for _ in 0..64 {
        c.send(data(1, vec![b'x'; 16_384], false)).await;
    }
    c.send(data(1, "x", false)).await;
    assert_eq!(c.goaway().await.reason(), Reason::FLOW_CONTROL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn window_updates_past_the_largest_window_are_errors() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(get(1, "/")).await;
    let _held = exchanges.next().await;
    c.send(WindowUpdate::new(StreamId::from(1), (1 << 31) - 1)).await;
    assert_eq!(c.reset(1).await.reason(), Reason::FLOW_CONTROL_ERROR);
    c.send(WindowUpdate::new(StreamId::zero(), (1 << 31) - 1)).await;
    assert_eq!(c.goaway().await.reason(), Reason::FLOW_CONTROL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_unread_gives_its_windows_back() {
    let (handler, mut exchanges) = manual();
    let mut c = Client::start(handler).await;
    c.send(post(1)).await;
    let Exchange { request, respond } = exchanges.next().await;
    for _ in 0..40 {
        c.send(data(1, vec![b'x'; 16_384], false)).await;
    }
    c.quiet().await;
    // 640 KiB held unread; the request gives up on its body.
    drop(request);
    let (mut conn, mut stream) = (0, 0);
    while conn < 40 * 16_384 || stream < 40 * 16_384 {
        match c.next().await.expect("open") {
            Frame::WindowUpdate(w) if w.stream_id().is_zero() => conn += w.size_increment(),
            Frame::WindowUpdate(w) => stream += w.size_increment(),
            other => panic!("unexpected {other:?}"),
        }
    }
    respond.ok("done");
    assert_eq!(c.response(1).await.body, b"done");
    assert_eq!(c.stats.http2.proxy_resets.load(Ordering::Relaxed), 0);
}
