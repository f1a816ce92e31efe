//! What the plugin's commands share about netstackd and the pod's link: the control
//! connection, how a failure to talk to netstackd or a refusal from it becomes a CNI error
//! (by the refusal's [`ErrorKind`]), and the removal of the pod's link. ADD, DEL, CHECK, GC
//! and the netavark plugin use these; none of them imports another command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use netstack_core::control::{Client, ClientError, ErrorKind, LinkMode, VETH_ALIAS};
use netstack_core::netlink::Netlink;
use netstack_core::netns::{run_in_netns, NetnsError};

use crate::CniError;

/// How long one call to netstackd may take (well inside the runtime's CNI deadline).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);

/// The label that names the CNI network an attachment belongs to (GC releases only its own
/// network's attachments).
pub const NETWORK_LABEL: &str = "cni.network";

/// Opens a control connection; an absent daemon is "try again later" (code 11).
pub fn connect(socket: &Path) -> Result<Client, CniError> {
    Client::connect(socket, CONTROL_TIMEOUT).map_err(control_error)
}

/// Maps a control-client failure to its CNI error. A reply this plugin cannot read from a
/// daemon of a newer protocol is "try again later": the install step brings this plugin up
/// to the daemon's version.
pub fn control_error(e: ClientError) -> CniError {
    match e {
        ClientError::Unreachable { .. } | ClientError::Transport { .. } | ClientError::Newer(_) => {
            CniError::TryAgainLater(e.to_string())
        }
        ClientError::Decode(_) => CniError::Setup(e.to_string()),
    }
}

/// The oldest control protocol a daemon must speak for this plugin's requests
/// ([`netstack_core::control::version`]): 1, netstack v0.1.0's, while every request this plugin
/// sends is one v0.1.0 understands. Raise it (or check per request with
/// [`require_daemon_protocol`]) when a request comes to need a newer daemon.
pub const OLDEST_DAEMON_PROTOCOL: u32 = netstack_core::control::version::OLDEST_PROTOCOL;

/// Fails with "try again later" (code 11), naming both versions, when the daemon's protocol
/// `theirs` is older than `needed` for `what`: during an upgrade the plugin is installed
/// before the DaemonSet replaces netstackd, which then brings the daemon up to date.
pub fn require_daemon_protocol(theirs: u32, needed: u32, what: &str) -> Result<(), CniError> {
    if theirs >= needed {
        return Ok(());
    }
    Err(CniError::TryAgainLater(format!(
        "{}: {what} needs netstackd of control protocol {needed} or later; retry once the netstackd DaemonSet is upgraded",
        netstack_core::control::version::describe_skew(
            "this plugin",
            netstack_core::control::PROTOCOL_VERSION,
            "netstackd",
            theirs
        )
    )))
}

/// The CNI error for netstackd's error reply (`kind` and `message`) to `what`, from a daemon
/// of protocol `theirs`. The kind picks the code: "try again later" (11) for a busy daemon, a
/// restarting dataplane or a request of a newer protocol; "invalid environment variables" (4)
/// for a container id or interface name it refuses; "invalid network config" (7) for an
/// attachment that does not fit the node (addresses, MAC, MTU); "container unknown" (3) when
/// the pod's netns is gone; 100, the plugin's own code, for the rest (link failures, an
/// attachment that exists). A daemon that sent no kind (v0.1.0) is read by its message, and
/// its "malformed request" is version skew during an upgrade: "try again later".
pub fn daemon_refusal(
    theirs: Option<u32>,
    what: &str,
    kind: Option<ErrorKind>,
    message: &str,
) -> CniError {
    use netstack_core::control::version::{describe_skew, refused_as_older};
    let theirs = theirs.unwrap_or(netstack_core::control::PROTOCOL_V1);
    let refused = || format!("netstackd refused the {what}: {message}");
    match ErrorKind::of(kind, message) {
        ErrorKind::Busy | ErrorKind::TryAgainLater | ErrorKind::ProtocolVersion => {
            CniError::TryAgainLater(format!("netstackd: {what}: {message}"))
        }
        ErrorKind::InvalidRequest | ErrorKind::Internal if refused_as_older(theirs, message) => {
            CniError::TryAgainLater(format!(
                "{}, which could not read the {what} request ({message}); retry once the netstackd DaemonSet is upgraded",
                describe_skew(
                    "this plugin",
                    netstack_core::control::PROTOCOL_VERSION,
                    "netstackd",
                    theirs
                )
            ))
        }
        ErrorKind::InvalidName => CniError::InvalidEnv {
            var: "CNI_CONTAINERID or CNI_IFNAME",
            reason: refused(),
        },
        ErrorKind::InvalidNetworkConfig => CniError::InvalidConfig(refused()),
        ErrorKind::NetnsGone => CniError::ContainerUnknown(refused()),
        ErrorKind::InvalidRequest
        | ErrorKind::Exists
        | ErrorKind::NotFound
        | ErrorKind::Interface
        | ErrorKind::PermissionDenied
        | ErrorKind::Internal
        | ErrorKind::Unknown => CniError::Setup(refused()),
    }
}

/// Maps a netns failure to its CNI error.
pub fn netns_error(e: NetnsError) -> CniError {
    match e {
        NetnsError::NotFound { .. } => CniError::ContainerUnknown(e.to_string()),
        NetnsError::NotANetns { .. } => CniError::InvalidEnv {
            var: "CNI_NETNS",
            reason: e.to_string(),
        },
        other => CniError::Setup(other.to_string()),
    }
}

/// Deletes the pod's TAP (or, in veth mode, its veth with the netstack alias: the peer goes
/// with it; in vhost-user mode, its placeholder dummy with the netstack alias) if it is
/// there; a missing netns or device, or another device (not ours), is left as it is.
pub fn delete_pod_link(netns: &Path, ifname: &str, mode: LinkMode) -> Result<(), CniError> {
    let name = ifname.to_owned();
    match run_in_netns(netns, move || -> Result<(), String> {
        let nl = Netlink::new().map_err(|e| e.to_string())?;
        match nl.link_info(&name).map_err(|e| e.to_string())? {
            Some(info)
                if mode.is_device_kind(info.kind.as_deref())
                    && (!mode.has_alias() || info.alias.as_deref() == Some(VETH_ALIAS)) =>
            {
                nl.del_link(&name).map(drop).map_err(|e| e.to_string())
            }
            Some(info) => {
                // Not ours (ADD refuses an existing name): DEL leaves it alone and succeeds.
                eprintln!(
                    "netstack: {name} is a {} device, not a netstack {mode} device: left alone",
                    info.kind.as_deref().unwrap_or("kindless")
                );
                Ok(())
            }
            None => Ok(()),
        }
    }) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CniError::Setup(format!("deleting {ifname}: {e}"))),
        Err(NetnsError::NotFound { .. }) => Ok(()),
        Err(e) => Err(netns_error(e)),
    }
}

/// Where Kata's runtime looks for a vhost-user network endpoint of an interface with address
/// `ip` (`hostSocketSearchPath` in its `vhostuser_endpoint.go`): `/tmp/vhostuser_<IP>/vhu.sock`.
pub fn kata_socket_link(ip: std::net::IpAddr) -> PathBuf {
    PathBuf::from(format!("/tmp/vhostuser_{ip}/vhu.sock"))
}

/// Links `socket` (a VM pod's vhost-user socket) at [`kata_socket_link`] of `ip`, the
/// directory made mode 0700. A directory there that is not a plain directory of root's, or a
/// link in it to another socket, is refused (it is someone else's: /tmp is everyone's); a
/// link to this socket is made again.
pub fn create_kata_link(ip: std::net::IpAddr, socket: &Path) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let link = kata_socket_link(ip);
    let dir = link.parent().unwrap_or(Path::new("/tmp")).to_owned();
    let setup =
        |what: String| CniError::Setup(format!("Kata's socket link {}: {what}", link.display()));
    let mut made_dir = false;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => made_dir = true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(&dir).map_err(|e| setup(e.to_string()))?;
            if !m.file_type().is_dir() || m.uid() != nix::unistd::geteuid().as_raw() {
                return Err(setup(format!(
                    "{} is not a directory of this user's: left alone",
                    dir.display()
                )));
            }
        }
        Err(e) => return Err(setup(format!("creating {}: {e}", dir.display()))),
    }
    match std::fs::read_link(&link) {
        Ok(target) if target == socket => return Ok(link),
        Ok(target) => {
            return Err(setup(format!(
                "it links to {}, another socket: left alone",
                target.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(setup(format!(
                "something that is not a link is there ({e})"
            )))
        }
    }
    if let Err(e) = std::os::unix::fs::symlink(socket, &link) {
        if made_dir {
            let _ = std::fs::remove_dir(&dir);
        }
        return Err(setup(e.to_string()));
    }
    Ok(link)
}

/// Removes every Kata socket link (`/tmp/vhostuser_*/vhu.sock`) that points at a socket
/// named `socket_name` (a VM pod's [`netstack_core::control::vhost_socket_name`]), and its
/// directory when that is left empty; links to other sockets stay. Returns the links removed.
///
/// /tmp is everyone's: each directory is opened without following a symlink and must be this
/// user's, and the link is read and removed relative to that open directory, so a directory
/// renamed or replaced by a symlink meanwhile cannot turn the removal onto another file.
pub fn remove_kata_links(socket_name: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return removed;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("vhostuser_")
        {
            continue;
        }
        let dir = entry.path();
        if remove_kata_link_in(&dir, socket_name) {
            // Only when empty: anything else in it is not ours. A symlink put in the
            // directory's place meanwhile is not removed (rmdir refuses it).
            let _ = std::fs::remove_dir(&dir);
            removed.push(dir.join("vhu.sock"));
        }
    }
    removed
}

/// Removes `dir/vhu.sock` when `dir` is a directory of this user's (opened without following
/// a symlink) and the link in it points at a socket named `socket_name`.
fn remove_kata_link_in(dir: &Path, socket_name: &str) -> bool {
    use nix::fcntl::{open, readlinkat, OFlag};
    use nix::sys::stat::{fstat, Mode};
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let Ok(fd) = open(dir, flags, Mode::empty()) else {
        return false;
    };
    if !fstat(&fd).is_ok_and(|st| st.st_uid == nix::unistd::geteuid().as_raw()) {
        return false;
    }
    let ours = readlinkat(&fd, "vhu.sock")
        .is_ok_and(|t| Path::new(&t).file_name().is_some_and(|n| n == socket_name));
    ours && unlinkat(&fd, "vhu.sock", UnlinkatFlags::NoRemoveDir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_skew_is_try_again_later_naming_both_versions() {
        // What a v0.1.0 daemon answers a request it cannot decode.
        let old =
            "malformed request: unknown variant `attach_many`, expected one of `status`, `attach`";
        let e = daemon_refusal(Some(1), "attachment", None, old);
        assert_eq!(e.code(), 11, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("this plugin speaks control protocol 3 (netstack with vhost-user pods)")
                && msg.contains("netstackd speaks 1 (netstack v0.1.0)")
                && msg.contains(old),
            "{msg}"
        );
        // A daemon that said nothing is v0.1.0.
        assert_eq!(daemon_refusal(None, "attachment", None, old).code(), 11);
        // A daemon of this protocol that finds a request malformed: a bug, not skew.
        assert_eq!(daemon_refusal(Some(3), "attachment", None, old).code(), 100);
        // An ordinary refusal stays one; a retryable one is code 11 whatever the version.
        let e = daemon_refusal(Some(1), "attachment", None, "c1/eth0: already attached");
        assert_eq!(e.code(), 100);
        assert_eq!(
            e.to_string(),
            "netstackd refused the attachment: c1/eth0: already attached"
        );
        let busy = format!("dataplane restarting {}", netstack_core::control::RETRYABLE);
        assert_eq!(
            daemon_refusal(Some(2), "attachment", None, &busy).code(),
            11
        );
    }

    #[test]
    fn a_daemon_older_than_a_request_needs_is_try_again_later() {
        assert!(require_daemon_protocol(1, OLDEST_DAEMON_PROTOCOL, "ADD").is_ok());
        assert!(require_daemon_protocol(2, 2, "ADD").is_ok());
        let e = require_daemon_protocol(1, 2, "a TAP of 80 queues").unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(
            e.to_string()
                .contains("netstackd speaks 1 (netstack v0.1.0)")
                && e.to_string()
                    .contains("a TAP of 80 queues needs netstackd of control protocol 2"),
            "{e}"
        );
    }

    #[test]
    fn vhost_user_needs_a_daemon_of_protocol_3() {
        use netstack_core::control::version::PROTOCOL_VHOST_USER;
        assert!(require_daemon_protocol(3, PROTOCOL_VHOST_USER, "vhost-user mode").is_ok());
        for theirs in [1, 2] {
            let e = require_daemon_protocol(theirs, PROTOCOL_VHOST_USER, "vhost-user mode")
                .unwrap_err();
            assert_eq!(e.code(), 11, "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains(
                    "this plugin speaks control protocol 3 (netstack with vhost-user pods)"
                ) && msg.contains(&format!("netstackd speaks {theirs} ("))
                    && msg.contains("vhost-user mode needs netstackd of control protocol 3"),
                "{msg}"
            );
        }
    }

    #[test]
    fn kata_links_are_made_and_removed_only_when_they_point_at_our_socket() {
        // Addresses of the documentation ranges no pod here has.
        let ours: std::net::IpAddr = "192.0.2.77".parse().unwrap();
        let theirs: std::net::IpAddr = "2001:db8::77".parse().unwrap();
        let name = "vu00000000000000aa.sock";
        let socket = Path::new("/run/netstack/vhost").join(name);
        let other = Path::new("/run/other/vu00000000000000bb.sock");
        for ip in [ours, theirs] {
            let _ = std::fs::remove_dir_all(kata_socket_link(ip).parent().unwrap());
        }
        assert_eq!(
            kata_socket_link(theirs),
            Path::new("/tmp/vhostuser_2001:db8::77/vhu.sock")
        );
        let link = create_kata_link(ours, &socket).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), socket);
        use std::os::unix::fs::PermissionsExt;
        let dir_mode = std::fs::metadata(link.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // Again: the same link is fine; another socket's link is refused and kept.
        assert!(create_kata_link(ours, &socket).is_ok());
        std::fs::create_dir(kata_socket_link(theirs).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(other, kata_socket_link(theirs)).unwrap();
        let e = create_kata_link(theirs, &socket).unwrap_err();
        assert!(e.to_string().contains("another socket"), "{e}");
        assert_eq!(remove_kata_links(name), vec![link.clone()]);
        assert!(
            !link.parent().unwrap().exists(),
            "our directory went with it"
        );
        assert!(
            kata_socket_link(theirs).symlink_metadata().is_ok(),
            "theirs stays"
        );
        assert!(remove_kata_links(name).is_empty());
        std::fs::remove_dir_all(kata_socket_link(theirs).parent().unwrap()).unwrap();
    }

    /// Each kind of refusal of a daemon of this protocol gets the CNI code that fits; the
    /// message is kept whole.
    #[test]
    fn a_refusal_gets_the_cni_code_of_its_kind() {
        // (kind, CNI code)
        let cases = [
            (ErrorKind::Busy, 11),
            (ErrorKind::TryAgainLater, 11),
            (ErrorKind::ProtocolVersion, 11),
            (ErrorKind::InvalidName, 4),
            (ErrorKind::InvalidNetworkConfig, 7),
            (ErrorKind::NetnsGone, 3),
            (ErrorKind::Interface, 100),
            (ErrorKind::Exists, 100),
            (ErrorKind::NotFound, 100),
            (ErrorKind::InvalidRequest, 100),
            (ErrorKind::PermissionDenied, 100),
            (ErrorKind::Internal, 100),
            // A kind of a newer daemon: read by its message, a plain one is 100.
            (ErrorKind::Unknown, 100),
        ];
        let message =
            "c1/eth0: address 10.9.0.5 is not a pod address of this node's pod CIDR 10.244.1.0/24";
        for (kind, code) in cases {
            let e = daemon_refusal(Some(2), "attachment", Some(kind), message);
            assert_eq!(e.code(), code, "{kind:?}: {e}");
            assert!(e.to_string().contains(message), "{kind:?}: {e}");
        }
        // The kind decides, not the message: a retryable-looking message of kind
        // invalid_network_config is 7, a plain message of kind try_again_later is 11.
        let e = daemon_refusal(
            Some(2),
            "attachment",
            Some(ErrorKind::InvalidNetworkConfig),
            "MTU 9 out of range (retryable)",
        );
        assert_eq!(e.code(), 7);
        let e = daemon_refusal(Some(2), "attachment", Some(ErrorKind::TryAgainLater), "x");
        assert_eq!(e.code(), 11);
        // A kind from a newer daemon with a retryable message is still 11.
        let busy = format!("vhost busy {}", netstack_core::control::RETRYABLE);
        let e = daemon_refusal(Some(3), "attachment", Some(ErrorKind::Unknown), &busy);
        assert_eq!(e.code(), 11);
    }
}
