//! A watchdog that cleans a cluster up when the owning process dies without running `Drop`
//! (a `static` cluster, `std::process::exit`, SIGKILL, a timed-out CI job).
//!
//! The reaper is a tiny `sh` script started with the cluster. Its stdin is a pipe whose write
//! end only this process holds (std creates pipes `O_CLOEXEC`, so the postmaster and any
//! other program we spawn never inherit it). When this process goes away, for whatever reason,
//! the kernel closes the write end, the script's `read` sees EOF, and it stops the cluster and
//! deletes its directory.
//!
//! It signals only processes whose working directory is the cluster's unique data directory
//! (PostgreSQL `chdir`s there), so it cannot hit an unrelated process even if a pid was reused.

use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// $1 = the cluster's temp root (deleted at the end), $2 = its data directory.
const SCRIPT: &str = r#"
trap '' INT HUP TERM QUIT PIPE
while read -r _line; do :; done
root="$1"
data="$2"
# Drop already cleaned up (the usual case): nothing to scan.
[ -e "$root" ] || exit 0
procs() {
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/cwd" 2>/dev/null)" = "$data" ]; then echo "${p#/proc/}"; fi
  done
}
pids=$(procs)
if [ -n "$pids" ]; then
  kill -CONT $pids 2>/dev/null
  pm=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
  for p in $pids; do
    if [ "$p" = "$pm" ]; then kill -QUIT "$p" 2>/dev/null; fi
  done
  i=0
  while [ $i -lt 100 ] && [ -n "$pm" ] && [ "$(readlink "/proc/$pm/cwd" 2>/dev/null)" = "$data" ]; do
    sleep 0.1
    i=$((i + 1))
  done
  pids=$(procs)
  if [ -n "$pids" ]; then kill -KILL $pids 2>/dev/null; sleep 0.2; fi
fi
rm -rf "$root"
"#;

/// The running watchdog. Dropping it (or [`Reaper::dismiss`]) closes the pipe, which makes
/// the script clean up whatever is left.
#[derive(Debug)]
pub(crate) struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the watchdog for the cluster living in `root` with data directory `data_dir`
    /// (both absolute and canonical).
    pub(crate) fn spawn(root: &Path, data_dir: &Path) -> Result<Self> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("pg-throwaway-reaper")
            .arg(root)
            .arg(data_dir)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Own process group: a terminal Ctrl-C aimed at the owning process must not kill the
        // reaper before it has done its job.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("spawning the reaper (/bin/sh)", e))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Closes the pipe and waits (bounded) for the script to finish its sweep.
    pub(crate) fn dismiss(mut self) {
        self.finish(Duration::from_secs(15));
    }

    fn finish(&mut self, patience: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.finish(Duration::from_secs(15));
        }
    }
}
