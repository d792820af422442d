//! `ComponentCache`: precompiled policy components on disk, keyed by the
//! component's content hash and the engine's compatibility hash, so a
//! restart or a re-dropped file does not compile again.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct ComponentCache {
    dir: PathBuf,
    engine_tag: String,
}

impl ComponentCache {
    /// Opens (creating) the cache directory; `None`, with a warning, when
    /// it cannot be used — the host then compiles every time.
    pub fn open(dir: PathBuf, engine: &Engine) -> Option<Self> {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(
                "policy cache {} unusable ({e}): components will be compiled at every start",
                dir.display()
            );
            return None;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Some(Self {
            dir,
            engine_tag: format!("{:016x}", h.finish()),
        })
    }

    pub fn component(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join(format!("{hex}-{}.cwasm", self.engine_tag));
        if path.is_file() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash (it is in the name),
            // in a directory the operator owns.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!("ignoring cached {}: {e}", path.display()),
            }
        }
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(compiled) => {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                let written =
                    std::fs::write(&tmp, compiled).and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::debug!("could not cache {}: {e}", path.display());
                }
            }
            Err(e) => tracing::debug!("could not serialise a component: {e}"),
        }
        Ok(component)
    }
}
