//! `ComponentCache`: precompiled policy components on disk, keyed by the
//! component's content hash and the engine's compatibility hash, so a
//! restart or a re-dropped file does not compile again.
//!
//! A precompiled component is native code the host runs: the cache is
//! trusted only as far as it is checked. The directory must be the host
//! user's own, not a symlink, and not writable by group or others (it is
//! created 0700); each file must be a regular file of the host user's that
//! no one else can write, and carry an HMAC-SHA256 tag made with a key kept
//! outside the cache (`<cache dir>.key`, 0600). A file that fails any check
//! is ignored with one log line and the policy is compiled afresh.

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bytes of the HMAC tag in front of each cached component.
const TAG_LEN: usize = 32;

pub struct ComponentCache {
    dir: PathBuf,
    engine_tag: String,
    key: hmac::Key,
}

impl ComponentCache {
    /// Opens (creating) the cache directory and its key; `None`, with a
    /// warning, when either cannot be trusted — the host then compiles
    /// every time.
    pub fn open(dir: PathBuf, engine: &Engine) -> Option<Self> {
        let key_path = key_path(&dir);
        let opened = trusted_dir(&dir).and_then(|()| load_or_create_key(&key_path));
        let key = match opened {
            Ok(key) => key,
            Err(why) => {
                tracing::warn!(
                    "policy cache {} not used ({why}): components will be compiled at every start",
                    dir.display()
                );
                return None;
            }
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Some(Self {
            dir,
            engine_tag: format!("{:016x}", h.finish()),
            key,
        })
    }

    pub fn component(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{hex}-{}.cwasm", self.engine_tag);
        let path = self.dir.join(&name);
        match self.read_trusted(&path, &name) {
            Ok(Some(compiled)) => {
                // SAFETY: these bytes carry our HMAC over the file name
                // (content hash and engine compatibility hash) and were
                // written by `Component::serialize` of this host; they
                // are deserialised from memory, so the file cannot change
                // after the check.
                match unsafe { Component::deserialize(engine, &compiled) } {
                    Ok(c) => return Ok(c),
                    Err(e) => tracing::warn!("ignoring cached {}: {e}", path.display()),
                }
            }
            Ok(None) => {}
            Err(why) => tracing::warn!(
                "policy cache: refusing {} ({why}); compiling the policy afresh",
                path.display()
            ),
        }
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = self.write(&path, &name, &compiled) {
                    tracing::debug!("could not cache {}: {e}", path.display());
                }
            }
            Err(e) => tracing::debug!("could not serialise a component: {e}"),
        }
        Ok(component)
    }

    /// The compiled bytes of `path` if it exists and passes every check.
    fn read_trusted(&self, path: &Path, name: &str) -> Result<Option<Vec<u8>>, String> {
        let file = match open_nofollow(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err("it is a symlink".into());
            }
            Err(e) => return Err(e.to_string()),
        };
        let meta = file.metadata().map_err(|e| e.to_string())?;
        trusted_meta(&meta, false)?;
        let mut data = Vec::with_capacity(meta.len() as usize);
        (&file).read_to_end(&mut data).map_err(|e| e.to_string())?;
        if data.len() < TAG_LEN {
            return Err("it is truncated".into());
        }
        // The tag covers the name, then the compiled bytes.
        let tag: Vec<u8> = data.drain(..TAG_LEN).collect();
        let signed = [name.as_bytes(), &data].concat();
        if hmac::verify(&self.key, &signed, &tag).is_err() {
            return Err(
                "its authentication tag does not match: tampered with or not written by this host"
                    .into(),
            );
        }
        Ok(Some(data))
    }

    /// Writes tag + bytes to a fresh, unguessable temporary file (never
    /// following or reusing an existing name), then renames it into place.
    fn write(&self, path: &Path, name: &str, compiled: &[u8]) -> std::io::Result<()> {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(name.as_bytes());
        ctx.update(compiled);
        let tmp = self
            .dir
            .join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = create_exclusive(&tmp, 0o600).and_then(|mut f| {
            f.write_all(ctx.sign().as_ref())?;
            f.write_all(compiled)?;
            f.sync_all()
        });
        let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        renamed
    }
}

/// The HMAC key lives beside the cache directory, not in it.
fn key_path(dir: &Path) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "policy-cache".into());
    name.push(".key");
    dir.with_file_name(name)
}

/// Creates `dir` 0700 (parents with the umask) and checks that it is a
/// real directory of ours that no one else can write.
fn trusted_dir(dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.to_string()),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if meta.file_type().is_symlink() {
        return Err("the directory is a symlink".into());
    }
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    trusted_meta(&meta, true)?;
    // An older host made it with the umask: nobody else needs to read it.
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Owned by the host's user and writable by no one else.
fn trusted_meta(meta: &std::fs::Metadata, is_dir: bool) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not this host's uid {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err("writable by group or others".into());
    }
    if !is_dir && !meta.is_file() {
        return Err("not a regular file".into());
    }
    Ok(())
}

/// Reads the key, or makes a new random one (0600, never through a symlink).
fn load_or_create_key(path: &Path) -> Result<hmac::Key, String> {
    let what = |e: std::io::Error| format!("key {}: {e}", path.display());
    match open_nofollow(path) {
        Ok(file) => {
            let meta = file.metadata().map_err(what)?;
            trusted_meta(&meta, false).map_err(|why| format!("key {}: {why}", path.display()))?;
            if meta.mode() & 0o077 != 0 {
                return Err(format!(
                    "key {}: readable by group or others",
                    path.display()
                ));
            }
            let mut secret = Vec::new();
            (&file).read_to_end(&mut secret).map_err(what)?;
            if secret.len() < TAG_LEN {
                return Err(format!("key {}: too short", path.display()));
            }
            Ok(hmac::Key::new(hmac::HMAC_SHA256, &secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; TAG_LEN];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| "no randomness for a key".to_string())?;
            match create_exclusive(path, 0o600) {
                Ok(mut f) => {
                    f.write_all(&secret)
                        .and_then(|()| f.sync_all())
                        .map_err(what)?;
                    Ok(hmac::Key::new(hmac::HMAC_SHA256, &secret))
                }
                // Another host made it meanwhile: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
                Err(e) => Err(what(e)),
            }
        }
        Err(e) => Err(what(e)),
    }
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn create_exclusive(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_sits_beside_the_cache() {
        assert_eq!(
            key_path(Path::new("/home/u/.cache/webrtc-chat")),
            Path::new("/home/u/.cache/webrtc-chat.key")
        );
    }

    #[test]
    fn a_group_writable_directory_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("cache");
        trusted_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "created 0700");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(trusted_dir(&dir).unwrap_err().contains("writable"));
        let link = base.path().join("link");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(trusted_dir(&link).unwrap_err().contains("symlink"));
    }
}
