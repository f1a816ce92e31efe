//! The hook's error type. Each one becomes a single line on stderr naming the container
//! (see [`crate::run`]) and a non-zero exit status, which makes the runtime fail the
//! container's creation (createRuntime) or log a warning (poststop).

use std::time::Duration;

use netstack_cni::CniError;

use crate::state::StateError;

/// Everything that makes the hook fail.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Usage: no stage argument, or one the hook does not know.
    #[error("{0}")]
    Usage(String),
    /// stdin is not an OCI state.
    #[error(transparent)]
    State(#[from] StateError),
    /// The container id is not one netstack can key an attachment on.
    #[error("container id {0:?} does not match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")]
    ContainerId(String),
    /// An annotation has a value the hook does not accept.
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation {
        /// The annotation key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The hook's settings (environment) or its CNI config file are unusable.
    #[error("{0}")]
    Config(String),
    /// The container's network namespace cannot be found or must not be attached.
    #[error("{0}")]
    Netns(String),
    /// netstackd is unreachable, or answered with an error.
    #[error("{0}")]
    Daemon(String),
    /// The CNI ADD/DEL path failed.
    #[error("{0}")]
    Cni(#[from] CniError),
    /// The work thread could not start, or panicked.
    #[error("{0}")]
    Internal(String),
    /// The work did not finish in time (part of the limit is kept for the rollback).
    #[error("did not finish within {} ms{note}", .limit.as_millis())]
    Timeout {
        /// The hook's time limit.
        limit: Duration,
        /// What became of work already started (empty when none had).
        note: String,
    },
}
