//! Hot reload: under load with zero failed requests; an invalid config keeps the old one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::config;
use crate::support::{free_port, get_with, Conn, Proto, Proxy, Upstream};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[derive(Default)]
struct LoopResult {
    ok: usize,
    failures: Vec<String>,
    first: Option<String>,
    last: Option<String>,
}

/// Sends requests (50 ms upstream time each, so some are always in flight) on a kept-alive
/// connection until `stop` or 10 s. A connection the proxy closed between requests is
/// reopened; any request that fails or is not a 200 is a failure.
async fn client_loop(addr: SocketAddr, proto: Proto, stop: Arc<AtomicBool>) -> LoopResult {
    let mut res = LoopResult::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        if let Some(c) = conn.as_mut() {
            if c.ready().await.is_err() {
                conn = None;
            }
        }
        if conn.is_none() {
            match Conn::connect(addr, proto).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    res.failures.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        match c.get_with("backend.local", "/load", &[("x-delay-ms", "50")]).await {
            Ok(r) if r.status == 200 => {
                res.ok += 1;
                let id = r.upstream().unwrap_or("?").to_owned();
                res.first.get_or_insert(id.clone());
                res.last = Some(id);
            }
            Ok(r) => res.failures.push(format!("status {} reason {:?}", r.status, r.reason())),
            Err(e) => {
                res.failures.push(format!("request: {e}"));
                conn = None;
            }
        }
    }
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_has_zero_failures() {
    let old = Upstream::http("old").await;
    let new = Upstream::http("new").await;
    let port = free_port();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[old.addr], None)).await;
    let reloads = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for i in 0..4 {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
        loops.push(tokio::spawn(client_loop(addr(port), proto, stop.clone())));
    }
    crate::support::eventually("load on the old upstream", Duration::from_secs(5), || async {
        old.requests() >= 8
    })
    .await;
    proxy.write_config(&config::simple(port, "HTTP", &[new.addr], None));
    proxy.wait_reload("success", reloads, Duration::from_secs(5)).await;
    // Let traffic run on the new config for a while.
    let after_reload = new.requests();
    crate::support::eventually("load on the new upstream", Duration::from_secs(5), || async {
        new.requests() >= after_reload + 12
    })
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut total = 0;
    let mut failures = Vec::new();
    for (i, l) in loops.into_iter().enumerate() {
        let r = l.await.unwrap();
        total += r.ok;
        failures.extend(r.failures.iter().map(|f| format!("loop {i}: {f}")));
        assert_eq!(r.first.as_deref(), Some("old"), "loop {i} did not start on the old upstream");
        assert_eq!(r.last.as_deref(), Some("new"), "loop {i}: traffic did not move to the new upstream");
    }
    assert!(
        failures.is_empty(),
        "{} failed requests during reload (of {}): {failures:?}",
        failures.len(),
        total
    );
    assert!(total >= 20, "only {total} requests made");
    let r = get_with(addr(port), "backend.local", "/", &[]).await.unwrap();
    assert_eq!(r.upstream(), Some("new"));
}

/// Upstreams `old` and `new`, and a proxy on a free port sending to `old`, that looks at its
/// config file every 50 ms.
async fn watching_proxy() -> (Upstream, Upstream, u16, Proxy) {
    let old = Upstream::http("old").await;
    let new = Upstream::http("new").await;
    let port = free_port();
    let proxy =
        Proxy::start_args(&config::simple(port, "HTTP", &[old.addr], None), &["--watch-interval", "50ms"])
            .await;
    (old, new, port, proxy)
}

/// Empties the config file in place, as an editor does before it writes the new text.
fn truncate(path: &std::path::Path) {
    std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
}

/// An editor saving in place: the file is truncated, then written 100 ms later. Under load,
/// no request fails and the listener never closes, whether the proxy read the file between
/// the two (an empty config is refused) or only once it was whole; then the new config is in
/// force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_then_a_delayed_write_never_closes_the_listener() {
    let (old, new, port, proxy) = watching_proxy().await;
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = [Proto::H1, Proto::H2]
        .into_iter()
        .map(|proto| tokio::spawn(client_loop(addr(port), proto, stop.clone())))
        .collect();
    crate::support::eventually("load on the old upstream", Duration::from_secs(5), || async {
        old.requests() >= 4
    })
    .await;
    truncate(&proxy.config);
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&proxy.config, config::simple(port, "HTTP", &[new.addr], None)).unwrap();
    let after = new.requests();
    crate::support::eventually("load on the new upstream", Duration::from_secs(5), || async {
        new.requests() >= after + 6
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for (i, l) in loops.into_iter().enumerate() {
        let r = l.await.unwrap();
        assert!(
            r.failures.is_empty(),
            "loop {i}: {} of {} requests failed: {:?}",
            r.failures.len(),
            r.ok + r.failures.len(),
            r.failures
        );
        assert_eq!((r.first.as_deref(), r.last.as_deref()), (Some("old"), Some("new")), "loop {i}");
    }
}

/// A config file left empty is refused like any invalid config: the old one keeps serving,
/// the log says why, and the file's next version is put in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_config_keeps_the_old_one_until_the_file_is_whole_again() {
    // `old` must stay up: the requests below go to it.
    let (_old, new, port, proxy) = watching_proxy().await;
    let failures = proxy.metric("tripline_config_reloads_total", &[("result", "failure")]).await;
    let successes = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    truncate(&proxy.config);
    proxy.wait_reload("failure", failures, Duration::from_secs(5)).await;
    for _ in 0..3 {
        let r = get_with(addr(port), "backend.local", "/", &[]).await.expect("the listener is still open");
        assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("old")), "{}", r.text());
    }
    let log = proxy.stderr();
    assert!(
        log.contains("mesh.yaml:1:1: (config): the configuration is empty (no YAML document)"),
        "the log should say why the reload was refused:\n{}",
        proxy.logs()
    );
    let now = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    assert_eq!(now, successes, "the empty config was counted as a successful reload");
    std::fs::write(&proxy.config, config::simple(port, "HTTP", &[new.addr], None)).unwrap();
    proxy.wait_reload("success", successes, Duration::from_secs(5)).await;
    until_served_by(port, "new").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_old_config() {
    let old = Upstream::http("old").await;
    let port = free_port();
    let good = config::simple(port, "HTTP", &[old.addr], None);
    let proxy = Proxy::start(&good).await;
    let failures = proxy.metric("tripline_config_reloads_total", &[("result", "failure")]).await;
    let successes = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;

    // Semantically invalid: the route points at a host no ServiceEntry defines.
    let bad = config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("backend.local", "HTTP", &[old.addr]),
        config::virtual_service("backend", &["*"], "edge", &config::http_route("missing.local")),
    ]);
    proxy.write_config(&bad);
    proxy.wait_reload("failure", failures, Duration::from_secs(5)).await;
    for _ in 0..5 {
        let r = get_with(addr(port), "backend.local", "/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "the old config must keep serving: {}", r.text());
        assert_eq!(r.upstream(), Some("old"));
    }

    // Syntactically broken YAML is refused the same way.
    let failures = proxy.metric("tripline_config_reloads_total", &[("result", "failure")]).await;
    proxy.write_config("kind: Gateway\nspec: [unclosed\n");
    proxy.wait_reload("failure", failures, Duration::from_secs(5)).await;
    let r = get_with(addr(port), "backend.local", "/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    let now = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    assert_eq!(now, successes, "an invalid config was counted as a successful reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_bind_leaves_every_listener_serving() {
    // The new config turns the HTTP listener into a TCP one, limits the backend to one
    // connection, and adds a listener on a port something else holds. The bind fails, so the
    // reload fails, and the running config must be untouched: the HTTP listener still there
    // (not stopped to make way for its TCP replacement), and the old limits still in force.
    let old = Upstream::http_delayed("old", Duration::from_millis(300)).await;
    let port = free_port();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[old.addr], None)).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let failures = proxy.metric("tripline_config_reloads_total", &[("result", "failure")]).await;
    proxy.write_config(&config::join(&[
        config::gateway("edge", port, "TCP"),
        config::service_entry("echo.local", "TCP", &[old.addr]),
        config::virtual_service("echo", &["*"], "edge", &config::tcp_route("echo.local")),
        config::gateway("edge2", taken_port, "HTTP"),
        config::service_entry("backend.local", "HTTP", &[old.addr]),
        config::virtual_service("backend", &["*"], "edge2", &config::http_route("backend.local")),
        config::destination_rule(
            "backend.local",
            "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n",
        ),
    ]));
    proxy.wait_reload("failure", failures, Duration::from_secs(5)).await;
    let concurrent: Vec<_> =
        (0..4).map(|_| tokio::spawn(get_with(addr(port), "backend.local", "/", &[]))).collect();
    for r in concurrent {
        let r = r.await.unwrap().expect("the HTTP listener still serves");
        assert_eq!(
            (r.status.as_u16(), r.reason(), r.upstream()),
            (200, None, Some("old")),
            "the rejected config's limits must not apply"
        );
    }
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config() {
    let old = Upstream::http("old").await;
    let new = Upstream::http("new").await;
    let port = free_port();
    // File polling off (an hour between looks), so only the signal can cause the reload.
    let mut proxy =
        Proxy::start_args(&config::simple(port, "HTTP", &[old.addr], None), &["--watch-interval", "1h"])
            .await;
    let reloads = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    proxy.write_config(&config::simple(port, "HTTP", &[new.addr], None));
    proxy.signal("HUP");
    proxy.wait_reload("success", reloads, Duration::from_secs(5)).await;
    let r = get_with(addr(port), "backend.local", "/", &[]).await.unwrap();
    assert_eq!(r.upstream(), Some("new"));
    // The default action of SIGHUP is to terminate: the proxy must handle it.
    let exited = proxy.wait_exit(Duration::from_millis(200)).await;
    assert!(exited.is_none(), "SIGHUP stopped the proxy: {exited:?}");
}

/// Waits until a request is answered by the upstream `id` (bounded), e.g. after a reload.
async fn until_served_by(port: u16, id: &str) {
    crate::support::eventually(&format!("requests answered by `{id}`"), Duration::from_secs(5), || async {
        let r = get_with(addr(port), "backend.local", "/", &[]).await;
        r.is_ok_and(|r| r.status == 200 && r.upstream() == Some(id))
    })
    .await;
}

/// One config in two files: the listener and route to `backend.local` in `routes`, the
/// ServiceEntry that defines `backend.local` (endpoint `up`) in `endpoints`.
fn write_split_config(routes: &std::path::Path, endpoints: &std::path::Path, port: u16, up: SocketAddr) {
    std::fs::write(routes, config::edge(port, &config::http_route("backend.local"))).unwrap();
    std::fs::write(endpoints, config::service_entry("backend.local", "HTTP", &[up])).unwrap();
}

/// `tripline run -c routes.yaml -c endpoints.yaml`: the files make one config (the route in
/// one names the host the other defines; either alone fails to start or routes nowhere), and
/// a change to either file is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_config_files_make_one_config_and_each_reloads() {
    let one = Upstream::http("one").await;
    let two = Upstream::http("two").await;
    let port = free_port();
    let conf = crate::support::proxy::unique_dir("conf");
    let (routes, endpoints) = (conf.join("routes.yaml"), conf.join("endpoints.yaml"));
    write_split_config(&routes, &endpoints, port, one.addr);
    let proxy = Proxy::start_paths(&[&routes, &endpoints], &["--watch-interval", "100ms"]).await;
    let r = get_with(addr(port), "backend.local", "/", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("one")), "{}", r.text());

    // The second file changes: the endpoints move.
    proxy.write_file(&endpoints, &config::service_entry("backend.local", "HTTP", &[two.addr]));
    until_served_by(port, "two").await;
    let on_one = one.requests();
    // The first file changes: a route timeout shorter than the upstream's delay now applies
    // to the second file's host.
    let timed = "  http:\n  - timeout: 100ms\n    route:\n    - destination: {host: backend.local, port: {number: 80}}\n";
    proxy.write_file(&routes, &config::edge(port, timed));
    crate::support::eventually("the new route timeout to apply", Duration::from_secs(5), || async {
        let r = get_with(addr(port), "backend.local", "/", &[("x-delay-ms", "1000")]).await;
        r.is_ok_and(|r| r.reason() == Some("route-timeout"))
    })
    .await;
    assert_eq!(one.requests(), on_one, "the endpoint the second file dropped still got requests");
    drop(proxy);
    let _ = std::fs::remove_dir_all(conf);
}

/// `tripline run -c DIR`: every *.yaml and *.yml in it (and nothing else) makes the config,
/// and changing a file in it hot-reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_directory_loads_every_yaml_file_and_reloads_on_change() {
    let one = Upstream::http("one").await;
    let two = Upstream::http("two").await;
    let port = free_port();
    let conf = crate::support::proxy::unique_dir("conf");
    let backend = conf.join("20-backend.yml");
    write_split_config(&conf.join("10-edge.yaml"), &backend, port, one.addr);
    // Not YAML by its name: ignored, though it would not parse.
    std::fs::write(conf.join("notes.txt"), "kind: [unclosed\n").unwrap();
    let proxy = Proxy::start_paths(&[&conf], &["--watch-interval", "100ms"]).await;
    let r = get_with(addr(port), "backend.local", "/", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("one")), "{}", r.text());

    let reloads = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    proxy.write_file(&backend, &config::service_entry("backend.local", "HTTP", &[two.addr]));
    until_served_by(port, "two").await;
    assert!(
        proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await > reloads,
        "served by the new endpoint without a counted reload"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(conf);
}

/// A reload takes the documents that did not change from the load before (the log line says
/// how many), also when a document added above them moves them down; and an error found in
/// such a moved document (a route to a host whose ServiceEntry went) is reported at the line
/// it is on now, exactly as `tripline validate` reports it for the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reuses_unchanged_documents_and_reports_moved_ones_where_they_are() {
    let up = Upstream::http("up").await;
    let other = Upstream::http("other").await;
    let port = free_port();
    let (gateway_and_routes, backend) = (
        config::edge(port, &config::http_route("backend.local")),
        config::service_entry("backend.local", "HTTP", &[up.addr]),
    );
    let proxy = Proxy::start(&config::join(&[backend.clone(), gateway_and_routes.clone()])).await;

    // A document added above: the three others move down; the two after a `---` line are
    // taken as they were (the first of a file has no `---` line, so its text changed).
    // Longer than `backend`'s, so that the VirtualService below is never back on its first line.
    let added = config::service_entry("other.local", "HTTP", &[other.addr, other.addr, other.addr]);
    let successes = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    proxy.write_config(&config::join(&[added.clone(), backend, gateway_and_routes.clone()]));
    proxy.wait_reload("success", successes, Duration::from_secs(5)).await;
    until_served_by(port, "up").await;
    let logs = &proxy;
    crate::support::eventually("the reload's log line", Duration::from_secs(5), move || async move {
        logs.stderr().contains("reused_documents=2")
    })
    .await;

    // `backend.local` goes: the kept VirtualService, moved again, now routes nowhere.
    let failures = proxy.metric("tripline_config_reloads_total", &[("result", "failure")]).await;
    let broken = config::join(&[added, gateway_and_routes]);
    proxy.write_config(&broken);
    proxy.wait_reload("failure", failures, Duration::from_secs(5)).await;
    let validate = std::process::Command::new(crate::support::proxy::binary())
        .args(["validate", proxy.config.to_str().unwrap()])
        .output()
        .unwrap();
    let expected: Vec<String> = String::from_utf8_lossy(&validate.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&validate.stderr).lines())
        .filter(|l| l.contains("unknown host `backend.local`"))
        .map(|l| l[l.find("error: ").expect("an error line")..].to_string())
        .collect();
    assert_eq!(expected.len(), 1, "validate: {validate:?}");
    let expected = expected[0].as_str();
    crate::support::eventually(
        "the reload's error, as validate reports it",
        Duration::from_secs(5),
        move || async move { logs.stderr().contains(expected) },
    )
    .await;
}
