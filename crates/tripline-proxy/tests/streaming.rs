//! What only time shows, under paused time: a response body is passed on as it comes (not
//! buffered to its end), and HTTP/2 streams on one client connection are served at once (not
//! one after another).

mod support;

use http::Version;
use http_body_util::BodyExt;
use support::config;
use support::in_process::ms;
use support::{Conn, InProcess, Proto, Upstream};

/// `/drip` answers `first;` at once and `last` 400 ms later: the client has the head and
/// `first;` at 0 and `last` at 400 ms, over HTTP/1.1 and h2c.
#[tokio::test(start_paused = true)]
async fn a_response_body_is_passed_on_as_it_comes() {
    let up = Upstream::http("u1").await;
    let proxy = InProcess::start(|port| config::simple(port, "HTTP", &[up.addr], None)).await;
    for (i, proto) in [Proto::H1, Proto::H2].into_iter().enumerate() {
        let start = ms(1000 * i as u64);
        proxy.run_until(start).await;
        let (_conn, resp) = proxy.open_get(proto, "/drip").await;
        let mut body = resp.into_body();
        let mut arrived = Vec::new();
        while let Some(frame) = body.frame().await {
            // (h2 may end the stream with an empty DATA frame.)
            if let Some(data) = frame.unwrap().into_data().ok().filter(|d| !d.is_empty()) {
                arrived.push((String::from_utf8_lossy(&data).into_owned(), proxy.now() - start));
            }
        }
        assert_eq!(arrived, [("first;".to_owned(), ms(0)), ("last".to_owned(), ms(400))], "{proto:?}");
    }
}

/// Ten requests at once on one h2c client connection, each answered after 100 ms: all ten are
/// answered at 100 ms, with an HTTP/1.1 upstream (ten connections) and an h2c one (ten streams).
#[tokio::test(start_paused = true)]
async fn http2_streams_are_served_at_once() {
    for (protocol, upstream_version) in [("HTTP", "HTTP/1.1"), ("HTTP2", "HTTP/2.0")] {
        let up = Upstream::http("u1").await;
        let proxy = InProcess::start(|port| config::simple(port, protocol, &[up.addr], None)).await;
        let conn = Conn::connect(proxy.addr, Proto::H2).await.unwrap();
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let mut c = conn.clone_h2();
                tokio::spawn(async move {
                    c.get_with("backend.local", &format!("/h2/{i}"), &[("x-delay-ms", "100")])
                        .await
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        for call in calls {
            let r = call.await.unwrap().unwrap();
            assert_eq!(
                (r.status.as_u16(), r.version, r.elapsed),
                (200, Version::HTTP_2, ms(100)),
                "{protocol}: {r:?}"
            );
            assert_eq!(r.json()["version"], upstream_version, "{protocol}");
        }
        assert_eq!(up.max_active(), 10, "{protocol}: the upstream had all ten at once");
    }
}
