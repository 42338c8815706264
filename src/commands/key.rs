//! `asset-agent key show|generate`, for either backend.

use std::path::PathBuf;

use super::{Error, load_config};
use crate::cli::{KeyCommand, KeyShowArgs};
use crate::keys::{self, Mode, Opened};

pub fn run(config_path: Option<PathBuf>, cmd: KeyCommand) -> Result<(), Error> {
    let config = load_config(config_path)?;
    match cmd {
        KeyCommand::Generate => {
            let key = keys::open(&config.key, Mode::OpenOrCreate)?;
            if key.created {
                println!("created {} ({} bits)", key.location, key.signer.bits());
            } else {
                println!("{} already exists; left unchanged", key.location);
            }
            println!("thumbprint: {}", key.signer.public_jwk().kid);
        }
        KeyCommand::Show(args) => {
            let key = keys::open(&config.key, Mode::Existing)?;
            show(&key, config.key.file().is_some(), &args)?;
        }
    }
    Ok(())
}

fn show(key: &Opened, config_file: bool, args: &KeyShowArgs) -> Result<(), Error> {
    let signer = &key.signer;
    let pem = || {
        signer
            .public_key_pem()
            .map_err(|_| Error::Failed("could not export the public key".into()))
    };
    if args.thumbprint {
        println!("{}", signer.public_jwk().kid);
    } else if args.jwk {
        let jwk = serde_json::to_string_pretty(signer.public_jwk())
            .map_err(|e| Error::Failed(format!("could not encode the JWK: {e}")))?;
        println!("{jwk}");
    } else if args.pem {
        print!("{}", pem()?);
    } else {
        match config_file {
            true => println!("path:       {}", key.location),
            false => println!("token:      {}", key.location),
        }
        println!("algorithm:  RSA {} bits, signs RS256", signer.bits());
        println!(
            "thumbprint: {}  (RFC 7638; the actor token's kid)",
            signer.public_jwk().kid
        );
        print!("{}", pem()?);
    }
    Ok(())
}
