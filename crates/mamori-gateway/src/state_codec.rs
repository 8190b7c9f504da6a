//! The encoding of one subject's detector states in the shared store (`detect.shared_state`,
//! [`crate::audit::SharedState::snapshot`]).
//!
//! Version 1 (`MSS1`): the 4-byte magic `MSS1`, then a raw-deflate stream (RFC 1951, level 1)
//! of a `u32` LE entry count and the entries, each `u16` LE name length, the detector's name (UTF-8), `u64` LE snapshot
//! length and the detector's snapshot bytes. The detectors' snapshots are JSON of mostly
//! numbers; the first format, still read, was that JSON hex-encoded inside a JSON map
//! (`{"prada": "7b22…", …}`), twice the snapshot's size. One MNIST client's states after 10,000
//! queries: 39 MB as hex JSON, 6.3 MB as `MSS1`, deflated in ≈ 0.1 s on one core — outside
//! the subject's lock, off the request path (docs/gateway.md).
//!
//! A subject's state file in the state directory (`state/<model>.states/<id>.mss`, without
//! `detect.shared_state`) is [`FILE_MAGIC`] `MSF2`, the `u16` LE length and bytes of the
//! subject's name, the `u64` LE count of queries its detectors had seen, then the `MSS1`
//! encoding ([`encode_file`], [`decode_file`]); the header alone ([`read_file_header`]) names
//! a subject not loaded into memory and its count, for the admin listing. Files of the first
//! version, `MSF1` (no count), are still read. A gateway older than the thirteenth session
//! does not read `MSF2`: it moves such a file aside (`….mss.damaged`, kept) and starts the
//! subject fresh.
//!
//! Decoding never trusts lengths: an entry that runs past the stream, a count that does not
//! match the entries (a stream cut at an entry boundary), bytes after the last entry, a name
//! that is not UTF-8, a repeated name or a stream that inflates beyond [`MAX_DECODED`] is an
//! error naming
//! the problem (the caller then starts the subject fresh, as for any state that does not
//! restore).

use std::collections::BTreeMap;
use std::io::{Read, Write};

/// The first bytes of a version-1 encoding.
pub const MAGIC: &[u8; 4] = b"MSS1";

/// The first bytes of a subject's state file (version 2, with the query count).
pub const FILE_MAGIC: &[u8; 4] = b"MSF2";

/// The first bytes of a version-1 state file (no query count), still read.
pub const FILE_MAGIC_V1: &[u8; 4] = b"MSF1";

/// A subject's state file: its name, the queries its detectors had seen, and their
/// snapshots. A name longer than the format's `u16` length field (65,535 bytes) is refused,
/// not truncated (a truncated name would file the states under another subject); subject
/// names come from key names (at most [`crate::keys::MAX_NAME_CHARS`] characters) and group
/// prefixes, far shorter.
pub fn encode_file(
    subject: &str,
    queries: u64,
    snapshots: &[(String, Vec<u8>)],
) -> Result<Vec<u8>, String> {
    let len = u16::try_from(subject.len()).map_err(|_| {
        format!(
            "subject name of {} bytes: a state file holds at most {} bytes of name",
            subject.len(),
            u16::MAX
        )
    })?;
    let mut out = FILE_MAGIC.to_vec();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(subject.as_bytes());
    out.extend_from_slice(&queries.to_le_bytes());
    out.extend_from_slice(&encode(snapshots));
    Ok(out)
}

/// A state file's header: the subject, its query count (`None` in a version-1 file), and the
/// bytes after the header.
fn split_header(bytes: &[u8]) -> Result<(String, Option<u64>, &[u8]), String> {
    let (mut rest, v2) = if let Some(rest) = bytes.strip_prefix(FILE_MAGIC) {
        (rest, true)
    } else if let Some(rest) = bytes.strip_prefix(FILE_MAGIC_V1) {
        (rest, false)
    } else {
        return Err("not a mamori state file (no MSF2 or MSF1 header)".to_string());
    };
    let len = u16::from_le_bytes(take(&mut rest, 2, "subject length")?.try_into().expect("2"));
    let subject = std::str::from_utf8(take(&mut rest, usize::from(len), "subject")?)
        .map_err(|_| "subject name is not UTF-8".to_string())?
        .to_string();
    let queries = if v2 {
        Some(u64::from_le_bytes(
            take(&mut rest, 8, "query count")?.try_into().expect("8"),
        ))
    } else {
        None
    };
    Ok((subject, queries, rest))
}

/// The subject and snapshots of [`encode_file`] (either version).
pub fn decode_file(bytes: &[u8]) -> Result<(String, BTreeMap<String, Vec<u8>>), String> {
    let (subject, _, rest) = split_header(bytes)?;
    if !rest.starts_with(MAGIC) {
        return Err(format!("state of {subject:?}: no MSS1 encoding"));
    }
    Ok((subject, decode(rest)?))
}

/// The subject and query count a state file's header holds (`None` for a version-1 file),
/// reading the header only (the magic and name length, then the name and count: a few dozen
/// bytes for the names in use), not the states.
pub fn read_file_header(path: &std::path::Path) -> Result<(String, Option<u64>), String> {
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)
        .and_then(|mut f| {
            (&mut f).take(6).read_to_end(&mut head)?;
            if let [_, _, _, _, a, b] = head[..] {
                let rest = u64::from(u16::from_le_bytes([a, b])) + 8;
                f.take(rest).read_to_end(&mut head)?;
            }
            Ok(())
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (subject, queries, _) =
        split_header(&head).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((subject, queries))
}

/// The file name of `subject`'s state: the first 128 bits of its SHA-256 in hex (subject
/// names may hold `/` and are not bounded by file-name limits), with the `.mss` extension.
pub fn file_name(subject: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(subject.as_bytes());
    format!("{}.mss", hex::encode(&h[..16]))
}

/// The most bytes a stored state may inflate to (4 GiB): a larger one is refused, not
/// allocated.
pub const MAX_DECODED: u64 = 1 << 32;

/// Encodes the `(detector name, snapshot)` pairs (version 1).
pub fn encode(snapshots: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut z = flate2::write::DeflateEncoder::new(MAGIC.to_vec(), flate2::Compression::fast());
    let _ = z.write_all(&(snapshots.len() as u32).to_le_bytes());
    for (name, bytes) in snapshots {
        // Detector names are short identifiers; one over 64 KiB cannot be registered.
        let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
        let parts: [&[u8]; 4] = [
            &(name.len() as u16).to_le_bytes(),
            name,
            &(bytes.len() as u64).to_le_bytes(),
            bytes,
        ];
        for p in parts {
            // Writing into a Vec cannot fail.
            let _ = z.write_all(p);
        }
    }
    z.finish().unwrap_or_default()
}

/// Decodes either format (version 1, or the first format's hex JSON map) into the snapshots
/// by detector name.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let Some(body) = bytes.strip_prefix(MAGIC) else {
        return decode_hex_json(bytes);
    };
    let mut raw = Vec::new();
    flate2::read::DeflateDecoder::new(body)
        .take(MAX_DECODED + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("compressed detector state does not inflate: {e}"))?;
    if raw.len() as u64 > MAX_DECODED {
        return Err(format!(
            "detector state inflates beyond {MAX_DECODED} bytes; refused"
        ));
    }
    let mut out = BTreeMap::new();
    let mut rest = raw.as_slice();
    let count = u32::from_le_bytes(take(&mut rest, 4, "entry count")?.try_into().expect("4"));
    for _ in 0..count {
        let name_len =
            u16::from_le_bytes(take(&mut rest, 2, "name length")?.try_into().expect("2"));
        let name = std::str::from_utf8(take(&mut rest, usize::from(name_len), "name")?)
            .map_err(|_| "detector name is not UTF-8".to_string())?
            .to_string();
        let len = u64::from_le_bytes(take(&mut rest, 8, "length")?.try_into().expect("8"));
        let len = usize::try_from(len).map_err(|_| format!("{name}: length {len} too large"))?;
        let snap = take(&mut rest, len, &name)?.to_vec();
        if out.insert(name.clone(), snap).is_some() {
            return Err(format!("detector {name:?} appears twice"));
        }
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes after the last of {count} detector states",
            rest.len()
        ));
    }
    Ok(out)
}

/// The first `n` bytes of `rest`, advancing it; an error naming `what` if fewer are left.
fn take<'a>(rest: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if rest.len() < n {
        return Err(format!(
            "detector state truncated in {what}: {n} bytes needed, {} left",
            rest.len()
        ));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

/// The first format: a JSON map from detector name to the hex of its snapshot.
fn decode_hex_json(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let map: BTreeMap<String, String> =
        serde_json::from_slice(bytes).map_err(|e| format!("detector state: {e}"))?;
    from_hex_map(map)
}

/// The snapshots of the first format's map from detector name to hex (also one subject's
/// entry of the first state-file format, `state/<model>.json`).
pub fn from_hex_map(map: BTreeMap<String, String>) -> Result<BTreeMap<String, Vec<u8>>, String> {
    map.into_iter()
        .map(|(name, h)| {
            hex::decode(&h)
                .map(|b| (name.clone(), b))
                .map_err(|e| format!("{name}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Vec<u8>)> {
        vec![
            ("prada".into(), br#"{"classes":[[0.0,0.5,1.0]]}"#.repeat(50)),
            ("rate".into(), b"{}".to_vec()),
            ("empty".into(), Vec::new()),
        ]
    }

    #[test]
    fn round_trips_and_is_smaller_than_the_first_format() {
        let s = sample();
        let enc = encode(&s);
        assert!(enc.starts_with(MAGIC));
        let back = decode(&enc).unwrap();
        assert_eq!(back.len(), 3);
        for (name, bytes) in &s {
            assert_eq!(&back[name], bytes);
        }
        let hex_json: BTreeMap<&str, String> = s
            .iter()
            .map(|(n, b)| (n.as_str(), hex::encode(b)))
            .collect();
        let old = serde_json::to_vec(&hex_json).unwrap();
        assert!(enc.len() * 5 < old.len(), "{} vs {}", enc.len(), old.len());
        // No detectors: an empty map.
        assert!(decode(&encode(&[])).unwrap().is_empty());
    }

    #[test]
    fn state_files_name_their_subject_and_refuse_damage() {
        let s = sample();
        let f = encode_file("net:10.0.0.0/24", 17, &s).unwrap();
        let (subject, back) = decode_file(&f).unwrap();
        assert_eq!(subject, "net:10.0.0.0/24");
        assert_eq!(back["prada"], s[0].1);
        assert_eq!(file_name("net:10.0.0.0/24").len(), 32 + 4);
        assert!(!file_name("net:10.0.0.0/24").contains('/'));
        assert_ne!(file_name("a"), file_name("b"));
        assert!(decode_file(b"MSS1").unwrap_err().contains("MSF2"));
        for cut in [5, 8, f.len() - 1] {
            assert!(decode_file(&f[..cut]).is_err(), "cut at {cut}");
        }
        for seed in 0..200 {
            let _ = decode_file(&mamori_core::testing::corrupted(&f, seed));
        }
    }

    /// The longest name the length field holds round-trips; one byte more is refused with
    /// the reason, not cut to another subject's name.
    #[test]
    fn subject_names_beyond_the_length_field_are_refused() {
        let s = sample();
        let longest = "é".repeat(usize::from(u16::MAX) / 2) + "x";
        assert_eq!(longest.len(), usize::from(u16::MAX));
        let (subject, _) = decode_file(&encode_file(&longest, 1, &s).unwrap()).unwrap();
        assert_eq!(subject, longest);
        let e = encode_file(&(longest + "y"), 1, &s).unwrap_err();
        assert!(e.contains("65536 bytes") && e.contains("65535"), "{e}");
    }

    /// The header alone names the subject and its query count, from a file cut right after
    /// it (the states are not read); a version-1 file (no count) is read whole as before and
    /// its header gives no count; a longest name is read whole; damaged headers are errors
    /// naming the file.
    #[test]
    fn headers_name_the_subject_and_count_and_version_1_files_still_read() {
        let s = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mss");
        let f = encode_file("carol", 4321, &s).unwrap();
        let header_len = 4 + 2 + 5 + 8;
        std::fs::write(&path, &f[..header_len]).unwrap();
        assert_eq!(
            read_file_header(&path).unwrap(),
            ("carol".to_string(), Some(4321))
        );
        let longest = "z".repeat(usize::from(u16::MAX));
        std::fs::write(&path, encode_file(&longest, 9, &s).unwrap()).unwrap();
        assert_eq!(read_file_header(&path).unwrap(), (longest, Some(9)));
        // Version 1: MSF1, the name, then the states.
        let mut v1 = FILE_MAGIC_V1.to_vec();
        v1.extend_from_slice(&5u16.to_le_bytes());
        v1.extend_from_slice(b"carol");
        v1.extend_from_slice(&encode(&s));
        let (subject, back) = decode_file(&v1).unwrap();
        assert_eq!((subject.as_str(), &back["prada"]), ("carol", &s[0].1));
        std::fs::write(&path, &v1).unwrap();
        assert_eq!(
            read_file_header(&path).unwrap(),
            ("carol".to_string(), None)
        );
        for bad in [&f[..4 + 2 + 5 + 3], &f[..3], b"MSF2\xff\xff".as_slice()] {
            std::fs::write(&path, bad).unwrap();
            let e = read_file_header(&path).unwrap_err();
            assert!(e.contains("a.mss"), "{e}");
        }
        assert!(read_file_header(&dir.path().join("missing.mss")).is_err());
    }

    #[test]
    fn reads_the_first_format() {
        let s = sample();
        let hex_json: BTreeMap<&str, String> = s
            .iter()
            .map(|(n, b)| (n.as_str(), hex::encode(b)))
            .collect();
        let back = decode(&serde_json::to_vec(&hex_json).unwrap()).unwrap();
        assert_eq!(back["prada"], s[0].1);
        let e = decode(br#"{"prada": "zz"}"#).unwrap_err();
        assert!(e.contains("prada"), "{e}");
        assert!(decode(b"not json").is_err());
    }

    /// Damaged encodings are errors, never panics or huge allocations.
    #[test]
    fn damaged_states_are_errors() {
        let enc = encode(&sample());
        for cut in [4, 5, enc.len() / 2, enc.len() - 1] {
            assert!(decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        // A claimed length past the end of the stream.
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&4u16.to_le_bytes());
        raw.extend_from_slice(b"knn!");
        raw.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut z = flate2::write::DeflateEncoder::new(MAGIC.to_vec(), flate2::Compression::fast());
        z.write_all(&raw).unwrap();
        let e = decode(&z.finish().unwrap()).unwrap_err();
        assert!(e.contains("knn!") || e.contains("too large"), "{e}");
        // Fewer entries than counted (a stream cut at an entry boundary), and more.
        let mut raw = 2u32.to_le_bytes().to_vec();
        raw.extend_from_slice(&1u16.to_le_bytes());
        raw.extend_from_slice(b"a");
        raw.extend_from_slice(&0u64.to_le_bytes());
        let deflated = |raw: &[u8]| {
            let mut z =
                flate2::write::DeflateEncoder::new(MAGIC.to_vec(), flate2::Compression::fast());
            z.write_all(raw).unwrap();
            z.finish().unwrap()
        };
        assert!(decode(&deflated(&raw)).unwrap_err().contains("truncated"));
        raw[0] = 1;
        raw.push(7);
        assert!(decode(&deflated(&raw))
            .unwrap_err()
            .contains("after the last"));
        // A repeated name.
        let twice = encode(&[("a".into(), vec![1]), ("a".into(), vec![2])]);
        assert!(decode(&twice).unwrap_err().contains("twice"));
        // Not deflate after the magic.
        let mut junk = MAGIC.to_vec();
        junk.extend_from_slice(&[0xff; 64]);
        assert!(decode(&junk).is_err());
        // Seeded corruptions of a real encoding.
        for seed in 0..300 {
            let bad = mamori_core::testing::corrupted(&enc, seed);
            let _ = decode(&bad);
        }
    }
}
