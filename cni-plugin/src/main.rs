//! `netstack`: the CNI plugin binary. Logs go to stderr; stdout carries exactly one JSON
//! object (a result, a version reply, or an error).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    netstack_cni::skel::run()
}
