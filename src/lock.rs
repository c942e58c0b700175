//! One writer per Cloudflare account on this host: the daemon and the one-shot commands
//! that write (`once`, `cleanup`, `setup`) each hold a lock for the account while they
//! run, and refuse to start while another process holds it.
//!
//! The lock is a Linux abstract Unix socket bound under a name made from the account ID
//! and the API URL. It needs no file: the systemd unit's sandbox (`DynamicUser=`,
//! `ProtectSystem=strict`) leaves the daemon no writable directory a shell would share,
//! while abstract sockets belong to the network namespace, which the unit shares with
//! the host. The kernel releases it when the process ends, however it ends, and it works
//! with `admin.listen = "off"`. Processes in another network namespace (a container) do
//! not see each other's lock. Elsewhere than Linux there is no lock.

use crate::config::CloudflareConfig;

/// Held while this process may write to the account; dropping it releases the lock.
#[derive(Debug)]
pub struct WriterLock {
    #[cfg(target_os = "linux")]
    _socket: std::os::unix::net::UnixListener,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process on this host holds it.
    #[error("another crowdsec-cloudflare-iplist-bouncer process on this host writes to Cloudflare account {account_id}")]
    Held { account_id: String },
    /// Held by a process that cannot be a bouncer: a local user squatting the name.
    #[error(
        "the writer lock for Cloudflare account {account_id} is held by uid {uid} (pid {pid}), \
         which is not a bouncer's user (find that process with `ps -p {pid}`)"
    )]
    Squatted {
        account_id: String,
        uid: u32,
        pid: i32,
    },
    #[error("cannot take the writer lock for Cloudflare account {account_id}: {source}")]
    Io {
        account_id: String,
        #[source]
        source: std::io::Error,
    },
}

/// The lock's name: the account ID and a stable hash of the API URL (one emulator or
/// one API per URL), short enough for an abstract socket name.
pub fn lock_name(config: &CloudflareConfig) -> String {
    format!(
        "crowdsec-cloudflare-iplist-bouncer/{}/{:016x}",
        config.account_id,
        fnv1a(config.api_url.as_bytes())
    )
}

/// FNV-1a, 64 bits: stable across builds, unlike the standard library's hasher, so an
/// upgraded binary sees the lock a running older one holds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Takes the writer lock for the account `config` names.
///
/// # Errors
/// [`LockError::Held`] when another process holds it; [`LockError::Io`] when the socket
/// cannot be made at all.
#[cfg(target_os = "linux")]
pub fn acquire(config: &CloudflareConfig) -> Result<WriterLock, LockError> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let account_id = config.account_id.clone();
    let addr = SocketAddr::from_abstract_name(lock_name(config).as_bytes()).map_err(|source| {
        LockError::Io {
            account_id: account_id.clone(),
            source,
        }
    })?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(WriterLock { _socket: socket }),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => match holder(&addr) {
            // An abstract name has no permissions: any local user could take it to keep
            // the bouncer from running. Only a holder that could be a bouncer counts.
            Some(Holder { uid, pid }) if !could_be_a_bouncer(uid) => Err(LockError::Squatted {
                account_id,
                uid,
                pid,
            }),
            _ => Err(LockError::Held { account_id }),
        },
        Err(source) => Err(LockError::Io { account_id, source }),
    }
}

/// The process listening on the lock, as the kernel recorded it.
#[cfg(target_os = "linux")]
struct Holder {
    uid: u32,
    pid: i32,
}

/// Who holds the lock: the credentials the kernel recorded when it was taken
/// (`SO_PEERCRED` on a connection to it; the holder need not accept it).
#[cfg(target_os = "linux")]
fn holder(addr: &std::os::unix::net::SocketAddr) -> Option<Holder> {
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect_addr(addr).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred it was sized for.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &mut len,
        )
    };
    (rc == 0).then_some(Holder {
        uid: cred.uid,
        pid: cred.pid,
    })
}

/// Whether a process of `uid` could be a bouncer: root (the one-shot commands, run with
/// sudo), this process's own user, or systemd's dynamic users (the unit's
/// `DynamicUser=`, uids 61184–65519).
#[cfg(target_os = "linux")]
fn could_be_a_bouncer(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    uid == 0 || uid == me || (61184..=65519).contains(&uid)
}

/// No lock outside Linux.
///
/// # Errors
/// None.
#[cfg(not(target_os = "linux"))]
pub fn acquire(_config: &CloudflareConfig) -> Result<WriterLock, LockError> {
    Ok(WriterLock {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cloudflare(api_url: &str) -> CloudflareConfig {
        let text = format!(
            "[crowdsec]\napi_key = \"k\"\n[cloudflare]\napi_url = \"{api_url}\"\napi_token = \"t\"\n\
             account_id = \"{}\"\nlist_name = \"crowdsec_ban\"\n",
            "a".repeat(32)
        );
        Config::parse(&text, &|_| None)
            .expect("valid config")
            .cloudflare
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let config = cloudflare("http://127.0.0.1:1/lock-test-a");
        let first = acquire(&config).expect("the first takes it");
        assert!(matches!(acquire(&config), Err(LockError::Held { .. })));
        // Another API URL is another lock.
        let other = cloudflare("http://127.0.0.1:1/lock-test-b");
        let _second = acquire(&other).expect("another URL, another lock");
        drop(first);
        acquire(&config).expect("free again once dropped");
    }

    #[test]
    fn the_holder_is_known_and_this_user_could_be_a_bouncer() {
        use std::os::linux::net::SocketAddrExt;
        let config = cloudflare("http://127.0.0.1:1/lock-test-holder");
        let _held = acquire(&config).expect("taken");
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(lock_name(&config).as_bytes())
                .expect("name");
        let holder = holder(&addr).expect("the kernel knows the holder");
        assert_eq!(holder.pid, std::process::id() as i32);
        assert_eq!(holder.uid, unsafe { libc::geteuid() });
        assert!(could_be_a_bouncer(holder.uid));
        assert!(could_be_a_bouncer(0) && could_be_a_bouncer(61184) && could_be_a_bouncer(65519));
        assert!(!could_be_a_bouncer(1000) || holder.uid == 1000);
        assert!(!could_be_a_bouncer(65534), "nobody is not a bouncer");
    }

    #[test]
    fn the_name_is_stable_and_fits_an_abstract_socket() {
        let config = cloudflare("https://api.cloudflare.com/client/v4");
        let name = lock_name(&config);
        assert_eq!(name, lock_name(&config));
        assert!(name.len() < 100, "{name}");
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
