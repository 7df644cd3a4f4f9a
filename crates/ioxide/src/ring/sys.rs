//! Thin, safe wrappers over the few plain syscalls the runtime makes outside the ring:
//! socket options, bind/listen at server start, eventfd and clocks (signal masks: `signal`). None of them
//! blocks.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A socket address in the kernel's layout, heap-allocated by its owner when an op needs it.
#[derive(Clone)]
pub(crate) struct RawAddr {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

impl RawAddr {
    pub(crate) fn family(&self) -> i32 {
        i32::from(self.storage.ss_family)
    }

    pub(crate) fn from_inet(addr: &SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub(crate) fn from_unix(path: &Path) -> io::Result<RawAddr> {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        let sun = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_un>() };
        if bytes.len() >= sun.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "unix socket path too long ({} bytes, max {})",
                    bytes.len(),
                    sun.sun_path.len() - 1
                ),
            ));
        }
        if bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unix socket path contains NUL",
            ));
        }
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let len = mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        Ok(RawAddr {
            storage,
            len: len as libc::socklen_t,
        })
    }

    pub(crate) fn to_inet(&self) -> Option<SocketAddr> {
        match self.family() {
            libc::AF_INET => {
                // SAFETY: family says the storage holds a sockaddr_in.
                let sin = unsafe { &*(&raw const self.storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: family says the storage holds a sockaddr_in6.
                let s = unsafe { &*(&raw const self.storage).cast::<libc::sockaddr_in6>() };
                let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(s.sin6_port),
                    s.sin6_flowinfo,
                    s.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// `setsockopt` with an int value.
pub(crate) fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: value lives for the call; the length matches its type.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `getsockopt` with an int value.
pub(crate) fn get_int_opt(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len live for the call and describe an int.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) })?;
    Ok(value)
}

/// Creates a non-blocking-free, close-on-exec socket synchronously (listeners at start only).
pub(crate) fn socket(domain: i32, ty: i32) -> io::Result<RawFd> {
    // SAFETY: plain syscall with integer arguments.
    cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) })
}

/// `bind(2)`.
pub(crate) fn bind(fd: RawFd, addr: &RawAddr) -> io::Result<()> {
    // SAFETY: addr points to a valid sockaddr of addr.len bytes.
    cvt(unsafe { libc::bind(fd, (&raw const addr.storage).cast(), addr.len) }).map(drop)
}

/// `listen(2)`.
pub(crate) fn listen(fd: RawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    cvt(unsafe { libc::listen(fd, backlog) }).map(drop)
}

/// `getsockname(2)` / `getpeername(2)`.
pub(crate) fn sock_addr(fd: RawFd, peer: bool) -> io::Result<RawAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&raw mut storage).cast();
    // SAFETY: storage and len live for the call and describe the buffer.
    cvt(unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    })?;
    Ok(RawAddr { storage, len })
}

/// Closes an fd synchronously (only used where no ring exists any more).
pub(crate) fn close(fd: RawFd) {
    // SAFETY: the caller owns fd and never uses it again.
    unsafe { libc::close(fd) };
}

/// close(2), reporting its error (the fd is released either way).
pub(crate) fn close_checked(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller owns fd and never uses it again.
    cvt(unsafe { libc::close(fd) }).map(drop)
}

/// A new close-on-exec eventfd (counter semantics).
pub(crate) fn eventfd() -> io::Result<RawFd> {
    // SAFETY: plain syscall with integer arguments.
    cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })
}

/// Adds 1 to an eventfd's counter, waking whoever reads it. Safe from any thread.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64; an error (counter overflow) is harmless here.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

/// Process CPU time (user + system) so far.
pub fn process_cpu_time() -> std::time::Duration {
    // SAFETY: all-zero rusage is valid and getrusage fills it.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: ru is a live rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
