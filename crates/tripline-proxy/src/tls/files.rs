//! Certificate files re-read when they change, without dropping a connection.
//!
//! Each TLS config Tripline builds (a Gateway server's, a cluster's) is a [`Credential`]: the
//! files it was read from, the config built from them, and the expiry of the certificates in
//! it. A watcher task looks at the files' metadata once a second ([`WATCH_EVERY`]): when a
//! file's modification time, size or inode changed (a rewrite, or Kubernetes' symlink swap of
//! a mounted Secret), the config is built again. New handshakes use the new config; the ones
//! done keep the keys they agreed. A file that does not build (half written, a key that does
//! not match, not PEM) keeps the old config in force, and is logged and counted
//! (`tripline_tls_reloads_total{result="failed"}`), until a good one is written.
//!
//! Polling rather than inotify: a handful of `stat` calls a second cost nothing, work the
//! same on every file system (including the projected volumes Kubernetes mounts, where inotify
//! events follow the symlink swap unreliably), and need no dependency.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

/// How often the watcher looks at the files.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What a file was when last read: a change to any of these is a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() })
}

/// One certificate's expiry, for the metric and `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The listener or cluster the config belongs to.
    pub owner: String,
    /// `certificate` (the leaf of the chain presented), `ca` (the CA bundle's first to expire).
    pub role: &'static str,
    pub file: PathBuf,
    /// Unix seconds of `notAfter`.
    pub not_after: i64,
}

/// A config built from files, and its certificates' expiry.
pub struct Built<C> {
    pub config: Arc<C>,
    pub expiries: Vec<Expiry>,
}

type Build<C> = Box<dyn Fn() -> Result<Built<C>, String> + Send + Sync>;

/// A TLS config kept in step with the files it was built from.
pub struct Credential<C> {
    pub owner: String,
    paths: Vec<PathBuf>,
    stamps: Mutex<Vec<Option<Stamp>>>,
    current: ArcSwap<Built<C>>,
    build: Build<C>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl<C> Credential<C> {
    /// Builds the config once; an error names the file and what is wrong with it.
    pub fn new(
        owner: String,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<Built<C>, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let stamps = paths.iter().map(stamp).collect();
        let built = build()?;
        Ok(Credential {
            owner,
            paths,
            stamps: Mutex::new(stamps),
            current: ArcSwap::from_pointee(built),
            build: Box::new(build),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        })
    }

    /// The config for the next handshake.
    pub fn config(&self) -> Arc<C> {
        self.current.load().config.clone()
    }
}

/// What the watcher and the metrics see of any credential.
pub trait Reload: Send + Sync {
    /// Builds again if a file changed; `Some(result)` when it tried.
    fn reload_if_changed(&self) -> Option<Result<(), String>>;
    fn expiries(&self) -> Vec<Expiry>;
    fn owner(&self) -> &str;
    /// Successful and failed reloads so far.
    fn reloads(&self) -> (u64, u64);
}

impl<C: Send + Sync + 'static> Reload for Credential<C> {
    fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now: Vec<_> = self.paths.iter().map(stamp).collect();
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *stamps == now {
                return None;
            }
            // Tried once per change: a bad file is reported once, not every second.
            *stamps = now;
        }
        Some(match (self.build)() {
            Ok(built) => {
                self.current.store(Arc::new(built));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        })
    }

    fn expiries(&self) -> Vec<Expiry> {
        self.current.load().expiries.clone()
    }

    fn owner(&self) -> &str {
        &self.owner
    }

    fn reloads(&self) -> (u64, u64) {
        (self.reloads_ok.load(Ordering::Relaxed), self.reloads_failed.load(Ordering::Relaxed))
    }
}

/// Every live credential of the proxy. Entries are weak: a config that a reload replaced
/// drops its credentials, and the watcher forgets them.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<Vec<Weak<dyn Reload>>>,
    watching: AtomicBool,
    /// The session ticket issuer every TLS listener shares, made at the first.
    ticketer: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("live", &self.live().len()).finish()
    }
}

impl Registry {
    /// The session ticket issuer, the same for every listener and every reload: a ticket from
    /// before a reload still resumes after it.
    pub fn ticketer(&self) -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
        if let Some(t) = self.ticketer.get() {
            return Ok(t.clone());
        }
        let made: Arc<dyn rustls::server::ProducesTickets> =
            rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?;
        Ok(self.ticketer.get_or_init(|| made).clone())
    }

    pub fn register(&self, c: &Arc<dyn Reload>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|w| w.strong_count() > 0);
        entries.push(Arc::downgrade(c));
    }

    /// The credentials alive now.
    pub fn live(&self) -> Vec<Arc<dyn Reload>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().filter_map(Weak::upgrade).collect()
    }

    /// Looks at every file once, rebuilding what changed; logs each outcome.
    pub fn check_all(&self) {
        for c in self.live() {
            match c.reload_if_changed() {
                None => {}
                Some(Ok(())) => tracing::info!(owner = c.owner(), "TLS certificate files changed: reloaded"),
                Some(Err(e)) => tracing::warn!(
                    owner = c.owner(),
                    error = %e,
                    "TLS certificate files changed but cannot be used: the previous certificate stays in force"
                ),
            }
        }
    }

    /// Starts the watcher task, once (on the runtime that calls it first).
    pub fn watch(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::Relaxed) {
            return;
        }
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(r) = registry.upgrade() else { return };
                // `stat` and PEM parsing are blocking file I/O, but a few small files a second.
                r.check_all();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &PathBuf, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_changed_file_rebuilds_and_a_bad_one_keeps_the_old_config() {
        let dir = std::env::temp_dir().join(format!("tripline-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value");
        write(&file, "1");
        let read = {
            let file = file.clone();
            move || {
                let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
                let n: u32 = text.trim().parse().map_err(|_| format!("not a number: {text}"))?;
                Ok(Built { config: Arc::new(n), expiries: Vec::new() })
            }
        };
        let c = Arc::new(Credential::new("l".into(), vec![file.clone()], read).unwrap());
        assert_eq!(*c.config(), 1);
        assert_eq!(c.reload_if_changed(), None, "nothing changed");

        write(&file, "22");
        assert_eq!(c.reload_if_changed(), Some(Ok(())));
        assert_eq!(*c.config(), 22);

        write(&file, "bad");
        assert!(matches!(c.reload_if_changed(), Some(Err(e)) if e.contains("not a number")));
        assert_eq!(*c.config(), 22, "the old config stays in force");
        assert_eq!(c.reload_if_changed(), None, "a bad file is tried once per change");
        assert_eq!(c.reloads(), (1, 1));

        let registry = Registry::default();
        let dynamic: Arc<dyn Reload> = c.clone();
        registry.register(&dynamic);
        assert_eq!(registry.live().len(), 1);
        drop((dynamic, c));
        assert!(registry.live().is_empty(), "a replaced config's credentials are forgotten");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
