//! `pgload`: a closed-loop PostgreSQL load generator; prints one JSON line per run.
//! See `bench::pgload` and bench/README.md.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match bench::pgload::Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match bench::pgload::run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgload: {e}");
            ExitCode::FAILURE
        }
    }
}
