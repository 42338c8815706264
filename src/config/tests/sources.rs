//! Reading config files: what the `config` crate's own file source would get wrong (each
//! test fails the day the crate fixes it, and `source.rs` can then use `config::File`),
//! and the exact reading and quoting that `source.rs` does instead.

use config::{File, FileFormat};

use super::*;

/// The value of `a.b` from a `config` crate source, and its origin.
fn library_value(source: File<config::FileSourceFile, FileFormat>) -> (String, Option<String>) {
    let built = config::Config::builder()
        .add_source(source)
        .build()
        .unwrap();
    let value = built.get_table("a").unwrap().remove("b").unwrap();
    let origin = value.origin().map(str::to_owned);
    (value.into_string().unwrap(), origin)
}

#[test]
fn config_file_names_files_relative_to_the_working_directory() {
    let f = Fixture::new();
    let path = f.write("etc/agent.toml", "[a]\nb = \"x\"\n");
    let (_, origin) = library_value(File::from(path.as_path()));
    let origin = origin.unwrap();
    // Not the path as given: `../../tmp/.tmpXXXX/etc/agent.toml` from the crate's directory.
    assert_ne!(origin, path.display().to_string());
    assert!(origin.starts_with(".."), "{origin}");
    // Ours keeps the path as given.
    let err = err_text(f.load(&format!("{MINIMAL}\nbogus = 1\n")));
    assert!(err.contains(&format!("in {}", path.display())), "{err}");
}

#[test]
fn config_file_loads_another_file_when_the_exact_one_is_missing() {
    let f = Fixture::new();
    f.write("etc/agent.toml", "[a]\nb = \"from agent.toml\"\n");
    let asked = f.path("etc/agent");
    let (value, _) = library_value(File::from(asked.as_path()).format(FileFormat::Toml));
    assert_eq!(value, "from agent.toml");
    // Ours: the file given does not exist.
    match Config::load(&f.opts(Some(asked.clone()))) {
        Err(Error::FileMissing { path }) => assert_eq!(path, asked),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_file_replaces_bytes_that_are_not_utf8() {
    let f = Fixture::new();
    let path = f.path("etc/agent.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, b"[a]\nb = \"caf\xe9\"\n").unwrap();
    let (value, _) = library_value(File::from(path.as_path()));
    assert_eq!(value, "caf\u{fffd}");
    // Ours refuses the file.
    fs::write(&path, [MINIMAL.as_bytes(), b"# caf\xe9\n"].concat()).unwrap();
    match Config::load(&f.opts(Some(path.clone()))) {
        Err(Error::ReadFile { path: p, .. }) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_file_from_str_has_no_origin() {
    let source = File::from_str("[a]\nb = \"x\"\n", FileFormat::Toml);
    let built = config::Config::builder()
        .add_source(source)
        .build()
        .unwrap();
    let value = built.get_table("a").unwrap().remove("b").unwrap();
    assert_eq!(value.origin(), None);
}

/// The value as written is found by the TOML parser, wherever TOML allows it to be.
#[test]
fn a_non_string_is_quoted_back_as_written() {
    let cases = [
        (
            "[asset] # the pump",
            "[asset] # the pump\nserial_number = 0x1F\nname = \"P\"",
        ),
        ("inline", "asset = { name = \"P\", serial_number = 0x1F }"),
        ("dotted", "asset.name = \"P\"\nasset.serial_number = 0x1F"),
        (
            "quoted key",
            "[\"asset\"]\n\"serial_number\" = 0x1F\nname = \"P\"",
        ),
    ];
    for (what, asset) in cases {
        let f = Fixture::new();
        // First, so no table header above it claims the keys.
        let rest = MINIMAL.replace(
            "[asset]\nname = \"Pump 7\"\nserial_number = \"SN-0007\"",
            "",
        );
        let text = format!("{asset}\n{rest}");
        let err = err_text(f.load(&text));
        assert!(
            err.contains("quote it: serial_number = \"0x1F\""),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_non_string_in_a_child_file_is_quoted_back_as_written() {
    let f = Fixture::new();
    let file = f.write(
        "etc/children.d/meter-2.toml",
        "device_id = \"gw-meter-2\"\nname = \"Meter 2\"\nserial_number = 0x2A\n",
    );
    let err = err_text(f.load(MINIMAL));
    for want in [
        file.display().to_string().as_str(),
        "serial_number",
        "must be a string",
        "quote it: serial_number = \"0x2A\"",
    ] {
        assert!(err.contains(want), "{want:?} missing in: {err}");
    }
}
