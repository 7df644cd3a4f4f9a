use super::*;

/// A RowDescription body for `(name, type oid, format code)` columns.
pub(crate) fn row_description(cols: &[(&str, u32, i16)]) -> Vec<u8> {
    let mut b = (cols.len() as u16).to_be_bytes().to_vec();
    for (name, oid, format) in cols {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&0u32.to_be_bytes()); // table oid
        b.extend_from_slice(&0i16.to_be_bytes()); // column id
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes()); // type size
        b.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        b.extend_from_slice(&format.to_be_bytes());
    }
    b
}

/// A DataRow body for raw fields (`None` = NULL).
pub(crate) fn data_row(fields: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = (fields.len() as u16).to_be_bytes().to_vec();
    for f in fields {
        match f {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b
}

fn columns(cols: &[(&str, u32, i16)]) -> Columns {
    Columns::parse(&row_description(cols)).expect("valid row description")
}

#[test]
fn reads_binary_fields_by_index_and_name() -> Result<(), PgError> {
    let cols = columns(&[("n", 20, 1), ("name", 25, 1), ("maybe", 23, 1)]);
    let body = data_row(&[Some(&42i64.to_be_bytes()), Some(b"abc"), None]);
    let row = Row::new(&body, &cols)?;
    assert_eq!(row.len(), 3);
    assert_eq!(row.get::<i64>(0)?, 42);
    assert_eq!(row.get::<i64>("n")?, 42);
    assert_eq!(row.get::<&str>("name")?, "abc");
    assert_eq!(row.try_get::<String>(1)?, "abc");
    assert_eq!(row.get::<Option<i32>>("maybe")?, None);
    assert!(row.is_null(2)? && !row.is_null("n")?);
    assert_eq!(row.raw(2), Some(None));
    assert_eq!(row.raw(3), None);
    Ok(())
}

#[test]
fn borrowed_values_outlive_the_row_view() -> Result<(), PgError> {
    let cols = columns(&[("t", 25, 1)]);
    let body = data_row(&[Some(b"kept")]);
    let s: &str = {
        let row = Row::new(&body, &cols)?;
        row.get(0)?
    };
    assert_eq!(s, "kept");
    Ok(())
}

#[test]
fn errors_name_the_column_and_the_types() {
    let cols = columns(&[("n", 23, 1), ("square", 23, 1)]);
    let body = data_row(&[Some(&1i32.to_be_bytes()), None]);
    let row = Row::new(&body, &cols).expect("valid row");
    let msg = |r: Result<i64, PgError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        msg(row.get::<i64>("n")),
        "conversion error: column \"n\" (index 0) has type int4, which cannot be read as i64"
    );
    let e = row.get::<i32>("nope").err();
    assert!(e.as_ref().is_some_and(PgError::is_conversion));
    assert_eq!(
        e.map(|e| e.to_string()).unwrap_or_default(),
        "conversion error: no column named \"nope\" in a row of 2 columns (n, square)"
    );
    let e = row
        .get::<i32>(7)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("no column index 7"), "{e}");
    let e = row
        .get::<i32>("square")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("column \"square\" (index 1, type int4) could not be read as i32"),
        "{e}"
    );
}

#[test]
fn text_columns_are_read_with_get_text() -> Result<(), PgError> {
    let cols = columns(&[("v", 23, 0), ("w", 25, 0)]);
    let body = data_row(&[Some(b"42"), None]);
    let row = Row::new(&body, &cols)?;
    assert_eq!(row.get_text(0)?, Some("42"));
    assert_eq!(row.get_text("w")?, None);
    assert!(row
        .get::<i32>(0)
        .is_err_and(|e| e.to_string().contains("text format")));
    let bin = columns(&[("v", 23, 1)]);
    let body = data_row(&[Some(&[0, 0, 0, 1])]);
    let row = Row::new(&body, &bin)?;
    assert!(row
        .get_text(0)
        .is_err_and(|e| e.to_string().contains("binary format")));
    Ok(())
}

#[test]
fn malformed_rows_are_protocol_errors() {
    let cols = columns(&[("a", 25, 1)]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "more fields than described",
            data_row(&[Some(b"x"), Some(b"y")]),
        ),
        ("fewer fields", data_row(&[])),
        ("truncated", data_row(&[Some(b"abc")])[..8].to_vec()),
        ("negative length", vec![0, 1, 0xff, 0xff, 0xff, 0xfe]),
        ("trailing", [data_row(&[Some(b"x")]), vec![0]].concat()),
        ("no count", vec![0]),
    ];
    for (what, body) in cases {
        let e = Row::new(&body, &cols).err();
        assert!(
            e.as_ref().is_some_and(PgError::is_protocol),
            "{what}: {e:?}"
        );
    }
}

#[test]
fn fields_past_the_inline_offsets_are_found() -> Result<(), PgError> {
    let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    let spec: Vec<(&str, u32, i16)> = names.iter().map(|n| (n.as_str(), 23, 1)).collect();
    let cols = columns(&spec);
    let values: Vec<[u8; 4]> = (0..40i32).map(|i| (i * 10).to_be_bytes()).collect();
    let fields: Vec<Option<&[u8]>> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (i % 7 != 3).then_some(&v[..]))
        .collect();
    let body = data_row(&fields);
    let row = Row::new(&body, &cols)?;
    for i in 0..40usize {
        let expected = (i % 7 != 3).then_some(i as i32 * 10);
        assert_eq!(row.get::<Option<i32>>(i)?, expected, "column {i}");
    }
    assert_eq!(row.get::<i32>("c39")?, 390);
    Ok(())
}

#[test]
fn row_description_is_validated() {
    assert!(
        Columns::parse(&row_description(&[("a", 23, 2)])).is_err(),
        "format code 2"
    );
    let mut b = row_description(&[("a", 23, 1)]);
    b.pop();
    assert!(Columns::parse(&b).is_err(), "truncated");
    // a huge count with no data must not allocate for it, just fail
    assert!(Columns::parse(&[0xff, 0xff]).is_err());
    let mut cols = columns(&[("a", 23, 0), ("b", 999_999, 0)]);
    assert_eq!(cols.get(1).map(|c| c.type_().name()), Some("oid999999"));
    cols.set_format(Format::Binary);
    assert!(cols.iter().all(|c| c.format() == Format::Binary));
    assert_eq!(cols.index_of("b"), Some(1));
}

#[test]
fn parameter_descriptions_parse() {
    let body = [0, 2, 0, 0, 0, 23, 0, 0, 0, 25];
    let types = parameter_types(&body).expect("valid");
    assert_eq!(types, vec![Type::INT4, Type::TEXT]);
    assert!(parameter_types(&body[..7]).is_err());
    assert!(parameter_types(&[0, 0, 1]).is_err());
}

#[test]
fn placeholders_are_marked_and_resolved_column_by_column() {
    let mood = Type::new(
        "mood".into(),
        90_001,
        postgres_types::Kind::Enum(vec!["a".into()]),
        "public".into(),
    );
    let known = columns(&[("n", 20, 1)]);
    assert!(!known.unresolved());
    let mut cols = columns(&[("n", 20, 1), ("m", 90_001, 1), ("x", 90_002, 1)]);
    assert!(cols.unresolved());
    assert!(is_placeholder(cols.get(1).expect("column").type_()));
    assert!(!is_placeholder(&mood));
    assert_eq!(
        cols.placeholder_oids().collect::<Vec<_>>(),
        [90_001, 90_002]
    );
    // An earlier description of the same statement: its types go where the OIDs agree.
    let mut described = columns(&[("n", 20, 1), ("m", 90_001, 1), ("x", 90_002, 1)]);
    described.resolve_with(|oid| (oid == 90_001).then(|| mood.clone()));
    assert!(described.unresolved(), "90002 is left");
    cols.resolve_like(&described);
    assert_eq!(cols.get(1).expect("column").type_(), &mood);
    assert!(is_placeholder(cols.get(2).expect("column").type_()));
    assert!(cols.unresolved());
    cols.resolve_with(|oid| {
        (oid == 90_002).then(|| {
            Type::new(
                "y".into(),
                oid,
                postgres_types::Kind::Simple,
                "public".into(),
            )
        })
    });
    assert!(!cols.unresolved());
    assert_eq!(cols.placeholder_oids().count(), 0);
}

#[test]
fn a_repeated_description_is_recognised_and_any_change_is_not() -> Result<(), PgError> {
    let body = row_description(&[("a", 23, 1), ("b", 25, 1)]);
    let mut cols = Columns::parse(&body)?;
    // A statement's Describe says text; the cached description says binary: still the same.
    cols.set_format(Format::Binary);
    assert!(cols.same_description(&body));
    for other in [
        row_description(&[("a", 23, 1)]),
        row_description(&[("a", 23, 1), ("b", 25, 1), ("c", 25, 1)]),
        row_description(&[("a", 23, 1), ("B", 25, 1)]),
        row_description(&[("a", 20, 1), ("b", 25, 1)]),
    ] {
        assert!(!cols.same_description(&other));
    }
    // Truncated, trailing bytes, a bad format code: not the same (the parse reports it).
    assert!(!cols.same_description(&body[..body.len() - 1]));
    let mut longer = body.clone();
    longer.push(0);
    assert!(!cols.same_description(&longer));
    let mut bad_format = body.clone();
    let n = bad_format.len();
    bad_format[n - 1] = 7;
    assert!(!cols.same_description(&bad_format));
    Ok(())
}
