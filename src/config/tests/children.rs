//! Child identities: tables and children.d files, defaults, and errors that name the file,
//! the key and the fix.

use super::*;

const PUMP: &str = r#"
[children.pump-7]
device_id = "gw-pump-7"
name = "Pump 7"
serial_number = "P-7"
allow_uids = [4242]
"#;

#[test]
fn tables_and_files_with_defaults() {
    let f = Fixture::new();
    f.write(
        "etc/children.d/meter-2.toml",
        "device_id = \"gw-meter-2\"\nname = \"Meter 2\"\nserial_number = \"M-2\"\nsigner_gids = [50]\n[key]\nbits = 3072\n",
    );
    // Hidden files and other extensions are not children.
    f.write("etc/children.d/.meter-3.toml", "junk");
    f.write("etc/children.d/notes.txt", "junk");
    let c = f.load(&format!("{MINIMAL}{PUMP}")).unwrap();
    let names: Vec<&str> = c.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["meter-2", "pump-7"]);
    let state = f.path("home/.local/share/asset-agent");
    let meter = &c.children[0];
    assert_eq!(meter.file, Some(f.path("etc/children.d/meter-2.toml")));
    assert_eq!(meter.state_dir, state.join("children/meter-2"));
    assert_eq!(
        meter.key.file(),
        Some(state.join("children/meter-2/device-key.pem").as_path())
    );
    assert_eq!(meter.key.bits, 3072);
    assert_eq!(meter.access.signer_gids, [50]);
    assert_eq!(meter.asset.token_name, "Asset Token: gw-meter-2");
    let pump = &c.children[1];
    assert_eq!(pump.file, None);
    assert_eq!(pump.access.allow_uids, [4242]);
    assert_eq!(c.gateway.children_dir, Some(f.path("etc/children.d")));
}

#[test]
fn no_children_by_default() {
    let f = Fixture::new();
    let c = f.load(MINIMAL).unwrap();
    assert!(c.children.is_empty());
}

#[test]
fn a_bad_child_file_names_the_file_and_the_fix() {
    let f = Fixture::new();
    f.write(
        "etc/children.d/meter-2.toml",
        "device_id = \"gw-meter-2\"\nserial_number = \"M-2\"\naccount_id = \"003000000000000\"\n",
    );
    let text = err_text(f.load(MINIMAL));
    let file = f.path("etc/children.d/meter-2.toml").display().to_string();
    assert!(
        text.contains(&format!(
            "missing `children.meter-2.name`: set name = \"...\" in {file}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("invalid `children.meter-2.account_id` in {file}")),
        "{text}"
    );
    // An unknown key in a child file names the file.
    let f = Fixture::new();
    f.write("etc/children.d/tag-9.toml", "devce_id = \"x\"\n");
    let text = err_text(f.load(MINIMAL));
    assert!(text.contains("devce_id"), "{text}");
    assert!(
        text.contains(&f.path("etc/children.d/tag-9.toml").display().to_string()),
        "{text}"
    );
}

#[test]
fn names_ids_serials_and_keys_must_not_repeat() {
    let f = Fixture::new();
    f.write(
        "etc/children.d/pump-7.toml",
        "device_id = \"other\"\nname = \"x\"\nserial_number = \"x\"\n",
    );
    f.write(
        "etc/children.d/Bad Name.toml",
        "device_id = \"y\"\nname = \"y\"\nserial_number = \"y\"\n",
    );
    let twin =
        "\n[children.twin]\ndevice_id = \"other\"\nname = \"Twin\"\nserial_number = \"SN-0007\"\n";
    let text = err_text(f.load(&format!("{MINIMAL}{PUMP}{twin}")));
    assert!(text.contains("is declared twice"), "{text}");
    assert!(text.contains("rename the file"), "{text}");
    assert!(
        text.contains("children.twin.device_id") && text.contains("own device id"),
        "{text}"
    );
    assert!(
        text.contains("children.twin.serial_number") && text.contains("asset.serial_number"),
        "{text}"
    );
    // Two children on one key file.
    let f = Fixture::new();
    let shared = format!(
        "{MINIMAL}{PUMP}\n[children.pump-7.key]\npath = \"/k.pem\"\n[children.b]\ndevice_id = \"b\"\nname = \"b\"\nserial_number = \"b\"\n[children.b.key]\npath = \"/k.pem\"\n"
    );
    let text = err_text(f.load(&shared));
    assert!(
        text.contains("children.pump-7.key.path") && text.contains("its own key"),
        "{text}"
    );
}

#[test]
fn the_children_dir_can_be_moved() {
    let f = Fixture::new();
    let dir = f.path("gw");
    f.write(
        "gw/pump-7.toml",
        "device_id = \"a\"\nname = \"a\"\nserial_number = \"a\"\n",
    );
    let c = f
        .load(&format!(
            "{MINIMAL}\n[gateway]\nchildren_dir = \"{}\"\n",
            dir.display()
        ))
        .unwrap();
    assert_eq!(c.children.len(), 1);
    let text = err_text(f.load(&format!("{MINIMAL}\n[gateway]\nchildren_dir = \"gw\"\n")));
    assert!(
        text.contains("gateway.children_dir") && text.contains("absolute"),
        "{text}"
    );
}

/// A child whose key path is the gateway's (or another child's) spelt differently, through
/// `..`, a symlinked directory or a hard link, is refused: the files are compared, not the
/// text. The message names the key as it is written (`key.path`).
#[test]
fn one_key_file_under_two_spellings_is_refused() {
    let f = Fixture::new();
    let state = f.path("state");
    fs::create_dir_all(state.join("run")).unwrap();
    f.write("state/device-key.pem", "not a key; only compared");
    std::os::unix::fs::symlink(&state, f.path("alias")).unwrap();
    fs::hard_link(state.join("device-key.pem"), f.path("linked.pem")).unwrap();
    let gateway = format!("{MINIMAL}\n[state]\ndir = \"{}\"\n", state.display());
    let child = |path: &Path| {
        format!(
            "{gateway}{PUMP}\n[children.pump-7.key]\npath = \"{}\"\n",
            path.display()
        )
    };
    for spelling in [
        state.join("run/../device-key.pem"),
        f.path("alias/device-key.pem"),
        f.path("linked.pem"),
    ] {
        let text = err_text(f.load(&child(&spelling)));
        assert!(
            text.contains("children.pump-7.key.path") && text.contains("its own key"),
            "{}: {text}",
            spelling.display()
        );
        assert!(text.contains("`key.path`"), "{text}");
        assert!(!text.contains("key.key.path"), "{text}");
    }
    // A key file that does not exist yet, through a symlinked directory: the same place.
    let text = err_text(f.load(&format!(
        "{gateway}{PUMP}\n[children.pump-7.key]\npath = \"{}\"\n[children.b]\ndevice_id = \"b\"\nname = \"b\"\nserial_number = \"b\"\n[children.b.key]\npath = \"{}\"\n",
        state.join("new.pem").display(),
        f.path("alias/new.pem").display()
    )));
    assert!(
        text.contains("children.pump-7.key.path") && text.contains("`children.b.key.path`"),
        "{text}"
    );
    // Its own file is fine.
    f.load(&child(&state.join("run/pump-7.pem"))).unwrap();
}

/// A config file, a drop-in or a child's file that group or others could change, or that
/// sits in a directory they could write, is not read: whoever can write it could give
/// itself an identity or a role. The error names the file (or directory) and the fix.
#[test]
fn config_files_others_could_change_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let chmod =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    let f = Fixture::new();
    f.load(MINIMAL).unwrap();
    let main = f.path("etc/agent.toml");
    for mode in [0o666, 0o664, 0o646] {
        chmod(&main, mode);
        let text = err_text(Config::load(&f.opts(Some(main.clone()))));
        assert!(
            text.contains(&format!("chmod go-w {}", main.display())),
            "{mode:o}: {text}"
        );
    }
    chmod(&main, 0o644);
    Config::load(&f.opts(Some(main.clone()))).unwrap();

    // A child's file, loose, then in a directory anyone can write.
    let child = f.write(
        "etc/children.d/meter-2.toml",
        "device_id = \"m\"\nname = \"m\"\nserial_number = \"m\"\nsigner_uids = [1001]\n",
    );
    chmod(&child, 0o666);
    let text = err_text(Config::load(&f.opts(Some(main.clone()))));
    assert!(
        text.contains(&format!("chmod go-w {}", child.display())),
        "{text}"
    );
    chmod(&child, 0o644);
    let dir = f.path("etc/children.d");
    chmod(&dir, 0o777);
    let text = err_text(Config::load(&f.opts(Some(main.clone()))));
    assert!(
        text.contains(&format!("chmod go-w {}", dir.display())),
        "{text}"
    );
    chmod(&dir, 0o755);
    assert_eq!(
        Config::load(&f.opts(Some(main.clone())))
            .unwrap()
            .children
            .len(),
        1
    );

    // A drop-in.
    let drop_in = f.write("etc/agent.d/10-api.toml", "[api]\nallow_uids = [1001]\n");
    chmod(&drop_in, 0o664);
    let text = err_text(Config::load(&f.opts(Some(main.clone()))));
    assert!(
        text.contains(&format!("chmod go-w {}", drop_in.display())),
        "{text}"
    );
    chmod(&drop_in, 0o644);
    Config::load(&f.opts(Some(main))).unwrap();
}
