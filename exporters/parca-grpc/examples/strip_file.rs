//! Writes the debuginfo the exporter would upload for an ELF file:
//! `cargo run -p agent-exporter-parca-grpc --example strip_file -- IN OUT [--compress]`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: strip_file IN OUT [--compress]");
        std::process::exit(2);
    };
    let compress = args.iter().any(|a| a == "--compress");
    let data = std::fs::read(input).expect("readable input");
    let out =
        agent_exporter_parca_grpc::strip::prepare(&data, true, compress).expect("an ELF file");
    std::fs::write(output, &out).expect("writable output");
    println!("{input}: {} -> {} bytes", data.len(), out.len());
}
