//! The supervisor's VM pod thread against a real frontend (the `vhost` crate's `Frontend`
//! over a real unix socket, memfd guest memory, real eventfds), with a sink that records
//! what it is asked and builds the dataplane's device from each attach (mapping the memory
//! from the fds it got), and the device description across the real IPC framing.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::memfd::{memfd_create, MFdFlags};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::attach::VhostAttach;
use super::server::{DeviceSink, VhostServer};
use super::socket::VhostSocket;
use super::OFFERED_FEATURES;
use crate::dataplane::ipc::{self, DpRequest};
use crate::dataplane::{LinkKind, PodSpec};
use crate::wire::MacAddr;

#[derive(Debug)]
enum Event {
    /// The description, how many fds came, and what the guest memory held at 0x8000 when
    /// the sink mapped it from those fds.
    Attach(VhostAttach, usize, u64),
    Detach(u64),
    /// A new call eventfd handed over without a detach: the vring, whether it has one.
    SetCall(usize, bool),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    changed: Condvar,
    /// The kick eventfd of the last device built.
    kick: Mutex<Option<OwnedFd>>,
}

impl Recorder {
    /// Waits until `n` events are recorded (or a minute passes, when the test fails on the
    /// count), and returns how many there are.
    fn wait_for(&self, n: usize) -> usize {
        let g = self.events.lock().expect("events");
        let (g, _) = self
            .changed
            .wait_timeout_while(g, Duration::from_secs(60), |e| e.len() < n)
            .expect("events");
        g.len()
    }
}

impl DeviceSink for Recorder {
    fn attach(
        &self,
        _spec: &PodSpec,
        device: VhostAttach,
        fds: Vec<OwnedFd>,
    ) -> Result<(), String> {
        let n = fds.len();
        let built = device.clone().into_device(fds).map_err(|e| e.to_string())?;
        let word: u64 = built
            .mem
            .read_obj(GuestAddress(0x8000))
            .map_err(|e| e.to_string())?;
        let pair = built.pairs.into_iter().next().ok_or("no pair")?;
        *self.kick.lock().expect("kick") = Some(pair.kick);
        self.events
            .lock()
            .expect("events")
            .push(Event::Attach(device, n, word));
        self.changed.notify_all();
        Ok(())
    }

    fn detach(&self, id: u64) {
        self.events.lock().expect("events").push(Event::Detach(id));
        self.changed.notify_all();
    }

    fn set_call(&self, _id: u64, vring: usize, call: Option<OwnedFd>) -> Result<(), String> {
        self.events
            .lock()
            .expect("events")
            .push(Event::SetCall(vring, call.is_some()));
        self.changed.notify_all();
        Ok(())
    }
}

fn spec() -> PodSpec {
    PodSpec {
        id: 7,
        mac: MacAddr([0x02, 0, 0, 0, 0, 7]),
        ipv4: vec!["10.0.0.7".parse().expect("ip")],
        ipv6: Vec::new(),
        gateway_v6: None,
        mtu: 1500,
        bandwidth: None,
        container_id: "vm1".into(),
        link: LinkKind::Tap,
    }
}

const MIB: u64 = 1 << 20;
const USER: u64 = 0x7f00_0000_0000;

fn ring(q: u64) -> VringConfigData {
    let base = USER + 0x10000 * (q + 1);
    VringConfigData {
        queue_max_size: 256,
        queue_size: 256,
        flags: 0,
        desc_table_addr: base,
        avail_ring_addr: base + 0x1000,
        used_ring_addr: base + 0x2000,
        log_addr: None,
    }
}

/// Sets up and enables vrings `qs` as QEMU does (num, base, addr, kick, call, enable).
fn start_rings(fe: &mut Frontend, qs: &[usize], kicks: &[EventFd], calls: &[EventFd]) {
    for &q in qs {
        fe.set_vring_num(q, 256).expect("num");
        fe.set_vring_base(q, 3).expect("base");
        fe.set_vring_addr(q, &ring(q as u64)).expect("addr");
        fe.set_vring_kick(q, &kicks[q]).expect("kick");
        fe.set_vring_call(q, &calls[q]).expect("call");
        fe.set_vring_enable(q, true).expect("enable");
    }
}

/// The device goes to the dataplane once both rings of the pair are started and enabled, with the
/// region fd, both kicks and both calls; a ring's new call eventfd is handed over alone, the
/// rings kept; GET_VRING_BASE takes it away before its reply, and the next handover resumes
/// at the used index; the frontend leaving takes it away; a frontend may connect again; stop
/// removes the socket.
#[test]
fn the_device_follows_what_the_frontend_negotiates() {
    let dir = std::env::temp_dir().join(format!("netstack-vhost-server-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "vm1.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let rec = Arc::new(Recorder::default());
    let mut server = VhostServer::start(sock, spec(), 1, Arc::clone(&rec) as Arc<dyn DeviceSink>)
        .expect("server");
    assert_eq!(server.path(), path);

    let ram = File::from(memfd_create("guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd"));
    ram.set_len(MIB).expect("size");
    ram.write_all_at(&0x1122_3344_5566_7788u64.to_le_bytes(), 0x8000)
        .expect("guest word");
    let kicks: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).expect("eventfd")).collect();
    let calls: Vec<EventFd> = (0..3).map(|_| EventFd::new(0).expect("eventfd")).collect();

    let mut fe = Frontend::connect(&path, 2).expect("connect");
    fe.set_owner().expect("owner");
    assert_eq!(fe.get_features().expect("features"), OFFERED_FEATURES);
    fe.set_features(OFFERED_FEATURES).expect("features");
    fe.get_protocol_features().expect("protocol features");
    let pf = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
    fe.set_protocol_features(pf).expect("protocol features");
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MIB,
        userspace_addr: USER,
        mmap_offset: 0,
        mmap_handle: ram.as_raw_fd(),
    }])
    .expect("mem table");
    start_rings(&mut fe, &[0], &kicks, &calls);
    // Every request was acked: the server has handled them; one ring is not a pair.
    assert!(rec.events.lock().expect("events").is_empty());
    start_rings(&mut fe, &[1], &kicks, &calls);
    assert_eq!(rec.wait_for(1), 1);
    {
        let ev = rec.events.lock().expect("events");
        let Event::Attach(d, fds, word) = &ev[0] else {
            panic!("{ev:?}");
        };
        // One region fd, two kicks, two calls; the memory mapped from the fd is the guest's.
        assert_eq!((*fds, d.fd_count()), (5, 5));
        assert_eq!(*word, 0x1122_3344_5566_7788);
        assert_eq!(d.features, OFFERED_FEATURES);
        assert_eq!(d.pairs.len(), 1);
        let p = d.pairs[0];
        assert!(p.to_guest_call && p.from_guest_call);
        assert_eq!((p.to_guest.base, p.from_guest.base), (Some(3), Some(3)));
        assert_eq!(p.from_guest.desc, 0x20000);
        assert_eq!(p.to_guest.used, 0x12000);
    }
    // The kick the dataplane waits on is the guest's transmit kick.
    kicks[1].write(1).expect("kick");
    {
        let kick = rec.kick.lock().expect("kick");
        let mut b = [0u8; 8];
        nix::unistd::read(kick.as_ref().expect("kick fd").as_fd(), &mut b).expect("read kick");
        assert_eq!(u64::from_ne_bytes(b), 1);
    }

    // A new call eventfd for ring 0 (the guest changed its interrupt vectors): handed over
    // alone, the rings kept.
    fe.set_vring_call(0, &calls[2]).expect("call");
    assert_eq!(rec.wait_for(2), 2);
    {
        let ev = rec.events.lock().expect("events");
        assert!(matches!(ev[1], Event::SetCall(0, true)), "{ev:?}");
    }

    // GET_VRING_BASE: the dataplane lets go before the answer (the used index, 9).
    ram.write_all_at(&9u16.to_le_bytes(), 0x22000 + 2)
        .expect("used idx");
    assert_eq!(fe.get_vring_base(1).expect("base"), 9);
    {
        let ev = rec.events.lock().expect("events");
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert!(matches!(ev[2], Event::Detach(7)), "{ev:?}");
    }
    // Not complete again until ring 1 is started again.
    fe.set_vring_enable(0, true).expect("enable");
    assert_eq!(rec.events.lock().expect("events").len(), 3);
    // Ring 1 stayed enabled: complete again at its kick (from the base set; ring 0 resumes
    // at the used index, with its new call eventfd), then its own new call eventfd.
    start_rings(&mut fe, &[1], &kicks, &calls);
    assert_eq!(rec.wait_for(5), 5);
    {
        let ev = rec.events.lock().expect("events");
        assert!(
            matches!(&ev[3], Event::Attach(d, ..) if d.pairs[0].from_guest.base == Some(3)
                && d.pairs[0].to_guest.base.is_none() && d.pairs[0].to_guest_call),
            "{ev:?}"
        );
        assert!(matches!(ev[4], Event::SetCall(1, true)), "{ev:?}");
    }

    // The frontend leaves: the pod is taken away. Another one connects and is served.
    drop(fe);
    assert_eq!(rec.wait_for(6), 6);
    assert!(matches!(
        rec.events.lock().expect("events")[5],
        Event::Detach(7)
    ));
    let fe = Frontend::connect(&path, 2).expect("reconnect");
    assert_eq!(fe.get_features().expect("features"), OFFERED_FEATURES);

    // Stop ends that connection and removes the socket.
    server.stop();
    assert!(!path.exists());
    assert!(fe.get_features().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The description and its fds cross the real supervisor-dataplane framing (JSON and
/// SCM_RIGHTS) and build a device over the same memory; a message whose fds do not match
/// its description is refused.
#[test]
fn an_attach_crosses_the_ipc_and_builds_the_device() {
    let ram = File::from(memfd_create("guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd"));
    ram.set_len(MIB).expect("size");
    ram.write_all_at(&77u64.to_le_bytes(), 0x8000)
        .expect("word");
    let kick = nix::sys::eventfd::EventFd::new().expect("eventfd");
    let cfg = |q: u64| crate::dataplane::virtq::RingConfig {
        size: 256,
        desc: 0x10000 * (q + 1),
        avail: 0x10000 * (q + 1) + 0x1000,
        used: 0x10000 * (q + 1) + 0x2000,
        event_idx: true,
        base: Some(1),
    };
    let device = VhostAttach {
        features: OFFERED_FEATURES,
        regions: vec![super::attach::RegionDesc {
            guest_addr: 0,
            size: MIB,
            user_addr: USER,
            mmap_offset: 0,
        }],
        pairs: vec![super::attach::PairDesc {
            index: 0,
            to_guest: cfg(0),
            to_guest_call: false,
            from_guest: cfg(1),
            from_guest_call: false,
        }],
    };
    let (a, b) = UnixStream::pair().expect("socketpair");
    let req = DpRequest::AttachVhost {
        spec: spec(),
        device: device.clone(),
    };
    ipc::send(&a, &req, &[ram.as_fd(), kick.as_fd(), kick.as_fd()]).expect("send");
    let (got, fds): (DpRequest, _) = ipc::recv(&b).expect("recv");
    assert_eq!(got, req);
    let DpRequest::AttachVhost { device: d, .. } = got else {
        unreachable!()
    };
    let built = d.into_device(fds).expect("device");
    let word: u64 = built.mem.read_obj(GuestAddress(0x8000)).expect("read");
    assert_eq!(word, 77);
    assert_eq!(built.pairs.len(), 1);
    assert_eq!(built.pairs[0].from_guest.base, Some(1));
    assert_eq!(device.resumed().pairs[0].from_guest.base, None);

    // One fd short.
    let short = vec![OwnedFd::from(ram.try_clone().expect("dup"))];
    assert!(device.into_device(short).is_err());
}

/// The real dataplane (worker threads) behind the server: each attach builds the device
/// from the fds and serves it; `restart` does what the supervisor does when the child dies:
/// a new dataplane gets the TAP pod and the device again, from the kept fds, resumed.
struct DataplaneSink {
    dp: Mutex<Option<crate::dataplane::Dataplane>>,
    /// The last device and duplicates of its fds, as the supervisor keeps them.
    kept: Mutex<Option<(PodSpec, VhostAttach, Vec<OwnedFd>)>>,
    tap_pod: Mutex<Option<OwnedFd>>,
    attaches: Mutex<usize>,
}

fn pod_spec(n: u8) -> PodSpec {
    PodSpec {
        id: u64::from(n),
        mac: MacAddr([0x0a, 0x58, 10, 77, 0, n]),
        ipv4: vec![std::net::Ipv4Addr::new(10, 77, 0, n)],
        container_id: format!("pod{n}"),
        ..spec()
    }
}

impl DataplaneSink {
    /// A dataplane with one worker (its uplink a datagram socket nobody reads) and TAP pod 2
    /// on `tap_pod` (a datagram socket standing in for a TAP queue).
    fn start(&self) {
        let (uplink, _peer) = UnixDatagram::pair().expect("uplink");
        let mut dp = crate::dataplane::Dataplane::start(
            vec![OwnedFd::from(uplink)],
            std::net::Ipv4Addr::new(10, 77, 0, 1),
            1500,
            false,
        )
        .expect("dataplane");
        let tap = self.tap_pod.lock().expect("tap");
        let tap = tap.as_ref().expect("tap").try_clone().expect("dup");
        dp.attach(&pod_spec(2), vec![tap]).expect("TAP pod");
        *self.dp.lock().expect("dp") = Some(dp);
    }

    fn restart(&self) {
        drop(self.dp.lock().expect("dp").take());
        self.start();
        let kept = self.kept.lock().expect("kept");
        let (spec, device, fds) = kept.as_ref().expect("a device was attached");
        let fds = fds.iter().map(|f| f.try_clone().expect("dup")).collect();
        let device = device.resumed().into_device(fds).expect("device");
        self.dp
            .lock()
            .expect("dp")
            .as_mut()
            .expect("dp")
            .attach_vhost(spec, device)
            .expect("the VM again");
    }
}

impl DeviceSink for DataplaneSink {
    fn attach(&self, spec: &PodSpec, device: VhostAttach, fds: Vec<OwnedFd>) -> Result<(), String> {
        let kept = fds
            .iter()
            .map(|f| f.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let built = device.clone().into_device(fds).map_err(|e| e.to_string())?;
        let mut dp = self.dp.lock().expect("dp");
        dp.as_mut()
            .ok_or("no dataplane")?
            .attach_vhost(spec, built)
            .map_err(|e| e.to_string())?;
        *self.kept.lock().expect("kept") = Some((spec.clone(), device, kept));
        *self.attaches.lock().expect("attaches") += 1;
        Ok(())
    }

    fn detach(&self, id: u64) {
        if let Some(dp) = self.dp.lock().expect("dp").as_mut() {
            dp.detach(id);
        }
    }
}

/// The guest's side of the rings `ring()` placed: descriptor i of a ring is entry i.
struct Guest {
    ram: File,
    kick: EventFd,
}

impl Guest {
    fn offer(&self, q: u64, i: u16, addr: u64, len: u32, flags: u16) {
        let r = ring(q);
        let base = r.desc_table_addr - USER;
        let avail = r.avail_ring_addr - USER;
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes());
        self.ram
            .write_all_at(&d, base + 16 * u64::from(i))
            .expect("desc");
        self.ram
            .write_all_at(&i.to_le_bytes(), avail + 4 + 2 * u64::from(i))
            .expect("avail entry");
        self.ram
            .write_all_at(&(i + 1).to_le_bytes(), avail + 2)
            .expect("avail idx");
    }

    fn used_idx(&self, q: u64) -> u16 {
        let mut b = [0u8; 2];
        self.ram
            .read_exact_at(&mut b, ring(q).used_ring_addr - USER + 2)
            .expect("used idx");
        u16::from_le_bytes(b)
    }

    /// Sends a UDP datagram of `payload` bytes of `fill` to pod 2 as transmit entry `i`.
    fn send(&self, i: u16, fill: u8) {
        use crate::wire::{ethernet, ipv4};
        let payload = 64;
        let mut f = vec![0u8; 12 + 14 + 28 + payload];
        let frame = &mut f[12..];
        ethernet::write_header(
            frame,
            crate::stack::GATEWAY_MAC,
            pod_spec(7).mac,
            ethernet::ETHERTYPE_IPV4,
        );
        ipv4::emit_header(
            &mut frame[14..],
            pod_spec(7).ipv4[0],
            pod_spec(2).ipv4[0],
            ipv4::PROTO_UDP,
            64,
            8 + payload,
            1,
        );
        let udp = &mut frame[34..];
        udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&9u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        udp[8..].fill(fill);
        let at = 0x40000 + 0x1000 * u64::from(i);
        self.ram.write_all_at(&f, at).expect("frame");
        self.offer(1, i, at, f.len() as u32, 0);
        self.kick.write(1).expect("kick");
    }
}

/// Waits (bounded: 3000 rounds of 10 ms) until `cond` holds; false if it never did.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..3000 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A frontend negotiates with the server, the device goes to a real dataplane: the guest's
/// datagram reaches the TAP pod and the TAP pod's reaches the guest's buffer. After a restart
/// (a new dataplane given the kept fds) the rings resume at the used index: the guest's next
/// datagram arrives, not its first one again, and the guest still receives.
#[test]
fn frames_cross_between_a_vm_and_a_tap_pod_and_again_after_a_restart() {
    use crate::sys::tap::VNET_HDR_LEN;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    let (tap_ours, tap) = UnixDatagram::pair().expect("tap");
    tap_ours.set_nonblocking(true).expect("nonblocking");
    tap.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let sink = Arc::new(DataplaneSink {
        dp: Mutex::new(None),
        kept: Mutex::new(None),
        tap_pod: Mutex::new(Some(OwnedFd::from(tap_ours))),
        attaches: Mutex::new(0),
    });
    sink.start();
    let dir = std::env::temp_dir().join(format!("netstack-vhost-dp-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "vm.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let mut server = VhostServer::start(
        sock,
        pod_spec(7),
        1,
        Arc::clone(&sink) as Arc<dyn DeviceSink>,
    )
    .expect("server");

    let ram = File::from(memfd_create("guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd"));
    ram.set_len(MIB).expect("size");
    let kicks: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).expect("eventfd")).collect();
    let calls: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).expect("eventfd")).collect();
    let mut fe = Frontend::connect(&path, 2).expect("connect");
    fe.set_owner().expect("owner");
    fe.get_features().expect("features");
    fe.set_features(OFFERED_FEATURES).expect("features");
    fe.get_protocol_features().expect("protocol features");
    fe.set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK)
        .expect("protocol features");
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MIB,
        userspace_addr: USER,
        mmap_offset: 0,
        mmap_handle: ram.as_raw_fd(),
    }])
    .expect("mem table");
    for q in 0..2usize {
        fe.set_vring_num(q, 256).expect("num");
        fe.set_vring_base(q, 0).expect("base");
        fe.set_vring_addr(q, &ring(q as u64)).expect("addr");
        fe.set_vring_kick(q, &kicks[q]).expect("kick");
        fe.set_vring_call(q, &calls[q]).expect("call");
        fe.set_vring_enable(q, true).expect("enable");
    }
    assert!(
        eventually(|| *sink.attaches.lock().expect("attaches") == 1),
        "the device was handed over"
    );
    let guest = Guest {
        ram: ram.try_clone().expect("dup"),
        kick: kicks[1].try_clone().expect("dup"),
    };

    let mut got = [0u8; 2048];
    guest.send(0, 0xaa);
    let n = tap
        .recv(&mut got)
        .expect("the TAP pod got the guest's datagram");
    assert_eq!(n, VNET_HDR_LEN + 14 + 28 + 64);
    assert_eq!(&got[VNET_HDR_LEN + 42..n], &[0xaa; 64]);
    assert!(
        eventually(|| guest.used_idx(1) == 1),
        "the guest's buffer came back"
    );

    // To the guest: a buffer posted, the TAP pod's datagram lands in it.
    let first = got[..n].to_vec();
    let to_vm = |fill: u8| {
        let mut f = first.clone();
        f[..VNET_HDR_LEN].fill(0);
        f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&crate::stack::GATEWAY_MAC.0);
        f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&pod_spec(2).mac.0);
        // Source and destination swapped (the IPv4 header checksum is order-independent).
        let (src, dst) = (VNET_HDR_LEN + 26, VNET_HDR_LEN + 30);
        let a: Vec<u8> = f[src..src + 4].to_vec();
        let b: Vec<u8> = f[dst..dst + 4].to_vec();
        f[src..src + 4].copy_from_slice(&b);
        f[dst..dst + 4].copy_from_slice(&a);
        // TTL back to 64 with the checksum recomputed by the pod: take the guest's header.
        f[VNET_HDR_LEN + 22] = 64;
        f[VNET_HDR_LEN + 24..VNET_HDR_LEN + 26].fill(0);
        let sum = crate::wire::checksum::checksum(&f[VNET_HDR_LEN + 14..VNET_HDR_LEN + 34]);
        f[VNET_HDR_LEN + 24..VNET_HDR_LEN + 26].copy_from_slice(&sum.to_be_bytes());
        f[VNET_HDR_LEN + 42..].fill(fill);
        f
    };
    let rx_at = |i: u16| 0x80000 + 0x1000 * u64::from(i);
    guest.offer(0, 0, rx_at(0), 2048, VRING_DESC_F_WRITE as u16);
    tap.send(&to_vm(0xcc)).expect("TAP pod sends");
    assert!(eventually(|| guest.used_idx(0) == 1), "the guest received");
    let mut landed = [0u8; 12 + 14 + 28 + 64];
    ram.read_exact_at(&mut landed, rx_at(0)).expect("read");
    assert_eq!(&landed[12..18], &pod_spec(7).mac.0);
    assert_eq!(&landed[12 + 42..], &[0xcc; 64]);

    // The dataplane restarts.
    sink.restart();
    guest.send(1, 0xbb);
    let n = tap
        .recv(&mut got)
        .expect("the TAP pod got the next datagram");
    assert_eq!(
        &got[VNET_HDR_LEN + 42..n],
        &[0xbb; 64],
        "not the first again"
    );
    assert!(eventually(|| guest.used_idx(1) == 2));
    guest.offer(0, 1, rx_at(1), 2048, VRING_DESC_F_WRITE as u16);
    tap.send(&to_vm(0xdd)).expect("TAP pod sends");
    assert!(
        eventually(|| guest.used_idx(0) == 2),
        "the guest still receives"
    );
    ram.read_exact_at(&mut landed, rx_at(1)).expect("read");
    assert_eq!(&landed[12 + 42..], &[0xdd; 64]);

    drop(fe);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A UDP datagram of 64 bytes of `fill` from pod `src` to pod `dst` behind `hdr` zero bytes
/// (12: the guest's virtio-net header; `VNET_HDR_LEN`: a TAP's).
fn udp(src: u8, dst: u8, fill: u8, hdr: usize) -> Vec<u8> {
    use crate::wire::{ethernet, ipv4};
    let payload = 64;
    let mut f = vec![0u8; hdr + 14 + 28 + payload];
    let frame = &mut f[hdr..];
    ethernet::write_header(
        frame,
        crate::stack::GATEWAY_MAC,
        pod_spec(src).mac,
        ethernet::ETHERTYPE_IPV4,
    );
    ipv4::emit_header(
        &mut frame[14..],
        pod_spec(src).ipv4[0],
        pod_spec(dst).ipv4[0],
        ipv4::PROTO_UDP,
        64,
        8 + payload,
        1,
    );
    let udp = &mut frame[34..];
    udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    udp[8..].fill(fill);
    f
}

/// A dataplane of two workers behind the server, with TAP pod 2 on two queues (datagram
/// sockets: queue q read by worker q); records the pairs of each device it was given.
struct TwoWorkers {
    dp: Mutex<crate::dataplane::Dataplane>,
    served: Mutex<Vec<Vec<usize>>>,
    changed: Condvar,
    _uplinks: Vec<UnixDatagram>,
}

impl TwoWorkers {
    /// The dataplane and the TAP pod's two queues (the pod's ends).
    fn start() -> (Arc<Self>, Vec<UnixDatagram>) {
        let mut uplinks = Vec::new();
        let mut ours = Vec::new();
        for _ in 0..2 {
            let (a, b) = UnixDatagram::pair().expect("uplink");
            ours.push(OwnedFd::from(a));
            uplinks.push(b);
        }
        let mut dp = crate::dataplane::Dataplane::start(
            ours,
            std::net::Ipv4Addr::new(10, 77, 0, 1),
            1500,
            false,
        )
        .expect("dataplane");
        let mut queues = Vec::new();
        let mut pod_ends = Vec::new();
        for _ in 0..2 {
            let (a, b) = UnixDatagram::pair().expect("tap queue");
            a.set_nonblocking(true).expect("nonblocking");
            b.set_nonblocking(true).expect("nonblocking");
            queues.push(OwnedFd::from(a));
            pod_ends.push(b);
        }
        dp.attach(&pod_spec(2), queues).expect("TAP pod");
        let sink = Arc::new(TwoWorkers {
            dp: Mutex::new(dp),
            served: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            _uplinks: uplinks,
        });
        (sink, pod_ends)
    }

    /// Waits (bounded: a minute) until `n` devices were served; the pairs of the last one.
    fn wait_for(&self, n: usize) -> Vec<usize> {
        let g = self.served.lock().expect("served");
        let (g, _) = self
            .changed
            .wait_timeout_while(g, Duration::from_secs(60), |s| s.len() < n)
            .expect("served");
        assert_eq!(g.len(), n, "devices served: {g:?}");
        g[n - 1].clone()
    }
}

impl DeviceSink for TwoWorkers {
    fn attach(&self, spec: &PodSpec, device: VhostAttach, fds: Vec<OwnedFd>) -> Result<(), String> {
        let pairs = device.pairs.iter().map(|p| p.index).collect();
        let built = device.into_device(fds).map_err(|e| e.to_string())?;
        self.dp
            .lock()
            .expect("dp")
            .attach_vhost(spec, built)
            .map_err(|e| e.to_string())?;
        self.served.lock().expect("served").push(pairs);
        self.changed.notify_all();
        Ok(())
    }

    fn detach(&self, id: u64) {
        self.dp.lock().expect("dp").detach(id);
    }

    fn set_call(&self, id: u64, vring: usize, call: Option<OwnedFd>) -> Result<(), String> {
        self.dp
            .lock()
            .expect("dp")
            .set_vring_call(id, vring, call)
            .map_err(|e| e.to_string())
    }
}

/// The guest side of a multiqueue device: vring q at `ring(q)`, its kick `kicks[q]`.
struct MqGuest {
    ram: File,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
}

impl MqGuest {
    /// 2 MiB of guest memory and the eventfds of `pairs` queue pairs.
    fn new(pairs: usize) -> Self {
        let ram = File::from(memfd_create("guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd"));
        ram.set_len(2 * MIB).expect("size");
        let fds = || -> Vec<EventFd> {
            (0..2 * pairs)
                .map(|_| EventFd::new(0).expect("eventfd"))
                .collect()
        };
        MqGuest {
            ram,
            kicks: fds(),
            calls: fds(),
        }
    }

    /// Connects to `path` and negotiates what QEMU does, up to the memory table.
    fn connect(&self, path: &std::path::Path, pairs: usize) -> Frontend {
        let mut fe = Frontend::connect(path, 2 * pairs as u64).expect("connect");
        fe.set_owner().expect("owner");
        fe.get_features().expect("features");
        fe.set_features(OFFERED_FEATURES).expect("features");
        fe.get_protocol_features().expect("protocol features");
        fe.set_protocol_features(
            VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK,
        )
        .expect("protocol features");
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: 2 * MIB,
            userspace_addr: USER,
            mmap_offset: 0,
            mmap_handle: self.ram.as_raw_fd(),
        }])
        .expect("mem table");
        fe
    }

    /// Starts both rings of each pair in `pairs` (num, base 0, addr, kick, call), enabling
    /// them when `enable`, as QEMU's vhost_net_start does.
    fn start(&self, fe: &mut Frontend, pairs: &[usize], enable: bool) {
        for &p in pairs {
            for q in [2 * p, 2 * p + 1] {
                fe.set_vring_num(q, 256).expect("num");
                fe.set_vring_base(q, 0).expect("base");
                fe.set_vring_addr(q, &ring(q as u64)).expect("addr");
                fe.set_vring_kick(q, &self.kicks[q]).expect("kick");
                fe.set_vring_call(q, &self.calls[q]).expect("call");
                fe.set_vring_enable(q, enable).expect("enable");
            }
        }
    }

    fn offer(&self, q: u64, i: u16, addr: u64, len: u32, flags: u16) {
        Guest {
            ram: self.ram.try_clone().expect("dup"),
            kick: self.kicks[q as usize].try_clone().expect("dup"),
        }
        .offer(q, i, addr, len, flags);
    }

    fn used_idx(&self, q: u64) -> u16 {
        let mut b = [0u8; 2];
        self.ram
            .read_exact_at(&mut b, ring(q).used_ring_addr - USER + 2)
            .expect("used idx");
        u16::from_le_bytes(b)
    }

    /// The guest sends a datagram of `fill` to pod 2 on pair `p` as its transmit entry `i`.
    fn send(&self, p: usize, i: u16, fill: u8) {
        let q = 2 * p as u64 + 1;
        let f = udp(7, 2, fill, 12);
        let at = 0x10_0000 + 0x1000 * (16 * q + u64::from(i));
        self.ram.write_all_at(&f, at).expect("frame");
        self.offer(q, i, at, f.len() as u32, 0);
        self.kicks[q as usize].write(1).expect("kick");
    }

    /// Posts a 2 KiB receive buffer on pair `p` as entry `i`; returns its address.
    fn post(&self, p: usize, i: u16) -> u64 {
        use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
        let q = 2 * p as u64;
        let at = 0x10_0000 + 0x1000 * (16 * q + u64::from(i));
        self.offer(q, i, at, 2048, VRING_DESC_F_WRITE as u16);
        at
    }

    /// The last payload byte of the frame that landed at `at`.
    fn fill_at(&self, at: u64) -> u8 {
        let mut b = [0u8; 1];
        self.ram
            .read_exact_at(&mut b, at + 12 + 14 + 28 + 63)
            .expect("read");
        b[0]
    }
}

/// The payload fills of every datagram waiting on the TAP pod's queues.
fn tap_fills(pod_ends: &[UnixDatagram], into: &mut Vec<u8>) {
    use crate::sys::tap::VNET_HDR_LEN;
    let mut got = [0u8; 2048];
    for end in pod_ends {
        while let Ok(n) = end.recv(&mut got) {
            if n == VNET_HDR_LEN + 14 + 28 + 64 {
                into.push(got[n - 1]);
            }
        }
    }
}

/// QEMU's default `queues=1` on a netstackd of two workers: the device offers two pairs,
/// the frontend sets up pair 0 only, and it is served at once: the guest's datagram reaches
/// the TAP pod, and the TAP pod's datagrams read by either worker (one on each of its two
/// queues) land in the guest's one receive queue.
#[test]
fn one_pair_on_two_workers_is_served_both_ways() {
    use crate::sys::tap::VNET_HDR_LEN;
    let (sink, pod_ends) = TwoWorkers::start();
    let dir = std::env::temp_dir().join(format!("netstack-vhost-mq1-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "vm.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let mut server = VhostServer::start(
        sock,
        pod_spec(7),
        2,
        Arc::clone(&sink) as Arc<dyn DeviceSink>,
    )
    .expect("server");
    let guest = MqGuest::new(2);
    let mut fe = guest.connect(&path, 2);
    guest.start(&mut fe, &[0], true);
    assert_eq!(sink.wait_for(1), vec![0], "served with pair 0 alone");

    guest.send(0, 0, 0xa0);
    let mut fills = Vec::new();
    assert!(eventually(|| {
        tap_fills(&pod_ends, &mut fills);
        !fills.is_empty()
    }));
    assert_eq!(fills, vec![0xa0]);

    let at = [guest.post(0, 0), guest.post(0, 1)];
    for (q, end) in pod_ends.iter().enumerate() {
        end.send(&udp(2, 7, 0xc0 + q as u8, VNET_HDR_LEN))
            .expect("TAP pod sends");
    }
    assert!(
        eventually(|| guest.used_idx(0) == 2),
        "both workers wrote to the guest's one receive queue"
    );
    let mut landed = [guest.fill_at(at[0]), guest.fill_at(at[1])];
    landed.sort_unstable();
    assert_eq!(landed, [0xc0, 0xc1]);

    drop(fe);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three pairs on two workers (pairs 0 and 2 on worker 0, pair 1 on worker 1): a datagram the
/// guest sends on each pair reaches the TAP pod, and each worker writes to the guest on its
/// own pair's receive queue.
#[test]
fn three_pairs_on_two_workers_each_carry_frames() {
    use crate::sys::tap::VNET_HDR_LEN;
    let (sink, pod_ends) = TwoWorkers::start();
    let dir = std::env::temp_dir().join(format!("netstack-vhost-mq3-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "vm.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let mut server = VhostServer::start(
        sock,
        pod_spec(7),
        3,
        Arc::clone(&sink) as Arc<dyn DeviceSink>,
    )
    .expect("server");
    let guest = MqGuest::new(3);
    let mut fe = guest.connect(&path, 3);
    guest.start(&mut fe, &[0, 1, 2], true);
    // Each pair that completes changes the set: the last device has all three.
    assert!(eventually(|| sink
        .served
        .lock()
        .expect("served")
        .last()
        .is_some_and(|s| s.len() == 3)));

    for p in 0..3 {
        guest.send(p, 0, 0xa0 + p as u8);
    }
    let mut fills = Vec::new();
    assert!(eventually(|| {
        tap_fills(&pod_ends, &mut fills);
        fills.len() == 3
    }));
    fills.sort_unstable();
    assert_eq!(fills, vec![0xa0, 0xa1, 0xa2]);
    for p in 0..3 {
        assert!(eventually(|| guest.used_idx(2 * p + 1) == 1), "pair {p}");
    }

    let at = [guest.post(0, 0), guest.post(1, 0)];
    for (q, end) in pod_ends.iter().enumerate() {
        end.send(&udp(2, 7, 0xc0 + q as u8, VNET_HDR_LEN))
            .expect("TAP pod sends");
    }
    assert!(eventually(
        || guest.used_idx(0) == 1 && guest.used_idx(2) == 1
    ));
    // Worker q read the TAP pod's queue q and wrote to pair q.
    assert_eq!([guest.fill_at(at[0]), guest.fill_at(at[1])], [0xc0, 0xc1]);

    drop(fe);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// As QEMU does it: every pair started, pair 0 alone enabled (the guest has not sent
/// VQ_PAIRS_SET yet), then pair 1 enabled, then disabled again. The device follows: pair 0,
/// then pairs 0 and 1 (pair 0 resumed at its used index, pair 1 from the base set), then
/// pair 0 again.
#[test]
fn a_pair_enabled_later_is_handed_over_with_the_others() {
    let rec = Arc::new(Recorder::default());
    let dir = std::env::temp_dir().join(format!("netstack-vhost-mqe-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "vm.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let mut server = VhostServer::start(sock, spec(), 2, Arc::clone(&rec) as Arc<dyn DeviceSink>)
        .expect("server");
    let guest = MqGuest::new(2);
    let mut fe = guest.connect(&path, 2);
    guest.start(&mut fe, &[0], true);
    assert_eq!(rec.wait_for(1), 1);
    guest.start(&mut fe, &[1], false);
    let pairs = |i: usize| -> Vec<(usize, Option<u16>)> {
        let ev = rec.events.lock().expect("events");
        match &ev[i] {
            Event::Attach(d, ..) => d.pairs.iter().map(|p| (p.index, p.to_guest.base)).collect(),
            other => panic!("event {i}: {other:?}"),
        }
    };
    // Pair 1's rings, set up while pair 0 is served, are not the dataplane's: serving pair
    // 0 goes on undisturbed.
    let n = rec.events.lock().expect("events").len();
    assert_eq!(n, 1, "{:?}", rec.events.lock().expect("events"));
    assert_eq!(pairs(0), vec![(0, Some(0))]);

    fe.set_vring_enable(2, true).expect("enable");
    assert_eq!(
        rec.events.lock().expect("events").len(),
        n,
        "half a pair changes nothing"
    );
    fe.set_vring_enable(3, true).expect("enable");
    assert_eq!(rec.wait_for(n + 2), n + 2);
    assert!(matches!(
        rec.events.lock().expect("events")[n],
        Event::Detach(7)
    ));
    assert_eq!(pairs(n + 1), vec![(0, None), (1, Some(0))]);

    fe.set_vring_enable(2, false).expect("disable");
    assert_eq!(rec.wait_for(n + 4), n + 4);
    assert_eq!(pairs(n + 3), vec![(0, None)]);

    drop(fe);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pod 7's counters in the dataplane of `sink`.
fn vm_counters(sink: &TwoWorkers) -> Option<crate::control::Counters> {
    let (pods, _) = sink.dp.lock().expect("dp").stats();
    pods.into_iter().find(|(id, _)| *id == 7).map(|(_, c)| c)
}

/// A guest that puts garbage in its transmit ring (an available index that jumps past the
/// ring) gets that queue stopped and counted on the pod, while frames to it still arrive;
/// once the frontend sets the ring up again as QEMU does on a reset (GET_VRING_BASE, then
/// SET_VRING_BASE and SET_VRING_KICK) the device is handed over again, the queue runs, and
/// the count stays.
#[test]
fn a_stopped_queue_is_counted_and_runs_again_after_the_frontend_resets_it() {
    use crate::sys::tap::VNET_HDR_LEN;
    let (sink, pod_ends) = TwoWorkers::start();
    let dir = std::env::temp_dir().join(format!("netstack-vhost-stop-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "vm.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let mut server = VhostServer::start(
        sock,
        pod_spec(7),
        2,
        Arc::clone(&sink) as Arc<dyn DeviceSink>,
    )
    .expect("server");
    let guest = MqGuest::new(2);
    let mut fe = guest.connect(&path, 2);
    guest.start(&mut fe, &[0], true);
    sink.wait_for(1);
    guest.send(0, 0, 0xa0);
    let mut fills = Vec::new();
    assert!(eventually(|| {
        tap_fills(&pod_ends, &mut fills);
        fills == [0xa0]
    }));
    assert!(eventually(|| guest.used_idx(1) == 1));
    assert_eq!(vm_counters(&sink).expect("pod 7").vhost_queue_stops, 0);

    // Garbage: the available index jumps 300 entries ahead on a ring of 256.
    let avail_idx = ring(1).avail_ring_addr - USER + 2;
    guest
        .ram
        .write_all_at(&301u16.to_le_bytes(), avail_idx)
        .expect("poke");
    guest.kicks[1].write(1).expect("kick");
    assert!(
        eventually(|| vm_counters(&sink).is_some_and(|c| c.vhost_queue_stops == 1)),
        "the stop is counted"
    );
    // The other direction goes on.
    guest.post(0, 0);
    pod_ends[0]
        .send(&udp(2, 7, 0xc0, VNET_HDR_LEN))
        .expect("TAP pod sends");
    assert!(
        eventually(|| guest.used_idx(0) == 1),
        "frames to the VM go on"
    );

    // The frontend resets the ring; the guest's ring is sane again.
    assert_eq!(fe.get_vring_base(1).expect("base"), 1);
    guest
        .ram
        .write_all_at(&1u16.to_le_bytes(), avail_idx)
        .expect("avail idx");
    fe.set_vring_base(1, 1).expect("base");
    fe.set_vring_kick(1, &guest.kicks[1]).expect("kick");
    sink.wait_for(2);
    guest.send(0, 1, 0xa1);
    assert!(eventually(|| {
        tap_fills(&pod_ends, &mut fills);
        fills == [0xa0, 0xa1]
    }));
    assert_eq!(
        vm_counters(&sink).expect("pod 7").vhost_queue_stops,
        1,
        "the count goes on across the handover"
    );

    drop(fe);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The kept description and fds follow each new call eventfd (added, replaced, removed, on
/// either queue of either pair): a device built from them has each call where it belongs.
#[test]
fn a_new_call_eventfd_keeps_the_fds_in_step_with_the_description() {
    use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};
    let ram = File::from(memfd_create("guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd"));
    ram.set_len(MIB).expect("size");
    // An eventfd whose counter says who it is.
    let tagged = |n: u64| -> OwnedFd {
        OwnedFd::from(
            NixEventFd::from_value_and_flags(n as u32, EfdFlags::EFD_NONBLOCK).expect("eventfd"),
        )
    };
    // Reads the tag and puts it back (a read resets the counter).
    let tag = |fd: &Option<OwnedFd>| -> Option<u64> {
        fd.as_ref().map(|fd| {
            let mut b = [0u8; 8];
            nix::unistd::read(fd.as_fd(), &mut b).expect("read");
            nix::unistd::write(fd, &b).expect("write back");
            u64::from_ne_bytes(b)
        })
    };
    let cfg = |q: u64| crate::dataplane::virtq::RingConfig {
        size: 256,
        desc: 0x10000 * (q + 1),
        avail: 0x10000 * (q + 1) + 0x1000,
        used: 0x10000 * (q + 1) + 0x2000,
        event_idx: true,
        base: None,
    };
    let pair = |index: usize, calls: bool| super::attach::PairDesc {
        index,
        to_guest: cfg(2 * index as u64),
        to_guest_call: calls,
        from_guest: cfg(2 * index as u64 + 1),
        from_guest_call: calls,
    };
    let mut device = VhostAttach {
        features: OFFERED_FEATURES,
        regions: vec![super::attach::RegionDesc {
            guest_addr: 0,
            size: MIB,
            user_addr: USER,
            mmap_offset: 0,
        }],
        pairs: vec![pair(0, true), pair(1, false)],
    };
    // Region, pair 0: kicks 1 and 2, calls 3 (rx) and 4 (tx); pair 1: kicks 5 and 6.
    let mut fds = vec![OwnedFd::from(ram.try_clone().expect("dup"))];
    fds.extend([1, 2, 3, 4, 5, 6].map(tagged));
    // (vring, new call tag or none, the calls expected after: pair 0 rx, tx, pair 1 rx, tx)
    let steps: [(usize, Option<u64>, [Option<u64>; 4]); 5] = [
        // Pair 1's transmit queue gets a call.
        (3, Some(10), [Some(3), Some(4), None, Some(10)]),
        // Then its receive queue.
        (2, Some(11), [Some(3), Some(4), Some(11), Some(10)]),
        // Pair 0's receive call replaced.
        (0, Some(12), [Some(12), Some(4), Some(11), Some(10)]),
        // Pair 0's transmit call removed.
        (1, None, [Some(12), None, Some(11), Some(10)]),
        // And given back.
        (1, Some(13), [Some(12), Some(13), Some(11), Some(10)]),
    ];
    for (vring, call, want) in steps {
        device
            .set_call(&mut fds, vring, call.map(tagged))
            .expect("set call");
        assert_eq!(fds.len(), device.fd_count(), "vring {vring}");
        let dups: Vec<OwnedFd> = fds.iter().map(|f| f.try_clone().expect("dup")).collect();
        let built = device.clone().into_device(dups).expect("device");
        let got: Vec<Option<u64>> = built
            .pairs
            .iter()
            .flat_map(|p| [tag(&p.to_guest_call), tag(&p.from_guest_call)])
            .collect();
        assert_eq!(got, want, "after vring {vring}");
        let kicks: Vec<Option<u64>> = built
            .pairs
            .into_iter()
            .flat_map(|p| [tag(&Some(p.kick)), tag(&Some(p.to_guest_kick))])
            .collect();
        assert_eq!(kicks, [1, 2, 5, 6].map(Some), "the kicks stay");
    }
    assert!(
        device.set_call(&mut fds, 4, None).is_err(),
        "a vring not served"
    );
}

/// SET_VRING_CALL on a served ring (QEMU sends it when the guest changes its interrupt
/// vectors) reaches the real dataplane without a handover: the device is not given again, the
/// new eventfd is signalled once on arrival and interrupts the guest for the next frame, the
/// old one no longer does, and frames keep flowing.
#[test]
fn a_new_call_eventfd_reaches_the_dataplane_without_a_handover() {
    use crate::sys::tap::VNET_HDR_LEN;
    let (sink, pod_ends) = TwoWorkers::start();
    let dir = std::env::temp_dir().join(format!("netstack-vhost-call-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "vm.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let mut server = VhostServer::start(
        sock,
        pod_spec(7),
        2,
        Arc::clone(&sink) as Arc<dyn DeviceSink>,
    )
    .expect("server");
    let mut guest = MqGuest::new(2);
    guest.calls[0] = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd");
    let mut fe = guest.connect(&path, 2);
    guest.start(&mut fe, &[0], true);
    sink.wait_for(1);
    let used_event = ring(0).avail_ring_addr - USER + 4 + 2 * 256;

    guest.post(0, 0);
    pod_ends[0]
        .send(&udp(2, 7, 0xc0, VNET_HDR_LEN))
        .expect("TAP pod sends");
    assert!(eventually(|| guest.used_idx(0) == 1));
    assert!(
        eventually(|| guest.calls[0].read().is_ok()),
        "the first call eventfd fired"
    );

    let new_call = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd");
    fe.set_vring_call(0, &new_call).expect("call");
    assert!(
        eventually(|| new_call.read().is_ok()),
        "the new eventfd was handed over (signalled once on arrival)"
    );
    // The guest asks for an interrupt past its next buffer.
    guest
        .ram
        .write_all_at(&1u16.to_le_bytes(), used_event)
        .expect("used_event");
    guest.post(0, 1);
    pod_ends[1]
        .send(&udp(2, 7, 0xc1, VNET_HDR_LEN))
        .expect("TAP pod sends");
    assert!(eventually(|| guest.used_idx(0) == 2), "frames keep flowing");
    assert!(
        eventually(|| new_call.read().is_ok()),
        "the new eventfd interrupts"
    );
    assert!(guest.calls[0].read().is_err(), "the old one no longer does");
    assert_eq!(sink.served.lock().expect("served").len(), 1, "no handover");

    drop(fe);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the QEMU it holds when dropped (a failing test leaves no VM behind).
struct Qemu(std::process::Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the serial console until it has printed `want` (bounded: `secs` seconds);
/// everything read so far is in `seen`.
fn console_until(console: &mut UnixStream, seen: &mut String, want: &str, secs: u64) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if seen.contains(want) {
            return true;
        }
        match console.read(&mut buf) {
            Ok(0) => {
                seen.push_str("\n[console closed]");
                return false;
            }
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                seen.push_str(&format!("\n[console: {e}]"));
                return false;
            }
        }
    }
    seen.contains(want)
}

/// A real QEMU (TCG, two vCPUs, `queues=2,mq=on`) boots the e2e VM (`e2e/vm/`: set
/// NETSTACK_VM_KERNEL and NETSTACK_VM_INITRD to `vm_assets`' VM_KERNEL and VM_INITRD) on the
/// server of a dataplane with two workers: the device is served with pair 0 as soon as QEMU
/// enables it, then with both pairs once the guest's driver asks for two (VQ_PAIRS_SET); the
/// guest's pings reach a TAP pod, and 80 datagrams from the TAP pod (40 through each worker)
/// reach the guest. Run by hand:
/// `cargo test -p netstackd real_qemu -- --ignored --nocapture`.
#[test]
#[ignore = "boots a VM: needs qemu-system-x86_64 and the e2e VM's kernel and initramfs"]
fn real_qemu_enables_its_pairs_and_pings_through_them() {
    let (Ok(kernel), Ok(initrd)) = (
        std::env::var("NETSTACK_VM_KERNEL"),
        std::env::var("NETSTACK_VM_INITRD"),
    ) else {
        panic!("set NETSTACK_VM_KERNEL and NETSTACK_VM_INITRD (e2e/vm/lib.sh: vm_assets)");
    };
    // The server's and the dataplane's log lines, with the test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let (sink, pod_ends) = TwoWorkers::start();
    let dir = std::env::temp_dir().join(format!("netstack-vhost-qemu-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "vm.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let mut server = VhostServer::start(
        sock,
        pod_spec(7),
        2,
        Arc::clone(&sink) as Arc<dyn DeviceSink>,
    )
    .expect("server");
    let console_path = dir.join("console.sock");
    let mac = pod_spec(7).mac.0;
    let mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    // Bounded by the guard: killed when the test ends, passed or not.
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "qemu64", "-smp", "2"])
        .args([
            "-m",
            "256M",
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
        ])
        .args([
            "-numa",
            "node,memdev=mem",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-no-user-config", "-monitor", "none"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=ser0,path={},server=on,wait=off",
            console_path.display()
        ))
        .args([
            "-serial",
            "chardev:ser0",
            "-kernel",
            &kernel,
            "-initrd",
            &initrd,
        ])
        .arg("-append")
        .arg("console=ttyS0 quiet loglevel=1 panic=-1 ns.ip=10.77.0.7/24 ns.gw=10.77.0.1")
        .arg("-chardev")
        .arg(format!("socket,id=c0,path={}", path.display()))
        .args(["-netdev", "vhost-user,id=n0,chardev=c0,queues=2"])
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,netdev=n0,mac={mac},vectors=0,mq=on"
        ))
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("qemu");
    let _qemu = Qemu(qemu);
    assert!(eventually(|| console_path.exists()), "QEMU's console");
    let mut console = UnixStream::connect(&console_path).expect("console");
    console
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut seen = String::new();
    assert!(
        console_until(&mut console, &mut seen, "NETSTACK-VM-READY", 180),
        "the VM booted: {seen}"
    );
    // The rest of the marker line: the guest's address and MTU.
    assert!(
        console_until(&mut console, &mut seen, " mtu ", 30),
        "{seen}"
    );
    assert!(seen.contains("NETSTACK-VM-READY net=eth0"), "{seen}");
    let mut run = |n: u32, cmd: &str, seen: &mut String| -> String {
        use std::io::Write;
        console
            .write_all(format!("{n} {cmd}\n").as_bytes())
            .expect("command");
        let end = format!("@@E{n}=");
        assert!(console_until(&mut console, seen, &end, 60), "{cmd}: {seen}");
        // Up to the end of the status line.
        assert!(console_until(&mut console, seen, "\n", 5) || seen.ends_with('\n'));
        let from = seen.find(&format!("@@B{n}")).map_or(0, |i| i);
        seen[from..].to_string()
    };
    // The guest's echo requests reach the TAP pod (which does not answer).
    run(1, "ping -c 3 -W 1 10.77.0.2", &mut seen);
    let mut requests = 0;
    assert!(
        eventually(|| {
            let mut got = [0u8; 2048];
            for end in &pod_ends {
                while let Ok(n) = end.recv(&mut got) {
                    // An ICMP echo request from the VM: IPv4 protocol 1, type 8.
                    let ip = crate::sys::tap::VNET_HDR_LEN + 14;
                    if n > ip + 20 && got[ip + 9] == 1 && got[ip + 20] == 8 {
                        requests += 1;
                    }
                }
            }
            requests >= 3
        }),
        "the TAP pod got the guest's pings: {requests}"
    );
    // 40 datagrams to the guest from each of the TAP pod's queues (one per worker).
    let rx = |out: &str| -> u64 {
        out.lines()
            .filter_map(|l| l.trim().parse().ok())
            .next()
            .unwrap_or(0)
    };
    let before = rx(&run(
        2,
        "cat /sys/class/net/eth0/statistics/rx_packets",
        &mut seen,
    ));
    for i in 0..40u8 {
        for end in &pod_ends {
            end.send(&udp(2, 7, i, crate::sys::tap::VNET_HDR_LEN))
                .expect("TAP pod sends");
        }
    }
    let mut after = before;
    for k in 0..30 {
        after = rx(&run(
            3 + k,
            "cat /sys/class/net/eth0/statistics/rx_packets",
            &mut seen,
        ));
        if after >= before + 80 {
            break;
        }
    }
    let served = sink.served.lock().expect("served").clone();
    eprintln!(
        "devices served: {served:?}\nthe VM's counters: {:?}\nguest rx_packets {before} -> {after}",
        vm_counters(&sink)
    );
    assert!(after >= before + 80, "the guest received the 80 datagrams");
    assert_eq!(
        served.first(),
        Some(&vec![0]),
        "pair 0 first, as QEMU enables it"
    );
    assert_eq!(
        served.last(),
        Some(&vec![0, 1]),
        "both pairs once the guest asked"
    );

    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// DEL stops a pod's server whose socket file was removed (or replaced) while no frontend was
/// connected: the waiting accept ends through the listening socket itself, not through a
/// connection to a path that is no longer there (which would leave `stop` waiting for ever).
#[test]
fn a_server_whose_socket_file_is_gone_still_stops() {
    let dir = std::env::temp_dir().join(format!("netstack-vhost-gone-{}", std::process::id()));
    let sock = VhostSocket::bind(&dir, "gone.sock").expect("bind");
    let path = sock.path().to_path_buf();
    let rec = Arc::new(Recorder::default());
    let mut server = VhostServer::start(sock, spec(), 1, Arc::clone(&rec) as Arc<dyn DeviceSink>)
        .expect("server");
    // The thread is waiting in accept once a connection is taken: one is made and closed.
    drop(UnixStream::connect(&path).expect("connect"));
    std::fs::remove_file(&path).expect("remove the socket by hand");
    server.stop();
    assert!(!path.exists());
    assert_eq!(rec.wait_for(0), 0, "nothing was handed to the dataplane");
    let _ = std::fs::remove_dir_all(&dir);
}
