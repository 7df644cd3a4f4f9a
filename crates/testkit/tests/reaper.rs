//! A test process that is SIGKILLed leaves no server and no directory behind.
//!
//! The test re-runs this binary as a child that starts a cluster (frozen, to make it hard)
//! plus the shared cluster, prints their locations, and sleeps; then it SIGKILLs the child.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "TESTKIT_REAPER_CHILD";

/// Kills (SIGKILL) and reaps the helper even if an assertion fails first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killed_process_is_cleaned_up_by_the_reaper() {
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "reaper_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut clusters: Vec<(PathBuf, u32)> = Vec::new();
    for line in BufReader::new(child.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // The harness prints "test reaper_child ... " without a newline first.
        if let Some(rest) = line.split_once("CLUSTER ").map(|(_, rest)| rest) {
            let (dir, pid) = rest.split_once(' ').unwrap();
            clusters.push((PathBuf::from(dir), pid.parse().unwrap()));
        }
        if line == "READY" {
            break;
        }
    }
    assert_eq!(clusters.len(), 2, "child did not report its clusters");
    for (dir, pid) in &clusters {
        assert!(dir.exists() && testkit::process_alive(*pid));
    }
    drop(child); // SIGKILL: no destructors, no atexit

    let deadline = Instant::now() + Duration::from_secs(30);
    for (dir, pid) in &clusters {
        while dir.exists() || testkit::process_alive(*pid) {
            assert!(
                Instant::now() < deadline,
                "{} / pid {pid} not reaped",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
#[ignore = "helper run by killed_process_is_cleaned_up_by_the_reaper"]
fn reaper_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let own = testkit::Cluster::new().unwrap();
    own.freeze().unwrap();
    let shared = testkit::shared_cluster();
    for c in [&own, shared] {
        println!(
            "CLUSTER {} {}",
            c.socket_dir().display(),
            c.postmaster_pid().unwrap()
        );
    }
    println!("READY");
    std::thread::sleep(Duration::from_secs(120));
}
