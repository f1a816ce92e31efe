//! The only place with `unsafe`: TAP/TUN ioctls, readv/writev, packet sockets, ethtool features, fd passing,
//! namespace ioctls, shared memory with the dataplane child, the dataplane's restricted io_uring.
//!
//! Every system call that nix does not wrap safely sits here in a small safe function with a
//! `// SAFETY:` comment; the rest of netstackd only sees `OwnedFd`/`BorrowedFd` and typed
//! results.

pub mod ethtool;
pub mod fdpass;
pub mod ns;
pub mod packet;
pub mod process;
pub mod rlimit;
pub mod sched;
pub mod shm;
pub mod tap;
pub mod uring;

pub use tap::{
    open_queues, queue_info, read_frame, set_nonblocking, set_persist, set_vnet_hdr_len,
    write_frame, TunKind, TunQueues, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_USO4,
    TUN_F_USO6, VNET_HDR_LEN,
};

/// Longest interface name the kernel accepts, in bytes (`IFNAMSIZ` - 1 for the NUL).
pub const IFNAME_MAX_LEN: usize = 15;

/// Errors of the `sys` wrappers; each names the device or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The interface name would be refused by the kernel (or would let it pick one).
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A TUN/TAP device was asked for no queues or more than the kernel allows.
    #[error("TUN/TAP device {name}: {queues} queues requested, must be 1..={max}")]
    QueueCount {
        /// The device name.
        name: String,
        /// The count asked for.
        queues: usize,
        /// The kernel's limit (`MAX_TAP_QUEUES`).
        max: usize,
    },
    /// A system call on a packet socket failed.
    #[error("packet socket on ifindex {ifindex}: {op} failed: {source}")]
    Packet {
        /// The device the socket is for (0 when unknown).
        ifindex: u32,
        /// The operation, e.g. `PACKET_FANOUT`.
        op: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A system call on a TUN/TAP device or one of its queue fds failed.
    #[error("TUN/TAP device {name}: {op} failed: {source}")]
    Tun {
        /// The device name, or `fd N` when the fd could not be tied to a device.
        name: String,
        /// The operation, e.g. `TUNSETIFF`.
        op: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// Why the kernel would refuse `name` as an interface name (its `dev_valid_name` rules), or
/// `None` when it is valid. An empty name is refused too: TUNSETIFF would pick one itself.
///
/// The kernel tests bytes with its own `isspace`, which is true for `\t \n \v \f \r`, space
/// and 0xa0 (Latin-1's no-break space, so also any UTF-8 character with an 0xa0 byte); this
/// refuses those and, stricter, every Unicode whitespace character too.
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    // The kernel's isspace (lib/ctype.c): \t \n \v \f \r, space, 0xa0.
    let kernel_space = |b: u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0);
    if name.is_empty() {
        Some("empty")
    } else if name.len() > IFNAME_MAX_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || kernel_space(b))
        || name.chars().any(char::is_whitespace)
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    }
}

/// Checks `name` with [`ifname_problem`] and turns a problem into [`SysError::InvalidName`].
pub fn validate_ifname(name: &str) -> Result<(), SysError> {
    match ifname_problem(name) {
        None => Ok(()),
        Some(reason) => Err(SysError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_rules_match_the_kernel() {
        // (name, valid?)
        let cases = [
            ("eth0", true),
            ("nst-0123456789a", true),   // exactly 15 bytes
            ("nst-0123456789ab", false), // 16 bytes
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a:b", false),
            ("a b", false),
            ("a\tb", false),
        ];
        for (name, valid) in cases {
            assert_eq!(ifname_problem(name).is_none(), valid, "{name:?}");
            assert_eq!(validate_ifname(name).is_ok(), valid, "{name:?}");
        }
    }
}
