//! `netstack-hook`: the OCI runtime hook that gives netstack to runtimes that do not call CNI
//! (plain runc, podman `--network=none`) and releases attachments a runtime would leak.
//!
//! `state` parses the OCI state on stdin, `stage` the stage argument, `annotations` what the
//! container asks for, `config` the hook's settings and CNI conflist, `netns` which namespace
//! the container has. `attach` (createRuntime) and `release` (poststop) call the CNI plugin's
//! own `cmd_add`/`cmd_del` with the environment `cni` builds, so the hook is a thin layer over
//! the plugin; `daemon` asks netstackd what is attached; `deadline` bounds the whole run.

pub mod annotations;
pub mod attach;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod deadline;
pub mod error;
pub mod netns;
pub mod release;
pub mod stage;
pub mod state;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use error::HookError;

use attach::PendingSlot;
use config::Settings;
use deadline::{run_with_deadline, Deadline, Unfinished};
use stage::{Stage, StageArg};
use state::OciState;

/// Largest OCI state accepted on stdin, in bytes.
pub const MAX_STATE_BYTES: u64 = 1 << 20;

/// What `--help` prints.
pub const USAGE: &str = "usage: netstack-hook createRuntime|prestart|poststop|auto < oci-state.json
An OCI runtime hook: at createRuntime it attaches a container annotated
netstack.io/attach=\"true\" to netstackd through the netstack CNI plugin; at poststop it
releases what netstack holds for the container. auto takes the stage from the state's status.
Environment: NETSTACK_HOOK_CONFIG (default /etc/netstack/hook.conflist),
NETSTACK_CNI_PATH (default /opt/cni/bin:/usr/lib/cni), NETSTACK_HOOK_TIMEOUT (seconds, default 10),
NETSTACK_HOOK_RUNTIME (none, containerd or cri-o: whose annotations mark sandboxes; default none).";

/// The part of the time limit kept for undoing an attach the deadline cut short.
const ROLLBACK_SHARE_MAX: Duration = Duration::from_secs(2);

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// createRuntime attached the container.
    Attached {
        /// The interface inside the container.
        ifname: String,
        /// The netns attached.
        netns: PathBuf,
        /// Its addresses (CIDR notation).
        addresses: Vec<String>,
    },
    /// poststop released these interfaces (none: nothing was held).
    Released(Vec<String>),
    /// Nothing to do, and why.
    Skipped(String),
}

/// How far the work thread got: what an error line or a rollback needs.
#[derive(Debug, Default)]
struct Progress {
    container_id: Option<String>,
    stage: Option<Stage>,
}

/// One run: parse the state and the stage, then act. `progress` is filled in as soon as the
/// container id and stage are known.
fn work(
    stage_arg: Option<String>,
    input: impl Read,
    settings: Result<Settings, HookError>,
    deadline: Deadline,
    progress: &Mutex<Progress>,
    pending: &PendingSlot,
) -> Result<Outcome, HookError> {
    let mut bytes = Vec::new();
    input
        .take(MAX_STATE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| HookError::Usage(format!("reading the OCI state on stdin: {e}")))?;
    let state = OciState::parse(&bytes).inspect_err(|e| {
        lock(progress).container_id = e.container_id().map(str::to_owned);
    })?;
    lock(progress).container_id = Some(state.id.clone());
    let stage = StageArg::parse(stage_arg.as_deref())?.resolve(&state)?;
    lock(progress).stage = Some(stage);
    if !netstackd::control::valid_container_id(&state.id) {
        return Err(HookError::ContainerId(state.id));
    }
    let settings = settings?;
    match stage {
        Stage::CreateRuntime => attach::create_runtime(&state, &settings, deadline, pending),
        Stage::Poststop => release::poststop(&state, &settings, deadline),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The one line printed on stderr for a failure: it names the container and the stage.
fn error_line(progress: &Progress, error: &HookError) -> String {
    let id = progress.container_id.as_deref().unwrap_or("(unknown)");
    let stage = progress.stage.map(|s| format!("{s}: ")).unwrap_or_default();
    let line = format!("netstack-hook: {stage}container {id}: {error}");
    line.replace(['\n', '\r'], " ")
}

/// Runs the hook: `args` as the runtime passed them (argv[0] first), the state on `stdin`,
/// settings from `var`. Returns the exit status; a failure prints one line on stderr.
pub fn run(
    args: &[String],
    stdin: impl Read + Send + 'static,
    var: impl Fn(&str) -> Option<String>,
) -> ExitCode {
    match args.get(1).map(String::as_str) {
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("netstack-hook {}", netstackd::version::LONG);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let settings = Settings::from_vars(var);
    let limit = settings
        .as_ref()
        .map_or(config::DEFAULT_TIMEOUT, |s| s.timeout);
    let rollback_share = (limit / 4).min(ROLLBACK_SHARE_MAX);
    let work_limit = limit - rollback_share;
    let deadline = Deadline::after(work_limit);

    let progress = Arc::new(Mutex::new(Progress::default()));
    let pending: PendingSlot = Arc::new(Mutex::new(None));
    let stage_arg = args.get(1).cloned();
    let outcome = {
        let (progress, pending) = (Arc::clone(&progress), Arc::clone(&pending));
        run_with_deadline(work_limit, move || {
            work(stage_arg, stdin, settings, deadline, &progress, &pending)
        })
    };
    let error = match outcome {
        Ok(Ok(_)) => return ExitCode::SUCCESS,
        Ok(Err(e)) => e,
        Err(unfinished) => {
            let add = lock(&pending).take();
            let note = match add {
                None => String::new(),
                Some(add) => match run_with_deadline(rollback_share, move || {
                    attach::roll_back(&add, rollback_share / 2)
                }) {
                    Ok(failed) if failed.is_empty() => {
                        "; the attach it had started was rolled back".into()
                    }
                    Ok(failed) => format!(
                        "; the attach it had started was rolled back except: {}",
                        failed.join("; ")
                    ),
                    Err(_) => "; rolling back the attach it had started did not finish".into(),
                },
            };
            match unfinished {
                Unfinished::TimedOut => HookError::Timeout { limit, note },
                Unfinished::Died(why) => HookError::Internal(format!("{why}{note}")),
            }
        }
    };
    eprintln!("{}", error_line(&lock(&progress), &error));
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(args: &[&str], stdin: &'static str, vars: &[(&str, &str)]) -> ExitCode {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        run(&args, stdin.as_bytes(), move |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn error_lines_name_the_container_and_stay_on_one_line() {
        let p = Progress {
            container_id: Some("c1".into()),
            stage: Some(Stage::CreateRuntime),
        };
        let line = error_line(&p, &HookError::Daemon("a\nb".into()));
        assert_eq!(line, "netstack-hook: createRuntime: container c1: a b");
        let line = error_line(&Progress::default(), &HookError::Usage("x".into()));
        assert_eq!(line, "netstack-hook: container (unknown): x");
    }

    #[test]
    fn unannotated_containers_are_left_alone_without_any_config() {
        let vars = [
            ("NETSTACK_HOOK_CONFIG", "/nonexistent/hook.conflist"),
            ("NETSTACK_HOOK_RUNTIME", "containerd"),
        ];
        let state = r#"{"id":"c1","status":"creating","pid":1}"#;
        assert_eq!(
            run_with(&["h", "createRuntime"], state, &vars),
            ExitCode::SUCCESS
        );
        let member = r#"{"id":"c1","pid":1,"annotations":{"netstack.io/attach":"true","io.kubernetes.cri.container-type":"container"}}"#;
        assert_eq!(
            run_with(&["h", "createRuntime"], member, &vars),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run_with(&["h", "poststop"], member, &vars),
            ExitCode::SUCCESS
        );
    }

    #[test]
    fn bad_input_fails() {
        let vars = [("NETSTACK_HOOK_CONFIG", "/nonexistent/hook.conflist")];
        let annotated = r#"{"id":"c1","pid":1,"annotations":{"netstack.io/attach":"true"}}"#;
        // (args, stdin, what it covers)
        let table: &[(&[&str], &'static str, &str)] = &[
            (&["h", "createRuntime"], "", "no stdin"),
            (&["h", "createRuntime"], "{", "malformed JSON"),
            (&["h", "poststart"], annotated, "unknown stage"),
            (&["h"], annotated, "no stage"),
            (
                &["h", "createRuntime"],
                r#"{"id":"a+b"}"#,
                "id netstack cannot key on",
            ),
            (&["h", "createRuntime"], annotated, "missing config"),
            (&["h", "poststop"], annotated, "missing config at poststop"),
        ];
        for (args, stdin, what) in table {
            assert_eq!(run_with(args, stdin, &vars), ExitCode::FAILURE, "{what}");
        }
    }
}
