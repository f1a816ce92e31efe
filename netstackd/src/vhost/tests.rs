//! The protocol side against a real frontend: the `vhost` crate's `Frontend` (what a VMM
//! links) over a real unix socket, memfd-backed guest memory, real eventfds.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use nix::sys::memfd::{memfd_create, MFdFlags};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{NetBackend, VringAddrs, VringGuestAddrs};
use super::socket::VhostSocket;
use super::{VhostError, OFFERED_FEATURES};

/// A directory of the test's own, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "netstack-vhost-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memfd(len: u64) -> File {
    let f = File::from(memfd_create("guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd"));
    f.set_len(len).expect("memfd size");
    f
}

/// Accepts one frontend on `sock` for pod "c1" with `pairs` queue pairs, on a thread that
/// serves it until it leaves; returns the device state and the thread (which returns why the
/// connection ended).
fn serve(
    sock: VhostSocket,
    pairs: usize,
) -> (
    mpsc::Receiver<Arc<Mutex<NetBackend>>>,
    std::thread::JoinHandle<VhostError>,
) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut conn = sock.accept("c1", pairs).expect("accept");
        tx.send(conn.device_arc()).expect("send device");
        conn.serve()
    });
    (rx, t)
}

const MIB: u64 = 1 << 20;
/// Where the frontend has each region mapped (what ring addresses are given in).
const USER_A: u64 = 0x7f00_0000_0000;
const USER_B: u64 = 0x7f10_0000_0000;
/// Guest addresses of the two regions; B starts 4 KiB into its file.
const GUEST_A: u64 = 0;
const GUEST_B: u64 = MIB;
const B_OFFSET: u64 = 4096;

fn region(guest: u64, size: u64, user: u64, offset: u64, f: &File) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: guest,
        memory_size: size,
        userspace_addr: user,
        mmap_offset: offset,
        mmap_handle: f.as_raw_fd(),
    }
}

fn ring_config(desc: u64, avail: u64, used: u64) -> VringConfigData {
    VringConfigData {
        queue_max_size: 256,
        queue_size: 256,
        flags: 0,
        desc_table_addr: desc,
        used_ring_addr: used,
        avail_ring_addr: avail,
        log_addr: None,
    }
}

/// A frontend negotiates features, protocol features, a two-region memory table and two
/// vrings with their eventfds: the device records each value and each fd (the same memfds
/// and eventfds the frontend holds), refuses bad messages with a NACK while the connection
/// goes on, and GET_VRING_BASE stops a ring at the used index in guest memory.
#[test]
fn a_real_frontend_negotiates_and_the_device_records_it() {
    let dir = TempDir::new();
    let sock = VhostSocket::bind(&dir.0, "c1.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    let (device, server) = serve(sock, 2);

    // A frontend that believes in 8 queues, so that it sends indexes the device lacks.
    let mut fe = Frontend::connect(&path, 8).expect("connect");
    fe.set_owner().expect("owner");
    assert_eq!(fe.get_features().expect("features"), OFFERED_FEATURES);
    fe.set_features(OFFERED_FEATURES).expect("set features");
    let pf = fe.get_protocol_features().expect("protocol features");
    let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
    assert!(pf.contains(wanted), "offered {pf:?}");
    assert!(!pf.contains(VhostUserProtocolFeatures::CONFIG));
    fe.set_protocol_features(wanted)
        .expect("set protocol features");
    // Every request now waits for the device's ACK or NACK.
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let ram_a = memfd(MIB);
    let ram_b = memfd(MIB + B_OFFSET);
    fe.set_mem_table(&[
        region(GUEST_A, MIB, USER_A, 0, &ram_a),
        region(GUEST_B, MIB, USER_B, B_OFFSET, &ram_b),
    ])
    .expect("mem table");

    let kicks: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).expect("eventfd")).collect();
    let calls: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).expect("eventfd")).collect();
    // Ring 0 lies in region A, ring 1 in region B.
    let rings = [
        (USER_A + 0x1000, USER_A + 0x2000, USER_A + 0x3000),
        (USER_B + 0x1000, USER_B + 0x2000, USER_B + 0x3000),
    ];
    for (q, &(desc, avail, used)) in rings.iter().enumerate() {
        fe.set_vring_num(q, 256).expect("num");
        fe.set_vring_base(q, 7 + q as u16).expect("base");
        fe.set_vring_addr(q, &ring_config(desc, avail, used))
            .expect("addr");
        fe.set_vring_kick(q, &kicks[q]).expect("kick");
        fe.set_vring_call(q, &calls[q]).expect("call");
        fe.set_vring_enable(q, true).expect("enable");
    }

    // Refused, each with a NACK; the connection goes on.
    let other = memfd(MIB);
    let refusals: Vec<(&str, vhost::Result<()>)> = vec![
        ("vring index beyond the queues", fe.set_vring_num(5, 256)),
        (
            "kick of a vring beyond the queues",
            fe.set_vring_kick(6, &kicks[0]),
        ),
        ("ring size not a power of two", fe.set_vring_num(2, 100)),
        (
            "regions overlapping in guest addresses",
            fe.set_mem_table(&[
                region(0, MIB, USER_A, 0, &ram_a),
                region(MIB / 2, MIB, USER_B, 0, &other),
            ])
            .map(|_| ()),
        ),
        (
            "a region past the end of its file",
            fe.set_mem_table(&[region(0, 2 * MIB, USER_A, 0, &ram_a)])
                .map(|_| ()),
        ),
        ("ring 2 given a size first", fe.set_vring_num(2, 256)),
        (
            "ring addresses outside the memory table",
            fe.set_vring_addr(2, &ring_config(0x1000, 0x2000, 0x3000)),
        ),
    ];
    for (what, r) in &refusals {
        if *what == "ring 2 given a size first" {
            assert!(r.is_ok(), "{what}: {r:?}");
        } else {
            assert!(r.is_err(), "{what} was accepted");
        }
    }
    // Asked last: the frontend then believes the device and stops sending indexes beyond.
    assert_eq!(fe.get_queue_num().expect("queue num"), 4);
    assert_eq!(
        fe.get_features().expect("still connected"),
        OFFERED_FEATURES
    );

    let device = device.recv().expect("device");
    {
        let d = device.lock().expect("device lock");
        assert!(d.owned());
        assert_eq!(d.features(), OFFERED_FEATURES);
        assert_eq!(d.protocol_features(), wanted.bits());
        assert_eq!(d.refused(), 6);
        // The table is the first one: the refused ones changed nothing.
        let regions = d.regions();
        assert_eq!(regions.len(), 2);
        let same_file = |a: &File, b: &File| {
            let (a, b) = (a.metadata().expect("fstat"), b.metadata().expect("fstat"));
            (a.dev(), a.ino()) == (b.dev(), b.ino())
        };
        for (r, (guest, user, offset, file)) in regions.iter().zip([
            (GUEST_A, USER_A, 0, &ram_a),
            (GUEST_B, USER_B, B_OFFSET, &ram_b),
        ]) {
            assert_eq!((r.guest_addr, r.size), (guest, MIB));
            assert_eq!((r.user_addr, r.mmap_offset), (user, offset));
            assert!(
                same_file(&r.file, file),
                "region at {guest:#x}: another file"
            );
        }
        let v = d.vrings();
        assert_eq!(v.len(), 4);
        for (q, &(desc, avail, used)) in rings.iter().enumerate() {
            assert_eq!((v[q].num, v[q].base), (256, 7 + q as u16));
            assert_eq!(v[q].addrs, Some(VringAddrs { desc, avail, used }));
            assert!(v[q].enabled && v[q].started, "ring {q}");
        }
        assert_eq!(
            d.ring_guest_addrs(1),
            Some(VringGuestAddrs {
                desc: GUEST_B + 0x1000,
                avail: GUEST_B + 0x2000,
                used: GUEST_B + 0x3000
            })
        );
        // What a dataplane gets for ring 1.
        let cfg = d.ring_config(1).expect("ring 1 config");
        assert_eq!(
            (cfg.size, cfg.desc, cfg.used, cfg.event_idx, cfg.base),
            (256, GUEST_B + 0x1000, GUEST_B + 0x3000, true, Some(8))
        );
        assert_eq!(super::net_hdr_len(d.features()), 12);
        assert!(d.ring_config(2).is_none());
        // Ring 2 kept its size but got no addresses; ring 3 nothing.
        assert_eq!((v[2].num, v[2].addrs), (256, None));
        assert!(!v[2].enabled && v[2].kick.is_none() && v[3].num == 0);
        // The recorded fds are the frontend's eventfds.
        kicks[1].write(5).expect("kick");
        let mut b = [0u8; 8];
        let mut kick = v[1]
            .kick
            .as_ref()
            .expect("kick fd")
            .try_clone()
            .expect("dup");
        kick.read_exact(&mut b).expect("read kick");
        assert_eq!(u64::from_ne_bytes(b), 5);
        let mut call = v[0]
            .call
            .as_ref()
            .expect("call fd")
            .try_clone()
            .expect("dup");
        call.write_all(&3u64.to_ne_bytes()).expect("call");
        assert_eq!(calls[0].read().expect("interrupt"), 3);
    }

    // The guest's used index of ring 1 (guest B + 0x3000 + 2, 4 KiB into B's file) is 42:
    // GET_VRING_BASE stops the ring there.
    ram_b
        .write_all_at(&42u16.to_le_bytes(), B_OFFSET + 0x3000 + 2)
        .expect("used idx");
    assert_eq!(fe.get_vring_base(1).expect("vring base"), 42);
    {
        let d = device.lock().expect("device lock");
        let v = &d.vrings()[1];
        assert!(!v.started && v.kick.is_none());
        assert_eq!(v.base, 42);
    }

    // What was recorded drives a dataplane queue: guest memory mapped from duplicates of the
    // region fds, ring 0 (region A) from its config. The guest (writing its memfd) offers
    // one 64-byte frame behind a 12-byte header; the queue takes it and publishes it used.
    let (regions, cfg) = {
        let d = device.lock().expect("device lock");
        (
            d.dup_regions().expect("dup"),
            d.ring_config(0).expect("ring 0"),
        )
    };
    let mem = super::map_regions(&regions).expect("map");
    let mut desc = Vec::new();
    desc.extend_from_slice(&0x8000u64.to_le_bytes());
    desc.extend_from_slice(&76u32.to_le_bytes());
    desc.extend_from_slice(&[0u8; 4]);
    let (desc_at, avail_at) = (cfg.desc - GUEST_A, cfg.avail - GUEST_A);
    ram_a.write_all_at(&desc, desc_at).expect("descriptor");
    ram_a.write_all_at(&[0xab; 64], 0x8000 + 12).expect("frame");
    // Base 7 was set: the guest's available index is 8 after one more entry.
    ram_a
        .write_all_at(&0u16.to_le_bytes(), avail_at + 4 + 2 * 7)
        .expect("avail entry");
    ram_a
        .write_all_at(&8u16.to_le_bytes(), avail_at + 2)
        .expect("avail idx");
    ram_a
        .write_all_at(&7u16.to_le_bytes(), cfg.used - GUEST_A + 2)
        .expect("used idx");
    let mut q = crate::dataplane::virtq::Virtq::new(&mem, &cfg, None).expect("queue");
    let mut vnet = [0u8; crate::sys::tap::VNET_HDR_LEN];
    let mut buf = [0u8; 2048];
    assert_eq!(
        q.take_frame(&mem, 12, &mut vnet, &mut buf),
        Ok(Some(crate::sys::tap::RxFrame::Whole(64)))
    );
    assert_eq!(&buf[..64], &[0xab; 64]);
    q.flush(&mem).expect("flush");
    let mut used = [0u8; 2];
    ram_a
        .read_exact_at(&mut used, cfg.used - GUEST_A + 2)
        .expect("used idx");
    assert_eq!(u16::from_le_bytes(used), 8);

    drop(fe);
    let end = server.join().expect("server thread");
    assert!(
        matches!(end, VhostError::Connection { ref pod, .. } if pod == "c1"),
        "{end}"
    );
}

/// A refused GET_VRING_BASE has no NACK to send: the connection ends instead of leaving the
/// frontend waiting for a reply that never comes.
/// QEMU's vhost-user-net (7.2) sends SET_VRING_ENABLE when the guest driver sets its
/// features, before SET_FEATURES acks the protocol features: the connection survives it (with
/// and without a reply asked for) and answers the next request. Raw messages: the crate's
/// own frontend refuses to send it so early.
#[test]
fn a_vring_enable_before_set_features_keeps_the_connection() {
    use std::io::{Read, Write};
    let dir = TempDir::new();
    let sock = VhostSocket::bind(&dir.0, "c1.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let (device, server) = serve(sock, 1);
    let mut c = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    // request, flags, payload
    let msg = |req: u32, flags: u32, body: &[u8]| -> Vec<u8> {
        let size = u32::try_from(body.len()).expect("size");
        [
            &req.to_le_bytes()[..],
            &flags.to_le_bytes(),
            &size.to_le_bytes(),
            body,
        ]
        .concat()
    };
    let ring0_on = [0, 0, 0, 0, 1, 0, 0, 0];
    // SET_VRING_ENABLE (18), version 1, as QEMU sends it; SET_PROTOCOL_FEATURES (16) with
    // REPLY_ACK (0x8); then SET_VRING_ENABLE with NEED_REPLY (0x8): acked.
    c.write_all(&msg(18, 0x1, &ring0_on)).expect("send");
    c.write_all(&msg(16, 0x1, &8u64.to_le_bytes()))
        .expect("send");
    c.write_all(&msg(18, 0x1 | 0x8, &ring0_on)).expect("send");
    let mut reply = [0u8; 20];
    c.read_exact(&mut reply)
        .expect("the ack of the second SET_VRING_ENABLE");
    assert_eq!(reply[..4], 18u32.to_le_bytes(), "request");
    assert_ne!(reply[4] & 0x4, 0, "a reply");
    assert_eq!(
        reply[8..],
        [8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "size 8, success"
    );
    // GET_FEATURES (1): still answered.
    c.write_all(&msg(1, 0x1, &[])).expect("send");
    c.read_exact(&mut reply).expect("the GET_FEATURES reply");
    assert_eq!(reply[..4], 1u32.to_le_bytes(), "request");
    assert_eq!(reply[12..], OFFERED_FEATURES.to_le_bytes(), "features");
    // SET_FEATURES (2) with the protocol features keeps ring 0 enabled, ring 1 disabled.
    let acked = OFFERED_FEATURES.to_le_bytes();
    // (No ack without REPLY_ACK negotiated: a GET_FEATURES after it shows it was handled.)
    c.write_all(&msg(2, 0x1, &acked)).expect("send");
    c.write_all(&msg(1, 0x1, &[])).expect("send");
    c.read_exact(&mut reply)
        .expect("the GET_FEATURES reply after SET_FEATURES");
    let dev = device.recv().expect("device");
    let d = dev.lock().expect("device");
    assert!(
        d.vrings()[0].enabled,
        "ring 0 enabled before SET_FEATURES stays so"
    );
    assert!(!d.vrings()[1].enabled, "ring 1 was never enabled");
    drop(d);
    drop(c);
    let _ = server.join().expect("server thread");
}

#[test]
fn a_refused_get_vring_base_ends_the_connection() {
    let dir = TempDir::new();
    let sock = VhostSocket::bind(&dir.0, "c1.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let (device, server) = serve(sock, 1);
    let fe = Frontend::connect(&path, 8).expect("connect");
    fe.set_owner().expect("owner");
    assert!(fe.get_vring_base(5).is_err());
    let end = server.join().expect("server thread");
    assert!(matches!(end, VhostError::Connection { .. }), "{end}");
    let device = device.recv().expect("device");
    let d = device.lock().expect("device lock");
    assert_eq!((d.refused(), d.fatal()), (1, 1));
}

/// A socket a previous netstackd left behind is replaced; a file of another kind at the path
/// is left alone and the bind refused.
#[test]
fn a_stale_socket_is_replaced_and_another_file_is_not() {
    let dir = TempDir::new();
    let stale = dir.0.join("c1.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("stale socket"));
    assert!(stale.exists());
    let sock = VhostSocket::bind(&dir.0, "c1.sock").expect("bind over a stale socket");
    let (_device, server) = serve(sock, 1);
    let fe = Frontend::connect(&stale, 2).expect("connect to the new socket");
    assert_eq!(fe.get_features().expect("features"), OFFERED_FEATURES);
    drop(fe);
    server.join().expect("server thread");

    let file = dir.0.join("c2.sock");
    std::fs::write(&file, b"keep me").expect("file");
    let r = VhostSocket::bind(&dir.0, "c2.sock");
    assert!(matches!(r, Err(VhostError::NotASocket { .. })), "{r:?}");
    assert_eq!(std::fs::read(&file).expect("file"), b"keep me");
    assert_no_temp_left(&dir.0);
}

fn assert_no_temp_left(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("dir") {
        let name = e.expect("entry").file_name();
        assert!(
            !name.to_string_lossy().contains(".tmp."),
            "{name:?} left behind"
        );
    }
}

/// A socket is bound with the mode and group asked (the group only when one is asked), and a
/// group the process may not give (no CAP_CHOWN, not a member) fails the bind and leaves no
/// file.
#[test]
fn a_socket_gets_the_mode_and_group_asked() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = TempDir::new();
    let meta = |name: &str| std::fs::symlink_metadata(dir.0.join(name)).expect("socket");
    let _a = VhostSocket::bind(&dir.0, "a.sock").expect("bind 0600");
    assert!(meta("a.sock").file_type().is_socket());
    assert_eq!(meta("a.sock").mode() & 0o7777, 0o600);
    let own_gid = nix::unistd::getegid().as_raw();
    assert_eq!(meta("a.sock").gid(), own_gid);
    // A group of its own: no capability needed.
    let _b = VhostSocket::bind_with(&dir.0, "b.sock", 0o660, Some(own_gid)).expect("bind 0660");
    assert_eq!(
        (meta("b.sock").mode() & 0o7777, meta("b.sock").gid()),
        (0o660, own_gid)
    );
    // Another group: only with CAP_CHOWN (the tests run as root or not).
    let other = own_gid.wrapping_add(4321);
    match VhostSocket::bind_with(&dir.0, "c.sock", 0o660, Some(other)) {
        Ok(_c) => assert_eq!(meta("c.sock").gid(), other),
        Err(e) => {
            assert!(matches!(e, VhostError::Socket { .. }), "{e}");
            assert!(!dir.0.join("c.sock").exists());
        }
    }
    assert_no_temp_left(&dir.0);
}

/// QEMU with `queues` > 1 sends SET_VRING_ENABLE before SET_FEATURES (virtio-net enables the
/// pairs the guest uses and disables the others when the guest writes its features, before
/// DRIVER_OK starts vhost-net), which the `vhost` crate's handler alone answers by ending the
/// connection. It is taken: recorded (a SET_FEATURES with protocol features leaves it as it
/// is), acked when the frontend asks, and the connection goes on.
#[test]
fn a_vring_enable_before_set_features_is_taken() {
    use std::os::unix::net::UnixStream;
    let dir = TempDir::new();
    let sock = VhostSocket::bind(&dir.0, "e.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let (device, t) = serve(sock, 2);
    let s = UnixStream::connect(&path).expect("connect");
    let mut r = s.try_clone().expect("dup");
    let device = device.recv().expect("device");
    // (request, flags, body): version 1, NEED_REPLY 0x8.
    let send = |req: u32, flags: u32, body: &[u8]| {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        (&s).write_all(&m).expect("send");
    };
    let state = |index: u32, num: u32| [index.to_le_bytes(), num.to_le_bytes()].concat();
    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const SET_VRING_ENABLE: u32 = 18;
    send(SET_VRING_ENABLE, 1, &state(2, 1));
    send(SET_VRING_ENABLE, 1, &state(3, 1));
    // With REPLY_ACK negotiated, an ack is asked for and given (0: done).
    let pf = (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK).bits();
    send(SET_PROTOCOL_FEATURES, 1, &pf.to_le_bytes());
    send(SET_VRING_ENABLE, 1 | 0x8, &state(0, 1));
    let mut reply = [0u8; 20];
    r.read_exact(&mut reply).expect("the ack");
    assert_eq!(&reply[..4], &SET_VRING_ENABLE.to_le_bytes());
    assert_eq!(&reply[12..], &0u64.to_le_bytes());
    send(SET_FEATURES, 1, &OFFERED_FEATURES.to_le_bytes());
    // A reply proves the connection is still served and every request before it handled.
    send(GET_FEATURES, 1, &[]);
    r.read_exact(&mut reply).expect("the features");
    assert_eq!(&reply[12..], &OFFERED_FEATURES.to_le_bytes());
    {
        let d = device.lock().expect("device");
        let enabled: Vec<bool> = d.vrings().iter().map(|v| v.enabled).collect();
        assert_eq!(enabled, [true, false, true, true]);
        assert_eq!(d.features(), OFFERED_FEATURES);
    }
    drop((s, r));
    let _ = t.join();
}
