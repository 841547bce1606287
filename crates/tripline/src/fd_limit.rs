//! The process's open-file limit. A proxy holds two descriptors per proxied connection (client
//! and upstream), and many distributions start services with a soft limit of 1,024 under a
//! hard limit of 512K or more: at the soft limit `accept` fails with "Too many open files"
//! while the hard limit would have allowed far more. `tripline run` raises the soft limit to
//! the hard one at start, as Envoy's and HAProxy's packaging do.

use std::io;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns `(soft, hard)` as they are now.
pub fn raise_to_hard() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `setrlimit` reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}
