//! Property tests of the YAML configuration through `load_str`, the one entry point that
//! `serve`, reload and `config check` share. Seeds: the shipped `examples/` and a config with
//! upstreams and routes; mutations by byte (kept UTF-8) and by line, and hostile YAML.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::fuzzing::{self, mutated};

const ROUTED: &str = "\
listen: 127.0.0.1:8443
upstreams:
  api:
    servers:
      - url: http://127.0.0.1:8000
        weight: 2
      - url: http://127.0.0.1:8001
        backup: true
cors:
  app:
    allowed_origins: [https://app.example.com, \"https://*.example.com\"]
    allow_credentials: true
    max_age: 10m
routes:
  - path: /api
    upstream: api
    cors: app
  - host: ws.example.com
    path: /ws
    upstream: http://127.0.0.1:9000
    cors:
      allowed_origins: [\"*\"]
    websocket: {max_message_size: 1MiB, messages_per_second: 50, burst: 100}
default_route: api
";

fn seeds() -> Vec<&'static str> {
    vec![
        include_str!("../../examples/local-development.yaml"),
        include_str!("../../examples/plain.yaml"),
        include_str!("../../examples/production.yaml"),
        include_str!("../../examples/acme.yaml"),
        ROUTED,
    ]
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Settings, ConfigError> {
    load_str(
        text,
        Some(Path::new("/etc/tlsgate/tlsgate.yaml")),
        &Overrides::default(),
        &no_env,
    )
}

/// Values that parsers and validators get wrong.
fn hostile_value() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "~",
        "null",
        "[]",
        "{}",
        "''",
        "-1",
        "0",
        "1e400",
        "0x10",
        "99999999999999999999",
        "18446744073709551616",
        "true",
        "!!binary aGk=",
        "*alias",
        "&anchor x",
        "\"\\u0000\"",
        "'../../etc/passwd'",
        "0s",
        "1000000000000d",
        "-5s",
        "65536",
        "[a, [b, [c]]]",
        "{x: {y: {z: 1}}}",
        "? complex",
        ":",
        "- a",
        "|\n  text",
        ">-\n  text",
        "\"\t\"",
    ])
    .prop_map(str::to_owned)
}

#[derive(Debug, Clone)]
enum LineEdit {
    Remove(Index),
    Duplicate(Index),
    Swap(Index, Index),
    Indent(Index, usize),
    Dedent(Index),
    /// Replace what follows the first `: ` (or the line) with a hostile value.
    Value(Index, String),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        1 => any::<Index>().prop_map(LineEdit::Remove),
        1 => any::<Index>().prop_map(LineEdit::Duplicate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        1 => (any::<Index>(), 1usize..5).prop_map(|(at, n)| LineEdit::Indent(at, n)),
        1 => any::<Index>().prop_map(LineEdit::Dedent),
        3 => (any::<Index>(), hostile_value()).prop_map(|(at, v)| LineEdit::Value(at, v)),
    ]
}

fn edit_lines(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for edit in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match edit {
            LineEdit::Remove(at) => {
                lines.remove(at.index(n));
            }
            LineEdit::Duplicate(at) => {
                let line = lines[at.index(n)].clone();
                lines.insert(at.index(n), line);
            }
            LineEdit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            LineEdit::Indent(at, by) => lines[at.index(n)].insert_str(0, &" ".repeat(*by)),
            LineEdit::Dedent(at) => {
                let line = &mut lines[at.index(n)];
                *line = line.trim_start().to_owned();
            }
            LineEdit::Value(at, value) => {
                let line = &mut lines[at.index(n)];
                *line = match line.split_once(": ") {
                    Some((key, _)) => format!("{key}: {value}"),
                    None => value.clone(),
                };
            }
        }
    }
    lines.join("\n")
}

#[test]
fn fuzz_config_seeds_load_and_their_effective_config_loads_the_same() {
    for seed in seeds() {
        let settings = load(seed).unwrap_or_else(|error| panic!("{error}\n{seed}"));
        let printed = to_yaml(&settings);
        let again = load(&printed).unwrap_or_else(|error| panic!("{error}\n{printed}"));
        assert_eq!(
            to_yaml(&again),
            printed,
            "config check's output is a fixed point"
        );
    }
}

#[test]
fn fuzz_config_hostile_yaml_is_refused_in_bounded_time() {
    let deep = format!("listen: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let deep_map = format!("tls: {}1{}\n", "{a: ".repeat(100_000), "}".repeat(100_000));
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i", "j"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
    {
        laughs.push_str(&format!(
            "{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, \
             *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"
        ));
    }
    let long_key = format!("{}: 1\n", "k".repeat(1 << 20));
    for text in [deep, deep_map, laughs, long_key] {
        let started = std::time::Instant::now();
        assert!(
            load(&text).is_err(),
            "accepted: {}",
            &text[..80.min(text.len())]
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}

proptest! {
    #![proptest_config(fuzzing::config(2000))]

    /// Byte-level mutations (made UTF-8 again, as the file is read as text): no panic.
    #[test]
    fn fuzz_config_mutated_bytes_never_panic(
        bytes in mutated(seeds().iter().map(|s| s.as_bytes().to_vec()).collect()),
    ) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = load(&text);
    }

    /// Line-level edits and hostile values: no panic, and what loads prints a config that
    /// loads the same.
    #[test]
    fn fuzz_config_edited_lines_never_panic_and_round_trip(
        seed in prop::sample::select(seeds()),
        edits in prop::collection::vec(line_edit(), 1..5),
    ) {
        let text = edit_lines(seed, &edits);
        if let Ok(settings) = load(&text) {
            let printed = to_yaml(&settings);
            let again = load(&printed);
            prop_assert!(again.is_ok(), "{:?}\n{}", again.err(), printed);
            prop_assert_eq!(again.map(|s| to_yaml(&s)).ok(), Some(printed));
        }
    }
}
