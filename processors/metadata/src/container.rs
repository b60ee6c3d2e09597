//! Container ids from cgroup paths, for docker, podman, containerd (CRI),
//! CRI-O, BuildKit and LXC, under cgroup v1 and v2.

use std::sync::OnceLock;

use agent_core::labels;
use regex::Regex;

/// A container runtime and the label its container id goes to.
struct Runtime {
    label: &'static str,
    pattern: &'static str,
}

/// Checked in order; the first match wins. Ids are captured as group 1.
const RUNTIMES: &[Runtime] = &[
    // BuildKit build steps run in their own cgroups: /buildkit/<id>.
    Runtime {
        label: "__meta_docker_build_kit_container_id",
        pattern: r"/buildkit/([0-9a-z]{20,})",
    },
    // systemd driver: docker-<id>.scope; cgroupfs driver: /docker/<id>.
    Runtime {
        label: labels::META_DOCKER_CONTAINER_ID,
        pattern: r"(?:/docker-|/docker/)([0-9a-f]{64})",
    },
    Runtime {
        label: "__meta_podman_container_id",
        pattern: r"/libpod-([0-9a-f]{64})",
    },
    Runtime {
        label: labels::META_CONTAINERD_CONTAINER_ID,
        pattern: r"/cri-containerd-([0-9a-f]{64})",
    },
    Runtime {
        label: labels::META_CRIO_CONTAINER_ID,
        pattern: r"/crio-([0-9a-f]{64})",
    },
    // Kubernetes with the cgroupfs driver: /kubepods/<qos>/pod<uid>/<id>.
    Runtime {
        label: labels::META_CONTAINERD_CONTAINER_ID,
        pattern: r"/kubepods/(?:[a-z]+/)?pod[0-9a-f_-]+/([0-9a-f]{64})",
    },
    // LXC 4+: /lxc.payload.<name>; older: /lxc/<name>.
    Runtime {
        label: "__meta_lxc_container_id",
        pattern: r"/lxc(?:\.payload\.|\.payload/|/)([^/.][^/]*)",
    },
];

fn compiled() -> &'static [(&'static str, Regex)] {
    static COMPILED: OnceLock<Vec<(&'static str, Regex)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        RUNTIMES
            .iter()
            .map(|r| (r.label, Regex::new(r.pattern).expect("valid pattern")))
            .collect()
    })
}

/// The container-id label of a process from its /proc/PID/cgroup, if it
/// runs in a container.
pub fn container_id(cgroup_file: &str) -> Option<(&'static str, String)> {
    for line in cgroup_file.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for (label, regex) in compiled() {
            if let Some(id) = regex.captures(path).and_then(|c| c.get(1)) {
                return Some((label, id.as_str().trim_end_matches(".scope").to_owned()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6b9b8ad1de1c7e0c6d2a4a9f2f8ff1e5b0d5a1c3e8e3c1d39f8a7c0ffee12345";

    #[test]
    fn real_world_cgroup_lines() {
        let cases = [
            // docker, cgroup v2 with the systemd driver
            (format!("0::/system.slice/docker-{ID}.scope\n"), Some(("__meta_docker_container_id", ID))),
            // docker, cgroup v1 with the cgroupfs driver
            (
                format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"),
                Some(("__meta_docker_container_id", ID)),
            ),
            // podman (rootful), cgroup v2
            (format!("0::/machine.slice/libpod-{ID}.scope/container\n"), Some(("__meta_podman_container_id", ID))),
            // Kubernetes + containerd, cgroup v2, systemd driver
            (
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b3c2f0e_8d2e_4a49_9d4a_0c7f3d1f2b1a.slice/cri-containerd-{ID}.scope\n"),
                Some(("__meta_containerd_container_id", ID)),
            ),
            // Kubernetes + containerd, cgroup v1, cgroupfs driver
            (
                format!("4:cpu,cpuacct:/kubepods/besteffort/pod0b3c2f0e-8d2e-4a49-9d4a-0c7f3d1f2b1a/{ID}\n"),
                Some(("__meta_containerd_container_id", ID)),
            ),
            (
                format!("4:memory:/kubepods/pod0b3c2f0e-8d2e-4a49-9d4a-0c7f3d1f2b1a/{ID}\n"),
                Some(("__meta_containerd_container_id", ID)),
            ),
            // Kubernetes + CRI-O, cgroup v2 and v1
            (
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b3c2f0e_8d2e.slice/crio-{ID}.scope\n"),
                Some(("__meta_crio_container_id", ID)),
            ),
            (format!("3:cpu:/kubepods/burstable/pod123/crio-{ID}\n"), Some(("__meta_crio_container_id", ID))),
            // BuildKit build step
            ("0::/buildkit/r4yw2gmrp9ofvpmp3yc1w6ylr\n".to_string(), Some(("__meta_docker_build_kit_container_id", "r4yw2gmrp9ofvpmp3yc1w6ylr"))),
            // LXC 4+, cgroup v2, and older LXC, cgroup v1
            ("0::/lxc.payload.web01\n".to_string(), Some(("__meta_lxc_container_id", "web01"))),
            ("10:cpuset:/lxc/web01\n".to_string(), Some(("__meta_lxc_container_id", "web01"))),
            // Not in a container
            ("0::/user.slice/user-1000.slice/session-2.scope\n".to_string(), None),
            ("0::/system.slice/sshd.service\n".to_string(), None),
            ("0::/\n".to_string(), None),
        ];
        for (line, expected) in cases {
            let got = container_id(&line);
            assert_eq!(
                got.as_ref().map(|(l, id)| (*l, id.as_str())),
                expected,
                "{line}"
            );
        }
    }
}
