//! Device features by name (`ethtool -K`), through the `SIOCETHTOOL` ioctl: the feature names
//! come from the kernel (`ETH_SS_FEATURES`), so no bit numbers are hard-coded.
//!
//! veth mode needs it: a pod's veth offers GSO types a packet socket's virtio-net header
//! cannot describe (SCTP, GRE and UDP tunnels, fraglist). A frame of such a type reaches
//! netstackd as an error on the socket, or wedges a `TPACKET_V2` ring for good (the kernel
//! claims the ring frame before it fails to fill the header), or — a tunnel frame, which also
//! carries the TCP GSO bit — passes as a TCP super-frame it is not. With those features off on
//! the pod's end, its kernel segments such frames itself before they reach the veth.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::SysError;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// The GSO features of a veth that a packet socket's virtio-net header cannot carry.
pub const GSO_WITHOUT_VNET_TYPE: &[&str] = &[
    "tx-sctp-segmentation",
    "tx-gso-list",
    "tx-gre-segmentation",
    "tx-gre-csum-segmentation",
    "tx-ipxip4-segmentation",
    "tx-ipxip6-segmentation",
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
];

fn err(ifname: &str, op: &'static str, source: Errno) -> SysError {
    SysError::Tun {
        name: ifname.to_owned(),
        op,
        source,
    }
}

/// `struct ifreq` with `ifr_data` pointing at an ethtool command buffer.
#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Runs one ethtool command whose buffer (starting with the command number) is `buf`.
fn ethtool(sock: &OwnedFd, ifname: &str, buf: &mut [u32]) -> nix::Result<libc::c_int> {
    let mut req = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: buf.as_mut_ptr().cast(),
        _pad: [0; 16],
    };
    let n = ifname.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
    // SAFETY: `req` is an ifreq-shaped struct on our stack naming the device, whose data
    // pointer points at `buf`, a live buffer the size the command's own length fields declare
    // (the callers size it from them); the kernel reads and writes within it during the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    Errno::result(rc)
}

/// Turns off the features of device `ifname` (in the calling thread's network namespace)
/// named in `names`; names the device does not have are skipped. Returns the names it asked
/// the kernel to turn off.
pub fn disable_features(ifname: &str, names: &[&str]) -> Result<Vec<String>, SysError> {
    // SAFETY: socket(2) takes no pointers; a new descriptor only we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let fd = Errno::result(fd).map_err(|e| err(ifname, "socket(AF_INET)", e))?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    // struct ethtool_sset_info: cmd, reserved, u64 sset_mask, then one u32 per set asked for.
    let mut info = [0u32; 5];
    info[0] = ETHTOOL_GSSET_INFO;
    let mask = 1u64 << ETH_SS_FEATURES;
    info[2] = mask as u32;
    info[3] = (mask >> 32) as u32;
    ethtool(&sock, ifname, &mut info).map_err(|e| err(ifname, "ETHTOOL_GSSET_INFO", e))?;
    let count = info[4] as usize;
    if count == 0 || count > 4096 {
        return Err(err(
            ifname,
            "ETHTOOL_GSSET_INFO (feature count)",
            Errno::EINVAL,
        ));
    }

    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes.
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_FEATURES;
    strings[2] = count as u32;
    ethtool(&sock, ifname, &mut strings).map_err(|e| err(ifname, "ETHTOOL_GSTRINGS", e))?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut off = Vec::new();
    // struct ethtool_sfeatures: cmd, size (blocks), then per block of 32 features
    // {valid, requested}: valid bits say which to change, requested bits (0) their value.
    let blocks = count.div_ceil(32);
    let mut set = vec![0u32; 2 + 2 * blocks];
    set[0] = ETHTOOL_SFEATURES;
    set[1] = blocks as u32;
    for (bit, name) in bytes.chunks_exact(ETH_GSTRING_LEN).enumerate() {
        let end = name.iter().position(|&b| b == 0).unwrap_or(ETH_GSTRING_LEN);
        let name = String::from_utf8_lossy(&name[..end]);
        if names.contains(&name.as_ref()) {
            set[2 + 2 * (bit / 32)] |= 1 << (bit % 32);
            off.push(name.into_owned());
        }
    }
    if !off.is_empty() {
        // A positive answer (ETHTOOL_F_WISH) means some could not change: fixed on this device.
        ethtool(&sock, ifname, &mut set).map_err(|e| err(ifname, "ETHTOOL_SFEATURES", e))?;
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::netns::testing::in_fresh_netns;

    fn feature(ifname: &str, name: &str) -> String {
        let out = Command::new("ethtool")
            .args(["-k", ifname])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{name}: "))
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }

    #[test]
    #[ignore = "needs root"]
    fn turns_off_the_named_features_and_leaves_the_rest() {
        in_fresh_netns(|| {
            let status = Command::new("ip")
                .args([
                    "link", "add", "nst-et0", "type", "veth", "peer", "name", "nst-et1",
                ])
                .status()
                .unwrap();
            assert!(status.success());
            assert!(feature("nst-et0", "tx-sctp-segmentation").starts_with("on"));
            let off = disable_features("nst-et0", GSO_WITHOUT_VNET_TYPE).unwrap();
            assert_eq!(off.len(), GSO_WITHOUT_VNET_TYPE.len(), "{off:?}");
            for name in GSO_WITHOUT_VNET_TYPE {
                assert!(
                    feature("nst-et0", name).starts_with("off"),
                    "{name} still on"
                );
            }
            for name in [
                "tx-tcp-segmentation",
                "tx-tcp6-segmentation",
                "tx-udp-segmentation",
            ] {
                assert!(
                    feature("nst-et0", name).starts_with("on"),
                    "{name} turned off"
                );
            }
            assert!(feature("nst-et1", "tx-sctp-segmentation").starts_with("on"));
            assert!(disable_features("nst-none", GSO_WITHOUT_VNET_TYPE).is_err());
        });
    }
}
