//! `pgbulk`: the bulk paths of issue 19 (typed reads, bulk insert, LISTEN/NOTIFY), ioxide-pg
//! against tokio-postgres. One run prints one JSON line; `--compare` runs every driver of
//! every workload as a child, interleaved over rounds, prints the medians and writes a
//! results JSON. See `bench::bulk` and bench/README.md.

use bench::bulk::{compare, BulkArgs, CompareArgs};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--compare") {
        return match CompareArgs::parse(args.into_iter()).and_then(|c| compare(&c)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgbulk: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match BulkArgs::parse(args.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match bench::bulk::run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgbulk: {e}");
            ExitCode::FAILURE
        }
    }
}
