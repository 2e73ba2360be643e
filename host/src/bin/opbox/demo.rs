//! What `opbox serve` adds when it runs without `--config`, the demo: an
//! operator's token, so the host can be administered from the machine it
//! runs on (`opbox plugins …`, `/admin/v1/…`) without writing a config
//! first.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use opbox::HostConfig;
use opbox::tenants::{TOKEN_PREFIX, TokenConfig, hash_token_hex, new_token};

/// The token's file, in the data directory.
const TOKEN_FILE: &str = "admin-token";

/// Gives the demo's tenant a token with the scope `admin`, kept in
/// `data_dir/admin-token` (readable by its owner only) so that it stays the
/// same across restarts. Returns the file's path.
pub(crate) fn admin_token(config: &mut HostConfig) -> Result<PathBuf> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let path = dir.join(TOKEN_FILE);
    let kept = std::fs::read_to_string(&path)
        .ok()
        .map(|token| token.trim().to_owned())
        .filter(|token| token.starts_with(TOKEN_PREFIX));
    let token = match kept {
        Some(token) => token,
        None => {
            let token = new_token().context("cannot make a token")?;
            write_private(&path, &token)
                .with_context(|| format!("cannot write {}", path.display()))?;
            token
        }
    };
    let tenant = config
        .tenants
        .first_mut()
        .context("the demo has no tenant")?;
    tenant.tokens.push(TokenConfig {
        id: "demo-operator".into(),
        sha256: hash_token_hex(&token),
        scopes: vec!["admin".into()],
    });
    Ok(path)
}

/// Writes `token` to a new file at `path` that only its owner may read.
fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{token}")
}
