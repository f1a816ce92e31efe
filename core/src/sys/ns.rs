//! Namespace-file ioctls (`NS_GET_NSTYPE`), used by `crate::netns` to tell a network namespace
//! file from any other file before calling `setns`.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sched::CloneFlags;

/// ioctl group of the nsfs ioctls (`NSIO` in `include/uapi/linux/nsfs.h`).
const NSIO: u8 = 0xb7;

mod ioctl {
    // NS_GET_NSTYPE = _IO(NSIO, 0x3): returns the CLONE_NEW* type of the namespace.
    nix::ioctl_none!(ns_get_nstype, super::NSIO, 0x3);
}

/// The namespace type (`CLONE_NEWNET`, `CLONE_NEWNS`, ...) of an open nsfs file.
///
/// Fails with `ENOTTY` (or `EINVAL`) when `fd` is not a namespace file.
pub fn ns_type(fd: BorrowedFd<'_>) -> nix::Result<CloneFlags> {
    // SAFETY: NS_GET_NSTYPE takes no argument and touches no user memory; `fd` is borrowed, so
    // it stays open for the duration of the call. On a file that is not nsfs the kernel
    // returns an error without side effects.
    let kind = unsafe { ioctl::ns_get_nstype(fd.as_raw_fd()) }?;
    Ok(CloneFlags::from_bits_retain(kind))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn ns_type_tells_net_from_mount_and_plain_files() {
        let net = File::open("/proc/self/ns/net").unwrap();
        assert_eq!(ns_type(net.as_fd()).unwrap(), CloneFlags::CLONE_NEWNET);
        let mnt = File::open("/proc/self/ns/mnt").unwrap();
        assert_eq!(ns_type(mnt.as_fd()).unwrap(), CloneFlags::CLONE_NEWNS);
        let plain = File::open("/proc/self/status").unwrap();
        assert!(ns_type(plain.as_fd()).is_err());
    }
}
