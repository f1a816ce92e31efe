//! Property tests over the control socket's decoder, which takes bytes from any root process
//! on the node: any byte stream into `control::recv_message` (over a real
//! `UnixStream::pair()`), any bytes and any JSON into `Request`/`Reply` decoding. Each gives a
//! value or an error, never a panic or a hang; whatever decodes encodes back to the same value.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use netstack_core::control::{
    recv_message, send_message, Attachment, AttachmentKey, FramingError, LinkMode, Reply, Request,
    MAX_MESSAGE_BYTES,
};
use netstack_core::wire::MacAddr;
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Decodes a body as both ends of the protocol would; what decodes must round-trip.
fn decode_both(body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(req) = serde_json::from_slice::<Request>(body) {
        let again: Request = serde_json::from_slice(&serde_json::to_vec(&req).unwrap())
            .map_err(|e| TestCaseError::fail(format!("{req:?} does not decode again: {e}")))?;
        prop_assert_eq!(again, req);
    }
    if let Ok(reply) = serde_json::from_slice::<Reply>(body) {
        let again: Reply = serde_json::from_slice(&serde_json::to_vec(&reply).unwrap())
            .map_err(|e| TestCaseError::fail(format!("{reply:?} does not decode again: {e}")))?;
        prop_assert_eq!(again, reply);
    }
    Ok(())
}

/// Writes `stream` into one end of a socket pair, closes it, and reads messages from the other
/// end until the decoder gives up. Returns the bodies read.
fn read_all(stream: &[u8]) -> Result<Vec<Vec<u8>>, TestCaseError> {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&a).write_all(stream).unwrap();
    drop(a);
    let mut bodies = Vec::new();
    // Every message takes at least its 4-byte length, so this ends.
    for _ in 0..=stream.len() / 4 + 1 {
        match recv_message(&b) {
            Ok((body, fds)) => {
                prop_assert!(fds.is_empty());
                prop_assert!(body.len() <= MAX_MESSAGE_BYTES);
                bodies.push(body);
            }
            Err(FramingError::Io(e)) => {
                prop_assert!(
                    e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut,
                    "the decoder waited for bytes that never come: {e}"
                );
                return Ok(bodies);
            }
            Err(FramingError::Closed | FramingError::TooLarge(_)) => return Ok(bodies),
        }
    }
    Err(TestCaseError::fail("recv_message kept returning messages"))
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("eth0"),
            Just("c1"),
            Just("10.244.1.5/24"),
            Just("10.244.1.1"),
            Just("0a:58:0a:f4:01:05"),
            Just("/run/netns/p1"),
            Just("fe80::1/64"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Key names the protocol uses, and others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "op", "reply", "container_id", "ifname", "netns", "mac", "ips", "gateways", "mtu",
            "queues", "labels", "message", "pods", "uplink", "counters", "drops",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
    ]
}

/// A request- or reply-shaped object: a known tag, then any fields.
fn message_shaped() -> impl Strategy<Value = Value> {
    let tag = prop_oneof![
        (
            Just("op"),
            prop::sample::select(vec!["status", "stats", "attach", "detach", "x"])
        ),
        (
            Just("reply"),
            prop::sample::select(vec!["done", "status", "stats", "error", "y"])
        ),
    ];
    (
        tag,
        prop::collection::btree_map(field_name(), json_value(), 0..10),
    )
        .prop_map(|((k, v), fields)| {
            let mut m: serde_json::Map<String, Value> = fields.into_iter().collect();
            m.insert(k.to_owned(), json!(v));
            Value::Object(m)
        })
}

prop_compose! {
    fn attachment()(
        container_id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}",
        ifname in "[a-z0-9]{1,15}",
        netns in "/run/netns/[a-z0-9-]{1,20}",
        mac in any::<[u8; 6]>(),
        ips in prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..3),
        mtu in any::<u32>(),
        queues in any::<usize>(),
        labels in prop::collection::btree_map("[A-Z_]{1,12}", ".{0,12}", 0..3),
        mode in 0u8..3,
        socket_mode in prop::option::of(0u32..0o1000),
        socket_group in prop::option::of(any::<u32>()),
    ) -> Attachment {
        let veth = mode == 1;
        let vhost = mode == 2;
        Attachment {
            key: AttachmentKey { container_id, ifname },
            netns: netns.into(),
            mac: MacAddr(mac),
            ips: ips
                .into_iter()
                .map(|(a, p)| ipnet::Ipv4Net::new(a.into(), p).unwrap().into())
                .collect(),
            gateways: vec![],
            mtu,
            queues,
            labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            bandwidth: None,
            mode: match mode {
                1 => LinkMode::Veth,
                2 => LinkMode::VhostUser,
                _ => LinkMode::Tap,
            },
            peer: veth.then(|| "nsv0123456789ab".to_owned()),
            vhost_socket_mode: socket_mode.filter(|_| vhost),
            vhost_socket_group: socket_group.filter(|_| vhost),
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any byte stream: messages or an error, never a panic, a hang or a huge allocation.
    #[test]
    fn recv_message_takes_any_byte_stream(stream in prop::collection::vec(any::<u8>(), 0..600)) {
        for body in read_all(&stream)? {
            decode_both(&body)?;
        }
    }

    /// A stream of well-framed messages with any bodies (and a torn last one): each body comes
    /// out exactly as it went in.
    #[test]
    fn framed_bodies_come_out_whole(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..5),
        torn in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let mut stream = Vec::new();
        for b in &bodies {
            stream.extend_from_slice(&(b.len() as u32).to_be_bytes());
            stream.extend_from_slice(b);
        }
        stream.extend_from_slice(&torn);
        prop_assert_eq!(read_all(&stream)?, bodies);
    }

    /// Any bytes as a JSON body.
    #[test]
    fn any_bytes_decode_to_a_value_or_an_error(body in prop::collection::vec(any::<u8>(), 0..300)) {
        decode_both(&body)?;
    }

    /// JSON shaped like a request or reply, with fields of any type: deep into serde's paths.
    #[test]
    fn request_shaped_json_decodes_or_fails(v in message_shaped()) {
        decode_both(&serde_json::to_vec(&v).unwrap())?;
    }

    /// An attach request, sent as the plugin sends it, arrives as it was sent.
    #[test]
    fn attach_requests_round_trip_over_the_socket(a in attachment()) {
        let (tx, rx) = UnixStream::pair().unwrap();
        let req = Request::Attach(a);
        send_message(&tx, &serde_json::to_vec(&req).unwrap(), &[]).unwrap();
        let (body, fds) = recv_message(&rx).unwrap();
        prop_assert!(fds.is_empty());
        prop_assert_eq!(serde_json::from_slice::<Request>(&body).unwrap(), req);
    }
}
