//! File modes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Sets `path`'s permission bits to `mode`.
pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `path`'s permission bits (the low nine).
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Writes `bytes` to `path` and makes it 0600.
pub fn write_0600(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    chmod(path, 0o600);
}
