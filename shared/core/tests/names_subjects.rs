//! Property tests of the one place names and ids are validated before they reach NATS
//! subjects, stream and consumer names and storage keys: whatever string comes in, a value that
//! parses never carries `.`, `*`, `>`, whitespace or control characters, and every subject
//! built from parsed values has the fixed token count of its shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fnmesh_core::ids::NodeId;
use fnmesh_core::subjects::{self, BusPrefix, BusRole};
use fnmesh_core::{Checksum, FunctionName, InvocationId, Namespace};
use proptest::prelude::*;

/// Whether one subject token is safe: non-empty, no wildcard, separator, whitespace or control.
fn token_ok(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
}

fn assert_tokens(subject: &str, count: usize) {
    let tokens: Vec<&str> = subject.split('.').collect();
    assert_eq!(tokens.len(), count, "{subject:?}");
    for t in tokens {
        assert!(token_ok(t), "bad token {t:?} in {subject:?}");
    }
}

/// A name as a single NATS token or stream/consumer name: also no `/`, `\`, `$` or NUL.
fn name_ok(name: &str) -> bool {
    token_ok(name) && !name.contains(['/', '\\', '$', '\0'])
}

/// Strings built to hit the interesting characters often, plus arbitrary unicode.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        ".{0,80}",
        "[a-z0-9.*> \t\r\n\x00\x7f$_/\\\\-]{0,70}",
        "[a-z][a-z0-9-]{0,70}[.*> \t\n\x00]?",
    ]
}

fn check_all_builders(ns: &Namespace, f: &FunctionName, p: &BusPrefix) {
    let id = InvocationId::new();
    assert_tokens(&subjects::invocation(ns, f), 5);
    assert_tokens(&subjects::node_event(&id), 4);
    assert_tokens(&subjects::bus_invocation(p, ns, f), 6);
    assert_tokens(&subjects::bus_node_event(p, &id), 5);
    assert_tokens(&subjects::bus_work_ready(p), 4);
    assert_tokens(&subjects::bus_consumer_missing(p), 4);
    assert_tokens(&subjects::request(f), 4);
    assert_eq!(
        subjects::parse_request(&subjects::request(f))
            .unwrap()
            .function,
        *f
    );
    let all = subjects::bus_invocations_all(p);
    assert!(all.ends_with(".inv.>"));
    assert_tokens(all.trim_end_matches(".>"), 4);
    for role in [BusRole::Invocations, BusRole::Events, BusRole::DeadLetters] {
        assert!(name_ok(&subjects::bus_stream(p, role)));
        assert!(name_ok(&subjects::bus_consumer(p, role)));
    }
    let consumer = subjects::bus_function_consumer(p, ns, f);
    assert!(name_ok(&consumer), "{consumer:?}");
    assert_eq!(
        subjects::parse_function_consumer(p, &consumer),
        Some((ns.clone(), f.clone(), fnmesh_core::Priority::Normal))
    );
    for priority in fnmesh_core::Priority::ALL {
        let lane = subjects::bus_function_consumer_lane(p, ns, f, priority);
        assert!(name_ok(&lane), "{lane:?}");
        assert_eq!(subjects::function_consumer_priority(&lane), priority);
        assert_eq!(
            subjects::parse_function_consumer(p, &lane),
            Some((ns.clone(), f.clone(), priority))
        );
        let subject = subjects::bus_invocation_lane(p, ns, f, priority);
        assert_tokens(&subject, if priority.is_normal() { 6 } else { 7 });
        assert_eq!(
            subjects::parse_bus_invocation(p, &subject),
            Some((ns.clone(), f.clone(), priority))
        );
    }
    let advisory = subjects::max_deliveries_advisory(p, &consumer);
    assert_tokens(advisory.trim_start_matches('$'), 7);
    assert!(name_ok(&subjects::node_registry_bucket(p)));
    assert!(name_ok(&subjects::code_bucket(p)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsed_names_are_single_safe_tokens(s in hostile()) {
        for parsed in [
            FunctionName::parse(&s).map(|n| n.to_string()).ok(),
            Namespace::parse(&s).map(|n| n.to_string()).ok(),
            BusPrefix::parse(&s).map(|n| n.to_string()).ok(),
            NodeId::parse(&s).map(|n| n.to_string()).ok(),
        ]
        .into_iter()
        .flatten()
        {
            prop_assert!(name_ok(&parsed), "{parsed:?} accepted");
            prop_assert!(parsed.len() <= 63);
            prop_assert_eq!(&parsed, &s, "parsing never rewrites the input");
        }
        // Serde goes through the same check.
        let json = serde_json::to_string(&s).unwrap();
        if let Ok(n) = serde_json::from_str::<FunctionName>(&json) {
            prop_assert!(FunctionName::parse(n.as_str()).is_ok());
        } else {
            prop_assert!(FunctionName::parse(&s).is_err());
        }
    }

    #[test]
    fn subjects_built_from_any_accepted_input_keep_their_shape(
        ns in hostile(),
        f in hostile(),
        p in hostile(),
    ) {
        if let (Ok(ns), Ok(f), Ok(p)) = (
            Namespace::parse(&ns),
            FunctionName::parse(&f),
            BusPrefix::parse(&p),
        ) {
            check_all_builders(&ns, &f, &p);
        }
    }

    #[test]
    fn subjects_built_from_generated_valid_names_keep_their_shape(
        ns in "[a-z][a-z0-9-]{0,62}",
        f in "[a-z][a-z0-9-]{0,62}",
        p in "[a-z0-9][a-z0-9-]{0,31}",
    ) {
        check_all_builders(
            &Namespace::parse(&ns).unwrap(),
            &FunctionName::parse(&f).unwrap(),
            &BusPrefix::parse(&p).unwrap(),
        );
    }

    #[test]
    fn request_subjects_from_clients_never_yield_an_unsafe_name(s in hostile()) {
        let subject = format!("fnmesh.v1.req.{s}");
        if let Ok(target) = subjects::parse_request(&subject) {
            prop_assert!(name_ok(target.function.as_str()));
            prop_assert_eq!(target.subject(), subject);
        }
        if subjects::reply_allowed(&s) {
            // NATS splits its protocol lines on ASCII whitespace only.
            prop_assert!(s.starts_with("_INBOX.") || s.starts_with("_R_."), "{:?}", s);
            for t in s.split('.') {
                prop_assert!(!t.is_empty() && t != "*" && t != ">", "{:?}", s);
                prop_assert!(!t.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()));
            }
        }
    }

    #[test]
    fn ids_and_checksums_from_any_input_are_safe(s in hostile()) {
        if let Ok(id) = InvocationId::parse(&s) {
            prop_assert!(name_ok(&id.to_string()));
            assert_tokens(&subjects::node_event(&id), 4);
        }
        if let Ok(c) = Checksum::parse(&s) {
            let key = subjects::code_key(&c);
            prop_assert!(key.starts_with("code/sha256/"));
            prop_assert!(key["code/sha256/".len()..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}

#[test]
fn the_characters_the_issue_names_are_refused_in_every_position() {
    for bad in [
        ".", "*", ">", " ", "\t", "\n", "\r", "\0", "\x1b", "\u{7f}", "\u{a0}", "\u{2028}",
    ] {
        for candidate in [
            format!("a{bad}"),
            format!("{bad}a"),
            format!("a{bad}b"),
            bad.to_owned(),
        ] {
            assert!(FunctionName::parse(&candidate).is_err(), "{candidate:?}");
            assert!(Namespace::parse(&candidate).is_err(), "{candidate:?}");
            assert!(BusPrefix::parse(&candidate).is_err(), "{candidate:?}");
            assert!(NodeId::parse(&candidate).is_err(), "{candidate:?}");
            assert!(InvocationId::parse(&candidate).is_err(), "{candidate:?}");
        }
    }
}
