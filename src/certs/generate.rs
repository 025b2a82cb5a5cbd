//! Key and certificate generation with rcgen (aws-lc-rs): a private CA, certificates it issues,
//! and self-signed certificates. The zero-config local CA and the tests' fixtures both use it.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::CertError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
}

impl KeyAlgorithm {
    pub const ALL: &'static [KeyAlgorithm] = &[
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
        KeyAlgorithm::Ed25519,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096
        )
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|alg| alg.name() == name)
    }

    /// A fresh key pair of this type.
    pub fn generate(self) -> Result<KeyPair, CertError> {
        let result = match self {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyAlgorithm::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyAlgorithm::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyAlgorithm::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
            KeyAlgorithm::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            }
        };
        result.map_err(|error| CertError::Generate {
            what: format!("{self} key"),
            reason: error.to_string(),
        })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an issued certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("IssuedCertificate").finish_non_exhaustive()
    }
}

/// A CA that can issue certificates: its certificate and signing key.
pub struct CertificateAuthority {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    key: KeyPair,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // Infallible in practice; a zero serial would still be a valid (if unlucky) certificate.
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes);
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn generation_error(what: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |error| CertError::Generate {
        what: what.to_owned(),
        reason: error.to_string(),
    }
}

/// Validity starting an hour ago (clock skew) and lasting `lifetime`.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + lifetime;
}

fn subject_alt_names(names: &[String]) -> Result<Vec<SanType>, CertError> {
    names
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            // Client certificates may name a person by email address (rfc822Name).
            Err(_) if name.contains('@') => name
                .clone()
                .try_into()
                .map(SanType::Rfc822Name)
                .map_err(generation_error("subject alternative name")),
            Err(_) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(generation_error("subject alternative name")),
        })
        .collect()
}

impl CertificateAuthority {
    /// A new root CA: CA:TRUE with pathlen 0, keyCertSign + cRLSign, no name constraints.
    pub fn new(
        common_name: &str,
        lifetime: Duration,
        algorithm: KeyAlgorithm,
    ) -> Result<Self, CertError> {
        Self::new_constrained(common_name, lifetime, algorithm, &[])
    }

    /// As [`Self::new`], limited to issuing for `permitted` DNS domains when not empty
    /// (RFC 5280 name constraints, critical).
    pub fn new_constrained(
        common_name: &str,
        lifetime: Duration,
        algorithm: KeyAlgorithm,
        permitted: &[String],
    ) -> Result<Self, CertError> {
        let key = algorithm.generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        if !permitted.is_empty() {
            // DNS constraints leave IP SANs unconstrained, so every IP is excluded too.
            params.name_constraints = Some(rcgen::NameConstraints {
                permitted_subtrees: permitted
                    .iter()
                    .map(|d| rcgen::GeneralSubtree::DnsName(d.clone()))
                    .collect(),
                excluded_subtrees: vec![
                    rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_v4_prefix([0; 4], 0)),
                    rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_v6_prefix([0; 16], 0)),
                ],
            });
        }
        set_validity(&mut params, lifetime);
        let cert = params
            .self_signed(&key)
            .map_err(generation_error("CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads an existing CA from its certificate and key PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(generation_error("CA key"))?;
        let der: CertificateDer<'static> = rustls_pki_types::pem::PemObject::from_pem_slice(
            cert_pem.as_bytes(),
        )
        .map_err(|error: rustls_pki_types::pem::Error| CertError::Generate {
            what: "CA certificate".into(),
            reason: error.to_string(),
        })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|error| CertError::Generate {
                what: "CA certificate".into(),
                reason: error.to_string(),
            })?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CertError::Generate {
                what: "CA".into(),
                reason: "the CA key does not match the CA certificate".into(),
            });
        }
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der: der,
            key,
        })
    }

    pub fn key_pem(&self) -> String {
        key_pem(&self.key)
    }

    /// A CRL numbered `number` listing `revoked` (serial number bytes and revocation time),
    /// valid from a minute ago for `lifetime`, as PEM.
    pub fn crl(
        &self,
        revoked: &[(Vec<u8>, OffsetDateTime)],
        number: u64,
        lifetime: Duration,
    ) -> Result<String, CertError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(generation_error("issuer"))?;
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + lifetime,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: *at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&issuer)
            .and_then(|crl| crl.pem())
            .map_err(generation_error("CRL"))
    }

    /// Issues a leaf certificate for `names` (DNS names, wildcards or IP addresses), valid
    /// from an hour ago for `lifetime`.
    pub fn issue(
        &self,
        names: &[String],
        lifetime: Duration,
        algorithm: KeyAlgorithm,
        usage: Usage,
    ) -> Result<IssuedCertificate, CertError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            names,
            now - time::Duration::hours(1),
            now + lifetime,
            algorithm,
            usage,
        )
    }

    /// Issues a leaf certificate valid between two instants (backdated or already expired
    /// certificates included, which tests and `cert` tooling need).
    pub fn issue_between(
        &self,
        names: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        algorithm: KeyAlgorithm,
        usage: Usage,
    ) -> Result<IssuedCertificate, CertError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(generation_error("issuer"))?;
        let key = algorithm.generate()?;
        let mut params = leaf_params(names, Duration::ZERO, usage, algorithm)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(generation_error("certificate"))?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key_pem(&key),
            der: cert.der().clone(),
        })
    }
}

fn leaf_params(
    names: &[String],
    lifetime: Duration,
    usage: Usage,
    algorithm: KeyAlgorithm,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "tlsgate".into()),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = subject_alt_names(names)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if algorithm.is_rsa() {
        // Old TLS 1.2 clients with RSA key exchange require it of RSA server certificates.
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![match usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, lifetime);
    Ok(params)
}

/// A self-signed server certificate for `names`.
pub fn self_signed(
    names: &[String],
    lifetime: Duration,
    algorithm: KeyAlgorithm,
) -> Result<IssuedCertificate, CertError> {
    let key = algorithm.generate()?;
    let mut params = leaf_params(names, lifetime, Usage::Server, algorithm)?;
    params.use_authority_key_identifier_extension = false;
    let cert = params
        .self_signed(&key)
        .map_err(generation_error("certificate"))?;
    Ok(IssuedCertificate {
        cert_pem: cert.pem(),
        key_pem: key_pem(&key),
        der: cert.der().clone(),
    })
}

/// A new key and a certificate signing request for `names`, for a commercial CA.
pub fn csr(names: &[String], algorithm: KeyAlgorithm) -> Result<(String, String), CertError> {
    let key = algorithm.generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "tlsgate".into()),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = subject_alt_names(names)?;
    let request = params
        .serialize_request(&key)
        .map_err(generation_error("certificate signing request"))?;
    let pem = request
        .pem()
        .map_err(generation_error("certificate signing request"))?;
    Ok((pem, key_pem(&key)))
}

/// A private key as PEM. Ed25519 keys are written as PKCS#8 v1 (RFC 8410 §7), which every
/// tool reads; aws-lc-rs produces v2 (with the public key), which OpenSSL 3.0 cannot read.
pub fn key_pem(key: &KeyPair) -> String {
    const V2_PREFIX: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = key.serialize_der();
    match der.strip_prefix(&V2_PREFIX[..]) {
        Some(rest) if rest.len() >= 32 => {
            let mut v1 = V1_PREFIX.to_vec();
            v1.extend_from_slice(&rest[..32]);
            super::pem::encode_block("PRIVATE KEY", &v1)
        }
        _ => key.serialize_pem(),
    }
}
