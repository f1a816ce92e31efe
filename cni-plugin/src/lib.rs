//! The netstack CNI plugin (`type: "netstack"`).
//!
//! `skel` is the CNI execution protocol (environment, stdin, one JSON object on stdout, the
//! error object and its codes); `config` the network configuration; `ipam` the delegation to
//! the IPAM plugin; `result` the result types; `daemon` what the commands share (the
//! control connection, netstackd's refusals as CNI errors, the removal of the pod's link); one
//! module per command: `add`, `del`, `check`, `status` and `gc`, dispatched by the binary
//! (`main.rs`), `steps` timing their parts for `log`; `netavark` and `portmap`, the same
//! plugin for netavark (podman 5). Netns, netlink and TAP work go through `netstack-core`,
//! shared with the daemon and the hook.
#![forbid(unsafe_code)]

pub mod add;
pub mod check;
pub mod config;
pub mod daemon;
pub mod del;
pub mod error;
pub mod gc;
pub mod ipam;
pub mod log;
pub mod netavark;
pub mod portmap;
pub mod result;
pub mod skel;
pub mod status;
pub mod steps;

pub use error::CniError;

/// The CNI versions this plugin implements, exactly as VERSION reports them.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
