//! What every netstack binary says of itself: the crate version and the commit it was built
//! from (see `build.rs`), for `--version`, `ctl status` and `netstack_build_info`.
#![forbid(unsafe_code)]

/// The release, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the build came from (12 hex digits; uncommitted changes are not marked), or
/// `unknown` when neither git nor `NETSTACK_COMMIT` could tell.
pub const COMMIT: &str = env!("NETSTACK_COMMIT");

/// `0.1.0 (commit 0123456789ab)`: the text `--version` prints after the program's name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NETSTACK_COMMIT"),
    ")"
);
