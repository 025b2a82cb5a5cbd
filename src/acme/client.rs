//! One ACME conversation: load or create the account, place an order, answer its challenges,
//! finalize with our own key and CSR, and store the result in `live/NAME/`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;

use super::{AcmeError, ChallengeStore};
use crate::certs::generate::{key_pem, KeyAlgorithm};
use crate::certs::pem::{encode_certificates, read_certificates};
use crate::certs::store::{ensure_private_dir, tighten_dir, write_atomic, LivePaths, SECRET_MODE};
use crate::certs::CertInfo;
use crate::config::{acme_lineage, AcmeChallenge, AcmeSettings};

/// Where an account for a directory lives: `acme/<host_path>/account.json`.
pub fn account_path(data_dir: &Path, directory: &str) -> PathBuf {
    let id: String = directory
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .replace("..", "__");
    data_dir
        .join("acme")
        .join(id.trim_matches(['_', '.']))
        .join("account.json")
}

fn protocol(settings: &AcmeSettings) -> impl Fn(instant_acme::Error) -> AcmeError + '_ {
    move |source| AcmeError::Protocol {
        directory: settings.directory.clone(),
        source,
    }
}

fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').chars() {
        let value = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '-' | '+' => 62,
            '_' | '/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

fn builder(settings: &AcmeSettings) -> Result<instant_acme::AccountBuilder, AcmeError> {
    let client = super::http::DeadlineClient::new(settings)?;
    Ok(Account::builder_with_http(Box::new(client)))
}

/// The stored account, if there is one: never registers (for read-only questions such as
/// renewal information).
pub async fn existing_account(settings: &AcmeSettings, data_dir: &Path) -> Option<Account> {
    let text = std::fs::read_to_string(account_path(data_dir, &settings.directory)).ok()?;
    let credentials: AccountCredentials = serde_json::from_str(&text).ok()?;
    builder(settings)
        .ok()?
        .from_credentials(credentials)
        .await
        .ok()
}

/// The account for this directory: stored credentials, or a new registration (saved 0600).
pub async fn account(settings: &AcmeSettings, data_dir: &Path) -> Result<Account, AcmeError> {
    let builder = || builder(settings);
    let path = account_path(data_dir, &settings.directory);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let credentials: AccountCredentials =
            serde_json::from_str(&text).map_err(|e| AcmeError::Account {
                path: path.clone(),
                reason: format!("unreadable account credentials: {e}"),
            })?;
        return builder()?
            .from_credentials(credentials)
            .await
            .map_err(protocol(settings));
    }
    let contact: Vec<String> = settings
        .email
        .iter()
        .map(|e| format!("mailto:{e}"))
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match (&settings.eab_kid, &settings.eab_hmac_key) {
        (Some(kid), Some(key)) => Some(ExternalAccountKey::new(
            kid.clone(),
            &decode_base64url(key)
                .ok_or_else(|| AcmeError::Other("acme.eab_hmac_key is not base64url".into()))?,
        )),
        _ => None,
    };
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: settings.agree_tos,
                only_return_existing: false,
            },
            settings.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(protocol(settings))?;
    if let Some(parent) = path.parent() {
        ensure_private_dir(&data_dir.join("acme"))?;
        tighten_dir(parent)?;
    }
    let json =
        serde_json::to_string_pretty(&credentials).map_err(|e| AcmeError::Other(e.to_string()))?;
    write_atomic(&path, json.as_bytes(), SECRET_MODE)?;
    tracing::info!(directory = %settings.directory, account = %account.id(), "ACME account registered");
    Ok(account)
}

fn key_algorithm(name: &str) -> KeyAlgorithm {
    KeyAlgorithm::from_name(name).unwrap_or(KeyAlgorithm::EcdsaP256)
}

/// A TLS-ALPN-01 certificate for `name` carrying the key authorization digest (RFC 8737).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    let mut params = CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // rejects the critical acmeIdentifier extension this certificate exists to carry.
    let signing_key = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

async fn dns_hook(
    hook: &Path,
    action: &'static str,
    name: &str,
    value: &str,
) -> Result<(), AcmeError> {
    let fail = |reason: String| AcmeError::DnsHook {
        hook: hook.to_path_buf(),
        action,
        name: name.to_owned(),
        reason,
    };
    let run = tokio::process::Command::new(hook)
        .args([action, name, value])
        .kill_on_drop(true)
        .output();
    // A hook that hangs must not hold the order lock (and every other renewal) forever.
    let output = tokio::time::timeout(DNS_HOOK_TIMEOUT, run)
        .await
        .map_err(|_| {
            fail(format!(
                "did not finish within {}s",
                DNS_HOOK_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        return Err(fail(format!(
            "exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

const DNS_HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// What to clean up after an order, whatever its outcome — also when the order is dropped
/// half-way (shutdown, Ctrl-C): challenge answers never outlive their order.
struct Provisioned<'a> {
    challenges: &'a ChallengeStore,
    dns_hook: Option<PathBuf>,
    http: Vec<String>,
    alpn: Vec<String>,
    dns: Vec<(String, String)>,
}

impl Drop for Provisioned<'_> {
    fn drop(&mut self) {
        for token in &self.http {
            self.challenges.remove_http(token);
        }
        for name in &self.alpn {
            self.challenges.remove_alpn(name);
        }
        if let (Some(hook), false) = (self.dns_hook.clone(), self.dns.is_empty()) {
            let records = std::mem::take(&mut self.dns);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    for (name, value) in records {
                        if let Err(error) = dns_hook(&hook, "cleanup", &name, &value).await {
                            tracing::warn!(%error, "DNS cleanup failed");
                        }
                    }
                });
            }
        }
    }
}

/// The name a TLS-ALPN-01 validator sends as SNI: the DNS name, or for an IP address its
/// reverse-DNS name (RFC 8738 §6).
fn alpn_server_name(identifier: &str) -> String {
    match identifier.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(v6)) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
        Err(_) => identifier.to_owned(),
    }
}

/// Orders a certificate for `names` and stores it as `live/<lineage>/`. `replaces` is the
/// certificate being renewed (ARI's `replaces`, when the CA supports it).
pub async fn order(
    settings: &AcmeSettings,
    data_dir: &Path,
    names: &[String],
    challenges: &ChallengeStore,
    replaces: Option<&rustls::pki_types::CertificateDer<'_>>,
) -> Result<LivePaths, AcmeError> {
    let account = account(settings, data_dir).await?;
    let identifiers: Vec<Identifier> = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(name.clone()),
        })
        .collect();
    let mut new_order = NewOrder::new(&identifiers);
    // Only when the CA served renewal information for it (the caller checks): ARI's
    // `replaces` links the new order to the certificate it renews.
    if let Some(id) =
        replaces.and_then(|der| instant_acme::CertificateIdentifier::try_from(der).ok())
    {
        new_order = new_order.replaces(id);
    }
    let mut order = match account.new_order(&new_order).await {
        Ok(order) => order,
        // The CA lost the account (a reset test CA, a deactivated account): register again.
        Err(error) if error.to_string().contains("accountDoesNotExist") => {
            tracing::warn!(directory = %settings.directory, "the CA does not know our account any more; registering a new one");
            let _ = std::fs::remove_file(account_path(data_dir, &settings.directory));
            let fresh = self::account(settings, data_dir).await?;
            fresh
                .new_order(&new_order)
                .await
                .map_err(protocol(settings))?
        }
        // A CA that serves renewal information but does not echo `replaces` on the order
        // (Pebble with an ARI front, some private CAs): order again without it.
        Err(error) if error.to_string().contains("replaces field mismatch") => {
            tracing::warn!(directory = %settings.directory, "the CA ignored `replaces`; ordering without it");
            account
                .new_order(&NewOrder::new(&identifiers))
                .await
                .map_err(protocol(settings))?
        }
        Err(error) => return Err(protocol(settings)(error)),
    };
    let mut provisioned = Provisioned {
        challenges,
        dns_hook: settings.dns_hook.clone(),
        http: Vec::new(),
        alpn: Vec::new(),
        dns: Vec::new(),
    };
    answer_challenges(settings, &mut order, challenges, &mut provisioned).await?;
    finish(settings, data_dir, names, &mut order).await
}

async fn answer_challenges(
    settings: &AcmeSettings,
    order: &mut instant_acme::Order,
    challenges: &ChallengeStore,
    provisioned: &mut Provisioned<'_>,
) -> Result<(), AcmeError> {
    let kind = match settings.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Dns01 => ChallengeType::Dns01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(protocol(settings))?;
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(AcmeError::Refused {
                    names: authorization.identifier().to_string(),
                    reason: format!("authorization is {other:?}"),
                })
            }
        }
        let identifier = authorization.identifier().to_string();
        let domain = identifier.trim_start_matches("*.").to_owned();
        let Some(mut challenge) = authorization.challenge(kind.clone()) else {
            return Err(AcmeError::Refused {
                names: identifier,
                reason: format!("the CA offers no {kind:?} challenge for it"),
            });
        };
        let key_authorization = challenge.key_authorization();
        match settings.challenge {
            AcmeChallenge::Http01 => {
                challenges.add_http(&challenge.token, key_authorization.as_str());
                provisioned.http.push(challenge.token.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                let certificate = alpn_certificate(&domain, key_authorization.digest().as_ref())?;
                let server_name = alpn_server_name(&domain);
                challenges.add_alpn(&server_name, certificate);
                provisioned.alpn.push(server_name);
            }
            AcmeChallenge::Dns01 => {
                let hook = settings
                    .dns_hook
                    .as_deref()
                    .ok_or_else(|| AcmeError::Other("dns-01 without dns_hook".into()))?;
                let record = format!("_acme-challenge.{domain}");
                let value = key_authorization.dns_value();
                dns_hook(hook, "present", &record, &value).await?;
                provisioned.dns.push((record, value));
            }
        }
        challenge.set_ready().await.map_err(protocol(settings))?;
    }
    Ok(())
}

async fn finish(
    settings: &AcmeSettings,
    data_dir: &Path,
    names: &[String],
    order: &mut instant_acme::Order,
) -> Result<LivePaths, AcmeError> {
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&policy)
        .await
        .map_err(protocol(settings))?;
    if status != OrderStatus::Ready {
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authorization)) = authorizations.next().await {
            for challenge in &authorization.challenges {
                if let Some(error) = &challenge.error {
                    reasons.push(format!("{}: {error}", authorization.identifier()));
                }
            }
        }
        return Err(AcmeError::Refused {
            names: names.join(", "),
            reason: if reasons.is_empty() {
                format!("order is {status:?}")
            } else {
                reasons.join("; ")
            },
        });
    }
    let key = key_algorithm(&settings.key_type).generate()?;
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(|e| AcmeError::Other(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(protocol(settings))?;
    let chain_pem = order
        .poll_certificate(&policy)
        .await
        .map_err(protocol(settings))?;
    store(data_dir, names, &chain_pem, &key_pem(&key))
}

/// Writes an issued chain and key in certbot's layout; the previous files go to `archive/`.
pub fn store(
    data_dir: &Path,
    names: &[String],
    chain_pem: &str,
    key_pem: &str,
) -> Result<LivePaths, AcmeError> {
    // A CA may append its root (an alternate chain can); clients hold it already.
    let chain =
        crate::certs::inspect::without_trust_anchor(crate::certs::pem::certificates_from_bytes(
            chain_pem.as_bytes(),
            Path::new("ACME response"),
        )?);
    let Some((leaf, rest)) = chain.split_first() else {
        return Err(AcmeError::Other(
            "the CA sent an empty certificate chain".into(),
        ));
    };
    let live = LivePaths::new(data_dir, &acme_lineage(names))?;
    let previous = read_certificates(&live.cert)
        .ok()
        .and_then(|certs| certs.first().and_then(|c| CertInfo::parse(c).ok()))
        .map(|info| info.serial);
    live.store(
        data_dir,
        &encode_certificates(std::slice::from_ref(leaf)),
        &encode_certificates(rest),
        key_pem,
        previous.as_deref(),
    )?;
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_the_ca_appends_is_not_stored() {
        use crate::certs::generate::{CertificateAuthority, KeyAlgorithm, Usage};
        let dir = tempfile::tempdir().unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let ca = CertificateAuthority::new("root", day, KeyAlgorithm::EcdsaP256).unwrap();
        let names = vec!["app.test".to_owned()];
        let issued = ca
            .issue(&names, day, KeyAlgorithm::EcdsaP256, Usage::Server)
            .unwrap();
        let sent = format!("{}{}", issued.cert_pem, ca.cert_pem);
        let live = store(dir.path(), &names, &sent, &issued.key_pem).unwrap();
        assert_eq!(read_certificates(&live.fullchain).unwrap(), [issued.der]);
        assert_eq!(std::fs::read_to_string(&live.chain).unwrap(), "");
    }

    #[test]
    fn alpn_names_for_ip_identifiers_are_reverse_dns() {
        assert_eq!(alpn_server_name("example.com"), "example.com");
        assert_eq!(alpn_server_name("192.0.2.7"), "7.2.0.192.in-addr.arpa");
        assert!(alpn_server_name("::1").starts_with("1.0.0.0."));
        assert!(alpn_server_name("::1").ends_with(".ip6.arpa"));
    }

    #[test]
    fn base64url_decodes() {
        assert_eq!(decode_base64url("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(decode_base64url("_-8").unwrap(), vec![0xff, 0xef]);
        assert!(decode_base64url("a b").is_none());
    }

    #[test]
    fn account_paths_are_safe() {
        let path = account_path(
            Path::new("/d"),
            "https://acme-v02.api.letsencrypt.org/directory",
        );
        assert_eq!(
            path,
            Path::new("/d/acme/acme-v02.api.letsencrypt.org_directory/account.json")
        );
        let path = account_path(Path::new("/d"), "https://x/../../etc");
        assert!(path.starts_with("/d/acme/"), "{path:?}");
        assert!(!path.to_string_lossy().contains(".."), "{path:?}");
    }
}
