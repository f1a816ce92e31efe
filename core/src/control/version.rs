//! The control protocol's version: which one each side speaks, how it travels, and what a
//! side does when the other is older or newer.
//!
//! An upgrade runs two releases side by side. The install step copies the new CNI plugin
//! before the DaemonSet replaces netstackd, so for a while a new plugin (and hook) talks to the
//! old daemon; a rollback, or a daemon upgraded first, gives the opposite. Each message
//! therefore says which protocol its sender speaks, in a `"protocol"` field beside the
//! message's own fields (`{"op":"detach",…,"protocol":3}`, `{"reply":"done","protocol":3}`).
//!
//! Version 1 is netstack v0.1.0, whose messages carry no such field: a message without one is
//! version 1. v0.1.0 decodes requests and replies with serde's default of ignoring fields it
//! does not know (none of its control types has `deny_unknown_fields`), so the field is
//! invisible to it and everything else a new side sends it must be what v0.1.0 understood.
//! The rules that keep both directions working:
//!
//! - Changes are additive: a new field has a default (absent in an older peer's messages) and
//!   is one an older peer may ignore; a request or reply an older peer cannot decode (a new
//!   `op`, a new reply kind) is only sent to a peer that announced a protocol that knows it.
//! - A client learns the daemon's protocol from any reply ([`Client::peer_protocol`]), and before using anything newer than version 1 checks that the daemon speaks
//!   it; when it does not, the CNI plugin fails with "try again later" (CNI code 11) naming
//!   both versions, since the upgrade that is under way will bring the daemon up to date.
//! - The daemon serves every request it can decode, whatever version it says it is. One it
//!   cannot decode that comes from a newer protocol is answered with an error ending in
//!   [`RETRYABLE`](super::RETRYABLE) that names both versions; one from an older or the same
//!   protocol is malformed.
//!
//! [`Client::peer_protocol`]: super::Client::peer_protocol

use serde::{Deserialize, Serialize};

use super::{ErrorKind, Reply, Request, RETRYABLE};

/// The control protocol this build speaks.
///
/// - 1: netstack v0.1.0 (no `protocol` field in any message).
/// - 2: every message says its protocol; `status` replies say the daemon's.
/// - 3: VM pods: link mode `vhost-user` in `attach` (with `vhost_socket_mode` and
///   `vhost_socket_group`), answered by the new reply `attached` with the pod's
///   `socket_path`; `list` shows `socket_path`, `status` the `vhost_dir`. The daemon leaves
///   vhost-user pods out of the `list` it sends a client of protocol 1 or 2 (whose types do
///   not know the mode), and a plugin asks for vhost-user only of a daemon of protocol 3.
pub const PROTOCOL_VERSION: u32 = 3;

/// The first protocol with VM pods (link mode `vhost-user`, the reply `attached`).
pub const PROTOCOL_VHOST_USER: u32 = 3;

/// The protocol of a message without a `protocol` field: netstack v0.1.0's.
pub const PROTOCOL_V1: u32 = 1;

/// The oldest protocol this build serves as a daemon and talks to as a client.
pub const OLDEST_PROTOCOL: u32 = PROTOCOL_V1;

/// The releases that speak a protocol version, for messages about version skew (the crate
/// version cannot say it: it is still 0.1.0 after v0.1.0).
pub fn protocol_release(protocol: u32) -> &'static str {
    match protocol {
        PROTOCOL_V1 => "netstack v0.1.0",
        2 => "netstack after v0.1.0, before vhost-user",
        PROTOCOL_VHOST_USER => "netstack with vhost-user pods",
        other if other > PROTOCOL_VERSION => "a newer netstack",
        _ => "an unknown netstack",
    }
}

/// Names two sides and their protocols, as skew errors show them:
/// `this plugin speaks control protocol 3 (netstack with vhost-user pods), netstackd speaks 1 (netstack v0.1.0)`.
pub fn describe_skew(us: &str, ours: u32, them: &str, theirs: u32) -> String {
    format!(
        "{us} speaks control protocol {ours} ({}), {them} speaks {theirs} ({})",
        protocol_release(ours),
        protocol_release(theirs)
    )
}

/// The version fields read from a message before its content (so that a message from a
/// newer peer is recognised as such even when its content does not decode).
#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default)]
    protocol: Option<u32>,
}

/// A message as it is sent: its own fields, then `"protocol"`.
#[derive(Serialize)]
struct Outgoing<'a, T> {
    #[serde(flatten)]
    message: &'a T,
    protocol: u32,
}

/// Why a request body could not be turned into a [`Request`]: the kind and message of the
/// error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// [`ErrorKind::ProtocolVersion`] for a newer client's request, otherwise
    /// [`ErrorKind::InvalidRequest`].
    pub kind: ErrorKind,
    /// What is wrong with it.
    pub message: String,
}

impl RequestError {
    fn malformed(message: String) -> Self {
        RequestError {
            kind: ErrorKind::InvalidRequest,
            message,
        }
    }

    /// The error reply that answers the request.
    pub fn reply(self) -> Reply {
        Reply::error(self.kind, self.message)
    }
}

/// A reply body that did not decode.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// Not a reply this build knows, from a daemon of a newer protocol.
    #[error("{}: its reply is not understood: {source}", describe_skew("this client", PROTOCOL_VERSION, "netstackd", *.protocol))]
    Newer {
        /// The daemon's protocol.
        protocol: u32,
        /// Why it did not decode.
        source: serde_json::Error,
    },
    /// Not valid protocol JSON.
    #[error("undecodable reply from netstackd: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// Encodes a request with this build's protocol version.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Outgoing {
        message: request,
        protocol: PROTOCOL_VERSION,
    })
}

/// Encodes a reply with this build's protocol version.
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Outgoing {
        message: reply,
        protocol: PROTOCOL_VERSION,
    })
}

/// Decodes a request body: the sender's protocol (1 when it says none) and the request.
pub fn decode_request(body: &[u8]) -> Result<(u32, Request), RequestError> {
    let header: Header = serde_json::from_slice(body)
        .map_err(|e| RequestError::malformed(format!("malformed request: {e}")))?;
    let protocol = header.protocol.unwrap_or(PROTOCOL_V1);
    if protocol < OLDEST_PROTOCOL {
        return Err(RequestError::malformed(format!(
            "malformed request: control protocol {protocol} does not exist \
             (netstackd speaks {OLDEST_PROTOCOL} to {PROTOCOL_VERSION})"
        )));
    }
    match serde_json::from_slice::<Request>(body) {
        Ok(request) => Ok((protocol, request)),
        Err(e) if protocol > PROTOCOL_VERSION => Err(RequestError {
            kind: ErrorKind::ProtocolVersion,
            message: format!(
                "{}: the request is not understood ({e}); retry once netstackd is upgraded {RETRYABLE}",
                describe_skew("the client", protocol, "netstackd", PROTOCOL_VERSION)
            ),
        }),
        Err(e) => Err(RequestError::malformed(format!("malformed request: {e}"))),
    }
}

/// Decodes a reply body: the daemon's protocol (1 when it says none) and the reply.
pub fn decode_reply(body: &[u8]) -> Result<(u32, Reply), ReplyError> {
    let header: Header = serde_json::from_slice(body)?;
    let protocol = header.protocol.unwrap_or(PROTOCOL_V1);
    match serde_json::from_slice::<Reply>(body) {
        Ok(reply) => Ok((protocol, reply)),
        Err(source) if protocol > PROTOCOL_VERSION => Err(ReplyError::Newer { protocol, source }),
        Err(e) => Err(ReplyError::Invalid(e)),
    }
}

/// Does an error reply from a daemon of protocol `theirs` say it could not read a request of
/// ours because it is older (a v0.1.0 daemon answers what it cannot decode "malformed
/// request")?
pub fn refused_as_older(theirs: u32, message: &str) -> bool {
    theirs < PROTOCOL_VERSION && message.starts_with("malformed request")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::v0_1_0;

    /// The bytes netstack v0.1.0's plugin and hook send, as its `Client` wrote them
    /// (`serde_json::to_vec` of its `Request`): each is served by this daemon as protocol 1.
    const V1_REQUESTS: &[&str] = &[
        r#"{"op":"status"}"#,
        r#"{"op":"attach","container_id":"c1","ifname":"eth0","netns":"/run/netns/p1","mac":"0a:58:0a:f4:01:05","ips":["10.244.1.5/24"],"gateways":["10.244.1.1"],"mtu":1500,"queues":2,"labels":{"K8S_POD_NAME":"web","cni.network":"k8s-pod-network"}}"#,
        r#"{"op":"attach","container_id":"c2","ifname":"eth0","netns":"/run/netns/p2","mac":"0a:58:0a:f4:01:06","ips":["10.244.1.6/24","fd00:10:244:1::6/64"],"gateways":["10.244.1.1","fd00:10:244:1::1"],"mtu":1500,"queues":0,"labels":{},"bandwidth":{"ingressRate":1000000,"ingressBurst":0,"egressRate":0,"egressBurst":0},"mode":"veth","peer":"nsv0123456789ab"}"#,
        r#"{"op":"detach","container_id":"c1","ifname":"eth0"}"#,
        r#"{"op":"list"}"#,
        r#"{"op":"stats"}"#,
        r#"{"op":"metrics"}"#,
        r#"{"op":"capture","container_id":"c1","ifname":"eth0","snaplen":128,"max_packets":10,"max_seconds":0}"#,
        r#"{"op":"release","container_id":"c1","ifname":"eth0"}"#,
    ];

    #[test]
    fn requests_of_v0_1_0_are_served_as_protocol_1() {
        for wire in V1_REQUESTS {
            let (protocol, request) =
                decode_request(wire.as_bytes()).unwrap_or_else(|e| panic!("{wire} refused: {e}"));
            assert_eq!(protocol, PROTOCOL_V1, "{wire}");
            // The same request as this build encodes it, less its version, is the same bytes:
            // nothing a v0.1.0 client sends changed meaning.
            let ours: serde_json::Value =
                serde_json::from_slice(&encode_request(&request).unwrap()).unwrap();
            let mut ours = ours.as_object().unwrap().clone();
            assert_eq!(ours.remove("protocol"), Some(PROTOCOL_VERSION.into()));
            let theirs: serde_json::Value = serde_json::from_str(wire).unwrap();
            assert_eq!(serde_json::Value::Object(ours), theirs, "{wire}");
        }
    }

    #[test]
    fn requests_of_this_build_decode_in_v0_1_0() {
        // What this build sends a v0.1.0 daemon, decoded with v0.1.0's own types: every
        // request of V1_REQUESTS, re-encoded with the version field.
        for wire in V1_REQUESTS {
            let (_, request) = decode_request(wire.as_bytes()).unwrap();
            let sent = encode_request(&request).unwrap();
            let old: v0_1_0::Request = serde_json::from_slice(&sent).unwrap_or_else(|e| {
                panic!("v0.1.0 cannot read {}: {e}", String::from_utf8_lossy(&sent))
            });
            let theirs: v0_1_0::Request = serde_json::from_str(wire).unwrap();
            assert_eq!(old, theirs);
        }
        // The exact bytes of the two requests a plugin sends on ADD.
        assert_eq!(
            encode_request(&Request::Status).unwrap(),
            br#"{"op":"status","protocol":3}"#
        );
        let (_, attach) = decode_request(V1_REQUESTS[1].as_bytes()).unwrap();
        let sent = String::from_utf8(encode_request(&attach).unwrap()).unwrap();
        assert_eq!(
            sent,
            format!(
                "{},\"protocol\":3}}",
                V1_REQUESTS[1].strip_suffix('}').unwrap()
            )
        );
    }

    #[test]
    fn replies_of_v0_1_0_decode_as_protocol_1() {
        // What a v0.1.0 daemon answers (its `serde_json::to_vec` of its `Reply`).
        let status = r#"{"reply":"status","version":"0.1.0","workers":2,"uplink":"netstack0","pod_cidr":"10.244.1.0/24","gateway":"10.244.1.1","dp_netns":"/run/netstack/netns/dp","veth_rx":"mmsg","attachments":1,"metrics":"127.0.0.1:9473","dataplane_pid":4242,"dataplane_restarts":0,"quarantined":[]}"#;
        let (protocol, reply) = decode_reply(status.as_bytes()).unwrap();
        assert_eq!(protocol, PROTOCOL_V1);
        let Reply::Status(s) = reply else {
            panic!("not a status: {reply:?}")
        };
        assert_eq!((s.workers, s.version.as_str()), (2, "0.1.0"));
        for (wire, want) in [
            (r#"{"reply":"done"}"#, Reply::Done),
            (
                r#"{"reply":"error","message":"c1/eth0: already attached"}"#,
                Reply::Error {
                    message: "c1/eth0: already attached".into(),
                    kind: None,
                },
            ),
            (
                r#"{"reply":"list","pods":[]}"#,
                Reply::List { pods: vec![] },
            ),
        ] {
            assert_eq!(decode_reply(wire.as_bytes()).unwrap(), (PROTOCOL_V1, want));
        }
    }

    #[test]
    fn replies_of_this_build_decode_in_v0_1_0() {
        let status: crate::control::DaemonStatus = serde_json::from_str(
            r#"{"version":"0.2.0","workers":2,"uplink":"netstack0","pod_cidr":"10.244.1.0/24","pod_cidr_v6":"fd00:10:244:1::/64","gateway":"10.244.1.1","tap_io":"uring","attachments":0}"#,
        )
        .unwrap();
        let replies = [
            Reply::Done,
            Reply::Status(status),
            Reply::error(ErrorKind::InvalidNetworkConfig, "c1/eth0: no IP address"),
            Reply::List { pods: vec![] },
            Reply::Metrics {
                text: "x 1\n".into(),
            },
        ];
        for reply in replies {
            let sent = encode_reply(&reply).unwrap();
            let old: v0_1_0::Reply = serde_json::from_slice(&sent).unwrap_or_else(|e| {
                panic!("v0.1.0 cannot read {}: {e}", String::from_utf8_lossy(&sent))
            });
            // What v0.1.0 reads is what it would have read from a v0.1.0 daemon.
            let plain: v0_1_0::Reply =
                serde_json::from_slice(&serde_json::to_vec(&reply).unwrap()).unwrap();
            assert_eq!(old, plain);
            assert_eq!(decode_reply(&sent).unwrap(), (PROTOCOL_VERSION, reply));
        }
        assert_eq!(
            encode_reply(&Reply::Done).unwrap(),
            br#"{"reply":"done","protocol":3}"#
        );
    }

    #[test]
    fn an_error_of_a_v0_1_0_daemon_has_no_kind_and_its_kind_is_read_from_the_message() {
        // The three error replies a v0.1.0 daemon sends, as it wrote them.
        let cases = [
            (
                r#"{"reply":"error","message":"netstackd is busy: 64 control requests are being served; try again (retryable)"}"#,
                ErrorKind::Busy,
            ),
            (
                r#"{"reply":"error","message":"c1/eth0: handing the queues to the dataplane: the dataplane is restarting; try again (retryable)"}"#,
                ErrorKind::TryAgainLater,
            ),
            (
                r#"{"reply":"error","message":"c1/eth0: no IP address"}"#,
                ErrorKind::Internal,
            ),
        ];
        for (wire, want) in cases {
            let (protocol, reply) = decode_reply(wire.as_bytes()).unwrap();
            assert_eq!(protocol, PROTOCOL_V1);
            assert!(
                matches!(reply, Reply::Error { kind: None, .. }),
                "{reply:?}"
            );
            assert_eq!(reply.error_kind(), Some(want), "{wire}");
        }
        assert_eq!(Reply::Done.error_kind(), None);
    }

    #[test]
    fn an_error_of_this_build_says_its_kind_and_v0_1_0_reads_its_message() {
        let reply = Reply::error(
            ErrorKind::InvalidNetworkConfig,
            "c1/eth0: MTU 9 out of range 68-65535",
        );
        let sent = encode_reply(&reply).unwrap();
        assert_eq!(
            String::from_utf8(sent.clone()).unwrap(),
            r#"{"reply":"error","message":"c1/eth0: MTU 9 out of range 68-65535","kind":"invalid_network_config","protocol":3}"#
        );
        // v0.1.0's plugin ignores the kind and sees the message it always saw.
        let old: v0_1_0::Reply = serde_json::from_slice(&sent).unwrap();
        assert_eq!(
            old,
            v0_1_0::Reply::Error {
                message: "c1/eth0: MTU 9 out of range 68-65535".into()
            }
        );
        let (_, back) = decode_reply(&sent).unwrap();
        assert_eq!(back.error_kind(), Some(ErrorKind::InvalidNetworkConfig));
        assert_eq!(back, reply);
        // Every kind goes through v0.1.0 and back.
        for kind in [
            ErrorKind::Busy,
            ErrorKind::TryAgainLater,
            ErrorKind::ProtocolVersion,
            ErrorKind::InvalidRequest,
            ErrorKind::InvalidName,
            ErrorKind::InvalidNetworkConfig,
            ErrorKind::Exists,
            ErrorKind::NotFound,
            ErrorKind::NetnsGone,
            ErrorKind::Interface,
            ErrorKind::PermissionDenied,
            ErrorKind::Internal,
        ] {
            let sent = encode_reply(&Reply::error(kind, "m")).unwrap();
            assert!(serde_json::from_slice::<v0_1_0::Reply>(&sent).is_ok());
            assert_eq!(decode_reply(&sent).unwrap().1.error_kind(), Some(kind));
        }
    }

    #[test]
    fn an_error_kind_of_a_newer_daemon_decodes_and_falls_back_to_the_message() {
        let wire = r#"{"reply":"error","message":"c1/eth0: vhost busy (retryable)","kind":"vhost_user","protocol":4}"#;
        let (protocol, reply) = decode_reply(wire.as_bytes()).unwrap();
        assert_eq!(protocol, 4);
        assert!(
            matches!(
                reply,
                Reply::Error {
                    kind: Some(ErrorKind::Unknown),
                    ..
                }
            ),
            "{reply:?}"
        );
        assert_eq!(reply.error_kind(), Some(ErrorKind::TryAgainLater));
    }

    #[test]
    fn an_undecodable_request_from_a_newer_client_is_retryable_and_names_both_versions() {
        let future = br#"{"op":"attach_many","pods":[],"protocol":4}"#;
        let e = decode_request(future).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ProtocolVersion);
        let e = e.message;
        assert!(e.ends_with(RETRYABLE), "{e}");
        assert!(
            e.contains(
                "the client speaks control protocol 4 (a newer netstack), netstackd speaks 3"
            ),
            "{e}"
        );
        // A newer client's request that does decode is served.
        let (p, r) = decode_request(br#"{"op":"status","protocol":4,"flavour":"x"}"#).unwrap();
        assert_eq!((p, r), (4, Request::Status));
        // From an older or the same protocol, or with a bad version, it is malformed.
        for bad in [
            &br#"{"op":"attach_many","protocol":3}"#[..],
            br#"{"op":"attach_many"}"#,
            br#"{"op":"status","protocol":0}"#,
            br#"{"op":"status","protocol":"2"}"#,
            br#"{"op":"status","protocol":-1}"#,
            br#"[1,2]"#,
            b"",
        ] {
            let e = decode_request(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest);
            let e = e.message;
            assert!(
                e.starts_with("malformed request") && !e.ends_with(RETRYABLE),
                "{}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_undecodable_reply_from_a_newer_daemon_names_both_versions() {
        let e = decode_reply(br#"{"reply":"attached_many","protocol":4}"#).unwrap_err();
        assert!(matches!(e, ReplyError::Newer { protocol: 4, .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(
                "this client speaks control protocol 3 (netstack with vhost-user pods), "
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("netstackd speaks 4 (a newer netstack)"),
            "{e}"
        );
        let e = decode_reply(br#"{"reply":"attached_many"}"#).unwrap_err();
        assert!(matches!(e, ReplyError::Invalid(_)), "{e:?}");
    }

    /// Protocol 3: a vhost-user attach and its reply, byte for byte as they travel, and what
    /// a v0.1.0 peer makes of them.
    #[test]
    fn a_vhost_user_attach_and_its_reply_are_protocol_3() {
        use crate::control::{Attachment, LinkMode};
        let wire = r#"{"op":"attach","container_id":"vm1","ifname":"eth0","netns":"/run/netns/vm1","mac":"02:5a:00:00:00:01","ips":["10.244.1.7/24"],"gateways":["10.244.1.1"],"mtu":1500,"queues":0,"labels":{},"mode":"vhost-user","vhost_socket_mode":432,"vhost_socket_group":107,"protocol":3}"#;
        let (protocol, request) = decode_request(wire.as_bytes()).unwrap();
        assert_eq!(protocol, 3);
        let Request::Attach(a) = &request else {
            panic!("not an attach: {request:?}")
        };
        assert_eq!(a.mode, LinkMode::VhostUser);
        assert_eq!(
            (a.vhost_socket_mode, a.vhost_socket_group),
            (Some(0o660), Some(107))
        );
        assert_eq!(
            String::from_utf8(encode_request(&request).unwrap()).unwrap(),
            wire
        );
        // A TAP attach of this build has none of the new fields: the bytes of protocol 2.
        let (_, tap) = decode_request(V1_REQUESTS[1].as_bytes()).unwrap();
        let Request::Attach(tap) = tap else { panic!() };
        let tap: Attachment = tap;
        let sent = String::from_utf8(serde_json::to_vec(&tap).unwrap()).unwrap();
        assert!(!sent.contains("vhost") && !sent.contains("mode"), "{sent}");
        // v0.1.0 (and so any daemon before protocol 3) cannot read the mode: the plugin never
        // sends it one (see the plugin's skew check).
        assert!(serde_json::from_str::<v0_1_0::Request>(wire).is_err());
        let reply = Reply::Attached {
            socket_path: "/run/netstack/vhost/vu0123456789abcdef.sock".into(),
        };
        let sent = encode_reply(&reply).unwrap();
        assert_eq!(
            String::from_utf8(sent.clone()).unwrap(),
            r#"{"reply":"attached","socket_path":"/run/netstack/vhost/vu0123456789abcdef.sock","protocol":3}"#
        );
        assert_eq!(decode_reply(&sent).unwrap(), (3, reply));
        assert_eq!(
            protocol_release(PROTOCOL_VHOST_USER),
            "netstack with vhost-user pods"
        );
        assert_eq!(
            describe_skew("this plugin", PROTOCOL_VERSION, "netstackd", 2),
            "this plugin speaks control protocol 3 (netstack with vhost-user pods), netstackd speaks 2 (netstack after v0.1.0, before vhost-user)"
        );
    }

    #[test]
    fn only_an_older_daemons_malformed_request_is_skew() {
        assert!(refused_as_older(1, "malformed request: unknown field"));
        assert!(refused_as_older(
            2,
            "malformed request: unknown variant `vhost-user`"
        ));
        assert!(!refused_as_older(3, "malformed request: unknown field"));
        assert!(!refused_as_older(1, "c1/eth0: already attached"));
    }

    #[test]
    fn pod_states_and_modes_are_v0_1_0s_strings_both_ways() {
        use crate::control::{LinkMode, PodInfo, PodState};
        let states = [
            (PodState::Attached, "attached"),
            (PodState::Pending, "pending"),
            (PodState::Quarantined, "quarantined"),
            (PodState::RestoreFailed, "restore_failed"),
        ];
        for (state, name) in states {
            for (mode, mode_name) in [(LinkMode::Tap, "tap"), (LinkMode::Veth, "veth")] {
                let info = PodInfo {
                    key: crate::control::AttachmentKey {
                        container_id: "c1".into(),
                        ifname: "eth0".into(),
                    },
                    netns: "/run/netns/p1".into(),
                    mac: "0a:58:0a:f4:01:05".parse().unwrap(),
                    ips: vec!["10.244.1.5/24".parse().unwrap()],
                    mode,
                    state,
                    quarantine_reason: None,
                    labels: Default::default(),
                    error: None,
                    socket_path: None,
                };
                let bytes = serde_json::to_vec(&info).unwrap();
                let old: v0_1_0::PodInfo = serde_json::from_slice(&bytes).unwrap();
                assert_eq!((old.state.as_str(), old.mode.as_str()), (name, mode_name));
                assert_eq!(state.as_str(), name);
                let back: PodInfo = serde_json::from_slice(&bytes).unwrap();
                assert_eq!((back.state, back.mode), (state, mode));
            }
        }
        // A newer daemon's state is read, not refused.
        let newer = r#"{"container_id":"c1","ifname":"eth0","netns":"/n","mac":"0a:58:0a:f4:01:05","ips":[],"mode":"tap","state":"draining","labels":{}}"#;
        let info: PodInfo = serde_json::from_str(newer).unwrap();
        assert_eq!(info.state, PodState::Unknown);
    }
}
