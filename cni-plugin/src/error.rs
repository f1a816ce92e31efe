//! The plugin's error type and its CNI error codes (SPEC.md "Error").

use serde::Serialize;

/// Everything that can go wrong, each variant with its CNI code.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// Code 1: the config asks for a CNI version this plugin does not implement.
    #[error("incompatible CNI version {0}")]
    IncompatibleVersion(String),
    /// Code 2: a config field has a value this plugin does not support.
    #[error("unsupported field {field} = {value}")]
    UnsupportedField {
        /// The key.
        field: String,
        /// Its value.
        value: String,
    },
    /// Code 3: the container (its netns) does not exist.
    #[error("container unknown or does not exist: {0}")]
    ContainerUnknown(String),
    /// Code 4: a required CNI_* environment variable is missing or invalid.
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Code 5: reading stdin failed.
    #[error("I/O failure: {0}")]
    Io(String),
    /// Code 6: stdin (or a delegate's output) is not the expected JSON.
    #[error("failed to decode content: {0}")]
    Decode(String),
    /// Code 7: the network configuration is invalid.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// Code 11: netstackd is not reachable; retrying later may succeed.
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// A delegated plugin (IPAM) failed: its own code and message are passed on.
    #[error("{msg}")]
    Delegate {
        /// The delegate's code.
        code: u32,
        /// Message naming the delegate.
        msg: String,
        /// The delegate's details.
        details: String,
    },
    /// Code 50 (STATUS): the plugin cannot serve ADD, but existing pods are not affected
    /// (the IPAM plugin is not available).
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    /// Code 51 (STATUS): the plugin cannot serve ADD and existing pods may have limited
    /// connectivity (netstackd, which forwards their traffic, does not answer).
    #[error("plugin not available, existing pods may have limited connectivity: {0}")]
    NotAvailableLimited(String),
    /// Code 100: setting up the pod's interface failed (netns, TAP, netlink, netstackd).
    #[error("{0}")]
    Setup(String),
    /// Code 101 (CHECK): the attachment differs from `prevResult`; one entry per difference.
    #[error("CHECK: {}", .0.join("; "))]
    Mismatch(Vec<String>),
}

/// The error object printed on stdout.
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    /// The request's CNI version.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// More detail.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => 1,
            CniError::UnsupportedField { .. } => 2,
            CniError::ContainerUnknown(_) => 3,
            CniError::InvalidEnv { .. } => 4,
            CniError::Io(_) => 5,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig(_) => 7,
            CniError::TryAgainLater(_) => 11,
            CniError::NotAvailable(_) => 50,
            CniError::NotAvailableLimited(_) => 51,
            CniError::Mismatch(_) => 101,
            CniError::Delegate { code, .. } => *code,
            CniError::Setup(_) => 100,
        }
    }

    /// The error object for `cni_version`.
    pub fn to_object(&self, cni_version: &str) -> ErrorObject {
        let (msg, details) = match self {
            CniError::Delegate { msg, details, .. } => (msg.clone(), details.clone()),
            other => (other.to_string(), String::new()),
        };
        ErrorObject {
            cni_version: cni_version.to_owned(),
            code: self.code(),
            msg,
            details,
        }
    }
}
