//! The few operating-system facts the kit needs: who we are, which user runs the server,
//! signals, and `/proc` walks. Every `unsafe` block here is a plain libc call.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::process::Command;

/// A process id as the kernel spells it.
pub(crate) type Pid = libc::pid_t;

/// Whether the effective user is root (PostgreSQL refuses to run as root).
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and primary gid of the named OS user, from the passwd database.
pub(crate) fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value of this plain-data struct (null pointers,
    // zero ids); getpwnam_r overwrites it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, writable memory of the stated size for the whole
    // call; `cname` is NUL-terminated.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some((pwd.pw_uid, pwd.pw_gid))
}

/// Sends `sig` to exactly one process.
pub(crate) fn signal(pid: Pid, sig: libc::c_int) -> io::Result<()> {
    if pid <= 0 {
        // kill(0, …) and kill(-1, …) address groups; never do that by accident.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing pid {pid}"),
        ));
    }
    // SAFETY: kill takes plain integers; a positive pid addresses one process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat(&stat).is_some_and(|(state, _)| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The scheduler state letter of a process (`R`, `S`, `T` stopped, `Z` zombie, …).
pub(crate) fn process_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(state, _)| state)
}

/// `(state, ppid)` from the text of `/proc/<pid>/stat`. The command name may contain spaces
/// and parentheses, so parse after the last `)`.
fn parse_stat(stat: &str) -> Option<(char, Pid)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Pid>().ok())
        .collect()
}

/// The live direct children of `parent`.
pub(crate) fn children_of(parent: Pid) -> Vec<Pid> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|(state, ppid)| ppid == parent && state != 'Z')
        })
        .collect()
}

/// Every process whose working directory is `dir`. PostgreSQL processes `chdir` into their
/// data directory, so for a unique temp data dir this names exactly one cluster's processes.
pub(crate) fn pids_with_cwd(dir: &Path) -> Vec<Pid> {
    all_pids()
        .into_iter()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect()
}

/// Removes libpq/server environment variables (`PGPORT`, `PGDATA`, `PGPASSWORD`, …) so the
/// caller's environment cannot steer a helper program away from the cluster it targets.
pub(crate) fn scrub_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "1234 (we ird) name)) S 42 1234 1234 0 -1 4194560";
        assert_eq!(parse_stat(stat), Some(('S', 42)));
    }

    #[test]
    fn our_own_process_is_alive_and_a_child_is_listed() {
        assert!(process_alive(std::process::id()));
        let mut child = Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let pid = Pid::try_from(child.id()).expect("pid fits");
        let me = Pid::try_from(std::process::id()).expect("pid fits");
        assert!(children_of(me).contains(&pid));
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        assert!(!process_alive(child.id()));
    }

    #[test]
    fn refuses_group_signals() {
        assert!(signal(0, 0).is_err());
        assert!(signal(-1, 0).is_err());
    }
}
