//! Benchmarks live in `micro/` (criterion) and in the scripts beside this file.
