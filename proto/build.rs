//! Generates the v1beta1 messages and grpcio stubs from `proto/api.proto`
//! with pure-Rust tools, so no system `protoc` is needed.
//!
//! Messages come from protobuf-codegen 3 (pure parser). grpcio-compiler only
//! reads protobuf 2 descriptors, so the same parsed descriptors are encoded
//! and decoded again as a protobuf 2 `FileDescriptorSet` for it; the stubs it
//! writes refer only to `::grpcio` and the sibling `api` module, so they
//! compile against the protobuf 3 messages.

use std::{env, fs, path::PathBuf};

use protobuf::Message as _;
use protobuf2::Message as _;

const PROTO: &str = "proto/api.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("api");
    fs::create_dir_all(&out).expect("create the generated code dir");

    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input(PROTO)
        .out_dir(&out)
        .customize(protobuf_codegen::Customize::default().gen_mod_rs(false))
        .run()
        .expect("generate the v1beta1 messages");

    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include("proto")
        .input(PROTO)
        .parse_and_typecheck()
        .expect("parse proto/api.proto");
    let set = protobuf::descriptor::FileDescriptorSet {
        file: parsed.file_descriptors,
        ..Default::default()
    };
    let bytes = set.write_to_bytes().expect("encode the descriptors");
    let set2 = protobuf2::descriptor::FileDescriptorSet::parse_from_bytes(&bytes)
        .expect("decode the descriptors as protobuf 2");
    for file in grpcio_compiler::codegen::r#gen(set2.get_file(), &["api.proto".to_string()]) {
        fs::write(out.join(&file.name), file.content).expect("write the grpcio stubs");
    }

    // The generated files open with inner attributes, which `include!` cannot
    // take; modules with a `#[path]` can.
    let mut mod_rs = String::new();
    for name in ["api", "api_grpc"] {
        let path = out.join(format!("{name}.rs"));
        mod_rs += &format!(
            "#[path = {:?}]\npub mod {name};\n",
            path.display().to_string()
        );
    }
    fs::write(out.join("mod.rs"), mod_rs).expect("write mod.rs");
}
