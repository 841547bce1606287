//! Real upstream servers on 127.0.0.1:0, started in the test's runtime.
//!
//! HTTP (HTTP/1.1 and h2c on the same port), by path:
//! - any path: reads the body, waits (server delay + `x-delay-ms`), answers JSON describing
//!   the request (`id`, `conn`, `method`, `path`, `version`, `headers`, `body_len`, `peer`);
//!   `/status/NNN` answers with that status.
//! - `/echo-body`: answers with the request body, streamed back in 64 KiB chunks.
//! - `/drip`: answers `first;` then, 400 ms later, `last`.
//! - `/reset`: closes the connection without answering.
//! - `/early`: answers `early` at once and reads the request body after the answer (counted
//!   in `body_bytes`).
//! - gRPC (content-type application/grpc): `/test.Echo/Unary` answers `<msg>|<id>`,
//!   `/test.Echo/Stream` answers N messages (`msg-i`, 80 ms apart, N = the request message),
//!   `/test.Echo/Fail` answers grpc-status 13, `/test.Echo/Bidi` answers each request message
//!   (`<msg>|<id>`) as soon as it has come, while the request is still streaming; all with
//!   trailers.
//!
//! TCP echo: echoes bytes as they come; after the client's half-close it writes `<EOF:n>`
//! (n = bytes received) and closes.
//!
//! Delays are tokio sleeps and times the runtime's clock, so under paused time (the proxy's
//! in-process tests share this file) they are virtual and exact.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{channel_body, failing_body, full, Body, BoxError, Conn};

pub struct UpstreamState {
    pub id: String,
    pub delay: Duration,
    pub requests: AtomicUsize,
    pub active: AtomicUsize,
    pub connections: AtomicUsize,
    /// Connections open now, and the most ever open at once.
    pub open: AtomicUsize,
    pub max_open: AtomicUsize,
    /// The most requests ever in flight at once.
    pub max_active: AtomicUsize,
    pub body_bytes: AtomicU64,
    /// When each connection closed, in order.
    pub closed_at: Mutex<Vec<Instant>>,
    /// The authority (`:authority` or `Host`) of each request, in order.
    pub authorities: Mutex<Vec<String>>,
}

impl UpstreamState {
    pub(super) fn new(id: &str, delay: Duration) -> Arc<Self> {
        Arc::new(UpstreamState {
            id: id.to_owned(),
            delay,
            requests: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
            closed_at: Mutex::default(),
            authorities: Mutex::default(),
        })
    }

    pub(super) fn opened(&self) -> usize {
        let id = self.connections.fetch_add(1, SeqCst) + 1;
        let open = self.open.fetch_add(1, SeqCst) + 1;
        self.max_open.fetch_max(open, SeqCst);
        id
    }

    pub(super) fn closed(&self) {
        self.closed_at.lock().unwrap().push(Instant::now());
        self.open.fetch_sub(1, SeqCst);
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    pub(super) accept: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

pub(super) struct ActiveGuard(Arc<UpstreamState>);

struct Closed(Arc<UpstreamState>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.closed();
    }
}

impl ActiveGuard {
    pub(super) fn new(state: &Arc<UpstreamState>) -> Self {
        let now = state.active.fetch_add(1, SeqCst) + 1;
        state.max_active.fetch_max(now, SeqCst);
        ActiveGuard(state.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, SeqCst);
    }
}

impl Upstream {
    pub async fn http(id: &str) -> Upstream {
        Self::http_delayed(id, Duration::ZERO).await
    }

    /// An HTTP upstream that waits `delay` before every answer.
    pub async fn http_delayed(id: &str, delay: Duration) -> Upstream {
        Self::http_on(id, delay, "127.0.0.1:0".parse().unwrap()).await
    }

    /// An HTTP upstream on `addr`: another loopback address than 127.0.0.1, say, so that two
    /// upstreams can have the same port, as two addresses a name resolves to do.
    pub async fn http_at(id: &str, addr: SocketAddr) -> Upstream {
        Self::http_on(id, Duration::ZERO, addr).await
    }

    async fn http_on(id: &str, delay: Duration, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = UpstreamState::new(id, delay);
        let st = state.clone();
        let accept = serve_http(listener, state.clone(), move |conn_id, peer, req| {
            handle(st.clone(), conn_id, peer, req)
        });
        Upstream { addr, state, accept }
    }

    /// A TCP echo server (see the module docs).
    pub async fn tcp_echo(id: &str) -> Upstream {
        Upstream::tcp_echo_at(id, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A TCP echo server on `addr` (port 0: any free one).
    pub async fn tcp_echo_at(id: &str, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = UpstreamState::new(id, Duration::ZERO);
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                st.opened();
                let guard = ActiveGuard::new(&st);
                let st = st.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    let _closed = Closed(st);
                    let (mut r, mut w) = stream.into_split();
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut total = 0usize;
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                total += n;
                                if w.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                    let _ = w.write_all(format!("<EOF:{total}>").as_bytes()).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Upstream { addr, state, accept }
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(SeqCst)
    }

    pub fn active(&self) -> usize {
        self.state.active.load(SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(SeqCst)
    }

    /// Connections open now.
    #[allow(dead_code)] // the proxy's in-process tests use it
    pub fn open(&self) -> usize {
        self.state.open.load(SeqCst)
    }

    /// The most connections ever open at once.
    pub fn max_open(&self) -> usize {
        self.state.max_open.load(SeqCst)
    }

    /// The most requests (or TCP connections) ever in flight at once.
    pub fn max_active(&self) -> usize {
        self.state.max_active.load(SeqCst)
    }

    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(SeqCst)
    }

    /// The authority of each request it got, in order.
    #[allow(dead_code)] // the proxy's in-process tests share this file and do not use it
    pub fn authorities(&self) -> Vec<String> {
        self.state.authorities.lock().unwrap().clone()
    }

    /// When each connection closed so far, in order.
    #[allow(dead_code)] // the proxy's in-process tests use it
    pub fn closed_at(&self) -> Vec<Instant> {
        self.state.closed_at.lock().unwrap().clone()
    }
}

/// Accepts connections on `listener` until aborted and serves each one (HTTP/1.1 or h2c) with
/// `handle(connection number, peer, request)`, counting connections in `st`.
pub(super) fn serve_http<H, F>(listener: TcpListener, st: Arc<UpstreamState>, handle: H) -> JoinHandle<()>
where
    H: Fn(usize, SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let conn_id = st.opened();
            let st = st.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let svc = service_fn(move |req| handle(conn_id, peer, req));
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                st.closed();
            });
        }
    })
}

pub(super) async fn handle(
    st: Arc<UpstreamState>,
    conn: usize,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    st.requests.fetch_add(1, SeqCst);
    let _active = ActiveGuard::new(&st);
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/grpc") {
        return grpc(st.clone(), req).await;
    }
    let extra = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    let delay = st.delay + extra;
    let path = req.uri().path().to_owned();
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or(path.clone());
    // Where the request said it was going: `:authority` on HTTP/2, `Host` on HTTP/1.1.
    let authority =
        req.uri().authority().map(|a| a.to_string()).or_else(|| {
            req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned)
        });
    st.authorities.lock().unwrap().push(authority.clone().unwrap_or_default());
    let version = req.version();
    let method = req.method().to_string();
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<&str> = req.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        headers.insert(name.as_str().to_owned(), serde_json::Value::String(values.join(", ")));
    }
    let mut body = req.into_body();

    match path.as_str() {
        "/reset" => return Err("reset requested by the test".into()),
        "/early" => {
            // Answers before the body has come, and reads the body on after the answer.
            let st = st.clone();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        st.body_bytes.fetch_add(data.len() as u64, SeqCst);
                    }
                }
            });
            return Ok(Response::new(full("early")));
        }
        "/echo-body" => {
            let data = body.collect().await?.to_bytes();
            st.body_bytes.fetch_add(data.len() as u64, SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let (tx, out) = channel_body(4);
            tokio::spawn(async move {
                let mut at = 0;
                while at < data.len() {
                    let end = (at + 64 * 1024).min(data.len());
                    if tx.send(Frame::data(data.slice(at..end))).await.is_err() {
                        return;
                    }
                    at = end;
                }
            });
            return Ok(Response::builder().status(200).header("x-upstream-id", &st.id).body(out)?);
        }
        p if p.starts_with("/bytes/") => {
            // `n` bytes in 64 KiB chunks, as fast as the proxy takes them.
            let n: usize = p["/bytes/".len()..].parse().unwrap_or(0);
            let (tx, out) = channel_body(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len());
                    if tx.send(Frame::data(chunk.slice(..take))).await.is_err() {
                        return;
                    }
                    left -= take;
                }
            });
            return Ok(Response::builder()
                .status(200)
                .header("content-length", n)
                .header("x-upstream-id", &st.id)
                .body(out)?);
        }
        "/drip" => {
            let (tx, out) = channel_body(4);
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"first;"))).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = tx.send(Frame::data(Bytes::from_static(b"last"))).await;
            });
            return Ok(Response::builder().status(200).header("x-upstream-id", &st.id).body(out)?);
        }
        _ => {}
    }

    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            body_len += data.len() as u64;
            st.body_bytes.fetch_add(data.len() as u64, SeqCst);
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = path.strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok()).unwrap_or(200);
    let json = serde_json::json!({
        "id": st.id,
        "conn": conn,
        "method": method,
        "path": path_and_query,
        "authority": authority,
        "version": format!("{version:?}"),
        "headers": headers,
        "body_len": body_len,
        "peer": peer.to_string(),
    });
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream-id", &st.id);
    if version == Version::HTTP_11 {
        // Hop-by-hop headers the proxy must not pass on to its client.
        resp =
            resp.header("keep-alive", "timeout=7").header("connection", "x-up-hop").header("x-up-hop", "1");
    }
    Ok(resp.body(full(json.to_string()))?)
}

/// A gRPC length-prefixed message (uncompressed).
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// A call to `method` of this upstream's gRPC service with one message.
pub fn grpc_request(conn: &Conn, method: &str, msg: &[u8]) -> http::Request<Body> {
    grpc_call(conn, method, full(grpc_frame(msg)))
}

/// A call to `method` with the body given (gRPC messages, whole or streamed).
pub fn grpc_call(conn: &Conn, method: &str, body: Body) -> http::Request<Body> {
    conn.request(Method::POST, "grpc.local", method)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

/// Splits a body into gRPC messages; panics on a malformed frame.
pub fn grpc_messages(body: &[u8]) -> Vec<Bytes> {
    let mut buf = BytesMut::from(body);
    let mut out = Vec::new();
    while let Some(msg) = grpc_take_message(&mut buf) {
        out.push(msg);
    }
    assert!(buf.is_empty(), "truncated gRPC message: {} bytes left", buf.len());
    out
}

/// Takes the first whole gRPC message off the front of `buf`, if it has come in full.
pub fn grpc_take_message(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() - 5 < len {
        return None;
    }
    let mut frame = buf.split_to(5 + len);
    Some(frame.split_off(5).freeze())
}

/// What the gRPC echo methods answer to `msg`: `<msg>|<upstream id>`.
fn grpc_echo(msg: &[u8], id: &str) -> Bytes {
    let mut reply = msg.to_vec();
    reply.extend_from_slice(format!("|{id}").as_bytes());
    grpc_frame(&reply)
}

fn grpc_trailers(status: &'static str, message: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(status));
    t.insert("grpc-message", HeaderValue::from_static(message));
    t
}

async fn grpc(st: Arc<UpstreamState>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let path = req.uri().path().to_owned();
    let (tx, out) = channel_body(16);
    let id = st.id.clone();
    // The deadline the proxy passed on, echoed back for the tests that check it.
    let deadline = req.headers().get("grpc-timeout").cloned();
    let delay = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut body = req.into_body();
    if path == "/test.Echo/Bidi" {
        // Answers with the head at once, then each message as soon as it has come.
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                buf.extend_from_slice(&data);
                while let Some(msg) = grpc_take_message(&mut buf) {
                    if tx.send(Frame::data(grpc_echo(&msg, &id))).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Frame::trailers(grpc_trailers("0", "ok"))).await;
        });
        return grpc_response(&st, out);
    }
    let data = body.collect().await?.to_bytes();
    let msg = grpc_messages(&data).into_iter().next().unwrap_or_default();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    match path.as_str() {
        "/test.Echo/Die" => {
            // One message, then the upstream's stream fails: hyper resets it.
            let mut resp =
                grpc_response(&st, failing_body(grpc_echo(&msg, &id), Duration::from_millis(100)))?;
            echo_deadline(&mut resp, deadline);
            return Ok(resp);
        }
        "/test.Echo/Unary" => {
            let reply = grpc_echo(&msg, &id);
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(reply)).await;
                let _ = tx.send(Frame::trailers(grpc_trailers("0", "ok"))).await;
            });
        }
        "/test.Echo/Stream" => {
            let n: usize = std::str::from_utf8(&msg).ok().and_then(|s| s.parse().ok()).unwrap_or(3);
            tokio::spawn(async move {
                for i in 0..n {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(80)).await;
                    }
                    if tx.send(Frame::data(grpc_frame(format!("msg-{i}").as_bytes()))).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Frame::trailers(grpc_trailers("0", "done"))).await;
            });
        }
        "/test.Echo/Fail" => {
            tokio::spawn(async move {
                let _ = tx.send(Frame::trailers(grpc_trailers("13", "boom%20here"))).await;
            });
        }
        _ => {
            tokio::spawn(async move {
                let _ = tx.send(Frame::trailers(grpc_trailers("12", "unknown%20method"))).await;
            });
        }
    }
    let mut resp = grpc_response(&st, out)?;
    echo_deadline(&mut resp, deadline);
    Ok(resp)
}

/// Shows the `grpc-timeout` the upstream received as `x-seen-grpc-timeout`.
fn echo_deadline(resp: &mut Response<Body>, deadline: Option<HeaderValue>) {
    if let Some(d) = deadline {
        resp.headers_mut().insert("x-seen-grpc-timeout", d);
    }
}

fn grpc_response(st: &UpstreamState, body: Body) -> Result<Response<Body>, BoxError> {
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-upstream-id", &st.id)
        .body(body)?)
}
