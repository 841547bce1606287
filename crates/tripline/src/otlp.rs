//! Traces out: `--otlp-endpoint` (or OpenTelemetry's `OTEL_EXPORTER_OTLP_*` variables) turns on
//! [`tripline_proxy::spans`], whose finished spans are exported with OpenTelemetry's SDK and
//! OTLP exporter, over gRPC or HTTP/protobuf.
//!
//! Three threads keep the export off the event loops: the SDK's batch span processor (its
//! own thread: the request path only queues a span, and a full queue drops it), and a
//! one-thread tokio runtime, `tripline-otlp`, that the gRPC channel and the HTTP client run
//! on. (The processor's thread polls an export without a runtime; tonic's channel works from
//! there once it was built inside one, hyper's client does not, so [`OnRuntime`] hands each
//! HTTP export to the runtime.)

use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor};
use opentelemetry_sdk::Resource;
use tripline_proxy::spans::{self, Sampler, SpanRecord, Value};

/// How traces are exported, from the command line and OpenTelemetry's variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `None`: the exporter reads `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` itself.
    pub endpoint: Option<String>,
    pub protocol: Transport,
    pub sampler: Sampler,
    /// `service.name`, unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name one.
    pub service: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

/// The command line's part.
pub struct Flags<'a> {
    pub endpoint: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub sample: Option<f64>,
    pub service: String,
}

impl Settings {
    /// Whether traces are on and how, from the flags and `env` (the process's environment in
    /// `run`; a map in tests). Flags win over variables. `Ok(None)`: off (no endpoint, or
    /// `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
    pub fn resolve(
        flags: &Flags<'_>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Settings>, String> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
        {
            return Ok(None);
        }
        if let Some(exporter) = var("OTEL_TRACES_EXPORTER").filter(|v| v.trim() != "otlp") {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={exporter}: Tripline exports traces with OTLP only (otlp or none)"
            ));
        }
        let from_env =
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if flags.endpoint.is_none() && from_env.is_none() {
            return Ok(None);
        }
        let (protocol_name, from) = match flags.protocol {
            Some(p) => (p.to_owned(), "--otlp-protocol"),
            None => match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
                Some(p) => (p, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
                None => match var("OTEL_EXPORTER_OTLP_PROTOCOL") {
                    Some(p) => (p, "OTEL_EXPORTER_OTLP_PROTOCOL"),
                    None => ("http/protobuf".to_owned(), ""),
                },
            },
        };
        let protocol = match protocol_name.trim() {
            "grpc" => Transport::Grpc,
            "http/protobuf" => Transport::HttpProtobuf,
            other => {
                return Err(format!(
                    "{from} `{other}`: use grpc or http/protobuf (http/json is not supported)"
                ))
            }
        };
        let endpoint = match flags.endpoint {
            None => None,
            Some(url) => Some(endpoint_url(url, protocol)?),
        };
        let sampler = match flags.sample {
            Some(ratio) => Sampler::ratio(ratio),
            None => match var("OTEL_TRACES_SAMPLER") {
                Some(name) => Sampler::parse(&name, var("OTEL_TRACES_SAMPLER_ARG").as_deref())
                    .map_err(|e| format!("OTEL_TRACES_SAMPLER: {e}"))?,
                None => Sampler::default(),
            },
        };
        Ok(Some(Settings { endpoint, protocol, sampler, service: flags.service.clone() }))
    }
}

/// `--otlp-endpoint`: a collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` is: for
/// HTTP/protobuf, `/v1/traces` is added when the URL has no path of its own.
fn endpoint_url(url: &str, protocol: Transport) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("--otlp-endpoint `{url}`: {e} (a URL such as http://127.0.0.1:4318)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "--otlp-endpoint `{url}`: TLS to the collector is not built in; send to a collector agent on the node over http://"
            ))
        }
        _ => return Err(format!("--otlp-endpoint `{url}`: a URL with http:// (such as http://127.0.0.1:4318)")),
    }
    if uri.authority().is_none() {
        return Err(format!("--otlp-endpoint `{url}`: no host"));
    }
    let bare = matches!(uri.path(), "" | "/");
    Ok(match protocol {
        Transport::HttpProtobuf if bare => format!("{}/v1/traces", url.trim_end_matches('/')),
        _ => url.to_owned(),
    })
}

/// The exporter: a [`spans::SpanSink`] that hands spans to OpenTelemetry's batch processor.
pub struct Exporter {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    /// Holds the `tripline-otlp` runtime's thread; dropped after the processor's shutdown.
    _runtime: RuntimeThread,
}

impl Exporter {
    /// Starts the runtime thread, builds the OTLP exporter on it and the batch processor.
    pub fn start(settings: &Settings) -> Result<Exporter, String> {
        let runtime = RuntimeThread::start().map_err(|e| format!("cannot start the OTLP thread: {e}"))?;
        let _entered = runtime.handle.enter();
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match settings.protocol {
            Transport::Grpc => {
                let mut b = builder.with_tonic().with_protocol(Protocol::Grpc);
                if let Some(e) = &settings.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build()
            }
            Transport::HttpProtobuf => {
                let client = OnRuntime { handle: runtime.handle.clone(), timeout: export_timeout() };
                let mut b = builder.with_http().with_protocol(Protocol::HttpBinary).with_http_client(client);
                if let Some(e) = &settings.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build()
            }
        }
        .map_err(|e| format!("the OTLP exporter: {e}"))?;
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name"));
        let mut resource = Resource::builder();
        if !named {
            resource = resource.with_service_name(settings.service.clone());
        }
        processor.set_resource(&resource.build());
        let scope = InstrumentationScope::builder("tripline").with_version(env!("CARGO_PKG_VERSION")).build();
        Ok(Exporter { processor, scope, _runtime: runtime })
    }

    fn span_data(&self, s: SpanRecord) -> SpanData {
        let context = SpanContext::new(
            TraceId::from_bytes(s.trace_id.to_be_bytes()),
            SpanId::from_bytes(s.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let attributes = s
            .attributes
            .into_iter()
            .map(|(k, v)| match v {
                Value::Str(v) => KeyValue::new(k, v),
                Value::Int(v) => KeyValue::new(k, v),
            })
            .collect();
        SpanData {
            span_context: context,
            parent_span_id: s.parent_id.map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
            parent_span_is_remote: s.parent_remote,
            span_kind: match s.kind {
                spans::SpanKind::Server => SpanKind::Server,
                spans::SpanKind::Client => SpanKind::Client,
            },
            name: s.name.into(),
            start_time: s.start,
            end_time: s.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: s.error.map_or(Status::Unset, Status::error),
            instrumentation_scope: self.scope.clone(),
        }
    }
}

impl spans::SpanSink for Exporter {
    fn export(&self, spans: Vec<SpanRecord>) {
        for s in spans {
            self.processor.on_end(self.span_data(s));
        }
    }

    fn flush(&self) {
        if let Err(e) = self.processor.shutdown() {
            tracing::warn!(error = %e, "could not send the last spans");
        }
    }
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else OpenTelemetry's 10 s.
fn export_timeout() -> Duration {
    std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The `tripline-otlp` thread: a current-thread runtime running until dropped.
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RuntimeThread {
    fn start() -> std::io::Result<RuntimeThread> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("tripline-otlp".into()).spawn(move || {
            let _ = rt.block_on(stopped);
        })?;
        Ok(RuntimeThread { handle, stop: Some(stop) })
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The HTTP exporter's client: each export is sent by hyper on the `tripline-otlp` runtime,
/// whichever thread asks (the batch processor's has no runtime).
#[derive(Debug)]
struct OnRuntime {
    handle: tokio::runtime::Handle,
    timeout: Duration,
}

impl opentelemetry_http::HttpClient for OnRuntime {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<bytes::Bytes>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError>,
                > + Send
                + 'b,
        >,
    >
    where
        'a: 'b,
    {
        // The timer is made on the runtime too: this thread has no time driver.
        let timeout = self.timeout;
        let sent = self.handle.spawn(async move { tokio::time::timeout(timeout, post(request)).await });
        Box::pin(async move {
            match sent.await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err("the collector did not answer within OTEL_EXPORTER_OTLP_TIMEOUT".into()),
                Err(e) => Err(Box::new(e) as opentelemetry_http::HttpError),
            }
        })
    }
}

/// One HTTP/1.1 request on a connection of its own (an export every few seconds at most).
async fn post(
    request: http::Request<bytes::Bytes>,
) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
    use http_body_util::BodyExt;
    let authority = request.uri().authority().ok_or("the OTLP endpoint has no host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host().trim_matches(['[', ']']), port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut parts, body) = request.into_parts();
    parts.headers.entry(http::header::HOST).or_insert(http::HeaderValue::from_str(authority.as_str())?);
    // hyper's HTTP/1 client takes the path, not the absolute form.
    parts.uri = parts.uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
    let resp = sender.send_request(http::Request::from_parts(parts, http_body_util::Full::new(body))).await?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, 4 << 20).collect().await?.to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(flags: Flags<'_>, env: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::resolve(&flags, |k| env.get(k).cloned())
    }

    fn flags(endpoint: Option<&str>) -> Flags<'_> {
        Flags { endpoint, protocol: None, sample: None, service: "reviews".into() }
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(resolve(flags(None), &[]), Ok(None));
        assert_eq!(resolve(flags(Some("http://c:4318")), &[("OTEL_SDK_DISABLED", "true")]), Ok(None));
        assert_eq!(resolve(flags(Some("http://c:4318")), &[("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
        let err = resolve(flags(Some("http://c:4318")), &[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(err.contains("OTLP only"), "{err}");
    }

    #[test]
    fn the_flag_is_a_base_url_like_opentelemetrys_variable() {
        let s = resolve(flags(Some("http://c:4318")), &[]).unwrap().unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(s.protocol, Transport::HttpProtobuf, "OpenTelemetry's default protocol");
        assert_eq!(s.sampler, Sampler::default());
        let own_path = resolve(flags(Some("http://c:4318/otlp/traces")), &[]).unwrap().unwrap();
        assert_eq!(own_path.endpoint.as_deref(), Some("http://c:4318/otlp/traces"));
        let grpc = Flags { protocol: Some("grpc"), ..flags(Some("http://c:4317")) };
        let s = resolve(grpc, &[]).unwrap().unwrap();
        assert_eq!((s.endpoint.as_deref(), s.protocol), (Some("http://c:4317"), Transport::Grpc));
        for bad in ["https://c:4318", "c:4318", "http://", "not a url"] {
            assert!(resolve(flags(Some(bad)), &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn opentelemetrys_variables_are_read_and_flags_win() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ];
        let s = resolve(flags(None), &env).unwrap().unwrap();
        assert_eq!(s.endpoint, None, "the exporter reads the variable itself");
        assert_eq!(s.protocol, Transport::Grpc);
        assert_eq!(s.sampler, Sampler::ratio(0.01));
        let f = Flags { protocol: Some("http/protobuf"), sample: Some(0.5), ..flags(Some("http://c:4318")) };
        let s = resolve(f, &env).unwrap().unwrap();
        assert_eq!((s.protocol, s.sampler), (Transport::HttpProtobuf, Sampler::ratio(0.5)));
        let err = resolve(
            flags(None),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        )
        .unwrap_err();
        assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL `http/json`"), "{err}");
        let err = resolve(
            flags(None),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_SAMPLER", "sometimes")],
        )
        .unwrap_err();
        assert!(err.starts_with("OTEL_TRACES_SAMPLER: sampler `sometimes`"), "{err}");
    }
}
