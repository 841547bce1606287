//! A tiny HTTP client over hyper's connection API: HTTP/1.1 and h2c with prior knowledge.
//!
//! Shared with the proxy's in-process tests (`crates/tripline-proxy/tests/support`), which run
//! under tokio's paused time: every time here is the runtime's clock (`tokio::time::Instant`,
//! the monotonic clock unless a test pauses it), so `Resp::elapsed` is virtual there.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Every client call is bounded by this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body fed frame by frame from a channel (streaming, no content-length).
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

pub fn channel_body(capacity: usize) -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx }.boxed_unsync())
}

/// A body that sends `first`, then fails `after` later (hyper resets the stream or closes the
/// connection): a peer dying mid-body.
pub fn failing_body(first: Bytes, after: Duration) -> Body {
    struct Failing(Option<Bytes>, Pin<Box<tokio::time::Sleep>>);
    impl hyper::body::Body for Failing {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if let Some(first) = self.0.take() {
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
            std::task::ready!(self.1.as_mut().poll(cx));
            Poll::Ready(Some(Err("the body fails, as the test asked".into())))
        }
    }
    Failing(Some(first), Box::pin(tokio::time::sleep(after))).boxed_unsync()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// A response with its body and trailers collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    pub elapsed: Duration,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-tripline-reason` of a locally generated response.
    pub fn reason(&self) -> Option<&str> {
        self.header("x-tripline-reason")
    }

    /// The id of the test upstream that answered (none for local responses).
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream-id")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} headers {:?} body {:?}",
                self.status,
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A request header as the upstream saw it (from the echo JSON).
    pub fn seen_header(&self, name: &str) -> Option<String> {
        self.json()["headers"].get(name).and_then(|v| v.as_str()).map(str::to_owned)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Conn {
    pub async fn connect(addr: SocketAddr, proto: Proto) -> Result<Conn, BoxError> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))??;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        Ok(match proto {
            Proto::H1 => {
                let (sender, conn) = http1::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Conn::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Conn::H2(sender)
            }
        })
    }

    /// Another handle on the same HTTP/2 connection (streams are multiplexed).
    pub fn clone_h2(&self) -> Conn {
        match self {
            Conn::H2(s) => Conn::H2(s.clone()),
            Conn::H1(_) => panic!("an HTTP/1.1 connection cannot be shared"),
        }
    }

    /// A request builder in the form this protocol wants (origin form + Host for HTTP/1.1,
    /// absolute form giving `:authority` for HTTP/2).
    pub fn request(&self, method: Method, host: &str, path: &str) -> http::request::Builder {
        match self {
            Conn::H1(_) => Request::builder().method(method).uri(path).header("host", host),
            Conn::H2(_) => {
                Request::builder().method(method).uri(format!("http://{host}{path}")).version(Version::HTTP_2)
            }
        }
    }

    /// Waits until the connection can take a request; an error means it was closed.
    pub async fn ready(&mut self) -> Result<(), BoxError> {
        match self {
            Conn::H1(s) => s.ready().await?,
            Conn::H2(s) => s.ready().await?,
        }
        Ok(())
    }

    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let fut = async {
            Ok::<_, BoxError>(match self {
                Conn::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Conn::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            })
        };
        tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| "request timed out")?
    }

    /// Sends and collects the whole response, trailers included.
    pub async fn call(&mut self, req: Request<Body>) -> Result<Resp, BoxError> {
        let start = Instant::now();
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let collected = tokio::time::timeout(CALL_TIMEOUT, body.collect())
            .await
            .map_err(|_| "reading the response body timed out")??;
        let trailers = collected.trailers().cloned();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
            elapsed: start.elapsed(),
        })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Resp, BoxError> {
        self.get_with(host, path, &[]).await
    }

    pub async fn get_with(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, BoxError> {
        let mut b = self.request(Method::GET, host, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.call(b.body(empty())?).await
    }
}

/// One GET on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Resp, BoxError> {
    get_with(addr, host, path, &[]).await
}

/// One GET with extra headers on a fresh HTTP/1.1 connection.
pub async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, BoxError> {
    let start = Instant::now();
    let mut conn = Conn::connect(addr, Proto::H1).await?;
    let mut resp = conn.get_with(host, path, headers).await?;
    resp.elapsed = start.elapsed();
    Ok(resp)
}

/// One request with any method, extra headers and a body on a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Resp, BoxError> {
    let start = Instant::now();
    let mut conn = Conn::connect(addr, Proto::H1).await?;
    let mut b = conn.request(method, host, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut resp = conn.call(b.body(full(body))?).await?;
    resp.elapsed = start.elapsed();
    Ok(resp)
}

/// `n` GETs at once, each on its own HTTP/1.1 connection, to `path/0` .. `path/n-1`: await the
/// handles for the responses.
pub fn spawn_gets(
    addr: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<Resp, String>>> {
    (0..n)
        .map(|i| {
            let (host, path) = (host.to_owned(), format!("{path}/{i}"));
            tokio::spawn(async move { get_with(addr, &host, &path, &[]).await.map_err(|e| e.to_string()) })
        })
        .collect()
}
