//! The hook's first argument: which OCI lifecycle stage it runs at.

use oci_spec::runtime::ContainerState;

use crate::error::HookError;
use crate::state::{OciState, Status};

/// The stages the hook acts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `createRuntime` (or the deprecated `prestart`): the container's namespaces exist and
    /// its process waits; attach it.
    CreateRuntime,
    /// `poststop`: the container is gone; release what netstack holds for it.
    Poststop,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::CreateRuntime => "createRuntime",
            Stage::Poststop => "poststop",
        })
    }
}

/// The stage argument as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageArg {
    /// A named stage.
    Named(Stage),
    /// `auto`: the stage follows the state's status (`creating` → createRuntime, `stopped` →
    /// poststop). A hooks.d file lists both stages with one argv, so it needs this.
    Auto,
}

impl StageArg {
    /// Parses the first argument.
    pub fn parse(arg: Option<&str>) -> Result<Self, HookError> {
        match arg {
            Some("createRuntime" | "prestart") => Ok(StageArg::Named(Stage::CreateRuntime)),
            Some("poststop") => Ok(StageArg::Named(Stage::Poststop)),
            Some("auto") => Ok(StageArg::Auto),
            Some(other) => Err(HookError::Usage(format!(
                "unknown stage {other:?} (expected createRuntime, prestart, poststop or auto)"
            ))),
            None => Err(HookError::Usage(
                "no stage argument (usage: netstack-hook createRuntime|prestart|poststop|auto < state.json)".into(),
            )),
        }
    }

    /// The stage to run for `state`.
    pub fn resolve(self, state: &OciState) -> Result<Stage, HookError> {
        match self {
            StageArg::Named(stage) => Ok(stage),
            StageArg::Auto => match &state.status {
                Status::Known(ContainerState::Creating) => Ok(Stage::CreateRuntime),
                Status::Known(ContainerState::Stopped) => Ok(Stage::Poststop),
                Status::Known(other) => Err(HookError::Usage(format!(
                    "stage auto: status {other} is neither creating nor stopped"
                ))),
                Status::Other(other) => Err(HookError::Usage(format!(
                    "stage auto: status {other:?} is neither creating nor stopped"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: &str) -> OciState {
        OciState::parse(format!(r#"{{"id":"c1","status":"{status}"}}"#).as_bytes()).unwrap()
    }

    #[test]
    fn stage_names_parse_and_prestart_is_create_runtime() {
        // (argument, expected stage, what it covers)
        let table = [
            (
                "createRuntime",
                StageArg::Named(Stage::CreateRuntime),
                "the stage",
            ),
            (
                "prestart",
                StageArg::Named(Stage::CreateRuntime),
                "older runtimes",
            ),
            ("poststop", StageArg::Named(Stage::Poststop), "teardown"),
            ("auto", StageArg::Auto, "hooks.d with both stages"),
        ];
        for (arg, want, what) in table {
            assert_eq!(StageArg::parse(Some(arg)).unwrap(), want, "{what}");
        }
    }

    #[test]
    fn unknown_or_missing_stage_is_a_usage_error() {
        for arg in [Some("poststart"), Some("createruntime"), Some(""), None] {
            assert!(
                matches!(StageArg::parse(arg), Err(HookError::Usage(_))),
                "{arg:?}"
            );
        }
    }

    #[test]
    fn auto_follows_the_status() {
        assert_eq!(
            StageArg::Auto.resolve(&state("creating")).unwrap(),
            Stage::CreateRuntime
        );
        assert_eq!(
            StageArg::Auto.resolve(&state("stopped")).unwrap(),
            Stage::Poststop
        );
        for status in ["running", "created", "paused", ""] {
            assert!(StageArg::Auto.resolve(&state(status)).is_err(), "{status}");
        }
        // A named stage does not look at the status.
        assert_eq!(
            StageArg::Named(Stage::Poststop)
                .resolve(&state("running"))
                .unwrap(),
            Stage::Poststop
        );
    }
}
