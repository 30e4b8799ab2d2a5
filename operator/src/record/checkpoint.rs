//! Checkpoints (C2SP `tlog-checkpoint`) in signed notes (C2SP `signed-note`).
//!
//! A checkpoint body is three lines: the log's origin, the tree size in
//! decimal, the root hash in standard base64. The signed note appends a blank
//! line and one line per signature, `— <key name> <base64(key ID || sig)>`.
//! Using these formats rather than our own means the checkpoints can be
//! checked, witnessed and cosigned by existing transparency-log tooling.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::digest::{Context, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::record::NoteError;
use crate::record::merkle::{Hash, decode_hash, encode_hash};

/// Signature type byte of Ed25519 in key IDs and verifier keys.
pub const ALG_ED25519: u8 = 0x01;

/// Starts every signature line: an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// More signature lines than any real note carries; bounds the work.
const MAX_SIGNATURES: usize = 100;

/// What a checkpoint commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note body: origin, size and root, each on its own line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            encode_hash(&self.root)
        )
    }

    /// Parses a note body. Strict: exactly the three lines we write, since
    /// this log has no extension lines and anything else signals a mix-up.
    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| Err(NoteError::Body(why.to_string()));
        let Some(text) = text.strip_suffix('\n') else {
            return bad("it does not end with a newline");
        };
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return bad(&format!(
                "it has {} lines, want 3 (origin, size, root)",
                lines.len()
            ));
        };
        check_origin(origin)?;
        let canonical = size == "0" || (!size.starts_with('0') && !size.is_empty());
        let size = match size.parse::<u64>() {
            Ok(n) if canonical && size.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return bad(&format!("tree size {size:?} is not a decimal number")),
        };
        let Some(root) = decode_hash(root) else {
            return bad(&format!("root {root:?} is not a base64 SHA-256 hash"));
        };
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

fn check_origin(origin: &str) -> Result<(), NoteError> {
    if origin.is_empty() || origin.chars().any(char::is_control) {
        return Err(NoteError::Origin(origin.to_string()));
    }
    Ok(())
}

/// Key names are free text except for what would break the note syntax.
fn check_key_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::KeyName(name.to_string()));
    }
    Ok(())
}

/// The key ID: the first four bytes, big-endian, of
/// SHA-256(key name || 0x0A || 0x01 || public key).
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut ctx = Context::new(&SHA256);
    ctx.update(name.as_bytes());
    ctx.update(&[b'\n', ALG_ED25519]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let d = digest.as_ref();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The verifier key text: `<name>+<key ID, 8 hex>+<base64(0x01 || public key)>`.
fn vkey_text(name: &str, id: u32, public_key: &[u8; 32]) -> String {
    let mut typed = Vec::with_capacity(33);
    typed.push(ALG_ED25519);
    typed.extend_from_slice(public_key);
    format!("{name}+{id:08x}+{}", STANDARD.encode(typed))
}

/// Signs checkpoints with one Ed25519 key under one key name.
pub struct Signer {
    name: String,
    id: u32,
    public_key: [u8; 32],
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new Ed25519 private key as PKCS#8 (v2) bytes, to be stored in a
    /// Secret. The one function here that is not pure: it draws randomness.
    pub fn generate_pkcs8() -> Result<Vec<u8>, NoteError> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| NoteError::Random)
    }

    /// A signer for key `name` from a PKCS#8 Ed25519 private key.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, NoteError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| NoteError::PrivateKey(e.to_string()))?;
        Self::from_key_pair(name, key)
    }

    fn from_key_pair(name: &str, key: Ed25519KeyPair) -> Result<Self, NoteError> {
        check_key_name(name)?;
        let public_key: [u8; 32] = key
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::PrivateKey("public key is not 32 bytes".to_string()))?;
        Ok(Signer {
            name: name.to_string(),
            id: key_id(name, &public_key),
            public_key,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The verifier key to publish, e.g. for `iotposture verify --key`.
    pub fn vkey(&self) -> String {
        vkey_text(&self.name, self.id, &self.public_key)
    }

    /// The verifier for this signer's own signatures.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            id: self.id,
            public_key: self.public_key,
        }
    }

    /// The signed note of the checkpoint (origin, size, root).
    pub fn sign(&self, origin: &str, size: u64, root: &Hash) -> Result<String, NoteError> {
        self.sign_checkpoint(&Checkpoint {
            origin: origin.to_string(),
            size,
            root: *root,
        })
    }

    pub fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> Result<String, NoteError> {
        check_origin(&checkpoint.origin)?;
        Ok(self.sign_text(&checkpoint.body()))
    }

    /// Signs any note text (which must end in a newline).
    fn sign_text(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.id.to_be_bytes());
        blob.extend_from_slice(sig.as_ref());
        format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        )
    }
}

/// Checks signed notes against one Ed25519 verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    id: u32,
    public_key: [u8; 32],
}

impl Verifier {
    /// Parses `<name>+<hex key ID>+<base64(0x01 || public key)>`, checking
    /// that the key ID is the one the name and key produce.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let bad = |why| Err(NoteError::VerifierKey(why));
        // The name holds no '+', the base64 may: split at the first two.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key64)) = (parts.next(), parts.next(), parts.next())
        else {
            return bad("want <name>+<key id>+<key>");
        };
        if check_key_name(name).is_err() {
            return bad("invalid key name");
        }
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("key ID is not 8 hex digits");
        }
        let Ok(id) = u32::from_str_radix(id_hex, 16) else {
            return bad("key ID is not 8 hex digits");
        };
        let Ok(typed) = STANDARD.decode(key64) else {
            return bad("key is not base64");
        };
        let Some((&alg, key)) = typed.split_first() else {
            return bad("key is empty");
        };
        if alg != ALG_ED25519 {
            return bad("not an Ed25519 key (type byte is not 0x01)");
        }
        let Ok(public_key) = <[u8; 32]>::try_from(key) else {
            return bad("Ed25519 public key is not 32 bytes");
        };
        if key_id(name, &public_key) != id {
            return bad("key ID does not match the name and key");
        }
        Ok(Verifier {
            name: name.to_string(),
            id,
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The verifier key text.
    pub fn vkey(&self) -> String {
        vkey_text(&self.name, self.id, &self.public_key)
    }

    /// Checks the note's syntax and this key's signature; returns the signed
    /// text. Signatures by other keys are skipped (others may cosign), but a
    /// signature that claims this key and does not verify is refused.
    pub fn open_text<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let bad = |why: String| Err(NoteError::Malformed(why));
        if let Some(c) = note.chars().find(|&c| c != '\n' && c.is_control()) {
            return bad(format!("it contains the control character {c:?}"));
        }
        let Some(split) = note.rfind("\n\n") else {
            return bad("no blank line between text and signatures".to_string());
        };
        let text = &note[..split + 1];
        let sigs = &note[split + 2..];
        if text.is_empty() || text == "\n" {
            return bad("the text is empty".to_string());
        }
        let Some(sigs) = sigs.strip_suffix('\n') else {
            return bad("it does not end with a newline".to_string());
        };
        let lines: Vec<&str> = sigs.split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return bad(format!("more than {MAX_SIGNATURES} signatures"));
        }
        let mut verified = false;
        for (i, line) in lines.iter().enumerate() {
            let n = i + 1;
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                return bad(format!("signature line {n} does not start with \"— \""));
            };
            let Some((name, sig64)) = rest.split_once(' ') else {
                return bad(format!(
                    "signature line {n} has no space after the key name"
                ));
            };
            if check_key_name(name).is_err() {
                return bad(format!("signature line {n} has an invalid key name"));
            }
            let blob = match STANDARD.decode(sig64) {
                Ok(blob) if blob.len() > 4 => blob,
                _ => {
                    return bad(format!(
                        "signature line {n} is not base64 of key ID and signature"
                    ));
                }
            };
            let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
            if name != self.name || id != self.id {
                continue;
            }
            UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(text.as_bytes(), &blob[4..])
                .map_err(|_| NoteError::BadSignature {
                    name: self.name.clone(),
                    id: self.id,
                })?;
            verified = true;
        }
        if !verified {
            return Err(NoteError::Unsigned {
                name: self.name.clone(),
                id: self.id,
            });
        }
        Ok(text)
    }

    /// Opens a signed checkpoint: signature first, then the body's syntax.
    pub fn open(&self, note: &str) -> Result<Checkpoint, NoteError> {
        Checkpoint::parse_body(self.open_text(note)?)
    }
}

/// Opens a signed checkpoint with the verifier key text `vkey`.
pub fn open(note: &str, vkey: &str) -> Result<Checkpoint, NoteError> {
    Verifier::parse(vkey)?.open(note)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Go golang.org/x/mod/sumdb/note example (note_test.go, ExampleSign and
    // ExampleOpen): a key, a text and its signed note.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n\
                           \n\
                           \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    // The C2SP signed-note spec's example verifier key.
    const C2SP_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";

    fn go_signer() -> Signer {
        let seed64 = GO_SKEY.splitn(5, '+').nth(4).unwrap();
        let typed = STANDARD.decode(seed64).unwrap();
        assert_eq!(typed[0], ALG_ED25519);
        let key = Ed25519KeyPair::from_seed_unchecked(&typed[1..]).unwrap();
        Signer::from_key_pair("PeterNeumann", key).unwrap()
    }

    fn signer(name: &str) -> Signer {
        Signer::from_pkcs8(name, &Signer::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn go_known_answers() {
        let v = Verifier::parse(GO_VKEY).unwrap();
        assert_eq!(v.key_id(), 0xc74f20a3);
        assert_eq!(v.vkey(), GO_VKEY);
        assert_eq!(v.open_text(GO_NOTE).unwrap(), GO_TEXT);
        // The body is not a checkpoint, so opening it as one fails on syntax.
        assert!(matches!(v.open(GO_NOTE), Err(NoteError::Body(_))));

        // Ed25519 is deterministic: our signing reproduces Go's note exactly.
        let s = go_signer();
        assert_eq!(s.key_id(), 0xc74f20a3);
        assert_eq!(s.vkey(), GO_VKEY);
        assert_eq!(s.sign_text(GO_TEXT), GO_NOTE);

        let c = Verifier::parse(C2SP_VKEY).unwrap();
        assert_eq!((c.name(), c.key_id()), ("example.com/foo", 0x530d903a));
    }

    #[test]
    fn round_trip() {
        let s = signer("iotposture.dev/record");
        let root = [0x5a; 32];
        let note = s.sign("iotposture.dev/record/abc", 42, &root).unwrap();
        let cp = open(&note, &s.vkey()).unwrap();
        assert_eq!(
            cp,
            Checkpoint {
                origin: "iotposture.dev/record/abc".to_string(),
                size: 42,
                root
            }
        );
        let expected_start = format!(
            "iotposture.dev/record/abc\n42\n{}\n\n\u{2014} iotposture.dev/record ",
            encode_hash(&root)
        );
        assert!(note.starts_with(&expected_start), "{note}");
        assert_eq!(Verifier::parse(&s.vkey()).unwrap(), s.verifier());
    }

    #[test]
    fn tampering_is_refused() {
        let s = signer("k");
        let note = s.sign("origin", 7, &[1; 32]).unwrap();
        let vkey = s.vkey();
        let bytes = note.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            if let Ok(t) = String::from_utf8(b) {
                assert!(open(&t, &vkey).is_err(), "byte {i} flipped accepted:\n{t}");
            }
        }
        // Flipping a signature byte (inside the base64) is a bad signature.
        let sig_at = note.rfind(' ').unwrap() + 10;
        let mut b = note.clone().into_bytes();
        b[sig_at] = if b[sig_at] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(b).unwrap();
        assert!(matches!(
            open(&t, &vkey),
            Err(NoteError::BadSignature { .. })
        ));
        // A changed body is a bad signature too.
        let t = note.replacen("\n7\n", "\n8\n", 1);
        assert!(matches!(
            open(&t, &vkey),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn wrong_key_is_refused() {
        let s = signer("k");
        let note = s.sign("origin", 7, &[1; 32]).unwrap();
        // Another key under the same name has another key ID: unsigned.
        let other = signer("k");
        assert!(matches!(
            open(&note, &other.vkey()),
            Err(NoteError::Unsigned { .. })
        ));
        // Same key ID claimed, wrong public key: the vkey itself is refused.
        let forged = format!(
            "k+{:08x}+{}",
            s.key_id(),
            other.vkey().splitn(3, '+').nth(2).unwrap()
        );
        assert!(Verifier::parse(&forged).is_err());
    }

    #[test]
    fn cosignatures_by_other_keys_are_skipped() {
        let a = signer("a");
        let b = signer("b");
        let note = a.sign("origin", 3, &[9; 32]).unwrap();
        let text = note.split("\n\n").next().unwrap().to_string() + "\n";
        let b_line = b.sign_text(&text);
        let b_line = b_line.rsplit("\n\n").next().unwrap();
        let both = format!("{note}{b_line}");
        assert_eq!(open(&both, &a.vkey()).unwrap().size, 3);
        assert_eq!(open(&both, &b.vkey()).unwrap().size, 3);
    }

    #[test]
    fn malformed_notes_are_refused() {
        let s = signer("k");
        let vkey = s.vkey();
        let root = encode_hash(&[3; 32]);
        let sig_of = |text: &str| s.sign_text(text);
        for (text, what) in [
            (format!("origin\n05\n{root}\n"), "leading zero"),
            (format!("origin\n+5\n{root}\n"), "sign"),
            (format!("origin\n\n{root}\n"), "empty size"),
            (
                format!("origin\n18446744073709551616\n{root}\n"),
                "overflow",
            ),
            ("origin\n5\nAAAA\n".to_string(), "short root"),
            (format!("origin\n5\n{root}\nextension\n"), "extension line"),
            ("origin\n5\n".to_string(), "two lines"),
        ] {
            let note = sig_of(&text);
            assert!(
                matches!(open(&note, &vkey), Err(NoteError::Body(_))),
                "{what} accepted"
            );
        }
        let good = s.sign("origin", 5, &[3; 32]).unwrap();
        for (note, what) in [
            (good.trim_end().to_string(), "no final newline"),
            (good.replace("\n\n", "\n"), "no blank line"),
            (good.replace('\u{2014}', "-"), "hyphen for em dash"),
            (format!("{good}\n"), "trailing blank line"),
            (good.replace("\n\n", "\n\r\n"), "control character"),
            (format!("{good}\u{2014} k !!!!\n"), "bad base64"),
        ] {
            assert!(open(&note, &vkey).is_err(), "{what} accepted");
        }
        assert!(s.sign("two\nlines", 1, &[0; 32]).is_err());
        assert!(s.sign("", 1, &[0; 32]).is_err());
        assert!(Signer::from_pkcs8("has space", &Signer::generate_pkcs8().unwrap()).is_err());
        assert!(Signer::from_pkcs8("k", b"not a key").is_err());
        for vkey in [
            "",
            "k",
            "k+1234",
            "k+zzzzzzzz+AQ==",
            &vkey[..vkey.len() - 4],
        ] {
            assert!(Verifier::parse(vkey).is_err(), "{vkey:?} accepted");
        }
    }
}
