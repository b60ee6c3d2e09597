//! Table-driven tests of Prometheus's relabeling semantics; cases and
//! expected values follow Prometheus's own relabel tests.

use super::*;

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    LabelSet::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

/// Parses rules from YAML, as users write them (so defaults apply).
fn rules(yaml: &str) -> Vec<RelabelConfig> {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

/// Label pairs written inline.
type Pairs = &'static [(&'static str, &'static str)];

#[test]
fn every_action_and_default() {
    // (what, input, rules, output or None when dropped)
    let cases: &[(&str, Pairs, &str, Option<Pairs>)] = &[
        (
            "replace with defaults copies the joined source",
            &[("a", "foo"), ("b", "bar")],
            "- {source_labels: [a, b], target_label: c}",
            Some(&[("a", "foo"), ("b", "bar"), ("c", "foo;bar")]),
        ),
        (
            "custom separator",
            &[("a", "foo"), ("b", "bar")],
            "- {source_labels: [a, b], separator: '-', target_label: c}",
            Some(&[("a", "foo"), ("b", "bar"), ("c", "foo-bar")]),
        ),
        (
            "regex groups and ${n} in replacement",
            &[("a", "foo"), ("b", "bar")],
            "- {source_labels: [a, b], regex: 'f(.*);(.*)r', target_label: c, replacement: 'ch${1}-ch${2}'}",
            Some(&[("a", "foo"), ("b", "bar"), ("c", "choo-chba")]),
        ),
        (
            "the regex is anchored: no match, no change",
            &[("a", "boo")],
            "- {source_labels: [a], regex: 'f', target_label: b, replacement: bar}",
            Some(&[("a", "boo")]),
        ),
        (
            "templated target label",
            &[("a", "some-name-value")],
            "- {source_labels: [a], regex: 'some-([^-]+)-([^,]+)', target_label: '${1}', replacement: '${2}'}",
            Some(&[("a", "some-name-value"), ("name", "value")]),
        ),
        (
            "a missing group replaces with empty: the target is deleted",
            &[("a", "some-name-value"), ("name", "x")],
            "- {source_labels: [a], regex: 'some-([^-]+)-([^,]+)', target_label: '${1}', replacement: '${3}'}",
            Some(&[("a", "some-name-value")]),
        ),
        (
            "an invalid expanded target changes nothing",
            &[("a", "some-name-0")],
            "- {source_labels: [a], regex: 'some-([^-]+)-([^,]+)', target_label: '${3}', replacement: '${1}'}",
            Some(&[("a", "some-name-0")]),
        ),
        (
            "named groups and $name",
            &[("a", "line1\nline2")],
            "- {source_labels: [a], regex: '(line1).*(?<second>line2)', target_label: 'l_$1', replacement: 'val_$second'}",
            Some(&[("a", "line1\nline2"), ("l_line1", "val_line2")]),
        ),
        (
            "dot matches newlines",
            &[("a", "line1\nline2")],
            "- {source_labels: [a], regex: 'line1.*line2', target_label: d, replacement: 'match${1}'}",
            Some(&[("a", "line1\nline2"), ("d", "match")]),
        ),
        ("keep drops what does not match", &[("a", "foo")], "- {source_labels: [a], regex: 'f.*', action: keep}", Some(&[("a", "foo")])),
        ("keep: no match drops", &[("a", "boo")], "- {source_labels: [a], regex: 'f.*', action: keep}", None),
        ("drop: match drops", &[("a", "foo")], "- {source_labels: [a], regex: 'f.*', action: drop}", None),
        ("drop: no match keeps", &[("a", "boo")], "- {source_labels: [a], regex: 'f.*', action: drop}", Some(&[("a", "boo")])),
        (
            "keep on a missing label matches the empty string",
            &[("a", "foo")],
            "- {source_labels: [missing], regex: '', action: keep}",
            Some(&[("a", "foo")]),
        ),
        (
            "keepequal keeps equal values",
            &[("__tmp_port", "1234"), ("__port1", "1234")],
            "- {source_labels: [__tmp_port], target_label: __port1, action: keepequal}",
            Some(&[("__port1", "1234"), ("__tmp_port", "1234")]),
        ),
        (
            "keepequal drops different values",
            &[("__tmp_port", "1234"), ("__port2", "5678")],
            "- {source_labels: [__tmp_port], target_label: __port2, action: keepequal}",
            None,
        ),
        (
            "dropequal drops equal values",
            &[("__tmp_port", "1234"), ("__port1", "1234")],
            "- {source_labels: [__tmp_port], target_label: __port1, action: dropequal}",
            None,
        ),
        (
            "hashmod as Prometheus computes it",
            &[("a", "foo"), ("b", "bar"), ("c", "baz")],
            "- {source_labels: [c], target_label: d, modulus: 1000, action: hashmod}",
            Some(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "976")]),
        ),
        (
            "hashmod of a value with a newline",
            &[("a", "foo\nbar")],
            "- {source_labels: [a], target_label: b, modulus: 1000, action: hashmod}",
            Some(&[("a", "foo\nbar"), ("b", "734")]),
        ),
        (
            "labelmap copies matching labels under new names",
            &[("a", "foo"), ("b1", "bar"), ("b2", "baz")],
            "- {regex: '(b.*)', replacement: 'bar_${1}', action: labelmap}",
            Some(&[("a", "foo"), ("b1", "bar"), ("b2", "baz"), ("bar_b1", "bar"), ("bar_b2", "baz")]),
        ),
        (
            "labelmap of meta labels",
            &[("a", "foo"), ("__meta_my_bar", "aaa"), ("__meta_other", "ccc")],
            "- {regex: '__meta_(my.*)', replacement: '${1}', action: labelmap}",
            Some(&[("__meta_my_bar", "aaa"), ("__meta_other", "ccc"), ("a", "foo"), ("my_bar", "aaa")]),
        ),
        (
            "labeldrop",
            &[("a", "foo"), ("b1", "bar"), ("b2", "baz")],
            "- {regex: '(b.*)', action: labeldrop}",
            Some(&[("a", "foo")]),
        ),
        (
            "labelkeep",
            &[("a", "foo"), ("b1", "bar"), ("b2", "baz")],
            "- {regex: '(b.*)', action: labelkeep}",
            Some(&[("b1", "bar"), ("b2", "baz")]),
        ),
        (
            "lowercase and uppercase",
            &[("foo", "bAr123Foo")],
            "- {source_labels: [foo], target_label: foo_uppercase, action: uppercase}\n- {source_labels: [foo], target_label: foo_lowercase, action: lowercase}",
            Some(&[("foo", "bAr123Foo"), ("foo_lowercase", "bar123foo"), ("foo_uppercase", "BAR123FOO")]),
        ),
        (
            "rules run in order: a label set early is seen later",
            &[("__meta_kubernetes_pod_container_port_name", "foo"), ("__meta_port", "9091")],
            "- {regex: '^__meta_kubernetes_pod_container_port_name$', action: labeldrop}\n\
             - {source_labels: [__meta_port], regex: '(.+)', target_label: __meta_kubernetes_pod_container_port_name, replacement: metrics}\n\
             - {source_labels: [__meta_kubernetes_pod_container_port_name], regex: '^metrics$', action: keep}",
            Some(&[("__meta_kubernetes_pod_container_port_name", "metrics"), ("__meta_port", "9091")]),
        ),
    ];
    for (what, input, yaml, expected) in cases {
        let relabeler = Relabeler::new(rules(yaml)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = relabeler.relabel(&labels(input));
        assert_eq!(got, expected.map(labels), "{what}");
    }
}

#[test]
fn defaults_are_prometheus_defaults() {
    let r = &rules("- {target_label: x}")[0];
    assert_eq!(r.separator, ";");
    assert_eq!(r.regex, "(.*)");
    assert_eq!(r.replacement, "$1");
    assert_eq!(r.action, Action::Replace);
    assert_eq!(r.modulus, 0);
    assert!(r.source_labels.is_empty());
}

#[test]
fn double_underscore_labels_go_after_relabeling_but_name_stays() {
    let relabeler = Relabeler::new(rules(
        "- {source_labels: [__meta_process_pid], target_label: pid}",
    ))
    .unwrap();
    let out = relabeler
        .process_labels(&labels(&[
            ("__meta_process_pid", "42"),
            ("__name__", "parca_agent_cpu"),
            ("comm", "x"),
        ]))
        .unwrap();
    assert_eq!(
        out,
        labels(&[
            ("__name__", "parca_agent_cpu"),
            ("comm", "x"),
            ("pid", "42")
        ])
    );
}

#[test]
fn validation_errors_are_prometheus_errors() {
    for (yaml, expected) in [
        ("- {action: hashmod, target_label: x}", "relabel configuration for hashmod requires non-zero modulus"),
        ("- {action: replace}", "relabel configuration for replace action requires 'target_label' value"),
        ("- {action: lowercase}", "relabel configuration for lowercase action requires 'target_label' value"),
        ("- {action: keepequal, source_labels: [a]}", "relabel configuration for keepequal action requires 'target_label' value"),
        ("- {action: replace, target_label: '-x'}", "\"-x\" is invalid 'target_label' for replace action"),
        ("- {action: lowercase, target_label: '${3}'}", "\"${3}\" is invalid 'target_label' for lowercase action"),
        ("- {action: uppercase, target_label: x, replacement: y}", "'replacement' can not be set for uppercase action"),
        ("- {action: labelmap, replacement: '-bad'}", "\"-bad\" is invalid 'replacement' for labelmap action"),
        ("- {action: labeldrop, regex: x, source_labels: [a]}", "labeldrop action requires only 'regex', and no other fields"),
        ("- {action: labelkeep, regex: x, target_label: a}", "labelkeep action requires only 'regex', and no other fields"),
        ("- {action: dropequal, source_labels: [a], target_label: b, regex: x}", "dropequal action requires only 'source_labels' and `target_label`, and no other fields"),
        ("- {action: replace, target_label: x, regex: '('}", "invalid regex"),
        ("- {action: hashmod, target_label: '${1}', modulus: 2}", "is invalid 'target_label' for hashmod action"),
    ] {
        let config = RelabelProcessorConfig { relabel_configs: rules(yaml), relabel_configs_file: None };
        let errors = config.validate();
        assert_eq!(errors.len(), 1, "{yaml}");
        assert_eq!(errors[0].field, "relabel_configs::0", "{yaml}");
        assert!(errors[0].message.contains(expected), "{yaml}: {}", errors[0].message);
    }
    for ok in [
        "- {source_labels: [a], regex: 'some-([^-]+)-([^,]+)', replacement: '${1}', target_label: '${3}'}",
        "- {regex: '__meta_(.+)', action: labelmap, replacement: '${1}'}",
        "- {action: keepequal, source_labels: [a], target_label: b}",
    ] {
        let config = RelabelProcessorConfig { relabel_configs: rules(ok), relabel_configs_file: None };
        assert!(config.validate().is_empty(), "{ok}: {:?}", config.validate());
    }
    // Unknown keys and actions are refused by the parser.
    assert!(serde_yaml::from_str::<Vec<RelabelConfig>>("- {action: rename}").is_err());
    assert!(serde_yaml::from_str::<Vec<RelabelConfig>>("- {sourcelabels: [a]}").is_err());
}

#[test]
fn a_parca_agent_config_file_feeds_the_rules() {
    let dir = std::env::temp_dir().join(format!("relabel-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("parca-agent.yaml");
    std::fs::write(
        &file,
        "relabel_configs:\n- source_labels: [comm]\n  regex: keepme\n  action: keep\n",
    )
    .unwrap();
    let ctx = BuildContext::for_test("relabel");
    let config = RelabelProcessorConfig {
        relabel_configs: vec![],
        relabel_configs_file: Some(file),
    };
    let mut p = RelabelFactory.create(config, &ctx).unwrap();
    let mut b = ProfileBatch::new(agent_core::ProfileType::cpu_samples(19), 0, 1);
    let stack = b.stacks.intern(vec![]);
    for (comm, value) in [("keepme", 2), ("other", 3), ("keepme", 4)] {
        let series = b.label_sets.intern(labels(&[("comm", comm)]));
        b.samples.push(agent_core::Sample {
            stack,
            series,
            attributes: 0,
            value,
            timestamp_unix_nanos: None,
        });
    }
    let out = p.process(b).unwrap();
    assert_eq!(out.total_value(), 6);
    assert_eq!(out.samples.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = RelabelProcessorConfig {
        relabel_configs: vec![],
        relabel_configs_file: Some("/nonexistent.yaml".into()),
    };
    let err = RelabelFactory
        .create(missing, &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("relabel_configs_file /nonexistent.yaml"),
        "{err}"
    );
}

fn push_sample(b: &mut ProfileBatch, stack: u32, series: u32, attributes: u32, value: i64) {
    b.samples.push(agent_core::Sample {
        stack,
        series,
        attributes,
        value,
        timestamp_unix_nanos: None,
    });
}

/// Goroutine labels arrive as `__meta_go_label_*` sample labels: a
/// labelmap rule names them (a sample without them keeps its series).
#[test]
fn goroutine_labels_reach_series_through_labelmap() {
    let ctx = BuildContext::for_test("relabel");
    let config = RelabelProcessorConfig {
        relabel_configs: rules(
            "- {action: labelmap, regex: '__meta_go_label_(.+)', replacement: '$1'}\n",
        ),
        relabel_configs_file: None,
    };
    let mut p = RelabelFactory.create(config, &ctx).unwrap();
    let mut b = ProfileBatch::new(agent_core::ProfileType::cpu_samples(19), 0, 1);
    let stack = b.stacks.intern(vec![]);
    let series = b
        .label_sets
        .intern(labels(&[("comm", "api"), ("pid", "9")]));
    let with = b.label_sets.intern(labels(&[
        ("__meta_go_label_handler", "checkout"),
        ("cpu", "0"),
    ]));
    let without = b.label_sets.intern(labels(&[("cpu", "1")]));
    for (attributes, value) in [(with, 3), (without, 5)] {
        push_sample(&mut b, stack, series, attributes, value);
    }
    let out = p.process(b).unwrap();
    let mut got: Vec<(LabelSet, LabelSet, i64)> = out
        .samples
        .iter()
        .map(|s| {
            (
                out.labels(s.series).clone(),
                out.labels(s.attributes).clone(),
                s.value,
            )
        })
        .collect();
    got.sort();
    let api = labels(&[("comm", "api"), ("pid", "9")]);
    let checkout = labels(&[("comm", "api"), ("handler", "checkout"), ("pid", "9")]);
    assert_eq!(
        got,
        vec![
            (
                checkout,
                labels(&[("__meta_go_label_handler", "checkout"), ("cpu", "0")]),
                3
            ),
            (api, labels(&[("cpu", "1")]), 5),
        ]
    );
}

#[test]
fn thread_and_cpu_meta_labels_come_from_sample_attributes() {
    let ctx = BuildContext::for_test("relabel");
    let config = RelabelProcessorConfig {
        relabel_configs: rules(
            "- {source_labels: [__meta_thread_comm], regex: 'gc-.*', action: drop}\n\
             - {source_labels: [__meta_thread_comm], target_label: thread}\n\
             - {source_labels: [__meta_cpu], target_label: cpu}\n",
        ),
        relabel_configs_file: None,
    };
    let mut p = RelabelFactory.create(config, &ctx).unwrap();
    let mut b = ProfileBatch::new(agent_core::ProfileType::cpu_samples(19), 0, 1);
    let stack = b.stacks.intern(vec![]);
    let series = b
        .label_sets
        .intern(labels(&[("comm", "java"), ("pid", "7")]));
    let threads = [
        ("main", "0", 1),
        ("gc-1", "1", 2),
        ("main", "1", 4),
        ("main", "0", 8),
    ];
    for (thread, cpu, value) in threads {
        let attributes = b.label_sets.intern(labels(&[
            ("thread_comm", thread),
            ("thread_id", "7"),
            ("cpu", cpu),
        ]));
        push_sample(&mut b, stack, series, attributes, value);
    }
    let out = p.process(b).unwrap();
    // The gc thread's sample is dropped; the others split by CPU.
    assert_eq!(out.total_value(), 13);
    let mut by_series: Vec<(LabelSet, i64)> = out
        .samples
        .iter()
        .map(|s| (out.labels(s.series).clone(), s.value))
        .collect();
    by_series.sort();
    let main = |cpu: &str| {
        labels(&[
            ("comm", "java"),
            ("cpu", cpu),
            ("pid", "7"),
            ("thread", "main"),
        ])
    };
    assert_eq!(
        by_series,
        vec![(main("0"), 1), (main("0"), 8), (main("1"), 4)]
    );
    // The sample attributes stay as they were.
    assert!(out
        .samples
        .iter()
        .all(|s| out.labels(s.attributes).get("cpu").is_some()));
}

#[test]
fn rules_without_sample_labels_run_per_series() {
    let per_series = Relabeler::new(rules("- {source_labels: [comm], target_label: x}\n")).unwrap();
    assert!(!per_series.reads_sample_labels());
    let labelmap = Relabeler::new(rules("- {regex: '__meta_(.+)', action: labelmap}\n")).unwrap();
    assert!(labelmap.reads_sample_labels());
}

#[test]
fn a_label_is_read_by_its_source_rules_and_by_name_matches() {
    let relabeler = Relabeler::new(rules(
        "- {source_labels: [__meta_process_cmdline], target_label: cmdline}
- {regex: '__meta_go_label_(.+)', action: labelmap}
- {regex: 'tmp_.*', action: labeldrop}
",
    ))
    .unwrap();
    for read in ["__meta_process_cmdline", "__meta_go_label_handler", "tmp_x"] {
        assert!(relabeler.may_read(read), "{read}");
    }
    for unread in ["__meta_process_pid", "comm", "cmdline"] {
        assert!(!relabeler.may_read(unread), "{unread}");
    }
    let embedded: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../../../pipeline.yaml")).unwrap();
    let rules =
        serde_yaml::from_value(embedded["processors"]["relabel"]["relabel_configs"].clone());
    let embedded = Relabeler::new(rules.unwrap()).unwrap();
    assert!(
        !embedded.may_read("__meta_process_cmdline"),
        "the embedded pipeline reads no command line"
    );
}
