//! Opening a process's files the way the process sees them, without
//! escaping its root.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Opens `path` (absolute or relative) read-only, resolved inside `root`:
/// `..` and symbolic links (absolute ones too) cannot leave `root`, the way
/// the process whose root it is would see them (openat2 `RESOLVE_IN_ROOT`).
pub fn open_in_root(root: &Path, path: &Path) -> io::Result<File> {
    let root_dir = File::open(root)?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    let c_path = CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, NUL-terminated path, `how` sized as passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_dir.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that we now own.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// A path that opens the very file `file` is open on, for libraries that take
/// paths; valid while `file` is open.
pub fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/secret"), "inside").unwrap();
        // An absolute link to the outside file resolves to the inside one.
        let target = outside.path().join("secret");
        std::os::unix::fs::symlink(&target, root.path().join("link")).unwrap();
        std::fs::create_dir_all(
            root.path()
                .join(target.parent().unwrap().strip_prefix("/").unwrap()),
        )
        .unwrap();
        std::fs::write(
            root.path().join(target.strip_prefix("/").unwrap()),
            "inside too",
        )
        .unwrap();
        let read =
            |p: &str| io::read_to_string(open_in_root(root.path(), Path::new(p)).unwrap()).unwrap();
        assert_eq!(read("/link"), "inside too");
        assert_eq!(read("/etc/secret"), "inside");
        assert_eq!(read("/../../../../etc/secret"), "inside");
        assert!(open_in_root(root.path(), Path::new("/missing")).is_err());
    }
}
