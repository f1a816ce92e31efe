//! `netstack-netavark`: netstack as a netavark network plugin (podman 5). Install it in a
//! netavark plugin directory under the driver's name, `netstack` (`podman network create -d
//! netstack`); see the README.
#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--version") {
        println!("netstack-netavark {}", netstack_core::version::LONG);
        return ExitCode::SUCCESS;
    }
    let mut stdin = Vec::new();
    let reads_stdin = matches!(
        args.first().map(String::as_str),
        Some("create" | "setup" | "teardown")
    );
    if reads_stdin {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            println!(
                "{}",
                serde_json::json!({ "error": format!("reading stdin: {e}") })
            );
            return ExitCode::FAILURE;
        }
    }
    match netstack_cni::netavark::run(&args, &stdin) {
        Ok(Some(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", serde_json::json!({ "error": e.0 }));
            ExitCode::FAILURE
        }
    }
}
