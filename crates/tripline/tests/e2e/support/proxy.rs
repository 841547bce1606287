//! The real `tripline` binary as a child process.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::client::{self, Resp};
use super::free_port;
pub use super::metrics::metric_sum;

pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tripline")
}

/// A fresh directory under the system temp dir, unique per process and call.
pub fn unique_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("tripline-e2e-{}-{n}-{nanos}-{tag}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Last `lines` lines of a file (for failure messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command with a deadline; returns (exit code, stdout, stderr). Panics on timeout.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> (Option<i32>, String, String) {
    let dir = unique_dir("cmd");
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = fs::read_to_string(&out).unwrap_or_default();
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    (status.code(), stdout, stderr)
}

pub struct Proxy {
    child: Child,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    stderr: PathBuf,
    stdout: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proxy {
    /// Starts `tripline run` on `yaml` and waits for `/ready`.
    pub async fn start(yaml: &str) -> Proxy {
        Self::start_args(yaml, &[]).await
    }

    /// Starts the proxy with one worker: one event loop, as the benchmarks run it.
    pub async fn start_single(yaml: &str) -> Proxy {
        Self::start_args(yaml, &["--workers", "1"]).await
    }

    pub async fn start_args(yaml: &str, extra: &[&str]) -> Proxy {
        let dir = unique_dir("proxy");
        let config = dir.join("mesh.yaml");
        fs::write(&config, yaml).unwrap();
        Self::spawn(dir, config.clone(), &[&config], extra, &[]).await
    }

    /// Starts `tripline run` on `yaml` as the last arguments of `wrapper` (a command that ends
    /// by exec'ing its arguments, so the proxy keeps the child's pid and gets its signals).
    pub async fn start_wrapped(yaml: &str, extra: &[&str], wrapper: &[&str]) -> Proxy {
        let dir = unique_dir("proxy");
        let config = dir.join("mesh.yaml");
        fs::write(&config, yaml).unwrap();
        Self::spawn(dir, config.clone(), &[&config], extra, wrapper).await
    }

    /// Starts `tripline run --kubernetes` without a config file, with `env` (`KUBECONFIG=...`)
    /// in its environment, and waits for `/ready`.
    pub async fn start_kube(env: &str, extra: &[&str]) -> Proxy {
        let dir = unique_dir("proxy");
        let mut args = vec!["--kubernetes"];
        args.extend_from_slice(extra);
        Self::spawn(dir.clone(), dir.join("mesh.yaml"), &[], &args, &["env", env]).await
    }

    /// Starts `tripline run` with a `-c` for each of `paths` (files or directories) and waits
    /// for `/ready`. [`Proxy::write_file`] changes them; `config` is the first.
    pub async fn start_paths(paths: &[&Path], extra: &[&str]) -> Proxy {
        Self::spawn(unique_dir("proxy"), paths[0].to_owned(), paths, extra, &[]).await
    }

    /// Starts `tripline run` on `yaml` as the last arguments of `wrapper`, its admin API on
    /// `admin` (another network namespace's address, say).
    pub async fn start_wrapped_at(yaml: &str, admin: SocketAddr, extra: &[&str], wrapper: &[&str]) -> Proxy {
        let dir = unique_dir("proxy");
        let config = dir.join("mesh.yaml");
        fs::write(&config, yaml).unwrap();
        Self::spawn_at(dir, config.clone(), &[&config], extra, wrapper, admin).await
    }

    async fn spawn(
        dir: PathBuf,
        config: PathBuf,
        paths: &[&Path],
        extra: &[&str],
        wrapper: &[&str],
    ) -> Proxy {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::spawn_at(dir, config, paths, extra, wrapper, admin).await
    }

    async fn spawn_at(
        dir: PathBuf,
        config: PathBuf,
        paths: &[&Path],
        extra: &[&str],
        wrapper: &[&str],
        admin: SocketAddr,
    ) -> Proxy {
        let stderr = dir.join("stderr.log");
        let stdout = dir.join("stdout.log");
        let admin_arg = admin.to_string();
        let mut args: Vec<&str> = vec!["run"];
        for p in paths {
            args.extend(["-c", p.to_str().unwrap()]);
        }
        args.extend(["--admin", &admin_arg]);
        // Two workers by default, as `tripline run` starts on a two-core machine: connections
        // spread over two event loops, and upstream pools with an idle stack for each.
        if !extra.contains(&"--workers") {
            args.extend(["--workers", "2"]);
        }
        if !extra.contains(&"--log-level") {
            args.extend(["--log-level", "info"]);
        }
        args.extend(["--log-format", "text", "--drain-timeout", "5s"]);
        args.extend_from_slice(extra);
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn tripline");
        let mut proxy = Proxy { child, admin, dir, config, stderr, stdout, exited: None };
        proxy.wait_ready().await;
        proxy
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exited = Some(st);
                panic!(
                    "tripline exited ({st}) before /ready; config:\n{}\n{}",
                    self.config_text(),
                    self.logs()
                );
            }
            if let Ok(r) = client::get(self.admin, "localhost", "/ready").await {
                if r.status == 200 {
                    return;
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!("tripline not ready after {READY_TIMEOUT:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config).unwrap_or_default()
    }

    /// The tail of the proxy's stderr and stdout.
    /// Everything the proxy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- tripline stderr (tail) ---\n{}\n--- tripline stdout (tail) ---\n{}\n--- (full logs in {}) ---",
            tail(&self.stderr, 60),
            tail(&self.stdout, 20),
            self.dir.display()
        )
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        match client::get(self.admin, "localhost", path).await {
            Ok(r) => r,
            Err(e) => panic!("admin GET {path} failed: {e}\n{}", self.logs()),
        }
    }

    /// `POST` to the admin API (e.g. `/breakers/force-open?cluster=...`).
    pub async fn admin_post(&self, path_and_query: &str) -> Resp {
        match client::send(self.admin, http::Method::POST, "localhost", path_and_query, &[], "").await {
            Ok(r) => r,
            Err(e) => panic!("admin POST {path_and_query} failed: {e}\n{}", self.logs()),
        }
    }

    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200, "GET /metrics");
        r.text()
    }

    /// The cluster `name` (e.g. `outbound|80||backend.local`) in `/clusters`.
    pub async fn cluster(&self, name: &str) -> serde_json::Value {
        let v = self.admin_get("/clusters").await.json();
        v["clusters"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no cluster {name} in /clusters: {v}"))
            .clone()
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// Replaces the config file atomically (write + rename).
    pub fn write_config(&self, yaml: &str) {
        self.write_file(&self.config, yaml);
    }

    /// Writes `path` atomically: written beside the proxy's logs, then renamed into place, so
    /// a watched directory never shows a half-written or temporary file.
    pub fn write_file(&self, path: &Path, yaml: &str) {
        let tmp = self.dir.join("config.tmp");
        fs::write(&tmp, yaml).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    /// Waits until `tripline_config_reloads_total{result}` goes above `before`.
    pub async fn wait_reload(&self, result: &str, before: f64, timeout: Duration) {
        let start = Instant::now();
        loop {
            let now = self.metric("tripline_config_reloads_total", &[("result", result)]).await;
            if now > before {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "tripline_config_reloads_total{{result=\"{result}\"}} stayed at {now} for {timeout:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exited = Some(st);
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        } else if std::env::var_os("TRIPLINE_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
