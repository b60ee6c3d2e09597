//! Identities of executable files: the GNU build id, or a content hash
//! for files without one.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use object::read::ReadCache;
use object::Object;
use sha2::{Digest, Sha256};

use agent_profile::model::BuildIdKind;

/// A build id and how it was obtained.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BuildId {
    /// Hex text.
    pub id: String,
    /// GNU note or content hash.
    pub kind: BuildIdKind,
}

/// The GNU build id of an ELF file, read lazily (headers and notes only).
pub fn gnu_build_id(file: &File) -> Option<String> {
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    Some(crate::hex(id))
}

/// Hash of the first and last 4 KiB and the length (OpenTelemetry's
/// "htlhash"), for files without a build id; 128 bits, hex.
pub fn head_tail_length_hash(file: &mut File) -> std::io::Result<String> {
    let len = file.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4096];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut buf)?;
    hasher.update(&buf[..n]);
    file.seek(SeekFrom::Start(len.saturating_sub(4096)))?;
    let n = read_up_to(file, &mut buf)?;
    hasher.update(&buf[..n]);
    hasher.update(len.to_be_bytes());
    Ok(crate::hex(&hasher.finalize()[..16]))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..])? {
            0 => break,
            n => total += n,
        }
    }
    Ok(total)
}

/// The file's GNU build id, else its content hash; `None` if unreadable.
pub fn build_id_of(path: &Path) -> Option<BuildId> {
    let mut file = File::open(path).ok()?;
    if let Some(id) = gnu_build_id(&file) {
        return Some(BuildId {
            id,
            kind: BuildIdKind::Gnu,
        });
    }
    head_tail_length_hash(&mut file).ok().map(|id| BuildId {
        id,
        kind: BuildIdKind::ContentHash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_stable_and_length_sensitive() {
        let a = std::env::temp_dir().join(format!("file-id-test-{}", std::process::id()));
        std::fs::write(&a, vec![7u8; 10_000]).unwrap();
        let h1 = head_tail_length_hash(&mut File::open(&a).unwrap()).unwrap();
        let h2 = head_tail_length_hash(&mut File::open(&a).unwrap()).unwrap();
        assert_eq!(h1, h2);
        assert_eq!(h1.len(), 32);
        std::fs::write(&a, vec![7u8; 10_001]).unwrap();
        assert_ne!(
            head_tail_length_hash(&mut File::open(&a).unwrap()).unwrap(),
            h1
        );
        std::fs::remove_file(&a).unwrap();
    }
}
