//! netstackd: the node daemon of netstack and the library its CNI plugin and hook share.
//!
//! Layers, from the bytes up: `wire` (packet formats, no I/O), `sys` (the only place with
//! `unsafe`: TAP/TUN ioctls, readv/writev), `netns` and `netlink` (namespace and rtnetlink
//! work), `stack` (per-pod forwarding decisions), `dataplane` (the workers that move frames),
//! `control` (the socket protocol the plugin speaks) and `daemon` (putting it all together).

pub mod control;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod gso;
pub mod mounts;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod stack;
pub mod supervisor;
pub mod sys;
pub mod version;
pub mod wire;
