//! TAP/TUN queues with a 10-byte virtio-net header.
//!
//! [`open_queues`] creates (or re-attaches to) a multi-queue TAP or TUN device with
//! `IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE`, sets the virtio-net header to
//! [`VNET_HDR_LEN`] bytes and negotiates offloads; [`read_frame`] and [`write_frame`] move one
//! frame per system call with the header kept beside the frame in its own iovec. The header's
//! fields are interpreted elsewhere (`crate::wire`); here it is 10 opaque bytes. The same two
//! functions serve the AF_PACKET sockets of veth mode (`super::packet`), whose header is the
//! same 10 bytes.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{self, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use nix::sys::uio::{readv, writev};

use super::{validate_ifname, SysError};

/// Bytes of virtio-net header in front of every frame (`struct virtio_net_hdr`, without
/// `num_buffers`), set on every device with `TUNSETVNETHDRSZ`: the size a packet socket with
/// `PACKET_VNET_HDR` uses, so TAP queues and packet sockets carry identical headers.
pub const VNET_HDR_LEN: usize = crate::wire::vnet::VNET_HDR_LEN;

/// Transmit queue length for every TAP and TUN netstack creates (the kernel's default for tun
/// is 500 frames per queue): room for a burst while a worker is busy with another fd.
pub const TXQUEUELEN: u32 = 2048;

/// `TUNSETOFFLOAD`: we accept frames with a partial checksum (`NEEDS_CSUM`).
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUNSETOFFLOAD`: we accept TCP-over-IPv4 GSO frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUNSETOFFLOAD`: we accept TCP-over-IPv6 GSO frames.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUNSETOFFLOAD`: we accept TSO frames with ECN (CWR) set.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUNSETOFFLOAD`: we accept UDP-over-IPv4 segmentation offload frames (kernel ≥ 6.2).
pub const TUN_F_USO4: u32 = 0x20;
/// `TUNSETOFFLOAD`: we accept UDP-over-IPv6 segmentation offload frames (kernel ≥ 6.2).
pub const TUN_F_USO6: u32 = 0x40;

/// The offload sets [`open_queues`] tries, richest first; each is tried only if the previous
/// one was refused with `EINVAL` (unknown bit or TSO without CSUM).
pub const OFFLOAD_PROBE_ORDER: [u32; 4] = [
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
    0,
];

/// `TUNSETIFF`/`TUNGETIFF` flag: layer-3 device (IP packets, no Ethernet header).
pub const IFF_TUN: i16 = 0x0001;
/// `TUNSETIFF`/`TUNGETIFF` flag: layer-2 device (Ethernet frames).
pub const IFF_TAP: i16 = 0x0002;
/// `TUNSETIFF`/`TUNGETIFF` flag: persistent device (read-only in `TUNGETIFF`).
pub const IFF_PERSIST: i16 = 0x0800;
/// `TUNSETIFF`/`TUNGETIFF` flag: multi-queue device, one fd per queue.
pub const IFF_MULTI_QUEUE: i16 = 0x0100;
/// `TUNSETIFF`/`TUNGETIFF` flag: no 4-byte packet-information prefix.
pub const IFF_NO_PI: i16 = 0x1000;
/// `TUNSETIFF`/`TUNGETIFF` flag: every frame carries a virtio-net header.
pub const IFF_VNET_HDR: i16 = 0x4000;

/// The kernel's limit on queues per device (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// The largest MTU a TAP takes: tun's `MAX_MTU` (65535) less the 14-byte Ethernet header
/// (`dev->max_mtu = MAX_MTU - dev->hard_header_len`); a larger one fails with `EINVAL`.
pub const TAP_MAX_MTU: u32 = 65521;

const TUN_PATH: &str = "/dev/net/tun";

/// Which kind of TUN/TAP device to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunKind {
    /// Layer 2: Ethernet frames (a pod's interface).
    Tap,
    /// Layer 3: IP packets (the node's uplink).
    Tun,
}

impl TunKind {
    fn flag(self) -> i16 {
        match self {
            TunKind::Tap => IFF_TAP,
            TunKind::Tun => IFF_TUN,
        }
    }
}

/// The queues of one TUN/TAP device, as opened by [`open_queues`].
#[derive(Debug)]
pub struct TunQueues {
    /// The device name.
    pub name: String,
    /// One non-blocking, close-on-exec fd per queue.
    pub fds: Vec<OwnedFd>,
    /// The `TUN_F_*` offloads the kernel accepted (a member of [`OFFLOAD_PROBE_ORDER`]).
    pub offloads: u32,
    /// The device's ifindex in the namespace it was opened in.
    pub ifindex: u32,
}

/// `struct ifreq` as TUNSETIFF/TUNGETIFF use it: the name, then `ifr_flags` at the start of
/// the union. Padded to at least `sizeof(struct ifreq)` because the kernel copies that much.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    pad: [u8; 22],
}

const _: () = assert!(size_of::<IfReq>() >= size_of::<libc::ifreq>());

impl IfReq {
    fn zeroed() -> Self {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            pad: [0; 22],
        }
    }

    /// `name` must have passed `validate_ifname` (≤ 15 bytes, so the NUL fits).
    fn new(name: &str, flags: i16) -> Self {
        let mut req = Self::zeroed();
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.flags = flags;
        req
    }

    fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

mod ioctl {
    // TUNSETIFF reads the ifreq and writes it back (the final name), hence read-write.
    nix::ioctl_readwrite_bad!(tun_set_iff, libc::TUNSETIFF, super::IfReq);
    nix::ioctl_read_bad!(tun_get_iff, libc::TUNGETIFF, super::IfReq);
    nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_sz, libc::TUNSETVNETHDRSZ, libc::c_int);
}

fn tun_set_iff(fd: BorrowedFd<'_>, req: &mut IfReq) -> nix::Result<()> {
    // SAFETY: `req` is a live, exclusively borrowed IfReq at least as large as `struct ifreq`,
    // which is all TUNSETIFF reads and writes back; `fd` is borrowed, so it stays open for the
    // call.
    unsafe { ioctl::tun_set_iff(fd.as_raw_fd(), req) }.map(drop)
}

fn tun_get_iff(fd: BorrowedFd<'_>, req: &mut IfReq) -> nix::Result<()> {
    // SAFETY: TUNGETIFF writes at most `sizeof(struct ifreq)` bytes into `req`, which is a live,
    // exclusively borrowed IfReq at least that large; `fd` stays open for the call. On a fd
    // that is not a TUN/TAP queue the kernel fails without writing.
    unsafe { ioctl::tun_get_iff(fd.as_raw_fd(), req) }.map(drop)
}

fn tun_set_vnet_hdr_sz(fd: BorrowedFd<'_>, len: libc::c_int) -> nix::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at `len` on our
    // stack for the duration of the call; `fd` stays open for the call.
    unsafe { ioctl::tun_set_vnet_hdr_sz(fd.as_raw_fd(), &len) }.map(drop)
}

/// `ioctl(fd, request, value)` for the TUN ioctls that take their argument by value as an
/// `unsigned long`. nix's `ioctl_write_int_bad!` passes a C `int`, which leaves the upper half
/// of the variadic argument unspecified, and `ioctl_write_int!` would encode a different
/// request number, hence raw libc.
fn tun_ioctl_value(
    fd: BorrowedFd<'_>,
    request: libc::Ioctl,
    value: libc::c_ulong,
) -> nix::Result<()> {
    // SAFETY: the requests passed here (TUNSETOFFLOAD, TUNSETPERSIST) take a plain integer and
    // dereference no pointer; `fd` is borrowed, so it stays open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, value) };
    Errno::result(rc).map(drop)
}

fn tun_err(name: &str, op: &'static str, source: nix::Error) -> SysError {
    SysError::Tun {
        name: name.to_owned(),
        op,
        source,
    }
}

/// Names a queue fd for an error message: its device name if TUNGETIFF works, else `fd N`.
fn fd_label(fd: BorrowedFd<'_>) -> String {
    let mut req = IfReq::zeroed();
    match tun_get_iff(fd, &mut req) {
        Ok(()) => req.name(),
        Err(_) => format!("fd {}", fd.as_raw_fd()),
    }
}

/// Opens `queues` queues of the TUN/TAP device `name`, creating it if it does not exist.
///
/// Each queue is `/dev/net/tun` opened `O_RDWR | O_CLOEXEC | O_NONBLOCK` and bound with
/// `TUNSETIFF` (`IFF_TAP` or `IFF_TUN`, plus `IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE`). The
/// device then gets a [`VNET_HDR_LEN`]-byte header and the richest offload set of
/// [`OFFLOAD_PROBE_ORDER`] the kernel accepts, and is made persistent if `persist`.
///
/// The device is created in the network namespace of the *calling thread*; use
/// `crate::netns::run_in_netns` to create it elsewhere. If a device of that name already
/// exists with the same kind and multi-queue flag, the fds attach to it as extra queues: that
/// is how netstackd reattaches to a persistent device after a restart. A non-persistent device
/// disappears when its last queue fd is closed.
pub fn open_queues(
    name: &str,
    kind: TunKind,
    queues: usize,
    persist: bool,
) -> Result<TunQueues, SysError> {
    validate_ifname(name)?;
    if queues == 0 || queues > MAX_QUEUES {
        return Err(SysError::QueueCount {
            name: name.to_owned(),
            queues,
            max: MAX_QUEUES,
        });
    }
    let flags = kind.flag() | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    let mut fds = Vec::with_capacity(queues);
    for _ in 0..queues {
        let fd = fcntl::open(
            TUN_PATH,
            OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| tun_err(name, "open /dev/net/tun", e))?;
        let mut req = IfReq::new(name, flags);
        tun_set_iff(fd.as_fd(), &mut req).map_err(|e| tun_err(name, "TUNSETIFF", e))?;
        fds.push(fd);
    }
    // Header size, offloads and persistence are per device, so the first queue carries them.
    let first = fds[0].as_fd();
    tun_set_vnet_hdr_sz(first, VNET_HDR_LEN as libc::c_int)
        .map_err(|e| tun_err(name, "TUNSETVNETHDRSZ", e))?;
    let offloads = negotiate_offloads(first).map_err(|e| tun_err(name, "TUNSETOFFLOAD", e))?;
    if persist {
        tun_ioctl_value(first, libc::TUNSETPERSIST, 1)
            .map_err(|e| tun_err(name, "TUNSETPERSIST", e))?;
    }
    let ifindex =
        nix::net::if_::if_nametoindex(name).map_err(|e| tun_err(name, "if_nametoindex", e))?;
    Ok(TunQueues {
        name: name.to_owned(),
        fds,
        offloads,
        ifindex,
    })
}

/// Tries [`OFFLOAD_PROBE_ORDER`] in turn, moving on only when the kernel says `EINVAL`.
fn negotiate_offloads(fd: BorrowedFd<'_>) -> nix::Result<u32> {
    for flags in OFFLOAD_PROBE_ORDER {
        match tun_ioctl_value(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) {
            Ok(()) => return Ok(flags),
            Err(Errno::EINVAL) if flags != 0 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EINVAL)
}

/// Makes the device behind `fd` persistent (it outlives its last queue fd) or not.
pub fn set_persist(fd: BorrowedFd<'_>, on: bool) -> Result<(), SysError> {
    tun_ioctl_value(fd, libc::TUNSETPERSIST, libc::c_ulong::from(on))
        .map_err(|e| tun_err(&fd_label(fd), "TUNSETPERSIST", e))
}

/// The device name and `TUNGETIFF` flags (`IFF_TAP`, `IFF_VNET_HDR`, `IFF_PERSIST`, ...) of a
/// queue fd. netstackd uses it to check the fds a plugin hands over.
pub fn queue_info(fd: BorrowedFd<'_>) -> Result<(String, i16), SysError> {
    let mut req = IfReq::zeroed();
    tun_get_iff(fd, &mut req)
        .map_err(|e| tun_err(&format!("fd {}", fd.as_raw_fd()), "TUNGETIFF", e))?;
    Ok((req.name(), req.flags))
}

/// Sets the device's virtio-net header length to [`VNET_HDR_LEN`].
pub fn set_vnet_hdr_len(fd: BorrowedFd<'_>) -> Result<(), SysError> {
    tun_set_vnet_hdr_sz(fd, VNET_HDR_LEN as libc::c_int)
        .map_err(|e| tun_err(&fd_label(fd), "TUNSETVNETHDRSZ", e))
}

/// Puts `fd` in non-blocking mode (reads and writes then fail with `WouldBlock`).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), SysError> {
    let flags = fcntl::fcntl(fd, FcntlArg::F_GETFL)
        .map_err(|e| tun_err(&fd_label(fd), "fcntl(F_GETFL)", e))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl::fcntl(fd, FcntlArg::F_SETFL(flags))
        .map_err(|e| tun_err(&fd_label(fd), "fcntl(F_SETFL, O_NONBLOCK)", e))
        .map(drop)
}

/// What one receive brought in, as every reader reports it (a TAP or TUN queue here, a
/// packet socket's `recvmmsg` or receive ring in `super::packet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxFrame {
    /// A whole frame of this many bytes after its virtio-net header, all in the buffer.
    Whole(usize),
    /// Not a frame: shorter than the virtio-net header (or, in a ring, placed outside its
    /// slot). Dropped as `malformed`.
    Malformed,
    /// Longer than the buffer it was read into: the kernel cut it short. Dropped as
    /// `oversize`.
    Oversize,
}

/// The length decision of [`read_frame`], on its own: `read` is what `readv` returned
/// (header included), `buf_len` the size of the frame buffer after the header, which must be
/// larger than any frame the device emits.
///
/// A frame longer than the buffer is cut to fit it, and nothing says so plainly: Linux's
/// `tun_put_user` returns the whole frame's length (it does not check the copy's result) and
/// `read`/`readv` (`tun_chr_read_iter`) then clamp that to the buffer. So a read that fills
/// the buffer to its last byte, or reports more than the buffer holds (another kernel or read
/// path), is a cut frame: [`RxFrame::Oversize`], never bytes to use.
pub fn tap_rx_len(read: usize, buf_len: usize) -> RxFrame {
    match read.checked_sub(VNET_HDR_LEN) {
        None => RxFrame::Malformed,
        Some(len) if len >= buf_len => RxFrame::Oversize,
        Some(len) => RxFrame::Whole(len),
    }
}

/// Reads one frame: its virtio-net header into `vnet` and the frame into `frame`, with one
/// `readv`, and says what came ([`tap_rx_len`]): `Whole(len)` is the frame length, not
/// counting the header.
///
/// A frame that does not fit `frame` is cut short by the kernel and reported as
/// [`RxFrame::Oversize`] (see [`tap_rx_len`]), so `frame` must be larger than the largest
/// frame the device can emit (64 KiB plus headers once TSO is negotiated): a frame that
/// fills it exactly counts as cut. An empty non-blocking queue gives `ErrorKind::WouldBlock`. On a packet socket
/// `readv` cannot tell a cut frame (it returns the bytes copied): read those with
/// `super::packet::recv_frames`. Allocates nothing.
pub fn read_frame(
    fd: BorrowedFd<'_>,
    vnet: &mut [u8; VNET_HDR_LEN],
    frame: &mut [u8],
) -> io::Result<RxFrame> {
    let buf_len = frame.len();
    let mut iov = [IoSliceMut::new(vnet), IoSliceMut::new(frame)];
    let n = readv(fd, &mut iov)?;
    Ok(tap_rx_len(n, buf_len))
}

/// Writes one frame with its virtio-net header in front, with one `writev`.
///
/// A full queue gives `ErrorKind::WouldBlock`; a short write (which TUN/TAP never does) gives
/// `ErrorKind::WriteZero`. Allocates nothing.
pub fn write_frame(fd: BorrowedFd<'_>, vnet: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<()> {
    let iov = [IoSlice::new(vnet), IoSlice::new(frame)];
    let n = writev(fd, &iov)?;
    if n == VNET_HDR_LEN + frame.len() {
        Ok(())
    } else {
        Err(io::ErrorKind::WriteZero.into())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::{Duration, Instant};

    use ipnet::IpNet;

    use super::*;
    use crate::netlink::Netlink;
    use crate::netns::testing::in_fresh_netns;

    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const PEER_IP: [u8; 4] = [10, 99, 0, 2];
    const OUR_IP: [u8; 4] = [10, 99, 0, 1];
    const QUEUE_FLAGS: i16 = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;

    #[test]
    fn flag_constants_match_libc() {
        assert_eq!(i32::from(IFF_TUN), libc::IFF_TUN);
        assert_eq!(i32::from(IFF_TAP), libc::IFF_TAP);
        assert_eq!(i32::from(IFF_PERSIST), libc::IFF_PERSIST);
        assert_eq!(i32::from(IFF_MULTI_QUEUE), libc::IFF_MULTI_QUEUE);
        assert_eq!(i32::from(IFF_NO_PI), libc::IFF_NO_PI);
        assert_eq!(i32::from(IFF_VNET_HDR), libc::IFF_VNET_HDR);
        assert_eq!(TUN_F_CSUM, libc::TUN_F_CSUM);
        assert_eq!(TUN_F_TSO4, libc::TUN_F_TSO4);
        assert_eq!(TUN_F_TSO6, libc::TUN_F_TSO6);
        assert_eq!(TUN_F_TSO_ECN, libc::TUN_F_TSO_ECN);
        assert_eq!(TUN_F_USO4, libc::TUN_F_USO4);
        assert_eq!(TUN_F_USO6, libc::TUN_F_USO6);
    }

    #[test]
    fn tap_rx_len_drops_what_does_not_fit() {
        // (readv's result, frame buffer, decision)
        let rows = [
            (0, 100, RxFrame::Malformed),
            (VNET_HDR_LEN - 1, 100, RxFrame::Malformed),
            (VNET_HDR_LEN, 100, RxFrame::Whole(0)),
            (VNET_HDR_LEN + 99, 100, RxFrame::Whole(99)),
            // A full buffer: what read/readv report for a frame they cut to fit.
            (VNET_HDR_LEN + 100, 100, RxFrame::Oversize),
            (VNET_HDR_LEN + 101, 100, RxFrame::Oversize),
            (VNET_HDR_LEN, 0, RxFrame::Oversize),
            (usize::MAX, 65536, RxFrame::Oversize),
        ];
        for (read, buf, want) in rows {
            assert_eq!(tap_rx_len(read, buf), want, "read {read}, buffer {buf}");
        }
    }

    #[test]
    fn open_queues_rejects_bad_names_and_counts() {
        // (name, queues, what it covers)
        let cases = [
            ("tap-0123456789ab", 1, "16-byte name"),
            ("", 1, "empty name"),
            ("a/b", 1, "slash in name"),
            ("nst-ok", 0, "no queues"),
            ("nst-ok", MAX_QUEUES + 1, "too many queues"),
        ];
        for (name, queues, what) in cases {
            let err = open_queues(name, TunKind::Tap, queues, false).unwrap_err();
            assert!(
                matches!(
                    err,
                    SysError::InvalidName { .. } | SysError::QueueCount { .. }
                ),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn queue_info_rejects_a_non_tun_fd() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = queue_info(file.as_fd()).unwrap_err();
        assert!(err.to_string().contains("TUNGETIFF"), "{err}");
    }

    /// rx_packets of `dev` as the calling thread's netns counts them.
    fn rx_packets(dev: &str) -> u64 {
        // /proc/self/net follows the main thread's netns; thread-self follows ours.
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        for line in text.lines() {
            if let Some((name, stats)) = line.split_once(':') {
                if name.trim() == dev {
                    return stats.split_whitespace().nth(1).unwrap().parse().unwrap();
                }
            }
        }
        panic!("{dev} not in /proc/thread-self/net/dev");
    }

    /// An Ethernet ARP frame (no FCS).
    fn arp_frame(
        op: u16,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        sender_ip: [u8; 4],
        target_mac: [u8; 6],
        target_ip: [u8; 4],
    ) -> Vec<u8> {
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x06]); // ARP
        f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]); // Ethernet/IPv4
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&sender_ip);
        f.extend_from_slice(&target_mac);
        f.extend_from_slice(&target_ip);
        f
    }

    /// Reads frames from all `fds` until `want` accepts one or 3 s pass; returns the vnet
    /// header and frame of the match. Other frames (IPv6 ND, MLD) are skipped.
    fn read_until(fds: &[OwnedFd], want: impl Fn(&[u8]) -> bool) -> ([u8; VNET_HDR_LEN], Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = vec![0u8; 65536 + 256];
        while Instant::now() < deadline {
            for fd in fds {
                let mut vnet = [0xa5u8; VNET_HDR_LEN];
                match read_frame(fd.as_fd(), &mut vnet, &mut buf) {
                    Ok(RxFrame::Whole(n)) if want(&buf[..n]) => return (vnet, buf[..n].to_vec()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("read_frame: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no matching frame within 3 s");
    }

    fn is_arp(frame: &[u8], op: u16, target_ip: [u8; 4]) -> bool {
        frame.len() >= 42
            && frame[12..14] == [0x08, 0x06]
            && frame[20..22] == op.to_be_bytes()
            && frame[38..42] == target_ip
    }

    #[test]
    #[ignore = "needs root"]
    fn tap_queues_carry_frames_both_ways() {
        in_fresh_netns(|| {
            let name = "nst-tap0";
            let tap = open_queues(name, TunKind::Tap, 2, false).unwrap();
            assert_eq!(tap.fds.len(), 2);
            assert_eq!(tap.name, name);
            let want = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            assert_eq!(tap.offloads & want, want, "offloads {:#x}", tap.offloads);
            assert!(OFFLOAD_PROBE_ORDER.contains(&tap.offloads));
            for fd in &tap.fds {
                let (qname, flags) = queue_info(fd.as_fd()).unwrap();
                assert_eq!(qname, name);
                assert_eq!(flags & QUEUE_FLAGS, QUEUE_FLAGS, "flags {flags:#x}");
                assert_eq!(flags & IFF_PERSIST, 0);
            }

            // An empty non-blocking queue reports WouldBlock.
            let mut vnet = [0u8; VNET_HDR_LEN];
            let mut buf = [0u8; 2048];
            let err = read_frame(tap.fds[1].as_fd(), &mut vnet, &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

            let nl = Netlink::new().unwrap();
            nl.set_link(name, None, Some(1500), true).unwrap();
            assert_eq!(nl.link_index(name).unwrap(), Some(tap.ifindex));
            let info = nl.link_info(name).unwrap().unwrap();
            assert_eq!(info.kind.as_deref(), Some("tun"));
            assert!(info.up);
            let our_mac = info.mac.unwrap();
            nl.add_address(tap.ifindex, "10.99.0.1/24".parse::<IpNet>().unwrap())
                .unwrap();
            nl.add_address(tap.ifindex, "fe80::1/64".parse::<IpNet>().unwrap())
                .unwrap();

            // Frame in: "who has 10.99.0.1, tell 10.99.0.2" counts as received by the device...
            let before = rx_packets(name);
            let request = arp_frame(1, [0xff; 6], PEER_MAC, PEER_IP, [0; 6], OUR_IP);
            write_frame(tap.fds[0].as_fd(), &[0; VNET_HDR_LEN], &request).unwrap();
            assert_eq!(rx_packets(name), before + 1);

            // ...and the kernel's reply comes out of one of the queues with a zeroed header.
            let (vnet, reply) = read_until(&tap.fds, |f| is_arp(f, 2, PEER_IP));
            assert_eq!(vnet, [0; VNET_HDR_LEN]);
            assert_eq!(reply[..6], PEER_MAC);
            assert_eq!(reply[6..12], our_mac);
            assert_eq!(reply[28..32], OUR_IP);

            // A datagram to an unknown neighbour makes the kernel ask for it.
            let sock = UdpSocket::bind((Ipv4Addr::new(10, 99, 0, 1), 0)).unwrap();
            sock.send_to(b"hello", (Ipv4Addr::new(10, 99, 0, 3), 9))
                .unwrap();
            let (_, request) = read_until(&tap.fds, |f| is_arp(f, 1, [10, 99, 0, 3]));
            assert_eq!(request[..6], [0xff; 6]);
            assert_eq!(request[28..32], OUR_IP);
        });
    }

    /// The kernel side of `tap_rx_len`: a TAP frame longer than the buffer is cut to fit it,
    /// and `readv` reports a full buffer (`tun_chr_read_iter` clamps the whole frame's length
    /// that `tun_put_user` returns), nothing more: the old reading of that as a whole frame
    /// forwarded the first bytes of a cut frame.
    #[test]
    #[ignore = "needs root"]
    fn a_frame_longer_than_the_buffer_is_oversize() {
        in_fresh_netns(|| {
            let name = "nst-tap2";
            let tap = open_queues(name, TunKind::Tap, 1, false).unwrap();
            let nl = Netlink::new().unwrap();
            nl.set_link(name, None, Some(1500), true).unwrap();
            nl.add_address(tap.ifindex, "10.99.0.1/24".parse::<IpNet>().unwrap())
                .unwrap();
            let status = std::process::Command::new("ip")
                .args([
                    "neigh",
                    "replace",
                    "10.99.0.2",
                    "lladdr",
                    "02:00:00:00:00:02",
                ])
                .args(["dev", name, "nud", "permanent"])
                .status()
                .unwrap();
            assert!(status.success());
            let sock = UdpSocket::bind((Ipv4Addr::new(10, 99, 0, 1), 0)).unwrap();
            let fd = tap.fds[0].as_fd();
            let peer = (Ipv4Addr::new(10, 99, 0, 2), 9);
            // Reads until an IPv4 frame comes (the kernel's own IPv6 frames are skipped):
            // what readv returned and what the frame buffer holds.
            let next_ipv4 = |small: &mut [u8]| -> usize {
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    let mut vnet = [0u8; VNET_HDR_LEN];
                    let mut iov = [IoSliceMut::new(&mut vnet), IoSliceMut::new(small)];
                    match readv(fd, &mut iov) {
                        Ok(n) if n >= VNET_HDR_LEN + 14 && small[12..14] == [8, 0] => return n,
                        Ok(_) => {}
                        Err(Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(10)),
                        Err(e) => panic!("readv: {e}"),
                    }
                }
                panic!("no IPv4 frame within 3 s");
            };
            let mut small = [0u8; 200];

            // 1042 bytes into 200: the start is there, readv says 200 and no more.
            sock.send_to(&[7u8; 1000], peer).unwrap();
            let n = next_ipv4(&mut small);
            assert_eq!(small[..6], PEER_MAC, "the start of the frame");
            assert_eq!(n, VNET_HDR_LEN + small.len(), "readv reports a full buffer");
            assert_eq!(tap_rx_len(n, small.len()), RxFrame::Oversize);
            // A frame that fits is read whole, with its length.
            sock.send_to(&[8u8; 100], peer).unwrap();
            let n = next_ipv4(&mut small);
            assert_eq!(n, VNET_HDR_LEN + 14 + 20 + 8 + 100);
            assert_eq!(tap_rx_len(n, small.len()), RxFrame::Whole(142));

            // read_frame says the same itself.
            sock.send_to(&[7u8; 1000], peer).unwrap();
            sock.send_to(&[8u8; 100], peer).unwrap();
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(3);
            while got.len() < 2 && Instant::now() < deadline {
                let mut vnet = [0u8; VNET_HDR_LEN];
                match read_frame(fd, &mut vnet, &mut small) {
                    Ok(RxFrame::Whole(n)) if small[12..14] == [8, 0] => got.push(RxFrame::Whole(n)),
                    Ok(RxFrame::Whole(_)) => {}
                    Ok(other) => got.push(other),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("read_frame: {e}"),
                }
            }
            assert_eq!(got, [RxFrame::Oversize, RxFrame::Whole(142)]);
        });
    }

    /// TAP_MAX_MTU is the kernel's: the plugin refuses larger MTUs on its strength.
    #[test]
    #[ignore = "needs root"]
    fn a_tap_takes_an_mtu_up_to_tap_max_mtu() {
        in_fresh_netns(|| {
            let _tap = open_queues("nst-tap3", TunKind::Tap, 1, false).unwrap();
            let nl = Netlink::new().unwrap();
            nl.set_link("nst-tap3", None, Some(TAP_MAX_MTU), false)
                .unwrap();
            assert!(nl
                .set_link("nst-tap3", None, Some(TAP_MAX_MTU + 1), false)
                .is_err());
        });
    }

    #[test]
    #[ignore = "needs root"]
    fn persistent_tap_survives_its_fds_and_reattaches() {
        in_fresh_netns(|| {
            let name = "nst-tap1";
            let nl = Netlink::new().unwrap();
            let first = open_queues(name, TunKind::Tap, 2, true).unwrap();
            let (_, flags) = queue_info(first.fds[0].as_fd()).unwrap();
            assert_ne!(flags & IFF_PERSIST, 0);
            let index = first.ifindex;
            drop(first);
            assert_eq!(
                nl.link_index(name).unwrap(),
                Some(index),
                "persistent device gone"
            );

            // Reopening attaches to the same device.
            let again = open_queues(name, TunKind::Tap, 2, false).unwrap();
            assert_eq!(again.ifindex, index);
            assert_eq!(queue_info(again.fds[1].as_fd()).unwrap().0, name);

            // A TUN of the same name is refused: the flags do not match.
            assert!(open_queues(name, TunKind::Tun, 1, false).is_err());

            set_persist(again.fds[0].as_fd(), false).unwrap();
            let (_, flags) = queue_info(again.fds[0].as_fd()).unwrap();
            assert_eq!(flags & IFF_PERSIST, 0);
            drop(again);
            assert_eq!(
                nl.link_index(name).unwrap(),
                None,
                "device outlived its last fd"
            );

            // A persistent device with no fds left is removed over rtnetlink (CNI DEL).
            drop(open_queues(name, TunKind::Tap, 1, true).unwrap());
            assert!(nl.del_link(name).unwrap());
            assert_eq!(nl.link_index(name).unwrap(), None);
        });
    }

    #[test]
    #[ignore = "needs root"]
    fn tun_queue_reports_tun_flags_and_takes_helpers() {
        in_fresh_netns(|| {
            let tun = open_queues("nst-tun0", TunKind::Tun, 1, false).unwrap();
            let fd = tun.fds[0].as_fd();
            let (name, flags) = queue_info(fd).unwrap();
            assert_eq!(name, "nst-tun0");
            assert_eq!(flags & (IFF_TUN | IFF_TAP), IFF_TUN);
            assert_ne!(flags & IFF_VNET_HDR, 0);
            set_vnet_hdr_len(fd).unwrap();
            set_nonblocking(fd).unwrap();
            let fl = OFlag::from_bits_retain(fcntl::fcntl(fd, FcntlArg::F_GETFL).unwrap());
            assert!(fl.contains(OFlag::O_NONBLOCK));
        });
    }
}
