//! `__meta_process_*` labels of one process, read from /proc and its executable.

use std::fs::File;
use std::path::Path;

use agent_object_files::file_id::{gnu_build_id, head_tail_length_hash};
use object::read::ReadCache;
use object::{Object, ObjectSection};

/// Labels of a process, and the executable they were read for.
#[derive(Clone, Debug)]
pub struct ProcessLabels {
    /// Target of /proc/PID/exe when read: a change means the process exec'd.
    pub exe: String,
    /// `/proc/PID/comm`, to check that a series is about this process.
    pub comm: String,
    /// `(name, value)` pairs.
    pub labels: Vec<(String, String)>,
}

/// The executable's target path, the cache key for a process's labels.
pub fn exe_link(proc_root: &Path, pid: u32) -> Option<String> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The main cgroup: the cgroup v2 path if there is one, else the first v1 path.
pub fn main_cgroup(cgroup_file: &str) -> Option<String> {
    let mut first = None;
    for line in cgroup_file.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if id == "0" && controllers.is_empty() {
            return Some(path.to_owned());
        }
        first.get_or_insert_with(|| path.to_owned());
    }
    first
}

/// The parent pid: field 4 of /proc/PID/stat, after the parenthesized comm.
fn ppid(stat: &str) -> Option<String> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1).map(str::to_owned)
}

/// What the executable says about itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecutableFacts {
    /// GNU build id.
    pub build_id: Option<String>,
    /// The compiler: `.comment`'s first entry, or the Go version.
    pub compiler: Option<String>,
    /// No dynamic loader (`.interp`).
    pub static_linked: bool,
    /// Neither `.symtab` nor `.debug_info`.
    pub stripped: bool,
}

/// The Go version from `.go.buildinfo` (Go 1.18+ inline format).
fn go_version(data: &[u8]) -> Option<String> {
    // 14-byte magic, pointer size, flags; inline strings follow the 32-byte header.
    if data.len() < 33 || !data.starts_with(b"\xff Go buildinf:") || data[15] & 2 == 0 {
        return None;
    }
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 32;
    loop {
        let b = *data.get(i)?;
        len |= ((b & 0x7f) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    let version = data.get(i..i + len)?;
    Some(String::from_utf8_lossy(version).into_owned())
}

/// Reads facts from an ELF file lazily (headers and a few small sections).
pub fn executable_facts(file: &File) -> Option<ExecutableFacts> {
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let section = |name: &str| elf.section_by_name(name);
    let compiler = section(".go.buildinfo")
        .and_then(|s| s.data().ok().and_then(go_version))
        .or_else(|| {
            let comment = section(".comment")?.data().ok()?;
            let first = comment.split(|&b| b == 0).find(|s| !s.is_empty())?;
            Some(String::from_utf8_lossy(first).trim().to_owned())
        });
    Some(ExecutableFacts {
        build_id: gnu_build_id(file),
        compiler,
        static_linked: section(".interp").is_none(),
        stripped: section(".symtab").is_none() && section(".debug_info").is_none(),
    })
}

/// The label holding a process's command line.
pub const CMDLINE_LABEL: &str = "__meta_process_cmdline";

/// The prefix of a label holding an environment variable.
pub const ENV_VAR_PREFIX: &str = "__meta_env_var_";

/// What is read only when asked: it may hold secrets.
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    /// The command line ([`CMDLINE_LABEL`]).
    pub cmdline: bool,
    /// These environment variables (`__meta_env_var_NAME`).
    pub env_vars: Vec<String>,
}

/// `__meta_env_var_NAME` for each of `names` set in `environ` (NUL-separated
/// `NAME=value`; the first of a repeated name wins, as for `getenv`).
fn env_labels(environ: &[u8], names: &[String]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = Vec::new();
    for entry in environ.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let Some(name) = names.iter().find(|n| n.as_bytes() == &entry[..eq]) else {
            continue;
        };
        let label = format!("{ENV_VAR_PREFIX}{name}");
        if labels.iter().all(|(l, _)| *l != label) {
            let value = String::from_utf8_lossy(&entry[eq + 1..]).into_owned();
            labels.push((label, value));
        }
    }
    labels
}

/// Every `__meta_process_*` label of `pid`, given its [`exe_link`], and
/// what is [`Wanted`]; `None` if the process is gone.
pub fn read(
    proc_root: &Path,
    pid: u32,
    exe: Option<String>,
    wanted: &Wanted,
) -> Option<ProcessLabels> {
    let dir = proc_root.join(pid.to_string());
    let exe = exe.unwrap_or_default();
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let comm = std::fs::read_to_string(dir.join("comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned();
    let mut labels = vec![(
        agent_core::labels::META_PROCESS_PID.to_owned(),
        pid.to_string(),
    )];
    if !wanted.env_vars.is_empty() {
        // The environment as the process started; what is not named is
        // dropped at once.
        if let Ok(environ) = std::fs::read(dir.join("environ")) {
            labels.extend(env_labels(&environ, &wanted.env_vars));
        }
    }
    if wanted.cmdline {
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let cmdline = cmdline
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        labels.push((CMDLINE_LABEL.to_owned(), cmdline));
    }
    if let Some(ppid) = ppid(&stat) {
        labels.push(("__meta_process_ppid".into(), ppid));
    }
    if let Ok(cgroups) = std::fs::read_to_string(dir.join("cgroup")) {
        if let Some(cgroup) = main_cgroup(&cgroups) {
            labels.push(("__meta_process_cgroup".into(), cgroup));
        }
        if let Some((label, id)) = crate::container::container_id(&cgroups) {
            labels.push((label.into(), id));
        }
    }
    if !exe.is_empty() {
        let name = exe.trim_end_matches(" (deleted)");
        let name = name.rsplit('/').next().unwrap_or(name);
        labels.push(("__meta_process_executable_name".into(), name.to_owned()));
    }
    // /proc/PID/exe opens the very file the process runs, even in a container.
    if let Ok(mut file) = File::open(dir.join("exe")) {
        if let Ok(id) = head_tail_length_hash(&mut file) {
            labels.push(("__meta_process_executable_file_id".into(), id));
        }
        if let Some(facts) = executable_facts(&file) {
            if let Some(id) = facts.build_id {
                labels.push(("__meta_process_executable_build_id".into(), id));
            }
            if let Some(c) = facts.compiler {
                labels.push(("__meta_process_executable_compiler".into(), c));
            }
            labels.push((
                "__meta_process_executable_static".into(),
                facts.static_linked.to_string(),
            ));
            labels.push((
                "__meta_process_executable_stripped".into(),
                facts.stripped.to_string(),
            ));
        }
    }
    Some(ProcessLabels { exe, comm, labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_wins_and_v1_falls_back() {
        let v2 = "0::/system.slice/docker-0123abcd.scope\n";
        assert_eq!(
            main_cgroup(v2).as_deref(),
            Some("/system.slice/docker-0123abcd.scope")
        );
        let v1 = "12:cpu,cpuacct:/docker/0123abcd\n1:name=systemd:/docker/0123abcd\n";
        assert_eq!(main_cgroup(v1).as_deref(), Some("/docker/0123abcd"));
        let hybrid = "1:name=systemd:/user.slice\n0::/user.slice/session-1.scope\n";
        assert_eq!(
            main_cgroup(hybrid).as_deref(),
            Some("/user.slice/session-1.scope")
        );
    }

    #[test]
    fn ppid_survives_odd_command_names() {
        assert_eq!(ppid("42 (a) b) c) S 7 42 42 0").as_deref(), Some("7"));
    }

    #[test]
    fn go_versions_from_build_info() {
        let mut data = b"\xff Go buildinf:".to_vec();
        data.push(8); // pointer size
        data.push(2); // flags: inline strings
        data.resize(32, 0);
        data.push(8);
        data.extend_from_slice(b"go1.22.3");
        assert_eq!(go_version(&data).as_deref(), Some("go1.22.3"));
        assert_eq!(go_version(b"\xff Go buildinf:"), None);
    }

    #[test]
    fn this_process_has_its_labels() {
        let me = std::process::id();
        let wanted = Wanted {
            cmdline: true,
            env_vars: vec!["PATH".to_owned(), "AGENT_TEST_UNSET_VARIABLE".to_owned()],
        };
        let labels = read(
            Path::new("/proc"),
            me,
            exe_link(Path::new("/proc"), me),
            &wanted,
        )
        .unwrap();
        let get = |k: &str| {
            labels
                .labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("__meta_process_pid"), Some(me.to_string()));
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            get("__meta_process_executable_name").as_deref(),
            exe.file_name().and_then(|n| n.to_str())
        );
        assert!(get("__meta_process_cmdline")
            .unwrap()
            .contains(exe.file_name().unwrap().to_str().unwrap()));
        assert!(get("__meta_process_ppid").is_some());
        assert_eq!(get("__meta_process_executable_file_id").unwrap().len(), 32);
        // rustc writes a .comment, and test binaries keep their symbols.
        assert!(
            get("__meta_process_executable_compiler")
                .unwrap()
                .contains("rustc"),
            "{labels:?}"
        );
        assert_eq!(
            get("__meta_process_executable_stripped").as_deref(),
            Some("false")
        );
        assert_eq!(
            get("__meta_process_executable_static").as_deref(),
            Some("false")
        );
        // PATH as this process started (a test may have changed its own).
        assert!(get("__meta_env_var_PATH").is_some_and(|p| p.contains('/')));
        let env_labels = labels
            .labels
            .iter()
            .filter(|(n, _)| n.starts_with(ENV_VAR_PREFIX));
        assert_eq!(env_labels.count(), 1, "only the named, set variables");
        assert!(read(Path::new("/proc"), u32::MAX - 1, None, &wanted).is_none());
        let without = read(Path::new("/proc"), me, None, &Wanted::default()).unwrap();
        assert!(without
            .labels
            .iter()
            .all(|(n, _)| n != CMDLINE_LABEL && !n.starts_with(ENV_VAR_PREFIX)));
    }

    #[test]
    fn only_named_variables_become_labels() {
        let environ = b"HOME=/root\0SECRET=x\0APP_ENV=prod\0APP_ENV=later\0BROKEN\0REGION=eu=1\0";
        let names = [
            "APP_ENV".to_owned(),
            "REGION".to_owned(),
            "HOME_".to_owned(),
        ];
        assert_eq!(
            env_labels(environ, &names),
            [
                ("__meta_env_var_APP_ENV".to_owned(), "prod".to_owned()),
                ("__meta_env_var_REGION".to_owned(), "eu=1".to_owned()),
            ]
        );
    }
}
