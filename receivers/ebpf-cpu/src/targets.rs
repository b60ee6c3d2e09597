//! Targeting: only the processes a target matches are sampled. The BPF
//! program looks each sample's process up in its `targets` map and leaves
//! the others at that (one lookup, counted); user space keeps the map
//! current: every process matched at start, each exec judged as it is
//! reported (its name and executable change), while BPF adds the processes
//! a target forks and removes the ones that exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agent_core::FieldError;
use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use regex::Regex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// One target: a process matches when it matches every field given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    /// Its process id.
    pub pid: Option<u32>,
    /// A regular expression its name (`/proc/PID/comm`, at most 15
    /// bytes) matches somewhere (anchor it with `^…$` for the whole name).
    pub comm: Option<String>,
    /// A regular expression the path of its executable matches.
    pub exe: Option<String>,
    /// The start of its cgroup path, as `/proc/PID/cgroup` shows it
    /// (`/system.slice/nginx.service`, `/kubepods.slice/…`).
    pub cgroup_prefix: Option<String>,
    /// A container id (or the start of one, at least 12 hex digits) its
    /// cgroup path holds, as Docker, containerd, CRI-O and Podman name
    /// their cgroups.
    pub container_id: Option<String>,
}

impl Target {
    /// Problems with target `index`, keys under `targets::index`.
    pub fn validate(&self, index: usize) -> Vec<FieldError> {
        let key = |field: &str| format!("targets::{index}::{field}");
        let mut errors = Vec::new();
        if *self == Target::default() {
            errors.push(FieldError::new(
                &format!("targets::{index}"),
                "names no pid, comm, exe, cgroup_prefix or container_id (it would match every process)",
            ));
        }
        for (field, pattern) in [("comm", &self.comm), ("exe", &self.exe)] {
            if let Some(Err(e)) = pattern.as_deref().map(Regex::new) {
                errors.push(FieldError::new(&key(field), format!("{e}")));
            }
        }
        if let Some(prefix) = &self.cgroup_prefix {
            if !prefix.starts_with('/') {
                errors.push(FieldError::new(
                    &key("cgroup_prefix"),
                    format!("{prefix:?} does not start with / (cgroup paths do)"),
                ));
            }
        }
        if let Some(id) = &self.container_id {
            if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(FieldError::new(
                    &key("container_id"),
                    format!("{id:?} is not at least 12 hex digits"),
                ));
            }
        }
        errors
    }
}

/// A target ready to match.
struct Rule {
    pid: Option<u32>,
    comm: Option<Regex>,
    exe: Option<Regex>,
    cgroup_prefix: Option<String>,
    container_id: Option<String>,
}

/// What the rules are checked against, read from /proc once each.
struct Facts {
    dir: PathBuf,
    pid: u32,
    comm: Option<Option<String>>,
    exe: Option<Option<String>>,
    cgroups: Option<Vec<String>>,
}

impl Facts {
    fn comm(&mut self) -> Option<&str> {
        let dir = &self.dir;
        self.comm
            .get_or_insert_with(|| {
                std::fs::read_to_string(dir.join("comm"))
                    .ok()
                    .map(|c| c.trim_end_matches('\n').to_owned())
            })
            .as_deref()
    }

    fn exe(&mut self) -> Option<&str> {
        let dir = &self.dir;
        self.exe
            .get_or_insert_with(|| {
                std::fs::read_link(dir.join("exe"))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .as_deref()
    }

    /// The cgroup path of each hierarchy (one line on cgroup v2).
    fn cgroups(&mut self) -> &[String] {
        let dir = &self.dir;
        self.cgroups.get_or_insert_with(|| {
            std::fs::read_to_string(dir.join("cgroup"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| Some(l.splitn(3, ':').nth(2)?.to_owned()))
                .collect()
        })
    }
}

impl Rule {
    fn matches(&self, facts: &mut Facts) -> bool {
        if self.pid.is_some_and(|p| p != facts.pid) {
            return false;
        }
        if let Some(re) = &self.comm {
            if !facts.comm().is_some_and(|c| re.is_match(c)) {
                return false;
            }
        }
        if let Some(re) = &self.exe {
            if !facts.exe().is_some_and(|e| re.is_match(e)) {
                return false;
            }
        }
        if let Some(prefix) = &self.cgroup_prefix {
            if !facts
                .cgroups()
                .iter()
                .any(|c| c.starts_with(prefix.as_str()))
            {
                return false;
            }
        }
        if let Some(id) = &self.container_id {
            if !facts.cgroups().iter().any(|c| c.contains(id.as_str())) {
                return false;
            }
        }
        true
    }
}

/// The configured targets, matched against processes under a /proc.
pub struct Targets {
    rules: Vec<Rule>,
    proc_root: PathBuf,
}

impl Targets {
    /// The matcher of `targets` (validated), reading processes under `proc_root`.
    pub fn new(targets: &[Target], proc_root: &Path) -> Result<Self, regex::Error> {
        let regex = |p: &Option<String>| p.as_deref().map(Regex::new).transpose();
        let rules = targets
            .iter()
            .map(|t| {
                Ok(Rule {
                    pid: t.pid,
                    comm: regex(&t.comm)?,
                    exe: regex(&t.exe)?,
                    cgroup_prefix: t.cgroup_prefix.clone(),
                    container_id: t.container_id.as_deref().map(str::to_ascii_lowercase),
                })
            })
            .collect::<Result<_, regex::Error>>()?;
        Ok(Self {
            rules,
            proc_root: proc_root.to_owned(),
        })
    }

    /// Whether any target matches process `pid` (false once it is gone).
    pub fn matches(&self, pid: u32) -> bool {
        let mut facts = Facts {
            dir: self.proc_root.join(pid.to_string()),
            pid,
            comm: None,
            exe: None,
            cgroups: None,
        };
        self.rules.iter().any(|r| r.matches(&mut facts))
    }

    /// The processes `pid` forked that run its executable still (forked,
    /// not exec'd since).
    fn forks_of(&self, pid: u32) -> Vec<u32> {
        let dir = self.proc_root.join(pid.to_string());
        let Ok(exe) = std::fs::read_link(dir.join("exe")) else {
            return Vec::new();
        };
        let Ok(tasks) = std::fs::read_dir(dir.join("task")) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .filter(|child| {
                std::fs::read_link(self.proc_root.join(child.to_string()).join("exe"))
                    .is_ok_and(|e| e == exe)
            })
            .collect()
    }

    /// Every process under the /proc.
    fn pids(&self) -> Vec<u32> {
        std::fs::read_dir(&self.proc_root)
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How deep forks of forks are followed when a target is found.
const MAX_FORK_DEPTH: usize = 4;

/// Most decisions remembered; past it they are forgotten (the BPF map
/// stays right: only the skipping of untargeted processes' reads is lost).
const MAX_DECISIONS: usize = 1 << 17;

/// Keeps the BPF `targets` map current, and tells the event handler which
/// processes are worth reading.
pub struct TargetFilter {
    targets: Targets,
    map: BpfHashMap<MapData, u32, u8>,
    /// What each process was judged at start or at its last exec.
    decided: HashMap<u32, bool>,
    /// A full map was reported.
    full_logged: bool,
}

impl TargetFilter {
    /// Judges every running process and fills `map` with the matches.
    pub fn new(targets: Targets, map: BpfHashMap<MapData, u32, u8>) -> Self {
        let mut filter = Self {
            targets,
            map,
            decided: HashMap::new(),
            full_logged: false,
        };
        // Only matches are remembered: an unmatched process can only
        // become a target by an exec, which is judged then.
        let pids = filter.targets.pids();
        for &pid in &pids {
            if filter.decided.get(&pid) != Some(&true) && filter.targets.matches(pid) {
                filter.judge(pid);
            }
        }
        let matched = filter.decided.len();
        info!(
            matched,
            processes = pids.len(),
            "targeting: only matching processes are sampled"
        );
        filter
    }

    /// Judges `pid` as it is now and writes the verdict to the map. A
    /// target's forks made before it was in the map (BPF adds only those
    /// made after) are added with it.
    fn judge(&mut self, pid: u32) -> bool {
        let targeted = self.targets.matches(pid);
        self.write(pid, targeted);
        if targeted {
            let mut parents = vec![pid];
            for _ in 0..MAX_FORK_DEPTH {
                let forks: Vec<u32> = parents
                    .iter()
                    .flat_map(|&p| self.targets.forks_of(p))
                    .filter(|child| self.decided.get(child) != Some(&true))
                    .collect();
                for &child in &forks {
                    self.write(child, true);
                }
                parents = forks;
            }
        }
        targeted
    }

    /// Writes a verdict to the map and remembers it.
    fn write(&mut self, pid: u32, targeted: bool) {
        let written = if targeted {
            self.map.insert(pid, 1, 0)
        } else {
            match self.map.remove(&pid) {
                Err(MapError::KeyNotFound) => Ok(()),
                other => other,
            }
        };
        if let Err(error) = written {
            if !self.full_logged {
                warn!(pid, %error, "targeting: cannot update the targets map (full?); this process's sampling may be wrong");
                self.full_logged = true;
            }
        }
        if self.decided.len() >= MAX_DECISIONS {
            self.decided.clear();
        }
        self.decided.insert(pid, targeted);
    }

    /// Whether a reported process is worth reading: an exec is judged
    /// anew; a new executable mapping follows the exec's verdict (BPF
    /// reports those of every exec'd process); the other events come only
    /// from processes BPF sampled, hence targets.
    pub fn admits(&mut self, pid: u32, kind: u32) -> bool {
        match kind {
            crate::bpf::PROCESS_EXEC => self.judge(pid),
            crate::bpf::PROCESS_MMAP_EXEC => self.decided.get(&pid).copied().unwrap_or(true),
            _ => true,
        }
    }

    /// Forgets an exited process. BPF removed it from the map at its exit;
    /// it is removed again in case a verdict was written after that.
    pub fn exited(&mut self, pid: u32) {
        if self.decided.remove(&pid) == Some(true) {
            let _ = self.map.remove(&pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(dir: &Path, pid: u32, comm: &str, exe: &str, cgroup: &str) {
        let p = dir.join(pid.to_string());
        std::fs::create_dir_all(p.join("task").join(pid.to_string())).unwrap();
        std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        std::os::unix::fs::symlink(exe, p.join("exe")).unwrap();
        std::fs::write(p.join("cgroup"), cgroup).unwrap();
    }

    #[test]
    fn a_process_matches_a_target_when_it_matches_every_field_given() {
        let root = tempfile::tempdir().unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        fake_proc(
            root.path(),
            10,
            "nginx",
            "/usr/sbin/nginx",
            "0::/system.slice/nginx.service\n",
        );
        fake_proc(
            root.path(),
            11,
            "python3",
            "/usr/bin/python3.11",
            &format!("0::/system.slice/docker-{id}.scope\n"),
        );
        fake_proc(
            root.path(),
            12,
            "bash",
            "/usr/bin/bash",
            "12:cpu:/user.slice\n0::/user.slice\n",
        );
        let targets = |t: Vec<Target>| Targets::new(&t, root.path()).unwrap();
        let which = |t: &Targets| -> Vec<u32> {
            let mut v: Vec<u32> = t.pids().into_iter().filter(|&p| t.matches(p)).collect();
            v.sort();
            v
        };
        let comm = |c: &str| Target {
            comm: Some(c.into()),
            ..Default::default()
        };
        assert_eq!(which(&targets(vec![comm("^nginx$")])), [10]);
        assert_eq!(which(&targets(vec![comm("^py"), comm("sh$")])), [11, 12]);
        assert_eq!(
            which(&targets(vec![Target {
                exe: Some("^/usr/bin/".into()),
                cgroup_prefix: Some("/user.slice".into()),
                ..Default::default()
            }])),
            [12],
            "every field must match"
        );
        assert_eq!(
            which(&targets(vec![Target {
                container_id: Some(id[..12].to_ascii_uppercase()),
                ..Default::default()
            }])),
            [11]
        );
        assert_eq!(
            which(&targets(vec![Target {
                pid: Some(12),
                ..Default::default()
            }])),
            [12]
        );
        assert!(
            !targets(vec![comm(".")]).matches(99),
            "a process gone matches nothing"
        );
    }

    #[test]
    fn forks_are_the_children_still_running_the_parents_executable() {
        let root = tempfile::tempdir().unwrap();
        fake_proc(root.path(), 20, "server", "/usr/bin/server", "0::/\n");
        fake_proc(root.path(), 21, "server", "/usr/bin/server", "0::/\n");
        fake_proc(root.path(), 22, "sh", "/usr/bin/dash", "0::/\n");
        std::fs::write(root.path().join("20/task/20/children"), "21 22 ").unwrap();
        let targets = Targets::new(&[], root.path()).unwrap();
        assert_eq!(targets.forks_of(20), [21], "22 exec'd another program");
        assert!(targets.forks_of(21).is_empty());
    }

    #[test]
    fn a_bad_target_names_its_key() {
        let fields =
            |t: Target| -> Vec<String> { t.validate(2).into_iter().map(|e| e.field).collect() };
        assert_eq!(fields(Target::default()), ["targets::2"]);
        let bad = fields(Target {
            comm: Some("(".into()),
            cgroup_prefix: Some("kubepods".into()),
            container_id: Some("abc".into()),
            ..Default::default()
        });
        assert_eq!(
            bad,
            [
                "targets::2::comm",
                "targets::2::cgroup_prefix",
                "targets::2::container_id"
            ]
        );
    }
}
