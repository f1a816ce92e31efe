//! `netstackd`: the netstack node daemon.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;

use netstackd::daemon::{self, DaemonConfig};

/// netstack node daemon: owns every pod's TAP queues and forwards their traffic in userspace.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    daemon: Option<Args>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove everything netstack created on this node (pod TAPs, uplink, state): uninstall.
    Cleanup {
        /// Control socket path (cleanup refuses while netstackd answers there).
        #[arg(long, default_value = netstackd::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The state dir netstackd used.
        #[arg(long, default_value = "/var/lib/netstack")]
        state_dir: PathBuf,
        /// The uplink netstackd created.
        #[arg(long, default_value = "netstack0")]
        uplink: String,
    },
    /// Internal: the dataplane child netstackd starts (socket on fd 3).
    #[command(hide = true)]
    Dataplane,
    /// Ask a running netstackd over its control socket; prints the JSON reply.
    Ctl {
        /// Control socket path.
        #[arg(long, default_value = netstackd::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// What to ask.
        #[arg(value_enum)]
        what: CtlRequest,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CtlRequest {
    /// Daemon status.
    Status,
    /// Per-pod counters.
    Stats,
}

/// Daemon options.
#[derive(clap::Args, Debug)]
struct Args {
    /// Control socket path (created mode 0600).
    #[arg(long, default_value = netstackd::control::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where attachments are recorded.
    #[arg(long, default_value = "/var/lib/netstack")]
    state_dir: PathBuf,
    /// This node's IPv4 pod CIDR; its first address becomes the pods' gateway on the uplink.
    #[arg(long)]
    pod_cidr: Ipv4Net,
    /// Name of the uplink TUN created in the host netns.
    #[arg(long, default_value = "netstack0")]
    uplink: String,
    /// Dataplane worker threads (default: online CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Uplink MTU in bytes.
    #[arg(long, default_value_t = 1500)]
    uplink_mtu: u32,
    /// Log filter (tracing env-filter syntax); NETSTACK_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

fn ctl(socket: &std::path::Path, what: CtlRequest) -> anyhow::Result<()> {
    use netstackd::control::{Client, Reply, Request};
    let mut client = Client::connect(socket, std::time::Duration::from_secs(10))?;
    let request = match what {
        CtlRequest::Status => Request::Status,
        CtlRequest::Stats => Request::Stats,
    };
    let reply = client.call(&request, &[])?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    if let Reply::Error { message } = reply {
        anyhow::bail!("netstackd: {message}");
    }
    Ok(())
}

fn init_logging(level: &str) {
    let filter = std::env::var("NETSTACK_LOG").unwrap_or_else(|_| level.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ctl { socket, what }) => {
            if let Err(e) = ctl(&socket, what) {
                eprintln!("netstackd ctl: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Some(Command::Cleanup {
            socket,
            state_dir,
            uplink,
        }) => {
            if let Err(e) = daemon::cleanup(&socket, &state_dir, &uplink) {
                eprintln!("netstackd cleanup: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Some(Command::Dataplane) => {
            init_logging("info");
            if let Err(e) = netstackd::dataplane::child::run() {
                tracing::error!("dataplane: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        None => {}
    }
    let Some(args) = cli.daemon else {
        eprintln!("netstackd: --pod-cidr is required (see --help)");
        std::process::exit(2);
    };
    init_logging(&args.log);
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let config = DaemonConfig {
        socket: args.socket,
        state_dir: args.state_dir,
        pod_cidr: args.pod_cidr.trunc(),
        uplink: args.uplink,
        workers,
        uplink_mtu: args.uplink_mtu,
    };
    if let Err(e) = daemon::run(config) {
        tracing::error!("{e:#}");
        eprintln!("netstackd: {e:#}");
        std::process::exit(1);
    }
}
