//! Code shared by the measurement programs `e2e_load` and `tunnel`: the load generator
//! ([`load`]), latency statistics ([`stats`]), `/proc` readings ([`procfs`]), the file store
//! on disk ([`store`]), the etcd store's clusters and raw transaction ([`etcd`]) and the report
//! ([`report`]).
#![allow(dead_code)] // each program uses its own subset

pub mod etcd;
pub mod load;
pub mod procfs;
pub mod report;
pub mod stats;
pub mod store;
