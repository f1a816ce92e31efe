//! The supervisor's VM pod thread against a real frontend (the `vhost` crate's `Frontend`
//! over a real unix socket, memfd guest memory, real eventfds), with a sink that records
//! what it is asked and builds the dataplane's device from each attach (mapping the memory
//! from the fds it got), and the device description across the real IPC framing.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
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
/// region fd, the transmit queue's kick and both calls; GET_VRING_BASE takes it away before
/// its reply; a ring's new call eventfd takes it away and hands it over again, resuming at
/// the used index; the frontend leaving takes it away; a frontend may connect again; stop
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
        // One region fd, the kick, two calls; the memory mapped from the fd is the guest's.
        assert_eq!((*fds, d.fd_count()), (4, 4));
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

    // A new call eventfd for ring 0: away and back, the rings resuming at the used index.
    fe.set_vring_call(0, &calls[2]).expect("call");
    assert_eq!(rec.wait_for(3), 3);
    {
        let ev = rec.events.lock().expect("events");
        assert!(matches!(ev[1], Event::Detach(7)), "{ev:?}");
        let Event::Attach(d, ..) = &ev[2] else {
            panic!("{ev:?}");
        };
        assert_eq!(
            (d.pairs[0].to_guest.base, d.pairs[0].from_guest.base),
            (None, None)
        );
    }

    // GET_VRING_BASE: the dataplane lets go before the answer (the used index, 9).
    ram.write_all_at(&9u16.to_le_bytes(), 0x22000 + 2)
        .expect("used idx");
    assert_eq!(fe.get_vring_base(1).expect("base"), 9);
    {
        let ev = rec.events.lock().expect("events");
        assert_eq!(ev.len(), 4, "{ev:?}");
        assert!(matches!(ev[3], Event::Detach(7)), "{ev:?}");
    }
    // Not complete again until ring 1 is started again.
    fe.set_vring_enable(0, true).expect("enable");
    assert_eq!(rec.events.lock().expect("events").len(), 4);
    // Ring 1 stayed enabled: complete again at its kick (from the base set), then away and
    // back for its call eventfd.
    start_rings(&mut fe, &[1], &kicks, &calls);
    assert_eq!(rec.wait_for(7), 7);
    {
        let ev = rec.events.lock().expect("events");
        assert!(
            matches!(&ev[4], Event::Attach(d, ..) if d.pairs[0].from_guest.base == Some(3)),
            "{ev:?}"
        );
        assert!(matches!(ev[5], Event::Detach(7)), "{ev:?}");
        assert!(
            matches!(&ev[6], Event::Attach(d, ..) if d.pairs[0].from_guest.base.is_none()),
            "{ev:?}"
        );
    }

    // The frontend leaves: the pod is taken away. Another one connects and is served.
    drop(fe);
    assert_eq!(rec.wait_for(8), 8);
    assert!(matches!(
        rec.events.lock().expect("events")[7],
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
    ipc::send(&a, &req, &[ram.as_fd(), kick.as_fd()]).expect("send");
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
