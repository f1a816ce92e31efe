//! `netstackd`: the netstack node daemon.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use ipnet::Ipv4Net;

use netstackd::daemon::{self, DaemonConfig};
use netstackd::dataplane::child::DataplaneUser;

/// netstack node daemon: owns every pod's TAP queues and forwards their traffic in userspace.
#[derive(Parser, Debug)]
#[command(version = netstackd::version::LONG, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    daemon: Option<Args>,
    /// Node mode: routes to the other nodes' pods, egress masquerade. (Beside `Args`, not
    /// inside it: clap does not detect an optional group through a nested flatten.)
    #[command(flatten)]
    node: netstackd::node::NodeArgs,
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
        /// The namespace of the veth peers netstackd used.
        #[arg(long, default_value = daemon::DEFAULT_DP_NETNS)]
        dp_netns: PathBuf,
        /// Where netstackd bound VM pods' vhost-user sockets.
        #[arg(long, default_value = daemon::DEFAULT_VHOST_DIR)]
        vhost_dir: PathBuf,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print netstackd's man page (roff) to stdout, or write one page per command into DIR.
    Man {
        /// Write netstackd.1, netstackd-ctl.1, ... into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Internal: the dataplane child netstackd starts (socket on fd 3).
    #[command(hide = true)]
    Dataplane {
        /// The uid:gid to run as once set up.
        #[arg(long, default_value_t)]
        user: DataplaneUser,
    },
    /// Prove the dataplane's lock-down: try each forbidden call in a process locked down as
    /// the dataplane is, one PASS/FAIL row each (needs root, as netstackd does).
    #[command(hide = true)]
    DataplaneSelftest {
        /// The dataplane user (as --dataplane-user).
        #[arg(long, default_value_t)]
        user: DataplaneUser,
        /// Internal: be the process that tries this one probe.
        #[arg(long)]
        probe: Option<String>,
    },
    /// Ask a running netstackd over its control socket: tables, or JSON with --json.
    Ctl {
        /// Control socket path (before or after the subcommand).
        #[arg(long, global = true, default_value = netstackd::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print JSON (stable, documented) instead of tables (before or after the subcommand).
        #[arg(long, global = true)]
        json: bool,
        /// What to ask.
        #[command(subcommand)]
        what: netstackd::ctl::CtlCommand,
    },
}

/// `--gso`: what the dataplane does with GSO super-frames on egress.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum GsoMode {
    /// Pass them whole (the fast path).
    Pass,
    /// Segment them in software first.
    Segment,
}

/// `--service-flows`: on or off.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--veth-rx`: how veth-mode packet sockets receive.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum VethRx {
    /// recvmmsg batches.
    Mmsg,
    /// A TPACKET_V2 receive ring.
    Ring,
}

/// `--tap-io`: how the dataplane reads and writes TAP queues.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TapIoArg {
    /// io_uring where a restricted ring can be set up, else readv.
    Auto,
    /// A restricted io_uring per worker, or refuse to start.
    Uring,
    /// One readv/writev per frame.
    Readv,
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
    /// Required unless --kube reads it from the Node.
    #[arg(long)]
    pod_cidr: Option<Ipv4Net>,
    /// This node's IPv6 pod CIDR (dual-stack); its first address becomes the pods' IPv6
    /// gateway on the uplink, and IPv6 forwarding is enabled. With --kube: the Node's IPv6
    /// pod CIDR, if it has one.
    #[arg(long)]
    pod_cidr_v6: Option<ipnet::Ipv6Net>,
    /// Name of the uplink TUN created in the host netns.
    #[arg(long, default_value = "netstack0")]
    uplink: String,
    /// Dataplane worker threads, one queue of every pod TAP each (1-256; default: the CPUs
    /// netstackd may run on, at most 16).
    #[arg(long)]
    workers: Option<usize>,
    /// Uplink MTU in bytes; 0: the MTU of the interface carrying the node's default route
    /// (1500 without one). The install step writes the uplink's MTU into the conflist.
    #[arg(long, visible_alias = "mtu", default_value_t = 0)]
    uplink_mtu: u32,
    /// GSO super-frames on egress: `pass` them whole (the fast path), or `segment` them in
    /// software first (for kernels whose TAP/TUN refuse GSO writes, and for measuring).
    #[arg(long, value_enum, default_value_t = GsoMode::Pass)]
    gso: GsoMode,
    /// Service flows: `on` sends a pod's reply back through the node when its request came
    /// from the node (a Service endpoint on this node, see the README); `off` switches every
    /// pod-to-pod packet directly (breaks such Services: for measuring and tests).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    service_flows: OnOff,
    /// Flow balancing between workers: `on` moves a busy flow from a worker with two or more
    /// active flows than another to that one (README, "Workers"); `off` leaves every flow on
    /// the queue the kernel's hash picks (for measuring).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    flow_balance: OnOff,
    /// Named network namespace for the peers of veth-mode pods (made by the CNI plugin at the
    /// first veth ADD, or by netstackd if missing; no addresses, no forwarding, no IPv6).
    #[arg(long, default_value = daemon::DEFAULT_DP_NETNS)]
    dp_netns: PathBuf,
    /// How veth-mode packet sockets receive: `mmsg` (recvmmsg batches, the default) or `ring`
    /// (a TPACKET_V2 ring: the kernel copies each frame into it in the sender's context, which
    /// takes that copy off the dataplane's threads — the machine does the same work — at the
    /// cost of 2 MiB of kernel memory per worker and veth pod, bursts of at most 30 frames and
    /// a slower ADD; see the README and e2e/bench/packet_io.sh).
    #[arg(long, value_enum, default_value_t = VethRx::Mmsg)]
    veth_rx: VethRx,
    /// How the dataplane reads and writes TAP queues: `auto` (the default: uring where the
    /// kernel allows it, else readv; a log line says which and why), `uring` (a batch of
    /// reads or writes in one io_uring_enter, on one io_uring per worker restricted to READV
    /// and WRITEV before the seccomp lock-down; a queue of a frame or two still goes by
    /// readv/writev; refuses to start without a ring) or `readv` (one readv/writev per
    /// frame). `ctl status` shows which one runs. Measured in e2e/bench/README.md.
    #[arg(long, value_enum, default_value_t = TapIoArg::Auto)]
    tap_io: TapIoArg,
    /// BIG TCP for veth-mode pods (off by default): the plugin sets the GSO and GRO size of
    /// each new veth pod's eth0 and peer to --big-tcp-size, so TCP between veth pods moves
    /// super-frames larger than 64 KiB, forwarded whole; towards a TAP pod, a VM or the node
    /// they are cut into 64 KiB GSO frames. Each worker's frame buffers grow to that size
    /// (allocated as used: up to 256 × 192 KiB = 48 MiB per worker at the default size,
    /// against 16 MiB without). Not with --veth-rx ring.
    #[arg(long)]
    big_tcp: bool,
    /// The GSO/GRO size with --big-tcp, in bytes: 65537 to 524280 (the kernel's GSO_MAX_SIZE);
    /// the default is Cilium's.
    #[arg(long, default_value_t = 196_608, value_parser = clap::value_parser!(u32).range(65537..=524_280))]
    big_tcp_size: u32,
    /// Prometheus metrics listener (port 0 picks one, `off` disables it); an address other than
    /// loopback is served unauthenticated (a warning says so).
    #[arg(long, default_value = "127.0.0.1:9473")]
    metrics_addr: String,
    /// The dataplane child's uid and gid after setup: `UID:GID` or a user name (its primary
    /// group); never root. Processes of the same uid can signal it: a dedicated uid is best.
    #[arg(long, default_value_t)]
    dataplane_user: DataplaneUser,
    /// Where VM pods' vhost-user sockets are bound (`<dir>/vu<16 hex digits>.sock`, the hash
    /// of the pod's container id and interface name; the path of a unix socket is at most
    /// 107 bytes, so at most 83 here).
    #[arg(long, default_value = daemon::DEFAULT_VHOST_DIR)]
    vhost_dir: PathBuf,
    /// The scheduler time slice the dataplane's threads ask for, in µs (100-100000; 0: the
    /// kernel's default). A short slice lets a worker woken by a frame preempt the task on its
    /// CPU sooner (EEVDF, Linux 6.12+): lower latency under load, no larger share of the CPU.
    #[arg(long, default_value_t = 0, value_parser = parse_slice_us)]
    worker_slice_us: u64,
    /// Log filter (tracing env-filter syntax); NETSTACK_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

/// `--worker-slice-us`: 0, or within the kernel's bounds on a requested slice.
fn parse_slice_us(s: &str) -> Result<u64, String> {
    use netstackd::sys::sched::{SLICE_MAX, SLICE_MIN};
    let us: u64 = s.parse().map_err(|e| format!("{e}"))?;
    let (lo, hi) = (SLICE_MIN.as_micros() as u64, SLICE_MAX.as_micros() as u64);
    if us == 0 || (lo..=hi).contains(&us) {
        Ok(us)
    } else {
        Err(format!(
            "{us} is outside {lo}..={hi} (or 0: the kernel's default)"
        ))
    }
}

fn init_logging(level: &str) {
    let filter = std::env::var("NETSTACK_LOG").unwrap_or_else(|_| level.to_owned());
    // The dataplane child is this binary again: it inherits the filter through the
    // environment. Set before any thread exists.
    std::env::set_var("NETSTACK_LOG", &filter);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ctl { socket, json, what }) => {
            if let Err(e) = netstackd::ctl::run(&socket, what, json) {
                eprintln!("netstackd ctl: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Some(Command::Cleanup {
            socket,
            state_dir,
            uplink,
            dp_netns,
            vhost_dir,
        }) => {
            if let Err(e) = daemon::cleanup(&socket, &state_dir, &uplink, &dp_netns, &vhost_dir) {
                eprintln!("netstackd cleanup: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Some(Command::Dataplane { user }) => {
            init_logging("info");
            if let Err(e) = netstackd::dataplane::child::run(user) {
                tracing::error!("dataplane: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Some(Command::Completions { shell }) => {
            // Into a buffer first: clap_complete panics when stdout closes early (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "netstackd", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return;
        }
        Some(Command::Man { dir }) => {
            let written = match dir {
                Some(dir) => clap_mangen::generate_to(Cli::command(), &dir),
                None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
            };
            if let Err(e) = written.or_else(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => Ok(()),
                _ => Err(e),
            }) {
                eprintln!("netstackd man: {e}");
                std::process::exit(1);
            }
            return;
        }
        Some(Command::DataplaneSelftest { user, probe }) => {
            let result = match probe {
                Some(name) => netstackd::dataplane::selftest::run_probe(&name, user).map(|()| true),
                None => netstackd::dataplane::selftest::run_all(user),
            };
            match result {
                Ok(true) => return,
                Ok(false) => std::process::exit(1),
                Err(e) => {
                    eprintln!("netstackd dataplane-selftest: {e:#}");
                    std::process::exit(2);
                }
            }
        }
        None => {}
    }
    let Some(args) = cli.daemon else {
        eprintln!("netstackd: --pod-cidr (or --kube) is required (see --help)");
        std::process::exit(2);
    };
    init_logging(&args.log);
    let node = cli.node.config();
    let (pod_cidr, pod_cidr_v6) =
        match netstackd::node::resolve_pod_cidrs(&node, args.pod_cidr, args.pod_cidr_v6) {
            Ok(cidrs) => cidrs,
            Err(e) => {
                eprintln!("netstackd: {e:#}");
                std::process::exit(2);
            }
        };
    let workers = args.workers.unwrap_or_else(daemon::default_workers);
    if args.big_tcp && args.veth_rx == VethRx::Ring {
        eprintln!("netstackd: --big-tcp needs --veth-rx mmsg: a ring's frames hold 64 KiB");
        std::process::exit(2);
    }
    let config = DaemonConfig {
        socket: args.socket,
        state_dir: args.state_dir,
        pod_cidr: pod_cidr.trunc(),
        pod_cidr_v6: pod_cidr_v6.map(|c| c.trunc()),
        uplink: args.uplink,
        workers,
        uplink_mtu: netstackd::node::uplink_mtu(args.uplink_mtu),
        segment_gso: args.gso == GsoMode::Segment,
        service_flows: args.service_flows == OnOff::On,
        flow_balance: args.flow_balance == OnOff::On,
        metrics_addr: match args.metrics_addr.as_str() {
            "off" => None,
            addr => match addr.parse() {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("netstackd: --metrics-addr {addr}: {e}");
                    std::process::exit(2);
                }
            },
        },
        node,
        dp_netns: args.dp_netns,
        veth_rx_ring: args.veth_rx == VethRx::Ring,
        tap_io: match args.tap_io {
            TapIoArg::Auto => netstackd::dataplane::TapIo::Auto,
            TapIoArg::Uring => netstackd::dataplane::TapIo::Uring,
            TapIoArg::Readv => netstackd::dataplane::TapIo::Readv,
        },
        big_tcp_bytes: if args.big_tcp { args.big_tcp_size } else { 0 },
        dataplane_user: args.dataplane_user,
        vhost_dir: args.vhost_dir,
        worker_slice: (args.worker_slice_us > 0)
            .then(|| std::time::Duration::from_micros(args.worker_slice_us)),
    };
    if let Err(e) = daemon::run(config) {
        tracing::error!("{e:#}");
        eprintln!("netstackd: {e:#}");
        std::process::exit(1);
    }
}
