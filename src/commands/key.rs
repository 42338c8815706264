//! `asset-agent key show|generate`.

use std::path::PathBuf;

use super::{Error, load_config};
use crate::cli::{KeyCommand, KeyShowArgs};
use crate::keys::{FileKey, Signer as _};

pub fn run(config_path: Option<PathBuf>, cmd: KeyCommand) -> Result<(), Error> {
    let config = load_config(config_path)?;
    let path = &config.key.path;
    match cmd {
        KeyCommand::Generate => {
            let (key, created) = FileKey::load_or_generate(path, config.key.bits)?;
            if created {
                println!("created {} ({} bits)", path.display(), key.bits());
            } else {
                println!("{} already exists; left unchanged", path.display());
            }
            println!("thumbprint: {}", key.public_jwk().kid);
        }
        KeyCommand::Show(args) => show(&FileKey::load(path)?, &args)?,
    }
    Ok(())
}

fn show(key: &FileKey, args: &KeyShowArgs) -> Result<(), Error> {
    let pem = || {
        key.public_key_pem()
            .map_err(|_| Error::Failed("could not export the public key".into()))
    };
    if args.thumbprint {
        println!("{}", key.public_jwk().kid);
    } else if args.jwk {
        let jwk = serde_json::to_string_pretty(key.public_jwk())
            .map_err(|e| Error::Failed(format!("could not encode the JWK: {e}")))?;
        println!("{jwk}");
    } else if args.pem {
        print!("{}", pem()?);
    } else {
        println!("path:       {}", key.path().display());
        println!("algorithm:  RSA {} bits, signs RS256", key.bits());
        println!(
            "thumbprint: {}  (RFC 7638; the actor token's kid)",
            key.public_jwk().kid
        );
        print!("{}", pem()?);
    }
    Ok(())
}
