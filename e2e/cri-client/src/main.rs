//! `cri-client`: the few CRI v1 calls the kubelet makes to give a pod its network, for the
//! containerd e2e (`e2e/test_containerd.sh`). Each subcommand is one RPC; results are JSON on
//! stdout, errors (with the runtime's message, e.g. a CNI plugin's error) on stderr and a
//! non-zero exit status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
    VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
#[command(about = "A minimal CRI client for the netstack e2e tests")]
struct Cli {
    /// The runtime's CRI socket.
    #[arg(long)]
    socket: PathBuf,
    /// Deadline of each call, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    /// Version: the runtime's name and CRI version.
    Version,
    /// RunPodSandbox: prints the new sandbox id.
    Run {
        /// Pod name.
        #[arg(long)]
        name: String,
        /// Pod namespace.
        #[arg(long, default_value = "e2e")]
        namespace: String,
        /// Pod UID.
        #[arg(long)]
        uid: String,
        /// The kubelet's attempt number (raised when it recreates a failed sandbox).
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        /// Pod annotations, KEY=VALUE (e.g. kubernetes.io/ingress-bandwidth=10M).
        #[arg(long = "annotation")]
        annotations: Vec<String>,
    },
    /// PodSandboxStatus (verbose): state, IPs, and the sandbox's netns path and pid.
    Status {
        /// Sandbox id.
        id: String,
    },
    /// ListPodSandbox: the ids of every sandbox.
    List,
    /// StopPodSandbox.
    Stop {
        /// Sandbox id.
        id: String,
    },
    /// RemovePodSandbox.
    Remove {
        /// Sandbox id.
        id: String,
    },
}

async fn connect(socket: PathBuf) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    // The URI is unused: every connection goes to the unix socket.
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .context("connecting to the CRI socket")?;
    Ok(RuntimeServiceClient::new(channel))
}

/// The status message of a failed call, as the kubelet would log it.
fn rpc_error(call: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call} failed: {:?}: {}", status.code(), status.message())
}

/// A request with a gRPC deadline, as the kubelet sets on every CRI call.
fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(deadline);
    req
}

async fn run(cli: Cli) -> anyhow::Result<serde_json::Value> {
    let mut client = connect(cli.socket).await?;
    let deadline = Duration::from_secs(cli.timeout_secs);
    Ok(match cli.call {
        Call::Version => {
            let v = client
                .version(with_deadline(
                    VersionRequest {
                        version: "v1".into(),
                    },
                    deadline,
                ))
                .await
                .map_err(|s| rpc_error("Version", s))?
                .into_inner();
            serde_json::to_value(v)?
        }
        Call::Run {
            name,
            namespace,
            uid,
            attempt,
            annotations,
        } => {
            let mut notes = HashMap::new();
            for a in annotations {
                let Some((k, v)) = a.split_once('=') else {
                    bail!("annotation {a:?} is not KEY=VALUE");
                };
                notes.insert(k.to_owned(), v.to_owned());
            }
            let config = PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: name.clone(),
                    uid,
                    namespace,
                    attempt,
                }),
                hostname: name,
                annotations: notes,
                linux: Some(LinuxPodSandboxConfig::default()),
                ..Default::default()
            };
            let r = client
                .run_pod_sandbox(with_deadline(
                    RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: String::new(),
                    },
                    deadline,
                ))
                .await
                .map_err(|s| rpc_error("RunPodSandbox", s))?
                .into_inner();
            serde_json::json!({ "id": r.pod_sandbox_id })
        }
        Call::Status { id } => {
            let r = client
                .pod_sandbox_status(with_deadline(
                    PodSandboxStatusRequest {
                        pod_sandbox_id: id,
                        verbose: true,
                    },
                    deadline,
                ))
                .await
                .map_err(|s| rpc_error("PodSandboxStatus", s))?
                .into_inner();
            let status = r.status.context("PodSandboxStatus without a status")?;
            let network = status.network.unwrap_or_default();
            // containerd's verbose info: {"info": "{... \"pid\": N, \"runtimeSpec\": {...}}"}
            let info: serde_json::Value = r
                .info
                .get("info")
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            let netns = info["runtimeSpec"]["linux"]["namespaces"]
                .as_array()
                .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
                .and_then(|n| n["path"].as_str())
                .unwrap_or_default()
                .to_owned();
            serde_json::json!({
                "id": status.id,
                "state": if status.state == 0 { "ready" } else { "notready" },
                "ip": network.ip,
                "additional_ips": network.additional_ips.iter().map(|i| i.ip.clone()).collect::<Vec<_>>(),
                "pid": info["pid"],
                "netns": netns,
            })
        }
        Call::List => {
            let r = client
                .list_pod_sandbox(with_deadline(
                    ListPodSandboxRequest { filter: None },
                    deadline,
                ))
                .await
                .map_err(|s| rpc_error("ListPodSandbox", s))?
                .into_inner();
            serde_json::json!(r.items.iter().map(|s| s.id.clone()).collect::<Vec<_>>())
        }
        Call::Stop { id } => {
            client
                .stop_pod_sandbox(with_deadline(
                    StopPodSandboxRequest { pod_sandbox_id: id },
                    deadline,
                ))
                .await
                .map_err(|s| rpc_error("StopPodSandbox", s))?;
            serde_json::json!({})
        }
        Call::Remove { id } => {
            client
                .remove_pod_sandbox(with_deadline(
                    RemovePodSandboxRequest { pod_sandbox_id: id },
                    deadline,
                ))
                .await
                .map_err(|s| rpc_error("RemovePodSandbox", s))?;
            serde_json::json!({})
        }
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cri-client: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cri-client: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
