//! Whether the service's sandbox leaves a PKCS#11 key's hardware within the agent's reach.
//!
//! Two modules need more than the shipped unit gives: tpm2-pkcs11 opens the TPM's device
//! node (`/dev/tpmrm0`, hidden by `PrivateDevices=yes`), and SoftHSM2 writes its token
//! directory even to sign (read-only under `ProtectSystem=strict`). The drop-ins in the
//! package's `examples/systemd/` give back exactly that. `check` usually runs outside the
//! unit: it reads the unit's effective settings with `systemctl show`. Inside a service
//! (`INVOCATION_ID` set) it also looks at what this process itself sees.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Finding;
use crate::config::{Config, KeyBackend};

const CHECK: &str = "sandbox";
const UNIT: &str = "asset-agent.service";
/// Where the .deb installs the drop-ins.
const DROPINS: &str = "/usr/share/doc/asset-agent/examples/systemd";
const TPM_DEVICE: &str = "/dev/tpmrm0";
const SOFTHSM_CONF: &str = "/etc/softhsm/softhsm2.conf";
const SOFTHSM_TOKENDIR: &str = "/var/lib/softhsm/tokens";
/// The unit settings `check` reads.
const PROPERTIES: [&str; 10] = [
    "LoadState",
    "ProtectSystem",
    "ProtectHome",
    "PrivateDevices",
    "DevicePolicy",
    "DeviceAllow",
    "BindPaths",
    "ReadWritePaths",
    "StateDirectory",
    "Environment",
];

/// What a key's module needs from the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    /// A device node, opened read-write (tpm2-pkcs11's TCTI).
    Device { path: PathBuf, module: PathBuf },
    /// A directory it writes (SoftHSM2's token directory).
    Writable { dir: PathBuf, module: PathBuf },
}

/// The unit's effective settings, as `systemctl show` prints them.
#[derive(Debug, Default, Clone)]
struct Unit {
    values: Vec<(String, String)>,
}

pub(super) fn check(config: &Config) -> Vec<Finding> {
    let mut modules: Vec<&Path> = Vec::new();
    let keys = std::iter::once(&config.key).chain(config.children.iter().map(|c| &c.key));
    for key in keys {
        if let KeyBackend::Pkcs11(p) = &key.backend
            && !modules.contains(&p.module.as_path())
        {
            modules.push(&p.module);
        }
    }
    if modules.is_empty() {
        return Vec::new();
    }
    let unit = systemctl_show();
    let env = |name: &str| {
        unit.as_ref()
            .and_then(|u| u.environment(name))
            .or_else(|| std::env::var(name).ok())
    };
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let needs: Vec<Need> = modules.iter().flat_map(|m| needs(m, &env, &read)).collect();
    if needs.is_empty() {
        return Vec::new();
    }
    let in_service = std::env::var_os("INVOCATION_ID").is_some();
    let mut out = Vec::new();
    for need in &needs {
        let hidden = match &unit {
            Some(u) => u.hides(need),
            None => None,
        }
        .or_else(|| in_service.then(|| hidden_here(need)).flatten());
        let seen_by = if unit.is_some() {
            format!("{UNIT}'s sandbox gives the agent")
        } else if in_service {
            "this service sees".to_owned()
        } else {
            format!("no {UNIT} known to systemd here, so no sandbox hides")
        };
        out.push(match hidden {
            Some(why) => Finding::error(CHECK, why, fix(need)),
            None => Finding::ok(CHECK, format!("{seen_by} {}", thing(need))),
        });
    }
    out
}

/// What `module` needs, by its file name; `env` reads the unit's (or this process's)
/// environment, `read` a file.
fn needs(
    module: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Vec<Need> {
    let name = module
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let module = module.to_owned();
    if name.contains("tpm2_pkcs11") {
        // The TCTI: "device:/dev/tpmrm0", "device" (its default node), or another transport
        // (tabrmd, swtpm, mssim) that needs no device node here.
        let path = match env("TPM2_PKCS11_TCTI").or_else(|| env("TCTI")) {
            None => Some(PathBuf::from(TPM_DEVICE)),
            Some(tcti) => match tcti.split_once(':') {
                Some(("device", p)) if !p.is_empty() => Some(PathBuf::from(p)),
                None if tcti == "device" => Some(PathBuf::from(TPM_DEVICE)),
                _ => None,
            },
        };
        return path
            .map(|path| Need::Device { path, module })
            .into_iter()
            .collect();
    }
    if name.contains("softhsm2") {
        let conf = env("SOFTHSM2_CONF").map_or_else(|| PathBuf::from(SOFTHSM_CONF), PathBuf::from);
        let dir = read(&conf)
            .and_then(|text| tokendir(&text))
            .unwrap_or_else(|| PathBuf::from(SOFTHSM_TOKENDIR));
        return vec![Need::Writable { dir, module }];
    }
    Vec::new()
}

/// `directories.tokendir` in a softhsm2.conf.
fn tokendir(conf: &str) -> Option<PathBuf> {
    conf.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        let value = value.trim().trim_end_matches('/');
        (key.trim() == "directories.tokendir" && !value.is_empty()).then(|| PathBuf::from(value))
    })
}

/// The unit's settings, when systemd knows the unit; `None` where there is no systemd or
/// no such unit (the agent runs some other way: nothing to say about a sandbox).
fn systemctl_show() -> Option<Unit> {
    let mut cmd = Command::new("systemctl");
    cmd.arg("show").arg(UNIT);
    for p in PROPERTIES {
        cmd.arg("-p").arg(p);
    }
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let unit = Unit::parse(&String::from_utf8_lossy(&out.stdout));
    (unit.get("LoadState") == Some("loaded")).then_some(unit)
}

impl Unit {
    fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { values }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a list setting (systemctl prints some as one line per entry, some as
    /// one space-separated line).
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn yes(&self, key: &str) -> bool {
        matches!(self.get(key), Some("yes" | "true" | "1" | "on"))
    }

    fn environment(&self, name: &str) -> Option<String> {
        self.all("Environment")
            .flat_map(str::split_whitespace)
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    }

    /// Why the unit hides what `need` names, or `None` when it gives it.
    fn hides(&self, need: &Need) -> Option<String> {
        match need {
            Need::Device { path, module } => {
                let private = self.yes("PrivateDevices");
                let bound = self
                    .all("BindPaths")
                    .flat_map(str::split_whitespace)
                    .any(|e| {
                        let mut parts = e.trim_start_matches('-').split(':');
                        let src = parts.next().unwrap_or_default();
                        let dst = parts.next().unwrap_or(src);
                        Path::new(dst) == path
                    });
                let allowed = self.all("DeviceAllow").any(|v| {
                    v.split_whitespace()
                        .any(|w| Path::new(w.trim_start_matches('-')) == path)
                });
                let closed =
                    private || matches!(self.get("DevicePolicy"), Some("closed" | "strict"));
                let shown = !private || bound;
                if shown && (allowed || !closed) {
                    return None;
                }
                let why = match (shown, allowed || !closed) {
                    (false, false) => {
                        "PrivateDevices=yes: it is neither in the unit's /dev nor allowed by its device policy"
                    }
                    (false, true) => {
                        "PrivateDevices=yes: it is not in the unit's /dev (no BindPaths= for it)"
                    }
                    _ => "the unit's device policy denies it (no DeviceAllow= for it)",
                };
                Some(format!(
                    "{UNIT}'s sandbox hides {} from the agent ({why}); the PKCS#11 module {} opens it for the key",
                    path.display(),
                    module.display()
                ))
            }
            Need::Writable { dir, module } => {
                let protect = self.get("ProtectSystem").unwrap_or("no");
                let home = self.get("ProtectHome").unwrap_or("no");
                let under = |roots: &[&str]| roots.iter().any(|r| dir.starts_with(r));
                let writable = self
                    .all("ReadWritePaths")
                    .flat_map(str::split_whitespace)
                    .map(|p| PathBuf::from(p.trim_start_matches(['-', '+'])))
                    .chain(
                        self.all("StateDirectory")
                            .flat_map(str::split_whitespace)
                            .map(|d| Path::new("/var/lib").join(d)),
                    )
                    .any(|w| dir.starts_with(&w));
                let why = if home != "no" && under(&["/home", "/root", "/run/user"]) {
                    Some(format!("ProtectHome={home}"))
                } else if writable {
                    None
                } else {
                    match protect {
                        "strict" => Some("ProtectSystem=strict, and it is not in ReadWritePaths="),
                        "full" if under(&["/usr", "/boot", "/efi", "/etc"]) => {
                            Some("ProtectSystem=full")
                        }
                        "yes" | "true" if under(&["/usr", "/boot", "/efi"]) => {
                            Some("ProtectSystem=yes")
                        }
                        _ => None,
                    }
                    .map(str::to_owned)
                };
                why.map(|why| {
                    format!(
                        "{UNIT}'s sandbox makes the token directory {} read-only or hides it from the agent ({why}); the PKCS#11 module {} writes there, to create the key and to use it",
                        dir.display(),
                        module.display()
                    )
                })
            }
        }
    }
}

/// Inside the service: what this process sees.
fn hidden_here(need: &Need) -> Option<String> {
    match need {
        Need::Device { path, module } => (!path.exists()).then(|| {
            format!(
                "{} is not in this service's /dev (the unit's PrivateDevices=yes hides it, unless the device is missing); the PKCS#11 module {} opens it for the key",
                path.display(),
                module.display()
            )
        }),
        Need::Writable { dir, module } => {
            let read_only = rustix::fs::statvfs(dir)
                .map(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
                .unwrap_or(true);
            read_only.then(|| {
                format!(
                    "the token directory {} is read-only or hidden inside this service (the unit's ProtectSystem=strict); the PKCS#11 module {} writes there, to create the key and to use it",
                    dir.display(),
                    module.display()
                )
            })
        }
    }
}

fn fix(need: &Need) -> String {
    let (file, what) = match need {
        Need::Device { path, .. } => (
            "tpm.conf",
            format!(
                "BindPaths={0}, DeviceAllow={0} rw, SupplementaryGroups=tss",
                path.display()
            ),
        ),
        Need::Writable { dir, .. } => (
            "softhsm.conf",
            format!(
                "ReadWritePaths={}, SupplementaryGroups=softhsm",
                dir.display()
            ),
        ),
    };
    format!(
        "install the drop-in {DROPINS}/{file} as /etc/systemd/system/{UNIT}.d/{file} (it adds {what}; edit the path if yours differs), then `systemctl daemon-reload` and `systemctl restart asset-agent`"
    )
}

/// What `need` names, for a message.
fn thing(need: &Need) -> String {
    match need {
        Need::Device { path, .. } => format!("{} (read-write)", path.display()),
        Need::Writable { dir, .. } => format!("the token directory {} (writable)", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped unit's settings as systemd 252 prints them.
    const SHIPPED: &str = "LoadState=loaded\nProtectSystem=strict\nProtectHome=yes\nPrivateDevices=yes\nDevicePolicy=closed\nDeviceAllow=\nBindPaths=\nReadWritePaths=\nStateDirectory=asset-agent\nEnvironment=\n";

    fn unit(extra: &str) -> Unit {
        Unit::parse(&format!("{SHIPPED}{extra}"))
    }

    fn shipped_dropin(file: &str) -> Unit {
        let text = match file {
            "tpm" => include_str!("../../systemd/examples/tpm.conf"),
            _ => include_str!("../../systemd/examples/softhsm.conf"),
        };
        // A drop-in's assignments, the way `systemctl show` prints them after it.
        let extra: String = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(|l| format!("{l}\n"))
            .collect();
        unit(&extra)
    }

    fn softhsm() -> Need {
        Need::Writable {
            dir: PathBuf::from(SOFTHSM_TOKENDIR),
            module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        }
    }

    fn tpm() -> Need {
        Need::Device {
            path: PathBuf::from(TPM_DEVICE),
            module: PathBuf::from("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so.1"),
        }
    }

    #[test]
    fn the_shipped_unit_hides_the_softhsm_token_directory_and_the_fix_names_the_drop_in() {
        let why = unit("").hides(&softhsm()).unwrap_or_default();
        assert!(why.contains("/var/lib/softhsm/tokens"), "{why}");
        assert!(why.contains("ProtectSystem=strict"), "{why}");
        assert!(fix(&softhsm()).contains(
            "/usr/share/doc/asset-agent/examples/systemd/softhsm.conf as /etc/systemd/system/asset-agent.service.d/softhsm.conf"
        ));
    }

    #[test]
    fn the_softhsm_drop_in_gives_the_token_directory_back() {
        assert_eq!(shipped_dropin("softhsm").hides(&softhsm()), None);
        // A token directory of its own elsewhere is not covered by it.
        let elsewhere = Need::Writable {
            dir: PathBuf::from("/srv/tokens"),
            module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        };
        assert!(shipped_dropin("softhsm").hides(&elsewhere).is_some());
        // Under the agent's own state directory it is writable already.
        let state = Need::Writable {
            dir: PathBuf::from("/var/lib/asset-agent/tokens"),
            module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        };
        assert_eq!(unit("").hides(&state), None);
        let home = Need::Writable {
            dir: PathBuf::from("/root/tokens"),
            module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        };
        let why = unit("ReadWritePaths=/root/tokens\n")
            .hides(&home)
            .unwrap_or_default();
        assert!(why.contains("ProtectHome=yes"), "{why}");
    }

    #[test]
    fn the_shipped_unit_hides_the_tpm_and_the_tpm_drop_in_gives_it_exactly() {
        let why = unit("").hides(&tpm()).unwrap_or_default();
        assert!(
            why.contains("/dev/tpmrm0") && why.contains("PrivateDevices=yes"),
            "{why}"
        );
        assert!(fix(&tpm()).contains("examples/systemd/tpm.conf"));
        assert_eq!(shipped_dropin("tpm").hides(&tpm()), None);
        // Bound in but not allowed: the device policy still refuses it.
        let why = unit("BindPaths=/dev/tpmrm0\n")
            .hides(&tpm())
            .unwrap_or_default();
        assert!(why.contains("no DeviceAllow="), "{why}");
        // Without the private /dev, DeviceAllow= alone is enough.
        let open = Unit::parse(
            "LoadState=loaded\nPrivateDevices=no\nDevicePolicy=closed\nDeviceAllow=/dev/tpmrm0 rw\n",
        );
        assert_eq!(open.hides(&tpm()), None);
    }

    #[test]
    fn the_module_says_what_it_needs() {
        let none = |_: &str| None;
        let conf = |_: &Path| Some("# x\ndirectories.tokendir = /srv/hsm/tokens/\n".to_owned());
        assert_eq!(
            needs(Path::new("/usr/lib/softhsm/libsofthsm2.so"), &none, &conf),
            vec![Need::Writable {
                dir: PathBuf::from("/srv/hsm/tokens"),
                module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
            }]
        );
        let tpm_module = Path::new("/usr/lib/aarch64-linux-gnu/pkcs11/libtpm2_pkcs11.so");
        let no_file = |_: &Path| None;
        assert_eq!(
            needs(tpm_module, &none, &no_file),
            vec![Need::Device {
                path: PathBuf::from("/dev/tpmrm0"),
                module: tpm_module.to_owned(),
            }]
        );
        let tcti = |n: &str| (n == "TPM2_PKCS11_TCTI").then(|| "device:/dev/tpmrm1".to_owned());
        assert!(matches!(&needs(tpm_module, &tcti, &no_file)[..],
            [Need::Device { path, .. }] if path == Path::new("/dev/tpmrm1")));
        let swtpm = |n: &str| (n == "TPM2_PKCS11_TCTI").then(|| "swtpm:port=2321".to_owned());
        assert!(needs(tpm_module, &swtpm, &no_file).is_empty());
        assert!(needs(Path::new("/usr/lib/opensc-pkcs11.so"), &none, &no_file).is_empty());
    }

    #[test]
    fn inside_the_service_a_missing_node_or_unwritable_directory_is_named() {
        let module = PathBuf::from("/usr/lib/softhsm/libsofthsm2.so");
        let tmp = std::env::temp_dir();
        let here = Need::Writable {
            dir: tmp.clone(),
            module: module.clone(),
        };
        assert_eq!(hidden_here(&here), None);
        let gone = Need::Writable {
            dir: tmp.join("asset-agent-no-such-tokendir"),
            module: module.clone(),
        };
        let why = hidden_here(&gone).unwrap_or_default();
        assert!(
            why.contains("read-only or hidden inside this service"),
            "{why}"
        );
        let null = Need::Device {
            path: PathBuf::from("/dev/null"),
            module: module.clone(),
        };
        assert_eq!(hidden_here(&null), None);
        let why = hidden_here(&Need::Device {
            path: PathBuf::from("/dev/asset-agent-no-such-tpm"),
            module,
        })
        .unwrap_or_default();
        assert!(why.contains("PrivateDevices=yes"), "{why}");
    }

    #[test]
    fn the_unit_environment_is_read_from_systemctl_show() {
        let u = unit(
            "Environment=TPM2_PKCS11_STORE=/var/lib/asset-agent/tpm2-pkcs11 TPM2_PKCS11_TCTI=device:/dev/tpmrm0\n",
        );
        assert_eq!(
            u.environment("TPM2_PKCS11_TCTI").as_deref(),
            Some("device:/dev/tpmrm0")
        );
        assert_eq!(u.environment("TCTI"), None);
    }
}
