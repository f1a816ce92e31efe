//! The static node source (`--nodes-file`): the file is re-read every poll interval and its
//! list sent to the reconciler when its content changed. An unreadable or invalid file is
//! reported and changes nothing (the last good list stays in force); an empty list removes
//! every route.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::list::parse_node_list;
use super::sync::Msg;

/// Starts the polling thread.
pub fn spawn(path: PathBuf, poll: Duration, tx: Sender<Msg>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("nodes-file".into())
        .spawn(move || watch(&path, poll, &tx))
        .map(drop)
}

fn watch(path: &Path, poll: Duration, tx: &Sender<Msg>) {
    let mut last: Option<Vec<u8>> = None;
    let mut last_error = String::new();
    loop {
        let result =
            std::fs::read(path).map_err(|e| format!("reading nodes file {}: {e}", path.display()));
        match result {
            Ok(bytes) if last.as_ref() == Some(&bytes) => {}
            Ok(bytes) => match parse_node_list(&bytes) {
                Ok(nodes) => {
                    tracing::info!(
                        file = %path.display(),
                        nodes = nodes.len(),
                        "node list read"
                    );
                    if tx.send(Msg::Nodes(nodes)).is_err() {
                        return;
                    }
                    last = Some(bytes);
                    last_error.clear();
                }
                Err(e) => {
                    let msg = format!("nodes file {}: {e}; keeping the last list", path.display());
                    if msg != last_error {
                        tracing::warn!("{msg}");
                        last_error = msg;
                    }
                }
            },
            Err(msg) => {
                if msg != last_error {
                    tracing::warn!("{msg}; keeping the last list");
                    last_error = msg;
                }
            }
        }
        std::thread::sleep(poll);
    }
}
