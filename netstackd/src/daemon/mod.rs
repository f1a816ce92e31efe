//! The daemon: sets up the uplink, starts the dataplane, keeps the attachments and serves the
//! control socket.

mod registry;
mod server;
mod uplink;

pub use registry::{valid_container_id, valid_ifname, Registry};

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use ipnet::Ipv4Net;

use crate::dataplane::Dataplane;

/// How netstackd is set up (its command line).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The control socket path.
    pub socket: PathBuf,
    /// Where attachments are recorded.
    pub state_dir: PathBuf,
    /// This node's pod CIDR; its first address is the pods' gateway.
    pub pod_cidr: Ipv4Net,
    /// The uplink TUN's name in the host netns.
    pub uplink: String,
    /// Dataplane workers (one queue of every TAP each).
    pub workers: usize,
    /// The uplink MTU in bytes.
    pub uplink_mtu: u32,
}

impl DaemonConfig {
    /// The pods' gateway: the first host address of the pod CIDR.
    pub fn gateway(&self) -> anyhow::Result<Ipv4Addr> {
        if self.pod_cidr.prefix_len() > 30 {
            bail!(
                "pod CIDR {} is too small: a gateway and at least one pod need a /30 or larger",
                self.pod_cidr
            );
        }
        let net = u32::from(self.pod_cidr.network());
        Ok(Ipv4Addr::from(net + 1))
    }
}

/// Runs netstackd until a termination signal arrives.
pub fn run(config: DaemonConfig) -> anyhow::Result<()> {
    let gateway = config.gateway()?;
    if config.workers == 0 || config.workers > crate::control::MAX_FDS {
        bail!(
            "--workers must be between 1 and {}, not {}",
            crate::control::MAX_FDS,
            config.workers
        );
    }
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let signals = server::block_termination_signals()?;

    let queues = uplink::create(&config, gateway).context("setting up the uplink")?;
    enable_ipv4_forwarding()?;
    let dataplane = Dataplane::start(queues, gateway, config.uplink_mtu)
        .context("starting the dataplane workers")?;
    tracing::info!(
        uplink = %config.uplink,
        pod_cidr = %config.pod_cidr,
        %gateway,
        workers = config.workers,
        "dataplane running"
    );
    let registry = Arc::new(Registry::new(config.clone(), gateway, dataplane));
    let listener = server::bind(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), "ready");
    server::spawn_accept_loop(listener, Arc::clone(&registry))?;
    let sig = server::wait_for_termination(&signals);
    tracing::info!("{sig}: shutting down");
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

fn enable_ipv4_forwarding() -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling net.ipv4.ip_forward")
}
