//! Relabeling 10k label sets with 10 rules.

use agent_core::LabelSet;
use agent_processor_relabel::{RelabelConfig, Relabeler};
use criterion::{criterion_group, criterion_main, Criterion};

fn relabel(c: &mut Criterion) {
    let rules: Vec<RelabelConfig> = serde_yaml::from_str(
        r#"
- {source_labels: [__meta_process_pid], target_label: pid}
- {source_labels: [__meta_process_executable_name], target_label: executable}
- {source_labels: [__meta_thread_comm], regex: 'kworker.*', action: drop}
- {source_labels: [comm], regex: '(.*)-[0-9]+', target_label: comm_family, replacement: '$1'}
- {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
- {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
- {source_labels: [pod], target_label: shard, modulus: 16, action: hashmod}
- {regex: '__meta_kubernetes_pod_label_(.+)', action: labelmap}
- {source_labels: [namespace], target_label: namespace_upper, action: uppercase}
- {regex: 'tmp_.*', action: labeldrop}
"#,
    )
    .unwrap();
    let relabeler = Relabeler::new(rules).unwrap();
    let sets: Vec<LabelSet> = (0..10_000)
        .map(|i| {
            LabelSet::new([
                ("__meta_process_pid", i.to_string()),
                (
                    "__meta_process_executable_name",
                    format!("server-{}", i % 30),
                ),
                ("__meta_thread_comm", format!("worker-{}", i % 7)),
                ("comm", format!("server-{}", i % 30)),
                ("__meta_kubernetes_namespace", format!("ns-{}", i % 10)),
                ("__meta_kubernetes_pod_name", format!("pod-{i}")),
                ("__meta_kubernetes_pod_label_app", format!("app-{}", i % 50)),
                ("__meta_kubernetes_pod_label_team", "perf".to_string()),
                ("node", "node-1".to_string()),
                ("tmp_x", "y".to_string()),
            ])
        })
        .collect();
    c.bench_function("relabel 10k label sets, 10 rules", |b| {
        b.iter(|| {
            sets.iter()
                .filter_map(|s| relabeler.process_labels(s))
                .count()
        })
    });
}

criterion_group!(benches, relabel);
criterion_main!(benches);
