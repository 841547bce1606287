//! Frame-level tests of the HTTP/2 server: the real [`Connection`] over an in-memory pipe
//! (`tokio::io::duplex`), against a client made of `h2`'s codec (frames in and out, HPACK), with
//! raw bytes for what a client must be able to send and the codec will not encode. The requests
//! go to a handler the test writes: a fixed answer, or each request handed to the test
//! ([`manual`]), which answers it when it likes and reads its body at its own pace.
//!
//! The tests run on tokio's paused time: the drain's and the linger's timers run exactly, and
//! "nothing more arrives" ([`Client::quiet`]) is decided by the server having nothing left to
//! do, not by a wall-clock wait.

mod flow;
mod limits;
mod rfc;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream as _;
use h2::frame::{Data, Frame, GoAway, Headers, Pseudo, Reason, Reset, Settings, StreamId};
use h2::Codec;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame as BodyFrame, SizeHint};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use super::{Config, Connection, Handler};
use crate::header_limits::HeaderLimits;
use crate::stats::GlobalStats;
use crate::upload::ClientBody;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;

/// A response body the test controls: all at once, or frame by frame through a [`BodySender`].
pub struct TestBody {
    data: Option<Bytes>,
    rx: Option<mpsc::UnboundedReceiver<Result<BodyFrame<Bytes>, &'static str>>>,
}

impl TestBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        TestBody { data: Some(bytes.into()), rx: None }
    }

    pub fn channel() -> (BodySender, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (BodySender(tx), TestBody { data: None, rx: Some(rx) })
    }
}

/// Feeds a [`TestBody::channel`] body; dropping it ends the body.
pub struct BodySender(mpsc::UnboundedSender<Result<BodyFrame<Bytes>, &'static str>>);

impl BodySender {
    pub fn data(&self, bytes: impl Into<Bytes>) {
        let _ = self.0.send(Ok(BodyFrame::data(bytes.into())));
    }

    pub fn trailers(&self, trailers: HeaderMap) {
        let _ = self.0.send(Ok(BodyFrame::trailers(trailers)));
    }

    pub fn fail(&self) {
        let _ = self.0.send(Err("the test failed the body"));
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, &'static str>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(BodyFrame::data(d))));
        }
        let Some(rx) = self.rx.as_mut() else { return Poll::Ready(None) };
        let next = ready!(rx.poll_recv(cx));
        if next.is_none() {
            self.rx = None;
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.rx) {
            (Some(d), None) => SizeHint::with_exact(d.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Answers every request `200 ok` without reading its body.
pub fn ok() -> impl Handler<Body = TestBody> + Send + Unpin + 'static {
    |_req: Request<ClientBody>| async { Ok::<_, Infallible>(Response::new(TestBody::full("ok"))) }
}

/// A request handed to the test, with the way to answer it.
pub struct Exchange {
    pub request: Request<ClientBody>,
    pub respond: Responder,
}

pub struct Responder(oneshot::Sender<Response<TestBody>>);

impl Responder {
    pub fn send(self, response: Response<TestBody>) {
        let _ = self.0.send(response);
    }

    pub fn ok(self, body: impl Into<Bytes>) {
        self.send(Response::new(TestBody::full(body)));
    }
}

/// Hands each request to the test (`Exchanges`). A request whose `Responder` is dropped is
/// never answered.
pub fn manual() -> (impl Handler<Body = TestBody> + Send + Unpin + 'static, Exchanges) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |request: Request<ClientBody>| {
        let (respond, answer) = oneshot::channel();
        let _ = tx.send(Exchange { request, respond: Responder(respond) });
        async move {
            match answer.await {
                Ok(r) => Ok::<_, Infallible>(r),
                Err(_) => std::future::pending().await,
            }
        }
    };
    (handler, Exchanges(rx))
}

pub struct Exchanges(mpsc::UnboundedReceiver<Exchange>);

impl Exchanges {
    /// The next request the server took up.
    pub async fn next(&mut self) -> Exchange {
        tokio::time::timeout(Duration::from_secs(60), self.0.recv())
            .await
            .expect("a request reaches the handler")
            .expect("the server is running")
    }

    /// Requests taken up so far and not yet received by the test.
    pub fn pending(&mut self) -> usize {
        let mut n = 0;
        while self.0.try_recv().is_ok() {
            n += 1;
        }
        n
    }
}

/// The server task: the connection, which the test can ask to drain.
struct Server<H: Handler> {
    conn: Connection<DuplexStream, H>,
    drain: Option<oneshot::Receiver<()>>,
}

impl<H: Handler + Unpin> Future for Server<H> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(rx) = self.drain.as_mut() {
            if Pin::new(rx).poll(cx).is_ready() {
                self.drain = None;
                self.conn.graceful_shutdown();
            }
        }
        Pin::new(&mut self.conn).poll(cx)
    }
}

/// How a test connection is set up.
pub struct Options {
    pub limits: HeaderLimits,
    /// The client's SETTINGS.
    pub settings: Settings,
    /// Bytes the pipe holds in each direction.
    pub pipe: usize,
    /// The stream idle timeout and its clock, if on.
    pub stream_idle: Option<super::StreamIdleConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: HeaderLimits::default(),
            settings: Settings::default(),
            pipe: 1 << 20,
            stream_idle: None,
        }
    }
}

/// A client connection to a [`Connection`] served on this runtime.
pub struct Client {
    codec: Codec<DuplexStream, Bytes>,
    pub stats: Arc<GlobalStats>,
    /// The SETTINGS the server sent first.
    pub server_settings: Settings,
    drain: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<()>,
}

/// A response as the client read it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

/// A connection being served, from the client's end of the pipe.
pub struct Served {
    pub io: DuplexStream,
    pub stats: Arc<GlobalStats>,
    drain: oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<()>,
}

/// Serves a connection on this runtime; the client is to start with its SETTINGS.
pub fn serve<H>(handler: H, opts: Options) -> Served
where
    H: Handler + Send + Unpin + 'static,
{
    let (io, server_io) = tokio::io::duplex(opts.pipe);
    let stats = Arc::new(GlobalStats::default());
    let config = Config {
        peer: ([127, 0, 0, 1], 40000).into(),
        stats: stats.clone(),
        limits: opts.limits,
        stream_idle: opts.stream_idle,
    };
    let (drain, drain_rx) = oneshot::channel();
    let server =
        tokio::spawn(Server { conn: Connection::new(server_io, handler, config), drain: Some(drain_rx) });
    Served { io, stats, drain, server }
}

impl Client {
    pub async fn start<H>(handler: H) -> Client
    where
        H: Handler + Send + Unpin + 'static,
    {
        Client::with(handler, Options::default()).await
    }

    /// Starts the server and goes through the SETTINGS exchange: the server's SETTINGS and
    /// connection WINDOW_UPDATE, the client's SETTINGS and both acknowledgements.
    pub async fn with<H>(handler: H, opts: Options) -> Client
    where
        H: Handler + Send + Unpin + 'static,
    {
        let settings = opts.settings.clone();
        let Served { io, stats, drain, server } = serve(handler, opts);
        let mut c = Client {
            codec: Codec::new(io),
            stats,
            server_settings: Settings::default(),
            drain: Some(drain),
            server,
        };
        c.send(settings).await;
        match c.next().await {
            Some(Frame::Settings(s)) if !s.is_ack() => c.server_settings = s,
            other => panic!("the server did not start with SETTINGS: {other:?}"),
        }
        match c.next().await {
            Some(Frame::WindowUpdate(w)) if w.stream_id().is_zero() => {}
            other => panic!("the server did not open its connection window: {other:?}"),
        }
        c.send(Settings::ack()).await;
        match c.next().await {
            Some(Frame::Settings(s)) if s.is_ack() => {}
            other => panic!("the server did not acknowledge the client's SETTINGS: {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, frame: impl Into<Frame<Bytes>>) {
        poll_fn(|cx| self.codec.poll_ready(cx)).await.expect("the pipe is open");
        self.codec.buffer(frame.into()).expect("the codec encodes the frame");
        poll_fn(|cx| self.codec.flush(cx)).await.expect("the pipe is open");
    }

    /// Writes a frame byte by byte as given: what `h2`'s encoder would refuse or not write.
    pub async fn raw(&mut self, ty: u8, flags: u8, id: u32, payload: &[u8]) {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[ty, flags]);
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(payload);
        self.write(&f).await;
    }

    /// Writes bytes as they are (the codec holds nothing back: every `send` flushes).
    pub async fn write(&mut self, bytes: &[u8]) {
        self.codec.get_mut().write_all(bytes).await.expect("the pipe is open");
    }

    /// Asks the server to drain (what SIGTERM and the request-head timeout do).
    pub fn drain(&mut self) {
        let _ = self.drain.take().expect("one drain").send(());
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        Pin::new(&mut self.codec).poll_next(cx).map(|f| match f {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => panic!("the server sent what a client cannot read: {e:?}"),
        })
    }

    /// The next frame from the server; `None` once it closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(60), poll_fn(|cx| self.poll_frame(cx)))
            .await
            .expect("the server sends a frame or closes within a minute")
    }

    /// Asserts that the server sends nothing more while it has nothing left to do.
    pub async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(500), poll_fn(|cx| self.poll_frame(cx))).await;
        assert!(got.is_err(), "expected nothing from the server, got {got:?}");
    }

    /// Reads frames until one matches.
    pub async fn until(&mut self, what: &str, mut pred: impl FnMut(&Frame) -> bool) -> Frame {
        loop {
            match self.next().await {
                Some(f) if pred(&f) => return f,
                Some(_) => {}
                None => panic!("the connection closed while waiting for {what}"),
            }
        }
    }

    /// Reads until GOAWAY, then until the server closes the connection.
    pub async fn goaway(&mut self) -> GoAway {
        let Frame::GoAway(g) = self.until("GOAWAY", |f| matches!(f, Frame::GoAway(_))).await else {
            unreachable!()
        };
        while let Some(f) = self.next().await {
            assert!(!matches!(f, Frame::Headers(_) | Frame::Data(_)), "stream output after GOAWAY: {f:?}");
        }
        g
    }

    /// Reads until RST_STREAM on `id`.
    pub async fn reset(&mut self, id: u32) -> Reset {
        let want = StreamId::from(id);
        let Frame::Reset(r) =
            self.until("RST_STREAM", |f| matches!(f, Frame::Reset(r) if r.stream_id() == want)).await
        else {
            unreachable!()
        };
        r
    }

    /// Reads the whole response on stream `id`, giving back the client's windows as DATA comes.
    pub async fn response(&mut self, id: u32) -> Answer {
        let want = StreamId::from(id);
        let mut answer =
            Answer { status: StatusCode::OK, headers: HeaderMap::new(), body: Vec::new(), trailers: None };
        let mut head = false;
        loop {
            let f = self.until("the response", |f| stream_of(f) == Some(want)).await;
            match f {
                Frame::Headers(h) if !head => {
                    head = true;
                    let end = h.is_end_stream();
                    let (p, fields) = h.into_parts();
                    answer.status = p.status.expect("a response has :status");
                    answer.headers = fields;
                    if end {
                        return answer;
                    }
                }
                Frame::Headers(h) => {
                    assert!(h.is_end_stream(), "trailers end the stream");
                    answer.trailers = Some(h.into_fields());
                    return answer;
                }
                Frame::Data(d) => {
                    let end = d.is_end_stream();
                    let n = d.payload().len() as u32;
                    answer.body.extend_from_slice(d.payload());
                    if end {
                        return answer;
                    }
                    if n > 0 {
                        self.send(h2::frame::WindowUpdate::new(StreamId::zero(), n)).await;
                        self.send(h2::frame::WindowUpdate::new(want, n)).await;
                    }
                }
                Frame::Reset(r) => panic!("stream {id} reset: {:?}", r.reason()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// The stream a frame is on, for frames that belong to one.
pub fn stream_of(f: &Frame) -> Option<StreamId> {
    match f {
        Frame::Headers(h) => Some(h.stream_id()),
        Frame::Data(d) => Some(d.stream_id()),
        Frame::Reset(r) => Some(r.stream_id()),
        _ => None,
    }
}

/// A request head on stream `id`; `end`: no body follows.
pub fn request(id: u32, method: Method, path: &str, fields: HeaderMap, end: bool) -> Headers {
    let uri: Uri = format!("http://example.com{path}").parse().expect("a test URI");
    let mut h = Headers::new(StreamId::from(id), Pseudo::request(method, uri, None), fields);
    if end {
        h.set_end_stream();
    }
    h
}

/// `GET path` without a body.
pub fn get(id: u32, path: &str) -> Headers {
    request(id, Method::GET, path, HeaderMap::new(), true)
}

/// `POST /` whose body follows.
pub fn post(id: u32) -> Headers {
    request(id, Method::POST, "/", HeaderMap::new(), false)
}

pub fn data(id: u32, bytes: impl Into<Bytes>, end: bool) -> Data<Bytes> {
    let mut d = Data::new(StreamId::from(id), bytes.into());
    d.set_end_stream(end);
    d
}

pub fn trailers(id: u32, fields: HeaderMap) -> Headers {
    let mut h = Headers::trailers(StreamId::from(id), fields);
    h.set_end_stream();
    h
}

pub fn rst(id: u32, reason: Reason) -> Reset {
    Reset::new(StreamId::from(id), reason)
}

/// Reads a request body to its end: the bytes, or the error that ended it.
pub async fn read_body(body: &mut ClientBody) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
        }
    }
    Ok(out)
}
