//! Benchmarks (see `make bench`).
