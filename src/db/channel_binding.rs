//! SCRAM channel binding data (`tls-server-end-point`, RFC 5929 §4.1) for a TLS session to the
//! database.
//!
//! With it, SCRAM authentication proves that the server holding the password verifier is the one
//! at the other end of this TLS session, so a man in the middle with its own certificate cannot
//! relay the login, even with `sslmode=require`, which does not check certificates. PostgreSQL
//! offers `SCRAM-SHA-256-PLUS` on every TLS session; tokio-postgres uses it when the connector
//! provides this data (`channel_binding=prefer`, its default) and insists on it with
//! `channel_binding=require`.
//!
//! The data is a hash of the server's certificate (DER) with the hash function of the
//! certificate's own signature algorithm, MD5 and SHA-1 replaced by SHA-256. PostgreSQL computes
//! the same on its side, so a wrong choice here fails the login: certificates whose algorithm
//! does not name one of SHA-256/384/512 (Ed25519, RSA-PSS, SHA-224) get no channel binding,
//! which PostgreSQL cannot compute for them either.

use ring::digest;

/// The `tls-server-end-point` bytes for the server certificate `der`, or `None` when its
/// signature algorithm does not determine a hash (or the DER cannot be read).
pub fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = end_point_hash(signature_algorithm_oid(der)?)?;
    Some(digest::digest(algorithm, der).as_ref().to_vec())
}

/// The hash RFC 5929 prescribes for a certificate signed with the algorithm `oid` (DER content
/// octets of the OBJECT IDENTIFIER).
fn end_point_hash(oid: &[u8]) -> Option<&'static digest::Algorithm> {
    // 1.2.840.113549.1.1.x: PKCS #1 RSA signatures.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    // 1.2.840.10045.4.x: ECDSA signatures.
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    if let Some(arc) = oid.strip_prefix(RSA) {
        return match arc {
            [4] | [5] | [11] => Some(&digest::SHA256), // md5, sha1, sha256 WithRSAEncryption
            [12] => Some(&digest::SHA384),
            [13] => Some(&digest::SHA512),
            _ => None, // sha224 (no SHA-224 here), RSASSA-PSS (hash in parameters) and others
        };
    }
    if let Some(arc) = oid.strip_prefix(ECDSA) {
        return match arc {
            [1] | [3, 2] => Some(&digest::SHA256), // ecdsa-with-SHA1, ecdsa-with-SHA256
            [3, 3] => Some(&digest::SHA384),
            [3, 4] => Some(&digest::SHA512),
            _ => None,
        };
    }
    None
}

/// The OID of `Certificate.signatureAlgorithm` (RFC 5280 §4.1):
/// `SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, ... }, BIT STRING }`.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OBJECT_IDENTIFIER: u8 = 0x06;
    let (certificate, _) = read_tlv(der, SEQUENCE)?;
    let (_tbs_certificate, rest) = read_tlv(certificate, SEQUENCE)?;
    let (algorithm_identifier, _) = read_tlv(rest, SEQUENCE)?;
    let (oid, _) = read_tlv(algorithm_identifier, OBJECT_IDENTIFIER)?;
    Some(oid)
}

/// One DER element with the tag `tag` at the start of `input`: its contents and what follows.
fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, input) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        // Long form: the low bits count the length octets (DER has no indefinite length).
        let count = usize::from(first & 0x7f);
        if count == 0 || count > std::mem::size_of::<usize>() || input.len() < count {
            return None;
        }
        let (octets, rest) = input.split_at(count);
        input = rest;
        octets
            .iter()
            .fold(0usize, |length, &octet| (length << 8) | usize::from(octet))
    };
    (input.len() >= length).then(|| input.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Expected values are `openssl x509 -outform der | openssl dgst -<hash>` of the fixtures,
    /// which `openssl req -x509` made with the signature algorithm in their names.
    #[test]
    fn the_hash_follows_the_certificate_signature_algorithm() {
        let cases = [
            (
                include_str!("testdata/ec256.pem"),
                "8d29232464cc98fd72a4407af705f0ebff943b258b8e74862cc29c6c49ecd88f",
            ),
            (
                include_str!("testdata/ec384.pem"),
                "09c6cdd0086900542a2b944f0e9581e36fa10271f817d3ddbf04dd2b29e8ba28\
                 0fe0ff4e49667c2ba8b990e936062bff",
            ),
            (
                include_str!("testdata/rsa512.pem"),
                "96cc8f09cff1e6ada1d698b2dd55dbafc569620e2c69141e51029b20dddb273e\
                 ca4ad6976bd09da5f7eaa844135b98c7a0a0b6b7bf4c24f5c2816c3055266c97",
            ),
            // SHA-1 signatures are bound with SHA-256.
            (
                include_str!("testdata/rsa1.pem"),
                "b215e8c71cdee3d8b784ecab94da9db6b4cdde832fb615eefdc5ead03845e386",
            ),
        ];
        for (pem, expected) in cases {
            let binding = tls_server_end_point(&der(pem)).expect("a hash for this algorithm");
            assert_eq!(hex(&binding), expected);
        }
    }

    #[test]
    fn no_binding_when_the_algorithm_names_no_hash_or_the_der_is_damaged() {
        let ed25519 = der(include_str!("testdata/ed25519.pem"));
        assert_eq!(tls_server_end_point(&ed25519), None);

        let certificate = der(include_str!("testdata/ec256.pem"));
        for cut in [0, 1, 4, certificate.len() / 2, certificate.len() - 1] {
            let truncated = &certificate[..cut];
            // A truncated outer SEQUENCE is refused before its algorithm is looked at.
            assert_eq!(tls_server_end_point(truncated), None, "cut at {cut}");
        }
        assert_eq!(
            tls_server_end_point(&[0x30, 0x80, 0, 0]),
            None,
            "indefinite length"
        );
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }

    #[test]
    fn lengths_in_long_form_are_read() {
        let mut element = vec![0x04, 0x82, 0x01, 0x00];
        element.extend(std::iter::repeat_n(7, 256));
        element.push(0xff);
        let (contents, rest) = read_tlv(&element, 0x04).unwrap();
        assert_eq!((contents.len(), rest), (256, &[0xff][..]));
        assert_eq!(
            read_tlv(&element[..100], 0x04),
            None,
            "shorter than its length"
        );
        assert_eq!(read_tlv(&element, 0x30), None, "another tag");
    }
}
