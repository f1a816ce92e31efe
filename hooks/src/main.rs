//! `netstack-hook STAGE < state.json`: the OCI runtime hook. STAGE is `createRuntime` (or
//! `prestart`), `poststop`, or `auto` (from the state's status). Settings come from the
//! environment: `NETSTACK_HOOK_CONFIG`, `NETSTACK_CNI_PATH`, `NETSTACK_HOOK_TIMEOUT`.
//! Silent on success; one line on stderr and a non-zero status on failure.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    netstack_hook::run(&args, std::io::stdin(), |name| std::env::var(name).ok())
}
