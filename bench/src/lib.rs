//! Side-by-side benchmarks against the Rust peers (echo, pgload) land here.
