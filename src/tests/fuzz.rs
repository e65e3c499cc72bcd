//! Fuzz smoke test: every file of the fuzz corpus (`testdata/fuzz/<target>/`)
//! through its harness in `kubelet_plugin::fuzzing`, then a few thousand
//! inputs made from the corpus by a small deterministic PRNG (byte
//! mutations, splices, dictionary words, and well-formed requests and
//! command lines), so `cargo test` checks the fuzz invariants without
//! nightly or cargo-fuzz. The real fuzzing: `make fuzz`.

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::PathBuf,
};

use kubelet_plugin::{api::api, fuzzing};
use protobuf::Message as _;

/// Generated inputs per target.
const MUTANTS: usize = 5000;
/// libFuzzer's default `-max_len`.
const MAX_LEN: usize = 4096;

/// splitmix64: small, fast, and the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The corpus of `target`, sorted by file name; fails when it is empty.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/fuzz")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read the corpus {}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("list the corpus").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).expect("read a corpus file"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files
}

/// Calls `harness` on `input`; on a panic, names the input so it can be
/// added to the corpus, then fails.
fn run(harness: fn(&[u8]), label: &str, input: &[u8]) {
    if panic::catch_unwind(AssertUnwindSafe(|| harness(input))).is_err() {
        panic!(
            "{label} broke an invariant (above); input ({} bytes): {:?}",
            input.len(),
            String::from_utf8_lossy(input)
        );
    }
}

/// One random change to `data`; `dict` gives words worth inserting.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, others: &[(String, Vec<u8>)], dict: &[&[u8]]) {
    let at = |rng: &mut Rng, data: &Vec<u8>| rng.below(data.len() + 1);
    match rng.below(9) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, b'=', b'-', b'/', b'.', b'0', b'A']);
        }
        2 => {
            let i = at(rng, data);
            data.insert(i, rng.next() as u8);
        }
        3 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(8));
            data.drain(i..i + n);
        }
        4 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(16));
            let chunk = data[i..i + n].to_vec();
            let j = at(rng, data);
            data.splice(j..j, chunk);
        }
        5 => {
            let other = &rng.pick(others).1;
            let i = at(rng, data);
            let j = rng.below(other.len() + 1);
            data.truncate(i);
            data.extend_from_slice(&other[j..]);
        }
        6 | 7 => {
            let word = *rng.pick(dict);
            let i = at(rng, data);
            data.splice(i..i, word.iter().copied());
        }
        _ => {
            let i = at(rng, data);
            data.truncate(i);
        }
    }
}

/// A corpus file with one to four random changes.
fn mutant(rng: &mut Rng, corpus: &[(String, Vec<u8>)], dict: &[&[u8]]) -> Vec<u8> {
    let mut data = rng.pick(corpus).1.clone();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut data, corpus, dict);
    }
    data.truncate(MAX_LEN);
    data
}

/// Replays the corpus of `target`, then `MUTANTS` inputs: mutants of it,
/// and every third one from `generate` when given.
fn smoke(
    target: &str,
    harness: fn(&[u8]),
    seed: u64,
    dict: &[&[u8]],
    generate: Option<fn(&mut Rng) -> Vec<u8>>,
) {
    let corpus = corpus(target);
    for (name, data) in &corpus {
        run(harness, &format!("{target} corpus file {name}"), data);
    }
    let mut rng = Rng(seed);
    for n in 0..MUTANTS {
        let input = match generate {
            Some(generate) if n % 3 == 0 => generate(&mut rng),
            _ => mutant(&mut rng, &corpus, dict),
        };
        run(harness, &format!("{target} input {n}"), &input);
    }
}

const IDS: &[&str] = &[
    "crand0", "crand1", "crand2", "crand3", "crand4", "crand5", "crand6", "crand01", "crand",
    "kvm0", "kvm1", "kvm2", "kvm3", "kvm4", "kvm", "", "CRAND0", "crand-1", "crand0 ",
];

/// A well-formed AllocateRequest: up to 3 containers of up to 4 IDs.
fn allocate_request(rng: &mut Rng) -> Vec<u8> {
    let mut req = api::AllocateRequest::new();
    for _ in 0..rng.below(4) {
        let mut creq = api::ContainerAllocateRequest::new();
        for _ in 0..rng.below(5) {
            creq.devices_ids.push(rng.pick(IDS).to_string());
        }
        req.container_requests.push(creq);
    }
    req.write_to_bytes().expect("encode an AllocateRequest")
}

const WORDS: &[&str] = &[
    "run",
    "cdi",
    "status",
    "--",
    "--help",
    "--version",
    "--plugin",
    "--plugin=crand",
    "crand",
    "kvm",
    "gpu",
    "--crand-count",
    "--crand-count=0",
    "0",
    "1",
    "16384",
    "16385",
    "-1",
    "18446744073709551616",
    "--kvm-count",
    "--kvm-count=16385",
    "--resource-domain",
    "--resource-domain=example.com",
    "1x.com",
    "Example.com",
    "a",
    "--device-injection",
    "cdi",
    "device-spec",
    "both",
    "--log-level",
    "trace",
    "off",
    "--pid-file",
    "/run/kp.pid",
    "--dev-dir",
    "/nonexistent",
    "--dev-dir=/a=b",
    "--cdi-dir",
    "--device-plugin-dir",
    "--dry-run",
    "--x=",
    "=",
    "--=",
    "",
];

/// A command line of dictionary words, NUL-separated.
fn command_line(rng: &mut Rng) -> Vec<u8> {
    let mut args: Vec<&str> = vec![*rng.pick(&["run", "cdi", "status", "run", "--version"])];
    for _ in 0..rng.below(8) {
        args.push(*rng.pick(WORDS));
    }
    args.join("\0").into_bytes()
}

#[test]
fn test_fuzz_allocate_corpus_and_mutants() {
    let dict: Vec<&[u8]> = IDS
        .iter()
        .map(|s| s.as_bytes())
        .chain([
            &b"\x0a"[..],
            b"\x0a\x08\x0a\x06",
            b"\x12\x00",
            b"\xff\xff\xff\xff\x0f",
        ])
        .collect();
    smoke(
        "allocate",
        fuzzing::allocate,
        1,
        &dict,
        Some(allocate_request),
    );
}

#[test]
fn test_fuzz_names_corpus_and_mutants() {
    let dict: &[&[u8]] = &[
        b"/",
        b".",
        b"-",
        b"_",
        b"=",
        b"kubernetes.io/",
        b"requests.",
        b"example.com",
        b"crand",
        b"v1beta1",
        b"..",
        b"1",
        b"A",
        b"\xc3\xa9",
        b"\x00",
        b"\"",
        b"\\",
    ];
    smoke("names", fuzzing::names, 2, dict, None);
}

#[test]
fn test_fuzz_flags_corpus_and_mutants() {
    let dict: Vec<&[u8]> = WORDS
        .iter()
        .map(|s| s.as_bytes())
        .chain([&b"\0"[..]])
        .collect();
    smoke("flags", fuzzing::flags, 3, &dict, Some(command_line));
}
