//! Tests of the generated `sqlstate.rs`.

use crate::sqlstate::{SqlState, ALL};
use std::collections::HashSet;

#[test]
fn constants_hold_their_codes() {
    assert_eq!(SqlState::UNIQUE_VIOLATION.code(), "23505");
    assert_eq!(SqlState::T_R_SERIALIZATION_FAILURE.code(), "40001");
    assert_eq!(SqlState::T_R_DEADLOCK_DETECTED.code(), "40P01");
    assert_eq!(SqlState::QUERY_CANCELED.code(), "57014");
    assert_eq!(SqlState::UNDEFINED_TABLE.code(), "42P01");
    assert_eq!(SqlState::INVALID_PASSWORD.code(), "28P01");
    assert_eq!(SqlState::SUCCESSFUL_COMPLETION.code(), "00000");
    assert_eq!(SqlState::UNIQUE_VIOLATION.class(), "23");
    assert_eq!(SqlState::UNIQUE_VIOLATION.to_string(), "23505");
    assert_eq!(
        format!("{:?}", SqlState::UNIQUE_VIOLATION),
        "SqlState(23505)"
    );
}

#[test]
fn every_constant_round_trips_through_from_code() {
    assert!(ALL.len() >= 260, "only {} constants", ALL.len());
    let mut names = HashSet::new();
    for (name, state) in ALL {
        assert!(names.insert(*name), "{name} twice");
        let code = state.code();
        assert_eq!(code.len(), 5, "{name}: {code:?}");
        assert_eq!(&SqlState::from_code(code), state, "{name}");
    }
    // Codes with two macro names compare equal under both.
    assert_eq!(
        SqlState::ARRAY_SUBSCRIPT_ERROR,
        SqlState::ARRAY_ELEMENT_ERROR
    );
    assert_eq!(SqlState::UNDEFINED_DATABASE, SqlState::INVALID_CATALOG_NAME);
}

#[test]
fn unknown_codes_are_kept_and_compare_by_code() {
    let s = SqlState::from_code("ZZ123");
    assert_eq!(s.code(), "ZZ123");
    assert_eq!(s, SqlState::from_code("ZZ123"));
    assert_ne!(s, SqlState::UNIQUE_VIOLATION);
    let mut set = HashSet::new();
    set.insert(SqlState::from_code("23505"));
    assert!(set.contains(&SqlState::UNIQUE_VIOLATION));
    // Not five ASCII characters: kept as given, no panic.
    assert_eq!(SqlState::from_code("é").class(), "é");
    assert_eq!(SqlState::from_code("").code(), "");
}

#[test]
fn sqlstate_crosses_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<SqlState>();
}
