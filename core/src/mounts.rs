//! The mount table as it concerns named network namespaces: reading `/proc/self/mountinfo`,
//! deciding whether a directory may be made a mount point without covering anything, and
//! releasing the namespaces an older netstack hid under such a cover.
//!
//! Background. `ip netns add` makes its directory a shared mount point by bind-mounting it onto
//! itself, recursively, when it is not one yet. Done in a directory where a runtime has already
//! bind-mounted pod namespaces as files (CRI-O's pinns in `/run/netns`), that copies each of
//! those mounts onto the new mount and leaves the originals underneath, out of reach. When the
//! runtime later unmounts the visible copy, the original keeps the namespace alive for ever
//! (on a node whose `/run` is not a shared mount, where unmounts do not propagate to it).
//! netstack did the same for its veth namespace until 0.1: it now keeps that namespace in its
//! own directory and never self-binds a directory that has anything in it; [`release_hidden`]
//! undoes what the old code left behind.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's id.
    pub id: u32,
    /// The id of the mount it sits on.
    pub parent: u32,
    /// The filesystem's device, `major:minor`.
    pub dev: String,
    /// The directory of its filesystem that is mounted (`/` for a whole filesystem; for an
    /// nsfs mount, `net:[inode]`).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Whether it belongs to a shared peer group (`shared:N` among the optional fields).
    pub shared: bool,
    /// The filesystem type (`nsfs` for a namespace file).
    pub fstype: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line; `None` for a line that does not have its shape.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let parent = fields.next()?.parse().ok()?;
    let dev = fields.next()?.to_owned();
    let root = unescape(fields.next()?);
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let _options = fields.next()?;
    let mut shared = false;
    loop {
        let f = fields.next()?;
        if f == "-" {
            break;
        }
        shared |= f.starts_with("shared:");
    }
    let fstype = fields.next()?.to_owned();
    Some(MountEntry {
        id,
        parent,
        dev,
        root,
        mount_point,
        shared,
        fstype,
    })
}

/// Parses a whole mountinfo text, skipping lines it cannot read.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The calling process's mount table.
pub fn read() -> io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Whether `path` is strictly below `dir`.
fn is_below(path: &Path, dir: &Path) -> bool {
    path != dir && path.starts_with(dir)
}

/// Whether `dir` may be bind-mounted onto itself without hiding anything: nothing is mounted
/// below it and it is empty (a file in it could become a mount point while we look).
pub fn safe_to_self_bind(dir: &Path, table: &[MountEntry]) -> io::Result<bool> {
    if table.iter().any(|m| is_below(&m.mount_point, dir)) {
        return Ok(false);
    }
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

/// What [`hidden_under_self_bind`] found: the bind of a directory onto itself and the
/// namespace mounts it covers.
#[derive(Debug, PartialEq, Eq)]
pub struct Cover {
    /// The self-bind.
    pub top: MountEntry,
    /// The mount the directory belongs to, below the self-bind.
    pub below: MountEntry,
    /// Namespace mounts in the directory that sit on `below`, under `top`: unreachable.
    pub hidden: Vec<MountEntry>,
}

/// Finds a bind of `dir` onto itself (a mount at `dir` whose parent is the mount `dir` lives
/// on, of the same filesystem) and the nsfs mounts it hides.
pub fn hidden_under_self_bind(dir: &Path, table: &[MountEntry]) -> Option<Cover> {
    // The topmost mount at `dir`: no other mount at `dir` sits on it.
    let at_dir: Vec<&MountEntry> = table.iter().filter(|m| m.mount_point == dir).collect();
    let top = at_dir
        .iter()
        .find(|m| !at_dir.iter().any(|o| o.parent == m.id))?;
    let below = table.iter().find(|m| m.id == top.parent)?;
    // A self-bind shows the very directory it covers: the same filesystem (device), and as
    // its root that directory's path in the filesystem; a filesystem mounted on `dir` (tmpfs,
    // say) shows its own root and hides nothing of netstack's making.
    let relative = dir.strip_prefix(&below.mount_point).ok()?;
    let expected_root = Path::new(&below.root).join(relative);
    if top.dev != below.dev || below.fstype == "nsfs" || Path::new(&top.root) != expected_root {
        return None;
    }
    let hidden: Vec<MountEntry> = table
        .iter()
        .filter(|m| m.parent == below.id && m.fstype == "nsfs" && is_below(&m.mount_point, dir))
        .cloned()
        .collect();
    Some(Cover {
        top: (*top).clone(),
        below: below.clone(),
        hidden,
    })
}

/// Takes an exclusive `flock` on `.NAME.lock` beside `path` (in its directory), held until the
/// returned guard is dropped: serialises the processes (plugins run in parallel) that make a
/// named namespace or its directory.
pub fn lock_beside(path: &Path) -> io::Result<nix::fcntl::Flock<std::fs::File>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock = path.with_file_name(format!(".{name}.lock"));
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::other(format!("locking {}: {e}", lock.display())))
}

/// What [`release_hidden`] did.
#[derive(Debug, Default)]
pub struct Released {
    /// Hidden namespace mounts unmounted (each a namespace nobody could reach any more, unless
    /// a visible copy of the same mount still holds it).
    pub unmounted: Vec<PathBuf>,
    /// Of those, the files removed because nothing visible was mounted on them.
    pub removed: Vec<PathBuf>,
}

/// Releases the network namespaces hidden under a bind of `dir` onto itself.
///
/// The self-bind is moved aside (to a sibling directory on the same mount), which uncovers the
/// originals; each is unmounted, and its file removed when the self-bind shows nothing mounted
/// there (the runtime had already unmounted its copy and failed to remove the file); then the
/// self-bind is moved back. Namespaces mounted only on the self-bind (after it was made) stay
/// as they are. While the self-bind is aside, which lasts a few system calls, those are not
/// visible under `dir`. Nothing is done when the mount below is shared: its unmounts
/// propagate, so nothing is hidden for good there, and a shared mount cannot be moved.
pub fn release_hidden(dir: &Path) -> io::Result<Released> {
    let mut done = Released::default();
    let table = read()?;
    let Some(cover) = hidden_under_self_bind(dir, &table) else {
        return Ok(done);
    };
    if cover.hidden.is_empty() {
        return Ok(done);
    }
    if cover.below.shared {
        // Unmounts propagate between the two: the runtime's unmount of its visible copy takes
        // the one below too (both exist for every namespace mounted there), so nothing stays
        // hidden for good; and a mount on a shared one cannot be moved.
        return Ok(done);
    }
    let visible: Vec<PathBuf> = table
        .iter()
        .filter(|m| m.parent == cover.top.id && m.fstype == "nsfs")
        .map(|m| m.mount_point.clone())
        .collect();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = dir.with_file_name(format!(".{name}.netstack-release-{}", std::process::id()));
    std::fs::create_dir(&aside)?;
    let moved = mount(
        Some(dir),
        &aside,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    );
    if let Err(e) = moved {
        let _ = std::fs::remove_dir(&aside);
        return Err(io::Error::other(format!(
            "moving the self-bind of {} aside: {e}",
            dir.display()
        )));
    }
    let mut first_error = None;
    for m in cover.hidden.iter().rev() {
        match umount2(&m.mount_point, MntFlags::MNT_DETACH) {
            Ok(()) => {
                done.unmounted.push(m.mount_point.clone());
                if !visible.contains(&m.mount_point) && std::fs::remove_file(&m.mount_point).is_ok()
                {
                    done.removed.push(m.mount_point.clone());
                }
            }
            Err(e) => {
                first_error.get_or_insert(io::Error::other(format!(
                    "unmounting hidden {}: {e}",
                    m.mount_point.display()
                )));
            }
        }
    }
    mount(
        Some(&aside),
        dir,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|e| {
        io::Error::other(format!(
            "moving the self-bind of {} back from {}: {e}",
            dir.display(),
            aside.display()
        ))
    })?;
    let _ = std::fs::remove_dir(&aside);
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Bind-mounts `dir` onto itself (not recursively) and makes it a shared mount, as `ip netns
/// add` does, but only where that hides nothing ([`safe_to_self_bind`]); otherwise the
/// directory is left as it is (namespace mounts made in it then propagate as its parent mount
/// does). A directory that is already a mount point is made shared. Returns whether `dir` is
/// now a shared mount point of its own.
pub fn share_dir(dir: &Path) -> io::Result<bool> {
    let shared = MsFlags::MS_SHARED;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => return Ok(true),
        Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(e.into()),
    }
    if !safe_to_self_bind(dir, &read()?)? {
        return Ok(false);
    }
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
27 22 0:25 / /run rw,nosuid master:5 - tmpfs tmpfs rw
45 27 0:4 net:[4026532174] /run/netns/pod1 rw - nsfs nsfs rw
47 27 0:4 net:[4026532175] /run/netns/pod2 rw - nsfs nsfs rw
46 27 0:25 /netns /run/netns rw,relatime shared:1 - tmpfs tmpfs rw
49 46 0:4 net:[4026532175] /run/netns/pod2 rw shared:3 - nsfs nsfs rw
48 46 0:4 net:[4026532239] /run/netns/pod3 rw shared:4 - nsfs nsfs rw
50 22 0:4 net:[4026532300] /var/run/my\\040ns rw - nsfs nsfs rw
";

    #[test]
    fn lines_parse_with_their_optional_fields_and_escapes() {
        let t = parse(TABLE);
        assert_eq!(t.len(), 8);
        assert_eq!(t[1].mount_point, Path::new("/run"));
        assert!(!t[1].shared, "master:5 is not shared");
        assert!(t[4].shared);
        assert_eq!(t[4].root, "/netns");
        assert_eq!(t[2].fstype, "nsfs");
        assert_eq!(t[7].mount_point, Path::new("/var/run/my ns"));
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line("1 2 3 4 5 6 no-dash-here"), None);
    }

    #[test]
    fn a_self_bind_and_the_namespaces_it_hides_are_found() {
        let t = parse(TABLE);
        let cover = hidden_under_self_bind(Path::new("/run/netns"), &t).unwrap();
        assert_eq!(cover.top.id, 46);
        assert_eq!(cover.below.id, 27);
        let hidden: Vec<u32> = cover.hidden.iter().map(|m| m.id).collect();
        assert_eq!(
            hidden,
            [45, 47],
            "pod3 was mounted on the self-bind: not hidden"
        );
    }

    #[test]
    fn a_filesystem_mounted_on_the_directory_is_not_a_self_bind() {
        let t = parse(
            "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
             30 22 0:50 / /run/netns rw - tmpfs tmpfs rw\n",
        );
        assert_eq!(hidden_under_self_bind(Path::new("/run/netns"), &t), None);
        assert_eq!(hidden_under_self_bind(Path::new("/nowhere"), &t), None);
        // A subdirectory of another tmpfs bound there is not a self-bind either.
        let t = parse(
            "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
             27 22 0:25 / /run rw - tmpfs tmpfs rw\n\
             31 27 0:33 /netns /run/netns rw - tmpfs tmpfs rw\n",
        );
        assert_eq!(hidden_under_self_bind(Path::new("/run/netns"), &t), None);
    }

    #[test]
    fn a_directory_with_mounts_below_is_never_self_bound() {
        let t = parse(TABLE);
        let dir = std::env::temp_dir().join(format!("nst-mounts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            safe_to_self_bind(&dir, &t).unwrap(),
            "empty, nothing mounted"
        );
        std::fs::write(dir.join("pod"), b"").unwrap();
        assert!(
            !safe_to_self_bind(&dir, &t).unwrap(),
            "a file could be a mount point"
        );
        std::fs::remove_file(dir.join("pod")).unwrap();
        assert!(!safe_to_self_bind(Path::new("/run/netns"), &t).unwrap());
        std::fs::remove_dir(&dir).unwrap();
    }
}
