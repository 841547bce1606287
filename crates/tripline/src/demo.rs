//! `tripline demo`: the proxy with an embedded config in front of three built-in upstreams on
//! loopback (steady, flaky: 30% 503, slow: 300 ms), optional built-in client traffic, and a
//! live summary of what each endpoint received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tripline_config::{LoadOptions, Source};
use tripline_core::rng::{Rng, SplitMix};
use tripline_proxy::Proxy;

use crate::{init_logging, DemoArgs};

/// The embedded config. `{LISTEN_*}` and `{PORT_*}` are filled in at start.
const DEMO_CONFIG: &str = include_str!("demo.yaml");

#[derive(Clone, Copy)]
enum Behaviour {
    Steady,
    Flaky,
    Slow,
}

async fn upstream(name: &'static str, behaviour: Behaviour) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let rng = Arc::new(SplitMix::from_entropy());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let rng = rng.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let rng = rng.clone();
                    async move {
                        let status = match behaviour {
                            Behaviour::Steady => StatusCode::OK,
                            Behaviour::Flaky if rng.below(10) < 3 => StatusCode::SERVICE_UNAVAILABLE,
                            Behaviour::Flaky => StatusCode::OK,
                            Behaviour::Slow => {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                StatusCode::OK
                            }
                        };
                        let mut r = Response::new(Full::new(Bytes::from(format!("{name}\n"))));
                        *r.status_mut() = status;
                        r.headers_mut().insert("x-demo-upstream", http::HeaderValue::from_static(name));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

pub fn demo_config(listen: SocketAddr, ports: [u16; 3]) -> String {
    DEMO_CONFIG
        .replace("{LISTEN_IP}", &listen.ip().to_string())
        .replace("{LISTEN_PORT}", &listen.port().to_string())
        .replace("{PORT_STEADY}", &ports[0].to_string())
        .replace("{PORT_FLAKY}", &ports[1].to_string())
        .replace("{PORT_SLOW}", &ports[2].to_string())
}

/// What `--print-config` prints: the config the demo would run with these flags, ready for
/// `tripline validate`. The demo starts its upstreams on free ports each time, so the three
/// upstream ports here are free ports picked now, as the demo picks them.
fn printed_config(args: &DemoArgs) -> std::io::Result<String> {
    let listeners =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; 3];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    let filled = demo_config(args.listen, ports);
    // The template's first line speaks of placeholders, which are filled in here.
    let body = filled.split_once('\n').map_or(filled.as_str(), |(_, rest)| rest);
    Ok(format!(
        "# The config `tripline demo --listen {}` runs; its admin API is on {} (--admin).\n\
         # The demo starts its three upstreams on free ports each time: the ports below are an example.\n\
         {body}",
        args.listen, args.admin
    ))
}

pub fn run(args: DemoArgs) -> ExitCode {
    if args.print_config {
        return match printed_config(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tripline demo: cannot pick ports for the demo upstreams: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&args.log);
    let rt = match crate::run::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tripline demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::run::block_on(&rt, async move {
        match demo(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tripline demo: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    upstream_errors: AtomicU64,
    refused: AtomicU64,
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let mut ports = [0u16; 3];
    for (i, (name, b)) in
        [("steady", Behaviour::Steady), ("flaky", Behaviour::Flaky), ("slow", Behaviour::Slow)]
            .into_iter()
            .enumerate()
    {
        ports[i] =
            upstream(name, b).await.map_err(|e| format!("cannot start the {name} upstream: {e}"))?.port();
    }
    let text = demo_config(args.listen, ports);
    let sources = [Source { name: "<embedded demo config>".into(), text }];
    let loaded = tripline_config::load(&sources, &LoadOptions::default())
        .map_err(|diags| diags.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    let proxy = Proxy::new();
    let admin = tripline_proxy::admin::bind(args.admin)
        .await
        .map_err(|e| format!("cannot bind the admin address {}: {e} (use --admin)", args.admin))?;
    tokio::spawn(tripline_proxy::admin::serve(proxy.shared.clone(), admin, None));
    proxy.apply(&loaded).await?;
    tokio::spawn(proxy.clone().run_housekeeping());

    println!("Tripline demo is running.");
    println!("  proxy:   http://{}/   (try: curl -i http://{}/)", args.listen, args.listen);
    println!("  admin:   http://{}/clusters  /metrics  /config_dump", args.admin);
    println!(
        "  upstreams: steady 127.0.0.1:{}, flaky (30% 503) 127.0.0.1:{}, slow (300 ms) 127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    println!("  config:  tripline demo --print-config");
    if args.rps > 0 {
        println!("  sending {} requests/s of demo traffic; Ctrl-C to stop", args.rps);
    }

    let tally = Arc::new(Tally::default());
    if args.rps > 0 {
        tokio::spawn(traffic(args.listen, args.rps, tally.clone()));
    }
    let summary = summary_loop(proxy.clone(), tally);
    match args.duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = summary => {}
            }
        }
        None => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = summary => {}
            }
        }
    }
    proxy.drain(Duration::from_secs(2)).await;
    Ok(())
}

async fn traffic(target: SocketAddr, rps: u32, tally: Arc<Tally>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let tally = tally.clone();
        tokio::spawn(async move {
            match one_request(target).await {
                Some((status, reason)) if status.is_success() => {
                    let _ = reason;
                    tally.ok.fetch_add(1, Ordering::Relaxed)
                }
                Some((_, Some(_))) => tally.refused.fetch_add(1, Ordering::Relaxed),
                _ => tally.upstream_errors.fetch_add(1, Ordering::Relaxed),
            };
        });
    }
}

async fn one_request(target: SocketAddr) -> Option<(StatusCode, Option<String>)> {
    let stream = tokio::net::TcpStream::connect(target).await.ok()?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::get("/").header("host", "demo.local").body(Empty::<Bytes>::new()).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req)).await.ok()?.ok()?;
    let reason = resp.headers().get("x-tripline-reason").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Some((status, reason))
}

/// Every 3 s, what the demo's client saw and the `tripline stat` table of the proxy over
/// those 3 s: on a terminal it redraws in place; into a pipe or a file it appends plain
/// tables, with no escape sequences.
async fn summary_loop(proxy: Proxy, tally: Arc<Tally>) {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let every = Duration::from_secs(3);
    let snapshot = || tripline_proxy::stats_api::stats_json(&proxy.shared.applied.load().clusters, false);
    let mut before = snapshot();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let after = snapshot();
        let table = crate::stat::table(&crate::stat::rows(&before, &after, every));
        before = after;
        let client = format!(
            "client: {} ok, {} upstream errors, {} refused by tripline (x-tripline-reason)",
            tally.ok.load(Ordering::Relaxed),
            tally.upstream_errors.load(Ordering::Relaxed),
            tally.refused.load(Ordering::Relaxed)
        );
        if tty {
            print!("\x1b[2J\x1b[H{client}\n\n{table}");
        } else {
            println!("{client}\n{table}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded demo config must always load, with its resilience settings applied: the
    /// demo is the first thing a newcomer runs.
    #[test]
    fn embedded_demo_config_loads_with_breakers_and_ejection() {
        let text = demo_config("127.0.0.1:18000".parse().unwrap(), [9001, 9002, 9003]);
        let loaded = tripline_config::load(&[Source { name: "demo".into(), text }], &LoadOptions::default())
            .unwrap_or_else(|d| {
                panic!("{}", d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
            });
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let cluster = &loaded.plan.clusters[0];
        assert!(cluster.resilience.outlier.is_some());
        assert!(cluster.resilience.endpoint_breaker.is_some());
        assert_eq!(loaded.plan.listeners[0].bind.port(), 18000);
    }

    /// Every runnable example in `examples/` validates without warnings; `examples/mesh/`'s
    /// policies, whose hosts are Kubernetes Services from the API server, as `validate` reads
    /// them without a cluster (notes only).
    #[test]
    fn examples_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let (path, opts) = if path.is_dir() {
                let opts = LoadOptions {
                    assume_kubernetes_services: true,
                    listeners_required: false,
                    workload_namespace: Some("shop".into()),
                    ..LoadOptions::default()
                };
                (path.join("policies.yaml"), opts)
            } else {
                (path, LoadOptions::default())
            };
            let sources = tripline_config::read_sources(std::slice::from_ref(&path)).unwrap();
            let loaded = tripline_config::load(&sources, &opts)
                .unwrap_or_else(|d| panic!("{}: {:?}", path.display(), d));
            let noted = |d: &tripline_config::Diagnostic| d.severity == tripline_config::Severity::Note;
            assert!(loaded.warnings.iter().all(noted), "{}: {:?}", path.display(), loaded.warnings);
            checked += 1;
        }
        assert!(checked >= 3, "expected the examples in {}", dir.display());
    }
}
