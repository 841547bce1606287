//! `tripline run`: load, serve, reload on change or SIGHUP, drain on SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use std::collections::{HashMap, HashSet};

use tokio::signal::unix::{signal, SignalKind};
use tripline_config::{Diagnostic, DocumentCache, LoadOptions, Loaded, Severity};
use tripline_kube::KubeSource;
use tripline_proxy::Proxy;

use crate::{init_logging, RunArgs};

/// Builds the main thread's runtime, single-threaded like every worker's: with one worker it
/// is the worker; with several it runs the control plane and the accept loops, and `run`
/// starts the workers' threads (see `tripline_proxy::workers`).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// The Kubernetes watchers' own runtime: one thread, so that decoding the API server's events
/// (a thousand EndpointSlice updates a second is a few percent of a core) never runs on an
/// event loop that serves requests; the kernel shares the core between them instead. With
/// `--workers 1` the main thread is that loop: sharing it, the watchers took a request p99
/// from 1.6 to 2.7 ms during 836 endpoint changes a second (`bench/kube-scale.py --pin`,
/// docs/benchmarks.md). Not niced like the config reloads: at nice 19 on a busy machine the
/// first lists took so long that a sidecar was not ready in 10 s (the mesh example under CI's
/// load), and a proxy must not start late or lag behind its endpoints.
fn kube_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tripline-kube")
        .enable_all()
        .build()
}

/// Runs the proxy's main future on the runtime. Small socket writes are then deferred to the
/// end of each event-loop tick and sent together (see `tripline_proxy::net_io`).
pub fn block_on<T>(rt: &tokio::runtime::Runtime, main: impl std::future::Future<Output = T>) -> T {
    rt.block_on(async {
        tripline_proxy::net_io::defer_writes_on_this_thread();
        main.await
    })
}

/// Where the config comes from: files, and with `--kubernetes` the API server too.
#[derive(Clone)]
struct Config {
    paths: Vec<PathBuf>,
    kube: Option<Arc<KubeSource>>,
}

/// A loaded config, the objects from the API server it left out because they are invalid
/// (each with why), and the API server's documents it read (by source name).
struct Load {
    loaded: Loaded,
    rejected: Vec<Diagnostic>,
    kube: HashMap<String, String>,
}

/// Reads and loads the config; with a `cache`, taking the documents that did not change since
/// the last load from it (`tripline_config::DocumentCache`: a reload parses only what changed).
///
/// An invalid object from the API server never takes the rest down: each one a load finds an
/// error in is left out, and the rest loaded again (an object that only worked with it goes
/// too). A mistake in a file still fails the load, as without `--kubernetes`.
fn load(
    config: &Config,
    opts: &LoadOptions,
    mut cache: Option<&mut DocumentCache>,
) -> Result<Load, Vec<Diagnostic>> {
    let mut sources =
        if config.paths.is_empty() { Vec::new() } else { tripline_config::read_sources(&config.paths)? };
    let mut kube = HashMap::new();
    if let Some(k) = &config.kube {
        let from_api = k.sources();
        kube = from_api.iter().map(|s| (s.name.clone(), s.text.clone())).collect();
        sources.extend(from_api);
    }
    let mut rejected = Vec::new();
    loop {
        let result = match cache.as_deref_mut() {
            Some(cache) => tripline_config::load_reusing(&sources, opts, cache),
            None => tripline_config::load(&sources, opts),
        };
        let diags = match result {
            Ok(loaded) => return Ok(Load { loaded, rejected, kube }),
            Err(diags) => diags,
        };
        let invalid = |d: &Diagnostic| {
            d.severity == Severity::Error && d.file.starts_with(tripline_kube::SOURCE_PREFIX)
        };
        let bad: HashSet<String> = diags.iter().filter(|d| invalid(d)).map(|d| d.file.clone()).collect();
        if bad.is_empty() {
            return Err(diags);
        }
        rejected.extend(diags.into_iter().filter(|d| invalid(d)));
        sources.retain(|s| !bad.contains(&s.name));
    }
}

/// Applies a change of the API server's objects that only moved endpoints (EndpointSlices:
/// scaling, a rollout, readiness) to the live clusters in place, without compiling the config
/// again; `seen` is what the running config was built from, and is brought up to date. `false`
/// when the change is anything else (an object added, removed or changed beyond a Service's
/// endpoints; a cluster of the host that selects a subset): the caller then reloads.
fn endpoints_in_place(
    proxy: &Proxy,
    seen: &mut HashMap<String, String>,
    now: Vec<tripline_config::Source>,
) -> bool {
    if now.len() != seen.len() || now.iter().any(|s| !seen.contains_key(&s.name)) {
        return false;
    }
    let changed: Vec<&tripline_config::Source> = now.iter().filter(|s| seen[&s.name] != s.text).collect();
    let mut updates = Vec::new();
    for source in &changed {
        if !source.name.contains("/Service/") {
            return false;
        }
        let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
        let (Some(mut old), Some(mut new)) = (parse(&seen[&source.name]), parse(&source.text)) else {
            return false;
        };
        let endpoints = new["spec"]["endpoints"].take();
        old["spec"]["endpoints"].take();
        if old != new {
            return false;
        }
        updates.push((new, endpoints));
    }
    for (entry, endpoints) in &updates {
        let Some(host) = entry["spec"]["hosts"][0].as_str() else { return false };
        let port_name = |number: u16| {
            entry["spec"]["ports"].as_array()?.iter().find(|p| p["number"] == number)?["name"]
                .as_str()
                .map(str::to_string)
        };
        let addresses = |number: u16| {
            let name = port_name(number);
            let mut out = Vec::new();
            for e in endpoints.as_array().into_iter().flatten() {
                let Some(ip) = e["address"].as_str().and_then(|a| a.parse::<std::net::IpAddr>().ok()) else {
                    continue;
                };
                let port = name.as_deref().and_then(|n| e["ports"][n].as_u64()).unwrap_or(u64::from(number));
                let labels = e["labels"]
                    .as_object()
                    .map(|l| {
                        l.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
                    })
                    .unwrap_or_default();
                out.push((std::net::SocketAddr::new(ip, port as u16), 1, labels));
            }
            out
        };
        if !proxy.set_host_endpoints(host, addresses) {
            return false;
        }
    }
    for s in now {
        seen.insert(s.name, s.text);
    }
    true
}

/// Logs the objects a load left out (those not logged at the last load), counts them, and
/// (with `--report-status`) says so in their status.
fn report_rejected(
    proxy: &Proxy,
    kube: Option<&KubeSource>,
    rejected: &[Diagnostic],
    logged: &mut HashSet<String>,
) {
    if let Some(k) = kube {
        let mut first = std::collections::BTreeMap::new();
        for d in rejected {
            // The field path says where; the line is in Tripline's rendering of the object.
            first.entry(d.file.clone()).or_insert_with(|| format!("{}: {}", d.path, d.message));
        }
        k.report_status(&first);
    }
    let now: HashSet<String> = rejected.iter().map(|d| d.to_string()).collect();
    for d in now.difference(logged) {
        tracing::error!("{d}");
    }
    let objects: HashSet<&str> = rejected.iter().map(|d| d.file.as_str()).collect();
    if !now.is_subset(logged) {
        let names: Vec<&str> = objects.iter().copied().collect();
        tracing::error!(objects = ?names, "left out of the configuration: these objects from the Kubernetes API server are invalid (the rest is applied)");
    }
    proxy.shared.global.kubernetes_rejected.store(objects.len() as u64, Ordering::Relaxed);
    *logged = now;
}

pub fn run(args: RunArgs) -> ExitCode {
    init_logging(&args.log);
    match crate::fd_limit::raise_to_hard() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit"),
    }
    let mut opts = LoadOptions {
        mesh_bind: args.mesh_bind,
        dns_refresh: args.dns_refresh,
        kubernetes: args.kubernetes,
        inbound_capture: args.inbound_capture,
        ..LoadOptions::default()
    };
    args.workload.apply(&mut opts);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tripline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Lives until the proxy has stopped (dropped at the end of this function, outside any
    // runtime).
    let mut kube_rt = None;
    let kube = if args.kubernetes {
        let options =
            tripline_kube::Options { namespace: args.namespace.clone(), report_status: args.report_status };
        let started =
            kube_runtime().map_err(|e| format!("cannot start the Kubernetes thread: {e}")).and_then(|krt| {
                let source = krt.block_on(KubeSource::start(options, Duration::from_secs(30)));
                kube_rt = Some(krt);
                source
            });
        match started {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                eprintln!("tripline: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let config = Config { paths: args.config.clone(), kube };
    let Load { loaded, rejected, kube: seen } = match load(&config, &opts, None) {
        Ok(l) => l,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("tripline: the configuration has errors; nothing was started");
            return ExitCode::from(2);
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let workers =
        args.workers.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from);
    let (code, threads) = block_on(&rt, async move {
        // Before the config is applied: the upstream pools are sized by the worker count.
        match tripline_proxy::workers::start(workers) {
            Ok(threads) => {
                (serve(args, config, opts, (loaded, rejected, seen), workers).await, Some(threads))
            }
            Err(e) => {
                eprintln!("tripline: cannot start {workers} workers: {e} (use --workers)");
                (ExitCode::FAILURE, None)
            }
        }
    });
    if let Some(threads) = threads {
        threads.stop();
    }
    // A config load or DNS lookup still running on a blocking thread (a hung resolver) must
    // not hold up the exit once the drain is over.
    rt.shutdown_timeout(Duration::from_millis(500));
    if let Some(krt) = kube_rt {
        krt.shutdown_timeout(Duration::from_millis(500));
    }
    code
}

async fn serve(
    args: RunArgs,
    config: Config,
    opts: LoadOptions,
    (loaded, rejected, seen): (Loaded, Vec<Diagnostic>, HashMap<String, String>),
    workers: usize,
) -> ExitCode {
    let log_options = args.access_log.as_ref().map(|target| tripline_proxy::access_log::Options {
        target: target.clone(),
        format: args.access_log_format.clone(),
        sample: args.access_log_sample,
    });
    let access_log = match log_options.map(tripline_proxy::access_log::AccessLog::start).transpose() {
        Ok(log) => log,
        Err(e) => {
            eprintln!("tripline: cannot open the access log: {e} (check --access-log)");
            return ExitCode::FAILURE;
        }
    };
    let proxy = Proxy::with_access_log(access_log);
    let app = ["app", "app.kubernetes.io/name"].iter().find_map(|k| opts.workload_labels.get(*k));
    if let Err(e) = start_tracing(&args, &proxy, app.cloned().unwrap_or_else(|| "tripline".into())) {
        eprintln!("tripline: traces: {e}");
        return ExitCode::FAILURE;
    }
    if args.istio_metrics {
        let _ = proxy.shared.istio_metrics.set(tripline_proxy::istio_metrics::Workload {
            name: app.cloned().unwrap_or_else(|| "unknown".into()),
            namespace: opts.workload_namespace.clone().unwrap_or_else(|| "unknown".into()),
        });
    }
    proxy.shared.client_conns.set_header_timeout(args.header_timeout);
    proxy.shared.client_conns.set_stream_idle_timeout(args.stream_idle_timeout);
    proxy.shared.header_limits.set(args.max_request_headers_kb, args.max_request_headers);
    let admin = match tripline_proxy::admin::bind(args.admin).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tripline: cannot bind the admin address {}: {e} (use --admin)", args.admin);
            return ExitCode::FAILURE;
        }
    };
    let token = match args.admin_token_file.as_deref().map(tripline_proxy::admin_guard::TokenFile::open) {
        None => None,
        Some(Ok(t)) => Some(Arc::new(t)),
        Some(Err(e)) => {
            eprintln!("tripline: --admin-token-file: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.admin.ip().is_loopback() {
        if token.is_some() {
            tracing::warn!(
                admin = %args.admin,
                "the admin API listens beyond loopback: anyone who reaches it can read the config and the metrics (changing state needs the token)"
            );
        } else {
            tracing::warn!(
                admin = %args.admin,
                "the admin API listens beyond loopback: anyone who reaches it can read the config and force breakers open (use --admin 127.0.0.1:PORT unless a network policy guards it, or --admin-token-file)"
            );
        }
    }
    tokio::spawn(tripline_proxy::admin::serve(proxy.shared.clone(), admin, token));
    if let Err(e) = proxy.apply(&loaded).await {
        eprintln!("tripline: {e}");
        return ExitCode::FAILURE;
    }
    let mut logged = HashSet::new();
    report_rejected(&proxy, config.kube.as_deref(), &rejected, &mut logged);
    // The running config keeps what it needs; the plan is not needed for the process's life.
    drop(loaded);
    crate::alloc::release_free_memory();
    tracing::info!(admin = %args.admin, workers, "tripline ready");
    tokio::spawn(proxy.clone().run_housekeeping());
    let cache = Arc::new(Mutex::new(DocumentCache::default()));
    let filling = tokio::spawn(fill_document_cache(config.clone(), opts.clone(), cache.clone()));
    let watching = Watching { config, opts, every: args.watch_interval, cache, logged, seen };
    tokio::spawn(watch_config(proxy.clone(), watching, filling));

    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("tripline: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    // SIGUSR1: the access log file is opened again (logrotate renamed it away).
    if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
        let shared = proxy.shared.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                // Off the event loop: the queue to the writer may be full.
                let shared = shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(log) = &shared.access_log {
                        log.reopen();
                    }
                })
                .await;
                tracing::info!("access log opened again (SIGUSR1)");
            }
        });
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(timeout = ?args.drain_timeout, "draining");
    proxy.drain(args.drain_timeout).await;
    // The last log lines and spans, written and sent off the event loop (it waits for them).
    let shared = proxy.shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(log) = &shared.access_log {
            log.flush();
        }
        if let Some(tracer) = shared.tracer.get() {
            tracer.flush();
        }
    })
    .await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// `--otlp-endpoint` (or OpenTelemetry's variables): the tracer and its OTLP exporter.
/// `service` is the `service.name` spans carry unless `OTEL_SERVICE_NAME` says otherwise.
fn start_tracing(args: &RunArgs, proxy: &Proxy, service: String) -> Result<(), String> {
    let flags = crate::otlp::Flags {
        endpoint: args.otlp_endpoint.as_deref(),
        protocol: args.otlp_protocol.as_deref(),
        sample: args.trace_sample,
        service,
    };
    let Some(settings) = crate::otlp::Settings::resolve(&flags, |k| std::env::var(k).ok())? else {
        return Ok(());
    };
    let exporter = crate::otlp::Exporter::start(&settings)?;
    tracing::info!(
        endpoint = settings.endpoint.as_deref().unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
        protocol = ?settings.protocol,
        sampler = ?settings.sampler,
        "traces exported with OTLP"
    );
    let tracer = tripline_proxy::spans::Tracer::new(settings.sampler, Box::new(exporter));
    let _ = proxy.shared.tracer.set(tracer);
    Ok(())
}

/// A cheap fingerprint of the config paths: every file's name, size and mtime.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        let entries: Vec<PathBuf> = match std::fs::read_dir(p) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => vec![p.clone()],
        };
        for f in entries {
            let meta = std::fs::metadata(&f).ok();
            out.push((f, meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok())));
        }
    }
    out.sort();
    out
}

/// While config files change, how often they are looked at.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// How long they must stay the same before a change is read.
const SETTLE_QUIET: Duration = Duration::from_millis(200);
/// The longest a change waits for the files to stop changing.
const SETTLE_MAX: Duration = Duration::from_secs(2);

/// Waits for writes to settle: editors truncate a file and then write it, and a copy arrives in
/// pieces, so a file read just after it changed is often half a config. Starting from `seen`,
/// the look that showed a change, it looks again every [`SETTLE_POLL`] and returns the last
/// look once [`SETTLE_QUIET`] has passed without a change, or [`SETTLE_MAX`] after it started
/// if the files never stop changing.
async fn settle<T: PartialEq>(mut seen: T, mut look: impl FnMut() -> T) -> T {
    let start = tokio::time::Instant::now();
    let mut quiet_since = start;
    loop {
        let now = tokio::time::Instant::now();
        if now - quiet_since >= SETTLE_QUIET || now - start >= SETTLE_MAX {
            return seen;
        }
        tokio::time::sleep(SETTLE_POLL).await;
        let again = look();
        if again != seen {
            seen = again;
            quiet_since = tokio::time::Instant::now();
        }
    }
}

/// Fills the cache that lets a reload parse only the documents that changed, by loading the
/// config once more, after the proxy is ready and at low priority: filling it during the
/// start-up load (cutting every document apart, copying what it decoded) would delay
/// readiness by a fifth at 100,000 endpoints (docs/benchmarks.md).
async fn fill_document_cache(config: Config, opts: LoadOptions, cache: Arc<Mutex<DocumentCache>>) {
    let started = std::time::Instant::now();
    let filled = crate::low_priority::run(move || {
        let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let loaded = load(&config, &opts, Some(&mut cache));
        let documents = cache.len();
        drop((cache, loaded));
        crate::alloc::release_free_memory();
        documents
    })
    .await;
    if let Some(documents) = filled {
        let took_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(documents, took_ms, "documents kept for reloads");
    }
}

/// What the reload loop reads, and what it logged of the objects it left out.
struct Watching {
    config: Config,
    opts: LoadOptions,
    every: Duration,
    cache: Arc<Mutex<DocumentCache>>,
    logged: HashSet<String>,
    /// The API server's documents the running config was built from.
    seen: HashMap<String, String>,
}

/// How long changes from the API server are gathered before a reload: a rollout changes many
/// EndpointSlices within a moment, and one reload takes them all.
const KUBE_GATHER: Duration = Duration::from_millis(100);

/// Reloads when a config file changes (once the writes have settled: [`settle`]), at once on
/// SIGHUP, and when the API server's objects change (`--kubernetes`). A config that fails to
/// load or apply leaves the running one in place; the failure is logged and counted.
async fn watch_config(proxy: Proxy, w: Watching, filling: tokio::task::JoinHandle<()>) {
    let Watching { config, opts, every, cache, mut logged, mut seen } = w;
    let paths = config.paths.clone();
    let mut filling = Some(filling);
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut last = fingerprint(&paths);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = async { match &config.kube { Some(k) => k.changed().await, None => std::future::pending().await } } => {
                tokio::time::sleep(KUBE_GATHER).await;
                // Reading the API server's documents and comparing them takes a while at a
                // thousand Services: on the low-priority thread, as a reload's compile.
                let (px, kube, mut was) = (proxy.clone(), config.kube.clone(), std::mem::take(&mut seen));
                let checked = crate::low_priority::run(move || {
                    let now = kube.map(|k| k.sources()).unwrap_or_default();
                    (endpoints_in_place(&px, &mut was, now), was)
                })
                .await;
                match checked {
                    Some((in_place, was)) => {
                        seen = was;
                        if in_place {
                            continue;
                        }
                    }
                    None => tracing::error!("comparing the API server's objects failed; reloading"),
                }
                true
            }
        };
        let now = fingerprint(&paths);
        if !forced && now == last {
            continue;
        }
        last = if forced { now } else { settle(now, || fingerprint(&paths)).await };
        // The first reload waits for the cache to be filled, so that it parses only what changed.
        if let Some(filling) = filling.take() {
            let _ = filling.await;
        }
        let started = std::time::Instant::now();
        let global = &proxy.shared.global;
        // Reading and compiling a large config takes a while: off the event loop, which
        // serves requests too when there is one worker and accepts connections when there
        // are several, and at the lowest priority (`low_priority`).
        // The live clusters and route tables are built there too (`Proxy::prepare`); only
        // putting them in force is left to this thread.
        let (p, o, px, c) = (config.clone(), opts.clone(), proxy.clone(), cache.clone());
        let work = move || {
            // Reloads run one at a time, after the cache was filled: never contended.
            let mut cache = c.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let Load { loaded, rejected, kube } = load(&p, &o, Some(&mut cache))?;
            let reused = cache.reused();
            drop(cache);
            let at = std::time::Instant::now();
            let prepared = px.prepare(&loaded.plan);
            Ok::<_, Vec<Diagnostic>>((prepared, (loaded, rejected, kube), at.elapsed(), reused))
        };
        let Some(loaded) = crate::low_priority::run(work).await else {
            global.reloads_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("reload failed (it panicked, or the low-priority thread could not start); keeping the previous configuration");
            continue;
        };
        match loaded {
            Ok((prepared, (loaded, rejected, kube), prepare, reused_documents)) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                report_rejected(&proxy, config.kube.as_deref(), &rejected, &mut logged);
                let applying = std::time::Instant::now();
                match proxy.apply_prepared(&loaded, prepared).await {
                    Ok(retired) => {
                        global.reloads_ok.fetch_add(1, Ordering::Relaxed);
                        seen = kube;
                        // The new config is in force: that is the reload's time. Freeing the
                        // load and returning the allocator's free pages come after, and are
                        // timed on their own (`bench/endpoints-scale.sh` reads both).
                        // With where it went: reading and compiling, building the live
                        // clusters and route tables (both at low priority), and putting
                        // them in force on this thread.
                        let took_ms = started.elapsed().as_secs_f64() * 1e3;
                        let prepare_ms = prepare.as_secs_f64() * 1e3;
                        let apply_ms = applying.elapsed().as_secs_f64() * 1e3;
                        let load_ms = took_ms - prepare_ms - apply_ms;
                        tracing::info!(
                            forced,
                            took_ms,
                            load_ms,
                            prepare_ms,
                            apply_ms,
                            reused_documents,
                            "configuration reloaded"
                        );
                        // Freeing the load and the old config (at 100,000 endpoints tens of
                        // milliseconds of cache misses) at low priority too.
                        let cleanup = std::time::Instant::now();
                        crate::low_priority::run(move || {
                            drop(loaded);
                            drop(retired);
                            crate::alloc::release_free_memory();
                        })
                        .await;
                        let cleanup_ms = cleanup.elapsed().as_secs_f64() * 1e3;
                        tracing::info!(cleanup_ms, "memory of the load released");
                    }
                    Err(e) => {
                        global.reloads_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "reload failed; keeping the previous configuration");
                    }
                }
            }
            Err(diags) => {
                global.reloads_failed.fetch_add(1, Ordering::Relaxed);
                for d in &diags {
                    tracing::error!("{d}");
                }
                tracing::error!("reload rejected; keeping the previous configuration");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// What a look at the files returns at `t` after the test starts: each `(from, value)`
    /// holds from its time on.
    fn script(start: Instant, steps: &'static [(u64, &'static str)]) -> impl FnMut() -> &'static str {
        move || {
            let t = start.elapsed().as_millis() as u64;
            steps.iter().rev().find(|(from, _)| t >= *from).map_or("", |(_, v)| v)
        }
    }

    /// An editor truncates, then writes 120 ms later: the write is what gets read, 200 ms
    /// after it, and the empty file never is.
    #[tokio::test(start_paused = true)]
    async fn a_truncate_then_a_write_is_read_once_whole() {
        let start = Instant::now();
        let got = settle("empty", script(start, &[(0, "empty"), (120, "whole")])).await;
        assert_eq!(got, "whole");
        // Seen at the 150 ms look; quiet from there for 200 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(350));
    }

    /// Files that stay as they were seen are read after the quiet period.
    #[tokio::test(start_paused = true)]
    async fn a_finished_change_is_read_after_the_quiet_period() {
        let start = Instant::now();
        assert_eq!(settle("whole", script(start, &[(0, "whole")])).await, "whole");
        assert_eq!(start.elapsed(), SETTLE_QUIET);
    }

    /// Files that never stop changing are read anyway, at the limit.
    #[tokio::test(start_paused = true)]
    async fn files_that_keep_changing_are_read_at_the_limit() {
        let start = Instant::now();
        let mut n = 0u32;
        let got = settle(0, || {
            n += 1;
            n
        })
        .await;
        assert_eq!(start.elapsed(), SETTLE_MAX);
        assert_eq!(got, (SETTLE_MAX.as_millis() / SETTLE_POLL.as_millis()) as u32);
    }
}
