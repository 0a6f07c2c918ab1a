//! Each process's flags (clap), over the file's section for it: a flag
//! given wins over the file, the file over the defaults.

pub mod cluster;
pub mod edge;
pub mod worker;
