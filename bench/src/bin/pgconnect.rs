//! `pgconnect`: connection set-up time and client CPU, ioxide-pg against tokio-postgres;
//! prints one JSON line per run. See `bench::connect` and bench/README.md.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match bench::connect::ConnectArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match bench::connect::run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgconnect: {e}");
            ExitCode::FAILURE
        }
    }
}
