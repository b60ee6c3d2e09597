//! The one place that lists the compiled-in components, each behind its
//! Cargo feature (what the OpenTelemetry Collector builder generates as
//! `components.go`). Adding a component: a crate, a feature in Cargo.toml,
//! and one `register` line here.

use agent_core::Registry;

/// Every component compiled into this binary, and the known ones that are not.
pub fn registry() -> Registry {
    let mut r = Registry::default();

    #[cfg(feature = "receiver-ebpf-cpu")]
    r.register(agent_receiver_ebpf_cpu::EbpfCpuFactory);
    #[cfg(not(feature = "receiver-ebpf-cpu"))]
    r.absent(
        agent_core::Kind::Receiver,
        "ebpf_cpu",
        "built without Cargo feature `receiver-ebpf-cpu`",
    );

    #[cfg(feature = "receiver-pprof")]
    r.register(agent_receiver_pprof::PprofReceiverFactory);
    #[cfg(not(feature = "receiver-pprof"))]
    r.absent(
        agent_core::Kind::Receiver,
        "pprof",
        "built without Cargo feature `receiver-pprof`",
    );

    #[cfg(feature = "processor-metadata")]
    r.register(agent_processor_metadata::MetadataFactory);
    #[cfg(not(feature = "processor-metadata"))]
    r.absent(
        agent_core::Kind::Processor,
        "metadata",
        "built without Cargo feature `processor-metadata`",
    );

    #[cfg(feature = "processor-k8s-meta")]
    r.register(agent_processor_k8s_meta::K8sMetaFactory);
    #[cfg(not(feature = "processor-k8s-meta"))]
    r.absent(
        agent_core::Kind::Processor,
        "k8s_meta",
        "built without Cargo feature `processor-k8s-meta`",
    );

    #[cfg(feature = "processor-relabel")]
    r.register(agent_processor_relabel::RelabelFactory);
    #[cfg(not(feature = "processor-relabel"))]
    r.absent(
        agent_core::Kind::Processor,
        "relabel",
        "built without Cargo feature `processor-relabel`",
    );

    #[cfg(feature = "processor-plugin")]
    r.register(agent_processor_plugin::PluginFactory);
    #[cfg(not(feature = "processor-plugin"))]
    r.absent(
        agent_core::Kind::Processor,
        "plugin",
        "built without Cargo feature `processor-plugin`",
    );

    #[cfg(feature = "processor-symbolize")]
    r.register(agent_processor_symbolize::SymbolizeFactory);
    #[cfg(not(feature = "processor-symbolize"))]
    r.absent(
        agent_core::Kind::Processor,
        "symbolize",
        "built without Cargo feature `processor-symbolize`",
    );

    // The example of a compile-time processor (examples/drop-frames).
    #[cfg(feature = "processor-drop-frames")]
    r.register(agent_processor_drop_frames::DropFramesFactory);
    #[cfg(not(feature = "processor-drop-frames"))]
    r.absent(
        agent_core::Kind::Processor,
        "drop_frames",
        "built without Cargo feature `processor-drop-frames`",
    );

    #[cfg(feature = "exporter-file")]
    r.register(agent_exporter_file::FileExporterFactory);
    #[cfg(not(feature = "exporter-file"))]
    r.absent(
        agent_core::Kind::Exporter,
        "file",
        "built without Cargo feature `exporter-file`",
    );

    #[cfg(feature = "exporter-parca-grpc")]
    r.register(agent_exporter_parca_grpc::ParcaGrpcFactory);
    #[cfg(not(feature = "exporter-parca-grpc"))]
    r.absent(
        agent_core::Kind::Exporter,
        "parca_grpc",
        "built without Cargo feature `exporter-parca-grpc`",
    );

    #[cfg(feature = "exporter-otlp-profiles")]
    r.register(agent_exporter_otlp_profiles::OtlpProfilesFactory);
    #[cfg(not(feature = "exporter-otlp-profiles"))]
    r.absent(
        agent_core::Kind::Exporter,
        "otlp_profiles",
        "built without Cargo feature `exporter-otlp-profiles`",
    );

    r
}
