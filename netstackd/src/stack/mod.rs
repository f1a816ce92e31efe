//! The per-pod stack: what happens to a frame between the link it came from and the link it
//! leaves by. `router` makes the decisions (validation, ARP, TTL, where to), `counters` keeps
//! the per-link tallies, `flow` the table of Service flows whose replies go back through the
//! node. Nothing here does I/O, so all of it is tested with plain buffers.

pub mod counters;
pub mod flow;
pub mod router;

pub use counters::{DropReason, LinkCounters};
pub use flow::{FlowStats, FlowTable};
pub use router::{PodPort, Router, Verdict, GATEWAY_MAC};
