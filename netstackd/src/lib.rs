//! netstackd: the node daemon of netstack.
//!
//! Layers, from the bytes up: `stack` (per-pod forwarding decisions), `dataplane` (the workers
//! that move frames, run in an unprivileged child), `supervisor` (which keeps the pods' fds and
//! restarts the dataplane), `vhost` (the vhost-user-net protocol for VM pods), `daemon` (the control socket, the registry of attachments, metrics),
//! `node` (node mode: routes, masquerade, firewall, the Kubernetes watch) and `ctl` (the
//! operator's CLI). Packet formats, syscalls, netlink, namespaces and the control protocol live
//! in `netstack-core` and are re-exported here under their usual names; this crate has no
//! `unsafe` of its own.
#![forbid(unsafe_code)]

pub use netstack_core::{control, gso, mounts, netlink, netns, sys, version, wire};

pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod node;
pub mod stack;
pub mod supervisor;
pub mod vhost;
