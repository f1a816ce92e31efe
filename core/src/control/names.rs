//! The names a client gives the daemon: container ids and interface names. One definition,
//! used by the daemon, the CNI plugin and the OCI hook, so that what one accepts the others do.
#![forbid(unsafe_code)]

/// Is `id` a container id the CNI spec allows (`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)?
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Is `name` a valid Linux interface name (1–15 bytes, no '/', ':' or whitespace, not . or ..)?
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}
