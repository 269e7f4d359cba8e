//! SHA-256, the digest app files are published and verified with.
//!
//! The implementation is ring's (BoringSSL's assembly, with AVX2 paths), already built for the
//! TLS stack. Hashing bounds how fast a run's files can be verified: on CPUs without SHA
//! extensions, like the CI machines' Xeons, ring hashes ~330 MB/s a core where the `sha2`
//! crate's assembly does ~210 MB/s (BENCHMARKS.md, "Artifacts"). The tests check the results
//! against the `sha2` crate, an independent implementation.

/// An incremental SHA-256.
pub struct Sha256(ring::digest::Context);

impl Sha256 {
    pub fn new() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The 32-byte digest.
    pub fn finish(self) -> [u8; 32] {
        self.0
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 digests are 32 bytes")
    }

    /// The digest as 64 lowercase hex digits.
    pub fn finish_hex(self) -> String {
        super::version::hex(&self.finish())
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

/// The SHA-256 of `bytes` as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hasher.finish_hex()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn agrees_with_the_sha2_crate_whatever_the_chunking() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 31 % 251) as u8).collect();
        let expected = super::super::version::hex(&sha2::Sha256::digest(&data));
        assert_eq!(sha256_hex(&data), expected);
        let mut chunked = Sha256::new();
        for chunk in data.chunks(4093) {
            chunked.update(chunk);
        }
        assert_eq!(chunked.finish_hex(), expected);
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
