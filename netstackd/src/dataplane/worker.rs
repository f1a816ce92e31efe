//! One dataplane worker: an epoll loop over its TAP queues, its uplink queue and a wakeup
//! eventfd. Blocks in epoll when idle (no busy polling); drains at most `BATCH` frames per fd
//! per wakeup so one busy pod cannot starve the others.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::stack::{DropReason, LinkCounters, PodPort, Router, Verdict};
use crate::sys::tap::{read_frame, write_frame};
use crate::wire::vnet::VNET_HDR_LEN;
use crate::wire::{ethernet, VnetHdr};

use super::capture::CaptureSink;
use super::PodSpec;

/// Frames read from one fd per wakeup before moving on to the next.
const BATCH: usize = 64;
/// Room for the largest GSO frame a TAP hands over, plus an Ethernet header.
const FRAME_BUF_LEN: usize = 1 << 17;
const TOKEN_WAKE: u64 = u64::MAX;
const TOKEN_UPLINK: u64 = u64::MAX - 1;

/// A worker's handles on one pod's TAP.
pub(super) struct PodIo {
    /// The queues this worker reads.
    pub rx: Vec<OwnedFd>,
    /// A queue to write to when this worker reads none of the pod's queues.
    pub tx_extra: Option<OwnedFd>,
    /// Where this pod's frames are copied while a capture runs.
    pub capture: Option<Arc<CaptureSink>>,
}

impl PodIo {
    fn tx(&self) -> Option<BorrowedFd<'_>> {
        self.rx
            .first()
            .or(self.tx_extra.as_ref())
            .map(|fd| fd.as_fd())
    }
}

/// Messages from the daemon to a worker.
pub(super) enum WorkerCmd {
    Attach(
        PodSpec,
        Arc<LinkCounters>,
        PodIo,
        mpsc::Sender<io::Result<()>>,
    ),
    Detach(u64, mpsc::Sender<()>),
    Capture(u64, Arc<CaptureSink>, mpsc::Sender<bool>),
    Shutdown,
}

pub(super) struct Worker {
    index: usize,
    cmds: mpsc::Receiver<WorkerCmd>,
    wake: Arc<EventFd>,
    epoll: Epoll,
    uplink: OwnedFd,
    uplink_counters: Arc<LinkCounters>,
    router: Router<PodIo>,
    wakeups: Arc<AtomicU64>,
    vnet_raw: [u8; VNET_HDR_LEN],
    buf: Box<[u8]>,
}

fn token(id: u64, queue: usize) -> u64 {
    (id << 8) | queue as u64
}

impl Worker {
    pub(super) fn new(
        index: usize,
        cmds: mpsc::Receiver<WorkerCmd>,
        wake: Arc<EventFd>,
        uplink: OwnedFd,
        uplink_counters: Arc<LinkCounters>,
        router: Router<PodIo>,
        wakeups: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
        )?;
        epoll.add(
            uplink.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_UPLINK),
        )?;
        Ok(Worker {
            index,
            cmds,
            wake,
            epoll,
            uplink,
            uplink_counters,
            router,
            wakeups,
            vnet_raw: [0; VNET_HDR_LEN],
            buf: vec![0u8; FRAME_BUF_LEN].into_boxed_slice(),
        })
    }

    pub(super) fn run(mut self) {
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(worker = self.index, "epoll_wait failed: {e}");
                    return;
                }
            };
            // Only this worker writes its counter: a plain load and store.
            self.wakeups
                .store(self.wakeups.load(Relaxed).wrapping_add(1), Relaxed);
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        if !self.apply_commands() {
                            return;
                        }
                    }
                    TOKEN_UPLINK => self.drain_uplink(),
                    t => self.drain_pod(t >> 8, (t & 0xff) as usize),
                }
            }
        }
    }

    /// Applies pending commands; false when the worker must stop.
    fn apply_commands(&mut self) -> bool {
        let _ = self.wake.read();
        loop {
            match self.cmds.try_recv() {
                Ok(WorkerCmd::Attach(spec, counters, io, ack)) => {
                    let _ = ack.send(self.attach(spec, counters, io));
                }
                Ok(WorkerCmd::Detach(id, ack)) => {
                    if let Some(port) = self.router.remove(id) {
                        for fd in &port.io.rx {
                            let _ = self.epoll.delete(fd.as_fd());
                        }
                    }
                    let _ = ack.send(());
                }
                Ok(WorkerCmd::Capture(id, sink, ack)) => {
                    let found = match self.router.pod_mut(id) {
                        Some(pod) => {
                            pod.io.capture = Some(sink);
                            true
                        }
                        None => false,
                    };
                    let _ = ack.send(found);
                }
                Ok(WorkerCmd::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn attach(&mut self, spec: PodSpec, counters: Arc<LinkCounters>, io: PodIo) -> io::Result<()> {
        for (q, fd) in io.rx.iter().enumerate() {
            if let Err(e) = self.epoll.add(
                fd.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, token(spec.id, q)),
            ) {
                for fd in &io.rx[..q] {
                    let _ = self.epoll.delete(fd.as_fd());
                }
                return Err(e.into());
            }
        }
        self.router.insert(PodPort {
            id: spec.id,
            mac: spec.mac,
            ipv4: spec.ipv4,
            mtu: spec.mtu,
            counters,
            io,
        });
        Ok(())
    }

    fn drain_pod(&mut self, id: u64, queue: usize) {
        let w = self.index;
        let Worker {
            router,
            vnet_raw,
            buf,
            uplink,
            uplink_counters,
            ..
        } = self;
        for _ in 0..BATCH {
            let Some(src) = router.pod(id) else { return };
            let Some(fd) = src.io.rx.get(queue) else {
                return;
            };
            let n = match read_frame(fd.as_fd(), vnet_raw, buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(worker = w, id, "TAP read failed: {e}");
                    src.counters.dropped(w, DropReason::Malformed);
                    return;
                }
            };
            src.counters.rx(w, n);
            if let Some(sink) = &src.io.capture {
                sink.record(&buf[..n]);
            }
            let mut vnet = VnetHdr::parse(vnet_raw);
            if vnet.is_gso() {
                src.counters.rx_gso(w);
            }
            match router.from_pod(id, &mut vnet, buf, n) {
                Verdict::ToPod { id: dst, len } => {
                    vnet.emit(vnet_raw);
                    if let Some(d) = router.pod(dst) {
                        send_to_pod(w, d, vnet_raw, &buf[..len]);
                    }
                }
                Verdict::ToUplink { len } => {
                    vnet.emit(vnet_raw);
                    let packet = &buf[ethernet::HEADER_LEN..len];
                    match write_frame(uplink.as_fd(), vnet_raw, packet) {
                        Ok(()) => uplink_counters.tx(w, packet.len()),
                        Err(_) => uplink_counters.dropped(w, DropReason::TxError),
                    }
                }
                Verdict::Reply { len, dropped } => {
                    if let Some(reason) = dropped {
                        src.counters.dropped(w, reason);
                    }
                    vnet.emit(vnet_raw);
                    send_to_pod(w, src, vnet_raw, &buf[..len]);
                }
                Verdict::Consumed => {}
                Verdict::Drop(reason) => src.counters.dropped(w, reason),
            }
        }
        self.end_finished_capture(id);
    }

    /// Forgets a pod's capture once it is over, so the hot path is back to one branch.
    fn end_finished_capture(&mut self, id: u64) {
        if let Some(pod) = self.router.pod_mut(id) {
            if pod.io.capture.as_ref().is_some_and(|c| c.is_closed()) {
                pod.io.capture = None;
            }
        }
    }

    fn drain_uplink(&mut self) {
        let w = self.index;
        let Worker {
            router,
            vnet_raw,
            buf,
            uplink,
            uplink_counters,
            ..
        } = self;
        for _ in 0..BATCH {
            let n = match read_frame(uplink.as_fd(), vnet_raw, &mut buf[ethernet::HEADER_LEN..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(worker = w, "uplink read failed: {e}");
                    uplink_counters.dropped(w, DropReason::Malformed);
                    return;
                }
            };
            uplink_counters.rx(w, n);
            let mut vnet = VnetHdr::parse(vnet_raw);
            if vnet.is_gso() {
                uplink_counters.rx_gso(w);
            }
            match router.from_uplink(&mut vnet, buf, n) {
                Verdict::ToPod { id, len } => {
                    vnet.emit(vnet_raw);
                    if let Some(d) = router.pod(id) {
                        send_to_pod(w, d, vnet_raw, &buf[..len]);
                    }
                }
                Verdict::Drop(reason) => uplink_counters.dropped(w, reason),
                _ => uplink_counters.dropped(w, DropReason::NoRoute),
            }
        }
    }
}

/// Writes one frame into a pod's TAP and counts it.
fn send_to_pod(w: usize, pod: &PodPort<PodIo>, vnet: &[u8; VNET_HDR_LEN], frame: &[u8]) {
    if let Some(sink) = &pod.io.capture {
        sink.record(frame);
    }
    let ok = pod
        .io
        .tx()
        .is_some_and(|fd| write_frame(fd, vnet, frame).is_ok());
    if ok {
        pod.counters.tx(w, frame.len());
    } else {
        pod.counters.dropped(w, DropReason::TxError);
    }
}
