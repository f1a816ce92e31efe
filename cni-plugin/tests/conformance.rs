//! The CNI conformance rows that need neither root, a network namespace nor netstackd: the
//! plugin binary run as a runtime runs it (stdin config, `CNI_*` variables), one table row per
//! requirement of the CNI spec (SPEC.md 1.0.0 and 1.1.0) it checks, with the error code the
//! spec gives. The rows that need a daemon and real namespaces stay in
//! `e2e/test_cni_conformance.sh`.
//!
//! Every ADD here points at a socket that does not exist and a `CNI_PATH` without plugins, so
//! that a row whose check were missing would fail on those, never reach a namespace or device.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

/// The plugin binary cargo built for these tests.
const PLUGIN: &str = env!("CARGO_BIN_EXE_netstack");

/// A directory of its own for one test (an empty `CNI_PATH`, a socket path nothing listens on).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cni-conformance-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    dir
}

/// A plugin config as libcni derives it from a conflist (cniVersion and name inserted), with
/// an unknown key as a runtime may pass one.
fn config(dir: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "netstack-conformance",
        "type": "netstack",
        "socket": dir.join("no-netstackd.sock"),
        "mtu": 1500,
        "x-unknown-key": {"kept": true},
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.9.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": dir.join("ipam")
        }
    })
}

/// Runs the plugin with exactly `env` (and PATH) and `stdin`; returns what it did.
fn run(env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the plugin");
    // The plugin may exit before reading all of stdin (it fails early): a broken pipe is fine.
    let _ = child.stdin.take().expect("stdin is piped").write_all(stdin);
    child.wait_with_output().expect("waiting for the plugin")
}

/// The one JSON object the plugin printed on stdout.
fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {:?}; stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Asserts a CNI error object with `code` (and a cniVersion and a message), a non-zero exit,
/// and returns its message.
fn assert_error(what: &str, out: &Output, code: u64) -> String {
    let v = stdout_json(out);
    assert_eq!(v["code"], json!(code), "{what}: {v}");
    assert!(v["cniVersion"].is_string(), "{what}: no cniVersion in {v}");
    let msg = v["msg"].as_str().unwrap_or_default().to_owned();
    assert!(!msg.is_empty(), "{what}: no message in {v}");
    assert!(
        !out.status.success(),
        "{what}: exit status {:?}",
        out.status
    );
    msg
}

/// One table row: what it covers, the environment, stdin, and the error code the spec gives.
struct ErrorRow {
    what: &'static str,
    env: Vec<(&'static str, String)>,
    stdin: Vec<u8>,
    code: u64,
    /// Words the message must name (the object at fault).
    names: &'static [&'static str],
}

/// The full environment of an ADD, with `netns` as CNI_NETNS (the test's own netns exists and
/// can be opened without root; the ADD never gets to use it).
fn add_env(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", "ADD".into()),
        ("CNI_CONTAINERID", "conformance-1".into()),
        ("CNI_NETNS", "/proc/self/ns/net".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", dir.display().to_string()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=p".into(),
        ),
    ]
}

/// `base` with `key` set to `value`, or removed when `value` is None.
fn with(
    base: &[(&'static str, String)],
    key: &'static str,
    value: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = base.iter().filter(|(k, _)| *k != key).cloned().collect();
    if let Some(v) = value {
        env.push((key, v.to_owned()));
    }
    env
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

#[test]
fn errors_carry_the_code_the_spec_gives() {
    let dir = scratch("errors");
    let conf = config(&dir, "1.0.0");
    let env = add_env(&dir);
    let edited = |f: &dyn Fn(&mut Value)| {
        let mut c = conf.clone();
        f(&mut c);
        bytes(&c)
    };
    let rows = vec![
        ErrorRow {
            what: "SPEC §5 error code 1: ADD with cniVersion 0.3.1 (not implemented)",
            env: env.clone(),
            stdin: edited(&|c| c["cniVersion"] = json!("0.3.1")),
            code: 1,
            names: &["0.3.1"],
        },
        ErrorRow {
            what: "SPEC §2 STATUS (code 1): STATUS with a 1.0.0 config (STATUS exists from 1.1.0)",
            env: vec![
                ("CNI_COMMAND", "STATUS".into()),
                ("CNI_PATH", dir.display().to_string()),
            ],
            stdin: bytes(&conf),
            code: 1,
            names: &["1.1.0"],
        },
        ErrorRow {
            what: "SPEC §2 GC (code 1): GC with a 1.0.0 config",
            env: vec![
                ("CNI_COMMAND", "GC".into()),
                ("CNI_PATH", dir.display().to_string()),
            ],
            stdin: edited(&|c| c["cni.dev/valid-attachments"] = json!([])),
            code: 1,
            names: &["1.1.0"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_COMMAND (4): an unknown command",
            env: with(&env, "CNI_COMMAND", Some("FROB")),
            stdin: bytes(&conf),
            code: 4,
            names: &["FROB"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_CONTAINERID (4): outside ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
            env: with(&env, "CNI_CONTAINERID", Some("-bad/id")),
            stdin: bytes(&conf),
            code: 4,
            names: &["CNI_CONTAINERID", "-bad/id"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_CONTAINERID (4): not set",
            env: with(&env, "CNI_CONTAINERID", None),
            stdin: bytes(&conf),
            code: 4,
            names: &["CNI_CONTAINERID"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_IFNAME (4): 16 characters (at most 15)",
            env: with(&env, "CNI_IFNAME", Some("abcdefghijklmnop")),
            stdin: bytes(&conf),
            code: 4,
            names: &["CNI_IFNAME"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_IFNAME (4): a slash",
            env: with(&env, "CNI_IFNAME", Some("eth/0")),
            stdin: bytes(&conf),
            code: 4,
            names: &["CNI_IFNAME"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_IFNAME (4): not set",
            env: with(&env, "CNI_IFNAME", None),
            stdin: bytes(&conf),
            code: 4,
            names: &["CNI_IFNAME"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_NETNS (4): ADD without it",
            env: with(&env, "CNI_NETNS", None),
            stdin: bytes(&conf),
            code: 4,
            names: &["CNI_NETNS"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_PATH (4): ADD without it",
            env: with(&env, "CNI_PATH", None),
            stdin: bytes(&conf),
            code: 4,
            names: &["CNI_PATH"],
        },
        ErrorRow {
            what: "SPEC §5 error code 3: a CNI_NETNS that does not exist",
            env: with(
                &env,
                "CNI_NETNS",
                Some("/run/netns/netstack-conformance-gone"),
            ),
            stdin: bytes(&conf),
            code: 3,
            names: &["/run/netns/netstack-conformance-gone"],
        },
        ErrorRow {
            what: "SPEC §2 parameters: CNI_ARGS (4): an unknown key without IgnoreUnknown",
            env: with(&env, "CNI_ARGS", Some("K8S_POD_NAME=x;FROB=1")),
            stdin: bytes(&conf),
            code: 4,
            names: &["FROB"],
        },
        ErrorRow {
            what: "SPEC §5 error code 6: an undecodable config",
            env: env.clone(),
            stdin: b"{\"cniVersion\":".to_vec(),
            code: 6,
            names: &[],
        },
        ErrorRow {
            what: "SPEC §5 error code 7: an invalid config (no ipam section)",
            env: env.clone(),
            stdin: edited(&|c| {
                c.as_object_mut().map(|o| o.remove("ipam"));
            }),
            code: 7,
            names: &["ipam"],
        },
        ErrorRow {
            what: "SPEC §5 error code 2: an unsupported field value (mode macvtap)",
            env: env.clone(),
            stdin: edited(&|c| c["mode"] = json!("macvtap")),
            code: 2,
            names: &["mode", "macvtap"],
        },
        ErrorRow {
            what: "SPEC §5 error code 7: MTU 65535 on a TAP (which takes at most 65521)",
            env: env.clone(),
            stdin: edited(&|c| c["mtu"] = json!(65535)),
            code: 7,
            names: &["65535", "65521"],
        },
        ErrorRow {
            // The control row: all else right, the ADD gets as far as the missing IPAM plugin.
            what: "SPEC §4 delegation: an IPAM plugin not in CNI_PATH is named",
            env: env.clone(),
            stdin: bytes(&conf),
            code: 7,
            names: &["host-local"],
        },
    ];
    for row in rows {
        let env: Vec<(&str, &str)> = row.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run(&env, &row.stdin);
        let msg = assert_error(row.what, &out, row.code);
        for name in row.names {
            assert!(
                msg.contains(name),
                "{}: message {msg:?} does not name {name:?}",
                row.what
            );
        }
    }
}

#[test]
fn stdin_that_cannot_be_read_is_error_5() {
    // SPEC §5 error code 5: stdin is a directory, so reading it fails.
    let dir = scratch("stdin-dir");
    let out = Command::new(PLUGIN)
        .env_clear()
        .envs(add_env(&dir).iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::fs::File::open("/").expect("opening / for reading"))
        .output()
        .expect("running the plugin");
    assert_error("stdin unreadable (a directory)", &out, 5);
}

#[test]
fn version_lists_the_supported_versions_and_ignores_other_variables() {
    // SPEC §2 VERSION: the dummy CNI_* a runtime may pass along are ignored.
    let out = run(
        &[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_NETNS", "dummy"),
            ("CNI_PATH", "dummy"),
        ],
        br#"{"cniVersion":"1.1.0"}"#,
    );
    assert!(out.status.success(), "VERSION failed: {out:?}");
    let v = stdout_json(&out);
    assert_eq!(
        v,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn the_shipped_conflist_asks_only_for_supported_versions() {
    // SPEC §1 version considerations: cniVersion 1.0.0, cniVersions [1.0.0, 1.1.0], all of
    // them in what VERSION reports.
    let out = run(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#);
    let supported = stdout_json(&out)["supportedVersions"].clone();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/10-netstack.conflist");
    let text = std::fs::read_to_string(&path).expect("reading manifests/10-netstack.conflist");
    let shipped: Value = serde_json::from_str(&text).expect("the shipped conflist is JSON");
    assert_eq!(shipped["cniVersion"], json!("1.0.0"));
    assert_eq!(shipped["cniVersions"], json!(["1.0.0", "1.1.0"]));
    let supported = supported.as_array().expect("supportedVersions is a list");
    for v in ["1.0.0", "1.1.0"] {
        assert!(supported.contains(&json!(v)), "{v} not in {supported:?}");
    }
}

#[test]
fn without_cni_command_it_says_what_it_is() {
    // Run by hand (no CNI_COMMAND): a line on stderr naming the plugin and its CNI versions,
    // nothing on stdout, exit 0, without waiting on stdin.
    let out = run(&[], b"");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("CNI netstack plugin "), "{stderr}");
    assert!(
        stderr.contains("CNI protocol versions supported: 0.4.0, 1.0.0, 1.1.0"),
        "{stderr}"
    );
}
