//! netstack-core: what the CNI plugin, the OCI hook and the node daemon share.
//!
//! Layers, from the bytes up: `wire` (packet formats, no I/O), `gso` (segmenting TSO/USO frames
//! in software), `sys` (the only module with `unsafe`: TAP/TUN ioctls, packet sockets, fd
//! passing, namespaces by fd), `netns` and `netlink` (namespace and rtnetlink work), `mounts`
//! (the bind mounts that name namespaces), `control` (the socket protocol between the plugin and
//! netstackd) and `version` (what every binary says of itself).
//!
//! Every module but `sys` forbids `unsafe` (its own `#![forbid(unsafe_code)]`), so the compiler,
//! not a convention, keeps the unsafe code in one place.

pub mod control;
pub mod gso;
pub mod mounts;
pub mod netlink;
pub mod netns;
pub mod sys;
pub mod version;
pub mod wire;
