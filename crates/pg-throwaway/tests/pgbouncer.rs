//! The PgBouncer kit against the installed `pgbouncer` (`.ci/run` installs it): its admin
//! console, a restart on the same port, a kill, and cleanup on drop. Without `pgbouncer`
//! the test prints why and returns.
#![allow(clippy::unwrap_used)]

use pg_throwaway::{process_alive, Cluster, ErrorKind, PgBouncer};

#[test]
fn admin_console_restart_kill_and_cleanup() {
    let cluster = Cluster::new().unwrap();
    let bouncer = match PgBouncer::builder().default_pool_size(3).start(&cluster) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::MissingBinaries => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(bouncer.url().contains(&format!(":{}/", bouncer.port())));
    let version = bouncer.admin("SHOW VERSION").unwrap();
    assert!(version.contains("PgBouncer"), "{version}");
    let config = bouncer.admin("SHOW CONFIG").unwrap();
    assert!(config.contains("pool_mode|transaction"), "{config}");
    assert!(config.contains("default_pool_size|3"), "{config}");
    bouncer.pause().unwrap();
    bouncer.resume().unwrap();
    bouncer.reconnect().unwrap();
    let unknown = bouncer.admin("NO SUCH COMMAND").unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::CommandFailed, "{unknown}");

    let first = bouncer.pid().unwrap();
    bouncer.restart().unwrap();
    let second = bouncer.pid().unwrap();
    assert_ne!(first, second);
    assert!(!process_alive(first));
    bouncer.kill().unwrap();
    assert_eq!(bouncer.pid(), None);
    assert!(!process_alive(second));
    assert!(bouncer.admin("SHOW VERSION").is_err(), "killed means gone");
    bouncer.start().unwrap();
    assert!(bouncer.admin("SHOW VERSION").unwrap().contains("PgBouncer"));
    let third = bouncer.pid().unwrap();
    drop(bouncer);
    assert!(!process_alive(third), "dropped means stopped");
}
