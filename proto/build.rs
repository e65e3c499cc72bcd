//! Generates the messages and grpcio stubs of every API in `proto/` with
//! pure-Rust tools, so no system `protoc` is needed.
//!
//! Messages come from protobuf-codegen 3 (pure parser). grpcio-compiler only
//! reads protobuf 2 descriptors, so the same parsed descriptors are encoded
//! and decoded again as a protobuf 2 `FileDescriptorSet` for it; the stubs it
//! writes refer only to `::grpcio` and the sibling message module, so they
//! compile against the protobuf 3 messages.

use std::{env, fs, path::Path};

use protobuf::Message as _;
use protobuf2::Message as _;

/// Each API: its file stem in `proto/`, which also names its modules
/// (`<stem>` for the messages, `<stem>_grpc` for the stubs).
const APIS: &[&str] = &[
    "api",
    "pluginregistration",
    "podresources",
    "status",
    "dra_v1",
    "dra_v1beta1",
    "dra_health",
];

fn main() {
    // grpc's C core sizes its thread pools by the CPUs the machine has
    // (gpr_cpu_num_cores: up to 16 event engine threads, executors of twice
    // the count), which would make a node agent's threads depend on the
    // box. Every binary links its calls to our own answer instead
    // (`rpc::__wrap_gpr_cpu_num_cores`).
    println!("cargo:rustc-link-arg=-Wl,--wrap=gpr_cpu_num_cores");
    let out = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out).join("apis");
    fs::create_dir_all(&out).expect("create the generated code dir");
    let mut mod_rs = String::new();
    for stem in APIS {
        generate(stem, &out);
        // The generated files open with inner attributes, which `include!`
        // cannot take; modules with a `#[path]` can.
        for name in [stem.to_string(), format!("{stem}_grpc")] {
            let path = out.join(format!("{name}.rs"));
            mod_rs += &format!(
                "#[path = {:?}]\npub mod {name};\n",
                path.display().to_string()
            );
        }
    }
    fs::write(out.join("mod.rs"), mod_rs).expect("write mod.rs");
}

fn generate(stem: &str, out: &Path) {
    let proto = format!("proto/{stem}.proto");
    println!("cargo:rerun-if-changed={proto}");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input(&proto)
        .out_dir(out)
        .customize(protobuf_codegen::Customize::default().gen_mod_rs(false))
        .run()
        .unwrap_or_else(|e| panic!("generate the messages of {proto}: {e}"));

    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include("proto")
        .input(&proto)
        .parse_and_typecheck()
        .unwrap_or_else(|e| panic!("parse {proto}: {e}"));
    let set = protobuf::descriptor::FileDescriptorSet {
        file: parsed.file_descriptors,
        ..Default::default()
    };
    let bytes = set.write_to_bytes().expect("encode the descriptors");
    let set2 = protobuf2::descriptor::FileDescriptorSet::parse_from_bytes(&bytes)
        .expect("decode the descriptors as protobuf 2");
    let file = format!("{stem}.proto");
    for generated in grpcio_compiler::codegen::r#gen(set2.get_file(), &[file]) {
        fs::write(out.join(&generated.name), generated.content)
            .unwrap_or_else(|e| panic!("write the grpcio stubs of {proto}: {e}"));
    }
}
