//! [`Virtq`] over guest memory mapped from a memfd the way the supervisor records it, with
//! rings a test plays the guest driver on (`virtio_queue::mock`): frames both ways, mergeable
//! buffers, GSO headers, event-index interrupts, hostile rings, resume.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;

use super::*;
use crate::vhost::{map_regions, MemRegion};
use crate::wire::VnetHdr;

const MEM: u64 = 1 << 20;
const QSIZE: u16 = 16;
/// The transmit ring's and the receive ring's tables.
const TXQ: u64 = 0;
const RXQ: u64 = 0x1000;
/// Where the guest's buffers live.
const BUFS: u64 = 0x1_0000;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// 1 MiB of guest memory from a memfd, mapped as the dataplane maps recorded regions.
fn guest_memory() -> GuestMemoryMmap {
    let f = File::from(memfd_create("guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd"));
    f.set_len(MEM).expect("memfd size");
    map_regions(&[MemRegion {
        guest_addr: 0,
        size: MEM,
        user_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
        file: f,
    }])
    .expect("map")
}

fn ring(mem: &GuestMemoryMmap, at: u64) -> MockSplitQueue<'_, GuestMemoryMmap> {
    MockSplitQueue::create(mem, GuestAddress(at), QSIZE)
}

/// The used ring of `q`: 2 KiB after its table. (The mock's own used ring starts where the
/// available ring's `used_event` lies, so the event-index tests could not use it.)
fn used_addr(q: &MockSplitQueue<'_, GuestMemoryMmap>) -> u64 {
    q.desc_table_addr().0 + 0x800
}

fn config(q: &MockSplitQueue<'_, GuestMemoryMmap>, event_idx: bool) -> RingConfig {
    RingConfig {
        size: QSIZE,
        desc: q.desc_table_addr().0,
        avail: q.avail_addr().0,
        used: used_addr(q),
        event_idx,
        base: None,
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    SplitDescriptor::new(addr, len, flags, next).into()
}

/// A call eventfd: the test's end and the queue's.
fn call() -> (EventFd, OwnedFd) {
    let e = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd");
    let fd = e.as_fd().try_clone_to_owned().expect("dup");
    (e, fd)
}

/// Interrupts since the last look.
fn interrupts(e: &EventFd) -> u64 {
    e.read().unwrap_or(0)
}

fn read_u16(mem: &GuestMemoryMmap, at: u64) -> u16 {
    u16::from_le(mem.read_obj(GuestAddress(at)).expect("read"))
}

fn used_idx(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    read_u16(mem, used_addr(q) + 2)
}

/// Used element `i`: (chain head, bytes written).
fn used_elem(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16) -> (u32, u32) {
    let at = used_addr(q) + 4 + 8 * u64::from(i % QSIZE);
    let id: u32 = mem.read_obj(GuestAddress(at)).expect("read");
    let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("read");
    (u32::from_le(id), u32::from_le(len))
}

fn bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(at)).expect("read");
    v
}

/// A TCPv4 GSO header as a guest with TSO sends it (12 bytes, num_buffers 0).
fn gso_header() -> [u8; VIRTIO_NET_HDR_LEN] {
    let mut h = [0u8; VIRTIO_NET_HDR_LEN];
    let v = VnetHdr {
        flags: crate::wire::vnet::FLAG_NEEDS_CSUM,
        gso_type: crate::wire::vnet::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let mut ten = [0u8; VNET_HDR_LEN];
    v.emit(&mut ten);
    h[..VNET_HDR_LEN].copy_from_slice(&ten);
    h
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

/// The guest sends frame `i` (`len` bytes of pattern `i`) with a plain header, its chain at
/// descriptor `2 * i` (header, then frame in a second descriptor).
fn guest_sends(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16, len: u32) {
    let at = BUFS + u64::from(i) * 0x2000;
    mem.write_slice(&[0u8; VIRTIO_NET_HDR_LEN], GuestAddress(at))
        .expect("header");
    mem.write_slice(&pattern(len as usize, i as u8), GuestAddress(at + 0x100))
        .expect("frame");
    let chain = [
        desc(at, VIRTIO_NET_HDR_LEN as u32, NEXT, 2 * i + 1),
        desc(at + 0x100, len, 0, 0),
    ];
    q.add_desc_chains(&chain, 2 * i).expect("chain");
}

/// The guest posts receive buffer `i` of `len` bytes (one descriptor at index `i`).
fn guest_posts(q: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16, len: u32) {
    let at = 0x8_0000 + u64::from(i) * 0x1000;
    q.add_desc_chains(&[desc(at, len, WRITE, 0)], i)
        .expect("buffer");
}

/// A GSO frame from the guest (header and frame in two descriptors) arrives in the worker's
/// buffer with its header as a TAP gives it, the guest gets its buffer back and one
/// interrupt; given to the guest's receive queue it lands with the same header and
/// num_buffers 1.
#[test]
fn a_gso_frame_crosses_both_ways_with_its_header() {
    let mem = guest_memory();
    let txq = ring(&mem, TXQ);
    let rxq = ring(&mem, RXQ);
    let frame = pattern(1000, 0x5a);
    mem.write_slice(&gso_header(), GuestAddress(BUFS))
        .expect("hdr");
    mem.write_slice(&frame, GuestAddress(BUFS + 0x1000))
        .expect("frame");
    txq.add_desc_chains(
        &[
            desc(BUFS, VIRTIO_NET_HDR_LEN as u32, NEXT, 1),
            desc(BUFS + 0x1000, 1000, 0, 0),
        ],
        0,
    )
    .expect("chain");

    let (tx_irq, tx_call) = call();
    let mut tx = Virtq::new(&mem, &config(&txq, false), Some(tx_call)).expect("tx queue");
    let mut vnet = [0xa5u8; VNET_HDR_LEN];
    let mut buf = vec![0xa5u8; 2048];
    let got = tx.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf);
    assert_eq!(got, Ok(Some(RxFrame::Whole(1000))));
    assert_eq!(&buf[..1000], &frame[..]);
    let hdr = VnetHdr::parse(&vnet);
    assert!(hdr.needs_csum() && hdr.is_gso());
    assert_eq!(
        (hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset),
        (54, 1448, 34, 16)
    );
    assert_eq!(
        tx.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf),
        Ok(None)
    );
    // Nothing is published before the flush.
    assert_eq!(used_idx(&mem, &txq), 0);
    assert_eq!(tx.flush(&mem), Ok(true));
    assert_eq!(used_idx(&mem, &txq), 1);
    assert_eq!(used_elem(&mem, &txq, 0), (0, 0));
    assert_eq!(interrupts(&tx_irq), 1);

    guest_posts(&rxq, 0, 2048);
    let (rx_irq, rx_call) = call();
    let mut rx = Virtq::new(&mem, &config(&rxq, false), Some(rx_call)).expect("rx queue");
    let put = rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, true, &vnet, &buf[..1000]);
    assert_eq!(put, Ok(Put::Delivered(1)));
    assert_eq!(rx.flush(&mem), Ok(true));
    assert_eq!(interrupts(&rx_irq), 1);
    assert_eq!(used_elem(&mem, &rxq, 0), (0, 1012));
    let landed = bytes(&mem, 0x8_0000, 1012);
    let mut want = gso_header();
    want[10] = 1; // num_buffers
    assert_eq!(&landed[..12], &want[..]);
    assert_eq!(&landed[12..], &frame[..]);
}

/// With mergeable buffers a frame larger than one buffer spreads over as many as it takes;
/// num_buffers counts them and the guest sees all of them at once, at the flush.
#[test]
fn mergeable_buffers_take_a_frame_larger_than_one() {
    let mem = guest_memory();
    let rxq = ring(&mem, RXQ);
    for i in 0..4 {
        guest_posts(&rxq, i, 1024);
    }
    let mut rx = Virtq::new(&mem, &config(&rxq, false), None).expect("rx queue");
    let frame = pattern(3000, 3);
    let vnet = [0u8; VNET_HDR_LEN];
    assert_eq!(
        rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, true, &vnet, &frame),
        Ok(Put::Delivered(3))
    );
    assert_eq!(used_idx(&mem, &rxq), 0, "published before the flush");
    assert_eq!(rx.flush(&mem), Ok(true));
    assert_eq!(used_idx(&mem, &rxq), 3);
    let lens: Vec<_> = (0..3).map(|i| used_elem(&mem, &rxq, i)).collect();
    assert_eq!(lens, vec![(0, 1024), (1, 1024), (2, 3012 - 2048)]);
    let mut landed = Vec::new();
    for (i, (_, len)) in lens.iter().enumerate() {
        landed.extend(bytes(&mem, 0x8_0000 + i as u64 * 0x1000, *len as usize));
    }
    assert_eq!(u16::from_le_bytes([landed[10], landed[11]]), 3);
    assert_eq!(&landed[12..], &frame[..]);
    assert_eq!(
        rx.next_avail(),
        3,
        "the fourth buffer is left for the next frame"
    );
}

/// Without mergeable buffers a frame must fit one chain (which may have several
/// descriptors); one that does not is refused whole, nothing taken, the queue still running.
/// A queue without buffers, or without enough of them, takes nothing either.
#[test]
fn a_frame_that_does_not_fit_takes_nothing() {
    let mem = guest_memory();
    let rxq = ring(&mem, RXQ);
    let mut rx = Virtq::new(&mem, &config(&rxq, false), None).expect("rx queue");
    let vnet = [0u8; VNET_HDR_LEN];
    let frame = pattern(3000, 9);
    assert_eq!(
        rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, true, &vnet, &frame),
        Ok(Put::NoRoom)
    );
    // One chain of two descriptors (1024 + 2048) holds the frame.
    rxq.add_desc_chains(
        &[
            desc(0x8_0000, 1024, WRITE | NEXT, 1),
            desc(0x9_0000, 2048, WRITE, 0),
        ],
        0,
    )
    .expect("chain");
    assert_eq!(
        rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, false, &vnet, &frame),
        Ok(Put::Delivered(1))
    );
    rx.flush(&mem).expect("flush");
    assert_eq!(used_elem(&mem, &rxq, 0), (0, 3012));
    assert_eq!(bytes(&mem, 0x9_0000, 3012 - 1024), frame[1012..].to_vec());
    // A 1024-byte buffer cannot take it.
    rxq.add_desc_chains(&[desc(0xa_0000, 1024, WRITE, 0)], 2)
        .expect("buffer");
    assert_eq!(
        rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, false, &vnet, &frame),
        Ok(Put::TooBig)
    );
    assert_eq!(rx.next_avail(), 1);
    // With mergeable buffers, one buffer of 1024 is not enough: nothing taken.
    assert_eq!(
        rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, true, &vnet, &frame),
        Ok(Put::NoRoom)
    );
    assert_eq!(rx.next_avail(), 1);
    assert_eq!(rx.stopped(), None);
    // A small frame fits.
    assert_eq!(
        rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, false, &vnet, &frame[..500]),
        Ok(Put::Delivered(1))
    );
    rx.flush(&mem).expect("flush");
    assert_eq!(used_elem(&mem, &rxq, 1), (2, 512));
}

/// A guest that puts garbage in its rings stops its own queue with an error the caller can
/// count, and every later call says it is stopped: no panic, no access outside its memory.
#[test]
fn hostile_rings_stop_the_queue() {
    // (what it covers, the chain at descriptor 0, a change to the available ring, the error)
    type Poke = Option<(u64, u16)>;
    let avail_idx: Poke = Some((2, 100));
    let avail_head: Poke = Some((4, 999));
    let cases: Vec<(&str, Vec<RawDescriptor>, Poke, VirtqError)> = vec![
        (
            "a descriptor address outside guest memory",
            vec![desc(MEM + 0x1000, 100, 0, 0)],
            None,
            VirtqError::OutsideMemory {
                addr: MEM + 0x1000,
                len: 100,
            },
        ),
        (
            "a length beyond guest memory",
            vec![desc(MEM - 0x1000, 0x10_0000, 0, 0)],
            None,
            VirtqError::OutsideMemory {
                addr: MEM - 0x1000,
                len: 0x10_0000,
            },
        ),
        (
            "an address that wraps around",
            vec![desc(u64::MAX - 10, 100, 0, 0)],
            None,
            VirtqError::OutsideMemory {
                addr: u64::MAX - 10,
                len: 100,
            },
        ),
        (
            "a descriptor loop",
            vec![desc(BUFS, 64, NEXT, 1), desc(BUFS + 0x100, 64, NEXT, 0)],
            None,
            VirtqError::Chain,
        ),
        (
            "a next index past the table",
            vec![desc(BUFS, 64, NEXT, 200)],
            None,
            VirtqError::Chain,
        ),
        (
            "an available index more than the queue size ahead",
            vec![desc(BUFS, 64, 0, 0)],
            avail_idx,
            VirtqError::AvailIndex,
        ),
        (
            "a head index past the table",
            vec![desc(BUFS, 64, 0, 0)],
            avail_head,
            VirtqError::Chain,
        ),
    ];
    for (what, chain, poke, want) in cases {
        let mem = guest_memory();
        let txq = ring(&mem, TXQ);
        txq.add_desc_chains(&chain, 0).expect("chain");
        if let Some((off, v)) = poke {
            mem.write_obj(v.to_le(), GuestAddress(txq.avail_addr().0 + off))
                .expect("poke");
        }
        let mut tx = Virtq::new(&mem, &config(&txq, false), None).expect("queue");
        let mut vnet = [0u8; VNET_HDR_LEN];
        let mut buf = vec![0u8; 2048];
        let got = tx.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf);
        assert_eq!(got, Err(want), "{what}");
        assert_eq!(tx.stopped(), Some(want), "{what}");
        let again = tx.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf);
        assert_eq!(again, Err(VirtqError::Stopped), "{what}");
        assert_eq!(used_idx(&mem, &txq), 0, "{what}: nothing used");
    }

    // The receive side: a buffer outside memory, a chain with no writable buffer.
    let rx_cases = [
        (
            "a receive buffer outside guest memory",
            desc(MEM, 2048, WRITE, 0),
            VirtqError::OutsideMemory {
                addr: MEM,
                len: 2048,
            },
        ),
        (
            "a receive chain with nothing writable",
            desc(0x8_0000, 2048, 0, 0),
            VirtqError::Chain,
        ),
    ];
    for (what, d, want) in rx_cases {
        let mem = guest_memory();
        let rxq = ring(&mem, RXQ);
        rxq.add_desc_chains(&[d], 0).expect("chain");
        let mut rx = Virtq::new(&mem, &config(&rxq, false), None).expect("queue");
        let vnet = [0u8; VNET_HDR_LEN];
        let put = rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, true, &vnet, &[1u8; 100]);
        assert_eq!(put, Err(want), "{what}");
        let again = rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, true, &vnet, &[1u8; 100]);
        assert_eq!(again, Err(VirtqError::Stopped), "{what}");
    }

    // Rings that do not lie in guest memory never make a queue.
    let mem = guest_memory();
    let txq = ring(&mem, TXQ);
    let outside = RingConfig {
        used: MEM - 8,
        ..config(&txq, false)
    };
    assert!(matches!(
        Virtq::new(&mem, &outside, None),
        Err(VirtqError::BadRing { .. })
    ));
    let not_pow2 = RingConfig {
        size: 12,
        ..config(&txq, false)
    };
    assert!(Virtq::new(&mem, &not_pow2, None).is_err());
}

/// A queue built again over the same memory (a new dataplane after a restart) starts at the
/// used index: what was used is not taken again, what was taken but never used is.
#[test]
fn a_new_queue_resumes_at_the_used_index() {
    let mem = guest_memory();
    let txq = ring(&mem, TXQ);
    for i in 0..3 {
        guest_sends(&mem, &txq, i, 100 + u32::from(i));
    }
    let mut vnet = [0u8; VNET_HDR_LEN];
    let mut buf = vec![0u8; 2048];
    let mut first = Virtq::new(&mem, &config(&txq, false), None).expect("queue");
    for i in 0..3 {
        let got = first.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf);
        assert_eq!(got, Ok(Some(RxFrame::Whole(100 + i))));
    }
    first.flush(&mem).expect("flush");
    guest_sends(&mem, &txq, 3, 400);
    // Taken, never used: the dataplane died here.
    let got = first.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf);
    assert_eq!(got, Ok(Some(RxFrame::Whole(400))));
    drop(first);

    let mut second = Virtq::new(&mem, &config(&txq, false), None).expect("queue");
    assert_eq!((second.next_avail(), second.next_used()), (3, 3));
    buf.fill(0);
    let got = second.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf);
    assert_eq!(got, Ok(Some(RxFrame::Whole(400))));
    assert_eq!(&buf[..400], &pattern(400, 3)[..]);
    assert_eq!(
        second.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf),
        Ok(None)
    );
    second.flush(&mem).expect("flush");
    assert_eq!(used_idx(&mem, &txq), 4);
    assert_eq!(used_elem(&mem, &txq, 3), (6, 0));

    // A base the frontend set wins over the used index.
    let based = RingConfig {
        base: Some(2),
        ..config(&txq, false)
    };
    let third = Virtq::new(&mem, &based, None).expect("queue");
    assert_eq!((third.next_avail(), third.next_used()), (2, 4));
}

/// With event index the guest is interrupted only when the used index passes the entry it
/// named; without it, only while it has not set NO_INTERRUPT. Re-enabling notifications
/// names the next entry to read and says when buffers arrived meanwhile.
#[test]
fn the_guest_is_interrupted_when_it_asks() {
    let mem = guest_memory();
    let txq = ring(&mem, TXQ);
    for i in 0..3 {
        guest_sends(&mem, &txq, i, 60);
    }
    let used_event = txq.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
    mem.write_obj(1u16.to_le(), GuestAddress(used_event))
        .expect("used_event");
    let (irq, fd) = call();
    let mut tx = Virtq::new(&mem, &config(&txq, true), Some(fd)).expect("queue");
    let mut vnet = [0u8; VNET_HDR_LEN];
    let mut buf = vec![0u8; 2048];
    let mut seen = Vec::new();
    for _ in 0..3 {
        tx.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf)
            .expect("take");
        seen.push((tx.flush(&mem).expect("flush"), interrupts(&irq)));
    }
    // used goes 0→1 (event 1 not passed), 1→2 (passed), 2→3 (already behind).
    assert_eq!(seen, vec![(false, 0), (true, 1), (false, 0)]);

    assert_eq!(tx.enable_notification(&mem), Ok(false));
    let avail_event = used_addr(&txq) + 4 + 8 * u64::from(QSIZE);
    assert_eq!(read_u16(&mem, avail_event), 3);
    guest_sends(&mem, &txq, 3, 60);
    assert_eq!(tx.enable_notification(&mem), Ok(true));

    // Without event index: NO_INTERRUPT in the available ring's flags.
    let mem = guest_memory();
    let txq = ring(&mem, TXQ);
    for i in 0..2 {
        guest_sends(&mem, &txq, i, 60);
    }
    let (irq, fd) = call();
    let mut tx = Virtq::new(&mem, &config(&txq, false), Some(fd)).expect("queue");
    mem.write_obj(
        AVAIL_F_NO_INTERRUPT.to_le(),
        GuestAddress(txq.avail_addr().0),
    )
    .expect("flags");
    tx.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf)
        .expect("take");
    assert_eq!(tx.flush(&mem), Ok(false));
    assert_eq!(interrupts(&irq), 0);
    mem.write_obj(0u16, GuestAddress(txq.avail_addr().0))
        .expect("flags");
    tx.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf)
        .expect("take");
    assert_eq!(tx.flush(&mem), Ok(true));
    assert_eq!(interrupts(&irq), 1);
}

/// A frame shorter than its header is malformed, one longer than the worker's buffer
/// oversize: both are dropped, their buffers go back to the guest, the queue runs on.
#[test]
fn short_and_oversize_frames_are_dropped_not_fatal() {
    let mem = guest_memory();
    let txq = ring(&mem, TXQ);
    txq.add_desc_chains(&[desc(BUFS, 8, 0, 0)], 0)
        .expect("short");
    txq.add_desc_chains(&[desc(BUFS, 4000, 0, 0)], 1)
        .expect("long");
    guest_sends(&mem, &txq, 1, 64);
    let mut tx = Virtq::new(&mem, &config(&txq, false), None).expect("queue");
    let mut vnet = [0u8; VNET_HDR_LEN];
    let mut buf = vec![0u8; 2048];
    let mut got = Vec::new();
    while let Some(f) = tx
        .take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf)
        .expect("take")
    {
        got.push(f);
    }
    assert_eq!(
        got,
        vec![RxFrame::Malformed, RxFrame::Oversize, RxFrame::Whole(64)]
    );
    tx.flush(&mem).expect("flush");
    assert_eq!(used_idx(&mem, &txq), 3);
}

/// A header split across descriptors (the driver may place it so): a transmitted one is put
/// together before the frame, and a received one gets both bytes of num_buffers where they
/// landed — here 1 in one descriptor and 0 in the next, for a frame over two buffers.
#[test]
fn a_header_split_across_descriptors_is_read_and_written_whole() {
    let mem = guest_memory();
    let txq = ring(&mem, TXQ);
    let hdr = gso_header();
    let frame = pattern(300, 1);
    mem.write_slice(&hdr[..7], GuestAddress(BUFS)).expect("hdr");
    mem.write_slice(&hdr[7..], GuestAddress(BUFS + 0x100))
        .expect("hdr");
    mem.write_slice(&frame, GuestAddress(BUFS + 0x200 + 5))
        .expect("frame");
    // 7 header bytes, the 5 others, then the frame.
    txq.add_desc_chains(
        &[
            desc(BUFS, 7, NEXT, 1),
            desc(BUFS + 0x100, 5, NEXT, 2),
            desc(BUFS + 0x200 + 5, 300, 0, 0),
        ],
        0,
    )
    .expect("chain");
    let mut tx = Virtq::new(&mem, &config(&txq, false), None).expect("tx queue");
    let mut vnet = [0u8; VNET_HDR_LEN];
    let mut buf = vec![0u8; 2048];
    assert_eq!(
        tx.take_frame(&mem, VIRTIO_NET_HDR_LEN, &mut vnet, &mut buf),
        Ok(Some(RxFrame::Whole(300)))
    );
    assert_eq!(&vnet[..], &hdr[..VNET_HDR_LEN]);
    assert_eq!(&buf[..300], &frame[..]);

    // Receive: the first buffer is a chain of 11 + 989 bytes (num_buffers straddles the two
    // descriptors), the second one buffer of 1000: a 1500-byte frame needs both.
    let rxq = ring(&mem, RXQ);
    rxq.add_desc_chains(
        &[
            desc(0x8_0000, 11, WRITE | NEXT, 1),
            desc(0x8_1000, 989, WRITE, 0),
            desc(0x8_2000, 1000, WRITE, 0),
        ],
        0,
    )
    .expect("buffers");
    // Filled with 0xa5, so a byte left unwritten shows.
    for at in [0x8_0000, 0x8_1000, 0x8_2000] {
        mem.write_slice(&[0xa5; 1000], GuestAddress(at))
            .expect("fill");
    }
    let mut rx = Virtq::new(&mem, &config(&rxq, false), None).expect("rx queue");
    let big = pattern(1500, 2);
    assert_eq!(
        rx.put_frame(&mem, VIRTIO_NET_HDR_LEN, true, &vnet, &big),
        Ok(Put::Delivered(2))
    );
    rx.flush(&mem).expect("flush");
    assert_eq!(used_elem(&mem, &rxq, 0), (0, 1000));
    assert_eq!(used_elem(&mem, &rxq, 1), (2, 512));
    let mut landed = bytes(&mem, 0x8_0000, 11);
    landed.extend(bytes(&mem, 0x8_1000, 989));
    landed.extend(bytes(&mem, 0x8_2000, 512));
    assert_eq!(&landed[..VNET_HDR_LEN], &hdr[..VNET_HDR_LEN]);
    assert_eq!(
        u16::from_le_bytes([landed[10], landed[11]]),
        2,
        "num_buffers"
    );
    assert_eq!(&landed[12..], &big[..]);
}
